//! `Sockets` through the signaling server as a real process: P2P connections by identity
//! (direct, symmetric, through the server's relay), offline peers, FakeIP through the server
//! (and without one), and the relay network's calls measuring real servers as POPs.

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::{ConnectionState, EndReason, SendFlags, Sockets};
use punchline_tests::peers::{accept_incoming, connect_pair, logged_in, state, wait};
use punchline_tests::server::http_get;
use std::time::{Duration, Instant};

/// Sets the global callback `value` to record every event of type `T` it is called with
/// (by `run_callbacks`); the record.
fn capture<T: Clone + Send + 'static>(
    s: &Sockets,
    value: ConfigValue,
) -> std::sync::Arc<std::sync::Mutex<Vec<T>>> {
    use punchline::api::config::CallbackFn;
    use punchline::api::ConfigTarget;
    let seen: std::sync::Arc<std::sync::Mutex<Vec<T>>> = Default::default();
    let record = seen.clone();
    let cb = CallbackFn(std::sync::Arc::new(move |arg: &dyn std::any::Any| {
        if let Some(e) = arg.downcast_ref::<T>() {
            record.lock().unwrap().push(e.clone());
        }
    }));
    s.set_config_value(value, ConfigTarget::Global, Some(ConfigData::Ptr(Some(cb))))
        .unwrap();
    seen
}

#[test]
fn two_peers_connect_p2p_through_the_server_talk_and_close() {
    let server = punchline_tests::server_process!(&[]);
    let (a, _, _ca) = logged_in(&server.url(), None);
    let (b, _, _cb) = logged_in(&server.url(), None);
    let (c, s) = connect_pair(&a, &b);
    for i in 0..100u32 {
        a.send_message_to_connection(c, i.to_be_bytes().to_vec(), SendFlags::RELIABLE)
            .unwrap();
        b.send_message_to_connection(s, vec![7; 500], SendFlags::UNRELIABLE)
            .unwrap();
    }
    let mut got = Vec::new();
    wait(Duration::from_secs(10), "100 reliable messages", || {
        got.extend(b.receive_messages_on_connection(s, 200).unwrap());
        got.len() >= 100
    });
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload[..], (i as u32).to_be_bytes());
    }
    let mut unreliable = 0;
    wait(Duration::from_secs(5), "unreliable messages", || {
        unreliable += a.receive_messages_on_connection(c, 200).unwrap().len();
        unreliable > 0
    });
    a.close_connection(c, 1000, "bye", false);
    wait(Duration::from_secs(5), "the close", || {
        state(&b, s) == ConnectionState::ClosedByPeer
    });
    let (_, metrics) = http_get(server.addr, "/metrics");
    assert!(
        metrics.contains("punchline_signaling_clients 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("signals_forwarded_total 0\n"),
        "{metrics}"
    );
}

#[test]
fn the_relay_carries_a_p2p_connection_and_hides_the_peers_addresses() {
    let server = punchline_tests::server_process!(&[]);
    let (a, _, ca) = logged_in(&server.url(), None);
    let (b, _, cb) = logged_in(&server.url(), None);
    a.set_p2p_transport(std::sync::Arc::new(ca.relay_transport()));
    b.set_p2p_transport(std::sync::Arc::new(cb.relay_transport()));
    let (c, s) = connect_pair(&a, &b);
    for (sockets, conn) in [(&a, c), (&b, s)] {
        let info = sockets.get_connection_info(conn).unwrap();
        assert_eq!(info.route, punchline::transport::RouteKind::Relayed);
        assert!(info
            .flags
            .contains(punchline::api::ConnectionInfoFlags::RELAYED));
        assert!(
            !info.address_remote.ip().is_loopback(),
            "{}",
            info.address_remote
        );
    }
    for i in 0..300u32 {
        a.send_message_to_connection(c, vec![i as u8; 1000 + i as usize], SendFlags::RELIABLE)
            .unwrap();
    }
    let mut got = Vec::new();
    wait(Duration::from_secs(10), "300 reliable messages", || {
        got.extend(b.receive_messages_on_connection(s, 300).unwrap());
        got.len() >= 300
    });
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload.len(), 1000 + i);
    }
    let (_, metrics) = http_get(server.addr, "/metrics");
    assert!(!metrics.contains("relayed_total 0\n"), "{metrics}");

    // A server that does not relay: the connection cannot finish.
    let off = punchline_tests::server_process!(&["--relay-rate", "0"]);
    let (a, _, ca) = logged_in(&off.url(), None);
    let (b, _, cb) = logged_in(&off.url(), None);
    a.set_p2p_transport(std::sync::Arc::new(ca.relay_transport()));
    b.set_p2p_transport(std::sync::Arc::new(cb.relay_transport()));
    b.create_listen_socket_p2p(0, &[]).unwrap();
    let mut b_events = b.status_events();
    let c = a.connect_p2p(&b.get_identity(), 0, &[]).unwrap();
    let mut accepted = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        accept_incoming(&b, &mut b_events, &mut accepted);
        assert_ne!(state(&a, c), ConnectionState::Connected);
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, metrics) = http_get(off.addr, "/metrics");
    assert!(metrics.contains("relayed_total 0\n"), "{metrics}");
    assert!(!metrics.contains("relay_dropped_total 0\n"), "{metrics}");
}

