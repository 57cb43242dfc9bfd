//! Two punchline endpoints handshake and exchange messages over a simulated link with 10%
//! loss, reordering and duplication, in virtual time. Run with
//! `cargo run -p punchline --example lossy_link`.

use bytes::Bytes;
use punchline::identity::KeyPair;
use punchline::proto::{
    ConnectionConfig, ConnectionState, Credentials, EndReason, EndpointConfig, SendFlags,
};
use punchline::sim::{Impairment, Sim, DEFAULT_LINK};
use std::time::Duration;

fn main() {
    let key = |seed: u8| EndpointConfig {
        credentials: Credentials::with_key(KeyPair::from_seed([seed; 32])),
        ..EndpointConfig::default()
    };
    let mut sim = Sim::pair(2026, key(1), key(2));
    sim.link = Impairment {
        loss_pct: 10.0,
        lag: Duration::from_millis(25),
        jitter_pct: 100.0,
        jitter_avg: Duration::from_micros(2500),
        jitter_max: Duration::from_millis(5),
        reorder_pct: 2.0,
        dup_pct: 5.0,
        ..DEFAULT_LINK
    };
    let start = sim.now;
    let client = sim.connect(0, 1, ConnectionConfig::default());
    let connected = sim.run_until(Duration::from_secs(10), |s| {
        s.state(0, client) == ConnectionState::Connected
    });
    assert!(connected, "handshake failed");
    let server = sim.first_conn(1).expect("server accepted");
    let c = sim.nodes[0].endpoint.connection(client).expect("live");
    println!(
        "connected in {:?} (virtual) to {}",
        sim.now - start,
        c.peer_identity().expect("verified")
    );
    // The connection stays locked while `c` lives.
    drop(c);

    let lines = [
        "hello from the client",
        "this link drops 10% of packets",
        "reliable messages still arrive in order",
    ];
    let now = sim.now;
    let mut conn = sim.nodes[0].endpoint.connection_mut(client).expect("live");
    for line in lines {
        conn.send_message(now, Bytes::from(line), SendFlags::RELIABLE)
            .expect("queued");
    }
    let big = Bytes::from(vec![42u8; 300_000]);
    conn.send_message(now, big.clone(), SendFlags::RELIABLE)
        .expect("queued");
    drop(conn);

    let mut got = Vec::new();
    sim.run_until(Duration::from_secs(60), |s| {
        let mut conn = s.nodes[1].endpoint.connection_mut(server).expect("live");
        while let Some(m) = conn.receive() {
            got.push(m);
        }
        got.len() == lines.len() + 1
    });
    for m in &got[..lines.len()] {
        println!(
            "server got #{}: {}",
            m.msg_num,
            String::from_utf8_lossy(&m.payload)
        );
    }
    assert_eq!(got.last().map(|m| &m.payload), Some(&big));
    println!("server got a 300000-byte message intact");

    let now = sim.now;
    sim.nodes[0]
        .endpoint
        .connection_mut(client)
        .expect("live")
        .close(now, EndReason::APP_GENERIC, "done", true);
    sim.run_until(Duration::from_secs(10), |s| {
        s.state(1, server) == ConnectionState::ClosedByPeer
    });
    let s = sim.nodes[1]
        .endpoint
        .connection(server)
        .expect("kept until closed");
    let st = s.stats();
    println!(
        "server saw the close ({:?}, {:?}); it received {} packets, dropped {} duplicates",
        s.end_reason(),
        s.end_debug(),
        st.packets_received,
        st.replays_dropped
    );
    drop(s);
    let st = sim.nodes[0]
        .endpoint
        .connection(client)
        .map(|c| c.stats().clone());
    if let Some(st) = st {
        println!(
            "client lost {} packets and retransmitted {} segments",
            st.packets_lost, st.segments_retransmitted
        );
    }
    println!("total virtual time {:?}", sim.now - start);
}
