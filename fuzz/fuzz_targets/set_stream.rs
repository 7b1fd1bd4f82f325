//! Set streams: the frames a partner sends on a stream of kind `S` (a
//! file set's small files, back to back).
//!
//! Feeds the input to `set_body_len` and `decode_set_body`, as a framed
//! stream (header, then body) and as a bare body. Every frame that decodes
//! must re-encode with `encode_set_frame` to a frame whose header announces
//! its body and whose body decodes back to an equal frame; a decoded file's
//! path goes through the path rule, which must answer without panicking.
//! Anything else must be an `Err`.
#![no_main]

use ferry::protocol::codec::{self, HEADER_LEN};
use ferry::protocol::set_stream::SetFrame;
use libfuzzer_sys::fuzz_target;

fn check(body: &[u8]) {
    let Ok(frame) = codec::decode_set_body(body) else { return };
    if let SetFrame::File(f) = &frame {
        let _ = ferry::protocol::names::check_entry_path(&f.name);
    }
    let bytes = codec::encode_set_frame(&frame).unwrap_or_else(|e| panic!("decoded {frame:?} does not encode: {e}"));
    let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("header");
    let len = codec::set_body_len(header).expect("an encoded set-stream header is within the limit");
    assert_eq!(len, bytes.len() - HEADER_LEN, "header announces the body length");
    let back = codec::decode_set_body(&bytes[HEADER_LEN..]).expect("re-encoded body decodes");
    assert_eq!(back, frame, "re-encoded body decodes to another frame");
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..HEADER_LEN) {
        let header: [u8; HEADER_LEN] = h.try_into().expect("4 bytes");
        if let Ok(len) = codec::set_body_len(header) {
            if let Some(body) = data.get(HEADER_LEN..HEADER_LEN + len) {
                check(body);
            }
        }
    }
    check(data);
});
