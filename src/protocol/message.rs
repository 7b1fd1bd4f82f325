//! The messages two nodes exchange on a request's private channel.
//!
//! Every request runs on its own bidirectional QUIC stream and follows
//! `Startup → Authent → Request → Valid|Refused → Data* → EndTransfer → EndRequest`
//! (see `docs/PROTOCOL.md`). These types are plain data: no I/O, no clocks. The
//! wire encoding lives in [`super::codec`] alone, so it can change in one place.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A peer with another version is refused.
pub const PROTOCOL_VERSION: u16 = 8;

/// Largest block size a node accepts (the frame limit is derived from it).
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;

/// Smallest block size: tiny blocks turn a transfer into per-frame overhead.
pub const MIN_BLOCK_SIZE: u32 = 4 * 1024;

/// Default block size (1 MiB): large enough to amortise per-frame work, small
/// enough that a lost connection costs little.
pub const DEFAULT_BLOCK_SIZE: u32 = 1024 * 1024;

/// A request's globally unique id: 32 lowercase hex characters (128 random bits).
///
/// The same id names the request on both nodes it involves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id: the time now, then 80 random bits (see [`Self::generate_at`]).
    pub fn generate() -> Self {
        Self::generate_at(crate::determinism::now_ms())
    }

    /// A fresh id made at `ms` (Unix milliseconds): 12 hex digits of the
    /// time, then 20 of random bits. Ids made later sort later, so the
    /// store's newest records (and their job logs, keyed by id) sit
    /// together at the end of their trees instead of across them: writing
    /// them touches a few hot pages however many old records the store
    /// holds. 80 random bits keep them unguessable and apart.
    pub fn generate_at(ms: u64) -> Self {
        let random = crate::determinism::random_u128() >> 48;
        RequestId(format!("{:012x}{random:020x}", ms & 0xffff_ffff_ffff))
    }

    /// Parses an id, accepting only the canonical 32-hex-character form.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| RequestId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RequestId::parse(&s).ok_or_else(|| format!("malformed request id {s:?}"))
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> String {
        id.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A BLAKE3 digest (32 bytes). Displays as the lowercase hex `b3sum` prints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Which way the file moves, seen from the requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The requester sends the file to the requested node.
    Push,
    /// The requester receives the file from the requested node.
    Pull,
}

/// Per-block compression, negotiated in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    /// lz4 per block; a block that does not shrink travels uncompressed.
    Lz4,
}

/// Why a request was refused or failed. Carried on the wire and stored with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The two sides cannot agree on block size or compression.
    CapabilityMismatch,
    /// The peer is not a configured partner.
    UnknownPartner,
    /// The peer's Authent id differs from its certificate's name.
    AuthentMismatch,
    /// The rule does not exist on this node.
    UnknownRule,
    /// The partner may not use this rule.
    RuleNotAllowed,
    /// The file name is not a plain name inside the rule's folder.
    BadFileName,
    /// The file to send does not exist or cannot be read.
    FileNotFound,
    /// The receiver lacks room for the file.
    NoSpace,
    /// A local read or write failed.
    Io,
    /// A block's BLAKE3 did not match its payload.
    BlockHashMismatch,
    /// The whole-file BLAKE3 differs between the two ends.
    FileHashMismatch,
    /// The byte count at the end differs from what was announced or received.
    SizeMismatch,
    /// The source file changed while it was being sent.
    SourceChanged,
    /// The receiver's partial file does not match the sender's prefix and the
    /// rule says to fail rather than start over.
    ResumeMismatch,
    /// An operator stopped (paused) the request; it resumes when restarted.
    Stopped,
    /// The retries for an interrupted request are spent.
    RetriesExhausted,
    /// A message arrived that the state machine does not allow here.
    Protocol,
    /// A frame exceeded the size limit or did not decode.
    BadFrame,
    /// The connection to the partner was lost or could not be made.
    Connection,
    /// The TLS handshake with the partner failed (certificate not trusted, wrong name).
    Handshake,
    /// An operator or the peer cancelled the request.
    Cancelled,
    /// The node is shutting down.
    Shutdown,
    /// Anything else: a bug or an unexpected local condition.
    Internal,
    /// The partner stayed unavailable longer than the request may wait
    /// (`cluster.partner_wait_secs`); the message carries the last cause.
    PartnerUnavailable,
    /// A pre-, post- or error task of the rule failed (or ran past its
    /// timeout); the message names the task and why (a partner is told
    /// only which task, see [`ErrorCode::told_to_partner`]).
    TaskFailed,
    /// The target file exists and the rule's target mode is `create`.
    TargetExists,
    /// A file set's pattern matched nothing and its policy says that is an
    /// error (`on_empty = fail`).
    NoFiles,
    /// A file of a set was never sent: another file failed first and the
    /// set's policy stops at the first failure (`on_failure = stop`).
    Skipped,
    /// A file set ended with some of its files failed or skipped; the
    /// message names them (its files' own records say why each failed).
    FilesFailed,
}

