//! ICE signals from a peer: a rendezvous transport message split into lines, each decoded as
//! an ICE signal, and candidates parsed as webrtc-ice would. Nothing may panic; what decodes
//! re-encodes to the same signal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline_ice::signal::Signal;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let Ok(s) = Signal::decode(line) else {
            continue;
        };
        assert_eq!(Signal::decode(&s.encode()).as_ref(), Ok(&s));
        if let Signal::Candidate { candidate, .. } = &s {
            let _ = unmarshal_candidate(candidate);
        }
    }
});
