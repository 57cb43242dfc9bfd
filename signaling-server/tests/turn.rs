//! The embedded TURN server as an attacker on loopback finds it, against the real server
//! process: peers on this host and on private networks refused, quotas, the byte rate of an
//! allocation, a flooding source held to its rate, the size of the 401 challenge, and the
//! credentials of a login that ended. Each bounded in time; the figures they print are the
//! ones docs/SIGNALING.md quotes.

mod common;

use common::{login_as, rt, start_server, Process, Ws};
use punchline::identity::KeyPair;
use punchline_signaling::protocol::ServerMsg;
use punchline_signaling::turn_server::{self, RATE_PER_SOURCE};
use rand_core::OsRng;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use stun_rs::attributes::stun::{ErrorCode, MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedTrasport, XorPeerAddress, XorRelayedAddress,
};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
    MessageMethod, StunAttribute, StunMessage, StunMessageBuilder, TransactionId,
};

/// A TURN client on one UDP socket, made by hand so a test can send exactly what it wants.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    nonce: Option<String>,
}

fn encode(msg: &StunMessage) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut out, msg)
        .unwrap();
    out.truncate(n);
    out
}

fn error_code(msg: &StunMessage) -> Option<u16> {
    msg.get::<ErrorCode>()
        .and_then(|a| a.as_error_code().ok())
        .map(|e| e.error_code().error_code())
}

impl Client {
    fn new(server: SocketAddr, username: &str, password: &str) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Client {
            sock,
            server,
            username: username.into(),
            password: password.into(),
            nonce: None,
        }
    }

    /// The credentials a fresh login gets, and the login (its end ends them).
    fn logged_in(server: &Process, turn: SocketAddr) -> (Client, Ws, tokio::runtime::Runtime) {
        let rt = rt();
        let key = KeyPair::generate(&mut OsRng);
        let (ws, welcome) = rt.block_on(login_as(&server.url(), &key.identity(), &key));
        let ServerMsg::Welcome { ice: Some(ice), .. } = welcome else {
            panic!("no TURN credentials at login: {welcome:?}");
        };
        let c = &ice.turn[0];
        (Client::new(turn, &c.username, &c.credential), ws, rt)
    }

    /// Another client (another port) with the same credentials.
    fn sibling(&self) -> Client {
        Client::new(self.server, &self.username, &self.password)
    }

    fn recv(&self) -> Option<StunMessage> {
        let mut buf = [0u8; 2048];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        MessageDecoderBuilder::default()
            .build()
            .decode(&buf[..n])
            .ok()
            .map(|(m, _)| m)
    }

    /// Sends a request with `attrs`, authenticated once the server gave a nonce; returns
    /// the answer (after taking one 401 or 438 to learn the nonce).
    fn request(&mut self, method: MessageMethod, attrs: &[StunAttribute]) -> StunMessage {
        for _ in 0..3 {
            let mut b = StunMessageBuilder::new(method, MessageClass::Request)
                .with_transaction_id(TransactionId::default());
            for a in attrs {
                b = b.with_attribute(a.clone());
            }
            if let Some(n) = &self.nonce {
                let key = HMACKey::new_long_term(
                    &self.username,
                    turn_server::REALM,
                    &self.password,
                    Algorithm::from(AlgorithmId::MD5),
                )
                .unwrap();
                b = b
                    .with_attribute(UserName::new(&self.username).unwrap())
                    .with_attribute(Realm::new(turn_server::REALM).unwrap())
                    .with_attribute(Nonce::new(n).unwrap())
                    .with_attribute(MessageIntegrity::new(key));
            }
            let msg = b.build();
            self.sock.send_to(&encode(&msg), self.server).unwrap();
            let answer = loop {
                let a = self.recv().expect("an answer");
                if a.transaction_id() == msg.transaction_id() {
                    break a;
                }
            };
            let fresh = answer
                .get::<Nonce>()
                .and_then(|n| n.as_nonce().ok())
                .map(|n| n.as_str().to_string());
            match (error_code(&answer), fresh) {
                (Some(401 | 438), Some(n)) if self.nonce.as_ref() != Some(&n) => {
                    self.nonce = Some(n);
                }
                _ => return answer,
            }
        }
        panic!("the server kept asking for credentials");
    }

    /// Allocates; the relayed address, or the error code.
    fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let a = self.request(
            ALLOCATE,
            &[RequestedTrasport::new(stun_rs::protocols::UDP).into()],
        );
        match error_code(&a) {
            Some(code) => Err(code),
            None => Ok(*a
                .get::<XorRelayedAddress>()
                .and_then(|r| r.as_xor_relayed_address().ok())
                .expect("a relayed address")
                .socket_address()),
        }
    }

    /// A permission for `peer`: `Ok` or the error code.
    fn permit(&mut self, peer: SocketAddr) -> Result<(), u16> {
        let a = self.request(CREATE_PERMMISSION, &[XorPeerAddress::from(peer).into()]);
        error_code(&a).map_or(Ok(()), Err)
    }

    fn bind_channel(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        let a = self.request(
            CHANNEL_BIND,
            &[
                ChannelNumber::new(channel).into(),
                XorPeerAddress::from(peer).into(),
            ],
        );
        error_code(&a).map_or(Ok(()), Err)
    }

    fn refresh(&mut self, lifetime: u32) -> Result<(), u16> {
        let a = self.request(REFRESH, &[LifeTime::new(lifetime).into()]);
        error_code(&a).map_or(Ok(()), Err)
    }

    /// A Send indication of `data` to `peer`.
    fn send_to_peer(&self, peer: SocketAddr, data: &[u8]) {
        let msg = StunMessageBuilder::new(SEND, MessageClass::Indication)
            .with_attribute(XorPeerAddress::from(peer))
            .with_attribute(Data::new(data))
            .build();
        self.sock.send_to(&encode(&msg), self.server).unwrap();
    }
}

