//! The request lifecycle: every rule about a request's status, step and
//! task cursor, in one place and without I/O.
//!
//! The runners, the Commander and the operator commands never set a
//! status themselves: they call one of these functions inside a store
//! update, and the function decides. `lifecycle_tests.rs` checks every
//! transition without a node, the way `session_tests.rs` checks the wire
//! exchange.
//!
//! The shape of a request's life:
//! - status `ToSubmit → Running → Done`, or `Interrupted` (resumable),
//!   `InError` (stays until restarted) or `Cancelled`;
//! - step `PreTask → Transfer → PostTask → AllDone`; a failure that ends
//!   `InError` with error tasks to run moves to `ErrorTask` and keeps the
//!   failed step in `failed_step`, where a restart resumes;
//! - within `PreTask`, `PostTask` and `ErrorTask`, a cursor: the index of
//!   the next task to run, advanced after each task that succeeded.

use std::time::Duration;

use crate::config::RetryPolicy;
use crate::protocol::{Digest, ErrorCode, RequestId};
use crate::store::{RequestError, RequestRecord, Status, Step};

/// The status a failure leaves a request in: the single mapping from an
/// error code to `Interrupted`, `InError` or `Cancelled`.
///
/// `Interrupted` means "run it again": the link failed, the node stopped,
/// an operator paused it, or something unexpected happened locally
/// (`Internal`, which a retry may not meet again). Everything else is a
/// fact about the request (a refusal, bad data, a failed task) that a retry
/// would meet again, so it waits for an operator.
pub fn status_after(code: ErrorCode) -> Status {
    match code {
        ErrorCode::Cancelled => Status::Cancelled,
        ErrorCode::Connection | ErrorCode::Shutdown | ErrorCode::Stopped | ErrorCode::Internal => Status::Interrupted,
        _ => Status::InError,
    }
}

/// The refusal of anything a `Cancelled` record stands for (`what`: "set
/// ID", "request ID"), on node `node`, with the reason it was cancelled
/// (an operator's, a partner's, or the retention sweep's, naming its
/// setting).
pub fn cancelled_refusal(what: &str, rec: &RequestRecord, node: &str) -> (ErrorCode, String) {
    let why = rec.error.as_ref().map_or(String::new(), |e| format!(": {}", e.message));
    (ErrorCode::Cancelled, format!("{what} was cancelled on node {node}{why}"))
}

/// Whether a failure keeps the receiver's partial file for a resume.
pub fn keeps_partial_file(code: ErrorCode) -> bool {
    status_after(code) == Status::Interrupted
}

/// Whether an operator stopped the request (it waits for a restart).
pub fn is_stopped(r: &RequestRecord) -> bool {
    r.status == Status::Interrupted && r.error.as_ref().is_some_and(|e| e.code == ErrorCode::Stopped)
}

/// Records a failure: the status [`status_after`] decides, the cause, and
/// the end time of a final status. A request that is already `Done` or
/// `Cancelled` keeps that (a late failure of an overtaken run never
/// rewrites a final state); `None` then, else the new status.
///
/// A request that ends `InError` while error tasks are to run (`error_tasks`
/// > 0) moves to `ErrorTask` and remembers the step that failed.
pub fn fail(r: &mut RequestRecord, code: ErrorCode, message: &str, error_tasks: usize, now: u64) -> Option<Status> {
    if matches!(r.status, Status::Done | Status::Cancelled) {
        return None;
    }
    let status = status_after(code);
    r.status = status;
    r.error = Some(RequestError { code, message: message.to_owned() });
    if status != Status::Interrupted {
        r.finished_at = Some(now);
        r.retry_at = None;
    }
    if status == Status::InError && error_tasks > 0 && r.step != Step::ErrorTask {
        r.failed_step = Some(r.step);
        r.step = Step::ErrorTask;
        r.error_task_index = 0;
    }
    Some(status)
}

