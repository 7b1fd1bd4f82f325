//! Control exchanges: what nodes say to each other outside any request's
//! private channel.
//!
//! Every bidirectional stream starts with one byte, its [`StreamKind`]: a
//! request's private channel (`R`, then the session's frames) or a control
//! exchange (`C`). A control exchange is one [`Ask`] frame and one
//! [`Answer`] frame on a fresh stream, then both sides finish it. Heartbeats,
//! handing a request over to the node that must run it (submit anywhere),
//! asking for a request's state (the cluster-wide view) and reverse connect
//! all use it. Plain data only: no I/O, no clocks.

use serde::{Deserialize, Serialize};

use super::{Compression, Direction, ErrorCode, RequestId};

/// Largest control frame body: control messages are small, so a peer that
/// announces more is refused from the header alone.
pub const MAX_CONTROL_BODY: usize = 64 * 1024;

/// What a bidirectional stream carries, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A request's private channel: the session's frames follow.
    Request,
    /// One control exchange: an [`Ask`], then an [`Answer`].
    Control,
    /// The small files of a pushed file set, back to back
    /// ([`super::set_stream`]).
    SetStream,
}

impl StreamKind {
    pub fn byte(self) -> u8 {
        match self {
            StreamKind::Request => b'R',
            StreamKind::Control => b'C',
            StreamKind::SetStream => b'S',
        }
    }

    pub fn from_byte(b: u8) -> Option<StreamKind> {
        match b {
            b'R' => Some(StreamKind::Request),
            b'C' => Some(StreamKind::Control),
            b'S' => Some(StreamKind::SetStream),
            _ => None,
        }
    }
}

/// A transfer handed over to the node that must run it: the asked node
/// becomes its requester, under the id the submitting node chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub id: RequestId,
    /// The other node of the transfer, by id (as the asked node knows it).
    pub partner: String,
    /// Push: the asked node sends its file to `partner`; pull: it fetches it.
    pub direction: Direction,
    pub rule: String,
    pub file: String,
    pub external_job_id: Option<String>,
    pub transfer_info: String,
    pub block_size: Option<u32>,
    pub compression: Compression,
    /// The node whose API took the submission.
    pub submitted_on: String,
    /// The request's target mode, if it overrides the rule's.
    pub target_mode: Option<super::TargetMode>,
}

/// One node's knowledge of a request, for the cluster-wide view. Enum
/// values travel as their names so this stays independent of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestState {
    /// The node that holds this record.
    pub node: String,
    /// `Requester` or `Requested`.
    pub role: String,
    /// The other node of the request.
    pub partner: String,
    pub direction: Direction,
    pub rule: String,
    pub file: String,
    /// `ToSubmit`, `Running`, `Done`, `Interrupted`, `InError`, `Cancelled`.
    pub status: String,
    pub step: String,
    pub size: u64,
    pub transferred: u64,
    /// `CODE: message` of the last failure, if any.
    pub error: Option<String>,
    /// Unix milliseconds of the last change.
    pub updated_at: u64,
}

/// The first frame of a control exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// Heartbeat: answered with [`Answer::Pong`].
    Ping,
    /// Submit anywhere: run this transfer as its requester.
    Handover(Handover),
    /// What the asked node knows of a request.
    Query(RequestId),
    /// To a relay: "I cannot reach `target`; ask it to dial me".
    RelayDialBack { target: String },
    /// From a relay: "`node` cannot reach you; dial it". Answered once the
    /// dial succeeded or failed.
    DialMe { node: String },
    /// A file set's files `0..files` (member ids derived from `set`) are
    /// all delivered, or verified and held (`delivery = all`): put the held
    /// ones under their final names, then run the receiving rule's set
    /// tasks once (version 7: every set is released, not only held ones).
    /// Answered once every file is in place and the set tasks ran.
    Release {
        set: RequestId,
        files: u32,
        /// The set's pattern (or its list, one path per line), as the
        /// receiver's record of the set and its set tasks name it.
        pattern: String,
    },
    /// A pull of a file set (version 7): resolve `patterns` in the send
    /// folder of `rule`, as the sender of the set, and answer the entries
    /// from index `start` on ([`Answer::Listed`]).
    List { rule: String, patterns: Vec<String>, start: u32 },
    /// A pushed file set ended in error on its sender (added after version
    /// 8 without a version change: an older node refuses it as a bad ask,
    /// and the sender does not ask it again): the
    /// asked node's record of the set, if a set stream made it and its
    /// release was not ordered, ends `InError` with `code` and `message`
    /// (only what the sender tells a partner). Answered with the asked
    /// node's record of the set ([`Answer::State`]). A restart of the set
    /// opens it again.
    SetEnded { set: RequestId, code: ErrorCode, message: String },
}

impl Ask {
    pub fn kind(&self) -> &'static str {
        match self {
            Ask::Ping => "Ping",
            Ask::Handover(_) => "Handover",
            Ask::Query(_) => "Query",
            Ask::RelayDialBack { .. } => "RelayDialBack",
            Ask::DialMe { .. } => "DialMe",
            Ask::Release { .. } => "Release",
            Ask::List { .. } => "List",
            Ask::SetEnded { .. } => "SetEnded",
        }
    }
}

/// The second and last frame of a control exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Pong,
    /// The handover was recorded (durably) by the asked node.
    Accepted(RequestState),
    /// The asked node's record of the request, if it has one.
    State(Option<RequestState>),
    /// The dial-back connection is up.
    Dialed,
    /// The ask was refused or failed; the message names the cause.
    Refused {
        code: ErrorCode,
        message: String,
    },
    /// The set's files are under their final names (`delivered` of them
    /// by this exchange; the rest were already) and its set tasks ran.
    Released {
        delivered: u32,
    },
    /// A page of a file set's resolved entries, from the asked `start`:
    /// `total` entries in all, the whole list hashing to `digest`
    /// (`fileset::listing_digest`), so the asker sees whether every page
    /// came from one resolution.
    Listed {
        entries: Vec<ListedEntry>,
        total: u32,
        digest: super::Digest,
    },
}

/// One resolved entry of a file set, as [`Answer::Listed`] carries it: a
/// file, or an empty folder (its path ends in `/`, its size 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedEntry {
    /// Below the rule's send folder, components joined by `/`.
    pub path: String,
    pub size: u64,
    /// Nanoseconds since the Unix epoch (0 if unknown).
    pub modified_ns: u128,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_kinds_round_trip_and_unknown_bytes_are_refused() {
        for k in [StreamKind::Request, StreamKind::Control, StreamKind::SetStream] {
            assert_eq!(StreamKind::from_byte(k.byte()), Some(k));
        }
        assert_eq!(StreamKind::from_byte(0), None);
        assert_eq!(StreamKind::from_byte(b'r'), None);
    }
}