/// A UDP socket on loopback that a test reads with a short timeout.
fn peer_socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

#[test]
fn turn_refuses_peers_on_this_host_and_private_networks() {
    let server = start_server(&["--turn", "127.0.0.1:0"]);
    let turn = server.banner_addr("turn on ");
    let (mut c, _ws, _rt) = Client::logged_in(&server, turn);
    c.allocate().expect("an allocation");
    // The host's own STUN and TURN ports, other hosts' private networks, and addresses
    // that are not one host on the internet.
    let refused = [
        turn.to_string(),
        "127.0.0.1:3478".into(),
        "127.9.9.9:1".into(),
        "0.0.0.0:9".into(),
        "10.1.2.3:9".into(),
        "172.16.0.1:9".into(),
        "192.168.1.1:9".into(),
        "169.254.169.254:80".into(), // the cloud metadata service
        "100.64.0.1:9".into(),
        "224.0.0.251:5353".into(),
        "255.255.255.255:9".into(),
        "240.0.0.1:9".into(),
    ];
    for p in &refused {
        let peer: SocketAddr = p.parse().unwrap();
        assert_eq!(c.permit(peer), Err(403), "a permission for {peer}");
        assert_eq!(
            c.bind_channel(0x4001, peer),
            Err(403),
            "a channel to {peer}"
        );
    }
    // Documentation addresses are not hosts on the internet either.
    for p in ["192.0.2.1:9", "198.51.100.1:9", "203.0.113.7:9"] {
        assert_eq!(c.permit(p.parse().unwrap()), Err(403), "{p}");
    }
    // A public address is fine (a permission sends nothing there).
    assert_eq!(c.permit("8.8.8.8:53".parse().unwrap()), Ok(()));
    // With no permission, a Send indication to loopback goes nowhere.
    let (listener, at) = peer_socket();
    c.send_to_peer(at, b"let me in");
    let mut buf = [0u8; 64];
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "nothing relayed to loopback"
    );
    assert!(server.metric("punchline_turn_forbidden_peers_total") >= 2 * refused.len() as u64 + 3);
}

