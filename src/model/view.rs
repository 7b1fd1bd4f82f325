//! The JSON shapes the REST API speaks, shared by the server and [`crate::api::client`].
//!
//! Views are plain data derived from the store's records: the server builds
//! them, the client decodes them. Enums keep their Rust names on the wire
//! (`"ToSubmit"`, `"InError"`, `"AllDone"`, `"Requester"`), except
//! [`Direction`], which the protocol already spells `"push"` / `"pull"`.

use serde::{Deserialize, Serialize};

use crate::protocol::{Compression, Direction};
use crate::store::{LogEntry, RequestRecord, Role, Status, Step, TargetMode};
use crate::tasks::SideTasks;

/// A transfer request as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Receiver: the offset of its last durable restart point (the work file
    /// is fsynced up to it, and a resume starts there), or `None`.
    #[serde(default)]
    pub restart_offset_durable: Option<u64>,
    /// Receiver: the verified file was recorded as delivered (renamed, or
    /// about to be renamed, into place). A rerun then confirms with
    /// `Complete` instead of moving the file again.
    #[serde(default)]
    pub delivered: bool,
    /// Requester: attempts started so far (an operator restart resets it).
    #[serde(default)]
    pub attempts: u32,
    /// Requester: when an interrupted request is due to be retried (Unix
    /// milliseconds), or `None` when no retry is scheduled.
    #[serde(default)]
    pub retry_at: Option<u64>,
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
    /// Requester: the group the request was addressed to (`partner` is the
    /// member chosen).
    #[serde(default)]
    pub group: Option<String>,
    /// Requester: the node whose API took the submission, when it was
    /// handed over from another node.
    #[serde(default)]
    pub submitted_on: Option<String>,
    /// Requester, while the request waits: why it does not run, and until
    /// when it will wait (see `NodeHandle::waiting_reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The task being run, or the one that failed: "post-task 2/3 (exec)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The name the request was submitted with, when a sender's pre-task
    /// renamed the file (`file` is the new name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_file: Option<String>,
    /// The target mode the request asked for (else the receiver's rule's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_mode: Option<TargetMode>,
    /// The request whose `transfer` task submitted this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chained_from: Option<String>,
    /// Requests this one's `transfer` tasks submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chained_to: Vec<String>,
    /// Times a `reschedule` error task put the request back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reschedules: u32,
    /// A file set: its pattern, policies and totals (`size` is then the
    /// sum of its files' sizes, `transferred` the bytes delivered). Its
    /// files: `GET /api/v1/transfers/{id}/files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetView>,
    /// A file of a set: the set's id and the file's place in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_of: Option<MemberView>,
}

/// A file set's totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetView {
    /// The pattern, or the listed paths joined by a newline.
    pub pattern: String,
    pub on_empty: crate::fileset::progress::OnEmpty,
    pub on_failure: crate::fileset::progress::OnFailure,
    pub delivery: crate::fileset::progress::Delivery,
    pub files: u32,
    pub done: u32,
    pub failed: u32,
    /// Never sent: another file failed first and the set stopped.
    pub skipped: u32,
    /// Neither done, failed nor skipped yet.
    pub left: u32,
}

/// A file's place in its set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub set: String,
    /// From 0, in path order.
    pub index: u32,
}

/// One page of a file set's files (`GET /api/v1/transfers/{id}/files`),
/// in path order, each a transfer of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetFilesPage {
    pub files: Vec<TransferView>,
    /// The index the next page starts at (`?cursor=`), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A rule as `GET /api/v1/rules` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleView {
    pub name: String,
    /// Partners (ids, aliases, groups, or `"*"`) that may use it.
    pub partners: Vec<String>,
    pub send_dir: String,
    pub recv_dir: String,
    /// The receiver's target mode.
    pub target: TargetMode,
    pub backup_name: String,
    /// More folders its tasks may touch.
    pub folders: Vec<String>,
    pub sender: SideTasks,
    pub receiver: SideTasks,
    /// File sets sent under the rule: what an empty match means.
    pub on_empty: crate::fileset::progress::OnEmpty,
    /// File sets sent under the rule: what one failed file means.
    pub on_failure: crate::fileset::progress::OnFailure,
    /// File sets sent under the rule: when files go under their final names.
    pub delivery: crate::fileset::progress::Delivery,
}

