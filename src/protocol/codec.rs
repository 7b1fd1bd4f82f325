//! The wire encoding: length-prefixed bincode frames with a hard size limit.
//!
//! A frame is a 4-byte big-endian body length followed by the body, one
//! [`Message`] encoded with bincode 2 (serde mode, standard configuration).
//! This module is the only place that knows the encoding.
//!
//! Invariants: no frame body longer than [`MAX_FRAME_BODY`] is produced or
//! accepted, and a body must decode to exactly one message with no bytes left
//! over. A violation is a [`CodecError`]; the caller ends the channel with it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::control::MAX_CONTROL_BODY;
use super::message::{Data, Digest, Message, MAX_BLOCK_SIZE};

/// Length of the frame header (the body length, u32 big-endian).
pub const HEADER_LEN: usize = 4;

/// The largest frame body: one maximum-size block plus room for its header fields.
pub const MAX_FRAME_BODY: usize = MAX_BLOCK_SIZE as usize + 4096;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BODY>()
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame body does not decode: {0}")]
    Decode(String),
    #[error("frame body has {0} trailing bytes after the message")]
    Trailing(usize),
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, out, config()) {
        out.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME_BODY {
        out.truncate(start);
        return Err(CodecError::TooLarge { len, max: MAX_FRAME_BODY });
    }
    let len = u32::try_from(len).expect("len <= MAX_FRAME_BODY, which fits in u32");
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// One frame holding `msg`.
pub fn encode(msg: &Message) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// `Data`'s position among [`Message`]'s variants: the data path encodes
/// and decodes Data frames without going through an owned `Message` (to
/// save a copy of every block), and must produce and accept exactly the
/// bytes the generic path does. Tests compare the two.
const DATA_VARIANT: u32 = 5;

/// The fields of [`Data`], borrowing the payload; same serde shape.
#[derive(Serialize, Deserialize)]
struct DataRef<'a> {
    offset: u64,
    raw_len: u32,
    #[serde(with = "serde_bytes", borrow)]
    payload: &'a [u8],
    compressed: bool,
    hash: Digest,
}

struct DataFrame<'a>(DataRef<'a>);

impl Serialize for DataFrame<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Message", DATA_VARIANT, "Data", &self.0)
    }
}

/// Room a `Data` frame takes besides its payload: the header and the
/// message's other fields, at most 4 + 5 + 9 + 5 + 9 + 1 + 32 = 65 bytes
/// (bincode's variable-length integers), rounded up.
pub const DATA_FRAME_ROOM: usize = 80;

