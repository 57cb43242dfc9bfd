//! ICE on loopback: two `Sockets` introduced by a real signaling server (in this process,
//! with its embedded STUN and TURN servers) connect by identity through webrtc-ice agents,
//! and the route is reported.

mod common;

use common::*;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::proto::ConnectionInfoFlags;
use punchline::transport::RouteKind;
use punchline::{ConnectionState, EndReason};
use punchline_signaling::Config;

#[test]
fn host_candidates_on_loopback_connect_directly() {
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    let (ha, hb) = connect(&a, &b, &[], &[]);
    assert_eq!(info(&a, ha).state, ConnectionState::Connected);
    assert_eq!(info(&b, hb).state, ConnectionState::Connected);
    exchange(&a.sockets, ha, &b.sockets, hb, 200);
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
    assert_eq!(info(&a, ha).state, ConnectionState::Connected);
    assert_eq!(info(&b, hb).state, ConnectionState::Connected);
    exchange(&a.sockets, ha, &b.sockets, hb, 200);
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
    assert_eq!(info(&a, ha).state, ConnectionState::Connected);
    assert_eq!(info(&b, hb).state, ConnectionState::Connected);
    exchange(&a.sockets, ha, &b.sockets, hb, 50);
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
    let (ha, _) = connect(&a, &b, &[ice_enable(1), wrong], &[ice_enable(1)]);
    let info = info(&a, ha);
    assert_eq!(info.state, ConnectionState::ProblemDetectedLocally);
    assert_eq!(
        info.end_reason,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES
    );
    assert!(
        info.end_debug.contains("TURN allocation failed"),
        "{}",
        info.end_debug
    );
    assert!(info.end_debug.contains("password"), "{}", info.end_debug);
}

#[test]
fn ice_disabled_ends_at_once_with_3006() {
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    let (ha, _) = connect(&a, &b, &[ice_enable(0)], &[]);
    let info = info(&a, ha);
    assert_eq!(
        info.end_reason,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES
    );
    assert!(
        info.end_debug.contains("ICE is disabled"),
        "{}",
        info.end_debug
    );
}

#[test]
fn ice_restarts_when_the_relay_dies_and_the_connection_lives_on() {
    let mut sig = Signaling::start(Config::default(), true);
    let relay = sig.turn.as_ref().unwrap().addr();
    let (a, b) = (peer(&sig), peer(&sig));
    // Long enough for ICE to notice the dead path (7 s) and find a new one.
    let patient = (ConfigValue::TimeoutConnected, ConfigData::Int32(30_000));
    let opts = [ice_enable(1), patient];
    let (ha, hb) = connect(&a, &b, &opts, &opts);
    assert_eq!(info(&a, ha).state, ConnectionState::Connected);
    exchange(&a.sockets, ha, &b.sockets, hb, 20);
    let before = info(&a, ha).address_remote;
    // The TURN server goes away with every allocation, and comes back empty.
    sig.restart_turn();
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
