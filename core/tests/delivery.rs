//! Message delivery in virtual time over lossy, reordering, duplicating links.

mod common;

use common::*;
use punchline::proto::{ConnId, ConnectionConfig, ConnectionState, EndReason, Error, SendFlags};
use punchline::sim::{Impairment, DEFAULT_LINK};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

/// Sizes from 1 B to 512 KiB, spread evenly on a log scale, with both extremes included.
fn sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let max = 512 * 1024;
    let mut v: Vec<usize> = (0..n)
        .map(|_| {
            let bits = rng.next_u32() % 20; // 2^0 .. 2^19
            let base = 1usize << bits;
            (base + (rng.next_u32() as usize % base)).min(max)
        })
        .collect();
    v[0] = 1;
    v[1] = max;
    v
}

fn reliable_transfer(seed: u64, loss_pct: f32) {
    let (mut sim, c, s) = connected(seed);
    sim.link = Impairment {
        loss_pct,
        lag: Duration::from_millis(15),
        jitter_pct: 100.0,
        jitter_avg: Duration::from_micros(2500),
        jitter_max: Duration::from_millis(5),
        reorder_pct: 5.0,
        dup_pct: 10.0,
        ..DEFAULT_LINK
    };
    let sizes = sizes(seed, 1000);
    let t0 = sim.now;
    let mut next = 0usize;
    let mut got = 0usize;
    let mut limited = 0usize;
    let mut pending = None;
    let ok = sim.run_until(Duration::from_secs(3600), |sim| {
        while next < sizes.len() {
            let data = pending
                .get_or_insert_with(|| payload(next as u64, sizes[next]))
                .clone();
            match send(sim, 0, c, data, SendFlags::RELIABLE) {
                Ok(_) => {
                    next += 1;
                    pending = None;
                }
                Err(Error::LimitExceeded) => {
                    limited += 1;
                    break;
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
        for m in drain(sim, 1, s) {
            assert!(m.reliable);
            assert_eq!(
                m.payload.len(),
                sizes[got],
                "message {got} has the wrong size"
            );
            assert!(
                m.payload == payload(got as u64, sizes[got]),
                "message {got} corrupted"
            );
            got += 1;
        }
        got == sizes.len()
    });
    if !ok {
        let conn = sim.nodes[0].endpoint.connection(c).unwrap();
        eprintln!(
            "DEBUG {:?} {} {:?} {:?}",
            conn.state(),
            conn.debug_timers(sim.now),
            conn.stats(),
            conn.path_status(sim.now)
        );
    }
    assert!(
        ok,
        "only {got} of {} messages arrived at {loss_pct}% loss",
        sizes.len()
    );
    eprintln!(
        "loss {loss_pct}%: {} datagrams, virtual {:?}, total {} bytes, {:?}",
        sim.datagrams,
        sim.now - t0,
        sizes.iter().sum::<usize>(),
        sim.nodes[0]
            .endpoint
            .connection(c)
            .unwrap()
            .path_status(sim.now)
    );
    assert!(
        limited > 0,
        "the send buffer should have filled at least once"
    );
    // Nothing more arrives: no duplicates were held back.
    sim.run_for(Duration::from_secs(2));
    assert!(drain(&mut sim, 1, s).is_empty());
    let stats = sim.nodes[1].endpoint.connection(s).unwrap().stats().clone();
    assert!(
        stats.replays_dropped > 0,
        "duplicated packets must be dropped: {stats:?}"
    );
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
}

#[test]
fn reliable_messages_arrive_once_in_order_intact_without_loss() {
    reliable_transfer(11, 0.0);
}

#[test]
fn reliable_messages_arrive_once_in_order_intact_at_5_percent_loss() {
    reliable_transfer(12, 5.0);
}

#[test]
fn reliable_messages_arrive_once_in_order_intact_at_20_percent_loss() {
    reliable_transfer(13, 20.0);
}

#[test]
fn unreliable_messages_are_whole_intact_and_never_duplicated() {
    let (mut sim, c, s) = connected(21);
    sim.link = Impairment {
        loss_pct: 10.0,
        reorder_pct: 10.0,
        dup_pct: 10.0,
        jitter_pct: 100.0,
        jitter_avg: Duration::from_micros(2500),
        jitter_max: Duration::from_millis(5),
        ..DEFAULT_LINK
    };
    let mut sent: HashMap<u64, bytes::Bytes> = HashMap::new();
    for i in 0..400u64 {
        let len = if i % 10 == 0 {
            5000
        } else {
            1 + (i as usize * 37) % 900
        };
        let data = payload(i, len);
        let n = send(&mut sim, 0, c, data.clone(), SendFlags::UNRELIABLE).unwrap();
        sent.insert(n, data);
        sim.run_for(Duration::from_millis(2));
    }
    sim.run_for(Duration::from_secs(2));
    let got = drain(&mut sim, 1, s);
    let mut seen = std::collections::HashSet::new();
    for m in &got {
        assert!(!m.reliable);
        assert!(
            seen.insert(m.msg_num),
            "message {} delivered twice",
            m.msg_num
        );
        assert_eq!(
            Some(&m.payload),
            sent.get(&m.msg_num),
            "message {} altered",
            m.msg_num
        );
    }
    assert!(
        got.len() > 200 && got.len() < 400,
        "{} of 400 arrived at 10% loss",
        got.len()
    );
    // Fragmented ones that arrived are complete (checked above) and some were lost whole.
    let big = got.iter().filter(|m| m.payload.len() == 5000).count();
    assert!(
        big > 0 && big < 40,
        "{big} of 40 fragmented messages arrived"
    );
}

#[test]
fn tampered_and_replayed_packets_are_dropped_and_the_connection_lives_on() {
    let (mut sim, c, s) = connected(31);
    let mut n = 0u32;
    let mut captured: Vec<punchline::sim::Packet> = Vec::new();
    sim.filter = Some(Box::new(move |p| {
        n += 1;
        if p.data[0] == 0x40 && n % 7 == 0 {
            let i = p.data.len() / 2;
            p.data[i] ^= 0x40; // tamper with the ciphertext
        }
        if p.data[0] == 0x40 && n % 5 == 0 {
            captured.push(p.clone());
        }
        // Replay an old packet now and then by swapping it in for this one's duplicate.
        if n % 11 == 0 && !captured.is_empty() {
            let old = captured.remove(0);
            if old.to == p.to {
                p.data = old.data;
            }
        }
        true
    }));
    for i in 0..300u64 {
        send(&mut sim, 0, c, payload(i, 700), SendFlags::RELIABLE).unwrap();
    }
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(120), |sim| {
        got.extend(drain(sim, 1, s));
        got.len() == 300
    }));
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 700));
    }
    let st = sim.nodes[1].endpoint.connection(s).unwrap().stats().clone();
    assert!(st.decrypt_failures > 0, "{st:?}");
    assert!(st.replays_dropped > 0, "{st:?}");
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
    assert_eq!(sim.state(1, s), ConnectionState::Connected);
}