/// One frame holding a `Data` message whose payload is borrowed: the same
/// bytes as `encode(&Message::Data(..))`, with one copy of the payload
/// instead of two.
pub fn encode_data(
    offset: u64,
    raw_len: u32,
    compressed: bool,
    hash: Digest,
    payload: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let frame = DataFrame(DataRef { offset, raw_len, payload, compressed, hash });
    let mut out = Vec::with_capacity(payload.len() + DATA_FRAME_ROOM);
    out.extend_from_slice(&[0; HEADER_LEN]);
    bincode::serde::encode_into_std_write(&frame, &mut out, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_BODY {
        return Err(CodecError::TooLarge { len, max: MAX_FRAME_BODY });
    }
    let len = u32::try_from(len).expect("len <= MAX_FRAME_BODY, which fits in u32");
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// A `Data` frame of an uncompressed block that `fill` writes straight
/// into its place in the frame (and returns the block's digest): the same
/// bytes as `encode_data(offset, len, false, digest, block)`, without
/// first reading the block into a buffer of its own and copying it.
/// `fill`'s error is returned as is.
pub fn encode_data_filled<E>(
    offset: u64,
    len: u32,
    fill: impl FnOnce(&mut [u8]) -> Result<Digest, E>,
) -> Result<Result<Vec<u8>, E>, CodecError> {
    let n = len as usize;
    let mut out = Vec::with_capacity(n + DATA_FRAME_ROOM);
    out.extend_from_slice(&[0; HEADER_LEN]);
    // The variant, then `DataRef`'s fields up to the payload's length
    // prefix (serde bytes: its length, then the bytes).
    bincode::serde::encode_into_std_write((DATA_VARIANT, offset, len, n as u64), &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let at = out.len();
    out.resize(at + n, 0);
    let hash = match fill(&mut out[at..]) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    bincode::serde::encode_into_std_write((false, hash), &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let body = out.len() - HEADER_LEN;
    if body > MAX_FRAME_BODY {
        return Err(CodecError::TooLarge { len: body, max: MAX_FRAME_BODY });
    }
    let body = u32::try_from(body).expect("body <= MAX_FRAME_BODY, which fits in u32");
    out[..HEADER_LEN].copy_from_slice(&body.to_be_bytes());
    Ok(Ok(out))
}

/// Where a `Data` frame's payload starts in its body, read from the body's
/// first bytes (its variant, offset, raw length and payload length):
/// `None` when they are not a `Data` frame's, or too few to tell. A
/// receiver uses it to place the body so that the payload lands where it
/// can be written from without a copy.
pub fn data_payload_offset(first: &[u8]) -> Option<usize> {
    let (variant, head) = bincode::serde::decode_from_slice::<u32, _>(first, config()).ok()?;
    if variant != DATA_VARIANT {
        return None;
    }
    // offset, raw_len, then the payload's length prefix (serde bytes).
    let (_, fields) = bincode::serde::decode_from_slice::<(u64, u32, u64), _>(first.get(head..)?, config()).ok()?;
    Some(head + fields)
}

/// Decodes a frame body held in `Bytes`; a `Data` payload is a slice of
/// `body` rather than a copy.
pub fn decode_body_shared(body: &Bytes) -> Result<Message, CodecError> {
    let (variant, head) =
        bincode::serde::decode_from_slice::<u32, _>(body, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if variant != DATA_VARIANT {
        return decode_body(body);
    }
    let rest = &body[head..];
    let (d, used) = bincode::serde::borrow_decode_from_slice::<DataRef<'_>, _>(rest, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if head + used != body.len() {
        return Err(CodecError::Trailing(body.len() - head - used));
    }
    Ok(Message::Data(Data {
        offset: d.offset,
        raw_len: d.raw_len,
        payload: body.slice_ref(d.payload),
        compressed: d.compressed,
        hash: d.hash,
    }))
}

/// Reads a frame header and checks the announced body length against the limit.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_BODY {
        return Err(CodecError::TooLarge { len, max: MAX_FRAME_BODY });
    }
    Ok(len)
}

/// Decodes a frame body (without its header).
pub fn decode_body(body: &[u8]) -> Result<Message, CodecError> {
    if body.len() > MAX_FRAME_BODY {
        return Err(CodecError::TooLarge { len: body.len(), max: MAX_FRAME_BODY });
    }
    let (msg, used) = bincode::serde::decode_from_slice::<Message, _>(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msg)
}

fn control_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_BODY>()
}

/// One control frame (an [`Ask`](super::control::Ask) or an
/// [`Answer`](super::control::Answer)): same framing, a smaller limit.
pub fn encode_control<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, MAX_CONTROL_BODY)
}

/// One frame (header and body) holding `value`, its body at most `max`
/// bytes (a `max` that fits in the header's u32).
fn encode_limited<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0; HEADER_LEN];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    let len = u32::try_from(len).map_err(|_| CodecError::TooLarge { len, max })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Checks a control frame's announced body length against its limit.
pub fn control_body_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_CONTROL_BODY {
        return Err(CodecError::TooLarge { len, max: MAX_CONTROL_BODY });
    }
    Ok(len)
}

/// Decodes a control frame body (without its header), with no bytes left over.
pub fn decode_control<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    if body.len() > MAX_CONTROL_BODY {
        return Err(CodecError::TooLarge { len: body.len(), max: MAX_CONTROL_BODY });
    }
    let (v, used) = bincode::serde::decode_from_slice::<T, _>(body, control_config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(v)
}

/// One set-stream frame: header and body, at most
/// [`MAX_SET_FRAME_BODY`](super::set_stream::MAX_SET_FRAME_BODY).
pub fn encode_set_frame(frame: &super::set_stream::SetFrame) -> Result<Vec<u8>, CodecError> {
    encode_limited(frame, super::set_stream::MAX_SET_FRAME_BODY)
}

/// The body length a set-stream frame header announces, refused above the limit.
pub fn set_body_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let max = super::set_stream::MAX_SET_FRAME_BODY;
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a set-stream frame body (without its header), with no bytes left over.
pub fn decode_set_body(body: &[u8]) -> Result<super::set_stream::SetFrame, CodecError> {
    let max = super::set_stream::MAX_SET_FRAME_BODY;
    if body.len() > max {
        return Err(CodecError::TooLarge { len: body.len(), max });
    }
    let config = bincode::config::standard().with_limit::<{ super::set_stream::MAX_SET_FRAME_BODY }>();
    let (v, used) = bincode::serde::decode_from_slice(body, config).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(v)
}

