//! Channel frames: what a peer sends on a request's private channel.
//!
//! Feeds the input to every frame decoder of `ferry::protocol::codec`
//! (`body_len`, `decode_frame`, `decode_body`, `decode_body_shared`) and
//! checks, for every body that decodes:
//! - the generic and the zero-copy (`Bytes`) decoders agree;
//! - re-encoding the message with `encode` gives a frame that decodes back to
//!   an equal message, through both decoders, using the whole frame;
//! - a `Data` message encodes with the fast paths `encode_data` and
//!   `encode_data_filled` to exactly the bytes `encode` produces, and
//!   `data_payload_offset` finds its payload from the body's first bytes;
//! - a `Request`'s file name can be checked without panicking.
//! Anything else must be an `Err`, never a panic.
#![no_main]

use bytes::Bytes;
use ferry::protocol::codec::{self, HEADER_LEN, MAX_FRAME_BODY};
use ferry::protocol::Message;
use libfuzzer_sys::fuzz_target;

fn round_trip(msg: &Message) {
    let frame = codec::encode(msg).unwrap_or_else(|e| panic!("a decoded {} does not encode: {e}", msg.kind()));
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
    let len = codec::body_len(header).expect("an encoded frame's header is within the limit");
    assert_eq!(len, frame.len() - HEADER_LEN, "header announces the body length");
    let (back, used) = codec::decode_frame(&frame).expect("re-encoded frame decodes").expect("complete frame");
    assert_eq!(used, frame.len(), "decode_frame uses the whole re-encoded frame");
    assert_eq!(&back, msg, "re-encoded frame decodes to another message");
    let shared = codec::decode_body_shared(&Bytes::copy_from_slice(&frame[HEADER_LEN..]))
        .expect("re-encoded body decodes (shared)");
    assert_eq!(&shared, msg, "re-encoded body decodes (shared) to another message");
    if let Message::Data(d) = msg {
        let fast = codec::encode_data(d.offset, d.raw_len, d.compressed, d.hash, &d.payload).expect("encode_data");
        assert_eq!(fast, frame, "encode_data and encode disagree on a Data frame");
        // The payload's place, told by the body's first bytes.
        let body = &frame[HEADER_LEN..];
        let at = codec::data_payload_offset(body).expect("a Data body tells where its payload starts");
        assert_eq!(&body[at..at + d.payload.len()], &d.payload[..], "data_payload_offset points elsewhere");
        if !d.compressed && d.payload.len() == d.raw_len as usize {
            let filled = codec::encode_data_filled::<()>(d.offset, d.raw_len, |room| {
                room.copy_from_slice(&d.payload);
                Ok(d.hash)
            })
            .expect("encode_data_filled")
            .expect("filled");
            assert_eq!(filled, frame, "encode_data_filled and encode disagree on a Data frame");
        }
    }
    if let Message::Request(r) = msg {
        let _ = ferry::protocol::names::check_file_name(&r.file_name);
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as a stream: header, then body (what the channel reader sees).
    if let Some(h) = data.get(..HEADER_LEN) {
        let header: [u8; HEADER_LEN] = h.try_into().expect("4 bytes");
        let announced = codec::body_len(header);
        match codec::decode_frame(data) {
            Ok(Some((msg, used))) => {
                let len = announced.expect("decode_frame accepted a header body_len refuses");
                assert_eq!(used, HEADER_LEN + len, "decode_frame used another length than announced");
                round_trip(&msg);
            }
            Ok(None) => {
                if let Ok(len) = announced {
                    assert!(data.len() < HEADER_LEN + len, "decode_frame asked for more with a complete frame");
                }
            }
            Err(_) => {}
        }
    } else {
        assert!(matches!(codec::decode_frame(data), Ok(None)), "a partial header must ask for more");
    }

    // The input as a bare body's first bytes: where a Data payload would
    // start is never past what was read.
    if let Some(at) = codec::data_payload_offset(data) {
        assert!(at <= data.len(), "data_payload_offset past its input");
    }

    // The input as a bare body, through both body decoders.
    let generic = codec::decode_body(data);
    let shared = codec::decode_body_shared(&Bytes::copy_from_slice(data));
    match (&generic, &shared) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode_body and decode_body_shared disagree"),
        (Err(_), Err(_)) => {}
        (a, b) => {
            if data.len() <= MAX_FRAME_BODY {
                panic!("decode_body and decode_body_shared disagree: {a:?} vs {b:?}")
            }
        }
    }
    if let Ok(msg) = generic {
        round_trip(&msg);
    }
});
