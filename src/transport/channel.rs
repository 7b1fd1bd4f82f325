//! A request's private channel: one bidirectional QUIC stream carrying frames.
//!
//! [`FrameReader`] and [`FrameWriter`] wrap the two halves of the stream with
//! the codec from [`crate::protocol::codec`].
//!
//! What a peer can make a reader hold is bounded ([`ReadLimits`]): a frame
//! over the current step's size limit is refused from its header alone,
//! before any of its body is read; a frame's body is read into a buffer that
//! grows as its bytes arrive (never reserved from what the header announces)
//! and must arrive whole within a deadline of its first byte; while the peer
//! owes this side a frame (a handshake step, the next block), that frame
//! must start within a deadline too.
//!
//! [`FrameReader::next`] is cancel-safe: what it has read of a frame is kept
//! in the reader, so a call dropped by a `select!` loses nothing and the
//! next call goes on where it stopped.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::protocol::codec::{self, CodecError, HEADER_LEN};
use crate::protocol::control::StreamKind;
use crate::protocol::Message;

/// Why a channel stopped working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer sent a frame that is too large or does not decode.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] CodecError),
    /// The stream or its connection broke.
    #[error("channel lost: {0}")]
    Lost(String),
    /// The peer finished its side in the middle of a frame.
    #[error("peer closed the channel in the middle of a frame")]
    Truncated,
    /// The peer sent more than this step allows; names the limit.
    #[error("{0}")]
    Limit(String),
    /// The peer let a deadline pass (sent or read nothing in time); names
    /// the setting.
    #[error("{0}")]
    Stalled(String),
}

/// Describes a read error, naming the peer's close reason where there is one.
fn describe_read(e: &quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(c) => describe_connection(c),
        quinn::ReadError::Reset(code) => format!("peer reset the channel (code {code})"),
        other => other.to_string(),
    }
}

/// Describes a lost connection; an application close carries the peer's reason.
pub fn describe_connection(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!("peer closed the connection: {}", String::from_utf8_lossy(&c.reason))
        }
        quinn::ConnectionError::ConnectionClosed(c) => {
            format!("connection closed: {} {}", c.error_code, String::from_utf8_lossy(&c.reason))
        }
        other => other.to_string(),
    }
}

/// What a reader accepts from its peer at the current step.
#[derive(Clone, Debug)]
pub struct ReadLimits {
    /// The largest frame body accepted now, and the setting that sets it
    /// (named in the refusal).
    pub max_body: usize,
    pub max_body_setting: &'static str,
    /// Once a frame's first byte arrived, how long until it must be whole.
    pub frame_timeout: Duration,
    /// While the peer owes this side a frame: how long it may take to start.
    pub next_frame_due: Option<Due>,
}

/// A frame the peer owes, and by when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub within: Duration,
    /// What is due, for the message ("a handshake step", "the next block").
    pub what: &'static str,
    /// The setting that sets `within`.
    pub setting: &'static str,
}

impl ReadLimits {
    /// No limit but the codec's own (tests, and peers of a test).
    pub fn codec_only() -> Self {
        ReadLimits {
            max_body: codec::MAX_FRAME_BODY,
            max_body_setting: "the codec's frame limit",
            frame_timeout: Duration::from_secs(3600),
            next_frame_due: None,
        }
    }
}

/// A frame body's buffer starts this large and grows as bytes arrive...
const FIRST_BUFFER: usize = 64 * 1024;

/// ...unless the body is larger (a block's frame, which only the data
/// phase allows, within what the transfer reserved): then it gets room for
/// all of it when its first bytes arrive, and a `Data` frame's payload is
/// placed on this boundary, so the receiver can write it to disk with
/// `O_DIRECT` straight from the frame instead of copying it first.
pub const PAYLOAD_ALIGN: usize = 4096;

/// Room for a body of `len` bytes whose first bytes are `first`: the
/// payload of a `Data` frame starts on a [`PAYLOAD_ALIGN`] boundary when
/// `first` tells where it starts.
fn block_body_buffer(len: usize, first: &[u8]) -> BytesMut {
    match codec::data_payload_offset(first) {
        Some(payload_at) => {
            let mut body = BytesMut::with_capacity(len + PAYLOAD_ALIGN);
            let addr = body.as_ptr() as usize + payload_at;
            let skip = (PAYLOAD_ALIGN - addr % PAYLOAD_ALIGN) % PAYLOAD_ALIGN;
            body.resize(skip, 0);
            bytes::Buf::advance(&mut body, skip);
            body
        }
        None => BytesMut::with_capacity(len),
    }
}

