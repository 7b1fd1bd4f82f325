//! What the store keeps for each request: its record and its job log.

use serde::{Deserialize, Serialize};

pub use crate::protocol::TargetMode;
use crate::protocol::{Compression, Digest, Direction, ErrorCode, RequestId};

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Status {
    /// Queued for the Commander.
    ToSubmit,
    /// A runner is working on it.
    Running,
    /// Finished on both sides, file verified and delivered.
    Done,
    /// Stopped part-way (connection lost, node stopped, paused): resumable.
    Interrupted,
    /// A step failed; stays until an operator restarts it.
    InError,
    /// Cancelled by an operator or the partner.
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 6] =
        [Status::ToSubmit, Status::Running, Status::Done, Status::Interrupted, Status::InError, Status::Cancelled];

    /// Whether the request has ended for good (until an operator restarts it).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::InError | Status::Cancelled)
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| format!("{st:?}").eq_ignore_ascii_case(s))
    }
}

/// Which step of the request was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Step {
    PreTask,
    Transfer,
    PostTask,
    AllDone,
    ErrorTask,
    /// A file set's file sent with `delivery = all`: the receiver holds it
    /// verified under its work name until the set is released; a set
    /// whose files are all verified waits here for that release.
    Held,
}

/// This node's part in the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Role {
    Requester,
    Requested,
}

/// The cause of a failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

/// A receiver's restart point: the work file is fsynced up to `offset`, and
/// its first `offset` bytes hash to `prefix_hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPoint {
    pub offset: u64,
    pub prefix_hash: Digest,
}

/// One request as one node knows it. Both nodes hold one under the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: RequestId,
    pub role: Role,
    /// The other node's id.
    pub partner: String,
    pub rule: String,
    pub direction: Direction,
    pub file_name: String,
    pub block_size: u32,
    /// Per-block compression the requester asks for.
    pub compression: Compression,
    /// File size (for a pull, known once the sender answered).
    pub size: u64,
    /// Bytes confirmed so far (sent, or received and written).
    pub transferred: u64,
    /// Offset the current or last attempt started from.
    pub restart_offset: u64,
    pub status: Status,
    pub step: Step,
    /// Whole-file BLAKE3, once verified.
    pub hash: Option<Digest>,
    pub external_job_id: Option<String>,
    pub transfer_info: String,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub error: Option<RequestError>,
    /// Position in the submit queue while `ToSubmit` (store-internal index key).
    pub queue_seq: Option<u64>,
    /// Receiver: the last durable restart point of the work file.
    pub restart_point: Option<RestartPoint>,
    /// Receiver: the verified file was (or is being) renamed into place.
    /// Set, and flushed, before the rename, so a crash in between is
    /// finished on the next attempt instead of receiving the file again.
    pub delivered: bool,
    /// Requester: attempts started so far (reset by an operator restart).
    pub attempts: u32,
    /// Requester: when an interrupted request is due to be retried (unix ms).
    pub retry_at: Option<u64>,
    /// Requester: the group the request was addressed to; `partner` is the
    /// member chosen (kept once the member holds a partial file).
    pub group: Option<String>,
    /// Requester: the node whose API took the submission, when another
    /// node handed the request over (submit anywhere).
    pub submitted_on: Option<String>,
    // ---- schema 4: tasks and target modes ----
    /// The next task to run in the current step's task list on this side
    /// (pre-tasks in `PreTask`, post-tasks in `PostTask`); 0 when the step
    /// is entered, advanced (and stored) after each task succeeds.
    pub task_index: u32,
    /// While or after error tasks ran (`step` = `ErrorTask`): the step that
    /// failed, where a restart resumes.
    pub failed_step: Option<Step>,
    /// The next error task to run.
    pub error_task_index: u32,
    /// The name the request was submitted with, when a sender's pre-task
    /// renamed the file (`file_name` is then the new name).
    pub original_file_name: Option<String>,
    /// Where this node's file is now, when a task moved it (tasks that
    /// follow act on it there).
    pub local_path: Option<String>,
    /// How the receiver treats an existing target, if the request overrides
    /// the rule.
    pub target_mode: Option<TargetMode>,
    /// Receiver, `append` mode: the length of the target before the append,
    /// recorded (flushed) before the target is touched.
    pub append_base: Option<u64>,
    /// The request whose `transfer` task submitted this one.
    pub chained_from: Option<RequestId>,
    /// Requests this one's `transfer` tasks submitted.
    pub chained_to: Vec<RequestId>,
    /// Times a `reschedule` error task put the request back.
    pub reschedules: u32,
    // ---- schema 6: file sets ----
    /// A file set's own record (requester): the pattern, its policies and
    /// its totals. Its files are member records (see [`SetMember`]).
    pub set: Option<SetInfo>,
    /// A member of a file set (requester): which set, which entry.
    pub member_of: Option<SetMember>,
}