#[test]
fn connecting_to_an_offline_identity_fails_fast_with_a_clear_reason() {
    let server = punchline_tests::server_process!(&[]);
    let (a, _, _ca) = logged_in(&server.url(), None);
    let nobody = punchline_tests::util::key().identity();
    let started = Instant::now();
    let c = a.connect_p2p(&nobody, 0, &[]).unwrap();
    wait(Duration::from_secs(5), "the connection to end", || {
        state(&a, c) != ConnectionState::Connecting
    });
    let info = a.get_connection_info(c).unwrap();
    assert_eq!(info.state, ConnectionState::ClosedByPeer);
    assert_eq!(info.end_reason, EndReason::MISC_P2P_RENDEZVOUS);
    assert!(info.end_debug.contains("not online"), "{}", info.end_debug);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_quiet_server_drops_signals_to_offline_identities_without_an_answer() {
    let server = punchline_tests::server_process!(&["--quiet-undeliverable"]);
    let (a, _, _ca) = logged_in(&server.url(), None);
    let nobody = punchline_tests::util::key().identity();
    let c = a.connect_p2p(&nobody, 0, &[]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        state(&a, c),
        ConnectionState::Connecting,
        "no answer: still waiting"
    );
}

#[test]
fn symmetric_connect_through_the_server_100_times_gives_one_connection() {
    let server = punchline_tests::server_process!(&[]);
    let symmetric = [(ConfigValue::SymmetricConnect, ConfigData::Int32(1))];
    let (a, _, _ca) = logged_in(&server.url(), None);
    let (b, _, _cb) = logged_in(&server.url(), None);
    let (mut a_events, mut b_events) = (a.status_events(), b.status_events());
    a.create_listen_socket_p2p(9, &symmetric).unwrap();
    b.create_listen_socket_p2p(9, &symmetric).unwrap();
    for round in 0..100 {
        let (ia, ib) = (a.get_identity(), b.get_identity());
        let (a2, b2, sa, sb) = (a.clone(), b.clone(), symmetric.clone(), symmetric.clone());
        let ta = std::thread::spawn(move || a2.connect_p2p(&ib, 9, &sa).unwrap());
        let tb = std::thread::spawn(move || b2.connect_p2p(&ia, 9, &sb).unwrap());
        let (ca, cb) = (ta.join().unwrap(), tb.join().unwrap());
        wait(Duration::from_secs(10), "both connected", || {
            state(&a, ca) == ConnectionState::Connected
                && state(&b, cb) == ConnectionState::Connected
        });
        for (events, own) in [(&mut a_events, ca), (&mut b_events, cb)] {
            while let Some(ev) = events.try_recv() {
                // Only the connection of this round may appear (closes of the last round's
                // connections may still be reported).
                let appeared = ev.old_state == ConnectionState::None;
                assert!(
                    !appeared || ev.connection == own,
                    "round {round}: a second connection appeared"
                );
            }
        }
        a.close_connection(ca, 1000, "next round", false);
        b.close_connection(cb, 1000, "next round", false);
    }
}

// ----- the raw protocol -------------------------------------------------------------------

#[test]
fn the_fake_ip_calls_allocate_through_the_server_and_resolve_identities() {
    use punchline::api::fakeip::{get_ipv4_fake_ip_type, FakeIpType};
    let server = punchline_tests::server_process!(&[]);
    let (a, _, _ca) = logged_in(&server.url(), None);
    let (b, _, _cb) = logged_in(&server.url(), None);
    assert!(a.begin_async_request_fake_ip(2));
    // One request at a time: a second is refused while the first is unanswered. (The answer
    // can come back between the two calls on a busy machine; then the second may start.)
    let again = a.begin_async_request_fake_ip(2);
    assert!(
        !again || a.get_fake_ip().is_some(),
        "a second request started while the first was pending"
    );
    let mut fake = None;
    wait(Duration::from_secs(5), "the fake IP", || {
        fake = a.get_fake_ip();
        fake.is_some()
    });
    let (ip, ports) = fake.unwrap();
    assert_eq!(get_ipv4_fake_ip_type(ip), FakeIpType::GlobalIpv4);
    assert_eq!(ports.len(), 2);
    assert_eq!(a.get_real_identity_for_fake_ip(ip), Some(a.get_identity()));
    // B learns who holds it from the server (the first call asks, a later one knows).
    let mut who = None;
    wait(Duration::from_secs(5), "B to resolve the fake IP", || {
        who = b.get_real_identity_for_fake_ip(ip);
        who.is_some()
    });
    assert_eq!(who, Some(a.get_identity()));
}

#[test]
fn without_a_server_fake_ips_are_local_to_the_process() {
    use punchline::api::fakeip::FakeIpResult;
    use punchline::api::fakeip::{get_ipv4_fake_ip_type, FakeIpType};
    let s = Sockets::new().unwrap();
    let results = capture::<FakeIpResult>(&s, ConfigValue::CallbackFakeIpResult);
    assert!(!s.begin_async_request_fake_ip(5), "at most 4 ports");
    assert!(s.begin_async_request_fake_ip(1));
    let (ip, ports) = s.get_fake_ip().expect("allocated at once");
    assert_eq!(get_ipv4_fake_ip_type(ip), FakeIpType::LocalIpv4);
    assert_eq!(ports.len(), 1);
    assert_eq!(s.get_real_identity_for_fake_ip(ip), Some(s.get_identity()));
    // The result reaches the callback on the thread that runs callbacks.
    s.run_callbacks();
    let got: Vec<FakeIpResult> = results
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.ip == ip)
        .cloned()
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].result, Ok(()));
    assert_eq!(got[0].identity, s.get_identity());
}

