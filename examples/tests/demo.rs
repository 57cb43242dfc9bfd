//! The README's demo command runs to completion with exit code 0.

use std::process::Command;

#[test]
fn the_demo_prints_the_conversation_and_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("demo")
        .output()
        .expect("chat binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("[bob] <alice> hi everyone"), "{text}");
    assert!(text.contains("demo ok"), "{text}");
}
