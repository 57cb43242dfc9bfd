//! The NAT matrix: for every pair of the four router types, two peers connect by identity
//! through the lab's signaling server, exchange 1,000 reliable messages and 100 KB of
//! unreliable ones each way, and the route is the one the NATs allow: direct wherever a
//! direct path exists, TURN-relayed for symmetric x symmetric and symmetric x
//! port-restricted. Prints the route and time-to-Connected of every cell.

use punchline_netns_tests::{connect, exchange, say, skip, Lab, Nat};

struct Cell {
    a: Nat,
    b: Nat,
    route: String,
    connected_ms: u64,
    unreliable: (u64, u64),
}

fn expect_relayed(a: Nat, b: Nat) -> bool {
    matches!(
        (a, b),
        (Nat::Symmetric, Nat::Symmetric)
            | (Nat::Symmetric, Nat::PortRestricted)
            | (Nat::PortRestricted, Nat::Symmetric)
    )
}

fn cell(a: Nat, b: Nat) -> Cell {
    let name = format!("matrix {} x {}", a.name(), b.name());
    let mut lab = Lab::new(&name, env!("CARGO_BIN_EXE_netns-host")).expect("checked");
    let (_, mut pa, mut pb) = lab.two_peers(a, b, None);
    let (ea, eb) = connect(&mut pa, &mut pb);
    let route = ea["route"].as_str().unwrap_or("?").to_string();
    assert_eq!(ea["route"], eb["route"], "{name}: the two ends disagree");
    let want = if expect_relayed(a, b) {
        "relayed"
    } else {
        "direct-public"
    };
    assert_eq!(route, want, "{name}: {ea} / {eb}");
    let unreliable = exchange(&mut pa, &mut pb, 1000, 100_000);

    // Unreliable messages are paced with the reliable ones, and every socket on a direct
    // route (the library's, ICE's) has room for a window's burst: on these clean links at
    // least 99% arrive. Through the TURN server some are still lost (issue #21 item 5).
    let floor = if route == "relayed" { 50_000 } else { 99_000 };
    for got in [unreliable.0, unreliable.1] {
        assert!(
            got >= floor,
            "{name}: only {got} of 100000 unreliable bytes (route {route})"
        );
    }
    // Still on the same route, with nothing ended.
    for p in [&mut pa, &mut pb] {
        let s = p.status();
        assert_eq!(s["state"], "Connected", "{name}: {s}");
        assert!(p.seen("ended").is_empty(), "{name}: {:?}", p.events);
    }
    Cell {
        a,
        b,
        route,
        connected_ms: ea["ms"].as_u64().unwrap_or(0),
        unreliable,
    }
}

#[test]
fn every_pair_of_nat_types_connects_on_the_route_it_allows() {
    if skip("every_pair_of_nat_types_connects_on_the_route_it_allows") {
        return;
    }
    let mut cells = Vec::new();
    for (i, &a) in Nat::ALL.iter().enumerate() {
        for &b in &Nat::ALL[i..] {
            cells.push(cell(a, b));
        }
    }
    say("peer A           peer B           route          connected in   unreliable bytes A<-B / B<-A");
    for c in &cells {
        say(&format!(
            "{:<16} {:<16} {:<14} {:>7} ms     {} / {}",
            c.a.name(),
            c.b.name(),
            c.route,
            c.connected_ms,
            c.unreliable.0,
            c.unreliable.1
        ));
    }
}
