//! Scenarios beyond the matrix: peers behind one NAT, slow and lossy internet links, UDP
//! blocked, a link outage in the middle of a transfer, and a signaling-server restart.

use punchline_netns_tests::{connect, exchange, lab, say, Impairment, Nat};
use std::time::{Duration, Instant};

#[test]
fn peers_behind_the_same_nat_connect_on_the_lan() {
    let mut lab = lab!("peers_behind_the_same_nat_connect_on_the_lan");
    let mut site = lab.site(Nat::PortRestricted);
    let ha = lab.host(&mut site);
    let hb = lab.host(&mut site);
    lab.audit();
    let mut pa = lab.peer(&ha, 1);
    let mut pb = lab.peer(&hb, 2);
    let (ea, eb) = connect(&mut pa, &mut pb);
    for e in [&ea, &eb] {
        assert_eq!(e["route"], "direct-local", "{e}");
    }
    // Each sees the other's LAN address.
    assert_eq!(
        ea["remote"].as_str().unwrap_or("").split(':').next(),
        Some(&*hb.ip.to_string())
    );
    let (ua, ub) = exchange(&mut pa, &mut pb, 1000, 100_000);
    say(&format!(
        "same NAT: {} in {} ms; unreliable bytes {ua} / {ub}",
        ea["route"], ea["ms"]
    ));
}

#[test]
fn lossy_slow_internet_links_still_carry_everything_reliable() {
    let mut lab = lab!("lossy_slow_internet_links_still_carry_everything_reliable");
    // Both internet links: 50 ms each way and 10% of frames lost, in both directions.
    let bad = Some(Impairment {
        delay_ms: 50,
        loss: 0.10,
    });
    let (_, mut pa, mut pb) = lab.two_peers(Nat::FullCone, Nat::PortRestricted, bad);
    let (ea, _) = connect(&mut pa, &mut pb);
    assert_eq!(ea["route"], "direct-public", "{ea}");
    let start = Instant::now();
    let (ua, ub) = exchange(&mut pa, &mut pb, 1000, 100_000);
    let ping = pa.status()["ping_ms"].as_i64().unwrap_or(0);
    // Two links of 50 ms each way: a 200 ms round trip.
    assert!((180..=400).contains(&ping), "ping {ping} ms");
    say(&format!(
        "lossy links: connected in {} ms, ping {ping} ms, 1000 reliable each way in {} ms, unreliable bytes {ua} / {ub}",
        ea["ms"],
        start.elapsed().as_millis()
    ));
}

#[test]
fn udp_blocked_for_one_peer_ends_with_a_clear_reason() {
    let mut lab = lab!("udp_blocked_for_one_peer_ends_with_a_clear_reason");
    let ([ha, _], mut pa, mut pb) = lab.two_peers(Nat::PortRestricted, Nat::FullCone, None);
    // Signaling is TCP, so the peer stays logged in; no UDP path (STUN, TURN or direct)
    // works, and no other transport exists yet: the connection must end and say why.
    lab.block_udp(&ha);
    pa.send(&format!("connect {}", pb.identity));
    let ea = pa.wait(&["connected", "ended"], Duration::from_secs(60));
    assert_eq!(ea["event"], "ended", "{ea}");
    let reason = ea["reason"].as_u64().unwrap_or(0);
    let debug = ea["debug"].as_str().unwrap_or("");
    assert_eq!(reason, 5009, "{ea}");
    assert!(debug.contains("no ICE candidate pair answered"), "{ea}");
    let eb = pb.wait(&["connected", "ended"], Duration::from_secs(60));
    assert_eq!(eb["event"], "ended", "{eb}");
    // Each side reports its own failure unless the peer's close came while it still had a
    // way forward; then it reports the peer's reason. At least one side failed on its own.
    let own = |e: &serde_json::Value| e["state"] == "ProblemDetectedLocally";
    assert!(
        own(&ea) || own(&eb),
        "neither side failed on its own: {ea} {eb}"
    );
    for (e, other) in [(&ea, &eb), (&eb, &ea)] {
        if !own(e) {
            assert_eq!(e["state"], "ClosedByPeer", "{e}");
            assert!(own(other), "{e} heard a close from {other}");
            let (heard, given) = (e["debug"].as_str(), other["debug"].as_str());
            assert!(
                heard.is_some_and(|h| given.is_some_and(|g| g.starts_with(h))),
                "the peer's reason, as it gave it (perhaps cut short): {e} {other}"
            );
        }
    }
    say(&format!(
        "UDP blocked: ended after {} ms, {} {reason} {debug:?}; the peer: {} {} {:?}",
        ea["ms"], ea["state"], eb["state"], eb["reason"], eb["debug"]
    ));
}

#[test]
fn a_five_second_outage_mid_transfer_is_survived_or_reported() {
    let mut lab = lab!("a_five_second_outage_mid_transfer_is_survived_or_reported");
    let ([ha, _], mut pa, mut pb) = lab.two_peers(Nat::FullCone, Nat::PortRestricted, None);
    connect(&mut pa, &mut pb);
    // 200 messages each way, one every 50 ms: 10 s, with the outage from 2 s to 7 s.
    for p in [&mut pa, &mut pb] {
        p.send("stream 200 50");
        p.send("expect 200 60000");
    }
    std::thread::sleep(Duration::from_secs(2));
    lab.cut(&ha.uplink);
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    lab.restore(&ha.uplink);
    let ra = pa.wait(&["received"], Duration::from_secs(70));
    let rb = pb.wait(&["received"], Duration::from_secs(70));
    let ended: Vec<_> = [&pa, &pb]
        .iter()
        .flat_map(|p| p.seen("ended"))
        .cloned()
        .collect();
    if ended.is_empty() {
        // Recovered: everything sent during the outage arrived after it.
        for r in [&ra, &rb] {
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["reliable"], 200, "{r}");
        }
        for p in [&mut pa, &mut pb] {
            let s = p.status();
            assert_eq!(s["state"], "Connected", "{s}");
        }
        say(&format!(
            "outage: recovered; all 200 messages arrived each way ({} ms / {} ms after the expect)",
            ra["ms"], rb["ms"]
        ));
    } else {
        // Or the loss was reported as a local problem, within TimeoutConnected (10 s).
        for e in &ended {
            assert_eq!(e["state"], "ProblemDetectedLocally", "{e}");
        }
        let reported = cut.elapsed();
        assert!(reported <= Duration::from_secs(11), "{ended:?}");
        say(&format!("outage: reported as {ended:?}"));
    }
}

#[test]
fn a_signaling_server_restart_leaves_connections_up() {
    let mut lab = lab!("a_signaling_server_restart_leaves_connections_up");
    let (_, mut pa, mut pb) = lab.two_peers(Nat::FullCone, Nat::PortRestricted, None);
    connect(&mut pa, &mut pb);
    exchange(&mut pa, &mut pb, 100, 10_000);
    let server = lab.server.as_mut().expect("a lab has a server");
    server.stop();
    // Without the server: the connection carries on.
    exchange(&mut pa, &mut pb, 100, 10_000);
    lab.server.as_mut().expect("still there").restart();
    exchange(&mut pa, &mut pb, 100, 10_000);
    for p in [&mut pa, &mut pb] {
        let s = p.status();
        assert_eq!(s["state"], "Connected", "{s}");
        assert!(p.seen("ended").is_empty(), "{:?}", p.events);
    }
    say("signaling restart: 300 reliable messages each way across the stop and the restart, connection up");
}