/// The Commander takes a queued request for attempt `attempt` (to
/// `member` of its group, if it moves). `false` if it is no longer queued.
pub fn take(r: &mut RequestRecord, attempt: u32, member: Option<&str>) -> bool {
    if r.status != Status::ToSubmit {
        return false;
    }
    r.status = Status::Running;
    r.attempts = attempt;
    r.retry_at = None;
    if let Some(m) = member {
        r.partner = m.to_owned();
    }
    true
}

/// The data phase starts (or starts again).
pub fn start_transfer(r: &mut RequestRecord, size: u64, restart_offset: u64, now: u64) {
    r.status = Status::Running;
    enter_step(r, Step::Transfer);
    r.size = size;
    r.restart_offset = restart_offset;
    r.transferred = restart_offset;
    r.started_at.get_or_insert(now);
}

/// Receiver: the file is verified and about to be delivered. Flushed
/// before the rename, so a crash in between finishes the rename.
pub fn verified(r: &mut RequestRecord, bytes: u64, hash: Digest) {
    r.hash = Some(hash);
    r.transferred = bytes;
    r.delivered = true;
    enter_step(r, Step::PostTask);
}

/// Receiver of a file set's file sent with `delivery = all`: the file is
/// verified and fsynced under its work name, and stays there (status
/// `Running`, step `Held`) until the sender releases the set. Flushed
/// before the echo, so a held file is never received twice.
pub fn held(r: &mut RequestRecord, bytes: u64, hash: Digest) {
    r.hash = Some(hash);
    r.transferred = bytes;
    r.delivered = false;
    r.status = Status::Running;
    enter_step(r, Step::Held);
}

/// Whether this node holds `r`'s verified file for its set's release
/// (`Interrupted` when the channel was lost after the file was held: the
/// file is durable all the same).
pub fn is_held(r: &RequestRecord) -> bool {
    r.role == crate::store::Role::Requested
        && matches!(r.status, Status::Running | Status::Interrupted)
        && r.step == Step::Held
}

/// Sender: the receiver confirmed the file; the sender's post-tasks follow.
pub fn confirmed(r: &mut RequestRecord) {
    enter_step(r, Step::PostTask);
}

/// Both sides finished: `Done` / `AllDone`, with the verified figures.
pub fn complete(r: &mut RequestRecord, end: Option<(u64, Digest)>, now: u64) {
    r.status = Status::Done;
    r.step = Step::AllDone;
    r.failed_step = None;
    if let Some((bytes, hash)) = end {
        r.transferred = bytes;
        r.hash = Some(hash);
    }
    r.finished_at = Some(now);
    r.error = None;
}

/// Moves to `step`; the task cursor starts at 0 when the step changes and
/// is kept when the request is already in it (a resume).
pub fn enter_step(r: &mut RequestRecord, step: Step) {
    if r.step != step {
        r.step = step;
        r.task_index = 0;
    }
}

/// The step in which a task list runs: a file set's set tasks run in its
/// own record's `PostTask` (a set has no per-file tasks of its own).
pub fn step_of(list: crate::tasks::TaskList) -> Step {
    use crate::tasks::TaskList;
    match list {
        TaskList::Pre => Step::PreTask,
        TaskList::Post | TaskList::Set => Step::PostTask,
        TaskList::Error => Step::ErrorTask,
    }
}

/// The index of the next task to run in the current step, if any of the
/// step's `len` tasks is left.
pub fn next_task(r: &RequestRecord, len: usize) -> Option<usize> {
    let i = if r.step == Step::ErrorTask { r.error_task_index } else { r.task_index } as usize;
    (i < len).then_some(i)
}

/// The task at the cursor succeeded: the cursor moves past it.
pub fn task_done(r: &mut RequestRecord) {
    if r.step == Step::ErrorTask {
        r.error_task_index += 1;
    } else {
        r.task_index += 1;
    }
}

