//! The relay (the signaling server's websocket) beside ICE, with route selection: peers set
//! to `Routes` over both connect through the relay at once, move to a direct ICE route
//! when it is found and measured better, and stay on the relay where no UDP path exists.
//! And the relay network's ping locations against POPs in two "regions".

use punchline::api::relay::{estimate_ping_time_between_two_locations, PingLocation};
use punchline_netns_tests::{connect, exchange, lab, say, Impairment, Lab, Nat};
use std::time::Duration;

#[test]
fn relay_connects_peers_whose_udp_is_blocked_on_both_sides() {
    let mut lab = lab!("relay_connects_peers_whose_udp_is_blocked_on_both_sides");
    let mut sa = lab.site(Nat::PortRestricted);
    let mut sb = lab.site(Nat::FullCone);
    let (ha, hb) = (lab.host(&mut sa), lab.host(&mut sb));
    lab.block_udp(&ha);
    lab.block_udp(&hb);
    lab.audit();
    // Both transports offered: nothing but the relay can work here, and it is chosen.
    let mut pa = lab.peer_with(&ha, 1, &["--transport", "routes"]);
    let mut pb = lab.peer_with(&hb, 2, &["--transport", "routes"]);
    let (ea, eb) = connect(&mut pa, &mut pb);
    for e in [&ea, &eb] {
        assert_eq!(e["route"], "relayed", "{e}");
        assert_eq!(e["relayed"], true, "{e}");
    }
    let (ua, ub) = exchange(&mut pa, &mut pb, 1000, 100_000);
    assert_eq!(pa.status()["route"], "relayed");
    say(&format!(
        "relay, UDP blocked both sides: connected in {} ms; unreliable bytes {ua} / {ub}",
        ea["ms"]
    ));
}

#[test]
fn relay_connects_two_symmetric_nats_without_turn() {
    let mut lab = lab!("relay_connects_two_symmetric_nats_without_turn");
    let mut sa = lab.site(Nat::Symmetric);
    let mut sb = lab.site(Nat::Symmetric);
    let (ha, hb) = (lab.host(&mut sa), lab.host(&mut sb));
    lab.audit();
    let flags = ["--transport", "routes", "--no-turn"];
    let mut pa = lab.peer_with(&ha, 1, &flags);
    let mut pb = lab.peer_with(&hb, 2, &flags);
    let (ea, _) = connect(&mut pa, &mut pb);
    assert_eq!(ea["route"], "relayed", "{ea}");
    // Neither learns the other's address: the relay hides it.
    let status = pa.status();
    let remote = status["remote"].as_str().unwrap_or("");
    assert!(!remote.contains(&hb.ip.to_string()), "{status}");
    assert!(!remote.starts_with("203.0.113."), "{status}");
    exchange(&mut pa, &mut pb, 1000, 100_000);
    // ICE (no TURN) never found a pair; the relay carried everything.
    let status = pa.status();
    assert_eq!(status["route"], "relayed", "{status}");
    say(&format!(
        "relay, symmetric x symmetric without TURN: connected in {} ms, remote shown as {remote}",
        ea["ms"]
    ));
}

