//! Hostile input: forged, corrupted, truncated and replayed packets, unknown connection ids,
//! spoofed handshakes, a connection flood from thousands of source ports, and a peer that
//! sends faster than the application reads. Nothing may panic, nothing unbounded may be
//! allocated, and what was already accepted is never lost.
//!
//! Bit flips, replays and random garbage on a live connection are in `delivery.rs`
//! (`tampered_and_replayed_packets_are_dropped_and_the_connection_lives_on`,
//! `garbage_and_truncated_datagrams_are_dropped_and_counted`); amplification by a spoofed
//! first packet is in `handshake.rs` (`a_spoofed_first_packet_is_never_amplified`).

mod common;

use bytes::Bytes;
use common::{connect_capturing_hello, connected, drain, keyed, payload, rss_bytes, send};
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::proto::internals::{decode_frames, AckRange, Frame, Segment};
use punchline::proto::{ConnectionConfig, ConnectionState, Endpoint, SendFlags};
use punchline::sim::Sim;
use punchline::{ConnectionHandle, Error, Sockets};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The first byte of an encrypted data packet and the length of its header.
const DATA: u8 = 0x40;
const SHORT_HEADER: usize = 9;

#[test]
fn forged_packets_with_a_live_connection_id_are_dropped() {
    let (mut sim, c, s) = connected(501);
    let attacker: SocketAddr = "10.66.6.6:666".parse().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(501);
    let mut forged = Vec::new();
    // Every fourth data packet gets a forged body behind its genuine header (right connection
    // id, plausible packet number): the receiver must not be able to tell until it decrypts.
    sim.filter = Some(Box::new(move |p| {
        if p.data[0] == DATA && rng.next_u32() % 4 == 0 {
            let mut f = p.data.clone();
            for b in &mut f[SHORT_HEADER..] {
                *b = rng.next_u32() as u8;
            }
            forged.push(f.clone());
            p.data = f;
        }
        true
    }));
    for i in 0..200u64 {
        send(&mut sim, 0, c, payload(i, 900), SendFlags::RELIABLE).unwrap();
    }
    // The attacker also sends copies of genuine headers with garbage bodies from elsewhere.
    let server = sim.nodes[1].addr;
    let mut got = Vec::new();
    let mut n = 0u64;
    assert!(sim.run_until(Duration::from_secs(120), |sim| {
        n += 1;
        if n % 3 == 0 {
            let mut junk = vec![DATA; 600];
            junk[1..SHORT_HEADER].copy_from_slice(&n.to_be_bytes());
            sim.inject(attacker, server, junk);
        }
        got.extend(drain(sim, 1, s));
        got.len() == 200
    }));
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 900), "message {i} intact");
    }
    let st = sim.nodes[1].endpoint.connection(s).unwrap().stats().clone();
    assert!(st.decrypt_failures > 0, "{st:?}");
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
    assert_eq!(sim.state(1, s), ConnectionState::Connected);
    // Nothing the attacker sent got a reply larger than itself.
    let to_attacker: Vec<usize> = sim
        .unrouted
        .iter()
        .filter(|(a, _)| *a == attacker)
        .map(|(_, n)| *n)
        .collect();
    assert!(to_attacker.iter().all(|n| *n <= 600), "{to_attacker:?}");
}

#[test]
fn unknown_connection_ids_get_no_state_and_only_small_rate_limited_replies() {
    let (mut sim, _c, _s) = connected(502);
    let attacker: SocketAddr = "10.66.6.7:667".parse().unwrap();
    let server = sim.nodes[1].addr;
    let conns_before = sim.nodes[1].endpoint.connection_ids().count();
    let mut rng = ChaCha8Rng::seed_from_u64(502);
    let mut sent = 0usize;
    for _ in 0..2_000 {
        let len = 20 + rng.next_u32() as usize % 1_200;
        let mut d: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        d[0] = DATA;
        sent += len;
        sim.inject(attacker, server, d);
        sim.run_for(Duration::from_millis(1));
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.nodes[1].endpoint.connection_ids().count(),
        conns_before,
        "no state for unknown ids"
    );
    let replies: Vec<usize> = sim
        .unrouted
        .iter()
        .filter(|(a, _)| *a == attacker)
        .map(|(_, n)| *n)
        .collect();
    let replied: usize = replies.iter().sum();
    assert!(
        replied <= sent / 10,
        "{replied} bytes of replies to {sent} bytes of junk"
    );
    assert!(
        replies.iter().all(|n| *n <= 20),
        "replies are tiny: {replies:?}"
    );
    let ep = sim.nodes[1].endpoint.stats();
    assert!(ep.unanswered > 0, "the rest is rate-limited: {ep:?}");
}

