//! Frames into the receive path: arbitrary packets' frames decoded and their segments fed to
//! the reassembly under a receive budget, as a connection does, with the application
//! reading now and then. Nothing may panic, and what is held stays within the budget.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use punchline::proto::internals::{decode_frames, Frame};
use punchline::proto::internals::Reassembly;
use std::time::{Duration, Instant};

const BUDGET: usize = 256 * 1024;
const MAX_MESSAGE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembly::new();
    let mut now = Instant::now();
    // Input: [len u8][read count u8][payload]...
    let mut rest = data;
    while rest.len() >= 2 {
        let len = (rest[0] as usize).min(rest.len() - 2);
        let reads = rest[1];
        let payload = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        now += Duration::from_millis(1);
        let Ok(frames) = decode_frames(&payload, 64) else {
            continue;
        };
        for f in &frames {
            if let Frame::Segment(s) = f {
                if !r.in_window(s) || r.held_bytes() + r.charge(s) > BUDGET {
                    continue;
                }
                let _ = r.insert(now, s, MAX_MESSAGE);
                assert!(r.held_bytes() <= BUDGET, "held {} bytes", r.held_bytes());
            }
        }
        for _ in 0..reads {
            let Some(m) = r.pop() else { break };
            assert!(m.payload.len() <= MAX_MESSAGE);
        }
    }
});
