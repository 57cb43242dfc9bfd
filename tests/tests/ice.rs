//! ICE on loopback: two `Sockets` introduced by a real signaling server (in this process,
//! with its embedded STUN and TURN servers) connect by identity through webrtc-ice agents,
//! and the route is reported.

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::proto::ConnectionInfoFlags;
use punchline::transport::RouteKind;
use punchline::{ConnectionState, EndReason};
use punchline_ice::IceTransport;
use punchline_signaling::Config;
use punchline_tests::peers::*;
use punchline_tests::server::Signaling;

#[test]
fn host_candidates_on_loopback_connect_directly() {
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    let (ha, hb) = connect(&a, &b, &[], &[]);
    assert_talking(&a, ha, &b, hb, 200);
    for (p, h) in [(&a, ha), (&b, hb)] {
        let info = info(p, h);
        assert_eq!(info.route, RouteKind::DirectLocal, "{info:?}");
        assert!(info.address_remote.ip().is_loopback(), "{info:?}");
        assert!(!info.flags.contains(ConnectionInfoFlags::RELAYED));
        let detail = p.sockets.get_detailed_connection_status(h).unwrap();
        assert!(detail.contains("route: DirectLocal"), "{detail}");
        assert!(detail.contains("host 127.0.0.1"), "{detail}");
    }
}

#[test]
fn relay_only_goes_through_the_embedded_turn_server() {
    let sig = Signaling::start(Config::default(), true);
    let relay = sig.turn.as_ref().unwrap().addr();
    let (a, b) = (peer(&sig), peer(&sig));
    let (ha, hb) = connect(&a, &b, &[ice_enable(1)], &[ice_enable(1)]);
    assert_talking(&a, ha, &b, hb, 200);
    for (p, h) in [(&a, ha), (&b, hb)] {
        let info = info(p, h);
        assert_eq!(info.route, RouteKind::Relayed, "{info:?}");
        assert!(info.flags.contains(ConnectionInfoFlags::RELAYED));
        // The peer is seen at its relayed address: the TURN server's IP.
        assert_eq!(info.address_remote.ip(), relay.ip(), "{info:?}");
        let detail = p.sockets.get_detailed_connection_status(h).unwrap();
        assert!(detail.contains("relay 127.0.0.1"), "{detail}");
    }
}

#[test]
fn stun_gives_public_candidates_that_connect() {
    let sig = Signaling::start(Config::default(), true);
    let (a, b) = (peer(&sig), peer(&sig));
    // Public candidates only: host addresses here are private (loopback), so every
    // candidate shared comes from the embedded STUN server.
    let (ha, hb) = connect(&a, &b, &[ice_enable(4)], &[ice_enable(4)]);
    assert_talking(&a, ha, &b, hb, 50);
    let detail = a.sockets.get_detailed_connection_status(ha).unwrap();
    assert!(detail.contains("srflx 127.0.0.1"), "{detail}");
    assert!(!detail.contains("host 127.0.0.1"), "{detail}");
}

#[test]
fn a_wrong_turn_password_ends_the_connection_with_a_clear_reason() {
    let sig = Signaling::start(Config::default(), true);
    let (a, b) = (peer(&sig), peer(&sig));
    let wrong = (
        ConfigValue::P2pTurnPassList,
        ConfigData::String("not-the-password".into()),
    );
    let (ha, hb) = connect(&a, &b, &[ice_enable(1), wrong], &[ice_enable(1)]);
    // a found its own problem and says so, whatever b does; b hears it from a.
    assert_eq!(info(&a, ha).state, ConnectionState::ProblemDetectedLocally);
    assert_ended(
        &a,
        ha,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
        &["TURN allocation failed", "password"],
    );
    assert_eq!(info(&b, hb).state, ConnectionState::ClosedByPeer);
    assert_ended(
        &b,
        hb,
        EndReason::REMOTE_P2P_ICE_NO_PUBLIC_ADDRESSES,
        &["TURN allocation failed", "password"],
    );
}

#[test]
fn ice_disabled_ends_at_once_with_3006() {
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    let (ha, _) = connect(&a, &b, &[ice_enable(0)], &[]);
    assert_ended(
        &a,
        ha,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
        &["ICE is disabled"],
    );
}

