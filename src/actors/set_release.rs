//! A file set's release: the end of every set whose files all arrived,
//! which puts held files in place (`delivery = all`) and runs the set
//! tasks once on each node.
//!
//! When every file of a set is delivered, or verified and held, the
//! requester's set waits in step `Held` (`lifecycle::set::settle`), and the
//! [`Releaser`] asks the partner to `Release` it. The partner renames every
//! held file ([`release_held`]; a set sent with `delivery = each` holds
//! none), runs its rule's set tasks ([`run_received_set_tasks`]) and
//! answers `Released`; then the requester runs its own set tasks, and only
//! then is the set `Done`.
//!
//! `delivery = all` (pushes): each file is sent with `hold` set in its
//! request; the receiver verifies it, fsyncs it under its work name,
//! records it `Running`/`Held` (flushed) and confirms it, without renaming
//! it.
//!
//! `delivery = all` (pulls): the requester is the receiver. Each file is
//! verified, fsynced under its work name and recorded `Done` without being
//! delivered (`delivered` false, flushed); the set is then `Held` like a
//! pushed one. Before it asks the partner to release the set, the
//! requester puts its own held files in place ([`release_own_held`]), in
//! the same durable order as the asked node's steps 1–3 below; a crash in
//! the middle leaves the set `Held`, and the releaser finishes the renames
//! at the next start before it asks.
//!
//! Durable order on the asked node, for one `Release`:
//! 1. every file of the set is checked (present, from this partner, held
//!    or already delivered; a `create` target that appeared refuses the
//!    release) before anything changes;
//! 2. each held file is recorded as released (`delivered`, with the base
//!    of an append), then one flush: the release is now ordered;
//! 3. each file is renamed into place (its folders made, each rename's
//!    folder fsynced) and recorded `Done`; one flush at the end;
//! 4. its record of the set is written (`Running`/`PostTask`, flushed), the
//!    set tasks run (each task's cursor flushed after it), the record is
//!    flushed `Done`, and only then is the ask answered.
//!
//! A crash during 3 leaves ordered files not yet renamed: start-up
//! finishes them ([`finish_ordered`]) before the node serves, and a
//! `Release` asked again finishes them too (a delivery is idempotent: a
//! missing work file of a file whose release was ordered is a rename that
//! happened: a release is ordered only while the work file is there).
//! A crash during 4 runs the set tasks on from the cursor when the
//! requester asks again. The requester asks again until it gets an
//! answer, so a set is `Done` on the requester only after every file is
//! under its final name and both nodes' set tasks ran.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::channel_run::{delivery_for, refuse_existing_target, target_mode};
use super::context::{Core, Intake};
use super::{task_runner, AUDIT};
use crate::fileset::progress::Policy;
use crate::lifecycle;
use crate::protocol::control::{Answer, Ask};
use crate::protocol::names::is_folder_entry;
use crate::protocol::{Direction, ErrorCode, RequestId};
use crate::store::{member_id, now_ms, RequestRecord, Role, SetMember, Status, Store, StoreError, TargetMode};
use crate::tasks::TaskList;
use crate::transfer::receive;

/// How long the sender waits for a `Release` answer: the receiver renames
/// every file of the set (and fsyncs their folders) before it answers.
pub const RELEASE_LIMIT: Duration = Duration::from_secs(600);

/// Waits between asks while the receiver cannot be reached, doubling.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// One control exchange with a partner (connecting if needed), as the
/// node provides it: the releaser's only way out.
pub type Asker = Arc<dyn Fn(String, Ask, Duration) -> BoxFuture<'static, Result<Answer, String>> + Send + Sync>;

type Refusal = (ErrorCode, String);

fn internal(e: impl std::fmt::Display) -> Refusal {
    (ErrorCode::Internal, e.to_string())
}

/// Checks a `Release`'s `pattern` before anything else is done: it only
/// names the set (in its record and as its set tasks'
/// `#ORIGINALFILENAME#`), so it must be short text.
pub fn check_release_pattern(pattern: &str) -> Result<(), Refusal> {
    if pattern.len() > crate::fileset::SHOWN_PATTERN_BYTES + 64 || pattern.contains('\0') {
        return Err((
            ErrorCode::Protocol,
            format!(
                "a Release names its set in at most {} bytes of text ({} given)",
                crate::fileset::SHOWN_PATTERN_BYTES,
                pattern.len()
            ),
        ));
    }
    Ok(())
}

