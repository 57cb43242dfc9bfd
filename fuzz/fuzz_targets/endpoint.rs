//! Whole endpoints fed arbitrary datagrams, with time only moving forward: a listening
//! server with one live connection and a client, each must survive anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline::identity::KeyPair;
use punchline::proto::{ConnectionConfig, Credentials, EndpointConfig};
use punchline::sim::Sim;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let key = |s| EndpointConfig {
        credentials: Credentials::with_key(KeyPair::from_seed([s; 32])),
        ..EndpointConfig::default()
    };
    let mut sim = Sim::pair(1, key(1), key(2));
    sim.connect(0, 1, ConnectionConfig::default());
    sim.run_for(Duration::from_millis(50));
    let (client, server) = (sim.nodes[0].addr, sim.nodes[1].addr);
    // Input: [target byte][advance ms byte][len u8][datagram]...
    let mut rest = data;
    while rest.len() >= 3 {
        let (to, from) = if rest[0] & 1 == 0 {
            (server, client)
        } else {
            (client, server)
        };
        let advance = Duration::from_millis(u64::from(rest[1]));
        let len = (rest[2] as usize).min(rest.len() - 3);
        let dgram = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        sim.inject(from, to, dgram);
        sim.run_for(advance.max(Duration::from_millis(1)));
    }
});
