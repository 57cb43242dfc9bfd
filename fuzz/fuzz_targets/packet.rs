//! Data-packet decoding: the short header and every frame, as a receiver would after
//! decryption.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use punchline::proto::internals::decode_frames;
use punchline::proto::internals::ShortHeader;

fuzz_target!(|data: &[u8]| {
    let _ = ShortHeader::decode(data);
    let payload = Bytes::copy_from_slice(data);
    if let Ok(frames) = decode_frames(&payload, 256) {
        // Whatever decodes must re-encode and decode to the same frames.
        let mut out = Vec::new();
        for f in &frames {
            f.encode(&mut out);
        }
        let again = decode_frames(&Bytes::from(out), 256).expect("re-encoded frames decode");
        assert_eq!(frames, again);
    }
});