/// The asked node's side of `Release { set, files, .. }` from `partner`:
/// puts every held file of the set under its final name (see the module
/// doc for the order). Returns what it found and did. Blocking.
pub fn release_held(core: &Core, partner: &str, set: &RequestId, files: u32) -> Result<ReleasedFiles, Refusal> {
    let me = &core.config.node_id;
    if files as usize > crate::fileset::MAX_ENTRIES {
        return Err((ErrorCode::Protocol, format!("a set of {files} files is larger than any set may be")));
    }
    let store = &core.store;
    // The set's own record here, if a stream or an earlier release made
    // it, is this partner's and has this many files: a Release cannot
    // order another partner's set, or a set released short (a start-up
    // walks the members of every set whose release was ordered).
    if let Some(r) = store.get(set).map_err(internal)? {
        let Some(info) = r.set.as_ref().filter(|_| r.partner == partner && r.role == Role::Requested) else {
            return Err((ErrorCode::Protocol, format!("request {set} on node {me} is not a file set from {partner}")));
        };
        if info.files != files {
            return Err((
                ErrorCode::Protocol,
                format!("set {set} has {} files on node {me}; this Release names {files}", info.files),
            ));
        }
        if r.status == Status::Cancelled {
            return Err(lifecycle::cancelled_refusal(&format!("set {set}"), &r, me));
        }
    }
    // 1. Checked whole before anything changes.
    let mut ordered = Vec::new();
    let (mut rule, mut bytes, mut direction) = (None, 0u64, Direction::Push);
    for i in 0..files {
        let id = member_id(set, i);
        let rec = store.get(&id).map_err(internal)?.ok_or_else(|| {
            (
                ErrorCode::Protocol,
                format!("file {i} of set {set} was never received by node {me}; nothing was released"),
            )
        })?;
        if rec.partner != partner || rec.role != Role::Requested {
            return Err((ErrorCode::Protocol, format!("request {id} belongs to another request")));
        }
        match &rule {
            None => (rule, direction) = (Some(rec.rule.clone()), rec.direction),
            Some(r) if *r != rec.rule || rec.direction != direction => {
                return Err((
                    ErrorCode::Protocol,
                    format!("the files of set {set} came under more than one rule or direction"),
                ))
            }
            Some(_) => {}
        }
        bytes = bytes.saturating_add(rec.size);
        if rec.status == Status::Done {
            continue; // released before
        }
        if !lifecycle::is_held(&rec) {
            return Err((
                ErrorCode::Protocol,
                format!(
                    "{:?} (file {i} of set {set}) is not held by node {me}: it is {:?} in step {:?}; nothing was released",
                    rec.file_name, rec.status, rec.step
                ),
            ));
        }
        if !rec.delivered && !is_folder_entry(&rec.file_name) {
            let dir = recv_dir(core, &rec)?;
            if !receive::work_path(&dir, &rec.id).exists() {
                // Held, not released yet: its bytes are only there.
                return Err((
                    ErrorCode::FileNotFound,
                    format!(
                        "{:?} (file {i} of set {set}) is recorded held on node {me} but its work file is gone; \
                         nothing was released",
                        rec.file_name
                    ),
                ));
            }
            let target = receive::target_path(&dir, &rec.file_name, false)?;
            refuse_existing_target(core, target_mode(core, &rec), &target)?;
        }
        ordered.push(rec);
    }
    // 2. The release is ordered, durably, before the first rename (and a
    // set streamed here says so, for `finish_ordered`).
    // (A set whose files all came one request each has no record here yet.)
    // A set its sender had ended in error runs again: the sender restarted
    // it and its files are all in.
    let orderable = |r: &RequestRecord| lifecycle::set::is_streamed_here(r) || lifecycle::set::is_ended_by_sender(r);
    let ordered_here = store.update_if(set, "its release is ordered", orderable, |r| {
        lifecycle::set::reopen(r);
        lifecycle::set::release_ordered(r);
    });
    match ordered_here {
        Ok(Some(_)) | Err(StoreError::NotFound(_)) => {}
        Ok(None) => {
            // Released before (nothing is left to order), or ended since
            // the check above: a cancelled set orders nothing.
            if let Some(r) = store.get(set).map_err(internal)?.filter(|r| r.status == Status::Cancelled) {
                return Err(lifecycle::cancelled_refusal(&format!("set {set}"), &r, me));
            }
        }
        Err(e) => return Err(internal(e)),
    }
    for rec in &mut ordered {
        if rec.delivered {
            continue; // ordered by an earlier ask that a crash cut short
        }
        let append_base = append_base(core, rec)?;
        let line = "released with its set: delivering";
        let written = store
            .update_if(&rec.id, line, lifecycle::is_held, |r| {
                r.delivered = true;
                r.append_base = append_base;
            })
            .map_err(internal)?;
        *rec = written.ok_or_else(|| {
            (
                ErrorCode::Protocol,
                format!("{:?} changed while its set was released; nothing was renamed", rec.file_name),
            )
        })?;
    }
    store.flush_blocking().map_err(internal)?;
    // 3. Renamed into place, each recorded Done. The release is ordered:
    // a file that cannot go in place does not stop the others; the first
    // such failure is answered after all were tried (asked again, the
    // release finishes what is left).
    let count = u32::try_from(ordered.len()).unwrap_or(u32::MAX);
    let mut first_failure = None;
    for rec in &ordered {
        if let Err(f) = deliver_released(core, rec) {
            first_failure.get_or_insert(f);
        }
    }
    store.flush_blocking().map_err(internal)?;
    if let Some(f) = first_failure {
        return Err(f);
    }
    tracing::info!(target: AUDIT, event = "released", request_id = %set, partner = %partner, files, delivered = count);
    Ok(ReleasedFiles { delivered: count, rule, bytes, direction })
}