/// The receiving half of a private channel.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    limits: ReadLimits,
    /// The frame being read: its header so far...
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// ...then its announced length and its body so far.
    body: Option<(usize, BytesMut)>,
    /// When the frame being read must be whole.
    frame_deadline: Option<Instant>,
    /// Since when this reader waits for a frame to start.
    idle_since: Option<Instant>,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self::with_limits(recv, ReadLimits::codec_only())
    }

    /// A reader that holds its peer to `limits`.
    pub fn with_limits(recv: quinn::RecvStream, limits: ReadLimits) -> Self {
        FrameReader {
            recv,
            limits,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: None,
            frame_deadline: None,
            idle_since: None,
        }
    }

    /// Changes what the next frames may be: the size limit of the current
    /// step, and whether (and by when) the peer owes this side a frame.
    pub fn set_step(&mut self, max_body: usize, setting: &'static str, next_frame_due: Option<Due>) {
        self.limits.max_body = max_body.min(codec::MAX_FRAME_BODY);
        self.limits.max_body_setting = setting;
        self.limits.next_frame_due = next_frame_due;
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly
    /// between frames. Cancel-safe (see the module documentation).
    pub async fn next(&mut self) -> Result<Option<Message>, ChannelError> {
        if self.body.is_none() && !self.read_header().await? {
            return Ok(None);
        }
        let deadline = self.frame_deadline;
        let timeout = self.limits.frame_timeout;
        let (len, body) = self.body.as_mut().expect("a header was read");
        while body.len() < *len {
            let chunk = by(deadline, self.recv.read_chunk(*len - body.len(), true), || late(timeout)).await?;
            match chunk {
                Ok(Some(chunk)) => {
                    if body.is_empty() && *len > FIRST_BUFFER {
                        *body = block_body_buffer(*len, &chunk.bytes);
                    } else if body.capacity() - body.len() < chunk.bytes.len() {
                        // Grow fourfold (not to what the header announced), so a
                        // large block costs a few reallocations.
                        let want = (body.capacity() * 4).min(*len).max(body.len() + chunk.bytes.len());
                        body.reserve(want - body.len());
                    }
                    body.extend_from_slice(&chunk.bytes)
                }
                Ok(None) => return Err(ChannelError::Truncated),
                Err(e) => return Err(ChannelError::Lost(describe_read(&e))),
            }
        }
        let (_, body) = self.body.take().expect("checked above");
        self.frame_deadline = None;
        Ok(Some(codec::decode_body_shared(&body.freeze())?))
    }

    /// Reads the header of the next frame into `self`, checks the announced
    /// length against this step's limit and makes room for the body;
    /// `false` if the peer finished the stream cleanly before a frame.
    async fn read_header(&mut self) -> Result<bool, ChannelError> {
        while self.header_len < HEADER_LEN {
            let read = if self.header_len == 0 {
                let since = *self.idle_since.get_or_insert_with(Instant::now);
                let read = self.recv.read(&mut self.header[..1]);
                match self.limits.next_frame_due {
                    Some(d) => {
                        let stalled = || {
                            ChannelError::Stalled(format!(
                                "the peer sent no frame within {} ms while {} was due ({})",
                                d.within.as_millis(),
                                d.what,
                                d.setting
                            ))
                        };
                        by(Some(since + d.within), read, stalled).await?
                    }
                    None => read.await,
                }
            } else {
                let timeout = self.limits.frame_timeout;
                by(self.frame_deadline, self.recv.read(&mut self.header[self.header_len..]), || late(timeout)).await?
            };
            match read {
                Ok(Some(n)) if n > 0 => {
                    if self.header_len == 0 {
                        self.idle_since = None;
                        self.frame_deadline = Some(Instant::now() + self.limits.frame_timeout);
                    }
                    self.header_len += n;
                }
                Ok(Some(_)) => {}
                Ok(None) if self.header_len == 0 => return Ok(false),
                Ok(None) => return Err(ChannelError::Truncated),
                Err(e) => return Err(ChannelError::Lost(describe_read(&e))),
            }
        }
        let len = codec::body_len(self.header)?;
        if len > self.limits.max_body {
            return Err(ChannelError::Limit(format!(
                "frame of {len} bytes exceeds the {}-byte limit of this step ({})",
                self.limits.max_body, self.limits.max_body_setting
            )));
        }
        self.header_len = 0;
        self.body = Some((len, BytesMut::with_capacity(len.min(FIRST_BUFFER))));
        Ok(true)
    }

    /// Tells the peer we will read no more (after a protocol error).
    pub fn stop(&mut self) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(0));
    }
}

