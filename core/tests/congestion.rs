//! The congestion controller's path model in virtual time: loss with no queue behind it
//! (a noisy link) cuts nothing, so the rate holds; loss with a queue behind it (a full
//! bottleneck) still cuts the window as CUBIC does.

mod common;

use common::{drain, payload, send};
use punchline::proto::{ConnectionConfig, SendFlags};
use punchline::sim::{Impairment, DEFAULT_LINK};
use std::time::Duration;

/// Virtual time to move 4 MB of 16 KB reliable messages over a 20 ms path at `loss_pct`
/// random loss (with `lag_extra` more each way from the middle on), and the client's window
/// at the end.
fn transfer(seed: u64, loss_pct: f32, lag_extra: Duration) -> (Duration, u64) {
    transfer_with(seed, loss_pct, lag_extra, ConnectionConfig::default(), None)
}

/// [`transfer`] with the client's connection `config` and the server's receive buffer.
fn transfer_with(
    seed: u64,
    loss_pct: f32,
    lag_extra: Duration,
    config: ConnectionConfig,
    server_buffer: Option<usize>,
) -> (Duration, u64) {
    let mut server = common::keyed(2);
    if let Some(b) = server_buffer {
        server.incoming.recv_buffer_size = b;
    }
    let (mut sim, c, s) = common::connected_with(seed, common::keyed(1), server, config);
    sim.link = Impairment {
        loss_pct,
        lag: Duration::from_millis(10),
        ..DEFAULT_LINK
    };
    let n = 256u64;
    let start = sim.now;
    let (mut next, mut got) = (0u64, 0u64);
    while got < n {
        while next < n && send(&mut sim, 0, c, payload(next, 16_384), SendFlags::RELIABLE).is_ok() {
            next += 1;
        }
        sim.run_for(Duration::from_millis(1));
        got += drain(&mut sim, 1, s).len() as u64;
        if next >= n / 2 && lag_extra > Duration::ZERO {
            // From here on every packet waits longer: a queue building up.
            sim.link.lag = Duration::from_millis(10) + lag_extra;
        }
        if sim.now - start > Duration::from_secs(120) {
            let conn = sim.nodes[0].endpoint.connection(c).unwrap();
            let srv = sim.nodes[1].endpoint.connection(s).unwrap();
            panic!(
                "{got} of {n} arrived at {loss_pct}% loss: client {} {:?}; server {:?}",
                conn.debug_timers(sim.now),
                conn.stats(),
                srv.stats()
            );
        }
    }
    let window = sim.nodes[0]
        .endpoint
        .connection(c)
        .unwrap()
        .path_status(sim.now)
        .congestion_window;
    (sim.now - start, window)
}

#[test]
fn random_loss_with_no_queue_keeps_the_rate() {
    let (clean, _) = transfer(1, 0.0, Duration::ZERO);
    let (lossy, window) = transfer(1, 5.0, Duration::ZERO);
    eprintln!("4 MB at 20 ms: clean {clean:?}, 5% loss {lossy:?} (window {window} B)");
    assert!(
        lossy < clean * 3 / 2,
        "5% random loss took {lossy:?}, the clean path {clean:?}"
    );
}

#[test]
fn a_sender_whose_window_outgrows_the_receivers_buffer_still_delivers_under_loss() {
    // The client allows itself a 32 MiB window; the server holds 1 MiB. Behind each lost
    // packet the server buffers what follows until full, then drops all but the message
    // it waits on: that one must get through (it is resent first), or nothing moves again.
    let config = ConnectionConfig {
        recv_buffer_size: 64 << 20,
        ..Default::default()
    };
    let (clean, _) = transfer_with(2, 0.0, Duration::ZERO, config.clone(), None);
    let (lossy, _) = transfer_with(2, 5.0, Duration::ZERO, config, None);
    eprintln!("4 MB into a 1 MiB receiver: clean {clean:?}, 5% loss {lossy:?}");
    assert!(lossy < clean * 4, "5% loss took {lossy:?}, clean {clean:?}");
}

#[test]
fn a_queue_building_on_the_path_makes_loss_cut_the_window() {
    // The same loss, but from the middle of the transfer every packet waits 10 ms longer
    // (a queue filling): now losses are congestion and the window comes down.
    // (Buffers big enough on both ends that the receiver caps nothing.)
    let config = ConnectionConfig {
        recv_buffer_size: 64 << 20,
        ..Default::default()
    };
    let big = Some(64 << 20);
    let (_, noisy) = transfer_with(3, 5.0, Duration::ZERO, config.clone(), big);
    let (_, queued) = transfer_with(3, 5.0, Duration::from_millis(10), config, big);
    eprintln!("window at the end: noisy link {noisy} B, queue building {queued} B");
    assert!(
        queued * 2 <= noisy,
        "a building queue left the window at {queued} B (noisy link: {noisy} B)"
    );
}
