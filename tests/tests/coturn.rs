//! Our ICE through coturn (Debian package `coturn`, started by the test on loopback) as the
//! TURN server: two peers that may only use relayed candidates connect through it.
//!
//! Without coturn installed the test says SKIPPED; with `PUNCHLINE_REQUIRE_COTURN=1` (set by
//! `.ci/run`) that is a failure.

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::transport::RouteKind;
use punchline_signaling::Config;
use punchline_tests::coturn;
use punchline_tests::peers::*;
use punchline_tests::server::Signaling;

#[test]
fn our_ice_relays_through_coturn() {
    let Some(coturn) = coturn::start() else {
        return;
    };
    let port = coturn.port;
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    let turn = [
        ice_enable(1),
        (
            ConfigValue::P2pTurnServerList,
            ConfigData::String(format!("turn:127.0.0.1:{port}")),
        ),
        (
            ConfigValue::P2pTurnUserList,
            ConfigData::String("punch".into()),
        ),
        (
            ConfigValue::P2pTurnPassList,
            ConfigData::String("line".into()),
        ),
    ];
    let (ha, hb) = connect(&a, &b, &turn, &turn);
    assert_talking(&a, ha, &b, hb, 200);
    for (p, h) in [(&a, ha), (&b, hb)] {
        let info = info(p, h);
        assert_eq!(info.route, RouteKind::Relayed, "{info:?}");
        let detail = p.sockets.get_detailed_connection_status(h).unwrap();
        assert!(detail.contains("relay 127.0.0.1"), "{detail}");
    }
}