/// The leading fields of a stored [`RequestRecord`], decoded without the
/// rest: a pass over every record (start-up's) that needs only these reads
/// a fraction of each. The fields are [`RequestRecord`]'s first, in its
/// order (bincode decodes by position); a unit test holds them to it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RecordHead {
    pub id: RequestId,
    pub role: Role,
    pub partner: String,
    pub rule: String,
    pub direction: Direction,
    pub file_name: String,
    pub block_size: u32,
    pub compression: Compression,
    pub size: u64,
    pub transferred: u64,
    pub restart_offset: u64,
    pub status: Status,
}

/// What a file set's record holds besides the common fields: the pattern
/// it was resolved from, its policies, and its totals, kept up to date as
/// its members end (`lifecycle::set`). Its `size` is the sum of its files'
/// sizes and its `transferred` the bytes of its delivered files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetInfo {
    /// The pattern (or, for a list, the paths joined by a newline).
    pub pattern: String,
    pub policy: crate::fileset::progress::Policy,
    /// Entries resolved (files); members are numbered `0..files`.
    pub files: u32,
    pub done: u32,
    pub failed: u32,
    /// Never sent: the set stopped first (`on_failure = stop`).
    pub skipped: u32,
}

/// A member's place in its set, with what the sender saw at resolution:
/// a file whose size or modification time differs when it is sent fails
/// with `SourceChanged`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMember {
    pub set: RequestId,
    pub index: u32,
    /// Nanoseconds since the Unix epoch, as resolved.
    pub modified_ns: u128,
}

impl RequestRecord {
    /// A new record in `ToSubmit`/`PreTask`, created now, with nothing
    /// transferred; callers set the rest with struct-update syntax.
    pub fn new(id: RequestId, role: Role, partner: &str, rule: &str, direction: Direction, file_name: &str) -> Self {
        let now = now_ms();
        RequestRecord {
            id,
            role,
            partner: partner.to_owned(),
            rule: rule.to_owned(),
            direction,
            file_name: file_name.to_owned(),
            block_size: crate::protocol::DEFAULT_BLOCK_SIZE,
            compression: Compression::None,
            size: 0,
            transferred: 0,
            restart_offset: 0,
            status: Status::ToSubmit,
            step: Step::PreTask,
            hash: None,
            external_job_id: None,
            transfer_info: String::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            error: None,
            queue_seq: None,
            restart_point: None,
            delivered: false,
            attempts: 0,
            retry_at: None,
            group: None,
            submitted_on: None,
            task_index: 0,
            failed_step: None,
            error_task_index: 0,
            original_file_name: None,
            local_path: None,
            target_mode: None,
            append_base: None,
            chained_from: None,
            chained_to: Vec::new(),
            reschedules: 0,
            set: None,
            member_of: None,
        }
    }

    /// The name the request was submitted with.
    pub fn requested_name(&self) -> &str {
        self.original_file_name.as_deref().unwrap_or(&self.file_name)
    }

    /// Whether this node sends the file.
    pub fn is_sender(&self) -> bool {
        matches!((self.role, self.direction), (Role::Requester, Direction::Push) | (Role::Requested, Direction::Pull))
    }
}

/// One line of a request's job log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub at: u64,
    pub status: Status,
    pub step: Step,
    pub message: String,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it); the
/// simulated clock under a simulation.
pub fn now_ms() -> u64 {
    crate::determinism::now_ms()
}