#[test]
fn a_vanished_peer_ends_in_a_local_timeout() {
    let (mut sim, c, _) = connected(41);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(
        sim.state(0, c),
        ConnectionState::Connected,
        "keepalives hold an idle connection"
    );
    sim.filter = Some(Box::new(|_| false));
    let start = sim.now;
    sim.run_until(Duration::from_secs(60), |s| {
        s.state(0, c) != ConnectionState::Connected
    });
    let conn = sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(conn.state(), ConnectionState::ProblemDetectedLocally);
    assert_eq!(conn.end_reason(), EndReason::MISC_TIMEOUT);
    let waited = sim.now - start;
    assert!(
        waited <= ConnectionConfig::default().timeout_connected,
        "{waited:?}"
    );
}

#[test]
fn close_with_linger_delivers_every_queued_reliable_message_first() {
    let (mut sim, c, s) = connected(51);
    sim.link.loss_pct = 10.0;
    let n = 200u64;
    for i in 0..n {
        send(&mut sim, 0, c, payload(i, 2000), SendFlags::RELIABLE).unwrap();
    }
    let now = sim.now;
    sim.nodes[0].endpoint.connection_mut(c).unwrap().close(
        now,
        EndReason::APP_GENERIC,
        "bye",
        true,
    );
    assert_eq!(sim.state(0, c), ConnectionState::Linger);
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(60), |sim| {
        got.extend(drain(sim, 1, s));
        sim.state(1, s) == ConnectionState::ClosedByPeer
    }));
    got.extend(drain(&mut sim, 1, s));
    assert_eq!(
        got.len() as u64,
        n,
        "every message is readable once the close is seen"
    );
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 2000));
    }
    let server = sim.nodes[1].endpoint.connection(s).unwrap();
    assert_eq!(server.end_reason(), EndReason::APP_GENERIC);
    assert_eq!(server.end_debug(), "bye");
    drop(server);
    // The closing side finishes: FinWait ends once the peer acknowledges, and it is forgotten.
    assert!(sim.run_until(Duration::from_secs(10), |s| s.state(0, c)
        == ConnectionState::None));
}