impl RuleView {
    pub fn from_rule(r: &crate::config::Rule) -> RuleView {
        RuleView {
            name: r.name.clone(),
            partners: r.partners.clone(),
            send_dir: r.send_dir.display().to_string(),
            recv_dir: r.recv_dir.display().to_string(),
            target: r.target,
            backup_name: r.backup_name.clone(),
            folders: r.folders.iter().map(|f| f.display().to_string()).collect(),
            sender: r.sender.clone(),
            receiver: r.receiver.clone(),
            on_empty: r.on_empty,
            on_failure: r.on_failure,
            delivery: r.delivery,
        }
    }
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
            restart_offset_durable: rec.restart_point.map(|p| p.offset),
            delivered: rec.delivered,
            attempts: rec.attempts,
            retry_at: rec.retry_at,
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
            group: rec.group.clone(),
            submitted_on: rec.submitted_on.clone(),
            waiting: None,
            task: None,
            original_file: rec.original_file_name.clone(),
            target_mode: rec.target_mode,
            chained_from: rec.chained_from.as_ref().map(|i| i.as_str().to_owned()),
            chained_to: rec.chained_to.iter().map(|i| i.as_str().to_owned()).collect(),
            reschedules: rec.reschedules,
            set: rec.set.as_ref().map(|i| SetView {
                pattern: i.pattern.clone(),
                on_empty: i.policy.on_empty,
                on_failure: i.policy.on_failure,
                delivery: i.policy.delivery,
                files: i.files,
                done: i.done,
                failed: i.failed,
                skipped: i.skipped,
                left: i.files.saturating_sub(i.done + i.failed + i.skipped),
            }),
            member_of: rec.member_of.as_ref().map(|m| MemberView { set: m.set.as_str().to_owned(), index: m.index }),
        }
    }

    /// Whether the request has ended for good (`Done`, `InError`, `Cancelled`).
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }

    /// Whether an operator stopped (paused) the request: `Interrupted` with
    /// the error code `Stopped`. It stays so until it is restarted.
    pub fn is_stopped(&self) -> bool {
        self.status == Status::Interrupted && self.error.as_ref().is_some_and(|e| e.code == "Stopped")
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

/// The body of every API error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorView,
}

/// One line of a request's job log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    use crate::store::{RequestError, RestartPoint};

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
            group: Some("backends".into()),
            submitted_on: None,
            ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "default", Direction::Push, "x")
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
        assert!(json.get("restart_point").is_none(), "the prefix hash stays inside");
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["retry_at"], serde_json::Value::Null);
        assert_eq!(json["restart_offset_durable"], serde_json::Value::Null);
        assert_eq!(json["delivered"], false);
        let back: TransferView = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, v);
    }

    #[test]
    fn restart_point_retry_and_delivery_are_shown() {
        let mut rec = record();
        rec.restart_point = Some(RestartPoint { offset: 96, prefix_hash: Digest::of(b"p") });
        rec.retry_at = Some(1_700_000_000_000);
        rec.attempts = 3;
        rec.delivered = true;
        let v = TransferView::from_record(&rec, "a");
        assert_eq!(v.restart_offset_durable, Some(96));
        let json = serde_json::to_value(&v).expect("serialises");
        assert_eq!(json["restart_offset_durable"], 96);
        assert_eq!(json["retry_at"], 1_700_000_000_000u64);
        assert_eq!(json["attempts"], 3);
        assert_eq!(json["delivered"], true);
    }

    #[test]
    fn views_from_a_node_without_the_newer_fields_still_decode() {
        let mut json = serde_json::to_value(TransferView::from_record(&record(), "a")).expect("serialises");
        let obj = json.as_object_mut().expect("object");
        for k in ["attempts", "retry_at", "restart_offset_durable", "delivered"] {
            obj.remove(k);
        }
        let v: TransferView = serde_json::from_value(json).expect("decodes");
        assert_eq!((v.attempts, v.retry_at, v.restart_offset_durable, v.delivered), (0, None, None, false));
    }

    #[test]
    fn only_an_interrupted_request_with_code_stopped_is_stopped() {
        let mut rec = record();
        rec.status = Status::Interrupted;
        rec.error = Some(RequestError { code: ErrorCode::Stopped, message: "stopped by an operator".into() });
        assert!(TransferView::from_record(&rec, "a").is_stopped());
        rec.error = Some(RequestError { code: ErrorCode::Connection, message: "lost".into() });
        assert!(!TransferView::from_record(&rec, "a").is_stopped());
        rec.status = Status::InError;
        rec.error = Some(RequestError { code: ErrorCode::Stopped, message: "x".into() });
        assert!(!TransferView::from_record(&rec, "a").is_stopped());
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
