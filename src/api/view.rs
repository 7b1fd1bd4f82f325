//! The JSON shapes the REST API speaks, shared by the server and [`super::client`].
//!
//! Views are plain data derived from the store's records: the server builds
//! them, the client decodes them. Enums keep their Rust names on the wire
//! (`"ToSubmit"`, `"InError"`, `"AllDone"`, `"Requester"`), except
//! [`Direction`], which the protocol already spells `"push"` / `"pull"`.

use serde::{Deserialize, Serialize};

use crate::protocol::{Compression, Direction};
use crate::store::{LogEntry, RequestRecord, Role, Status, Step};

/// A transfer request as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// The request id (32 lowercase hex characters), the same on both nodes.
    pub id: String,
    /// This node's part in the request.
    pub role: Role,
    /// The other node's id.
    pub partner: String,
    pub rule: String,
    pub direction: Direction,
    /// The plain file name.
    pub file: String,
    pub block_size: u32,
    /// Per-block compression the requester asked for (`"none"` or `"lz4"`).
    pub compression: Compression,
    /// File size in bytes (for a pull, 0 until the sender answered).
    pub size: u64,
    /// Bytes confirmed so far.
    pub transferred: u64,
    /// Offset the current or last attempt started from.
    pub restart_offset: u64,
    pub status: Status,
    pub step: Step,
    /// Whole-file BLAKE3 as lowercase hex, once verified.
    pub hash: Option<String>,
    pub external_job_id: Option<String>,
    pub transfer_info: String,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// Why the request failed, if it did.
    pub error: Option<ErrorView>,
    /// The node that answered (whose view of the request this is).
    pub node: String,
}

impl TransferView {
    /// The view of `rec` as node `node` holds it.
    pub fn from_record(rec: &RequestRecord, node: &str) -> TransferView {
        TransferView {
            id: rec.id.as_str().to_owned(),
            role: rec.role,
            partner: rec.partner.clone(),
            rule: rec.rule.clone(),
            direction: rec.direction,
            file: rec.file_name.clone(),
            block_size: rec.block_size,
            compression: rec.compression,
            size: rec.size,
            transferred: rec.transferred,
            restart_offset: rec.restart_offset,
            status: rec.status,
            step: rec.step,
            hash: rec.hash.map(|h| h.to_hex()),
            external_job_id: rec.external_job_id.clone(),
            transfer_info: rec.transfer_info.clone(),
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            started_at: rec.started_at,
            finished_at: rec.finished_at,
            error: rec.error.as_ref().map(|e| ErrorView { code: e.code.to_string(), message: e.message.clone() }),
            node: node.to_owned(),
        }
    }

    /// Whether the request has ended for good (`Done`, `InError`, `Cancelled`).
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }

    /// Fraction of the file confirmed so far, in `0.0..=1.0` (`None` while the size is unknown).
    pub fn progress(&self) -> Option<f64> {
        if self.size == 0 {
            return (self.status == Status::Done).then_some(1.0);
        }
        Some((self.transferred as f64 / self.size as f64).clamp(0.0, 1.0))
    }
}

/// A machine-readable code and a human-readable message.
///
/// Used for a failed transfer's cause (the code is the protocol's error name,
/// e.g. `"FileNotFound"`) and for API errors (a snake_case code, e.g.
/// `"unknown_partner"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

/// The body of every API error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorView,
}

/// One line of a request's job log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineView {
    /// Unix milliseconds.
    pub at: u64,
    pub status: Status,
    pub step: Step,
    pub message: String,
}

impl From<&LogEntry> for LogLineView {
    fn from(e: &LogEntry) -> Self {
        LogLineView { at: e.at, status: e.status, step: e.step, message: e.message.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Digest, ErrorCode, RequestId};
    use crate::store::RequestError;

    fn record() -> RequestRecord {
        RequestRecord {
            id: RequestId::generate(),
            role: Role::Requester,
            partner: "b".into(),
            rule: "default".into(),
            direction: Direction::Push,
            file_name: "report.csv".into(),
            block_size: 1 << 20,
            compression: Compression::Lz4,
            size: 400,
            transferred: 100,
            restart_offset: 50,
            status: Status::InError,
            step: Step::Transfer,
            hash: Some(Digest::of(b"x")),
            external_job_id: Some("job-7".into()),
            transfer_info: "nightly".into(),
            created_at: 1,
            updated_at: 2,
            started_at: Some(3),
            finished_at: None,
            error: Some(RequestError { code: ErrorCode::FileNotFound, message: "gone".into() }),
            queue_seq: Some(9),
            restart_point: None,
            delivered: false,
            attempts: 1,
            retry_at: None,
        }
    }

    #[test]
    fn a_record_becomes_a_view_with_debug_names_and_hex_hash() {
        let rec = record();
        let v = TransferView::from_record(&rec, "a");
        assert_eq!(v.id, rec.id.as_str());
        assert_eq!(v.node, "a");
        assert_eq!(v.progress(), Some(0.25));
        let json = serde_json::to_value(&v).expect("serialises");
        assert_eq!(json["status"], "InError");
        assert_eq!(json["step"], "Transfer");
        assert_eq!(json["role"], "Requester");
        assert_eq!(json["direction"], "push");
        assert_eq!(json["file"], "report.csv");
        assert_eq!(json["compression"], "lz4");
        assert_eq!(json["hash"], Digest::of(b"x").to_hex());
        assert_eq!(json["error"]["code"], "FileNotFound");
        assert_eq!(json["error"]["message"], "gone");
        assert_eq!(json["finished_at"], serde_json::Value::Null);
        assert!(json.get("queue_seq").is_none(), "store-internal fields stay inside");
        let back: TransferView = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, v);
    }

    #[test]
    fn a_fresh_record_has_null_hash_and_error() {
        let mut rec = record();
        rec.hash = None;
        rec.error = None;
        rec.status = Status::ToSubmit;
        rec.size = 0;
        let json = serde_json::to_value(TransferView::from_record(&rec, "a")).expect("serialises");
        assert_eq!(json["hash"], serde_json::Value::Null);
        assert_eq!(json["error"], serde_json::Value::Null);
        assert_eq!(json["status"], "ToSubmit");
        assert_eq!(TransferView::from_record(&rec, "a").progress(), None);
    }

    #[test]
    fn log_lines_keep_their_fields() {
        let e = LogEntry { at: 5, status: Status::Done, step: Step::AllDone, message: "done".into() };
        let json = serde_json::to_value(LogLineView::from(&e)).expect("serialises");
        assert_eq!(json, serde_json::json!({"at": 5, "status": "Done", "step": "AllDone", "message": "done"}));
    }
}