#[test]
fn close_without_linger_is_seen_by_the_peer() {
    let (mut sim, c, s) = connected(52);
    let now = sim.now;
    sim.nodes[1]
        .endpoint
        .connection_mut(s)
        .unwrap()
        .close(now, EndReason(2001), "kicked", false);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.state(0, c)
        == ConnectionState::ClosedByPeer));
    let conn = sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(
        (conn.end_reason(), conn.end_debug()),
        (EndReason(2001), "kicked")
    );
    drop(conn);
    assert_eq!(
        send(&mut sim, 0, c, payload(0, 1), SendFlags::RELIABLE),
        Err(Error::NoConnection)
    );
}

#[test]
fn a_message_over_recv_max_message_size_closes_the_connection() {
    let mut server = keyed(2);
    server.incoming.recv_max_message_size = 1000;
    let (mut sim, c, s) = connected_with(61, keyed(1), server, ConnectionConfig::default());
    send(&mut sim, 0, c, payload(0, 1001), SendFlags::RELIABLE).unwrap();
    sim.run_until(Duration::from_secs(5), |s| {
        s.state(0, c) != ConnectionState::Connected
    });
    let server = sim.nodes[1].endpoint.connection(s).unwrap();
    assert_eq!(server.state(), ConnectionState::ProblemDetectedLocally);
    assert_eq!(server.end_reason(), EndReason::MISC_GENERIC);
    assert!(
        server.end_debug().contains("RecvMaxMessageSize"),
        "{}",
        server.end_debug()
    );
    let client = sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(client.state(), ConnectionState::ClosedByPeer);
    assert_eq!(client.end_reason(), EndReason::MISC_GENERIC);
}

#[test]
fn send_buffer_limits_and_no_delay_are_enforced() {
    let (mut sim, c, _) = connected(71);
    let conn = ConnectionConfig::default();
    let chunk = payload(1, 64 * 1024);
    let mut sent = 0;
    let err = loop {
        match send(&mut sim, 0, c, chunk.clone(), SendFlags::RELIABLE) {
            Ok(_) => sent += chunk.len(),
            Err(e) => break e,
        }
    };
    assert_eq!(err, Error::LimitExceeded);
    assert!(sent <= conn.send_buffer_size && sent + chunk.len() > conn.send_buffer_size);
    assert_eq!(
        send(
            &mut sim,
            0,
            c,
            payload(2, 10),
            SendFlags::UNRELIABLE_NO_DELAY
        ),
        Err(Error::Ignored),
        "a no-delay message behind a full queue is dropped"
    );
    assert!(matches!(
        send(&mut sim, 0, c, payload(3, 600 * 1024), SendFlags::RELIABLE),
        Err(Error::InvalidParam(_))
    ));
}

#[test]
fn small_messages_are_coalesced_by_nagle() {
    let (mut sim, c, s) = connected(81);
    let before = sim.nodes[0]
        .endpoint
        .connection(c)
        .unwrap()
        .stats()
        .packets_sent;
    for i in 0..50u64 {
        send(&mut sim, 0, c, payload(i, 20), SendFlags::UNRELIABLE).unwrap();
    }
    sim.run_for(Duration::from_millis(200));
    assert_eq!(drain(&mut sim, 1, s).len(), 50);
    let packets = sim.nodes[0]
        .endpoint
        .connection(c)
        .unwrap()
        .stats()
        .packets_sent
        - before;
    assert!(packets <= 3, "50 small messages took {packets} packets");

    // NoNagle sends at once: the message arrives after one link delay, not after NagleTime.
    let t0 = sim.now;
    send(
        &mut sim,
        0,
        c,
        payload(99, 20),
        SendFlags::RELIABLE_NO_NAGLE,
    )
    .unwrap();
    assert!(sim.run_until(Duration::from_secs(1), |s| !drain(s, 1, s_id(s)).is_empty()));
    assert_eq!(sim.now - t0, sim.link.lag);
}

