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

#[test]
fn the_p2p_demo_connects_two_peers_by_identity_and_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_p2p_chat"))
        .arg("demo")
        .output()
        .expect("p2p_chat binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("alice got: hi alice, found you by your key"),
        "{text}"
    );
    assert!(text.contains("bob got: hi bob!"), "{text}");
    // Once directly, once through the embedded TURN server, with the candidate pairs shown.
    assert!(text.contains("route DirectLocal"), "{text}");
    assert!(text.contains("route Relayed"), "{text}");
    assert!(text.contains("nominated"), "{text}");
    assert!(text.contains("done"), "{text}");
}

#[test]
fn the_messages_example_talks_without_connections_and_notices_a_leaver() {
    let out = Command::new(env!("CARGO_BIN_EXE_messages"))
        .output()
        .expect("messages binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "bob: session request from alice; accepting",
        "bob got on channel 0 from alice: hello bob, no connection needed",
        "carol got on channel 0 from alice: hello carol, no connection needed",
        "alice got on channel 0 from bob: hi alice",
        "alice: bob's session is broken",
        "alice: session failed",
        "done",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

#[test]
fn the_fakeip_example_reaches_peers_by_fake_ipv4_addresses() {
    let out = Command::new(env!("CARGO_BIN_EXE_fakeip"))
        .output()
        .expect("fakeip binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "bob holds fake IP 169.254.",
        "-> a P2P connection to bob",
        "bob got: hello over a fake IP",
        "got \"datagram\" from 169.254.",
        "alice got \"reply\" from 169.254.",
        "done",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}