#[test]
fn turn_relays_to_allowed_ranges_and_not_past_a_login() {
    let server = start_server(&["--turn", "127.0.0.1:0", "--turn-allow-peer", "127.0.0.0/8"]);
    let turn = server.banner_addr("turn on ");
    let (mut c, ws, rt) = Client::logged_in(&server, turn);
    let relayed = c.allocate().expect("an allocation");
    let (peer, at) = peer_socket();
    c.permit(at).expect("loopback allowed by the operator");
    c.send_to_peer(at, b"hello peer");
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
    assert_eq!((&buf[..n], from), (&b"hello peer"[..], relayed));
    // And back, as a Data indication.
    peer.send_to(b"hello client", relayed).unwrap();
    let data = c.recv().expect("a Data indication");
    let got = data.get::<Data>().and_then(|d| d.as_data().ok()).unwrap();
    assert_eq!(got.as_bytes(), b"hello client");
    // Channel data both ways.
    c.bind_channel(0x4000, at).unwrap();
    let mut frame = vec![0x40, 0x00, 0x00, 0x03];
    frame.extend_from_slice(b"abc");
    c.sock.send_to(&frame, turn).unwrap();
    let (n, _) = peer.recv_from(&mut buf).expect("channel data relayed");
    assert_eq!(&buf[..n], b"abc");
    peer.send_to(b"xyz", relayed).unwrap();
    let (n, _) = c.sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x00, 0x00, 0x03, b'x', b'y', b'z']);
    // Another 5-tuple cannot use this allocation, even with the same credentials.
    let other = c.sibling();
    other.send_to_peer(at, b"not mine");
    assert!(peer.recv_from(&mut buf).is_err());
    // The login ends: its allocation ends and its credentials stop working.
    drop(rt.block_on(async move {
        let mut ws = ws;
        let _ = ws.close(None).await;
        ws
    }));
    let end = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match c.refresh(600) {
            Err(code) => break code,
            Ok(()) if Instant::now() > end => panic!("the allocation outlived its login"),
            Ok(()) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    // 437: no allocation any more (the 401 for the credentials comes first when the
    // allocation is gone and the nonce still good, or after it).
    assert!(code == 401 || code == 437, "refresh after logout: {code}");
    assert_eq!(
        c.allocate(),
        Err(401),
        "a new allocation with those credentials"
    );
    peer.send_to(b"anyone?", relayed).unwrap();
    c.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.recv().is_none(), "the relayed address is closed");
}

#[test]
fn turn_quotas_hold_per_user_and_in_all() {
    let server = start_server(&[
        "--turn",
        "127.0.0.1:0",
        "--turn-user-quota",
        "2",
        "--turn-total-quota",
        "3",
    ]);
    let turn = server.banner_addr("turn on ");
    let (mut a1, _wa, _ra) = Client::logged_in(&server, turn);
    let mut a2 = a1.sibling();
    let mut a3 = a1.sibling();
    assert!(a1.allocate().is_ok());
    assert!(a2.allocate().is_ok());
    assert_eq!(a3.allocate(), Err(486), "a third allocation for one user");
    let (mut b1, _wb, _rb) = Client::logged_in(&server, turn);
    let mut b2 = b1.sibling();
    assert!(b1.allocate().is_ok());
    assert_eq!(b2.allocate(), Err(508), "a fourth allocation in all");
    // Released ones count no more.
    a1.refresh(0).unwrap();
    assert!(b2.allocate().is_ok());
    assert_eq!(a3.allocate(), Err(508));
    assert_eq!(server.metric("punchline_turn_over_quota_total"), 3);
    // Identities cost nothing to make: one source's logins together have a quota too.
    let server = start_server(&["--turn", "127.0.0.1:0", "--turn-source-quota", "2"]);
    let turn = server.banner_addr("turn on ");
    let logins: Vec<_> = (0..3).map(|_| Client::logged_in(&server, turn)).collect();
    let codes: Vec<_> = logins
        .into_iter()
        .map(|(mut c, ws, rt)| (c.allocate().map(|_| ()), ws, rt))
        .collect();
    let codes: Vec<_> = codes.iter().map(|(r, _, _)| *r).collect();
    assert_eq!(
        codes,
        [Ok(()), Ok(()), Err(508)],
        "three logins from one address"
    );
}