fn s_id(sim: &punchline::sim::Sim) -> punchline::proto::ConnId {
    sim.first_conn(1).unwrap()
}

#[test]
fn mtu_is_respected() {
    let conn = ConnectionConfig {
        mtu_packet_size: 1280,
        ..ConnectionConfig::default()
    };
    let mut server = keyed(2);
    server.incoming.mtu_packet_size = 1280;
    let (mut sim, c, s) = connected_with(91, keyed(1), server, conn);
    sim.mtu = 1280;
    for i in 0..20u64 {
        send(&mut sim, 0, c, payload(i, 10_000), SendFlags::RELIABLE).unwrap();
    }
    let mut got = 0;
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        got += drain(sim, 1, s).len();
        got == 20
    }));
}

#[test]
fn a_forgotten_connection_gets_a_no_connection_reply() {
    let (mut sim, c, s) = connected(101);
    sim.nodes[1].endpoint.remove(s);
    send(&mut sim, 0, c, payload(0, 10), SendFlags::RELIABLE_NO_NAGLE).unwrap();
    sim.run_until(Duration::from_secs(5), |s| {
        s.state(0, c) != ConnectionState::Connected
    });
    let conn = sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(conn.state(), ConnectionState::ClosedByPeer);
    assert_eq!(conn.end_reason(), EndReason::MISC_PEER_SENT_NO_CONNECTION);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = || {
        let (mut sim, c, s) = connected(111);
        sim.link.loss_pct = 10.0;
        sim.link.dup_pct = 10.0;
        for i in 0..100u64 {
            send(&mut sim, 0, c, payload(i, 3000), SendFlags::RELIABLE).unwrap();
        }
        sim.run_for(Duration::from_secs(5));
        let conn = sim.nodes[1].endpoint.connection(s).unwrap();
        (conn.stats().clone(), sim.datagrams)
    };
    assert_eq!(run(), run());
}

#[test]
fn a_full_receive_buffer_drops_packets_and_loses_nothing_reliable() {
    let mut server = keyed(2);
    server.incoming.recv_buffer_size = 20_000;
    server.incoming.recv_buffer_messages = 50;
    let (mut sim, c, s) = connected_with(121, keyed(1), server, ConnectionConfig::default());
    for i in 0..200u64 {
        send(&mut sim, 0, c, payload(i, 1000), SendFlags::RELIABLE).unwrap();
    }
    // The application does not read for longer than the connection timeout: the buffer fills
    // and packets are dropped, but acks still flow and neither side times out.
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
    assert_eq!(sim.state(1, s), ConnectionState::Connected);
    let conn = sim.nodes[1].endpoint.connection(s).unwrap();
    assert!(
        conn.pending_received() <= 50,
        "{} messages buffered",
        conn.pending_received()
    );
    assert!(conn.stats().recv_buffer_drops > 0);
    drop(conn);
    // Once it reads, every message arrives, in order.
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(60), |sim| {
        got.extend(drain(sim, 1, s));
        got.len() == 200
    }));
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 1000));
    }
}

#[test]
fn garbage_and_truncated_datagrams_are_dropped_and_counted() {
    let (mut sim, c, s) = connected(131);
    let mut rng = ChaCha8Rng::seed_from_u64(131);
    sim.filter = Some(Box::new(move |p| {
        match rng.next_u32() % 10 {
            0 => {
                let keep = rng.next_u32() as usize % p.data.len();
                p.data.truncate(keep.max(1));
            }
            1 => {
                let len = 1 + rng.next_u32() as usize % 1400;
                let first =
                    [0x40, 0x41, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0x00][rng.next_u32() as usize % 8];
                p.data = (0..len).map(|_| rng.next_u32() as u8).collect();
                p.data[0] = first;
            }
            2 => {
                let i = rng.next_u32() as usize % p.data.len();
                p.data[i] ^= 1 << (rng.next_u32() % 8);
            }
            _ => {}
        }
        true
    }));
    for i in 0..300u64 {
        send(&mut sim, 0, c, payload(i, 1500), SendFlags::RELIABLE).unwrap();
        send(&mut sim, 1, s, payload(i, 300), SendFlags::RELIABLE).unwrap();
    }
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    assert!(sim.run_until(Duration::from_secs(120), |sim| {
        at_server.extend(drain(sim, 1, s));
        at_client.extend(drain(sim, 0, c));
        at_server.len() == 300 && at_client.len() == 300
    }));
    for (i, (a, b)) in at_server.iter().zip(&at_client).enumerate() {
        assert_eq!(a.payload, payload(i as u64, 1500));
        assert_eq!(b.payload, payload(i as u64, 300));
    }
    let st = sim.nodes[1].endpoint.connection(s).unwrap().stats().clone();
    let ep = sim.nodes[1].endpoint.stats().clone();
    assert!(st.decrypt_failures > 0, "{st:?}");
    assert!(
        ep.malformed + ep.unanswered + ep.no_connection_sent > 0,
        "{ep:?}"
    );
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
}

