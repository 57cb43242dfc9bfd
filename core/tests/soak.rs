//! The soak test, run on demand: 200 connections over loopback for 10 minutes under 5% fake
//! loss, exchanging game-like traffic both ways, while resident memory is sampled. It checks
//! that every reliable message arrives once and in order, that every connection stays up,
//! and that memory stays flat after warm-up.
//!
//! ```sh
//! cargo test --release -p punchline --test soak -- --ignored --nocapture
//! SOAK_SECS=60 cargo test --release -p punchline --test soak -- --ignored --nocapture
//! ```

mod common;

use bytes::Bytes;
use common::rss_bytes;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::{ConnectionHandle, ConnectionState, Message, PollGroupHandle, SendFlags, Sockets};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 200;
const TICK: Duration = Duration::from_millis(50);

/// `[connection u16][seq u32][pattern]`: any corruption or mix-up shows.
fn message(conn: u16, seq: u32, len: usize) -> Bytes {
    let mut m = Vec::with_capacity(len.max(6));
    m.extend_from_slice(&conn.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((6..len.max(6)).map(|i| (seq as usize + i * 7) as u8));
    Bytes::from(m)
}

/// Checks one side's received messages: reliable ones in order per connection.
struct Checker {
    next: HashMap<u16, u32>,
    reliable: u64,
    unreliable: u64,
}

impl Checker {
    fn new() -> Self {
        Checker {
            next: HashMap::new(),
            reliable: 0,
            unreliable: 0,
        }
    }

    fn take(&mut self, m: &Message) {
        let p = &m.payload;
        assert!(p.len() >= 6, "truncated");
        let conn = u16::from_be_bytes([p[0], p[1]]);
        let seq = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        assert_eq!(*p, message(conn, seq, p.len()), "corrupted");
        if m.flags.contains(SendFlags::RELIABLE) {
            let next = self.next.entry(conn).or_insert(0);
            assert_eq!(seq, *next, "connection {conn}: reliable out of order");
            *next += 1;
            self.reliable += 1;
        } else {
            self.unreliable += 1;
        }
    }
}

fn drain(s: &Sockets, group: PollGroupHandle, check: &mut Checker) {
    loop {
        let got = s.receive_messages_on_poll_group(group, 4096).unwrap();
        if got.is_empty() {
            return;
        }
        for m in &got {
            check.take(m);
        }
    }
}

#[test]
#[ignore = "runs for 10 minutes; see the module notes"]
fn two_hundred_connections_for_ten_minutes_at_5_percent_loss() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let server = Sockets::new().unwrap();
    let client = Sockets::new().unwrap();
    server
        .set_config_value(
            ConfigValue::FakePacketLossSend,
            ConfigTarget::Global,
            Some(ConfigData::Float(5.0)),
        )
        .unwrap();
    let mut events = server.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), &[])
        .unwrap();
    let addr = server.get_listen_socket_address(listen).unwrap();
    let (sgroup, cgroup) = (server.create_poll_group(), client.create_poll_group());
    let clients: Vec<ConnectionHandle> = (0..CONNECTIONS)
        .map(|_| {
            let h = client.connect_by_ip_address(addr, &[]).unwrap();
            client.set_connection_poll_group(h, cgroup).unwrap();
            h
        })
        .collect();
    // Server-side connections in order of arrival: message index i always travels on
    // clients[i] up and servers[i] down, so per-index order is checked on one connection.
    let mut servers: Vec<Option<ConnectionHandle>> = vec![None; CONNECTIONS];
    let end = Instant::now() + Duration::from_secs(60);
    while servers.iter().any(Option::is_none)
        || clients
            .iter()
            .any(|h| client.get_connection_info(*h).unwrap().state != ConnectionState::Connected)
    {
        while let Some(ev) = events.try_recv() {
            if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
                server.accept_connection(ev.connection).unwrap();
                server
                    .set_connection_poll_group(ev.connection, sgroup)
                    .unwrap();
                let slot = servers.iter().position(Option::is_none).unwrap();
                servers[slot] = Some(ev.connection);
            }
        }
        assert!(Instant::now() < end, "not all connections came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let servers: Vec<ConnectionHandle> = servers.into_iter().map(Option::unwrap).collect();

    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let (mut at_server, mut at_client) = (Checker::new(), Checker::new());
    // Sequence numbers: per connection index, per direction.
    let mut seq_up = vec![0u32; CONNECTIONS];
    let mut seq_down = vec![0u32; CONNECTIONS];
    let mut unreliable_seq = 0u32;
    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut next_sample = start;
    let mut tick = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        for i in 0..CONNECTIONS {
            let len = 16 + (rng.next_u32() % 600) as usize;
            let m = message(i as u16, seq_up[i], len);
            client
                .send_message_to_connection(clients[i], m, SendFlags::RELIABLE)
                .unwrap();
            seq_up[i] += 1;
            if tick % 2 == 0 {
                let len = 16 + (rng.next_u32() % 1200) as usize;
                let m = message(i as u16, seq_down[i], len);
                server
                    .send_message_to_connection(servers[i], m, SendFlags::RELIABLE)
                    .unwrap();
                seq_down[i] += 1;
            }
            unreliable_seq += 1;
            let m = message(i as u16, unreliable_seq, 100);
            let _ = client.send_message_to_connection(clients[i], m, SendFlags::UNRELIABLE);
        }
        drain(&server, sgroup, &mut at_server);
        drain(&client, cgroup, &mut at_client);
        if Instant::now() >= next_sample {
            samples.push((start.elapsed().as_secs(), rss_bytes()));
            next_sample += Duration::from_secs(10);
        }
        tick += 1;
        let at = start + TICK * tick;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
    // Let the last retransmissions land.
    let sent_up: u64 = seq_up.iter().map(|&n| u64::from(n)).sum();
    let sent_down: u64 = seq_down.iter().map(|&n| u64::from(n)).sum();
    let end = Instant::now() + Duration::from_secs(30);
    while (at_server.reliable < sent_up || at_client.reliable < sent_down) && Instant::now() < end {
        drain(&server, sgroup, &mut at_server);
        drain(&client, cgroup, &mut at_client);
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = server.set_config_value(ConfigValue::FakePacketLossSend, ConfigTarget::Global, None);

    assert_eq!(at_server.reliable, sent_up, "every reliable message up");
    assert_eq!(at_client.reliable, sent_down, "every reliable message down");
    for (c, s) in clients.iter().zip(&servers) {
        assert_eq!(
            client.get_connection_info(*c).unwrap().state,
            ConnectionState::Connected
        );
        assert_eq!(
            server.get_connection_info(*s).unwrap().state,
            ConnectionState::Connected
        );
    }
    // Flat: after the first minute (or a sixth of a short run) of warm-up, resident memory
    // grows by no more than 10% plus 8 MiB.
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= (secs / 6).min(60))
        .map_or(samples[0].1, |s| s.1);
    let peak_after = samples
        .iter()
        .filter(|(t, _)| *t >= (secs / 6).min(60))
        .map(|s| s.1)
        .max()
        .unwrap_or(warm);
    let last = samples.last().map_or(warm, |s| s.1);
    eprintln!(
        "soak: {CONNECTIONS} connections, {secs} s, 5% loss: {sent_up} reliable up, {sent_down} \
         down, {} unreliable arrived; RSS after warm-up {:.1} MiB, peak {:.1} MiB, last {:.1} MiB",
        at_server.unreliable,
        warm as f64 / 1048576.0,
        peak_after as f64 / 1048576.0,
        last as f64 / 1048576.0
    );
    for (t, rss) in &samples {
        eprintln!("  t={t:>4} s  rss {:.1} MiB", *rss as f64 / 1048576.0);
    }
    assert!(
        peak_after <= warm + warm / 10 + (8 << 20),
        "memory grew from {warm} to {peak_after} bytes"
    );
}
