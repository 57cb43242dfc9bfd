//! The relay transport (through the signaling server's websocket) where no UDP path exists.
//! Both peers are set to the relay here; choosing between ICE and the relay by measured
//! route is issue #9's route selection.

use punchline_netns_tests::{connect, exchange, lab, say, Nat};

#[test]
fn relay_connects_peers_whose_udp_is_blocked_on_both_sides() {
    let mut lab = lab!("relay_connects_peers_whose_udp_is_blocked_on_both_sides");
    let mut sa = lab.site(Nat::PortRestricted);
    let mut sb = lab.site(Nat::FullCone);
    let (ha, hb) = (lab.host(&mut sa), lab.host(&mut sb));
    lab.block_udp(&ha);
    lab.block_udp(&hb);
    lab.audit();
    let mut pa = lab.peer_with(&ha, 1, &["--transport", "relay"]);
    let mut pb = lab.peer_with(&hb, 2, &["--transport", "relay"]);
    let (ea, eb) = connect(&mut pa, &mut pb);
    for e in [&ea, &eb] {
        assert_eq!(e["route"], "relayed", "{e}");
        assert_eq!(e["relayed"], true, "{e}");
    }
    let (ua, ub) = exchange(&mut pa, &mut pb, 1000, 100_000);
    say(&format!(
        "relay, UDP blocked both sides: connected in {} ms; unreliable bytes {ua} / {ub}",
        ea["ms"]
    ));
}

#[test]
fn relay_connects_two_symmetric_nats() {
    let mut lab = lab!("relay_connects_two_symmetric_nats");
    let mut sa = lab.site(Nat::Symmetric);
    let mut sb = lab.site(Nat::Symmetric);
    let (ha, hb) = (lab.host(&mut sa), lab.host(&mut sb));
    lab.audit();
    let mut pa = lab.peer_with(&ha, 1, &["--transport", "relay"]);
    let mut pb = lab.peer_with(&hb, 2, &["--transport", "relay"]);
    let (ea, _) = connect(&mut pa, &mut pb);
    assert_eq!(ea["route"], "relayed", "{ea}");
    // Neither learns the other's address: the relay hides it.
    let status = pa.status();
    let remote = status["remote"].as_str().unwrap_or("");
    assert!(!remote.contains(&hb.ip.to_string()), "{status}");
    assert!(!remote.starts_with("203.0.113."), "{status}");
    exchange(&mut pa, &mut pb, 1000, 100_000);
    say(&format!(
        "relay, symmetric x symmetric: connected in {} ms, remote shown as {remote}",
        ea["ms"]
    ));
}
