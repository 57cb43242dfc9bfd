//! P2P chat: two peers that know each other only by identity, introduced by the punchline
//! signaling server; ICE finds the path between them (directly, or through the server's TURN
//! relay), the server's own relay carries the chat until ICE has (and wherever ICE finds
//! nothing), and the chat itself is end-to-end encrypted.
//!
//! ```sh
//! p2p_chat demo          # a server with STUN and TURN, and two peers, in one process
//! punchline-signaling --listen 127.0.0.1:7373 --stun 127.0.0.1:3478 --turn 127.0.0.1:3479 --turn-allow-peer 127.0.0.0/8 &
//! p2p_chat listen  --server ws://127.0.0.1:7373/ --key alice.key
//! p2p_chat connect --server ws://127.0.0.1:7373/ --key bob.key --peer ed25519:<alice's key>
//! ```
//!
//! `--key FILE` keeps the identity across runs (the file is created when missing); without
//! it each run gets a fresh identity. `--local` keeps the P2P traffic on loopback (both peers
//! on this host); otherwise ICE gathers every interface address, plus what the server's STUN
//! and TURN give. Lines typed are sent to the peer(s); `/quit` leaves.

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::StatusEvents;
use punchline::identity::{Identity, KeyPair};
use punchline::transport::{RouteKind, Routes, Transport};
use punchline::{ConnectionHandle, ConnectionState, SendFlags, Sockets, SocketsConfig};
use punchline_ice::IceTransport;
use punchline_signaling::server::TurnAdvert;
use punchline_signaling::stun::StunServer;
use punchline_signaling::turn_server::{TurnConfig, TurnServer};
use punchline_signaling::{Config, Server, SignalingClient};
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VPORT: u16 = 1;