/// The message for a frame that did not arrive whole in time.
fn late(timeout: Duration) -> ChannelError {
    ChannelError::Stalled(format!(
        "a frame did not arrive whole within {} ms of its first byte (limits.frame_timeout_ms)",
        timeout.as_millis()
    ))
}

/// The message for a peer that read nothing of a frame in time.
fn stalled_writer(limit: Option<Duration>) -> ChannelError {
    ChannelError::Stalled(format!(
        "the peer read nothing for {} ms (limits.frame_timeout_ms)",
        limit.unwrap_or_default().as_millis()
    ))
}

/// `work`, failing with `expired()` if `deadline` passes first.
async fn by<F: std::future::Future>(
    deadline: Option<Instant>,
    work: F,
    expired: impl FnOnce() -> ChannelError,
) -> Result<F::Output, ChannelError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, work).await.map_err(|_| expired()),
        None => Ok(work.await),
    }
}

/// The sending half of a private channel.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
    /// The stream-kind byte, sent with the first frame of a stream we opened.
    kind: Option<u8>,
    /// How long one frame may wait for the peer to read (flow control).
    stall_limit: Option<Duration>,
}

impl FrameWriter {
    /// A writer on a stream the peer opened (its kind byte was already read).
    pub fn new(send: quinn::SendStream) -> Self {
        FrameWriter { send, buf: Vec::new(), kind: None, stall_limit: None }
    }

    /// A writer on a stream we opened: its first byte says what it carries.
    pub fn opened(send: quinn::SendStream, kind: StreamKind) -> Self {
        FrameWriter { send, buf: Vec::new(), kind: Some(kind.byte()), stall_limit: None }
    }

    /// A peer that reads nothing of a frame for `limit` fails the write
    /// (`ChannelError::Stalled`), so it cannot hold this side's runner.
    pub fn set_stall_limit(&mut self, limit: Duration) {
        self.stall_limit = Some(limit);
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), ChannelError> {
        self.buf.clear();
        self.buf.extend(self.kind.take());
        codec::encode_into(msg, &mut self.buf)?;
        let deadline = self.stall_limit.map(|d| Instant::now() + d);
        let limit = self.stall_limit;
        by(deadline, self.send.write_all(&self.buf), || stalled_writer(limit))
            .await?
            .map_err(|e| ChannelError::Lost(e.to_string()))
    }

    /// Sends a frame already encoded (the data path encodes off the executor).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        if let Some(k) = self.kind.take() {
            self.send.write_all(&[k]).await.map_err(|e| ChannelError::Lost(e.to_string()))?;
        }
        let deadline = self.stall_limit.map(|d| Instant::now() + d);
        let limit = self.stall_limit;
        by(deadline, self.send.write_chunk(frame), || stalled_writer(limit))
            .await?
            .map_err(|e| ChannelError::Lost(e.to_string()))
    }

    /// Writes raw bytes: only for tests that play a misbehaving peer.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        if let Some(k) = self.kind.take() {
            self.send.write_all(&[k]).await.map_err(|e| ChannelError::Lost(e.to_string()))?;
        }
        self.send.write_all(bytes).await.map_err(|e| ChannelError::Lost(e.to_string()))
    }

    /// Finishes our side of the stream; queued data is still delivered.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{Data, Digest, Message};

    #[test]
    fn a_blocks_payload_lands_aligned_and_decodes_whole() {
        for (offset, len) in [(0u64, 1usize << 20), (5 << 20, 300_001), (u64::MAX >> 1, 65_537)] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let raw_len = u32::try_from(len).expect("fits");
            let frame = codec::encode_data(offset, raw_len, false, Digest([3; 32]), &payload).expect("encodes");
            let body = &frame[codec::HEADER_LEN..];
            // As the reader does: room made at the first chunk, then filled.
            let mut buf = block_body_buffer(body.len(), &body[..1200]);
            let before = buf.capacity();
            for chunk in body.chunks(1200) {
                buf.extend_from_slice(chunk);
            }
            assert!(buf.capacity() <= before, "no regrowth");
            let Message::Data(Data { payload: got, .. }) = codec::decode_body_shared(&buf.freeze()).expect("decodes")
            else {
                panic!("a data frame")
            };
            assert_eq!(got.as_ptr().align_offset(PAYLOAD_ALIGN), 0, "payload aligned ({offset}, {len})");
            assert_eq!(&got[..], &payload[..]);
        }
        // First bytes that do not tell: plain room, still whole.
        let buf = block_body_buffer(100_000, &[0]);
        assert!(buf.capacity() >= 100_000 && buf.is_empty());
    }
}