/// Whether `set` is a pulled set sent with `delivery = all`: this node,
/// its requester, holds the verified files until the release.
pub fn holds_own_files(set: &RequestRecord) -> bool {
    set.role == Role::Requester && set.direction == Direction::Pull && lifecycle::set::holds_files(set)
}

/// Whether `rec`, a file of a pulled `delivery = all` set, is verified
/// and held here under its work name.
pub fn is_own_held(rec: &RequestRecord) -> bool {
    rec.role == Role::Requester && rec.direction == Direction::Pull && rec.status == Status::Done && !rec.delivered
}

/// The requester's side of a pulled `delivery = all` set's release: puts
/// every file it holds under its final name (blocking). Checked whole
/// first (every file `Done`; a `create` target that appeared refuses the
/// release and nothing changes); then every held file is recorded as
/// released (`delivered`, with the base of an append) and flushed; then
/// each is renamed into place (its folders made, each rename's folder
/// fsynced) and one flush ends it. Idempotent: asked again after a crash,
/// it renames what the crash left under a work name. Returns the files it
/// renamed.
pub fn release_own_held(core: &Core, set: &RequestRecord) -> Result<u32, Refusal> {
    let store = &core.store;
    let files = set.set.as_ref().map_or(0, |i| i.files);
    let mut members = Vec::with_capacity(files.min(4096) as usize);
    // 1. Checked whole before anything changes.
    for i in 0..files {
        let id = member_id(&set.id, i);
        let rec = store
            .get(&id)
            .map_err(internal)?
            .ok_or_else(|| (ErrorCode::Internal, format!("file {i} of set {} has no record", set.id)))?;
        if rec.status != Status::Done || rec.role != Role::Requester || rec.direction != Direction::Pull {
            return Err((
                ErrorCode::Internal,
                format!(
                    "{:?} (file {i} of set {}) is {:?}, not received; nothing was released",
                    rec.file_name, set.id, rec.status
                ),
            ));
        }
        if !rec.delivered && !is_folder_entry(&rec.file_name) {
            let target = receive::target_path(&recv_dir(core, &rec)?, &rec.file_name, false)?;
            refuse_existing_target(core, target_mode(core, &rec), &target)?;
        }
        members.push(rec);
    }
    // 2. The release is ordered, durably, before the first rename.
    let mut first_failure = None;
    for rec in members.iter_mut().filter(|r| !r.delivered) {
        let append_base = append_base(core, rec)?;
        let written = store
            .update_if(&rec.id, "released with its set: delivering", is_own_held, |r| {
                r.delivered = true;
                r.append_base = append_base;
            })
            .map_err(internal)?;
        match written {
            Some(r) => *rec = r,
            None => {
                // Changed meanwhile (an operator cancelled the set and
                // discarded it): nothing more is ordered; what already was
                // is finished below, as a release the receiver of a push
                // recorded is finished (docs/FILESETS.md).
                first_failure =
                    Some((ErrorCode::Cancelled, format!("{:?} changed while its set was released", rec.file_name)));
                break;
            }
        }
    }
    store.flush_blocking().map_err(internal)?;
    // 3. Each ordered file still under its work name goes in place (a file
    // renamed before a crash is there no more, and its target is).
    let mut renamed = 0u32;
    for rec in members.iter().filter(|r| r.delivered) {
        let dir = recv_dir(core, rec)?;
        let work = receive::work_path(&dir, &rec.id);
        let folder = is_folder_entry(&rec.file_name);
        if !folder && !work.exists() {
            let target = receive::target_path(&dir, &rec.file_name, false)?;
            if !target.exists() {
                first_failure.get_or_insert((
                    ErrorCode::FileNotFound,
                    format!("{:?} is neither held under its work name nor in place", rec.file_name),
                ));
            }
            continue;
        }
        let put = receive::target_path(&dir, &rec.file_name, true).and_then(|target| {
            let line = if folder {
                receive::discard(&work);
                format!("folder {} made", target.display())
            } else {
                receive::deliver_as(&work, &target, &delivery_for(core, rec, &target))?
            };
            Ok((line, target))
        });
        match put {
            Ok((line, target)) => {
                renamed += 1;
                let _ = store.log(&rec.id, &line);
                tracing::info!(target: AUDIT, event = "delivered", request_id = %rec.id, partner = %rec.partner, path = %target.display());
            }
            Err(f) => {
                first_failure.get_or_insert(f);
            }
        }
    }
    store.flush_blocking().map_err(internal)?;
    match first_failure {
        Some(f) => Err(f),
        None => Ok(renamed),
    }
}

/// What [`release_held`] found and did.
#[derive(Debug)]
pub struct ReleasedFiles {
    /// Files this call put under their final names.
    pub delivered: u32,
    /// The rule the set's files came under (`None`: a set of no files).
    pub rule: Option<String>,
    /// The bytes of the set's files.
    pub bytes: u64,
    /// Whether the set was pushed to this node or pulled from it.
    pub direction: Direction,
}