fn usage() -> ! {
    eprintln!(
        "usage: p2p_chat demo\n       p2p_chat listen --server URL [--key FILE] [--local]\n       \
         p2p_chat connect --server URL --peer IDENTITY [--key FILE] [--local]"
    );
    std::process::exit(2);
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn key(path: Option<String>) -> Result<KeyPair, String> {
    let Some(path) = path else {
        return Ok(KeyPair::generate(&mut rand_core::OsRng));
    };
    if std::path::Path::new(&path).exists() {
        return KeyPair::load(&path).map_err(|e| format!("{path}: {e}"));
    }
    let k = KeyPair::generate(&mut rand_core::OsRng);
    k.save(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(k)
}

/// A peer: its sockets, logged in to the signaling server.
struct Peer {
    sockets: Sockets,
    signaling: Arc<SignalingClient>,
}

/// A peer logged in to the server at `url`, with ICE; `local_only` keeps its P2P traffic on
/// loopback (the demo).
fn peer(url: &str, key: &KeyPair, local_only: bool) -> Result<Peer, String> {
    let sockets = Sockets::with_config(SocketsConfig {
        key: Some(key.clone()),
        p2p_bind: local_only.then(|| "127.0.0.1:0".parse().expect("valid")),
        ..SocketsConfig::default()
    })
    .map_err(|e| e.to_string())?;
    sockets.set_p2p_transport(ice(local_only));
    let signaling =
        SignalingClient::connect(url, key, None, &sockets).map_err(|e| e.to_string())?;
    Ok(Peer { sockets, signaling })
}

/// ICE on every interface, or on loopback only.
fn ice(local_only: bool) -> Arc<dyn Transport> {
    if local_only {
        IceTransport::loopback_only().into_arc()
    } else {
        IceTransport::new().into_arc()
    }
}

fn wait_connected(s: &Sockets, h: ConnectionHandle, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    loop {
        let info = s.get_connection_info(h).map_err(|e| e.to_string())?;
        match info.state {
            ConnectionState::Connected => return Ok(()),
            ConnectionState::Connecting | ConnectionState::FindingRoute => {}
            other => return Err(format!("{other:?}: {}", info.end_debug)),
        }
        if Instant::now() > end {
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a signaling server (with STUN and TURN) and two peers in this process: they find
/// each other by identity, connect through ICE (directly, then once more through the TURN
/// relay), chat, print the route and status, and leave.
fn demo() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local: std::net::SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let mut secret = vec![0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let (server, stun, turn) = rt
        .block_on(async {
            let stun = StunServer::start(local, None).await?;
            // Everything is on loopback here, which TURN refuses to relay to by default.
            let loopback = "127.0.0.0/8".parse().expect("valid");
            let turn = TurnServer::start(
                TurnConfig::new(local, local.ip(), secret.clone()).allow_peer(loopback),
            )
            .await?;
            let config = Config {
                stun: Some(stun.addr()),
                turn: Some(TurnAdvert {
                    addr: turn.addr(),
                    secret,
                    ttl: Duration::from_secs(600),
                    sessions: Some(turn.sessions()),
                }),
                ..Config::default()
            };
            Ok::<_, std::io::Error>((Server::start(local, config).await?, stun, turn))
        })
        .map_err(|e| e.to_string())?;
    let url = format!("ws://{}/", server.addr());
    println!(
        "signaling server at {url}, STUN at {}, TURN at {}",
        stun.addr(),
        turn.addr()
    );
    let (ka, kb) = (
        KeyPair::generate(&mut rand_core::OsRng),
        KeyPair::generate(&mut rand_core::OsRng),
    );
    let alice = peer(&url, &ka, true)?;
    let bob = peer(&url, &kb, true)?;
    println!("alice is {}", ka.identity());
    println!("bob   is {}", kb.identity());
    let mut events = alice.sockets.status_events();
    alice
        .sockets
        .create_listen_socket_p2p(VPORT, &[])
        .map_err(|e| e.to_string())?;
    let relay_only = [(
        ConfigValue::P2pTransportIceEnable,
        ConfigData::Int32(punchline::transport::ICE_RELAY),
    )];
    let runs: [(&str, &[(ConfigValue, ConfigData)]); 2] = [
        ("ICE, any route", &[]),
        ("ICE, relayed candidates only", &relay_only),
    ];
    for (what, options) in runs {
        println!("-- bob connects to alice by identity ({what})");
        let to_alice = bob
            .sockets
            .connect_p2p(&ka.identity(), VPORT, options)
            .map_err(|e| e.to_string())?;
        let to_bob = accept_one(&alice, &mut events)?;
        wait_connected(&bob.sockets, to_alice, Duration::from_secs(20))?;
        wait_connected(&alice.sockets, to_bob, Duration::from_secs(20))?;
        let info = bob
            .sockets
            .get_connection_info(to_alice)
            .map_err(|e| e.to_string())?;
        println!(
            "bob: connected to {} at {}, route {:?}, flags {:?} (encrypted, identity proven)",
            info.identity_remote, info.address_remote, info.route, info.flags
        );
        say(
            &bob,
            to_alice,
            &alice,
            to_bob,
            "alice",
            "hi alice, found you by your key",
        )?;
        say(
            &alice,
            to_bob,
            &bob,
            to_alice,
            "bob",
            "hi bob! no IP addresses exchanged by hand",
        )?;
        show_and_close(&alice, to_bob, &bob, to_alice)?;
    }
    routes(&alice, &bob, &mut events)?;
    rt.block_on(async {
        server.stop().await;
        turn.stop().await;
    });
    drop(stun);
    println!("done");
    Ok(())
}

/// The last run: both peers offer ICE and the signaling server's relay, and route selection
/// picks. The relay is ready first and carries the handshake and first message; ICE takes
/// over once it is up and measured better.
fn routes(alice: &Peer, bob: &Peer, events: &mut StatusEvents) -> Result<(), String> {
    println!("-- bob connects to alice again (ICE and the server's relay, best route chosen)");
    for p in [alice, bob] {
        p.sockets.set_p2p_transport(
            Routes::new(vec![ice(true), Arc::new(p.signaling.relay_transport())]).into_arc(),
        );
    }
    let start = Instant::now();
    let to_alice = bob
        .sockets
        .connect_p2p(&alice.sockets.get_identity(), VPORT, &[])
        .map_err(|e| e.to_string())?;
    let to_bob = accept_one(alice, events)?;
    wait_connected(&bob.sockets, to_alice, Duration::from_secs(20))?;
    wait_connected(&alice.sockets, to_bob, Duration::from_secs(20))?;
    let route = |s: &Sockets, h| s.get_connection_info(h).map(|i| i.route);
    println!(
        "bob: connected in {} ms, route {:?} (the relay is ready first)",
        start.elapsed().as_millis(),
        route(&bob.sockets, to_alice).map_err(|e| e.to_string())?
    );
    say(
        bob,
        to_alice,
        alice,
        to_bob,
        "alice",
        "this one went through the relay",
    )?;
    let end = Instant::now() + Duration::from_secs(15);
    while route(&bob.sockets, to_alice).map_err(|e| e.to_string())? != RouteKind::DirectLocal {
        if Instant::now() > end {
            return Err("ICE never took over from the relay".into());
        }
        // Keep the connection busy: the switch loses nothing.
        let _ =
            bob.sockets
                .send_message_to_connection(to_alice, b"tick".to_vec(), SendFlags::RELIABLE);
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "bob: route switched to {:?} after {} ms",
        RouteKind::DirectLocal,
        start.elapsed().as_millis()
    );
    let ticks = alice
        .sockets
        .receive_messages_on_connection(to_bob, 10_000)
        .map_err(|e| e.to_string())?
        .len();
    println!("alice: {ticks} messages arrived while the route changed");
    show_and_close(alice, to_bob, bob, to_alice)
}

/// Prints bob's detailed connection status, then both leave.
fn show_and_close(
    alice: &Peer,
    to_bob: ConnectionHandle,
    bob: &Peer,
    to_alice: ConnectionHandle,
) -> Result<(), String> {
    let status = bob
        .sockets
        .get_detailed_connection_status(to_alice)
        .map_err(|e| e.to_string())?;
    println!("bob's connection status:");
    for line in status.lines() {
        println!("  {line}");
    }
    bob.sockets.close_connection(to_alice, 0, "bye", true);
    alice.sockets.close_connection(to_bob, 0, "bye", false);
    Ok(())
}

/// Alice accepts the next incoming connection.
fn accept_one(alice: &Peer, events: &mut StatusEvents) -> Result<ConnectionHandle, String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ev) = events.try_recv() {
            if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
                println!(
                    "alice: {} wants to talk; accepting",
                    ev.info.identity_remote
                );
                alice
                    .sockets
                    .accept_connection(ev.connection)
                    .map_err(|e| e.to_string())?;
                return Ok(ev.connection);
            }
        }
        if Instant::now() > end {
            return Err("no connect request reached alice".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `from` sends `text`; `to` (called `name`) prints it when it arrives.
fn say(
    from: &Peer,
    h_from: ConnectionHandle,
    to: &Peer,
    h_to: ConnectionHandle,
    name: &str,
    text: &str,
) -> Result<(), String> {
    from.sockets
        .send_message_to_connection(h_from, text.as_bytes().to_vec(), SendFlags::RELIABLE)
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = to
            .sockets
            .receive_messages_on_connection(h_to, 10)
            .map_err(|e| e.to_string())?;
        if let Some(m) = got.first() {
            println!("{name} got: {}", String::from_utf8_lossy(&m.payload));
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("'{text}' did not arrive"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Chats on stdin/stdout with whoever is connected.
fn chat(p: &Peer, mut conns: Vec<ConnectionHandle>, accept: bool) -> Result<(), String> {
    let mut events = p.sockets.status_events();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        while let Some(ev) = events.try_recv() {
            match ev.info.state {
                ConnectionState::Connecting if accept && ev.info.listen_socket.is_some() => {
                    println!("* {} connecting", ev.info.identity_remote);
                    let _ = p.sockets.accept_connection(ev.connection);
                    conns.push(ev.connection);
                }
                ConnectionState::Connected => {
                    println!("* connected to {}", ev.info.identity_remote)
                }
                ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                    println!("* {} left: {}", ev.info.identity_remote, ev.info.end_debug);
                    conns.retain(|c| *c != ev.connection);
                    p.sockets.close_connection(ev.connection, 0, "", false);
                    if !accept {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        for &c in &conns {
            for m in p
                .sockets
                .receive_messages_on_connection(c, 100)
                .unwrap_or_default()
            {
                println!(
                    "<{}> {}",
                    m.peer_identity,
                    String::from_utf8_lossy(&m.payload)
                );
            }
        }
        while let Ok(line) = rx.try_recv() {
            if line == "/quit" {
                for &c in &conns {
                    p.sockets.close_connection(c, 0, "quit", true);
                }
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            for &c in &conns {
                let _ = p.sockets.send_message_to_connection(
                    c,
                    line.clone().into_bytes(),
                    SendFlags::RELIABLE,
                );
            }
        }
        p.sockets.wait_for_activity(Duration::from_millis(20));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some(mode @ ("listen" | "connect")) => {
            let url = flag(&args, "--server").unwrap_or_else(|| usage());
            (|| {
                let k = key(flag(&args, "--key"))?;
                let local = args.iter().any(|a| a == "--local");
                let p = peer(&url, &k, local)?;
                // ICE and the server's relay, the best route chosen (the relay first).
                p.sockets.set_p2p_transport(
                    Routes::new(vec![ice(local), Arc::new(p.signaling.relay_transport())])
                        .into_arc(),
                );
                println!("I am {}", k.identity());
                if mode == "listen" {
                    p.sockets
                        .create_listen_socket_p2p(VPORT, &[])
                        .map_err(|e| e.to_string())?;
                    println!("waiting for peers; type to chat, /quit to leave");
                    chat(&p, Vec::new(), true)
                } else {
                    let peer_id: Identity = flag(&args, "--peer")
                        .unwrap_or_else(|| usage())
                        .parse()
                        .map_err(|e| format!("--peer: {e}"))?;
                    let c = p
                        .sockets
                        .connect_p2p(&peer_id, VPORT, &[])
                        .map_err(|e| e.to_string())?;
                    wait_connected(&p.sockets, c, Duration::from_secs(20))?;
                    println!("connected; type to chat, /quit to leave");
                    chat(&p, vec![c], false)
                }
            })()
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("p2p_chat: {e}");
        std::process::exit(1);
    }
}
