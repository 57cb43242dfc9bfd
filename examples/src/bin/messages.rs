//! The Messages interface (ISteamNetworkingMessages): UDP-style messages to peers named by
//! identity, with no connection to manage. One process runs a signaling server and three
//! peers; alice sends chat (reliable, channel 0) and positions (unreliable, channel 1) to bob
//! and carol, who accept her session requests; bob leaves, and alice learns of it when her
//! next send fails.
//!
//! ```sh
//! cargo run -p punchline-examples --bin messages
//! ```

use punchline::api::{Messages, MessagesEvent};
use punchline::identity::Identity;
use punchline::{Error, SendFlags};
use punchline_examples::local::{LocalPeer, LocalServer};
use punchline_signaling::Config;
use std::time::{Duration, Instant};

const CHAT: u32 = 0;
const POSITIONS: u32 = 1;

struct Peer {
    name: &'static str,
    id: Identity,
    messages: Messages,
    _peer: LocalPeer,
}

fn peer(server: &LocalServer, name: &'static str) -> Result<Peer, String> {
    let p = LocalPeer::join(server)?;
    let messages = Messages::new(&p.sockets).map_err(|e| e.to_string())?;
    println!("{name} is {}", p.key.identity());
    Ok(Peer {
        name,
        id: p.key.identity(),
        messages,
        _peer: p,
    })
}

/// Accepts session requests and prints what arrives until `want` chat lines came, or 10 s.
fn listen(p: &Peer, names: &[(&Identity, &str)], want: usize) -> Result<(), String> {
    let name_of = |id: &Identity| {
        names
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("someone", |(_, n)| *n)
            .to_string()
    };
    let end = Instant::now() + Duration::from_secs(10);
    let mut chat = 0;
    let mut positions = 0;
    while chat < want {
        while let Some(e) = p.messages.poll_event() {
            if let MessagesEvent::SessionRequest { identity } = e {
                println!(
                    "{}: session request from {}; accepting",
                    p.name,
                    name_of(&identity)
                );
                p.messages.accept_session_with_user(&identity);
            }
        }
        for m in p.messages.receive_messages_on_channel(CHAT, 16) {
            chat += 1;
            println!(
                "{} got on channel {CHAT} from {}: {}",
                p.name,
                name_of(&m.peer_identity),
                String::from_utf8_lossy(&m.payload)
            );
        }
        positions += p.messages.receive_messages_on_channel(POSITIONS, 64).len();
        if Instant::now() > end {
            return Err(format!("{} got {chat} of {want} chat lines", p.name));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{} also got {positions} position updates on channel {POSITIONS}",
        p.name
    );
    Ok(())
}

fn run() -> Result<(), String> {
    let server = LocalServer::start(Config::default())?;
    let alice = peer(&server, "alice")?;
    let bob = peer(&server, "bob")?;
    let carol = peer(&server, "carol")?;
    let names = [(&alice.id, "alice"), (&bob.id, "bob"), (&carol.id, "carol")];
    for to in [&bob, &carol] {
        let text = format!("hello {}, no connection needed", to.name);
        alice
            .messages
            .send_message_to_user(&to.id, text.as_bytes(), SendFlags::RELIABLE, CHAT)
            .map_err(|e| e.to_string())?;
        for step in 0..20u8 {
            alice
                .messages
                .send_message_to_user(&to.id, &[step, 0, 0], SendFlags::UNRELIABLE, POSITIONS)
                .map_err(|e| e.to_string())?;
        }
    }
    listen(&bob, &names, 1)?;
    listen(&carol, &names, 1)?;
    // bob answers; alice reads it.
    bob.messages
        .send_message_to_user(&alice.id, b"hi alice", SendFlags::RELIABLE, CHAT)
        .map_err(|e| e.to_string())?;
    listen(&alice, &names, 1)?;
    if let Some((info, status)) = alice.messages.get_session_connection_info(&bob.id) {
        println!(
            "alice's session with bob: {:?}, route {:?}, ping {} ms",
            info.state, info.route, status.ping_ms
        );
    }
    // bob is done with alice: his last channel closes, and with it the session.
    bob.messages.close_channel_with_user(&alice.id, CHAT);
    bob.messages.close_channel_with_user(&alice.id, POSITIONS);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match alice.messages.send_message_to_user(
            &bob.id,
            b"still there?",
            SendFlags::RELIABLE,
            CHAT,
        ) {
            Err(Error::NoConnection) => {
                println!("alice: bob's session is broken; sends fail until she closes it");
                break;
            }
            _ if Instant::now() > end => return Err("bob's leaving went unnoticed".into()),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    while let Some(e) = alice.messages.poll_event() {
        if let MessagesEvent::SessionFailed { info } = e {
            println!(
                "alice: session failed: {:?} {}",
                info.end_reason, info.end_debug
            );
        }
    }
    alice.messages.close_session_with_user(&bob.id);
    drop((alice, bob, carol, server));
    println!("done");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("messages: {e}");
        std::process::exit(1);
    }
}
