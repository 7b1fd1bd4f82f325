//! A request's private channel: one bidirectional QUIC stream carrying frames.
//!
//! [`FrameReader`] and [`FrameWriter`] wrap the two halves of the stream with
//! the codec from [`crate::protocol::codec`]. A frame over the size limit is
//! refused from its header alone, before any of its body is buffered.

use bytes::Bytes;

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

/// The receiving half of a private channel.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader { recv }
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly
    /// between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        // Read the first byte on its own so a clean finish is told apart from
        // a frame cut short.
        match self.recv.read(&mut header[..1]).await {
            Ok(Some(1)) => {}
            Ok(Some(_)) => return Err(ChannelError::Truncated),
            Ok(None) => return Ok(None),
            Err(e) => return Err(ChannelError::Lost(describe_read(&e))),
        }
        self.recv.read_exact(&mut header[1..]).await.map_err(ChannelError::from_read)?;
        let len = codec::body_len(header)?;
        // Gather the body from quinn's chunks into a fresh buffer (one copy,
        // no zero-fill), so a Data payload can be handed on as a slice of it.
        let mut body = bytes::BytesMut::with_capacity(len);
        while body.len() < len {
            match self.recv.read_chunk(len - body.len(), true).await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(ChannelError::Truncated),
                Err(e) => return Err(ChannelError::Lost(describe_read(&e))),
            }
        }
        Ok(Some(codec::decode_body_shared(&body.freeze())?))
    }

    /// Tells the peer we will read no more (after a protocol error).
    pub fn stop(&mut self) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(0));
    }
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
