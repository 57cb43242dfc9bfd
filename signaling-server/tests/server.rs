//! The signaling server as a real process (and in-process for the load test), through its
//! own protocol with real websocket clients: health and metrics, the welcome, logins,
//! malformed input, FakeIP allocation, a thousand clients, SIGTERM, limits, certificates.
//! (`Sockets` through the server: `tests/tests/through_server.rs`.)

use futures_util::{SinkExt, StreamExt};
use punchline::identity::{Identity, KeyPair};
use punchline_signaling::protocol::{self, ClientMsg, ServerMsg};
use punchline_signaling::{relay, Config, Server};
use rand_core::OsRng;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{
    answer_challenge, error_code, http_get, login_as, recv, rt, send, signal, start_server,
    two_logged_in,
};
use tokio_tungstenite::tungstenite::Message as Frame;

#[test]
fn health_and_metrics_answer_on_the_websocket_address() {
    let server = start_server(&[]);
    let (status, body) = http_get(server.addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("punchline_signaling_clients 0"), "{body}");
    assert_eq!(http_get(server.addr, "/nope").0, 404);
}

#[test]
fn the_welcome_carries_stun_and_fresh_turn_credentials() {
    let server = start_server(&[
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
    let plain = start_server(&[]);
    let (_ws, answer) = rt().block_on(login_as(&plain.url(), &me, &key));
    assert!(
        matches!(answer, ServerMsg::Welcome { ice: None, .. }),
        "{answer:?}"
    );
}

#[test]
fn nobody_can_log_in_as_someone_else() {
    let server = start_server(&[]);
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
    let server = start_server(&["--max-frame", "4096"]);
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
    let server = start_server(&[]);
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
    let mut server = start_server(&[]);
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
fn limits_rate_clients_login_time_and_idle_time_are_enforced() {
    let server = start_server(&[
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
    let dir = punchline_tests::util::Scratch::new("ca");
    let ca_file = dir.join("trusted-ca.txt");
    std::fs::write(&ca_file, format!("# test CA\n{}\n", ca.public_key())).unwrap();
    let server = start_server(&["--trusted-ca", ca_file.to_str().unwrap()]);
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
}
