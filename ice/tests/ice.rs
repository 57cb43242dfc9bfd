//! ICE on loopback: two `Sockets` introduced by a real signaling server (in this process)
//! connect by identity through webrtc-ice agents, and the route is reported.

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::identity::KeyPair;
use punchline::transport::RouteKind;
use punchline::{ConnectionHandle, ConnectionState, SendFlags, Sockets, SocketsConfig};
use punchline_ice::IceTransport;
use punchline_signaling::{Config, Server, SignalingClient};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A signaling server on its own runtime thread.
struct Signaling {
    url: String,
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
}

impl Signaling {
    fn start(config: Config) -> Signaling {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(Server::start("127.0.0.1:0".parse().unwrap(), config))
            .unwrap();
        Signaling {
            url: format!("ws://{}/", server.addr()),
            rt,
            server: Some(server),
        }
    }
}

impl Drop for Signaling {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

struct Peer {
    sockets: Sockets,
    client: Arc<SignalingClient>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.client.disconnect();
    }
}

fn peer(sig: &Signaling) -> Peer {
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
    sockets.set_p2p_transport(IceTransport::loopback_only().into_arc());
    let client = SignalingClient::connect(&sig.url, &key, None, &sockets).unwrap();
    Peer { sockets, client }
}

/// Waits until `h` leaves Connecting/FindingRoute; returns the state it reached.
fn settle(s: &Sockets, h: ConnectionHandle, limit: Duration) -> ConnectionState {
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

/// The connection the listener `s` has: the first one that shows up.
fn accepted(s: &Sockets, limit: Duration) -> ConnectionHandle {
    let mut events = s.status_events();
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
fn exchange(a: &Sockets, ha: ConnectionHandle, b: &Sockets, hb: ConnectionHandle, n: usize) {
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

#[test]
fn host_candidates_on_loopback_connect_directly() {
    let sig = Signaling::start(Config::default());
    let a = peer(&sig);
    let b = peer(&sig);
    b.sockets.create_listen_socket_p2p(1, &[]).unwrap();
    let ha = a
        .sockets
        .connect_p2p(&b.sockets.get_identity(), 1, &[])
        .unwrap();
    let hb = accepted(&b.sockets, Duration::from_secs(10));
    assert_eq!(
        settle(&a.sockets, ha, Duration::from_secs(15)),
        ConnectionState::Connected
    );
    assert_eq!(
        settle(&b.sockets, hb, Duration::from_secs(5)),
        ConnectionState::Connected
    );
    exchange(&a.sockets, ha, &b.sockets, hb, 200);
    for (s, h) in [(&a.sockets, ha), (&b.sockets, hb)] {
        let info = s.get_connection_info(h).unwrap();
        assert_eq!(info.route, RouteKind::DirectLocal, "{info:?}");
        assert!(info.address_remote.ip().is_loopback(), "{info:?}");
        let detail = s.get_detailed_connection_status(h).unwrap();
        assert!(detail.contains("host 127.0.0.1"), "{detail}");
    }
    let _ = ConfigData::Int32(0);
    let _ = ConfigValue::P2pTransportIceEnable;
}
