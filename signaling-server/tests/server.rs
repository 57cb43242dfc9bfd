//! The signaling server as a real process (and in-process for the load test), with real
//! websocket clients and real P2P connections between `Sockets` on loopback.

use futures_util::{SinkExt, StreamExt};
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::identity::{Identity, KeyPair};
use punchline::{ConnectionState, EndReason, SendFlags, Sockets};
use punchline_signaling::protocol::{self, ClientMsg, ServerMsg};
use punchline_signaling::{relay, Config, Server};
use rand_core::OsRng;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{
    accept_incoming, answer_challenge, connect_pair, error_code, http_get, login_as, peer, recv,
    rt, send, signal, state, two_logged_in, wait, Process,
};
use tokio_tungstenite::tungstenite::Message as Frame;

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
fn health_and_metrics_answer_on_the_websocket_address() {
    let server = Process::start(&[]);
    let (status, body) = http_get(server.addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("punchline_signaling_clients 0"), "{body}");
    assert_eq!(http_get(server.addr, "/nope").0, 404);
}

#[test]
fn two_peers_connect_p2p_through_the_server_talk_and_close() {
    let server = Process::start(&[]);
    let (a, _, _ca) = peer(&server.url());
    let (b, _, _cb) = peer(&server.url());
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
    let server = Process::start(&[]);
    let (a, _, ca) = peer(&server.url());
    let (b, _, cb) = peer(&server.url());
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
    let off = Process::start(&["--relay-rate", "0"]);
    let (a, _, ca) = peer(&off.url());
    let (b, _, cb) = peer(&off.url());
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
    let server = Process::start(&[]);
    let (a, _, _ca) = peer(&server.url());
    let nobody = KeyPair::generate(&mut OsRng).identity();
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
    let server = Process::start(&["--quiet-undeliverable"]);
    let (a, _, _ca) = peer(&server.url());
    let nobody = KeyPair::generate(&mut OsRng).identity();
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
    let server = Process::start(&[]);
    let symmetric = [(ConfigValue::SymmetricConnect, ConfigData::Int32(1))];
    let (a, _, _ca) = peer(&server.url());
    let (b, _, _cb) = peer(&server.url());
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
fn the_welcome_carries_stun_and_fresh_turn_credentials() {
    let server = Process::start(&[
        "--stun",
        "127.0.0.1:0",
        "--turn",
        "127.0.0.1:0",
        "--turn-ttl",
        "120",
    ]);
    let key = KeyPair::generate(&mut rand_core::OsRng);
    let me = key.identity();
    let (_ws, answer) = rt().block_on(login_as(&server.url(), &me, &key));
    let ServerMsg::Welcome {
        ice: Some(ice),
        rate: Some(200),
        ..
    } = answer
    else {
        panic!("no ICE settings in {answer:?}");
    };
    assert!(ice.stun[0].starts_with("stun:127.0.0.1:"), "{ice:?}");
    let turn = &ice.turn[0];
    assert!(turn.url.starts_with("turn:127.0.0.1:"), "{ice:?}");
    assert!(turn.username.ends_with(&format!(":{me}")), "{ice:?}");
    assert!(!turn.credential.is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 100..=now + 130).contains(&turn.expires), "{ice:?}");
    assert!(turn.username.starts_with(&turn.expires.to_string()));
    // Without --stun and --turn there is nothing to say.
    let plain = Process::start(&[]);
    let (_ws, answer) = rt().block_on(login_as(&plain.url(), &me, &key));
    assert!(
        matches!(answer, ServerMsg::Welcome { ice: None, .. }),
        "{answer:?}"
    );
}