/// Moves `bytes` of reliable data from client to server; returns the virtual time it took.
fn transfer(sim: &mut punchline::sim::Sim, c: ConnId, s: ConnId, bytes: usize) -> Duration {
    let start = sim.now;
    let chunk = 16 * 1024;
    let (mut sent, mut got) = (0usize, 0usize);
    assert!(sim.run_until(Duration::from_secs(600), |sim| {
        while sent < bytes && send(sim, 0, c, payload(0, chunk), SendFlags::RELIABLE).is_ok() {
            sent += chunk;
        }
        got += drain(sim, 1, s)
            .iter()
            .map(|m| m.payload.len())
            .sum::<usize>();
        got >= bytes
    }));
    sim.now - start
}

/// Virtual time to move `bytes` over a fresh connection with settings `conn`.
fn transfer_time(seed: u64, conn: ConnectionConfig, bytes: usize) -> Duration {
    let (mut sim, c, s) = connected_with(seed, keyed(1), keyed(2), conn);
    transfer(&mut sim, c, s, bytes)
}

#[test]
fn send_rate_max_clamps_the_pace_and_congestion_control_goes_faster_without_it() {
    let mb = 1024 * 1024;
    let capped = transfer_time(
        141,
        ConnectionConfig {
            send_rate_max: 100_000,
            ..ConnectionConfig::default()
        },
        mb,
    );
    let free = transfer_time(141, ConnectionConfig::default(), mb);
    // 1 MiB at 100 kB/s is at least ten seconds (less the initial burst).
    assert!(
        capped >= Duration::from_secs(9),
        "capped transfer took {capped:?}"
    );
    assert!(free * 5 < capped, "uncapped {free:?} vs capped {capped:?}");
}

/// The congestion window after moving `bytes` over the sim link with `loss`.
fn window_after_transfer(seed: u64, loss_pct: f32, bytes: usize) -> u64 {
    let (mut sim, c, s) = connected(seed);
    sim.link.loss_pct = loss_pct;
    transfer(&mut sim, c, s, bytes);
    let now = sim.now;
    let window = sim.nodes[0]
        .endpoint
        .connection(c)
        .unwrap()
        .path_status(now)
        .congestion_window;
    window
}

#[test]
fn congestion_control_opens_on_a_clean_path_and_stays_open_under_random_loss() {
    let clean = window_after_transfer(151, 0.0, 4 * 1024 * 1024);
    let lossy = window_after_transfer(151, 5.0, 1024 * 1024);
    // Ten packets to start; a clean path lets it grow far beyond that.
    assert!(clean > 200_000, "clean-path window {clean}");
    // Random loss with no queue behind it is not congestion (congestion.rs shows a
    // building queue bringing the window down).
    assert!(lossy * 2 >= clean, "lossy window {lossy} vs clean {clean}");
}