/// Which way an operator command goes for a request in its current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandPath {
    /// The request runs: its runner carries the command out.
    ToRunner,
    /// The request does not run: the record changes directly.
    Record,
    /// The command does not apply in this state.
    Refused,
}

/// Whether `r` waits for its set's release, which alone decides it: a
/// set itself, or a file the requested node holds for its set. (A pulled
/// file its requester holds is the requester's own request, and takes
/// commands as any other.)
fn waits_for_release(r: &RequestRecord) -> bool {
    r.step == Step::Held && (r.set.is_some() || r.role == crate::store::Role::Requested)
}

/// How an operator `stop` applies.
pub fn stop_path(r: &RequestRecord) -> CommandPath {
    match r.status {
        // Nothing runs: the file waits for its set's release.
        _ if waits_for_release(r) => CommandPath::Refused,
        Status::Running => CommandPath::ToRunner,
        Status::ToSubmit | Status::Interrupted if !is_stopped(r) => CommandPath::Record,
        _ => CommandPath::Refused,
    }
}

/// How an operator `cancel` applies.
pub fn cancel_path(r: &RequestRecord) -> CommandPath {
    match r.status {
        _ if waits_for_release(r) => CommandPath::Refused,
        Status::Running => CommandPath::ToRunner,
        Status::ToSubmit | Status::Interrupted | Status::InError => CommandPath::Record,
        _ => CommandPath::Refused,
    }
}

/// Whether an operator `restart` applies.
pub fn can_restart(r: &RequestRecord) -> bool {
    matches!(r.status, Status::InError | Status::Interrupted)
}

/// Pauses a request that is not running.
pub fn stop(r: &mut RequestRecord, message: &str) {
    r.status = Status::Interrupted;
    r.retry_at = None;
    r.error = Some(RequestError { code: ErrorCode::Stopped, message: message.to_owned() });
}

/// Cancels a request that is not running.
pub fn cancel(r: &mut RequestRecord, reason: &str, now: u64) {
    r.status = Status::Cancelled;
    r.retry_at = None;
    r.finished_at = Some(now);
    r.error = Some(RequestError { code: ErrorCode::Cancelled, message: reason.to_owned() });
}

/// A file a set stream did not finish (the stream broke before the
/// receiver answered for it, the receiver's answer was a resumable
/// failure, or the file joined a stream that had ended) goes back to the
/// queue, to be sent again.
pub fn give_back(r: &mut RequestRecord) {
    r.status = Status::ToSubmit;
    r.retry_at = None;
    r.error = None;
    r.finished_at = None;
}

/// Puts a request back in the queue, at the step (and task) that failed:
/// tasks that succeeded before are not run again, and a delivered file is
/// not sent again.
pub fn restart(r: &mut RequestRecord) {
    r.status = Status::ToSubmit;
    r.attempts = 0;
    r.retry_at = None;
    r.error = None;
    r.finished_at = None;
    leave_error_step(r);
}

/// The requested side: the requester runs the request again (after its
/// own restart, retry or reschedule). Like [`restart`] on this side: back
/// from `ErrorTask` to the failed step, its task cursor kept.
pub fn run_again(r: &mut RequestRecord) {
    r.status = Status::Running;
    r.error = None;
    r.finished_at = None;
    leave_error_step(r);
}

fn leave_error_step(r: &mut RequestRecord) {
    if r.step == Step::ErrorTask {
        r.step = r.failed_step.take().unwrap_or(Step::PreTask);
        r.error_task_index = 0;
    }
}

/// A `reschedule` error task: the request runs again at `at` (unix ms),
/// from the step that failed, if it was rescheduled fewer than `limit`
/// times. The first cause stays in the record until it runs. Only a
/// requester reschedules (it is the side that runs a request).
pub fn reschedule(r: &mut RequestRecord, at: u64, limit: u32) -> Result<(), String> {
    if r.role != crate::store::Role::Requester {
        return Err("only the requester of a request can reschedule it".into());
    }
    if r.reschedules >= limit {
        return Err(format!("rescheduled {} times already, the limit", r.reschedules));
    }
    r.reschedules += 1;
    r.status = Status::Interrupted;
    r.attempts = 0;
    r.retry_at = Some(at);
    r.finished_at = None;
    leave_error_step(r);
    Ok(())
}

