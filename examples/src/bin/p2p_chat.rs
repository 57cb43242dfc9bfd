//! P2P chat: two peers that know each other only by identity, introduced by the punchline
//! signaling server; the chat itself goes directly between them, encrypted.
//!
//! ```sh
//! p2p_chat demo                                      # a server and two peers in one process
//! punchline-signaling --listen 127.0.0.1:7373 &      # or run the server yourself, then:
//! p2p_chat listen  --server ws://127.0.0.1:7373/ --key alice.key
//! p2p_chat connect --server ws://127.0.0.1:7373/ --key bob.key --peer ed25519:<alice's key>
//! ```
//!
//! `--key FILE` keeps the identity across runs (the file is created when missing); without
//! it each run gets a fresh identity. `--local` keeps the P2P traffic on loopback (both peers
//! on this host); otherwise peers are told every interface address. Lines typed are sent to
//! the peer(s); `/quit` leaves.

use punchline::identity::{Identity, KeyPair};
use punchline::{ConnectionHandle, ConnectionState, SendFlags, Sockets, SocketsConfig};
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
    _signaling: Arc<SignalingClient>,
}

/// A peer logged in to the server at `url`; `local_only` keeps its P2P traffic on loopback
/// (the demo), else peers are told every interface address.
fn peer(url: &str, key: &KeyPair, local_only: bool) -> Result<Peer, String> {
    let sockets = Sockets::with_config(SocketsConfig {
        key: Some(key.clone()),
        p2p_bind: local_only.then(|| "127.0.0.1:0".parse().expect("valid")),
        ..SocketsConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let signaling =
        SignalingClient::connect(url, key, None, &sockets).map_err(|e| e.to_string())?;
    Ok(Peer {
        sockets,
        _signaling: signaling,
    })
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

/// Runs a signaling server and two peers in this process; they chat and leave.
fn demo() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let server = rt
        .block_on(Server::start(
            "127.0.0.1:0".parse().expect("valid"),
            Config::default(),
        ))
        .map_err(|e| e.to_string())?;
    let url = format!("ws://{}/", server.addr());
    println!("signaling server at {url}");
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
    let to_alice = bob
        .sockets
        .connect_p2p(&ka.identity(), VPORT, &[])
        .map_err(|e| e.to_string())?;
    // Alice accepts the incoming connection.
    let end = Instant::now() + Duration::from_secs(10);
    let to_bob = loop {
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
                break ev.connection;
            }
        }
        if Instant::now() > end {
            return Err("no connect request reached alice".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    wait_connected(&bob.sockets, to_alice, Duration::from_secs(10))?;
    wait_connected(&alice.sockets, to_bob, Duration::from_secs(10))?;
    let info = bob
        .sockets
        .get_connection_info(to_alice)
        .map_err(|e| e.to_string())?;
    println!(
        "bob: connected to {} at {} (direct, encrypted)",
        info.identity_remote, info.address_remote
    );
    let lines = [
        (
            &bob,
            to_alice,
            &alice,
            to_bob,
            "hi alice, found you by your key",
        ),
        (
            &alice,
            to_bob,
            &bob,
            to_alice,
            "hi bob! no IP addresses exchanged by hand",
        ),
        (&bob, to_alice, &alice, to_bob, "bye"),
    ];
    for (from, h_from, to, h_to, text) in lines {
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
                let who = if std::ptr::eq(to, &alice) {
                    "alice"
                } else {
                    "bob"
                };
                println!("{who} got: {}", String::from_utf8_lossy(&m.payload));
                break;
            }
            if Instant::now() > end {
                return Err(format!("'{text}' did not arrive"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    bob.sockets.close_connection(to_alice, 0, "bye", true);
    rt.block_on(server.stop());
    println!("done");
    Ok(())
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
                let p = peer(&url, &k, args.iter().any(|a| a == "--local"))?;
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