#[test]
fn relay_first_then_upgrade_to_a_direct_route_without_losing_a_message() {
    let mut lab = lab!("relay_first_then_upgrade_to_a_direct_route_without_losing_a_message");
    let mut sa = lab.site(Nat::PortRestricted);
    let mut sb = lab.site(Nat::FullCone);
    let (ha, hb) = (lab.host(&mut sa), lab.host(&mut sb));
    lab.audit();
    let mut pa = lab.peer_with(&ha, 1, &["--transport", "routes"]);
    let mut pb = lab.peer_with(&hb, 2, &["--transport", "routes"]);
    let (ea, eb) = connect(&mut pa, &mut pb);
    // The relay is ready at once; ICE needs its checks (about a second here).
    for e in [&ea, &eb] {
        assert_eq!(e["route"], "relayed", "relay first: {e}");
    }
    // A stream each way across the switch: 400 messages, one every 10 ms.
    for p in [&mut pa, &mut pb] {
        p.send("stream 400 10");
        p.send("expect 400 60000");
    }
    let ra = pa.wait(&["route"], Duration::from_secs(30));
    let rb = pb.wait(&["route"], Duration::from_secs(30));
    for r in [&ra, &rb] {
        assert_eq!(r["route"], "direct-public", "{r}");
    }
    let ga = pa.wait(&["received"], Duration::from_secs(70));
    let gb = pb.wait(&["received"], Duration::from_secs(70));
    for g in [&ga, &gb] {
        assert_eq!(g["ok"], true, "{g}");
        assert_eq!(g["reliable"], 400, "{g}");
    }
    let status = pa.status();
    assert_eq!(status["route"], "direct-public", "{status}");
    let detail = status["detail"].as_str().unwrap_or("");
    assert!(detail.contains("route ice (in use)"), "{detail}");
    say(&format!(
        "relay first: connected in {} ms over the relay, direct at {} / {} ms; 400 messages each way, none lost",
        ea["ms"], ra["ms"], rb["ms"]
    ));
}

#[test]
fn relay_pops_in_two_regions_estimate_the_relayed_ping() {
    let mut lab = lab!("relay_pops_in_two_regions_estimate_the_relayed_ping");
    // Peer A is 20 ms (one way) from the internet, B 30 ms; the "near" POP is the lab's
    // server on the internet itself, the "far" one 40 ms further away.
    let mut sa = lab.site_impaired(
        Nat::None,
        Some(Impairment {
            delay_ms: 20,
            loss: 0.0,
        }),
    );
    let mut sb = lab.site_impaired(
        Nat::None,
        Some(Impairment {
            delay_ms: 30,
            loss: 0.0,
        }),
    );
    let (ha, hb) = (lab.host(&mut sa), lab.host(&mut sb));
    let far = lab.relay_pop(40);
    lab.audit();
    let pops = format!("near={},far={far}", Lab::signaling_url());
    let flags = ["--transport", "relay", "--pops", pops.as_str()];
    let mut pa = lab.peer_with(&ha, 1, &flags);
    let mut pb = lab.peer_with(&hb, 2, &flags);
    let mut locations = Vec::new();
    for p in [&mut pa, &mut pb] {
        p.send("location");
        let l = p.wait(&["location"], Duration::from_secs(30));
        assert_eq!(l["status"], "Current", "{l}");
        let near = l["pops"]["near"].as_i64().unwrap_or(-1);
        let far = l["pops"]["far"].as_i64().unwrap_or(-1);
        assert!(
            near > 0 && far > near + 60,
            "the far POP is 80 ms further: {l}"
        );
        let text = l["location"].as_str().unwrap_or_default().to_string();
        locations.push(text.parse::<PingLocation>().unwrap());
    }
    let estimate = estimate_ping_time_between_two_locations(&locations[0], &locations[1]);
    // Through the near POP: 2 x 20 + 2 x 30 = 100 ms.
    assert!((90..=130).contains(&estimate), "estimate {estimate} ms");

    // The same two peers, relayed through the near POP (the server they are logged in to).
    let (ea, _) = connect(&mut pa, &mut pb);
    assert_eq!(ea["route"], "relayed", "{ea}");
    for p in [&mut pa, &mut pb] {
        p.send("stream 150 20");
        p.send("expect 150 30000");
    }
    for p in [&mut pa, &mut pb] {
        let g = p.wait(&["received"], Duration::from_secs(40));
        assert_eq!(g["ok"], true, "{g}");
    }
    let ping = pa.status()["ping_ms"].as_i64().unwrap_or(0);
    let off = (estimate as f64 - ping as f64).abs() / ping as f64;
    assert!(
        off <= 0.20,
        "estimate {estimate} ms is {:.0}% off the measured relayed ping {ping} ms",
        off * 100.0
    );
    say(&format!(
        "ping locations: A {} / B {}; estimate {estimate} ms, relayed ping {ping} ms ({:.1}% off)",
        locations[0],
        locations[1],
        off * 100.0
    ));
}