/// Where an `append` delivery of `rec` starts: the target's length now,
/// recorded with the release before the target is touched (`None` for the
/// other target modes).
fn append_base(core: &Core, rec: &RequestRecord) -> Result<Option<u64>, Refusal> {
    Ok(match target_mode(core, rec) {
        TargetMode::Append => {
            let target = receive::target_path(&recv_dir(core, rec)?, &rec.file_name, false)?;
            Some(std::fs::metadata(&target).map_or(0, |m| m.len()))
        }
        _ => None,
    })
}

fn recv_dir(core: &Core, rec: &RequestRecord) -> Result<std::path::PathBuf, Refusal> {
    let rule = core.config.rule(&rec.rule).ok_or_else(|| {
        (ErrorCode::UnknownRule, format!("rule {:?} does not exist on node {}", rec.rule, core.config.node_id))
    })?;
    Ok(rule.recv_dir_for(&rec.partner))
}

/// Puts one released (ordered) file under its final name and records it
/// `Done`. Idempotent: a file renamed before a crash is only recorded.
fn deliver_released(core: &Core, rec: &RequestRecord) -> Result<(), Refusal> {
    let dir = recv_dir(core, rec)?;
    let work = receive::work_path(&dir, &rec.id);
    let target = receive::target_path(&dir, &rec.file_name, true)?;
    let line = if is_folder_entry(&rec.file_name) {
        receive::discard(&work);
        format!("folder {} made", target.display())
    } else if work.exists() {
        receive::deliver_as(&work, &target, &delivery_for(core, rec, &target))?
    } else {
        // Its release was ordered only while its work file was there
        // (`release_held` checks it first): gone now, it was renamed (and
        // may have been taken from its place since).
        format!("{} was delivered before", target.display())
    };
    let end = rec.hash.map(|h| (rec.transferred, h));
    core.store
        .update_if(&rec.id, &line, |r| lifecycle::is_held(r) && r.delivered, |r| lifecycle::complete(r, end, now_ms()))
        .map_err(internal)?;
    tracing::info!(target: AUDIT, event = "delivered", request_id = %rec.id, partner = %rec.partner, path = %target.display());
    Ok(())
}

/// Start-up, before the node serves: the files whose release was ordered
/// (recorded) but not finished before a crash go under their final names.
/// They are found through the status index, and through the members of
/// each set streamed here whose release was ordered (a set stream's files
/// are members from the start, not listed on their own).
pub fn finish_ordered(core: &Core) -> Result<usize, StoreError> {
    let mut finished = 0;
    let mut finish = |rec: &RequestRecord| {
        if lifecycle::is_held(rec) && rec.delivered {
            match deliver_released(core, rec) {
                Ok(()) => finished += 1,
                Err((code, message)) => {
                    tracing::error!(request_id = %rec.id, %code, %message, "cannot finish a released file")
                }
            }
        }
    };
    let mut streamed = Vec::new();
    core.store.for_each_with_status(&[Status::Running, Status::Interrupted], |rec| {
        if lifecycle::set::is_release_ordered_here(&rec) {
            streamed.push((rec.id.clone(), rec.set.as_ref().map_or(0, |i| i.files)));
        }
        finish(&rec);
        Ok(())
    })?;
    for (set, files) in streamed {
        for index in 0..files {
            if let Some(rec) = core.store.get(&member_id(&set, index))? {
                finish(&rec);
            }
        }
    }
    if finished > 0 {
        core.store.flush_blocking()?;
    }
    Ok(finished)
}

/// Sets whose set tasks run now on some node of this process, by node id:
/// a second ask for the same set (the sender's wait ran out while a long
/// task ran) is answered "ask again" instead of running them twice at once.
static RUNNING_SET_TASKS: std::sync::LazyLock<Mutex<HashSet<(String, RequestId)>>> =
    std::sync::LazyLock::new(Mutex::default);

/// One set's place in [`RUNNING_SET_TASKS`], given back when dropped (also
/// when the ask's future is dropped mid-task).
struct RunningSetTasks((String, RequestId));

impl RunningSetTasks {
    fn take(node: &str, set: &RequestId) -> Option<RunningSetTasks> {
        let key = (node.to_owned(), set.clone());
        let inserted = RUNNING_SET_TASKS.lock().expect("the set is only held to insert or remove").insert(key.clone());
        // Made only once the lock is let go: a place not taken must not be
        // built (and dropped) under the lock its drop takes.
        inserted.then(|| RunningSetTasks(key))
    }
}

impl Drop for RunningSetTasks {
    fn drop(&mut self) {
        RUNNING_SET_TASKS.lock().expect("the set is only held to insert or remove").remove(&self.0);
    }
}