#[test]
fn turn_holds_an_allocation_to_its_byte_rate() {
    const BPS: usize = 20_000;
    let server = start_server(&[
        "--turn",
        "127.0.0.1:0",
        "--turn-allow-peer",
        "127.0.0.0/8",
        "--turn-max-bps",
        &BPS.to_string(),
    ]);
    let turn = server.banner_addr("turn on ");
    let (mut c, _ws, _rt) = Client::logged_in(&server, turn);
    c.allocate().unwrap();
    let (peer, at) = peer_socket();
    c.bind_channel(0x4000, at).unwrap();
    // 200 KB as fast as the socket takes them, ten times the rate.
    let mut frame = vec![0x40, 0x00, 0x03, 0xe8];
    frame.extend_from_slice(&[0x55; 1000]);
    let started = Instant::now();
    let mut received = 0usize;
    let mut buf = [0u8; 2048];
    peer.set_nonblocking(true).unwrap();
    for _ in 0..200 {
        c.sock.send_to(&frame, turn).unwrap();
        while let Ok((n, _)) = peer.recv_from(&mut buf) {
            received += n;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        while let Ok((n, _)) = peer.recv_from(&mut buf) {
            received += n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed().as_secs_f64();
    // A burst of one second's worth, then the rate.
    let allowed = BPS as f64 * (1.0 + took);
    eprintln!("TURN: 200000 bytes offered in {took:.2} s at {BPS} B/s: {received} relayed");
    assert!(received >= BPS / 2, "the burst passes: {received}");
    assert!(
        received as f64 <= allowed + 1000.0,
        "{received} relayed, {allowed} allowed"
    );
    assert!(server.metric("punchline_turn_over_bps_total") > 0);
}

/// An unauthenticated Allocate request: REQUESTED-TRANSPORT (28 bytes, the least that
/// gets a 401 challenge), and FINGERPRINT too when `fingerprint` (36 bytes, what webrtc's
/// TURN client sends first).
fn bare_allocate(n: u32, fingerprint: bool) -> Vec<u8> {
    let mut tid = [0u8; 12];
    tid[8..].copy_from_slice(&n.to_be_bytes());
    let mut b = StunMessageBuilder::new(ALLOCATE, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tid))
        .with_attribute(RequestedTrasport::new(stun_rs::protocols::UDP));
    if fingerprint {
        b = b.with_attribute(stun_rs::attributes::stun::Fingerprint::default());
    }
    encode(&b.build())
}

#[test]
fn turn_challenges_cost_little_and_a_flooding_source_is_held_to_its_rate() {
    let server = start_server(&["--turn", "127.0.0.1:0"]);
    let turn = server.banner_addr("turn on ");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    // The challenge is one size whatever the request: ERROR-CODE with no reason phrase,
    // REALM, and a 12-character nonce.
    for (fingerprint, most) in [(false, 2.2), (true, 2.0)] {
        let req = bare_allocate(0, fingerprint);
        socket.send_to(&req, turn).unwrap();
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        let factor = n as f64 / req.len() as f64;
        eprintln!(
            "TURN: a {}-byte Allocate request gets a {n}-byte 401 ({factor:.2}x)",
            req.len()
        );
        assert_eq!(n, 60);
        assert!(factor <= most, "{factor}x");
    }
    let f = common::flood_one_source(&socket, turn, 2000, |i| bare_allocate(i, false));
    let (answered, flood_took) = (f.answered, f.took);
    let allowed = f.allowed(RATE_PER_SOURCE);
    eprintln!(
        "TURN: 2000 unauthenticated requests from one source in {flood_took:?}: {answered} answered"
    );
    assert!(answered >= 150, "{answered} answered: the burst is served");
    assert!(
        f64::from(answered) <= allowed + 10.0,
        "{answered} answered, {allowed} allowed"
    );
    assert!(server.metric("punchline_turn_rate_limited_total") > 0);
}
