//! Peers logged in through a signaling server, and what suites do with them: connect, wait
//! for states, move messages, check how connections ended.

use crate::server::Signaling;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::StatusEvents;
use punchline::identity::KeyPair;
use punchline::ConnectionInfo;
use punchline::{ConnectionHandle, ConnectionState, SendFlags, Sockets, SocketsConfig};
use punchline_ice::IceTransport;
use punchline_signaling::tls::TlsClient;
use punchline_signaling::SignalingClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fresh `Sockets` logged in to the server at `url` (a `wss://` one's certificate checked
/// against `tls`), with the P2P transport `ice` (none: direct UDP) and its P2P socket bound
/// to `p2p_bind` (none: every interface).
pub fn login(
    url: &str,
    ice: Option<IceTransport>,
    tls: Option<&TlsClient>,
    p2p_bind: Option<SocketAddr>,
) -> (Sockets, KeyPair, Arc<SignalingClient>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let key = crate::util::key();
    let sockets = Sockets::with_config(SocketsConfig {
        key: Some(key.clone()),
        p2p_bind,
        ..SocketsConfig::default()
    })
    .unwrap();
    if let Some(ice) = ice {
        sockets.set_p2p_transport(ice.into_arc());
    }
    let client = SignalingClient::connect_with(url, &key, None, &sockets, tls).expect("log in");
    (sockets, key, client)
}

/// A `Sockets` logged in to the server at `url`, direct UDP on loopback only (peers are told
/// nothing but 127.0.0.1); a `wss://` server's certificate is checked against `tls`.
pub fn logged_in(url: &str, tls: Option<&TlsClient>) -> (Sockets, KeyPair, Arc<SignalingClient>) {
    login(url, None, tls, Some("127.0.0.1:0".parse().unwrap()))
}

/// A peer that logs out when dropped.
pub struct Peer {
    /// Its instance.
    pub sockets: Sockets,
    /// Its signaling client.
    pub client: Arc<SignalingClient>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.client.disconnect();
    }
}

/// A peer with ICE on loopback, logged in to `sig`.
pub fn peer(sig: &Signaling) -> Peer {
    peer_with(sig, Some(IceTransport::loopback_only()))
}

/// A peer with the ICE transport `ice` (or none: direct UDP), logged in to `sig`.
pub fn peer_with(sig: &Signaling, ice: Option<IceTransport>) -> Peer {
    let (sockets, _, client) = login(&sig.url, ice, None, None);
    Peer { sockets, client }
}