#[test]
fn ice_restarts_when_the_relay_dies_and_the_connection_lives_on() {
    let sig = Signaling::start(Config::default(), true);
    let relay = sig.turn.as_ref().unwrap().addr();
    let (a, b) = (peer(&sig), peer(&sig));
    // Long enough for ICE to notice the dead path (7 s) and find a new one.
    let patient = (ConfigValue::TimeoutConnected, ConfigData::Int32(30_000));
    let opts = [ice_enable(1), patient];
    let (ha, hb) = connect(&a, &b, &opts, &opts);
    assert_eq!(info(&a, ha).state, ConnectionState::Connected);
    exchange(&a.sockets, ha, &b.sockets, hb, 20);
    let before = info(&a, ha).address_remote;
    // The TURN server forgets every allocation: the relayed path is dead.
    assert!(sig.drop_turn_allocations() >= 2);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(25);
    loop {
        let now = info(&a, ha);
        assert_eq!(now.state, ConnectionState::Connected, "{now:?}");
        if now.route == RouteKind::Relayed && now.address_remote != before {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "no new relayed route: {now:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(info(&a, ha).address_remote.ip(), relay.ip());
    exchange(&a.sockets, ha, &b.sockets, hb, 20);
    assert_eq!(info(&b, hb).state, ConnectionState::Connected);
}

#[test]
fn a_peer_with_no_address_to_offer_ends_both_sides_with_3006_and_4007() {
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    // b may share only public addresses and has no STUN server: loopback is all it has.
    let (ha, hb) = connect(&a, &b, &[], &[ice_enable(4)]);
    assert_eq!(info(&b, hb).state, ConnectionState::ProblemDetectedLocally);
    assert_ended(&b, hb, EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES, &[]);
    assert_eq!(info(&a, ha).state, ConnectionState::ClosedByPeer);
    assert_ended(&a, ha, EndReason::REMOTE_P2P_ICE_NO_PUBLIC_ADDRESSES, &[]);
}

#[test]
fn no_pair_that_answers_ends_with_5009() {
    let sig = Signaling::start(Config::default(), false);
    // One peer has only 127.0.0.1, the other only ::1: no candidate pair can form.
    let a = peer_with(
        &sig,
        Some(IceTransport::new().with_ip_filter(|ip| ip.is_ipv4() && ip.is_loopback())),
    );
    let b = peer_with(
        &sig,
        Some(IceTransport::new().with_ip_filter(|ip| ip.is_ipv6() && ip.is_loopback())),
    );
    let (ha, _) = connect(&a, &b, &[], &[]);
    assert_ended(
        &a,
        ha,
        EndReason::MISC_P2P_NAT_FIREWALL,
        &["no ICE candidate pair answered"],
    );
}

#[test]
fn symmetric_connect_over_ice_gives_one_connection_each_side() {
    let symmetric = [(ConfigValue::SymmetricConnect, ConfigData::Int32(1))];
    let sig = Signaling::start(Config::default(), false);
    for round in 0..3 {
        let (a, b) = (peer(&sig), peer(&sig));
        let (mut a_events, mut b_events) = (a.sockets.status_events(), b.sockets.status_events());
        a.sockets.create_listen_socket_p2p(3, &symmetric).unwrap();
        b.sockets.create_listen_socket_p2p(3, &symmetric).unwrap();
        let (ia, ib) = (a.sockets.get_identity(), b.sockets.get_identity());
        let (a2, b2) = (a.sockets.clone(), b.sockets.clone());
        let (sa, sb) = (symmetric.clone(), symmetric.clone());
        let ta = std::thread::spawn(move || a2.connect_p2p(&ib, 3, &sa).unwrap());
        let tb = std::thread::spawn(move || b2.connect_p2p(&ia, 3, &sb).unwrap());
        let (ca, cb) = (ta.join().unwrap(), tb.join().unwrap());
        assert_eq!(
            settle(&a.sockets, ca, std::time::Duration::from_secs(20)),
            ConnectionState::Connected,
            "round {round}"
        );
        assert_eq!(
            settle(&b.sockets, cb, std::time::Duration::from_secs(20)),
            ConnectionState::Connected,
            "round {round}"
        );
        exchange(&a.sockets, ca, &b.sockets, cb, 10);
        assert_eq!(info(&a, ca).route, RouteKind::DirectLocal);
        for (events, own) in [(&mut a_events, ca), (&mut b_events, cb)] {
            while let Some(ev) = events.try_recv() {
                assert_eq!(
                    ev.connection, own,
                    "round {round}: a second connection appeared"
                );
            }
        }
    }
}

#[test]
fn a_peer_without_ice_is_no_substitute_and_learns_no_address() {
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer_with(&sig, None));
    let (ha, hb) = connect(&a, &b, &[], &[]);
    assert_ended(
        &a,
        ha,
        EndReason::MISC_P2P_RENDEZVOUS,
        &["the peer answered with direct UDP, not our P2P transport"],
    );
    // a asked for ICE, so its request carried no address for b to use.
    assert_ne!(info(&b, hb).state, ConnectionState::Connected);
}
