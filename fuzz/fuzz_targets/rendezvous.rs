//! Rendezvous signals: arbitrary bytes decoded as signals and fed to a session, as a peer
//! receiving them from a signaling channel would. Nothing may panic; what decodes re-encodes
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline::identity::Identity;
use punchline::proto::rendezvous::{Message, Session};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let local = Identity::generic_string("local").expect("valid");
    let mut session = Session::new(1, local.clone(), local);
    let mut now = Instant::now();
    // Input: [len u8][signal]...
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (signal, next) = tail.split_at(len);
        rest = next;
        if let Ok(m) = Message::decode(signal) {
            assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
            let _ = session.handle(m);
        }
        now += Duration::from_millis(50);
        while session.poll_transmit(now).is_some() {}
    }
});