impl ErrorCode {
    /// What a partner is told of a failure with this code and `message`.
    /// A `TaskFailed` message is a summary naming the task and the node
    /// ("post-task 2/3 (exec) failed on node b"), then, after the first
    /// `": "`, the task's arguments after substitution and its output, which
    /// may carry paths, file contents or secrets of this node: the partner
    /// is told only the summary, and the node's job log keeps the rest.
    /// Every other message goes as it is.
    pub fn told_to_partner(self, message: &str) -> String {
        match (self, message.split_once(": ")) {
            (ErrorCode::TaskFailed, Some((summary, _))) => {
                format!("{summary} (the task's output is in that node's job log)")
            }
            _ => message.to_owned(),
        }
    }

    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::VersionMismatch,
        ErrorCode::CapabilityMismatch,
        ErrorCode::UnknownPartner,
        ErrorCode::AuthentMismatch,
        ErrorCode::UnknownRule,
        ErrorCode::RuleNotAllowed,
        ErrorCode::BadFileName,
        ErrorCode::FileNotFound,
        ErrorCode::NoSpace,
        ErrorCode::Io,
        ErrorCode::BlockHashMismatch,
        ErrorCode::FileHashMismatch,
        ErrorCode::SizeMismatch,
        ErrorCode::SourceChanged,
        ErrorCode::ResumeMismatch,
        ErrorCode::Stopped,
        ErrorCode::RetriesExhausted,
        ErrorCode::Protocol,
        ErrorCode::BadFrame,
        ErrorCode::Connection,
        ErrorCode::Handshake,
        ErrorCode::Cancelled,
        ErrorCode::Shutdown,
        ErrorCode::Internal,
        ErrorCode::PartnerUnavailable,
        ErrorCode::TaskFailed,
        ErrorCode::TargetExists,
        ErrorCode::NoFiles,
        ErrorCode::Skipped,
        ErrorCode::FilesFailed,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Opens a private channel: the requester sends it first, the requested node echoes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Startup {
    pub version: u16,
    pub request_id: RequestId,
}

/// What a node can do; both sides send theirs and use the intersection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub max_block_size: u32,
    pub compression: Vec<Compression>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities { max_block_size: MAX_BLOCK_SIZE, compression: vec![Compression::None, Compression::Lz4] }
    }
}

/// A node's identity claim, checked against the peer certificate's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authent {
    pub host_id: String,
    pub capabilities: Capabilities,
}

/// Options the requester asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TransferOptions {
    pub compression: Compression,
    /// How the receiver treats an existing target, when the request
    /// overrides the receiver's rule (version 4).
    pub target_mode: Option<TargetMode>,
    /// A file of a set sent with `delivery = all` (version 5): the
    /// receiver keeps it verified under its work name until the sender's
    /// `Release` of the set.
    pub hold: bool,
    /// A pulled file set's file (version 7): its size and modification
    /// time as the sender resolved them; a file that differs when asked
    /// for is refused with `SourceChanged`.
    pub as_resolved: Option<AsResolved>,
}

/// A file's size and modification time when its file set was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsResolved {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (0 if unknown: not compared).
    pub modified_ns: u64,
}

/// What a receiver does when the target file already exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetMode {
    /// Refuse the transfer (before any data is sent).
    Create,
    /// Replace it atomically (the default).
    #[default]
    Replace,
    /// Add the received data at its end.
    Append,
    /// Rename it aside (`backup_name`), then deliver.
    Backup,
}

impl TargetMode {
    pub fn parse(s: &str) -> Option<TargetMode> {
        [TargetMode::Create, TargetMode::Replace, TargetMode::Append, TargetMode::Backup]
            .into_iter()
            .find(|m| format!("{m:?}").eq_ignore_ascii_case(s))
    }
}