#[test]
fn a_spoofed_hello_to_a_server_demanding_cookies_allocates_nothing_and_gets_only_a_small_cookie() {
    // A server under load (or set to 0 unproven handshakes) keeps nothing for an unproven
    // address; by default one spoofed hello gets state within the amplification bound
    // (handshake.rs: a_spoofed_first_packet_is_never_amplified).
    let mut sim = Sim::new(503);
    let mut server = keyed(2);
    server.listen = true;
    server.cookie_threshold = 0;
    let victim: SocketAddr = "10.9.9.8:9998".parse().unwrap();
    sim.add_node("10.0.0.1:1000".parse().unwrap(), keyed(1));
    let s = sim.add_node("10.0.0.2:2000".parse().unwrap(), server);
    sim.nodes[s].auto_accept = true;
    sim.filter = Some(Box::new(move |p| {
        if p.data[0] == 0xC1 {
            p.from = victim;
            return true;
        }
        p.to == victim
    }));
    sim.connect(0, s, ConnectionConfig::default());
    sim.run_for(Duration::from_secs(5));
    assert_eq!(
        sim.nodes[s].endpoint.connection_ids().count(),
        0,
        "no state for an unproven address"
    );
    let replies: Vec<usize> = sim
        .unrouted
        .iter()
        .filter(|(a, _)| *a == victim)
        .map(|(_, n)| *n)
        .collect();
    assert!(!replies.is_empty(), "the server answered with a cookie");
    assert!(replies.iter().all(|n| *n < 1200), "{replies:?}");
    assert!(sim.nodes[s].endpoint.stats().retries_sent > 0);
}

#[test]
fn forged_hellos_from_spoofed_addresses_cost_at_most_the_verification_budget() {
    let mut sim = Sim::pair(504, keyed(1), keyed(2));
    let (hello, c) = connect_capturing_hello(&mut sim);
    let before = sim.nodes[1].endpoint.stats().clone();
    let conns = sim.nodes[1].endpoint.connection_ids().count();
    // 3,000 fresh-looking hellos at one instant, each with its own client id and ephemeral
    // key (so its signature fails) and its own spoofed source.
    let n = 3000u32;
    for i in 0..n {
        let mut forged = hello.data.clone();
        forged[2..6].copy_from_slice(&(i + 1).to_be_bytes());
        forged[6..10].copy_from_slice(&i.to_be_bytes());
        let from = SocketAddr::from(([10, 50, (i / 250) as u8, (i % 250) as u8 + 1], 4000));
        sim.inject(from, hello.to, forged);
    }
    sim.run_for(Duration::from_millis(100));
    let after = sim.nodes[1].endpoint.stats().clone();
    let verified = after.rejected - before.rejected;
    let cookies = after.retries_sent - before.retries_sent;
    assert_eq!(verified + cookies, u64::from(n), "{after:?}");
    assert!(
        verified <= punchline::proto::UNPROVEN_VERIFY_RATE as u64,
        "{verified} forged signatures checked at once"
    );
    assert_eq!(sim.nodes[1].endpoint.connection_ids().count(), conns);
    assert_eq!(sim.state(0, c), ConnectionState::Connected);
    // The forgeries left nothing behind: once the budget refilled (a second), a new
    // client's first contact takes one round trip again.
    sim.run_for(Duration::from_secs(1));
    let n = sim.add_node("10.0.0.9:1000".parse().unwrap(), keyed(5));
    let retries = sim.nodes[1].endpoint.stats().retries_sent;
    let start = sim.now;
    let c2 = sim.connect(n, 1, ConnectionConfig::default());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.state(n, c2)
        == ConnectionState::Connected));
    assert_eq!(sim.now - start, Duration::from_millis(20), "one round trip");
    assert_eq!(sim.nodes[1].endpoint.stats().retries_sent, retries);
}