/// The asked node's side of a release, once [`release_held`] put every
/// file in place: its own record of the set (made at the first ask) runs
/// its side's set tasks once (the receiver's for a push, the sender's for
/// a pull), from their cursor.
///
/// Durable order: the record is written `Running`/`PostTask` and flushed
/// before the first set task; each task's cursor is flushed after it
/// (`task_runner`); `Done` is flushed before the answer. After a crash the
/// sender asks again and the tasks run on from the cursor (the task the
/// crash cut short runs again: at least once, like every task). A failed
/// set task ends the record `InError` there and is answered as the refusal;
/// the sender's operator restart asks again and the tasks run on from it.
pub async fn run_received_set_tasks(
    intake: &Intake,
    partner: &str,
    set: &RequestId,
    pattern: &str,
    files: u32,
    released: &ReleasedFiles,
) -> Result<(), Refusal> {
    let Some(rule) = &released.rule else { return Ok(()) }; // a set of no files
    let me = intake.core.config.node_id.as_str();
    let Some(_running) = RunningSetTasks::take(me, set) else {
        return Err((ErrorCode::Internal, format!("the set tasks of set {set} are running already; ask again")));
    };
    let store = &intake.core.store;
    let bytes = released.bytes;
    let line = format!("set of {files} files from {partner}: every file is in place; its set tasks run");
    let mark = match store.get(set).map_err(internal)? {
        None => {
            let info = (files, pattern, Policy::default());
            let mut rec = lifecycle::set::received_set(set.clone(), partner, rule, released.direction, info, now_ms());
            lifecycle::set::received_whole(&mut rec, files, bytes, pattern);
            store.insert(rec, &line).map_err(internal)?;
            true
        }
        Some(r) if r.role != Role::Requested || r.partner != partner || r.set.is_none() => {
            return Err((ErrorCode::Protocol, format!("request {set} on node {me} is not a file set from {partner}")));
        }
        Some(r) if r.status == Status::Done => return Ok(()),
        Some(r) if lifecycle::set::is_streamed_here(&r) => {
            // Made by the set's stream: every file is in place now, so its
            // totals are final and its set tasks run.
            store
                .update_if(set, &line, lifecycle::set::is_streamed_here, |r| {
                    lifecycle::set::received_whole(r, files, bytes, pattern);
                })
                .map_err(internal)?;
            true
        }
        Some(r) if r.status == Status::InError => {
            let line = "asked again: its set tasks run on from the one that failed";
            store
                .update_if(set, line, lifecycle::set::can_release_again, |r| {
                    lifecycle::set::release_again(r);
                })
                .map_err(internal)?;
            false
        }
        // Running them was cut short (a crash, a lost answer): so may the
        // marking below have been.
        Some(_) => true,
    };
    if mark {
        // Its files are its members (the streamed ones were from the
        // start): listed through the set, and pruned with it (retention),
        // as on the requester. Marking again marks only what is left.
        let (marking, id) = (store.clone(), set.clone());
        crate::determinism::blocking(move || mark_members(&marking, &id, files))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        store.flush().await.map_err(internal)?;
    }
    let ran = task_runner::run_tasks(intake, set, TaskList::Set).await;
    end_set_tasks(store, set, ran).await
}

/// Marks the asked node's records of a released set's files as its
/// members (those recorded one request each, before it knew the set; a
/// set stream's files are its members from the start).
fn mark_members(store: &Store, set: &RequestId, files: u32) -> Result<(), StoreError> {
    for index in 0..files {
        let member = SetMember { set: set.clone(), index, modified_ns: 0 };
        store.update_if(
            &member_id(set, index),
            "",
            |r| r.member_of.is_none(),
            |r| r.member_of = Some(member.clone()),
        )?;
    }
    Ok(())
}

/// Records how a set's set tasks ended (`Done`, or `InError` at the task
/// that failed; a shutdown leaves them to run on) and flushes it.
async fn end_set_tasks(store: &Store, set: &RequestId, ran: Result<(), Refusal>) -> Result<(), Refusal> {
    end_set_tasks_written(store, set, ran).await.0
}

/// [`end_set_tasks`], also saying whether the end was written (not for a
/// shutdown, a store that cannot be written, or a set that no longer ran
/// its set tasks: cancelled meanwhile).
async fn end_set_tasks_written(
    store: &Store,
    set: &RequestId,
    ran: Result<(), Refusal>,
) -> (Result<(), Refusal>, bool) {
    let now = now_ms();
    let written = match &ran {
        Err((ErrorCode::Shutdown, _)) => return (ran, false),
        Ok(()) => store.update_if(set, "every set task ran", lifecycle::set::runs_set_tasks, |r| {
            lifecycle::set::set_tasks_ran(r, now);
        }),
        Err((code, message)) => store.update_if(set, "", lifecycle::set::runs_set_tasks, |r| {
            lifecycle::set::set_task_failed(r, *code, message, now);
        }),
    };
    match written {
        Ok(Some(r)) => {
            if let Err(e) = store.flush().await {
                return (Err(internal(e)), false);
            }
            let files = r.set.as_ref().map_or(0, |i| i.files);
            tracing::info!(target: AUDIT, event = "finished", request_id = %set, partner = %r.partner, status = ?r.status, files);
            (ran, true)
        }
        Ok(None) => (ran, false),
        Err(e) => (Err(internal(e)), false),
    }
}

/// Runs this node's set tasks of a released set, from its cursor (the node
/// gives `task_runner::run_tasks` with `TaskList::Set`): the releaser's
/// only way to tasks.
pub type SetTaskRunner = Arc<dyn Fn(RequestId) -> BoxFuture<'static, Result<(), Refusal>> + Send + Sync>;

