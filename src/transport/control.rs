//! Control exchanges over QUIC: one [`Ask`] and one [`Answer`] on a fresh
//! bidirectional stream (see [`crate::protocol::control`]).
//!
//! Both directions are bounded: an ask gives up after its time limit, and a
//! peer's frame over
//! [`MAX_CONTROL_BODY`](crate::protocol::control::MAX_CONTROL_BODY) is refused from its header.

use std::time::Duration;

use crate::protocol::codec::{self, CodecError, HEADER_LEN};
use crate::protocol::control::{Answer, Ask, StreamKind};

use super::channel::describe_connection;

/// Why a control exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("bad control frame: {0}")]
    Frame(#[from] CodecError),
    #[error("the peer closed the stream without answering")]
    NoAnswer,
}

/// Reads one control frame from `recv`.
async fn read_frame<T: serde::de::DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, ControlError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ControlError::NoAnswer,
        quinn::ReadExactError::ReadError(e) => ControlError::Lost(e.to_string()),
    })?;
    let len = codec::control_body_len(header)?;
    let mut body = vec![0; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ControlError::NoAnswer,
        quinn::ReadExactError::ReadError(e) => ControlError::Lost(e.to_string()),
    })?;
    Ok(codec::decode_control(&body)?)
}

/// Asks the peer at the other end of `conn` and waits, at most `limit`, for
/// its answer.
pub async fn ask(conn: &quinn::Connection, question: &Ask, limit: Duration) -> Result<Answer, ControlError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| ControlError::Lost(describe_connection(&e)))?;
        let mut frame = vec![StreamKind::Control.byte()];
        frame.extend_from_slice(&codec::encode_control(question)?);
        send.write_all(&frame).await.map_err(|e| ControlError::Lost(e.to_string()))?;
        let _ = send.finish();
        read_frame::<Answer>(&mut recv).await
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| ControlError::Timeout(limit))?
}

/// Reads the ask on a control stream the peer opened (its kind byte already
/// read), bounded by `limit`.
pub async fn read_ask(recv: &mut quinn::RecvStream, limit: Duration) -> Result<Ask, ControlError> {
    tokio::time::timeout(limit, read_frame::<Ask>(recv)).await.map_err(|_| ControlError::Timeout(limit))?
}

/// Sends the answer and finishes the stream.
pub async fn answer(send: &mut quinn::SendStream, reply: &Answer) -> Result<(), ControlError> {
    let frame = codec::encode_control(reply)?;
    send.write_all(&frame).await.map_err(|e| ControlError::Lost(e.to_string()))?;
    let _ = send.finish();
    Ok(())
}

/// Reads the kind byte of a stream the peer opened; `None` if the peer
/// finished it before sending one.
pub async fn read_kind(recv: &mut quinn::RecvStream, limit: Duration) -> Result<Option<u8>, ControlError> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(limit, recv.read(&mut b)).await {
        Err(_) => Err(ControlError::Timeout(limit)),
        Ok(Ok(Some(1))) => Ok(Some(b[0])),
        Ok(Ok(_)) => Ok(None),
        Ok(Err(e)) => Err(ControlError::Lost(e.to_string())),
    }
}