#[test]
fn length_fields_past_the_end_of_the_packet_are_refused() {
    let frames = [
        Frame::Segment(Segment {
            reliable_seq: Some(7),
            msg_num: 9,
            offset: 0,
            total: 300,
            data: Bytes::from(vec![5u8; 300]),
        }),
        Frame::Segment(Segment {
            reliable_seq: None,
            msg_num: 10,
            offset: 1200,
            total: 5000,
            data: Bytes::from(vec![6u8; 1000]),
        }),
        Frame::Ack {
            delay_micros: 100,
            ranges: vec![
                AckRange::new(90, 100),
                AckRange::new(50, 80),
                AckRange::new(1, 40),
            ],
        },
        Frame::Close {
            reason: 1000,
            debug: "a long enough reason to be cut".into(),
        },
    ];
    for f in &frames {
        let mut enc = Vec::new();
        f.encode(&mut enc);
        let whole = Bytes::from(enc.clone());
        assert_eq!(decode_frames(&whole, 256).unwrap(), vec![f.clone()]);
        // Cut anywhere, the frame claims more than the packet holds.
        for cut in 1..enc.len() {
            let r = decode_frames(&Bytes::copy_from_slice(&enc[..cut]), 256);
            assert!(
                r.is_err(),
                "{f:?} cut at {cut} of {} decoded: {r:?}",
                enc.len()
            );
        }
    }
}

// ----- over real sockets --------------------------------------------------------------------

/// Accepts every connection that shows up, adding it to `accepted`; returns how many.
fn accept_all(
    server: &Sockets,
    events: &mut punchline::api::StatusEvents,
    accepted: &mut Vec<ConnectionHandle>,
) -> usize {
    let mut n = 0;
    while let Some(ev) = events.try_recv() {
        if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
            let _ = server.accept_connection(ev.connection);
            accepted.push(ev.connection);
            n += 1;
        }
    }
    n
}

#[test]
fn a_flood_of_hellos_from_thousands_of_ports_is_bounded_and_real_clients_are_served() {
    let server = Sockets::new().unwrap();
    let mut events = server.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), &[])
        .unwrap();
    let addr = server.get_listen_socket_address(listen).unwrap();
    let rss_before = rss_bytes();

    // Genuine, signed hellos from a sans-IO client, each sent from its own port.
    const FLOOD: usize = 3_000;
    let mut maker = Endpoint::new(keyed(9), 9, Instant::now(), 0);
    let mut hellos = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        maker.connect(Instant::now(), addr, ConnectionConfig::default());
        let mut buf = Vec::new();
        let t = maker
            .poll_transmit(Instant::now(), &mut buf)
            .expect("a hello");
        hellos.push(buf[..t.len].to_vec());
    }
    let hello_len = hellos[0].len();

    let mut accepted = Vec::new();
    let mut seen = 0;
    let mut replies = 0usize;
    let client = Sockets::new().unwrap();
    let mut real: Option<ConnectionHandle> = None;
    for (batch, chunk) in hellos.chunks(500).enumerate() {
        let socks: Vec<UdpSocket> = chunk
            .iter()
            .map(|h| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.send_to(h, addr).unwrap();
                s
            })
            .collect();
        if batch == 2 {
            // A real client arrives in the middle of the flood.
            real = Some(client.connect_by_ip_address(addr, &[]).unwrap());
        }
        seen += accept_all(&server, &mut events, &mut accepted);
        // Every source gets at most a reply no larger than its hello.
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 2048];
        for s in &socks {
            s.set_nonblocking(true).unwrap();
            while let Ok(n) = s.recv(&mut buf) {
                assert!(
                    n <= hello_len,
                    "a {n}-byte reply to a {hello_len}-byte hello"
                );
                replies += 1;
            }
        }
    }
    let real = real.unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while client.get_connection_info(real).unwrap().state != ConnectionState::Connected {
        seen += accept_all(&server, &mut events, &mut accepted);
        assert!(Instant::now() < end, "the real client was not served");
        std::thread::sleep(Duration::from_millis(2));
    }
    seen += accept_all(&server, &mut events, &mut accepted);
    // The server keeps no state for an unproven address: it asks for a cookie, which the
    // flood never returns. The real client did.
    assert_eq!(
        seen, 1,
        "connections allocated for {FLOOD} hellos and one client"
    );
    assert!(replies >= FLOOD / 2, "the server answered ({replies})");
    // And the real client is served.
    for i in 0..50u64 {
        client
            .send_message_to_connection(real, payload(i, 500), SendFlags::RELIABLE)
            .unwrap();
    }
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while got.len() < 50 {
        accept_all(&server, &mut events, &mut accepted);
        for h in server_conns(&server, &accepted) {
            got.extend(server.receive_messages_on_connection(h, 100).unwrap());
        }
        assert!(Instant::now() < end, "{} of 50 messages arrived", got.len());
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 500));
    }
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");
}

