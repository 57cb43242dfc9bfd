//! Relay frames (binary websocket frames the signaling server and its clients read): nothing
//! may panic, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline_signaling::relay;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = relay::decode(data) {
        assert_eq!(
            relay::encode(f.peer, f.session, f.datagram).as_deref(),
            Some(data)
        );
    }
});