#[test]
fn keys_move_on_many_times_under_loss_and_reordering_and_nothing_is_lost_or_repeated() {
    // The client moves to a new key every 200 packets (the default is 2^22); the server
    // follows. Both send 1500 reliable messages over a lossy, reordering, duplicating link.
    let conn = ConnectionConfig {
        key_update_packets: 200,
        ..ConnectionConfig::default()
    };
    let (mut sim, c, s) = connected_with(171, keyed(1), keyed(2), conn);
    sim.link = Impairment {
        loss_pct: 5.0,
        lag: Duration::from_millis(15),
        jitter_pct: 100.0,
        jitter_avg: Duration::from_micros(2500),
        jitter_max: Duration::from_millis(5),
        reorder_pct: 10.0,
        dup_pct: 5.0,
        ..DEFAULT_LINK
    };
    const N: usize = 1500;
    let size = |i: usize| 100 + (i * 37) % 1400;
    let ends = [(0, c), (1, s)];
    let (mut next, mut got) = ([0usize; 2], [0usize; 2]);
    let ok = sim.run_until(Duration::from_secs(600), |sim| {
        for (side, &(node, conn)) in ends.iter().enumerate() {
            while next[side] < N {
                let i = next[side];
                let data = payload((side * N + i) as u64, size(i));
                match send(sim, node, conn, data, SendFlags::RELIABLE) {
                    Ok(_) => next[side] += 1,
                    Err(Error::LimitExceeded) => break,
                    Err(e) => panic!("send failed: {e}"),
                }
            }
        }
        for (side, &(node, conn)) in ends.iter().enumerate() {
            // What `node` receives was sent by the other side.
            let from = 1 - side;
            for m in drain(sim, node, conn) {
                let i = got[from];
                assert!(i < N, "more than {N} messages from side {from}");
                assert!(
                    m.payload == payload((from * N + i) as u64, size(i)),
                    "message {i} from side {from} lost, repeated or out of order"
                );
                got[from] += 1;
            }
        }
        got == [N, N]
    });
    assert!(ok, "only {got:?} of {N} each way arrived");
    sim.run_for(Duration::from_secs(2));
    assert!(drain(&mut sim, 0, c).is_empty() && drain(&mut sim, 1, s).is_empty());
    let stats = |node: usize, conn| {
        sim.nodes[node]
            .endpoint
            .connection(conn)
            .unwrap()
            .stats()
            .clone()
    };
    let (cs, ss) = (stats(0, c), stats(1, s));
    eprintln!(
        "key updates: client {}, server {}; packets {} and {}; decrypt failures {} and {}",
        cs.key_updates,
        ss.key_updates,
        cs.packets_sent,
        ss.packets_sent,
        cs.decrypt_failures,
        ss.decrypt_failures
    );
    assert!(
        cs.key_updates >= 5,
        "the client moved its key {} times",
        cs.key_updates
    );
    assert!(
        ss.key_updates >= 5,
        "the server followed {} times",
        ss.key_updates
    );
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
    assert_eq!(sim.state(1, s), ConnectionState::Connected);
}

#[test]
fn bytes_in_flight_are_not_held_against_the_send_buffer() {
    // A 64 KiB send buffer on a 200 ms round trip. Were bytes awaiting their ack counted
    // against it (as before), at most 64 KiB could be in flight: 320 KiB/s. Only unsent bytes
    // count, as the reference means, so the congestion window alone limits the rate.
    let conn = ConnectionConfig {
        send_buffer_size: 64 * 1024,
        send_rate_max: 100 * 1024 * 1024,
        ..ConnectionConfig::default()
    };
    let (mut sim, c, s) = connected_with(72, keyed(1), keyed(2), conn);
    sim.link = Impairment {
        lag: Duration::from_millis(100),
        rate: 0,
        ..DEFAULT_LINK
    };
    const TOTAL: usize = 8 * 1024 * 1024;
    let chunk = payload(7, 16 * 1024);
    let (mut sent, mut got) = (0usize, 0usize);
    let start = sim.now;
    let done = sim.run_until(Duration::from_secs(120), |sim| {
        while sent < TOTAL {
            match send(sim, 0, c, chunk.clone(), SendFlags::RELIABLE) {
                Ok(_) => sent += chunk.len(),
                Err(Error::LimitExceeded) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        got += drain(sim, 1, s)
            .iter()
            .map(|m| m.payload.len())
            .sum::<usize>();
        got == TOTAL
    });
    assert!(done, "{got} of {TOTAL} bytes arrived");
    let secs = (sim.now - start).as_secs_f64();
    let rate = TOTAL as f64 / secs;
    let capped = 64.0 * 1024.0 / 0.2;
    assert!(
        rate > 4.0 * capped,
        "{rate:.0} B/s in {secs:.1} s: no faster than a send buffer of bytes in flight allows ({capped:.0} B/s)"
    );
}
