//! The examples run to completion with exit code 0 and say what they should: the README's
//! demo command, and the chat, Messages and FakeIP examples.

use std::process::Command;

/// Runs `bin` with `args`; it must succeed and print every line of `expect`.
fn run(bin: &str, args: &[&str], expect: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("example binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in expect {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

#[test]
fn the_demo_prints_the_conversation_and_succeeds() {
    run(
        env!("CARGO_BIN_EXE_chat"),
        &["demo"],
        &["[bob] <alice> hi everyone", "demo ok"],
    );
}

#[test]
fn the_p2p_demo_connects_two_peers_by_identity_and_succeeds() {
    run(
        env!("CARGO_BIN_EXE_p2p_chat"),
        &["demo"],
        &[
            "alice got: hi alice, found you by your key",
            "bob got: hi bob!",
            // Once directly, once through the embedded TURN server, with the pairs shown.
            "route DirectLocal",
            "route Relayed",
            "nominated",
            // Then route selection: the server's relay first, ICE taking over.
            "route Relayed (the relay is ready first)",
            "alice got: this one went through the relay",
            "route switched to DirectLocal",
            "route ice (in use)",
            "done",
        ],
    );
}

#[test]
fn the_messages_example_talks_without_connections_and_notices_a_leaver() {
    run(
        env!("CARGO_BIN_EXE_messages"),
        &[],
        &[
            "bob: session request from alice; accepting",
            "bob got on channel 0 from alice: hello bob, no connection needed",
            "carol got on channel 0 from alice: hello carol, no connection needed",
            "alice got on channel 0 from bob: hi alice",
            "alice: bob's session is broken",
            "alice: session failed",
            "done",
        ],
    );
}

#[test]
fn the_fakeip_example_reaches_peers_by_fake_ipv4_addresses() {
    run(
        env!("CARGO_BIN_EXE_fakeip"),
        &[],
        &[
            "bob holds fake IP 169.254.",
            "-> a P2P connection to bob",
            "bob got: hello over a fake IP",
            "got \"datagram\" from 169.254.",
            "alice got \"reply\" from 169.254.",
            "done",
        ],
    );
}