#[test]
fn the_relay_network_calls_measure_real_servers_as_pops() {
    use punchline::api::relay::{
        self, convert_ping_location_to_string, parse_ping_location_string, pop_id,
        RelayNetworkStatus,
    };
    use punchline::api::Availability;
    use punchline_signaling::pops::WsPinger;
    let (fra, iad) = (
        punchline_tests::server_process!(&[]),
        punchline_tests::server_process!(&[]),
    );
    // A POP nobody serves: a port just freed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let list = format!("fra={},iad={},sgp=ws://{dead}/", fra.url(), iad.url());
    let s = Sockets::new().unwrap();
    assert_eq!(
        s.get_relay_network_status().available,
        Availability::CannotTry
    );
    let seen = capture::<RelayNetworkStatus>(&s, ConfigValue::CallbackRelayNetworkStatusChanged);
    s.set_relay_network(std::sync::Arc::new(WsPinger::parse(&list).unwrap()));
    assert_eq!(s.get_pop_count(), 3);
    let (fra_id, sgp_id) = (pop_id("fra").unwrap(), pop_id("sgp").unwrap());
    assert_eq!(s.get_pop_list()[0], fra_id);
    assert_eq!(
        s.get_relay_network_status().available,
        Availability::NeverTried
    );
    assert_eq!(s.get_direct_ping_to_pop(fra_id), relay::PING_UNKNOWN);
    assert!(!s.check_ping_data_up_to_date(Duration::from_secs(60)));
    wait(Duration::from_secs(15), "the pings to be measured", || {
        s.run_callbacks();
        !s.get_relay_network_status().ping_measurement_in_progress
    });
    s.run_callbacks();
    let status = s.get_relay_network_status();
    assert_eq!(status.available, Availability::Current, "{status:?}");
    assert!(status.debug_message.contains("2 of 3"), "{status:?}");
    let got: Vec<Availability> = seen.lock().unwrap().iter().map(|s| s.available).collect();
    assert_eq!(got, vec![Availability::Attempting, Availability::Current]);
    let ping = s.get_direct_ping_to_pop(fra_id);
    assert!((0..1000).contains(&ping), "{ping}");
    assert_eq!(s.get_ping_to_data_center(fra_id), (ping, fra_id));
    assert_eq!(s.get_direct_ping_to_pop(sgp_id), relay::PING_FAILED);
    let (here, age) = s.get_local_ping_location().expect("a location");
    assert!(age < Duration::from_secs(15));
    assert_eq!(here.pops().len(), 2, "{here}");
    let text = convert_ping_location_to_string(&here);
    assert!(
        text.contains("fra=") && text.contains("iad=") && !text.contains("sgp"),
        "{text}"
    );
    let back = parse_ping_location_string(&text).unwrap();
    assert_eq!(back, here);
    // From here to here: twice the nearest POP's ping.
    let nearest = here.pops()[0].1 as i32;
    assert_eq!(s.estimate_ping_time_from_local_host(&back), 2 * nearest);
    assert!(s.check_ping_data_up_to_date(Duration::from_secs(60)));
    assert!(parse_ping_location_string("fra=12,bogus").is_err());
}