/// What the Commander does once a request's runner ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterRun {
    /// Nothing: the request ended for good, is stopped, or is not
    /// interrupted.
    Nothing,
    /// Queue it again after `delay` (retry number `retry` of `of`).
    RetryIn { delay: Duration, retry: u32, of: u32 },
    /// Queue it again at the time a `reschedule` task chose.
    RetryAt(u64),
    /// Its attempts are spent: `InError`, `RetriesExhausted`, with this message.
    GiveUp(String),
}

/// The retry decision for a request whose runner ended.
pub fn after_run(r: &RequestRecord, policy: &RetryPolicy, now: u64) -> AfterRun {
    if r.status != Status::Interrupted || is_stopped(r) {
        return AfterRun::Nothing;
    }
    if let Some(at) = r.retry_at {
        return AfterRun::RetryAt(at.max(now));
    }
    if r.attempts >= policy.attempts {
        let cause = r.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
        return AfterRun::GiveUp(format!("gave up after {} attempts; last cause: {cause}", r.attempts));
    }
    AfterRun::RetryIn { delay: policy.delay_after(r.attempts), retry: r.attempts + 1, of: policy.attempts }
}

/// Whether a retry that came due applies: the request is still
/// interrupted, and not stopped by an operator.
pub fn is_retry_due(r: &RequestRecord) -> bool {
    r.status == Status::Interrupted && !is_stopped(r)
}

/// A retry that is due: the request goes back to the queue.
pub fn retry_due(r: &mut RequestRecord) -> bool {
    if !is_retry_due(r) {
        return false;
    }
    r.status = Status::ToSubmit;
    r.retry_at = None;
    true
}

/// What a node does at start-up with a request its previous process left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing to change.
    Keep,
    /// Queue it again (this node runs it).
    Requeue,
    /// Mark it `Interrupted`: the partner runs it again.
    Interrupt,
}

/// The start-up decision for one record.
pub fn recovery(r: &RequestRecord) -> Recovery {
    use crate::store::Role;
    match (r.role, r.status) {
        // A file set's own record never runs: its members do, and the set
        // keeper counts it again at start-up.
        _ if r.set.is_some() => Recovery::Keep,
        (Role::Requester, Status::Running | Status::Interrupted) if is_stopped(r) => Recovery::Keep,
        (Role::Requester, Status::Running) => Recovery::Requeue,
        // A rescheduled request waits for its time, then is queued by
        // the retry the Commander schedules.
        (Role::Requester, Status::Interrupted) if r.retry_at.is_some() => Recovery::Keep,
        (Role::Requester, Status::Interrupted) => Recovery::Requeue,
        // A held file waits for its set's release (one already ordered is
        // finished at start-up by `set_release::finish_ordered`).
        (Role::Requested, Status::Running) if r.step == Step::Held => Recovery::Keep,
        (Role::Requested, Status::Running) => Recovery::Interrupt,
        _ => Recovery::Keep,
    }
}

/// The id of the request a `transfer` task (the `index`th of its step)
/// submits for request `id`: derived, so a task run again after a crash
/// finds the request it submitted instead of submitting a second one.
pub fn chained_id(id: &RequestId, step: Step, index: usize) -> RequestId {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry chained request\0");
    h.update(id.as_str().as_bytes());
    h.update(format!("\0{step:?}\0{index}").as_bytes());
    let hex = h.finalize().to_hex();
    RequestId::parse(&hex[..32]).expect("32 lowercase hex digits are a request id")
}

pub mod set;

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
