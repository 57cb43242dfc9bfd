//! The server as an attacker on loopback finds it: clients that never read, floods of
//! pings and signals, strangers crowding a peer, too many connections from one source, a
//! STUN flood. Each against the real server process, each bounded in time; the figures
//! they print are the ones docs/SIGNALING.md quotes.

use futures_util::{SinkExt, StreamExt};
use punchline::identity::KeyPair;
use punchline_signaling::protocol::{self, ClientMsg, ServerMsg};
use punchline_signaling::relay;
use rand_core::OsRng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message as Frame;

mod common;
use common::{answer_challenge, login_as, recv, rt, send, signal, start_server, two_logged_in, Ws};

/// Sends `frame` until the connection fails or `limit` passes; the bytes sent.
async fn flood(ws: &mut Ws, frame: Frame, limit: Duration) -> (u64, bool) {
    let end = Instant::now() + limit;
    let mut sent = 0u64;
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(1), ws.send(frame.clone())).await {
            Ok(Ok(())) => sent += frame.len() as u64,
            Ok(Err(_)) => return (sent, true),
            Err(_) => {} // our own send buffer is full: the server stopped reading us
        }
    }
    (sent, false)
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory_and_is_disconnected() {
    // A message rate no flood reaches: what bounds memory here is the queue cap alone.
    let server = start_server(&["--write-timeout", "2", "--rate", "100000000"]);
    let url = server.url();
    rt().block_on(async {
        // Pings (with the largest payload a ping may carry) from a client that never logs
        // in and never reads: the server's answers must not pile up.
        let ping = Frame::Ping(vec![7u8; 125].into());
        let before = server.rss();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let (sent, _) = flood(&mut ws, ping.clone(), Duration::from_secs(3)).await;
        let grown = server.rss().saturating_sub(before);
        eprintln!("ping flood, no rate limit: {sent} bytes sent in 3 s, server grew {grown} bytes");
        assert!(sent > 8 << 20, "the flood was {sent} bytes");
        assert!(grown < 4 << 20, "the server grew {grown} bytes");
        drop(ws);
        // At the default message rate the server also ends such a client.
        let strict = start_server(&[]);
        let (mut ws, _) = tokio_tungstenite::connect_async(strict.url().as_str())
            .await
            .unwrap();
        let (sent, cut) = flood(&mut ws, ping, Duration::from_secs(5)).await;
        eprintln!("ping flood at the default rate: cut after {sent} bytes");
        assert!(cut, "the server ends a client that floods it with pings");

        // A logged-in client that never reads, sent signals as fast as a peer can: its
        // queue stays under the cap and a stuck write disconnects it.
        let (r, f) = (KeyPair::generate(&mut OsRng), KeyPair::generate(&mut OsRng));
        let (reader_ws, _) = login_as(&url, &r.identity(), &r).await;
        let (fw, _) = login_as(&url, &f.identity(), &f).await;
        let before = server.rss();
        let data = protocol::base64(&[1u8; protocol::MAX_SIGNAL]);
        let to = r.identity().to_string();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut gone = false;
        let (mut tx, mut rx) = fw.split();
        let sender = async {
            while started.elapsed() < Duration::from_secs(20) {
                let m = ClientMsg::Signal {
                    to: to.clone(),
                    data: data.clone(),
                    id: None,
                };
                let text = serde_json::to_string(&m).unwrap();
                sent += text.len() as u64;
                if tx.send(Frame::text(text)).await.is_err() {
                    break;
                }
                // Under the server's message rate (200 a second).
                tokio::time::sleep(Duration::from_millis(6)).await;
            }
        };
        let watcher = async {
            // The first answer saying the reader is offline: the server gave up on it.
            while let Some(Ok(frame)) = rx.next().await {
                if let Frame::Text(t) = frame {
                    if let Ok(ServerMsg::Undeliverable { .. }) = serde_json::from_str(t.as_str()) {
                        gone = true;
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = sender => {},
            () = watcher => {},
        }
        let grown = server.rss().saturating_sub(before);
        eprintln!(
            "signals to a non-reader: {sent} bytes sent in {:?}, server grew {grown} bytes",
            started.elapsed()
        );
        assert!(
            gone,
            "the server disconnected the client that does not read"
        );
        assert!(grown < 4 << 20, "the server grew {grown} bytes");
        assert_eq!(server.metric("punchline_signaling_slow_clients_total"), 1);
        drop(reader_ws);
    });
}

#[test]
fn strangers_flooding_a_client_do_not_crowd_out_its_peers_signals() {
    let server = start_server(&[]);
    let url = server.url();
    rt().block_on(async {
        let r = KeyPair::generate(&mut OsRng);
        let (mut rw, _) = login_as(&url, &r.identity(), &r).await;
        let friend = KeyPair::generate(&mut OsRng);
        let (mut fw, _) = login_as(&url, &friend.identity(), &friend).await;
        let to = r.identity().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut strangers = Vec::new();
        for _ in 0..4 {
            let k = KeyPair::generate(&mut OsRng);
            let (mut w, _) = login_as(&url, &k.identity(), &k).await;
            let (to, stop) = (to.clone(), stop.clone());
            strangers.push(tokio::spawn(async move {
                let data = protocol::base64(&[0u8; protocol::MAX_SIGNAL]);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let m = ClientMsg::Signal {
                        to: to.clone(),
                        data: data.clone(),
                        id: None,
                    };
                    send(&mut w, &m).await;
                    // Just under the server's rate of 200 a second.
                    tokio::time::sleep(Duration::from_millis(6)).await;
                }
            }));
        }
        let friend_id = friend.identity().to_string();
        let from_friend = |m: &ServerMsg| matches!(m, ServerMsg::Signal { from, .. } if *from == friend_id);
        // The recipient reads slowly (at most 200 frames a second), less than the strangers
        // send it.
        let reading = async {
            let mut heard = 0;
            let deadline = Instant::now() + Duration::from_secs(40);
            while heard < 50 && Instant::now() < deadline {
                let Ok(Some(Ok(Frame::Text(t)))) =
                    tokio::time::timeout(Duration::from_secs(5), rw.next()).await
                else {
                    continue;
                };
                if from_friend(&serde_json::from_str(t.as_str()).unwrap()) {
                    heard += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            heard
        };
        let talking = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for n in 0..50u32 {
                let m = ClientMsg::Signal {
                    to: to.clone(),
                    data: protocol::base64(&n.to_be_bytes()),
                    id: Some(u64::from(n)),
                };
                send(&mut fw, &m).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        let (heard, ()) = tokio::join!(reading, talking);
        for s in strangers {
            let _ = s.await;
        }
        let dropped = server.metric("punchline_signaling_signals_dropped_total");
        eprintln!("the friend's signals heard under a flood of 4 strangers: {heard} of 50 ({dropped} strangers' signals dropped)");
        assert!(heard >= 48, "only {heard} of the friend's 50 signals arrived");
        assert!(dropped > 0, "the flood was more than the recipient took");
    });
}

#[test]
fn relay_frames_pass_only_between_peers_that_signalled_each_other() {
    let server = start_server(&[]);
    let url = server.url();
    rt().block_on(async {
        let ((a, mut wa), (b, mut wb)) = two_logged_in(&url).await;
        let (ia, ib) = (a.identity().to_string(), b.identity().to_string());
        let datagram = |to: &str| Frame::Binary(relay::encode(to, 7, b"hello").unwrap().into());
        // A stranger's datagram goes nowhere.
        wa.send(datagram(&ib)).await.unwrap();
        let heard = next_data(&mut wb, Duration::from_millis(500)).await;
        assert!(
            heard.is_none(),
            "B heard a stranger's relay frame: {heard:?}"
        );
        assert_eq!(server.metric("punchline_signaling_relay_dropped_total"), 1);
        // Once both have signalled (a rendezvous asked and answered), it passes.
        signal(&mut wa, &b.identity(), b"hi", None).await;
        assert!(matches!(recv(&mut wb).await, ServerMsg::Signal { .. }));
        wa.send(datagram(&ib)).await.unwrap();
        let heard = next_data(&mut wb, Duration::from_millis(500)).await;
        assert!(heard.is_none(), "asked but not answered: {heard:?}");
        signal(&mut wb, &a.identity(), b"hi", None).await;
        assert!(matches!(recv(&mut wa).await, ServerMsg::Signal { .. }));
        wa.send(datagram(&ib)).await.unwrap();
        let Some(Frame::Binary(got)) = next_data(&mut wb, Duration::from_secs(5)).await else {
            panic!("the relay frame did not arrive");
        };
        let got = relay::decode(&got).unwrap();
        assert_eq!(
            (got.peer, got.session, got.datagram),
            (ia.as_str(), 7, &b"hello"[..])
        );
    });
}

#[test]
fn one_source_cannot_hold_every_slot_and_others_are_still_served() {
    let server = start_server(&["--max-pending-per-source", "4"]);
    rt().block_on(async {
        // Four connections that never send a request hold 127.0.0.1's slots.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut fifth = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
            .await
            .expect("the fifth connection is closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // Another source (127.0.0.2) is served meanwhile.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = socket.connect(server.addr).await.unwrap();
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (mut ws, _) = tokio_tungstenite::client_async(server.url(), stream)
            .await
            .unwrap();
        assert!(matches!(recv(&mut ws).await, ServerMsg::Challenge { .. }));
        // When the idle ones go, 127.0.0.1 may connect again.
        drop(idle);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(server.metric("punchline_signaling_refused_total") >= 1);
        let (mut again, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        assert!(matches!(
            recv(&mut again).await,
            ServerMsg::Challenge { .. }
        ));
    });
}

#[test]
fn a_challenge_passed_on_from_another_server_fails() {
    // A server the victim logs in to ("evil.example") passes on the real server's challenge
    // and forwards the answer: the proof names evil.example, so the real server refuses it.
    let server = start_server(&["--name", "signal.example"]);
    let url = server.url();
    rt().block_on(async {
        let victim = KeyPair::generate(&mut OsRng);
        let id = victim.identity();
        for (host, ok) in [
            ("evil.example", false),
            ("127.0.0.1", true),
            ("signal.example", true),
        ] {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let answer = answer_challenge(&mut ws, host, &id, &victim, None).await;
            if ok {
                assert!(
                    matches!(answer, ServerMsg::Welcome { .. }),
                    "{host}: {answer:?}"
                );
            } else {
                let ServerMsg::Error { code, message } = &answer else {
                    panic!("a passed-on challenge was accepted: {answer:?}");
                };
                assert_eq!(code, "auth_failed");
                assert!(message.contains("evil.example"), "{message}");
            }
        }
    });
}

/// The next text or binary frame within `limit` (pings and pongs skipped); `None` when none
/// came.
async fn next_data(ws: &mut Ws, limit: Duration) -> Option<Frame> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(Some(Ok(f @ (Frame::Text(_) | Frame::Binary(_))))) => return Some(f),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the connection ended: {other:?}"),
            Err(_) => return None,
        }
    }
}

/// A bare Binding request (20 bytes, as webrtc-ice sends).
fn binding_request(n: u32) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&n.to_be_bytes());
    m
}

#[test]
fn stun_answers_at_most_twice_the_request_and_holds_a_flooding_source_to_its_rate() {
    let server = start_server(&["--stun", "127.0.0.1:0"]);
    let stun: SocketAddr = server.banner_addr("stun on ");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let req = binding_request(0);
    socket.send_to(&req, stun).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let factor = n as f64 / req.len() as f64;
    eprintln!(
        "STUN: a {}-byte Binding request gets {n} bytes ({factor:.2}x)",
        req.len()
    );
    assert!(factor <= 2.0, "{factor}x");
    // A flood from one source: a burst of twice the rate, then the rate.
    let f = common::flood_one_source(&socket, stun, 2000, binding_request);
    let (answered, flood_took) = (f.answered, f.took);
    let allowed = f.allowed(punchline_signaling::stun::RATE_PER_SOURCE);
    eprintln!("STUN: 2000 requests from one source in {flood_took:?}: {answered} answered");
    assert!(answered >= 150, "{answered} answered: the burst is served");
    assert!(
        f64::from(answered) <= allowed + 10.0,
        "{answered} answered, {allowed} allowed"
    );
}
