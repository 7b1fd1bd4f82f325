//! Control exchanges: the `Ask` and `Answer` frames nodes send outside any
//! request's channel (heartbeats, handovers, queries, reverse connect).
//!
//! Feeds the input to `control_body_len`, and to `decode_control::<Ask>` and
//! `decode_control::<Answer>` both as a framed stream (header, then body) and
//! as a bare body. Every value that decodes must re-encode with
//! `encode_control` to a frame whose header announces its body and whose body
//! decodes back to an equal value. Anything else must be an `Err`.
#![no_main]

use std::fmt::Debug;

use ferry::protocol::codec::{self, HEADER_LEN};
use ferry::protocol::control::{Answer, Ask};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(body: &[u8]) {
    let Ok(v) = codec::decode_control::<T>(body) else { return };
    let frame = codec::encode_control(&v).unwrap_or_else(|e| panic!("decoded {v:?} does not encode: {e}"));
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
    let len = codec::control_body_len(header).expect("an encoded control header is within the limit");
    assert_eq!(len, frame.len() - HEADER_LEN, "header announces the body length");
    let back = codec::decode_control::<T>(&frame[HEADER_LEN..]).expect("re-encoded control body decodes");
    assert_eq!(back, v, "re-encoded control body decodes to another value");
}

fuzz_target!(|data: &[u8]| {
    // Framed: what the control reader does with the first frame of a stream.
    if let Some(h) = data.get(..HEADER_LEN) {
        let header: [u8; HEADER_LEN] = h.try_into().expect("4 bytes");
        if let Ok(len) = codec::control_body_len(header) {
            if let Some(body) = data.get(HEADER_LEN..HEADER_LEN + len) {
                if let Ok(ask) = codec::decode_control::<Ask>(body) {
                    let _ = ask.kind();
                }
                check::<Ask>(body);
                check::<Answer>(body);
            }
        }
    }
    // Bare body.
    check::<Ask>(data);
    check::<Answer>(data);
});
