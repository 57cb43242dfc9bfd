//! Lanes (`configure_connection_lanes`) under a send-rate cap, in a virtual world: a lane of
//! a lower priority number goes first, whatever the queue order; lanes of equal priority
//! share by weight.

mod common;

use common::virtual_pair;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::OutMessage;
use punchline::{ConnectionHandle, Error, SendFlags, Sockets, VirtualWorld};
use std::time::Duration;

const PER_LANE: usize = 100;
const SIZE: usize = 1000;

/// A connected pair whose client sends at a capped rate, which keeps every lane backed up
/// while the scheduler chooses.
fn connected_pair(world: &VirtualWorld) -> (Sockets, ConnectionHandle, Sockets, ConnectionHandle) {
    virtual_pair(
        world,
        &[
            (ConfigValue::SendRateMin, ConfigData::Int32(100_000)),
            (ConfigValue::SendRateMax, ConfigData::Int32(100_000)),
        ],
    )
}

#[test]
fn priority_is_strict_and_equal_priorities_share_by_weight() {
    let world = VirtualWorld::new(1).unwrap();
    let (client, c, server, s) = connected_pair(&world);
    // Lane 0 first; lanes 1 and 2 share 3:1.
    client
        .configure_connection_lanes(c, &[0, 10, 10], &[1, 3, 1])
        .unwrap();
    // Queued in one go, lane 0 last: priority, not queue order, decides.
    let mut batch = Vec::new();
    for lane in [2u16, 1, 0] {
        for i in 0..PER_LANE {
            let mut payload = vec![lane as u8; SIZE];
            payload[1..5].copy_from_slice(&(i as u32).to_be_bytes());
            batch.push(OutMessage {
                connection: c,
                payload: payload.into(),
                flags: SendFlags::RELIABLE,
                lane,
            });
        }
    }
    for r in client.send_messages(batch) {
        r.unwrap();
    }
    let mut order = Vec::new();
    let all = world.run_until(world.now() + Duration::from_secs(20), || {
        for m in server.receive_messages_on_connection(s, 64).unwrap() {
            order.push(m.payload[0]);
        }
        order.len() >= 3 * PER_LANE
    });
    assert!(all, "only {} messages arrived", order.len());
    assert!(
        order[..PER_LANE].iter().all(|&l| l == 0),
        "lane 0 did not go first: {:?}",
        &order[..PER_LANE + 10]
    );
    // While both equal lanes are backed up, lane 1 gets three times lane 2's share.
    let shared = &order[PER_LANE..PER_LANE + 120];
    let ones = shared.iter().filter(|&&l| l == 1).count();
    let twos = shared.iter().filter(|&&l| l == 2).count();
    assert_eq!(ones + twos, 120);
    assert!(
        (88..=92).contains(&ones),
        "lane 1 got {ones} of 120, lane 2 {twos}"
    );
}

#[test]
fn lanes_are_checked() {
    let world = VirtualWorld::new(2).unwrap();
    let (client, c, _server, _s) = connected_pair(&world);
    let lane = |lane| {
        client
            .send_messages(vec![OutMessage {
                connection: c,
                payload: vec![1u8; 10].into(),
                flags: SendFlags::RELIABLE,
                lane,
            }])
            .pop()
            .unwrap()
    };
    assert!(matches!(lane(1), Err(Error::InvalidParam(_))));
    client
        .configure_connection_lanes(c, &[0, 1], &[1, 1])
        .unwrap();
    assert!(lane(1).is_ok());
    // Fewer lanes, a zero weight, or mismatched lists are refused.
    for (p, w) in [
        (&[0][..], &[1][..]),
        (&[0, 1], &[1, 0]),
        (&[0, 1, 2], &[1, 1]),
    ] {
        assert!(matches!(
            client.configure_connection_lanes(c, p, w),
            Err(Error::InvalidParam(_))
        ));
    }
}
