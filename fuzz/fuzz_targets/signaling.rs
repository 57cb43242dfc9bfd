//! Signaling-protocol JSON: arbitrary text decoded as client and server messages, as the
//! server and the client read them. Nothing may panic; what decodes re-encodes to an equal
//! message; base64 fields decode within their bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchline_signaling::protocol::{self, ClientMsg, ServerMsg, MAX_SIGNAL};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = serde_json::from_str::<ClientMsg>(text) {
        let again: ClientMsg = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        match &m {
            ClientMsg::Signal { data, .. } => {
                if let Some(b) = protocol::unbase64(data, MAX_SIGNAL) {
                    assert!(b.len() <= MAX_SIGNAL);
                }
            }
            ClientMsg::Login {
                public_key,
                signature,
                ..
            } => {
                let _ = protocol::public_key(public_key);
                let _ = protocol::signature(signature);
            }
            _ => {}
        }
    }
    if let Ok(m) = serde_json::from_str::<ServerMsg>(text) {
        let again: ServerMsg = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }
});
