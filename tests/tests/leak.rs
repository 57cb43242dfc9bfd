//! ICE paths release their sockets: a thousand P2P connections opened and closed leave no
//! descriptor behind. (Its own test binary: the count is process-wide.)

use punchline::ConnectionState;
use punchline_signaling::Config;
use punchline_tests::peers::*;
use punchline_tests::server::Signaling;
use std::time::{Duration, Instant};

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn a_thousand_connections_release_their_sockets() {
    const BATCH: usize = 50;
    const BATCHES: usize = 20;
    // A server that takes the burst of 50 rendezvous at once, between one pair of peers,
    // without pacing.
    let sig = Signaling::start(
        Config {
            rate: 2000,
            pair_rate: 2000,
            ..Config::default()
        },
        false,
    );
    let (a, b) = (peer(&sig), peer(&sig));
    b.sockets.create_listen_socket_p2p(1, &[]).unwrap();
    // Makes a's P2P socket too, so that the count before the first connection is the floor.
    a.sockets.create_listen_socket_p2p(2, &[]).unwrap();
    let mut events = b.sockets.status_events();
    let peer_id = b.sockets.get_identity();
    let before = open_fds();
    for batch in 0..BATCHES {
        let outgoing: Vec<_> = (0..BATCH)
            .map(|_| a.sockets.connect_p2p(&peer_id, 1, &[]).unwrap())
            .collect();
        let incoming: Vec<_> = (0..BATCH)
            .map(|_| accepted(&b.sockets, &mut events, Duration::from_secs(10)))
            .collect();
        for &h in &outgoing {
            let st = settle(&a.sockets, h, Duration::from_secs(20));
            assert_eq!(st, ConnectionState::Connected, "batch {batch}");
        }
        let during = open_fds();
        assert!(during > before, "ICE agents hold sockets while connected");
        for (&ha, &hb) in outgoing.iter().zip(&incoming) {
            a.sockets.close_connection(ha, 0, "done", false);
            b.sockets.close_connection(hb, 0, "done", false);
        }
        // Closed connections linger briefly; then their paths close.
        let end = Instant::now() + Duration::from_secs(20);
        while open_fds() > before {
            if Instant::now() >= end {
                let ss = std::process::Command::new("ss")
                    .args(["-uanp"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let pid = format!("pid={},", std::process::id());
                let mine: Vec<&str> = ss.lines().filter(|l| l.contains(&pid)).collect();
                panic!(
                    "batch {batch}: {} descriptors open, {before} before the first connection\n{}",
                    open_fds(),
                    mine.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while events.try_recv().is_some() {}
    }
    assert_eq!(sig.dropped_signals(), 0, "the server took every signal");
}
