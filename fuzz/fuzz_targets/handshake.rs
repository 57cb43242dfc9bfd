//! Handshake decoding: client and server hellos, retries, rejections, "no connection".
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline::proto::internals::{ClientHello, Control, ServerHello};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ClientHello::decode(data) {
        let _ = h.verify();
    }
    if let Ok(h) = ServerHello::decode(data) {
        let _ = h.verify(data);
    }
    if let Ok(c) = Control::decode(data) {
        assert_eq!(Control::decode(&c.encode()).ok(), Some(c));
    }
});