/// Whether the sender's releaser acts on `r`: a set of its own waiting for
/// its release or running its set tasks.
fn releaser_acts_on(r: &RequestRecord) -> bool {
    r.role == Role::Requester && (lifecycle::set::awaits_release(r) || lifecycle::set::runs_set_tasks(r))
}

/// The requester's side: asks the partner to release each set that waits
/// for it, until it is answered, then runs its own side's set tasks.
/// Sets come from a store observer (a set entering step `Held`, or its set
/// tasks again after an operator restart, whoever wrote it) and from
/// start-up.
pub struct Releaser;

impl Releaser {
    /// Follows the store, and asks for the sets found waiting at start-up
    /// (read after the observer is in place, so none is missed; one seen
    /// twice is asked for once).
    pub fn start(core: Core, asker: Asker, runner: SetTaskRunner) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let store = &core.store;
        let (tx, mut rx) = mpsc::unbounded_channel::<RequestId>();
        let observed = tx.clone();
        store.observe(Arc::new(move |change| {
            let was = change.old.is_some_and(releaser_acts_on);
            if releaser_acts_on(change.new) && !was {
                let _ = observed.send(change.new.id.clone());
            }
        }));
        for id in waiting_sets(store)? {
            let _ = tx.send(id);
        }
        let again = tx.clone();
        let asking: Arc<Mutex<HashSet<RequestId>>> = Arc::default();
        Ok(tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                if !asking.lock().expect("the set is only held to insert or remove").insert(id.clone()) {
                    continue; // already being asked for
                }
                let (core, asker, runner, asking, again) =
                    (core.clone(), asker.clone(), runner.clone(), asking.clone(), again.clone());
                tokio::spawn(async move {
                    let paused = release(&core, &asker, &runner, &id).await;
                    let store = &core.store;
                    asking.lock().expect("the set is only held to insert or remove").remove(&id);
                    // A change the observer sent while this ran (an operator
                    // restart just after the set ended) was dropped above:
                    // read again, and go on if there is work.
                    if !paused && store.get(&id).ok().flatten().is_some_and(|r| releaser_acts_on(&r)) {
                        let _ = again.send(id);
                    }
                });
            }
        }))
    }
}