/// Decodes the first complete frame in `buf`, if there is one.
///
/// Returns the message and the number of bytes it used, `Ok(None)` when more
/// bytes are needed, and an error as soon as the header announces too much.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, CodecError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let header: [u8; HEADER_LEN] = header.try_into().expect("slice of HEADER_LEN bytes");
    let len = body_len(header)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_frames_payload_offset_is_read_from_its_first_bytes() {
        use super::*;
        use crate::protocol::message::Cancel;
        for (offset, len) in [(0u64, 1usize), (1 << 20, 4096), (u64::from(u32::MAX) * 7, 300_000), (127, 128)] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let raw_len = u32::try_from(len).expect("fits");
            let frame = encode_data(offset, raw_len, false, Digest([9; 32]), &payload).expect("encodes");
            let body = &frame[HEADER_LEN..];
            let p = data_payload_offset(&body[..32.min(body.len())]).expect("a data frame");
            assert_eq!(&body[p..p + len], &payload[..], "offset {offset}, {len} bytes");
            assert_eq!(data_payload_offset(&body[..2]), None, "too few bytes to tell");
        }
        let other = encode(&Message::Cancel(Cancel { reason: "x".into() })).expect("encodes");
        assert_eq!(data_payload_offset(&other[HEADER_LEN..]), None, "not a data frame");
    }

    #[test]
    fn a_block_filled_in_place_makes_the_same_frame_as_one_encoded_from_a_buffer() {
        use super::*;
        for (offset, len) in [(0u64, 0usize), (0, 1), (1 << 20, 4096), (u64::MAX >> 3, 300_001), (127, 128)] {
            let block: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
            let raw_len = u32::try_from(len).expect("fits");
            let want = encode_data(offset, raw_len, false, Digest([len as u8; 32]), &block).expect("encodes");
            let got = encode_data_filled::<()>(offset, raw_len, |room| {
                room.copy_from_slice(&block);
                Ok(Digest([len as u8; 32]))
            })
            .expect("encodes")
            .expect("filled");
            assert_eq!(got, want, "offset {offset}, {len} bytes");
        }
        let failed = encode_data_filled(0, 10, |_| Err("cannot read")).expect("encodes");
        assert_eq!(failed, Err("cannot read"));
    }

    use super::*;
    use crate::protocol::message::*;
    use proptest::prelude::*;

    fn arb_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::UnknownRule),
            Just(ErrorCode::BadFileName),
            Just(ErrorCode::NoSpace),
            Just(ErrorCode::Protocol),
            Just(ErrorCode::Cancelled),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let id = any::<u128>().prop_map(|n| RequestId::parse(&format!("{n:032x}")).expect("hex id"));
        prop_oneof![
            (any::<u16>(), id.clone())
                .prop_map(|(version, request_id)| Message::Startup(Startup { version, request_id })),
            (".{0,40}", any::<u32>()).prop_map(|(host_id, max_block_size)| Message::Authent(Authent {
                host_id,
                capabilities: Capabilities { max_block_size, compression: vec![Compression::Lz4] },
            })),
            (
                id,
                ".{0,20}",
                ".{0,60}",
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                proptest::option::of(".{0,10}"),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(
                    |(request_id, rule, file_name, size, block_size, restart_offset, external_job_id, push, hold)| {
                        Message::Request(Request {
                            request_id,
                            rule,
                            direction: if push { Direction::Push } else { Direction::Pull },
                            file_name,
                            size,
                            block_size,
                            restart_offset,
                            prefix_hash: None,
                            delivered: None,
                            options: TransferOptions { hold, ..TransferOptions::default() },
                            external_job_id,
                            transfer_info: String::new(),
                        })
                    }
                ),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(size, block_size, restart_offset)| Message::Valid(
                Valid {
                    size,
                    block_size,
                    restart_offset,
                    prefix_hash: Some(Digest([3; 32])),
                    compression: Compression::None
                }
            )),
            (arb_code(), ".{0,80}").prop_map(|(code, message)| Message::Refused(Refused { code, message })),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..5000), any::<bool>(), any::<[u8; 32]>()).prop_map(
                |(offset, payload, compressed, h)| Message::Data(Data {
                    offset,
                    raw_len: payload.len() as u32,
                    payload: payload.into(),
                    compressed,
                    hash: Digest(h)
                })
            ),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(bytes, h)| Message::EndTransfer(EndTransfer { bytes, hash: Digest(h) })),
            Just(Message::EndRequest(EndRequest {})),
            (arb_code(), ".{0,80}").prop_map(|(code, message)| Message::Error(ErrorReport { code, message })),
            ".{0,80}".prop_map(|reason| Message::Cancel(Cancel { reason })),
            any::<u64>().prop_map(|offset| Message::Resume(Resume { offset })),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(bytes, h)| Message::Complete(EndTransfer { bytes, hash: Digest(h) })),
        ]
    }

    proptest! {
        #[test]
        fn the_data_fast_paths_match_the_generic_codec(
            offset in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..3000),
            compressed in any::<bool>(),
            h in any::<[u8; 32]>(),
        ) {
            let raw_len = payload.len() as u32;
            let msg = Message::Data(Data { offset, raw_len, payload: payload.clone().into(), compressed, hash: Digest(h) });
            let generic = encode(&msg).expect("encodes");
            let fast = encode_data(offset, raw_len, compressed, Digest(h), &payload).expect("encodes");
            prop_assert_eq!(&fast, &generic);
            let body = Bytes::copy_from_slice(&generic[HEADER_LEN..]);
            prop_assert_eq!(decode_body_shared(&body).expect("decodes"), msg);
        }

        #[test]
        fn the_shared_decoder_agrees_on_every_message(msg in arb_message()) {
            let frame = encode(&msg).expect("encodes");
            let body = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
            prop_assert_eq!(decode_body_shared(&body).expect("decodes"), msg);
        }

        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            let frame = encode(&msg).expect("encodes");
            let (back, used) = decode_frame(&frame).expect("decodes").expect("complete");
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn a_truncated_frame_asks_for_more(msg in arb_message(), cut in 0usize..1000) {
            let frame = encode(&msg).expect("encodes");
            let cut = cut.min(frame.len() - 1);
            prop_assert!(decode_frame(&frame[..cut]).expect("no error on a prefix").is_none());
        }

        #[test]
        fn control_frames_round_trip_and_refuse_trailing_bytes(
            target in "[a-z]{1,20}",
            extra in proptest::collection::vec(any::<u8>(), 1..8),
            set in any::<u128>(),
            files in any::<u32>(),
        ) {
            use crate::protocol::control::{Answer, Ask};
            let set = RequestId::parse(&format!("{set:032x}")).expect("hex id");
            let asks = [
                Ask::Ping,
                Ask::RelayDialBack { target: target.clone() },
                Ask::DialMe { node: target.clone() },
                Ask::Release { set, files, pattern: target.clone() },
                Ask::List { rule: target.clone(), patterns: vec![target.clone(), "a/**".into()], start: files },
            ];
            for ask in asks {
                let frame = encode_control(&ask).expect("encodes");
                let len = control_body_len(frame[..HEADER_LEN].try_into().expect("header")).expect("within limit");
                prop_assert_eq!(len, frame.len() - HEADER_LEN);
                prop_assert_eq!(decode_control::<Ask>(&frame[HEADER_LEN..]).expect("decodes"), ask);
                let mut longer = frame[HEADER_LEN..].to_vec();
                longer.extend_from_slice(&extra);
                prop_assert!(matches!(decode_control::<Ask>(&longer), Err(CodecError::Trailing(_))));
            }
            let answers = [
                Answer::Refused { code: crate::protocol::ErrorCode::UnknownPartner, message: target },
                Answer::Released { delivered: files },
            ];
            for answer in answers {
                let frame = encode_control(&answer).expect("encodes");
                prop_assert_eq!(decode_control::<Answer>(&frame[HEADER_LEN..]).expect("decodes"), answer);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_frame(&bytes);
            let _ = decode_body(&bytes);
        }
    }

    #[test]
    fn header_over_the_limit_is_refused_before_reading_the_body() {
        let header = ((MAX_FRAME_BODY + 1) as u32).to_be_bytes();
        assert!(matches!(body_len(header), Err(CodecError::TooLarge { .. })));
        assert!(matches!(decode_frame(&header), Err(CodecError::TooLarge { .. })));
        let header = ((MAX_CONTROL_BODY + 1) as u32).to_be_bytes();
        assert!(matches!(control_body_len(header), Err(CodecError::TooLarge { .. })));
        assert_eq!(control_body_len((MAX_CONTROL_BODY as u32).to_be_bytes()).expect("at the limit"), MAX_CONTROL_BODY);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut frame = encode(&Message::EndRequest(EndRequest {})).expect("encodes");
        frame.push(0);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode_frame(&frame), Err(CodecError::Trailing(1))));
    }

    #[test]
    fn unknown_variant_is_a_decode_error() {
        let frame = [0, 0, 0, 1, 200];
        assert!(matches!(decode_frame(&frame), Err(CodecError::Decode(_))));
    }

    #[test]
    fn a_maximum_block_fits_in_a_frame() {
        let msg = Message::Data(Data {
            offset: u64::MAX,
            raw_len: MAX_BLOCK_SIZE,
            payload: vec![7; MAX_BLOCK_SIZE as usize].into(),
            compressed: false,
            hash: Digest([1; 32]),
        });
        let frame = encode(&msg).expect("a full block encodes");
        assert!(frame.len() - HEADER_LEN <= MAX_FRAME_BODY);
    }
}
