//! A request's private channel: one bidirectional QUIC stream carrying frames.
//!
//! [`FrameReader`] and [`FrameWriter`] wrap the two halves of the stream with
//! the codec from [`crate::protocol::codec`].
//!
//! What a peer can make a reader hold is bounded ([`ReadLimits`]): a frame
//! over the current step's size limit is refused from its header alone,
//! before any of its body is read; a frame's body is read into a buffer that
//! grows as its bytes arrive (never reserved from what the header announces)
//! only once the partner's byte budget has room for it, and must arrive
//! within a deadline; while the peer owes a handshake step, its next frame
//! must start within a deadline too. The budget is given back when the frame
//! has been decoded, whatever happens to it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

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
    /// The peer went past what it may cost this node; names the limit.
    #[error("{0}")]
    Limit(String),
}

impl ChannelError {
    fn from_read(e: quinn::ReadExactError) -> ChannelError {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => ChannelError::Truncated,
            quinn::ReadExactError::ReadError(e) => ChannelError::Lost(describe_read(&e)),
        }
    }
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
    /// Once a frame's header arrived, how long its body may take.
    pub frame_timeout: Duration,
    /// While the peer owes a handshake step: how long until its next frame
    /// must start.
    pub next_frame_within: Option<Duration>,
    /// Bytes of frame bodies being read from this peer, shared by all its
    /// channels.
    pub budget: Option<Arc<Semaphore>>,
}

impl ReadLimits {
    /// No limit but the codec's own (tests, and peers of a test).
    pub fn codec_only() -> Self {
        ReadLimits {
            max_body: codec::MAX_FRAME_BODY,
            max_body_setting: "the codec's frame limit",
            frame_timeout: Duration::from_secs(3600),
            next_frame_within: None,
            budget: None,
        }
    }
}

/// A frame body's buffer starts this large and grows as bytes arrive.
const FIRST_BUFFER: usize = 64 * 1024;

/// The receiving half of a private channel.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    limits: ReadLimits,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader { recv, limits: ReadLimits::codec_only() }
    }

    /// A reader that holds its peer to `limits`.
    pub fn with_limits(recv: quinn::RecvStream, limits: ReadLimits) -> Self {
        FrameReader { recv, limits }
    }

    /// Changes what the next frames may be: the size limit of the current
    /// step, and whether the peer owes a handshake step.
    pub fn set_step(&mut self, max_body: usize, setting: &'static str, next_frame_within: Option<Duration>) {
        self.limits.max_body = max_body.min(codec::MAX_FRAME_BODY);
        self.limits.max_body_setting = setting;
        self.limits.next_frame_within = next_frame_within;
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly
    /// between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        // Read the first byte on its own so a clean finish is told apart from
        // a frame cut short.
        let first = self.recv.read(&mut header[..1]);
        let first = match self.limits.next_frame_within {
            Some(limit) => tokio::time::timeout(limit, first).await.map_err(|_| {
                ChannelError::Limit(format!(
                    "the peer sent no frame within {} ms while a handshake step was due (limits.handshake_timeout_ms)",
                    limit.as_millis()
                ))
            })?,
            None => first.await,
        };
        match first {
            Ok(Some(1)) => {}
            Ok(Some(_)) => return Err(ChannelError::Truncated),
            Ok(None) => return Ok(None),
            Err(e) => return Err(ChannelError::Lost(describe_read(&e))),
        }
        let frame_timeout = self.limits.frame_timeout;
        let late = || {
            ChannelError::Limit(format!(
                "a frame did not arrive whole within {} ms of its header (limits.frame_timeout_ms)",
                frame_timeout.as_millis()
            ))
        };
        tokio::time::timeout(frame_timeout, self.recv.read_exact(&mut header[1..]))
            .await
            .map_err(|_| late())?
            .map_err(ChannelError::from_read)?;
        let len = codec::body_len(header)?;
        if len > self.limits.max_body {
            return Err(ChannelError::Limit(format!(
                "frame of {len} bytes exceeds the {}-byte limit of this step ({})",
                self.limits.max_body, self.limits.max_body_setting
            )));
        }
        // Room in the peer's byte budget first (others of its frames may
        // have to finish), then the body within the deadline.
        let _room = match &self.limits.budget {
            Some(budget) => Some(
                budget
                    .clone()
                    .acquire_many_owned(u32::try_from(len).expect("len <= MAX_FRAME_BODY, which fits in u32"))
                    .await
                    .map_err(|_| ChannelError::Lost("the node is shutting down".into()))?,
            ),
            None => None,
        };
        let body = tokio::time::timeout(frame_timeout, read_body(&mut self.recv, len)).await.map_err(|_| late())??;
        Ok(Some(codec::decode_body_shared(&body)?))
    }

    /// Tells the peer we will read no more (after a protocol error).
    pub fn stop(&mut self) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(0));
    }
}

/// Gathers a body of `len` bytes from quinn's chunks (one copy, no
/// zero-fill) into a buffer that grows as they arrive, so a Data payload can
/// be handed on as a slice of it.
async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Bytes, ChannelError> {
    let mut body = bytes::BytesMut::with_capacity(len.min(FIRST_BUFFER));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => {
                if body.capacity() - body.len() < chunk.bytes.len() {
                    // Grow fourfold (not to what the header announced), so a
                    // large block costs a few reallocations.
                    let want = (body.capacity() * 4).min(len).max(body.len() + chunk.bytes.len());
                    body.reserve(want - body.len());
                }
                body.extend_from_slice(&chunk.bytes)
            }
            Ok(None) => return Err(ChannelError::Truncated),
            Err(e) => return Err(ChannelError::Lost(describe_read(&e))),
        }
    }
    Ok(body.freeze())
}

/// The sending half of a private channel.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
    /// The stream-kind byte, sent with the first frame of a stream we opened.
    kind: Option<u8>,
}

impl FrameWriter {
    /// A writer on a stream the peer opened (its kind byte was already read).
    pub fn new(send: quinn::SendStream) -> Self {
        FrameWriter { send, buf: Vec::new(), kind: None }
    }

    /// A writer on a stream we opened: its first byte says what it carries.
    pub fn opened(send: quinn::SendStream, kind: StreamKind) -> Self {
        FrameWriter { send, buf: Vec::new(), kind: Some(kind.byte()) }
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), ChannelError> {
        self.buf.clear();
        self.buf.extend(self.kind.take());
        codec::encode_into(msg, &mut self.buf)?;
        self.send.write_all(&self.buf).await.map_err(|e| ChannelError::Lost(e.to_string()))
    }

    /// Sends a frame already encoded (the data path encodes off the executor).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        if let Some(k) = self.kind.take() {
            self.send.write_all(&[k]).await.map_err(|e| ChannelError::Lost(e.to_string()))?;
        }
        self.send.write_chunk(frame).await.map_err(|e| ChannelError::Lost(e.to_string()))
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
