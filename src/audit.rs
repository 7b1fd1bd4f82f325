//! The node's audit trail: one JSON object per line in a file of its own
//! (`DATA_DIR/audit/audit.jsonl` unless the config's `[audit] path` says
//! otherwise), rotated by size.
//!
//! Two kinds of lines (fields in docs/AUDIT.md):
//! - `"kind": "api"`: every API call that can change something (POST,
//!   DELETE), refused ones included: the token's name and role (none when
//!   refused for want of one), method, path, request id, HTTP status and
//!   error code. Written before the answer leaves the node.
//! - `"kind": "transfer"`: a request's milestones as the store records them
//!   (`submitted`, `accepted`, `started`, `verified`, `delivered`, `done`,
//!   `interrupted`, `failed`, `cancelled`), written right after the record.
//!
//! Lines are written with one `write(2)` each, without an fsync of their
//! own: a line survives the node's crash (it is in the page cache), and a
//! power loss like the store's unflushed writes. Rotation renames
//! `audit.jsonl` to `audit.jsonl.1` (shifting older ones up to `keep`) when
//! the next line would pass `max_bytes`. A line that cannot be written is
//! reported in the node's log, never silently dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::store::{now_ms, RecordChange, RequestRecord, Role, Status};

/// One audit line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditEvent {
    /// Unix milliseconds.
    pub at: u64,
    pub node: String,
    /// `api` or `transfer`.
    pub kind: &'static str,
    /// `call` for the API; the milestone for a transfer.
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `requester` or `requested`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Calls without a valid token left out of the trail since the last one
    /// recorded (see `api::server::Unauthenticated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back: Option<u64>,
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl Writer {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, numbered(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// The node's audit file. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    node: Arc<str>,
    writer: Arc<Mutex<Writer>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, with its folder) the audit file at `path`.
    pub fn open(node: &str, path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        let writer = Writer { path: path.to_path_buf(), file, size, max_bytes: max_bytes.max(1), keep };
        Ok(AuditLog { node: Arc::from(node), writer: Arc::new(Mutex::new(writer)) })
    }

    /// Writes one line (the node and the time filled in).
    pub fn record(&self, event: AuditEvent) {
        let mut lines = Vec::new();
        self.encode(event, &mut lines);
        self.write(&lines);
    }

    /// Appends `event` as one line to `lines` (the node and the time
    /// filled in).
    fn encode(&self, mut event: AuditEvent, lines: &mut Vec<u8>) {
        event.node = self.node.to_string();
        if event.at == 0 {
            event.at = now_ms();
        }
        match serde_json::to_writer(&mut *lines, &event) {
            Ok(()) => lines.push(b'\n'),
            Err(e) => tracing::error!(error = %e, "an audit line does not encode"),
        }
    }

    /// Writes whole lines with one `write` (lines are never interleaved).
    fn write(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut w = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = w.write_line(lines) {
            tracing::error!(path = %w.path.display(), error = %e, "cannot write the audit log; lines: {}", String::from_utf8_lossy(lines).trim_end());
        }
    }

    /// Writes the milestones `change` reached (see [`milestones`]), with
    /// one `write` for them all.
    pub fn record_change(&self, change: &RecordChange<'_>) {
        let mut lines = Vec::new();
        for event in milestones(change.old, change.new) {
            let r = change.new;
            self.encode(
                AuditEvent {
                    kind: "transfer",
                    event,
                    request_id: Some(r.id.to_string()),
                    side: Some(match r.role {
                        Role::Requester => "requester",
                        Role::Requested => "requested",
                    }),
                    partner: Some(r.partner.clone()),
                    rule: Some(r.rule.clone()),
                    file: Some(r.file_name.clone()),
                    status: Some(format!("{:?}", r.status)),
                    bytes: Some(r.transferred),
                    error: r.error.as_ref().map(|e| format!("{:?}: {}", e.code, e.message)),
                    ..Default::default()
                },
                &mut lines,
            );
        }
        self.write(&lines);
    }
}

/// The milestones a write reached, in the order they happen: a new record
/// is `submitted` (this node asked) or `accepted` (a partner asked); then
/// `started`, `verified` (the whole-file hash matched), `delivered` (the
/// file is under its final name), and the status it ended in.
pub fn milestones(old: Option<&RequestRecord>, new: &RequestRecord) -> Vec<&'static str> {
    let mut events = Vec::new();
    let Some(old) = old else {
        events.push(match new.role {
            Role::Requester => "submitted",
            Role::Requested => "accepted",
        });
        return events;
    };
    if old.status != Status::Running && new.status == Status::Running {
        events.push("started");
    }
    if old.hash.is_none() && new.hash.is_some() {
        events.push("verified");
    }
    if !old.delivered && new.delivered {
        events.push("delivered");
    }
    if old.status != new.status {
        match new.status {
            Status::Done => events.push("done"),
            Status::Interrupted => events.push("interrupted"),
            Status::InError => events.push("failed"),
            Status::Cancelled => events.push("cancelled"),
            Status::ToSubmit | Status::Running => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn milestones_follow_the_record() {
        let id = crate::protocol::RequestId::generate();
        let mut rec = RequestRecord::new(id, Role::Requester, "b", "default", crate::protocol::Direction::Push, "f");
        assert_eq!(milestones(None, &rec), ["submitted"]);
        rec.role = Role::Requested;
        assert_eq!(milestones(None, &rec), ["accepted"]);
        let old = rec.clone();
        rec.status = Status::Running;
        assert_eq!(milestones(Some(&old), &rec), ["started"]);
        let old = rec.clone();
        rec.hash = Some(crate::protocol::Digest::of(b"x"));
        rec.delivered = true;
        assert_eq!(milestones(Some(&old), &rec), ["verified", "delivered"]);
        let old = rec.clone();
        rec.status = Status::Done;
        assert_eq!(milestones(Some(&old), &rec), ["done"]);
        assert!(milestones(Some(&rec), &rec).is_empty(), "an unchanged record reaches nothing");
        for (status, event) in
            [(Status::InError, "failed"), (Status::Cancelled, "cancelled"), (Status::Interrupted, "interrupted")]
        {
            let mut next = old.clone();
            next.status = status;
            assert_eq!(milestones(Some(&old), &next), [event]);
        }
    }

    #[test]
    fn lines_are_json_and_rotate_by_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit").join("audit.jsonl");
        let log = AuditLog::open("a", &path, 300, 2).expect("open");
        for i in 0..12 {
            log.record(AuditEvent { kind: "api", event: "call", path: Some(format!("/x/{i}")), ..Default::default() });
        }
        let current = lines(&path);
        assert!(!current.is_empty() && current.len() < 12, "rotated: {}", current.len());
        assert_eq!(current[0]["node"], "a");
        assert!(std::fs::metadata(&path).expect("meta").len() <= 300);
        let one = PathBuf::from(format!("{}.1", path.display()));
        let two = PathBuf::from(format!("{}.2", path.display()));
        assert!(one.exists() && two.exists(), "kept two rotated files");
        assert!(!PathBuf::from(format!("{}.3", path.display())).exists(), "no more than `keep`");
        // The newest line is the last of the current file.
        assert_eq!(current.last().expect("line")["path"], "/x/11");
    }
}