/// The accepted connections that are connected.
fn server_conns(server: &Sockets, accepted: &[ConnectionHandle]) -> Vec<ConnectionHandle> {
    accepted
        .iter()
        .copied()
        .filter(|h| {
            server
                .get_connection_info(*h)
                .is_ok_and(|i| i.state == ConnectionState::Connected)
        })
        .collect()
}

#[test]
fn a_peer_sending_faster_than_the_application_reads_is_held_to_the_receive_limits() {
    let server = Sockets::new().unwrap();
    let mut events = server.status_events();
    let listen = server
        .create_listen_socket_ip(
            "127.0.0.1:0".parse().unwrap(),
            &[
                (ConfigValue::RecvBufferSize, ConfigData::Int32(64 * 1024)),
                (ConfigValue::RecvBufferMessages, ConfigData::Int32(100)),
            ],
        )
        .unwrap();
    let addr = server.get_listen_socket_address(listen).unwrap();
    let client = Sockets::new().unwrap();
    let c = client.connect_by_ip_address(addr, &[]).unwrap();
    let mut accepted = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        accept_all(&server, &mut events, &mut accepted);
        if let Some(h) = server_conns(&server, &accepted).first() {
            if client.get_connection_info(c).unwrap().state == ConnectionState::Connected {
                break *h;
            }
        }
        assert!(Instant::now() < end, "no connection");
        std::thread::sleep(Duration::from_millis(2));
    };
    // The client pushes as fast as it can for two seconds; the server does not read.
    let mut sent = 0u64;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match client.send_message_to_connection(c, payload(sent, 1000), SendFlags::RELIABLE) {
            Ok(_) => sent += 1,
            Err(Error::LimitExceeded) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("send: {e}"),
        }
        let _ = client.send_message_to_connection(c, payload(0, 1000), SendFlags::UNRELIABLE);
    }
    let status = server.get_detailed_connection_status(s).unwrap();
    let dropped: u64 = status
        .split(" receive-buffer")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("receive-buffer drops in the status");
    assert!(dropped > 0, "the receive limits dropped packets: {status}");
    // The connection is not ended for it: the sender is slowed, not cut off.
    assert_eq!(
        server.get_connection_info(s).unwrap().state,
        ConnectionState::Connected
    );
    assert_eq!(
        client.get_connection_info(c).unwrap().state,
        ConnectionState::Connected
    );
    // What was held is within the limits (plus one message in reassembly).
    let held = server.receive_messages_on_connection(s, 100_000).unwrap();
    let held_bytes: usize = held.iter().map(|m| m.payload.len()).sum();
    assert!(held.len() <= 101, "{} messages held", held.len());
    assert!(held_bytes <= 64 * 1024 + 1000, "{held_bytes} bytes held");
    // Now reading: every reliable message arrives once, in order.
    let mut reliable: Vec<_> = held
        .into_iter()
        .filter(|m| m.flags.contains(SendFlags::RELIABLE))
        .collect();
    let end = Instant::now() + Duration::from_secs(60);
    while (reliable.len() as u64) < sent {
        assert!(
            Instant::now() < end,
            "{} of {sent} reliable messages",
            reliable.len()
        );
        reliable.extend(
            server
                .receive_messages_on_connection(s, 1000)
                .unwrap()
                .into_iter()
                .filter(|m| m.flags.contains(SendFlags::RELIABLE)),
        );
        server.wait_for_activity(Duration::from_millis(5));
    }
    assert_eq!(reliable.len() as u64, sent);
    for (i, m) in reliable.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 1000), "message {i}");
    }
}