/// The transfer request itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: RequestId,
    pub rule: String,
    pub direction: Direction,
    /// The file below the rule's send folder: a plain name, or a file
    /// set's relative path (`a/b.csv`; an empty folder's ends in `/`).
    pub file_name: String,
    /// The file's size when the requester sends it (push); 0 for a pull.
    pub size: u64,
    pub block_size: u32,
    /// Pull: where the requester (the receiver) can resume from, i.e. its
    /// durable restart point; the sender agrees or answers 0 in [`Valid`].
    /// Push: the largest offset the requester would accept (`u64::MAX` when
    /// it has no reason to limit the receiver's offer).
    pub restart_offset: u64,
    /// Pull: BLAKE3 of the requester's partial file up to `restart_offset`,
    /// which the sender checks against its own file before resuming.
    pub prefix_hash: Option<Digest>,
    /// Pull: the requester already delivered this request's file (it
    /// crashed before recording Done), or holds it verified for its set
    /// (`delivery = all`); the sender only confirms.
    pub delivered: Option<EndTransfer>,
    pub options: TransferOptions,
    pub external_job_id: Option<String>,
    pub transfer_info: String,
}

/// The requested node accepts the request, with the agreed parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Valid {
    /// The file size (for a pull, the requested node's file).
    pub size: u64,
    pub block_size: u32,
    /// Pull: the agreed offset. Push: the receiver's offer (its durable
    /// restart point), which the sender confirms with [`Resume`].
    pub restart_offset: u64,
    /// Push with an offer above 0: BLAKE3 of the receiver's partial file up
    /// to `restart_offset`.
    pub prefix_hash: Option<Digest>,
    pub compression: Compression,
}

/// Push, after a [`Valid`] offering to resume: the sender's decision, made
/// after comparing the receiver's prefix hash with its own file. Either the
/// offered offset, or 0 to start over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub offset: u64,
}

/// The requested node refuses the request; the channel ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub code: ErrorCode,
    pub message: String,
}

/// One block of the file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    pub offset: u64,
    /// Length of the raw block; equals `payload.len()` unless `compressed`.
    pub raw_len: u32,
    /// The block as sent: lz4-compressed when `compressed`, raw otherwise.
    /// A `Bytes` so a received block can be a slice of its frame, not a copy.
    pub payload: bytes::Bytes,
    pub compressed: bool,
    /// BLAKE3 of the raw (uncompressed) block.
    pub hash: Digest,
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Data")
            .field("offset", &self.offset)
            .field("raw_len", &self.raw_len)
            .field("len", &self.payload.len())
            .field("compressed", &self.compressed)
            .field("hash", &self.hash)
            .finish()
    }
}

/// The sender has sent every block; the receiver echoes it once its own count
/// and whole-file BLAKE3 match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndTransfer {
    pub bytes: u64,
    pub hash: Digest,
}

/// The sender closes the request; the receiver echoes it. Both then record `Done`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndRequest {}

/// Either side reports a failure; the channel ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub code: ErrorCode,
    pub message: String,
}

/// Either side cancels; the channel ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub reason: String,
}

/// Everything that travels on a private channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Startup(Startup),
    Authent(Authent),
    Request(Request),
    Valid(Valid),
    Refused(Refused),
    Data(Data),
    EndTransfer(EndTransfer),
    EndRequest(EndRequest),
    Error(ErrorReport),
    Cancel(Cancel),
    Resume(Resume),
    /// Answer to a Request that this node already completed and delivered:
    /// nothing is transferred again; carries the verified count and hash.
    Complete(EndTransfer),
}

impl Message {
    /// A short name for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Startup(_) => "Startup",
            Message::Authent(_) => "Authent",
            Message::Request(_) => "Request",
            Message::Valid(_) => "Valid",
            Message::Refused(_) => "Refused",
            Message::Data(_) => "Data",
            Message::EndTransfer(_) => "EndTransfer",
            Message::EndRequest(_) => "EndRequest",
            Message::Error(_) => "Error",
            Message::Cancel(_) => "Cancel",
            Message::Resume(_) => "Resume",
            Message::Complete(_) => "Complete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_later_sort_later_and_stay_distinct_and_canonical() {
        let (a, b) = (RequestId::generate_at(1_000), RequestId::generate_at(1_001));
        assert!(a.as_str() < b.as_str(), "{a} {b}");
        assert_eq!(RequestId::parse(a.as_str()), Some(a.clone()), "32 lowercase hex digits");
        assert!(a.as_str().starts_with("0000000003e8"), "the time first: {a}");
        let same: std::collections::BTreeSet<String> =
            (0..1000).map(|_| RequestId::generate_at(5).as_str().to_owned()).collect();
        assert_eq!(same.len(), 1000, "the same millisecond: 80 random bits keep them apart");
    }
}
