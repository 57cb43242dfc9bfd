//! Path MTU discovery in virtual time: a connection starts at 1,200 bytes and finds the
//! path's limit with padded probes, up to `MTU_PacketSize` (1,452 by default); a path that
//! starts dropping the size in use (a black hole) sends it back to the base at once, every
//! message still arrives, and the search finds the new limit. Probes that are lost cost no
//! data and no window.

mod common;

use common::{connected, drain, payload, send};
use punchline::proto::{ConnId, SendFlags, BASE_MTU};
use punchline::sim::Sim;
use std::time::Duration;

/// Sends `n` reliable 3,000-byte messages from the client as the send buffer takes them,
/// draining the server, until all arrived in order and intact (within 60 s of virtual
/// time); with `change`, the path's MTU becomes `.1` once message `.0` is queued. Returns
/// the client's packet size at the end.
fn transfer(
    sim: &mut Sim,
    c: ConnId,
    s: ConnId,
    first: u64,
    n: u64,
    change: Option<(u64, usize)>,
) -> usize {
    let deadline = sim.now + Duration::from_secs(60);
    let (mut next, mut got) = (first, Vec::new());
    while (got.len() as u64) < n {
        while next < first + n && send(sim, 0, c, payload(next, 3000), SendFlags::RELIABLE).is_ok()
        {
            if change.is_some_and(|(at, _)| at == next) {
                sim.mtu = change.unwrap().1;
            }
            next += 1;
        }
        sim.run_for(Duration::from_millis(1));
        got.extend(drain(sim, 1, s));
        assert!(sim.now < deadline, "{} of {n} messages arrived", got.len());
    }
    for (k, m) in got.iter().enumerate() {
        assert_eq!(
            m.payload,
            payload(first + k as u64, 3000),
            "message {k} intact"
        );
    }
    sim.nodes[0].endpoint.connection(c).unwrap().mtu()
}

fn stats(sim: &Sim, c: ConnId) -> punchline::proto::Stats {
    sim.nodes[0].endpoint.connection(c).unwrap().stats().clone()
}

#[test]
fn a_path_that_carries_the_bound_gets_it_with_one_probe() {
    let (mut sim, c, s) = connected(1);
    assert_eq!(sim.nodes[0].endpoint.connection(c).unwrap().mtu(), BASE_MTU);
    assert_eq!(transfer(&mut sim, c, s, 0, 200, None), 1452);
    let st = stats(&sim, c);
    assert_eq!((st.mtu_probes_sent, st.mtu_probes_lost), (1, 0));
    assert_eq!(st.packets_lost, 0);
}

#[test]
fn discovery_finds_a_smaller_limit_without_losing_data() {
    let (mut sim, c, s) = connected(2);
    sim.mtu = 1400;
    let mtu = transfer(&mut sim, c, s, 0, 300, None);
    assert!(
        mtu <= 1400 && mtu + 20 >= 1400,
        "found {mtu} on a 1400-byte path"
    );
    let st = stats(&sim, c);
    assert!(st.mtu_probes_lost >= 3, "{st:?}");
    assert_eq!(st.packets_lost, 0, "only probes are ever too large: {st:?}");
}

#[test]
fn a_path_that_carries_only_the_base_keeps_it() {
    let (mut sim, c, s) = connected(3);
    sim.mtu = BASE_MTU;
    assert_eq!(transfer(&mut sim, c, s, 0, 200, None), BASE_MTU);
    let st = stats(&sim, c);
    assert_eq!(st.packets_lost, 0, "{st:?}");
    assert!(st.mtu_probes_lost > 0 && st.mtu_black_holes == 0, "{st:?}");
}

#[test]
fn a_black_hole_sends_the_size_back_to_the_base_and_the_search_finds_the_new_limit() {
    let (mut sim, c, s) = connected(4);
    assert_eq!(transfer(&mut sim, c, s, 0, 100, None), 1452);
    // The route changes to one that carries at most 1,300 bytes, mid-transfer.
    transfer(&mut sim, c, s, 100, 600, Some((300, 1300)));
    let st = stats(&sim, c);
    assert!(st.mtu_black_holes >= 1, "{st:?}");
    // The search runs while data flows.
    let mtu = transfer(&mut sim, c, s, 700, 600, None);
    let st = stats(&sim, c);
    assert!(
        mtu <= 1300 && mtu + 20 >= 1300,
        "found {mtu} after the change: {st:?}"
    );
}
