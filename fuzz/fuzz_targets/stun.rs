//! The embedded STUN responder: any datagram, received on any of the four behaviour-discovery
//! addresses (or the single one). Nothing may panic; an answer goes only from one of the
//! responder's addresses, to the sender's IP, and is a STUN message of bounded size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline_signaling::stun::respond;
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let addrs: Vec<SocketAddr> = [
        "10.0.0.1:3478",
        "10.0.0.1:3479",
        "10.0.0.2:3478",
        "10.0.0.2:3479",
    ]
    .iter()
    .map(|a| a.parse().expect("valid"))
    .collect();
    let from: SocketAddr = "192.0.2.7:40000".parse().expect("valid");
    let Some((&at, datagram)) = data.split_first() else {
        return;
    };
    for set in [&addrs[..], &addrs[..1]] {
        if let Some(r) = respond(datagram, from, usize::from(at) % set.len(), set) {
            assert!(r.via < set.len());
            assert_eq!(r.to.ip(), from.ip());
            assert!(r.bytes.len() >= 20 && r.bytes.len() <= 2048);
        }
    }
});
