//! The embedded TURN server, fed datagrams as a hostile client would send them: raw bytes
//! (parsing, ChannelData, indications, challenges) and requests the harness signs with valid
//! credentials from fuzzed fields (allocations, permissions, channels, refreshes, EVEN-PORT
//! reservations), from two client addresses. Nothing may panic; an answer to anything
//! unauthenticated is at most 2.2 times its request (the 60-byte challenge to the barest
//! 28-byte Allocate); every answer is a STUN message of bounded size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline_signaling::turn_server::{self, Fed, TurnConfig, TurnServer, REALM};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{
    ChannelNumber, EvenPort, LifeTime, RequestedTrasport, ReservationToken, XorPeerAddress,
};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH};
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageEncoderBuilder, StunMessageBuilder,
    TransactionId,
};

const SECRET: &[u8] = b"fuzz secret";

struct Harness {
    rt: tokio::runtime::Runtime,
    server: TurnServer,
    start: Instant,
    tick: AtomicU64,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("valid");
        let config = TurnConfig {
            user_quota: 4,
            total_quota: 8,
            ..TurnConfig::new(local, local.ip(), SECRET.to_vec())
        }
        .allow_peer("127.0.0.0/8".parse().expect("valid"));
        let server = rt
            .block_on(TurnServer::start(config))
            .expect("a TURN server");
        Harness {
            rt,
            server,
            start: Instant::now(),
            tick: AtomicU64::new(0),
        }
    })
}

/// A request the harness signs: fields from `b`.
fn signed(b: &[u8], from: SocketAddr, unix: u64, h: &Harness) -> Vec<u8> {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let method = [ALLOCATE, REFRESH, CREATE_PERMMISSION, CHANNEL_BIND][usize::from(get(0) % 4)];
    let creds = turn_server::credentials(SECRET, "fuzz", Duration::from_secs(3600));
    let mut m = StunMessageBuilder::new(method, MessageClass::Request)
        .with_transaction_id(TransactionId::from([get(1); 12]));
    let flags = get(2);
    if flags & 1 != 0 {
        // (stun-rs builds no other protocol: raw records cover the rest.)
        m = m.with_attribute(RequestedTrasport::new(stun_rs::protocols::UDP));
    }
    if flags & 2 != 0 {
        let life = u32::from_be_bytes([get(4), get(5), get(6), get(7)]);
        m = m.with_attribute(LifeTime::new(life));
    }
    if flags & 4 != 0 {
        let ip = IpAddr::V4(Ipv4Addr::new(get(8), get(9), get(10), get(11)));
        let peer = SocketAddr::new(ip, u16::from_be_bytes([get(12), get(13)]));
        m = m.with_attribute(XorPeerAddress::from(peer));
    }
    if flags & 8 != 0 {
        m = m.with_attribute(ChannelNumber::new(u16::from_be_bytes([get(14), get(15)])));
    }
    if flags & 16 != 0 {
        m = m.with_attribute(EvenPort::new(get(16) & 1 != 0));
    }
    if flags & 32 != 0 {
        let mut t = [0u8; 8];
        t.iter_mut().enumerate().for_each(|(i, x)| *x = get(17 + i));
        m = m.with_attribute(ReservationToken::from(t));
    }
    let key = HMACKey::new_long_term(
        &creds.username,
        REALM,
        &creds.password,
        Algorithm::from(AlgorithmId::MD5),
    )
    .expect("a key");
    let m = m
        .with_attribute(UserName::new(&creds.username).expect("user"))
        .with_attribute(Realm::new(REALM).expect("realm"))
        .with_attribute(Nonce::new(h.server.nonce_for_fuzzing(from, unix)).expect("nonce"))
        .with_attribute(MessageIntegrity::new(key))
        .build();
    let mut out = vec![0u8; 1024];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut out, &m)
        .expect("encodes");
    out.truncate(n);
    out
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let _guard = h.rt.enter();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let clients: [SocketAddr; 2] = [
        "127.0.0.1:40000".parse().expect("valid"),
        "127.0.0.2:40001".parse().expect("valid"),
    ];
    // Records: a header byte (bit 7: signed by the harness; bit 6: the second client; the
    // rest: the record's length), then that many bytes.
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let len = usize::from(head & 0x3f).min(tail.len());
        let (record, next) = tail.split_at(len);
        rest = next;
        let from = clients[usize::from(head >> 6 & 1)];
        let (datagram, authenticated) = if head & 0x80 != 0 {
            (signed(record, from, unix, h), true)
        } else {
            (record.to_vec(), false)
        };
        // A second of virtual time per datagram: the per-source rate never silences a run.
        let now = h.start + Duration::from_secs(h.tick.fetch_add(1, Ordering::Relaxed));
        match h.server.handle_for_fuzzing(&datagram, from, now, unix) {
            Fed::Reply(b) => {
                assert!(b.len() >= 20 && b.len() <= 2048, "{} bytes", b.len());
                if !authenticated {
                    assert!(
                        b.len() as f64 <= 2.2 * datagram.len() as f64,
                        "{} bytes for {}",
                        b.len(),
                        datagram.len()
                    );
                }
            }
            Fed::Relayed(n) => assert!(n < datagram.len()),
            Fed::Nothing => {}
        }
    }
    // Each input starts afresh, and the runtime reaps the relay tasks it ended.
    h.rt.block_on(async {
        h.server.drop_allocations().await;
        tokio::task::yield_now().await;
    });
});