#[test]
fn nobody_can_log_in_as_someone_else() {
    let server = Process::start(&[]);
    let url = server.url();
    rt().block_on(async {
        let (alice, mallory) = (KeyPair::generate(&mut OsRng), KeyPair::generate(&mut OsRng));
        // Mallory claims Alice's identity, signing with her own key.
        let (_, answer) = login_as(&url, &alice.identity(), &mallory).await;
        assert_eq!(error_code(&answer), "auth_failed", "{answer:?}");
        // A string identity needs a certificate.
        let named = Identity::generic_string("alice").unwrap();
        let (_, answer) = login_as(&url, &named, &mallory).await;
        assert_eq!(error_code(&answer), "auth_failed", "{answer:?}");
        // Alice logs in; a second login with her identity must prove her key to replace her.
        let (mut first, answer) = login_as(&url, &alice.identity(), &alice).await;
        assert!(matches!(answer, ServerMsg::Welcome { .. }), "{answer:?}");
        let (mut second, answer) = login_as(&url, &alice.identity(), &alice).await;
        assert!(matches!(answer, ServerMsg::Welcome { .. }), "{answer:?}");
        assert_eq!(error_code(&recv(&mut first).await), "replaced");
        // Before logging in, nothing else is allowed.
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let _challenge = recv(&mut ws).await;
        send(
            &mut ws,
            &ClientMsg::Signal {
                to: alice.identity().to_string(),
                data: protocol::base64(b"x"),
                id: None,
            },
        )
        .await;
        assert_eq!(error_code(&recv(&mut ws).await), "not_logged_in");
        // The replacing session works.
        send(&mut second, &ClientMsg::FakeipRequest { id: 1 }).await;
        assert!(matches!(recv(&mut second).await, ServerMsg::Fakeip { .. }));
    });
}

