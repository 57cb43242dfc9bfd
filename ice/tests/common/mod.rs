//! The ICE tests' harness: a signaling server (with embedded STUN and TURN when asked) on
//! its own runtime, peers logged in to it with the ICE transport on loopback, and helpers to
//! connect them and move messages.
#![allow(dead_code)]

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::StatusEvents;
use punchline::identity::KeyPair;
use punchline::ConnectionInfo;
use punchline::{ConnectionHandle, ConnectionState, SendFlags, Sockets, SocketsConfig};
use punchline_ice::IceTransport;
use punchline_signaling::server::TurnAdvert;
use punchline_signaling::stun::StunServer;
use punchline_signaling::turn_server::{TurnConfig, TurnServer};
use punchline_signaling::{Config, Server, SignalingClient};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A signaling server on its own runtime thread, with STUN and TURN when asked.
pub struct Signaling {
    pub url: String,
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    pub stun: Option<StunServer>,
    pub turn: Option<TurnServer>,
}

impl Signaling {
    /// Signals the server dropped (over a pair's rate, or a recipient's queue full).
    pub fn dropped_signals(&self) -> u64 {
        self.server.as_ref().map_or(0, |s| {
            s.metrics()
                .signals_dropped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    pub fn start(mut config: Config, ice: bool) -> Signaling {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let local = "127.0.0.1:0".parse().unwrap();
        let (stun, turn) = if ice {
            let secret = b"test secret".to_vec();
            let stun = rt.block_on(StunServer::start(local, None)).unwrap();
            // The peers are on loopback, which TURN refuses by default.
            let turn_config = TurnConfig::new(local, local.ip(), secret.clone())
                .allow_peer("127.0.0.0/8".parse().unwrap());
            let turn = rt.block_on(TurnServer::start(turn_config)).unwrap();
            config.stun = Some(stun.addr());
            config.turn = Some(TurnAdvert {
                addr: turn.addr(),
                secret,
                ttl: Duration::from_secs(600),
                sessions: Some(turn.sessions()),
            });
            (Some(stun), Some(turn))
        } else {
            (None, None)
        };
        let server = rt.block_on(Server::start(local, config)).unwrap();
        Signaling {
            url: format!("ws://{}/", server.addr()),
            rt,
            server: Some(server),
            stun,
            turn,
        }
    }
}

impl Signaling {
    /// Ends every allocation on the TURN server; returns how many there were.
    pub fn drop_turn_allocations(&self) -> usize {
        let turn = self.turn.as_ref().expect("a TURN server");
        self.rt.block_on(turn.drop_allocations())
    }
}

impl Drop for Signaling {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
        if let Some(t) = self.turn.take() {
            self.rt.block_on(t.stop());
        }
        self.stun.take();
    }
}

pub struct Peer {
    pub sockets: Sockets,
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let key = KeyPair::generate(&mut rand_core::OsRng);
    let sockets = Sockets::with_config(SocketsConfig {
        key: Some(key.clone()),
        ..SocketsConfig::default()
    })
    .unwrap();
    if let Some(ice) = ice {
        sockets.set_p2p_transport(ice.into_arc());
    }
    let client = SignalingClient::connect(&sig.url, &key, None, &sockets).unwrap();
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