/// Every set waiting for its release or running its set tasks (start-up),
/// through the status index.
fn waiting_sets(store: &Store) -> Result<Vec<RequestId>, StoreError> {
    let mut out = Vec::new();
    store.for_each_with_status(&[Status::Running], |r| {
        if releaser_acts_on(&r) {
            out.push(r.id);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Asks for one set's release until it is answered (or the set no longer
/// waits: cancelled meanwhile), then runs its set tasks.
/// Returns whether it left the set to the next start (a shutdown, a set
/// task that failed, a store that cannot be read or written), rather than
/// because the set ended or left the steps this task acts on.
async fn release(core: &Core, asker: &Asker, runner: &SetTaskRunner, id: &RequestId) -> bool {
    let (store, config) = (&core.store, &core.config);
    let mut wait = FIRST_WAIT;
    loop {
        let set = match store.get(id) {
            Ok(Some(s)) if lifecycle::set::awaits_release(&s) => s,
            Ok(Some(s)) if lifecycle::set::runs_set_tasks(&s) => {
                // A shutdown leaves them to run on at the next start.
                // Not ended (a shutdown, a store that cannot be written,
                // a cancel): left to the next start.
                let (_, ended) = end_set_tasks_written(store, id, runner(id.clone()).await).await;
                return !ended;
            }
            Ok(_) => return false,
            Err(e) => {
                tracing::error!(request_id = %id, error = %e, "cannot read the file set to release");
                return true; // not asked again until the next start
            }
        };
        if holds_own_files(&set) {
            // A pulled `delivery = all` set: this node's held files go in
            // place first (again after a crash: idempotent).
            let (own, held) = (core.clone(), set.clone());
            match crate::determinism::blocking(move || release_own_held(&own, &held)).await {
                Ok(Ok(n)) => {
                    if n > 0 {
                        let _ = store.log(id, &format!("{n} of its entries put under their final names on this node"));
                    }
                }
                Ok(Err((code, message))) if code != ErrorCode::Internal => {
                    let message = format!("cannot put the set's files in place: {message}");
                    let now = now_ms();
                    let written = store.update_if(id, &message, lifecycle::set::awaits_release, |r| {
                        lifecycle::set::release_refused(r, code, &message, now);
                    });
                    if let Err(e) =
                        store.flush().await.map_err(|e| e.to_string()).and(written.map_err(|e| e.to_string()))
                    {
                        tracing::error!(request_id = %id, error = %e, "cannot record the set's failed release");
                    }
                    return false;
                }
                other => {
                    let why = match other {
                        Ok(Err((_, message))) => message,
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    tracing::warn!(request_id = %id, error = %why, wait_ms = wait.as_millis() as u64, "cannot put the set's files in place yet; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LONGEST_WAIT);
                    continue;
                }
            }
        }
        let (files, pattern) =
            set.set.as_ref().map_or((0, String::new()), |i| (i.files, crate::fileset::shown_pattern(&i.pattern)));
        let ask = Ask::Release { set: id.clone(), files, pattern };
        let outcome = asker(set.partner.clone(), ask, RELEASE_LIMIT).await;
        let now = now_ms();
        let set_tasks = config.rule(&set.rule).is_some_and(|r| !task_runner::side(r, &set).set_tasks.is_empty());
        let written = match outcome {
            Ok(Answer::Released { delivered }) => {
                let line = format!(
                    "{} put every file under its final name ({delivered} by this release) and ran its set tasks",
                    set.partner
                );
                store.update_if(id, &line, lifecycle::set::awaits_release, |r| {
                    lifecycle::set::released(r, now, set_tasks);
                })
            }
            Ok(Answer::Refused { code, message })
                if !matches!(code, ErrorCode::Connection | ErrorCode::Shutdown | ErrorCode::Internal) =>
            {
                let message = format!("{} refused to release the set: {message}", set.partner);
                store.update_if(id, &message, lifecycle::set::awaits_release, |r| {
                    lifecycle::set::release_refused(r, code, &message, now);
                })
            }
            other => {
                let why = match other {
                    Ok(Answer::Refused { code, message }) => format!("{code}: {message}"),
                    Ok(a) => format!("unexpected answer {a:?}"),
                    Err(e) => e,
                };
                tracing::warn!(request_id = %id, partner = %set.partner, error = %why, wait_ms = wait.as_millis() as u64, "cannot release the file set yet; asking again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LONGEST_WAIT);
                continue;
            }
        };
        match written {
            Ok(Some(r)) => {
                if let Err(e) = store.flush().await {
                    tracing::error!(request_id = %id, error = %e, "cannot flush the released set");
                }
                if lifecycle::set::runs_set_tasks(&r) {
                    continue; // released: this node's set tasks run next
                }
                tracing::info!(target: AUDIT, event = "finished", request_id = %id, status = ?r.status, files);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(request_id = %id, error = %e, "cannot record the set's release");
                return true; // asked again at the next start, not at once
            }
        }
        return false;
    }
}

/// Whether the partner of `set`, a pushed set of this node's, must be
/// told it ended in error (see [`tell_set_ended`]).
pub fn tells_its_end(set: &RequestRecord) -> bool {
    set.set.is_some()
        && set.role == Role::Requester
        && set.direction == Direction::Push
        && set.status == Status::InError
}

/// When a set's end is to be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToTell {
    /// Now.
    Now,
    /// Not yet: the set has not ended yet (the notice is written just
    /// before the end), or was restarted since and runs, or is stopped.
    Later,
    /// Never: the set ended otherwise (`Done`, `Cancelled`, another end).
    No,
}

/// Whether the end at `at` of `set`, a set of this node's, is to be told
/// to its partner.
pub fn set_end_to_tell(set: &RequestRecord, at: u64) -> ToTell {
    if tells_its_end(set) && set.finished_at == Some(at) {
        ToTell::Now
    } else if matches!(set.status, Status::Done | Status::Cancelled) || set.finished_at.is_some() {
        ToTell::No
    } else {
        ToTell::Later
    }
}

/// How long the partner may take to answer `SetEnded`.
const SET_ENDED_LIMIT: Duration = Duration::from_secs(10);

/// Tells the partner that set `id`, which this node pushed, ended in error
/// at `at` (only what a partner may be told of the cause), so its record
/// of the set ends too; then the notice is no longer owed. Read again
/// just before the ask: a set restarted meanwhile is not told of. A
/// partner that does not know the ask (an older node) refuses it as a bad
/// ask: it is not asked again. `Err` (asked again later) while it cannot
/// be reached, or is receiving the set at that moment.
pub async fn tell_set_ended(
    core: &Core,
    conns: &ractor::ActorRef<super::connections::ConnectionsMsg>,
    id: &RequestId,
    at: u64,
) -> Result<(), String> {
    let store = &core.store;
    let notice = crate::store::Notice::SetEnded { at };
    let given = |line: Option<String>| {
        store
            .notice_given(id, notice)
            .and_then(|_| line.map_or(Ok(()), |l| store.log(id, &l)))
            .map_err(|e| e.to_string())
    };
    let set = match store.get(id).map_err(|e| e.to_string())? {
        Some(set) => match set_end_to_tell(&set, at) {
            ToTell::Now => set,
            // Kept: told when the set ends again.
            ToTell::Later => return Ok(()),
            ToTell::No => return given(None),
        },
        None => return given(None),
    };
    let (code, message) =
        set.error.as_ref().map_or((ErrorCode::Internal, String::new()), |e| (e.code, e.message.clone()));
    let ask = Ask::SetEnded { set: id.clone(), code, message: code.told_to_partner(&message).to_owned() };
    let link = super::connections::connect(conns, &set.partner).await.map_err(|e| e.message)?;
    let answer = crate::transport::control::ask(&link.conn, &ask, SET_ENDED_LIMIT)
        .await
        .map_err(|e| format!("{} did not answer: {e}", set.partner))?;
    let line = match answer {
        Answer::State(Some(theirs)) => {
            format!("{} told the set ended in error; its record is {}", set.partner, theirs.status)
        }
        Answer::State(None) => format!("{} told the set ended in error; it has no record of the set", set.partner),
        Answer::Refused { code: ErrorCode::Protocol, message } => {
            format!("{} cannot be told the set ended in error: {message}", set.partner)
        }
        Answer::Refused { code, message } => return Err(format!("{code}: {message}")),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    given(Some(line))
}

/// The asked node's side of `SetEnded { set, code, message }` from
/// `partner`: its record of a set the partner streams here, its release
/// not ordered, ends `InError` with the partner's cause (flushed before
/// the answer). Answered with its record of the set, whatever it is; "ask
/// again" (`Internal`) while a stream or a release of the set runs here
/// (`sets`): the set was restarted and this end is stale, or the stream
/// that carried its last files is still closing.
pub async fn set_ended_by_sender(
    core: &Core,
    sets: &super::sets_in_use::SetsInUse,
    partner: &str,
    set: &RequestId,
    code: ErrorCode,
    message: &str,
) -> Answer {
    let me = core.config.node_id.as_str();
    let refused = |code, message: String| Answer::Refused { code, message };
    let rec = match core.store.get(set) {
        Ok(Some(r)) if r.partner != partner || r.role != Role::Requested || r.set.is_none() => {
            return refused(ErrorCode::Protocol, format!("request {set} on node {me} is not a file set from {partner}"))
        }
        Ok(r) => r,
        Err(e) => return refused(ErrorCode::Internal, format!("node {me} cannot read its store: {e}")),
    };
    let Some(rec) = rec else { return Answer::State(None) };
    // At most as many bytes as a set's shown pattern, cut at a character.
    let shown = crate::text::head(message, crate::fileset::SHOWN_PATTERN_BYTES);
    let why = format!("{partner} ended the set in error: {shown}");
    let end = || {
        core.store.update_if(set, &why, lifecycle::set::can_end_by_sender, |r| {
            lifecycle::set::ended_by_sender(r, code, &why, now_ms());
        })
    };
    let Some(ended) = sets.unless_in_use(set, end) else {
        return refused(ErrorCode::Internal, format!("node {me} is receiving set {set} now; ask again"));
    };
    // Noted for the sweep of sets never released, which only concerns
    // sets that hold files (`delivery = all`).
    let noted = ended.and_then(|r| match r {
        Some(r) if lifecycle::set::holds_files(&r) => core.store.note_ended_set(set).map(|()| Some(r)),
        other => Ok(other),
    });
    let rec = match noted {
        Ok(Some(r)) => match core.store.flush().await {
            Ok(()) => {
                tracing::info!(target: AUDIT, event = "finished", request_id = %set, partner = %partner, status = ?r.status);
                r
            }
            Err(e) => return refused(ErrorCode::Internal, format!("node {me} cannot flush its store: {e}")),
        },
        Ok(None) => rec,
        Err(e) => return refused(ErrorCode::Internal, format!("node {me} cannot write its store: {e}")),
    };
    Answer::State(Some(super::control_plane::request_state(me, &rec)))
}

#[cfg(test)]
mod running_set_tasks_tests {
    use super::*;

    #[test]
    fn a_set_end_is_told_once_the_set_is_in_that_end_and_never_once_it_ended_otherwise() {
        let mut set = RequestRecord {
            status: Status::Running,
            set: Some(crate::store::SetInfo {
                pattern: "*.csv".into(),
                policy: Policy::default(),
                files: 2,
                done: 1,
                failed: 1,
                skipped: 0,
            }),
            ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "r", Direction::Push, "*.csv")
        };
        // The notice is written just before the end: it waits for it.
        assert_eq!(set_end_to_tell(&set, 10), ToTell::Later);
        (set.status, set.finished_at) = (Status::InError, Some(10));
        assert_eq!(set_end_to_tell(&set, 10), ToTell::Now);
        assert_eq!(set_end_to_tell(&set, 9), ToTell::No, "an earlier end, restarted and ended again since");
        (set.status, set.finished_at) = (Status::Running, None);
        assert_eq!(set_end_to_tell(&set, 10), ToTell::Later, "restarted: waits for its next end");
        (set.status, set.finished_at) = (Status::Done, Some(12));
        assert_eq!(set_end_to_tell(&set, 10), ToTell::No);
        (set.status, set.finished_at) = (Status::InError, Some(10));
        set.direction = Direction::Pull;
        assert!(!tells_its_end(&set), "a pulled set's partner holds no record of it to end");
        assert_eq!(set_end_to_tell(&set, 10), ToTell::No);
        set.direction = Direction::Push;
        set.role = Role::Requested;
        assert!(!tells_its_end(&set), "a receiver does not tell its sender");
    }

    #[test]
    fn a_set_runs_its_tasks_once_at_a_time_and_a_second_ask_is_turned_away() {
        let set = RequestId::generate();
        let first = RunningSetTasks::take("a", &set).expect("free");
        // A second ask while they run: turned away, and nothing is held
        // (this once dropped a place built under the lock its drop takes).
        assert!(RunningSetTasks::take("a", &set).is_none());
        assert!(RunningSetTasks::take("b", &set).is_some(), "another node of the process is apart");
        drop(first);
        assert!(RunningSetTasks::take("a", &set).is_some(), "free again once they ended");
    }
}
