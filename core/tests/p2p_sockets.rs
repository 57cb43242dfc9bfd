//! P2P through the `Sockets` API over real loopback UDP, with an in-process signaling hub
//! standing in for a signaling server: connect by identity, talk, close; symmetric connect;
//! refusal; signaling loss and duplication.

mod common;

use common::hub::{peer, Hub, Policy};
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::{ConnectionHandle, ConnectionState, EndReason, SendFlags, Sockets};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn state(s: &Sockets, h: ConnectionHandle) -> ConnectionState {
    s.get_connection_info(h)
        .map_or(ConnectionState::None, |i| i.state)
}

/// Accepts incoming connections on `s` until `done`; returns the accepted handles.
fn serve_until(
    s: &Sockets,
    events: &mut punchline::api::StatusEvents,
    limit: Duration,
    mut done: impl FnMut(&[ConnectionHandle]) -> bool,
) -> Vec<ConnectionHandle> {
    let mut accepted = Vec::new();
    let end = Instant::now() + limit;
    while !done(&accepted) && Instant::now() < end {
        while let Some(ev) = events.try_recv() {
            if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
                s.accept_connection(ev.connection).unwrap();
                accepted.push(ev.connection);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    accepted
}

#[test]
fn two_peers_connect_by_identity_talk_and_close() {
    let (hub, peers) = Hub::start(0, 0, 1);
    let a = peer(&hub, &peers, Policy::Accept);
    let b = peer(&hub, &peers, Policy::Accept);
    let mut b_events = b.status_events();
    b.create_listen_socket_p2p(7, &[]).unwrap();
    let c = a.connect_p2p(&b.get_identity(), 7, &[]).unwrap();
    let info = a.get_connection_info(c).unwrap();
    assert_eq!(
        info.identity_remote,
        b.get_identity(),
        "the peer, before any packet"
    );
    let accepted = serve_until(&b, &mut b_events, Duration::from_secs(10), |acc| {
        acc.len() == 1 && state(&b, acc[0]) == ConnectionState::Connected
    });
    let s = accepted[0];
    let end = Instant::now() + Duration::from_secs(10);
    while state(&a, c) != ConnectionState::Connected {
        assert!(Instant::now() < end, "client {:?}", state(&a, c));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        b.get_connection_info(s).unwrap().identity_remote,
        a.get_identity()
    );
    for i in 0..50u32 {
        a.send_message_to_connection(c, i.to_be_bytes().to_vec(), SendFlags::RELIABLE)
            .unwrap();
        b.send_message_to_connection(s, i.to_be_bytes().to_vec(), SendFlags::UNRELIABLE)
            .unwrap();
    }
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while got.len() < 50 {
        assert!(Instant::now() < end, "{} of 50", got.len());
        got.extend(b.receive_messages_on_connection(s, 100).unwrap());
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload[..], (i as u32).to_be_bytes());
    }
    let end = Instant::now() + Duration::from_secs(5);
    let mut unreliable = 0;
    while unreliable == 0 && Instant::now() < end {
        unreliable += a.receive_messages_on_connection(c, 100).unwrap().len();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(unreliable > 0, "unreliable messages arrive too");
    a.close_connection(c, 1000, "done", false);
    let end = Instant::now() + Duration::from_secs(5);
    while state(&b, s) != ConnectionState::ClosedByPeer {
        assert!(Instant::now() < end, "server {:?}", state(&b, s));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_refused_connection_ends_with_the_refusers_reason() {
    let (hub, peers) = Hub::start(0, 0, 2);
    let a = peer(&hub, &peers, Policy::Accept);
    let b = peer(&hub, &peers, Policy::Refuse);
    b.create_listen_socket_p2p(0, &[]).unwrap();
    let c = a.connect_p2p(&b.get_identity(), 0, &[]).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while state(&a, c) == ConnectionState::Connecting {
        assert!(Instant::now() < end, "no answer");
        std::thread::sleep(Duration::from_millis(2));
    }
    let info = a.get_connection_info(c).unwrap();
    assert_eq!(info.state, ConnectionState::ClosedByPeer);
    assert_eq!(info.end_reason, EndReason(1042));
    assert_eq!(info.end_debug, "not today");
}

#[test]
fn p2p_connects_through_30_percent_signal_loss_and_50_percent_duplication() {
    for seed in 0..5 {
        let (hub, peers) = Hub::start(30, 50, 10 + seed);
        let a = peer(&hub, &peers, Policy::Accept);
        let b = peer(&hub, &peers, Policy::Accept);
        let mut b_events = b.status_events();
        b.create_listen_socket_p2p(0, &[]).unwrap();
        let c = a.connect_p2p(&b.get_identity(), 0, &[]).unwrap();
        let accepted = serve_until(&b, &mut b_events, Duration::from_secs(20), |acc| {
            state(&a, c) == ConnectionState::Connected
                && acc.len() == 1
                && state(&b, acc[0]) == ConnectionState::Connected
        });
        assert_eq!(accepted.len(), 1, "seed {seed}: one connection");
        assert_eq!(state(&a, c), ConnectionState::Connected, "seed {seed}");
    }
}

#[test]
fn symmetric_connect_through_the_api_gives_one_connection_each_side() {
    let symmetric = [(ConfigValue::SymmetricConnect, ConfigData::Int32(1))];
    for seed in 0..20 {
        let (hub, peers) = Hub::start(0, 0, 100 + seed);
        let a = peer(&hub, &peers, Policy::Accept);
        let b = peer(&hub, &peers, Policy::Accept);
        let (mut a_events, mut b_events) = (a.status_events(), b.status_events());
        a.create_listen_socket_p2p(3, &symmetric).unwrap();
        b.create_listen_socket_p2p(3, &symmetric).unwrap();
        let (ia, ib) = (a.get_identity(), b.get_identity());
        let (a2, b2) = (a.clone(), b.clone());
        let (sa, sb) = (symmetric.clone(), symmetric.clone());
        let ta = std::thread::spawn(move || a2.connect_p2p(&ib, 3, &sa).unwrap());
        let tb = std::thread::spawn(move || b2.connect_p2p(&ia, 3, &sb).unwrap());
        let (ca, cb) = (ta.join().unwrap(), tb.join().unwrap());
        let end = Instant::now() + Duration::from_secs(10);
        while state(&a, ca) != ConnectionState::Connected
            || state(&b, cb) != ConnectionState::Connected
        {
            assert!(
                Instant::now() < end,
                "seed {seed}: {:?} / {:?}",
                state(&a, ca),
                state(&b, cb)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // No other connection showed up on either side.
        for (s, events, own) in [(&a, &mut a_events, ca), (&b, &mut b_events, cb)] {
            while let Some(ev) = events.try_recv() {
                assert_eq!(
                    ev.connection, own,
                    "seed {seed}: a second connection appeared"
                );
            }
            assert_eq!(
                s.accept_connection(own),
                Err(punchline::Error::DuplicateRequest)
            );
        }
    }
}

#[test]
fn an_ignored_request_is_never_seen_by_the_application() {
    let (hub, peers) = Hub::start(0, 0, 3);
    let a = peer(&hub, &peers, Policy::Accept);
    let b = peer(&hub, &peers, Policy::Ignore);
    let mut b_events = b.status_events();
    b.create_listen_socket_p2p(0, &[]).unwrap();
    let c = a.connect_p2p(&b.get_identity(), 0, &[]).unwrap();
    // The request is sent again and again, and ignored each time.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(b_events.try_recv().is_none(), "no connection was reported");
    assert_eq!(
        state(&a, c),
        ConnectionState::Connecting,
        "no answer came back"
    );
}

#[test]
fn connecting_to_a_fake_ip_reaches_its_holder_on_that_fake_port() {
    let (hub, peers) = Hub::start(0, 0, 7);
    let a = peer(&hub, &peers, Policy::Accept);
    let b = peer(&hub, &peers, Policy::Accept);
    let mut events = b.status_events();
    assert!(a.begin_async_request_fake_ip(1) && b.begin_async_request_fake_ip(2));
    let (a_ip, _) = a.get_fake_ip().unwrap();
    let (ip, ports) = b.get_fake_ip().expect("a process-local fake IP at once");
    b.create_listen_socket_p2p_fake_ip(1, &[]).unwrap();
    let to: std::net::SocketAddrV4 = std::net::SocketAddrV4::new(ip, ports[1]);
    let c = a.connect_by_ip_address(to.into(), &[]).unwrap();
    let accepted = serve_until(&b, &mut events, Duration::from_secs(10), |a| !a.is_empty());
    let end = Instant::now() + Duration::from_secs(10);
    while state(&a, c) != ConnectionState::Connected {
        assert!(Instant::now() < end, "{:?}", state(&a, c));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(a.get_remote_fake_ip_for_connection(c), Some(to));
    // The accepting side knows the peer's fake IP, not a port it connected from.
    assert_eq!(
        b.get_remote_fake_ip_for_connection(accepted[0]),
        Some(std::net::SocketAddrV4::new(a_ip, 0))
    );
    assert_eq!(
        a.get_connection_info(c).unwrap().identity_remote,
        b.get_identity()
    );
    a.send_message_to_connection(c, b"via fake ip".to_vec(), SendFlags::RELIABLE)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = b.receive_messages_on_connection(accepted[0], 4).unwrap();
        if let Some(m) = got.first() {
            assert_eq!(&m.payload[..], b"via fake ip");
            break;
        }
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(2));
    }
    // A fake IP nobody holds: no identity to connect to.
    let nobody = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(169, 254, 0, 254), 1024);
    assert_eq!(
        a.connect_by_ip_address(nobody.into(), &[]),
        Err(punchline::Error::InvalidState)
    );
    assert!(b.create_listen_socket_p2p_fake_ip(5, &[]).is_err());
}

#[test]
fn fake_udp_ports_exchange_datagrams_by_fake_address() {
    let (hub, peers) = Hub::start(0, 0, 8);
    let a = peer(&hub, &peers, Policy::Accept);
    let b = peer(&hub, &peers, Policy::Accept);
    assert!(a.begin_async_request_fake_ip(1) && b.begin_async_request_fake_ip(2));
    let pa = a.create_fake_udp_port(0).unwrap();
    let pb = b.create_fake_udp_port(1).unwrap();
    pa.send_message_to_fake_ip(pb.local_addr(), b"ping", SendFlags::UNRELIABLE)
        .unwrap();
    let recv = |p: &punchline::api::fake_udp::FakeUdpPort| {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = p.receive_messages(8).pop() {
                return m;
            }
            assert!(Instant::now() < end, "nothing arrived");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let got = recv(&pb);
    assert_eq!(&got.payload[..], b"ping");
    assert_eq!(got.from, pa.local_addr());
    // The answer goes back to whatever address the datagram came from.
    pb.send_message_to_fake_ip(got.from, b"pong", SendFlags::RELIABLE)
        .unwrap();
    let back = recv(&pa);
    assert_eq!(
        (&back.payload[..], back.from),
        (&b"pong"[..], pb.local_addr())
    );
    // A real address is not a fake one.
    assert!(pa
        .send_message_to_fake_ip("127.0.0.1:9".parse().unwrap(), b"x", SendFlags::RELIABLE)
        .is_err());
}

/// A transport whose every path fails as soon as it starts, with a set reason: both sides
/// of a connection find themselves without a way forward at nearly the same moment. It
/// counts the paths it started.
#[derive(Debug)]
struct FailsAtOnce(EndReason, &'static str, Arc<AtomicUsize>);

#[derive(Debug)]
struct DeadPath;

impl punchline::transport::Path for DeadPath {
    fn handle_signal(&self, _: &[u8]) {}
    fn send(&self, _: &[u8]) {}
    fn route(&self) -> punchline::transport::RouteInfo {
        punchline::transport::RouteInfo::default()
    }
    fn close(&self) {}
}

impl punchline::transport::Transport for FailsAtOnce {
    fn wire_id(&self) -> u8 {
        9
    }
    fn start_path(
        &self,
        _: punchline::transport::PathParams,
        sink: punchline::transport::PathSink,
    ) -> std::sync::Arc<dyn punchline::transport::Path> {
        self.2.fetch_add(1, Ordering::SeqCst);
        sink.failed(self.0, self.1);
        std::sync::Arc::new(DeadPath)
    }
}

#[test]
fn both_sides_whose_paths_failed_keep_their_own_reasons() {
    // The server's path fails when it accepts, and its close races toward the client,
    // whose path fails when it hears the accept, one signal earlier. A side whose path
    // started, and so failed, before the peer's close was handled keeps its own reason,
    // whatever the threads do. When the close is taken in with the accept (the two signals
    // can pass each other on the way, and the session hands them over in order, together),
    // the connection has ended before its path could start, so none starts: then, and only
    // then, the peer's close decides.
    let mut own = 0;
    for seed in 0..20 {
        let (hub, peers) = Hub::start(0, 0, 100 + seed);
        let a = peer(&hub, &peers, Policy::Accept);
        let b = peer(&hub, &peers, Policy::Accept);
        let (ra, rb) = (
            (EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES, "a: no relay"),
            (EndReason::MISC_P2P_NAT_FIREWALL, "b: no pair"),
        );
        let (a_paths, b_paths) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        a.set_p2p_transport(Arc::new(FailsAtOnce(ra.0, ra.1, a_paths.clone())));
        b.set_p2p_transport(Arc::new(FailsAtOnce(rb.0, rb.1, b_paths.clone())));
        let mut b_events = b.status_events();
        b.create_listen_socket_p2p(3, &[]).unwrap();
        let c = a.connect_p2p(&b.get_identity(), 3, &[]).unwrap();
        let accepted = serve_until(&b, &mut b_events, Duration::from_secs(10), |acc| {
            acc.len() == 1
                && !matches!(
                    state(&b, acc[0]),
                    ConnectionState::Connecting | ConnectionState::FindingRoute
                )
        });
        let s = accepted[0];
        let end = Instant::now() + Duration::from_secs(10);
        while matches!(
            state(&a, c),
            ConnectionState::Connecting | ConnectionState::FindingRoute
        ) {
            assert!(Instant::now() < end, "seed {seed}: client still waiting");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Room for a late close to (wrongly) change either side.
        std::thread::sleep(Duration::from_millis(50));
        let outcome = |sockets: &Sockets, h| {
            let info = sockets.get_connection_info(h).unwrap();
            (info.state, info.end_reason, info.end_debug)
        };
        let mine = |(reason, debug): (EndReason, &str)| {
            (
                ConnectionState::ProblemDetectedLocally,
                reason,
                debug.to_string(),
            )
        };
        assert_eq!(b_paths.load(Ordering::SeqCst), 1, "seed {seed}");
        assert_eq!(outcome(&b, s), mine(rb), "seed {seed}: b");
        if a_paths.load(Ordering::SeqCst) == 1 {
            own += 1;
            assert_eq!(outcome(&a, c), mine(ra), "seed {seed}: a");
        } else {
            let heard = (
                ConnectionState::ClosedByPeer,
                rb.0.as_heard_from_peer(),
                rb.1.to_string(),
            );
            assert_eq!(
                outcome(&a, c),
                heard,
                "seed {seed}: a, whose path never started"
            );
        }
    }
    assert!(
        own > 0,
        "the client's path never started before the peer's close"
    );
}
