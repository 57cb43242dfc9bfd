//! Writes the `rendezvous` fuzz target's seed inputs (valid message sequences to mutate) to
//! `fuzz/seeds/rendezvous/`: `cargo run -p punchline --example rendezvous_seeds`. Run it
//! again whenever the rendezvous format changes.
//!
//! An input is `[len u8][message]...`, as the target reads it.

use punchline::identity::Identity;
use punchline::proto::rendezvous::{Body, Message};

fn message(seq: u32, ack: u32, body: Body) -> Vec<u8> {
    let peer = Identity::generic_string("peer").expect("valid");
    let local = Identity::generic_string("local").expect("valid");
    Message {
        session: 7,
        seq,
        ack,
        from: peer,
        to: local,
        body,
    }
    .encode()
}

fn input(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let len = u8::try_from(m.len()).expect("seed messages fit a u8 length");
        out.push(len);
        out.extend_from_slice(m);
    }
    out
}

fn main() -> std::io::Result<()> {
    let request = message(
        1,
        0,
        Body::ConnectRequest {
            from_vport: 1,
            to_vport: 1,
            symmetric: false,
            transport: 1,
            candidates: vec!["127.0.0.1:4000".parse().expect("valid")],
        },
    );
    let accept = message(
        2,
        1,
        Body::ConnectAccept {
            transport: 1,
            candidates: vec!["[::1]:4001".parse().expect("valid")],
        },
    );
    let creds = message(
        3,
        1,
        Body::Transport {
            data: b"creds 0 abcd 0123456789abcdef0123".to_vec(),
        },
    );
    let candidates = message(
        4,
        1,
        Body::Transport {
            data: b"cand 0 1 1 udp 2130706431 127.0.0.1 4000 typ host\nend 0 1".to_vec(),
        },
    );
    let close = message(
        5,
        1,
        Body::Close {
            reason: 5009,
            debug: "no pair answered".into(),
        },
    );
    let ack = message(0, 1, Body::Ack);
    let seeds = [
        ("seed_req", input(std::slice::from_ref(&request))),
        (
            "seed_all",
            input(&[
                request.clone(),
                accept.clone(),
                creds.clone(),
                candidates.clone(),
                ack.clone(),
                close.clone(),
            ]),
        ),
        (
            "seed_dup",
            input(&[
                request.clone(),
                request.clone(),
                creds.clone(),
                creds.clone(),
            ]),
        ),
        (
            "seed_ooo",
            input(&[close, candidates, request, creds, accept, ack]),
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/rendezvous");
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
        println!("wrote {}", dir.join(name).display());
    }
    Ok(())
}