#[test]
fn malformed_input_gets_an_error_and_everyone_else_is_still_served() {
    let server = Process::start(&["--max-frame", "4096"]);
    let url = server.url();
    rt().block_on(async {
        let ((a, mut wa), (b, mut wb)) = two_logged_in(&url).await;
        for (frame, code) in [
            (Frame::text("not json"), "malformed"),
            (Frame::text(r#"{"type":"teleport"}"#), "unknown_type"),
            (Frame::text(r#"{"type":"signal","to":"x"}"#), "malformed"),
            (
                Frame::text(r#"{"type":"signal","to":"nonsense","data":"AA=="}"#),
                "malformed",
            ),
            (Frame::text(r#"[1,2,3]"#), "malformed"),
            (Frame::binary(vec![1, 2, 3]), "bad_relay_frame"),
            (
                Frame::binary(vec![7, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                "bad_relay_frame",
            ),
        ] {
            wa.send(frame).await.unwrap();
            assert_eq!(error_code(&recv(&mut wa).await), code);
        }
        // B is served all along: a signal from A still reaches B.
        signal(&mut wa, &b.identity(), b"hello", Some(1)).await;
        let ServerMsg::Signal { from, data } = recv(&mut wb).await else {
            panic!("no signal")
        };
        assert_eq!(from, a.identity().to_string());
        assert_eq!(protocol::unbase64(&data, 64).unwrap(), b"hello");
        // B answers: the two are in a rendezvous, so the relay carries their datagrams.
        signal(&mut wb, &a.identity(), b"hi", Some(2)).await;
        assert!(matches!(recv(&mut wa).await, ServerMsg::Signal { .. }));
        // The relay: A's datagram reaches B as from A (whoever A claims to be), with its
        // session; one for someone offline goes nowhere.
        let frame = relay::encode(&b.identity().to_string(), 77, b"ciphertext").unwrap();
        wa.send(Frame::binary(frame)).await.unwrap();
        let got = loop {
            match tokio::time::timeout(Duration::from_secs(5), wb.next()).await {
                Ok(Some(Ok(Frame::Binary(data)))) => break data.to_vec(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no relay frame: {other:?}"),
            }
        };
        let f = relay::decode(&got).unwrap();
        assert_eq!(f.peer, a.identity().to_string());
        assert_eq!((f.session, f.datagram), (77, &b"ciphertext"[..]));
        let nobody = KeyPair::generate(&mut OsRng).identity().to_string();
        wa.send(Frame::binary(relay::encode(&nobody, 1, b"x").unwrap()))
            .await
            .unwrap();
        // An oversized frame ends that client only.
        let _ = wa.send(Frame::text("x".repeat(10_000))).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), wa.next()).await;
        send(&mut wb, &ClientMsg::FakeipRequest { id: 2 }).await;
        assert!(matches!(recv(&mut wb).await, ServerMsg::Fakeip { .. }));
    });
    assert_eq!(http_get(server.addr, "/healthz").0, 200);
    let metrics = http_get(server.addr, "/metrics").1;
    for line in [
        "punchline_signaling_relayed_total 1",
        "punchline_signaling_relay_dropped_total 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[test]
fn fake_ips_are_allocated_resolved_limited_and_released() {
    let server = Process::start(&[]);
    let url = server.url();
    rt().block_on(async {
        let ((a, mut wa), (_, mut wb)) = two_logged_in(&url).await;
        let mut ip = String::new();
        for n in 1..=4 {
            send(&mut wa, &ClientMsg::FakeipRequest { id: n }).await;
            let ServerMsg::Fakeip { id, ip: got, ports } = recv(&mut wa).await else {
                panic!("no fake ip")
            };
            assert_eq!((id, ports.len()), (n, n as usize));
            assert!(got.starts_with("169.254."), "{got}");
            if n > 1 {
                assert_eq!(got, ip, "the same address for the same identity");
            }
            ip = got;
        }
        send(&mut wa, &ClientMsg::FakeipRequest { id: 5 }).await;
        assert_eq!(error_code(&recv(&mut wa).await), "limit");
        send(
            &mut wb,
            &ClientMsg::FakeipResolve {
                id: 6,
                ip: ip.clone(),
            },
        )
        .await;
        let ServerMsg::FakeipIdentity { identity, .. } = recv(&mut wb).await else {
            panic!("no answer")
        };
        assert_eq!(identity, Some(a.identity().to_string()));
        // A leaves: its address is released.
        drop(wa);
        let mut released = false;
        for _ in 0..100 {
            send(
                &mut wb,
                &ClientMsg::FakeipResolve {
                    id: 7,
                    ip: ip.clone(),
                },
            )
            .await;
            if let ServerMsg::FakeipIdentity { identity: None, .. } = recv(&mut wb).await {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(released, "the address was released when its holder left");
    });
}

#[test]
fn a_thousand_clients_on_one_server() {
    const N: usize = 1000;
    rt().block_on(async {
        // Every client comes from 127.0.0.1: that source may log in all of them at once.
        let config = Config {
            max_pending_per_source: N,
            ..Config::default()
        };
        let server = Server::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let url = format!("ws://{}/", server.addr());
        let keys: Vec<KeyPair> = (0..N).map(|_| KeyPair::generate(&mut OsRng)).collect();
        let mut logins = Vec::new();
        for k in &keys {
            let (url, k) = (url.clone(), k.clone());
            logins.push(tokio::spawn(async move {
                let (ws, answer) = login_as(&url, &k.identity(), &k).await;
                assert!(matches!(answer, ServerMsg::Welcome { .. }), "{answer:?}");
                ws
            }));
        }
        let mut sockets = Vec::new();
        for l in logins {
            sockets.push(l.await.unwrap());
        }
        assert_eq!(
            server
                .metrics()
                .clients
                .load(std::sync::atomic::Ordering::Relaxed),
            N as u64
        );
        // Everyone signals the next one; everyone hears from the previous one.
        for (i, ws) in sockets.iter_mut().enumerate() {
            let to = keys[(i + 1) % N].identity().to_string();
            let data = protocol::base64(&(i as u32).to_be_bytes());
            send(ws, &ClientMsg::Signal { to, data, id: None }).await;
        }
        for (i, ws) in sockets.iter_mut().enumerate() {
            let ServerMsg::Signal { from, data } = recv(ws).await else {
                panic!("client {i}: no signal")
            };
            let prev = (i + N - 1) % N;
            assert_eq!(from, keys[prev].identity().to_string());
            assert_eq!(
                protocol::unbase64(&data, 8).unwrap(),
                (prev as u32).to_be_bytes()
            );
        }
        drop(sockets);
        server.stop().await;
    });
}

#[test]
fn sigterm_closes_every_client_cleanly_and_exits_zero() {
    let mut server = Process::start(&[]);
    let url = server.url();
    let runtime = rt();
    let ws = runtime.block_on(async {
        let k = KeyPair::generate(&mut OsRng);
        let (ws, answer) = login_as(&url, &k.identity(), &k).await;
        assert!(matches!(answer, ServerMsg::Welcome { .. }));
        ws
    });
    // Keep reading (and so answering the server's pings) from here on.
    let reader = runtime.spawn(async move {
        let mut ws = ws;
        loop {
            match ws.next().await {
                Some(Ok(Frame::Close(_))) | None => return true,
                Some(Ok(_)) => {}
                Some(Err(_)) => return false,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let got =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), reader).await });
    assert!(
        matches!(got, Ok(Ok(true))),
        "a close frame on shutdown: {got:?}"
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_fake_ip_calls_allocate_through_the_server_and_resolve_identities() {
    use punchline::api::fakeip::{get_ipv4_fake_ip_type, FakeIpType};
    let server = Process::start(&[]);
    let (a, _, _ca) = peer(&server.url());
    let (b, _, _cb) = peer(&server.url());
    assert!(a.begin_async_request_fake_ip(2));
    assert!(!a.begin_async_request_fake_ip(2), "one request at a time");
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
fn limits_rate_clients_login_time_and_idle_time_are_enforced() {
    let server = Process::start(&[
        "--rate",
        "5",
        "--max-clients",
        "3",
        "--login-timeout",
        "1",
        "--idle-timeout",
        "2",
    ]);
    let url = server.url();
    rt().block_on(async {
        let k = KeyPair::generate(&mut OsRng);
        let (mut ws, _) = login_as(&url, &k.identity(), &k).await;
        // Rate: 5 per second, burst 10: a quick 25 draw rate_limited errors (fewer than the
        // 20 errors after which the server gives up on a client).
        for n in 0..25 {
            send(
                &mut ws,
                &ClientMsg::FakeipResolve {
                    id: n,
                    ip: "169.254.9.9".into(),
                },
            )
            .await;
        }
        let mut limited = 0;
        for _ in 0..25 {
            if error_code(&recv(&mut ws).await) == "rate_limited" {
                limited += 1;
            }
        }
        assert!(limited >= 10, "{limited} of 25 refused");
        // Login time: a client that never logs in is closed.
        let (mut lazy, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let _challenge = recv(&mut lazy).await;
        assert_eq!(error_code(&recv(&mut lazy).await), "timeout");
        // Idle time: a logged-in client that goes silent (no pongs either) is closed.
        let k2 = KeyPair::generate(&mut OsRng);
        let (mut quiet, _) = login_as(&url, &k2.identity(), &k2).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The server has given up on it: reading ends in the error text, a close, or (as
        // answering the pings queued meanwhile writes to a closed socket) an error.
        let mut ended = false;
        while let Ok(next) = tokio::time::timeout(Duration::from_secs(2), quiet.next()).await {
            match next {
                Some(Ok(Frame::Text(t))) if t.as_str().contains("\"timeout\"") => ended = true,
                Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => {
                    ended = true;
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
        let timed_out = ended;
        assert!(timed_out, "the idle client was told and closed");
        // Clients: 3 at most. (The first client may be gone already: too many errors.)
        drop(ws);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let k = KeyPair::generate(&mut OsRng);
            let (w, answer) = login_as(&url, &k.identity(), &k).await;
            assert!(matches!(answer, ServerMsg::Welcome { .. }), "{answer:?}");
            held.push(w);
        }
        let (mut full, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        assert_eq!(error_code(&recv(&mut full).await), "server_full");
    });
}

#[test]
fn a_certificate_from_a_trusted_ca_proves_a_named_identity() {
    use punchline::identity::Certificate;
    let ca = KeyPair::generate(&mut OsRng);
    let dir = std::env::temp_dir().join(format!("punchline-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("trusted-ca.txt");
    std::fs::write(&ca_file, format!("# test CA\n{}\n", ca.public_key())).unwrap();
    let server = Process::start(&["--trusted-ca", ca_file.to_str().unwrap()]);
    let url = server.url();
    let alice = Identity::generic_string("alice").unwrap();
    let key = KeyPair::generate(&mut OsRng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cert = Certificate::issue(
        &ca,
        alice.clone(),
        key.public_key(),
        now - 60,
        now + 3600,
        vec![],
    )
    .unwrap();
    let other_ca = KeyPair::generate(&mut OsRng);
    let forged = Certificate::issue(
        &other_ca,
        alice.clone(),
        key.public_key(),
        now - 60,
        now + 3600,
        vec![],
    )
    .unwrap();
    rt().block_on(async {
        for (cert, ok) in [(&cert, true), (&forged, false)] {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let cert = Some(cert.to_base64());
            let answer = answer_challenge(&mut ws, "127.0.0.1", &alice, &key, cert).await;
            if ok {
                assert_eq!(
                    answer,
                    ServerMsg::Welcome {
                        identity: "str:alice".into(),
                        ice: None,
                        rate: Some(200),
                    }
                );
            } else {
                assert_eq!(error_code(&answer), "auth_failed", "{answer:?}");
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_relay_network_calls_measure_real_servers_as_pops() {
    use punchline::api::relay::{
        self, convert_ping_location_to_string, parse_ping_location_string, pop_id,
        RelayNetworkStatus,
    };
    use punchline::api::Availability;
    use punchline_signaling::pops::WsPinger;
    let (fra, iad) = (Process::start(&[]), Process::start(&[]));
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