/// Waits until `h` leaves Connecting/FindingRoute; returns the state it reached.
pub fn settle(s: &Sockets, h: ConnectionHandle, limit: Duration) -> ConnectionState {
    let end = Instant::now() + limit;
    loop {
        s.run_callbacks();
        let info = s.get_connection_info(h).unwrap();
        let st = info.state;
        if !matches!(
            st,
            ConnectionState::Connecting | ConnectionState::FindingRoute
        ) || Instant::now() > end
        {
            if st != ConnectionState::Connected {
                eprintln!("{h:?} ended: {:?} {}", info.end_reason, info.end_debug);
            }
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Accepts the next incoming connection `events` (of `s`) shows.
pub fn accepted(s: &Sockets, events: &mut StatusEvents, limit: Duration) -> ConnectionHandle {
    let end = Instant::now() + limit;
    loop {
        if let Some(e) = events.try_recv() {
            if e.info.state == ConnectionState::Connecting {
                s.accept_connection(e.connection).unwrap();
                return e.connection;
            }
        }
        assert!(Instant::now() < end, "no incoming connection");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `n` reliable messages each way and checks they all arrive in order.
pub fn exchange(a: &Sockets, ha: ConnectionHandle, b: &Sockets, hb: ConnectionHandle, n: usize) {
    for i in 0..n {
        a.send_message_to_connection(ha, format!("a{i}").into_bytes(), SendFlags::RELIABLE)
            .unwrap();
        b.send_message_to_connection(hb, format!("b{i}").into_bytes(), SendFlags::RELIABLE)
            .unwrap();
    }
    for (s, h, tag) in [(b, hb, "a"), (a, ha, "b")] {
        let mut got = 0;
        let end = Instant::now() + Duration::from_secs(10);
        while got < n {
            for m in s.receive_messages_on_connection(h, 64).unwrap() {
                assert_eq!(m.payload.as_ref(), format!("{tag}{got}").as_bytes());
                got += 1;
            }
            assert!(Instant::now() < end, "only {got} of {n} messages arrived");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// `P2P_Transport_ICE_Enable` set to `mask`.
pub fn ice_enable(mask: i32) -> (ConfigValue, ConfigData) {
    (ConfigValue::P2pTransportIceEnable, ConfigData::Int32(mask))
}

/// Connects `a` to `b` (listening on virtual port 1), each with its own options, and
/// returns both ends once both settled (connected or not).
pub fn connect(
    a: &Peer,
    b: &Peer,
    a_options: &[(ConfigValue, ConfigData)],
    b_options: &[(ConfigValue, ConfigData)],
) -> (ConnectionHandle, ConnectionHandle) {
    b.sockets.create_listen_socket_p2p(1, b_options).unwrap();
    let mut events = b.sockets.status_events();
    let ha = a
        .sockets
        .connect_p2p(&b.sockets.get_identity(), 1, a_options)
        .unwrap();
    let hb = accepted(&b.sockets, &mut events, Duration::from_secs(10));
    settle(&a.sockets, ha, Duration::from_secs(20));
    settle(&b.sockets, hb, Duration::from_secs(10));
    (ha, hb)
}

/// `h`'s info on `p`.
pub fn info(p: &Peer, h: ConnectionHandle) -> ConnectionInfo {
    p.sockets.get_connection_info(h).unwrap()
}

/// Both ends are connected, and `n` messages each way arrive in order.
pub fn assert_talking(a: &Peer, ha: ConnectionHandle, b: &Peer, hb: ConnectionHandle, n: usize) {
    assert_eq!(
        info(a, ha).state,
        ConnectionState::Connected,
        "{:?}",
        info(a, ha)
    );
    assert_eq!(
        info(b, hb).state,
        ConnectionState::Connected,
        "{:?}",
        info(b, hb)
    );
    exchange(&a.sockets, ha, &b.sockets, hb, n);
}

/// `h` of `p` ended with `reason`, its debug text mentioning each of `words`.
pub fn assert_ended(p: &Peer, h: ConnectionHandle, reason: punchline::EndReason, words: &[&str]) {
    let info = info(p, h);
    assert_eq!(info.end_reason, reason, "{info:?}");
    for w in words {
        assert!(
            info.end_debug.contains(w),
            "{w:?} not in {:?}",
            info.end_debug
        );
    }
}

/// The state of `h` (`None` once released).
pub fn state(s: &Sockets, h: ConnectionHandle) -> ConnectionState {
    s.get_connection_info(h)
        .map_or(ConnectionState::None, |i| i.state)
}

/// Polls `cond` until it holds; fails after `limit`, naming `what`.
pub fn wait(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Accepts the incoming connections `events` shows, adding them to `seen`.
pub fn accept_incoming(s: &Sockets, events: &mut StatusEvents, seen: &mut Vec<ConnectionHandle>) {
    while let Some(ev) = events.try_recv() {
        if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
            s.accept_connection(ev.connection).unwrap();
            seen.push(ev.connection);
        }
    }
}

/// `a` connects to `b` (listening on virtual port 0, accepting); both end up Connected.
/// Returns (a's connection, b's).
pub fn connect_pair(a: &Sockets, b: &Sockets) -> (ConnectionHandle, ConnectionHandle) {
    let mut b_events = b.status_events();
    b.create_listen_socket_p2p(0, &[]).unwrap();
    let c = a.connect_p2p(&b.get_identity(), 0, &[]).unwrap();
    let mut accepted = Vec::new();
    wait(Duration::from_secs(10), "both connected", || {
        accept_incoming(b, &mut b_events, &mut accepted);
        state(a, c) == ConnectionState::Connected
            && accepted.len() == 1
            && state(b, accepted[0]) == ConnectionState::Connected
    });
    (c, accepted[0])
}
