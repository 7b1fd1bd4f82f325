//! Runs a request's tasks: the rule's list for this node's side and the
//! request's step, from the persisted cursor on.
//!
//! What runs is decided by [`crate::lifecycle`] (the step, the cursor) and
//! what each task does by [`crate::tasks::run`]; this module carries it out
//! in order and makes each step durable:
//!
//! 1. the task runs (bounded by its timeout, and stopped by a node
//!    shutdown, which leaves the request `Interrupted` at that task);
//! 2. one job-log line records its type, its arguments after substitution,
//!    its outcome and its duration;
//! 3. the cursor moves past it, with any change of where the file is, and
//!    the store is flushed: a crash before this flush runs the task again
//!    on the next attempt (at least once), a crash after it never does.
//!
//! A pre- or post-task that fails stops the list: the caller fails the
//! request with `TaskFailed`, at that task. Error tasks all run, each once;
//! one that fails is logged beside the request's first cause, which stays.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::context::{Core, Intake};
use super::AUDIT;
use crate::config::Rule;
use crate::lifecycle;
use crate::model::Submit;
use crate::protocol::{Direction, ErrorCode, RequestId};
use crate::store::{now_ms, RequestRecord, Role, Step};
use crate::tasks::run::{self, Effect, TaskEnv};
use crate::tasks::{SideTasks, TaskConfig, TaskList, Vars};

/// The task lists of this node's side of `rec` (sender or receiver). A
/// file set's empty folder (a name ending in `/`) runs none: the rule's
/// tasks act on files.
pub fn side<'a>(rule: &'a Rule, rec: &RequestRecord) -> &'a SideTasks {
    static NONE: std::sync::LazyLock<SideTasks> = std::sync::LazyLock::new(SideTasks::default);
    if crate::protocol::names::is_folder_entry(&rec.file_name) {
        &NONE
    } else if rec.is_sender() {
        &rule.sender
    } else {
        &rule.receiver
    }
}

/// The task `rec` is running, or failed in: "post-task 2/3 (exec)", when
/// its step has tasks and the cursor is on one of them.
pub fn current_task(rule: &Rule, rec: &RequestRecord) -> Option<String> {
    let describe = |list: TaskList, i: usize| {
        let tasks = side(rule, rec).list(list);
        tasks.get(i).map(|t| format!("{} {}/{} ({})", list_name(list), i + 1, tasks.len(), t.kind))
    };
    let list_of = |step: Step| match step {
        Step::PreTask => Some(TaskList::Pre),
        // A file set's own record runs its set tasks in this step.
        Step::PostTask if rec.set.is_some() => Some(TaskList::Set),
        Step::PostTask => Some(TaskList::Post),
        Step::ErrorTask => Some(TaskList::Error),
        Step::Transfer | Step::AllDone | Step::Held => None,
    };
    if rec.step == Step::ErrorTask {
        // Error tasks still running, else the task that failed.
        let running = describe(TaskList::Error, rec.error_task_index as usize);
        let failed = rec.failed_step.and_then(list_of).and_then(|l| describe(l, rec.task_index as usize));
        return running.or(failed);
    }
    describe(list_of(rec.step)?, rec.task_index as usize)
}

/// Whether `rec`, in `ErrorTask`, has error tasks left to run.
pub fn error_tasks_left(ctx: &Core, rec: &RequestRecord) -> bool {
    ctx.config
        .rule(&rec.rule)
        .is_some_and(|rule| lifecycle::next_task(rec, side(rule, rec).error_tasks.len()).is_some())
}

/// How many error tasks this node's side of request `id` has.
pub fn error_task_count(ctx: &Core, id: &RequestId) -> usize {
    let Ok(Some(rec)) = ctx.store.get(id) else { return 0 };
    ctx.config.rule(&rec.rule).map_or(0, |rule| side(rule, &rec).error_tasks.len())
}

/// Where this node's file of `rec` is now; for a file set's own record,
/// the set's folder (the rule's send folder, or its receive folder for the
/// partner), which its set tasks act on.
pub fn file_path(rule: &Rule, rec: &RequestRecord) -> PathBuf {
    if let Some(p) = &rec.local_path {
        return PathBuf::from(p);
    }
    let dir = if rec.is_sender() { rule.send_dir.clone() } else { rule.recv_dir_for(&rec.partner) };
    if rec.set.is_some() {
        return dir;
    }
    dir.join(&rec.file_name)
}

/// The file error tasks of `rec` act on, and whether the request's file is
/// in place there. On the receiving side a file that was never put under
/// its final name (nothing delivered, or delivered but not renamed: its
/// work file is still there, as when `create` found the name taken) is not
/// in place: its final name may be another file, delivered before (by this
/// partner or another one), which a failure the sender can cause at will
/// must not reach. The error tasks then see the request's own work file
/// (`.ferry-work/ID.part`, the partial or verified bytes, or nothing at
/// that path) and those that act on a file are skipped: the work file is
/// the next attempt's to resume or finish.
pub fn error_task_file(rule: &Rule, rec: &RequestRecord) -> (PathBuf, bool) {
    if rec.is_sender() || rec.local_path.is_some() || rec.set.is_some() {
        return (file_path(rule, rec), true);
    }
    let work = crate::transfer::receive::work_path(&rule.recv_dir_for(&rec.partner), &rec.id);
    if rec.delivered && !work.exists() {
        return (file_path(rule, rec), true);
    }
    (work, false)
}

/// The folders tasks of `rule` may touch for `partner`.
pub fn folders(rule: &Rule, partner: &str) -> Vec<PathBuf> {
    let mut v = vec![rule.send_dir.clone(), rule.recv_dir_for(partner)];
    v.extend(rule.folders.iter().cloned());
    v
}

/// The variables of a task run for `rec` on node `me`.
pub fn vars(rule: &Rule, rec: &RequestRecord, me: &str, file: &Path) -> Vars {
    let mut v = Vars::default();
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let size = match rec.set {
        Some(_) => rec.size, // a set's folder: the bytes of its files
        None => std::fs::metadata(file).map(|m| m.len()).unwrap_or(rec.size),
    };
    let (requester, requested) = match rec.role {
        Role::Requester => (me, rec.partner.as_str()),
        Role::Requested => (rec.partner.as_str(), me),
    };
    let now = now_ms();
    let (date, hour) = date_and_hour(now / 1000);
    v.set("FILENAME", name);
    v.set("ORIGINALFILENAME", rec.requested_name());
    v.set("FILEPATH", file.display().to_string());
    v.set("FILESIZE", size.to_string());
    v.set("RULE", rec.rule.as_str());
    v.set("REQUESTID", rec.id.as_str());
    v.set("PARTNER", rec.partner.as_str());
    v.set("LOCALHOST", me);
    v.set("REQUESTER", requester);
    v.set("REQUESTED", requested);
    v.set("DIRECTION", if rec.direction == Direction::Push { "push" } else { "pull" });
    v.set("EXTERNALJOBID", rec.external_job_id.clone().unwrap_or_default());
    v.set("TRANSFERINFO", rec.transfer_info.as_str());
    v.set("DATE", date);
    v.set("HOUR", hour);
    v.set("BLAKE3", rec.hash.map(|h| h.to_string()).unwrap_or_default());
    v.set("INPATH", rule.recv_dir_for(&rec.partner).display().to_string());
    v.set("OUTPATH", rule.send_dir.display().to_string());
    if rec.step == Step::ErrorTask {
        let (code, msg) = rec.error.as_ref().map(|e| (e.code.to_string(), e.message.clone())).unwrap_or_default();
        v.set("ERRORCODE", code);
        v.set("ERRORMSG", msg);
    }
    v
}

/// `YYYYMMDD` and `HHMMSS` (UTC) of a unix time in seconds.
pub fn date_and_hour(secs: u64) -> (String, String) {
    let ((y, m, d), (h, min, sec)) = crate::calendar::utc(secs);
    (format!("{y:04}{m:02}{d:02}"), format!("{h:02}{min:02}{sec:02}"))
}

fn list_name(list: TaskList) -> &'static str {
    match list {
        TaskList::Pre => "pre-task",
        TaskList::Post => "post-task",
        TaskList::Error => "error task",
        TaskList::Set => "set task",
    }
}

/// Runs the tasks of `list` still to run for request `id`, from the
/// persisted cursor. The request must be in the list's step (the caller
/// moved it there). `Err` is the failure to fail the request with.
pub async fn run_tasks(ctx: &Intake, id: &RequestId, list: TaskList) -> Result<(), (ErrorCode, String)> {
    let internal = |e: crate::store::StoreError| (ErrorCode::Internal, format!("cannot record a task: {e}"));
    loop {
        let rec = ctx.core.store.get(id).map_err(internal)?.ok_or((ErrorCode::Internal, "request vanished".into()))?;
        let rule = ctx.core.config.rule(&rec.rule).ok_or_else(|| {
            (ErrorCode::UnknownRule, format!("rule {:?} does not exist on node {}", rec.rule, ctx.core.config.node_id))
        })?;
        let step = lifecycle::step_of(list);
        if rec.step != step {
            // A task moved the request on (a reschedule left the error step).
            return Ok(());
        }
        if list == TaskList::Set && rec.status != crate::store::Status::Running {
            // The set was cancelled while its set tasks ran: no more run.
            return Ok(());
        }
        let tasks = side(rule, &rec).list(list);
        let Some(index) = lifecycle::next_task(&rec, tasks.len()) else { return Ok(()) };
        let task = &tasks[index];
        let outcome = run_one(ctx, rule, &rec, list, index, tasks.len(), task).await;
        match outcome {
            Ok(()) => {}
            Err((code, why)) if list == TaskList::Error && code != ErrorCode::Shutdown => {
                // Logged beside the first cause, which stays; the next
                // error task still runs.
                tracing::warn!(request_id = %id, error = %why, "an error task failed");
                ctx.core.store.update(id, "", lifecycle::task_done).map_err(internal)?;
                ctx.core.store.flush().await.map_err(internal)?;
            }
            Err(why) => return Err(why),
        }
    }
}

/// Runs one task, logs it, and records the cursor past it on success.
async fn run_one(
    ctx: &Intake,
    rule: &Rule,
    rec: &RequestRecord,
    list: TaskList,
    index: usize,
    count: usize,
    task: &TaskConfig,
) -> Result<(), (ErrorCode, String)> {
    let internal = |e: crate::store::StoreError| (ErrorCode::Internal, format!("cannot record a task: {e}"));
    let me = ctx.core.config.node_id.as_str();
    let (file, in_place) =
        if list == TaskList::Error { error_task_file(rule, rec) } else { (file_path(rule, rec), true) };
    let vars = vars(rule, rec, me, &file);
    let what = format!("{} {}/{count} ({})", list_name(list), index + 1, task.describe(&vars));
    // The task named without its arguments (they may hold this node's
    // paths or secrets): all a partner is told of it.
    let named = format!("{} {}/{count} ({})", list_name(list), index + 1, task.kind);
    // The request's error: the summary first, which is all a partner is
    // told (`ErrorCode::told_to_partner`), then the arguments and why.
    let summary = format!("{named} failed on node {me}");
    let failure = |why: &str| (ErrorCode::TaskFailed, format!("{summary}: {what}: {why}"));
    let folders = folders(rule, &rec.partner);
    let started = Instant::now();
    let result = match task.parse(list, &folders) {
        Err(e) => Err(e),
        Ok(parsed) if !in_place && parsed.acts_on_the_file() => {
            let line = format!("{what}: skipped: the request's file was never put in place on node {me}");
            ctx.core.store.update(&rec.id, &line, lifecycle::task_done).map_err(internal)?;
            ctx.core.store.flush().await.map_err(internal)?;
            return Ok(());
        }
        Ok(parsed) => {
            let scratch = format!(".ferry-task-{}-{}-{index}", rec.id, list.key());
            let env = TaskEnv { file: file.clone(), folders, vars, timeout: task.timeout(), now_ms: now_ms(), scratch };
            let mut shutdown = ctx.core.shutdown.clone();
            tokio::select! {
                r = run::run(&parsed, &env) => r,
                _ = shutdown.wait_for(|s| *s) => {
                    let msg = format!("node {me} is shutting down during {named}; it runs again when the request resumes");
                    ctx.core.store.log(&rec.id, &msg).map_err(internal)?;
                    return Err((ErrorCode::Shutdown, msg));
                }
            }
        }
    };
    let took = started.elapsed().as_millis();
    let outcome = match result {
        Ok(o) => o,
        Err(why) => {
            let line = format!("{what}: failed after {took} ms: {why}");
            ctx.core.store.log(&rec.id, &line).map_err(internal)?;
            return Err(failure(&why));
        }
    };
    let mut detail = outcome.detail.clone();
    let mut moved_to: Option<PathBuf> = None;
    match &outcome.effect {
        Effect::None => {}
        Effect::FileMoved(to) => moved_to = Some(to.clone()),
        Effect::Submit { partner, rule: other } => {
            let chained = submit_chained(ctx, rec, &file, partner, other.as_deref(), list, index).await;
            match chained {
                Ok(line) => detail = line,
                Err(why) => {
                    ctx.core.store.log(&rec.id, &format!("{what}: failed after {took} ms: {why}")).map_err(internal)?;
                    return Err(failure(&why));
                }
            }
        }
        Effect::Reschedule { at, limit } => {
            let refused = std::cell::RefCell::new(None);
            ctx.core
                .store
                .update(&rec.id, "", |r| {
                    let mut next = r.clone();
                    match lifecycle::reschedule(&mut next, *at, *limit) {
                        Ok(()) => *r = next,
                        Err(why) => *refused.borrow_mut() = Some(why),
                    }
                })
                .map_err(internal)?;
            if let Some(why) = refused.into_inner() {
                ctx.core.store.log(&rec.id, &format!("{what}: not rescheduled: {why}")).map_err(internal)?;
                return Err(failure(&format!("not rescheduled: {why}")));
            }
            detail = format!("{detail}; the request runs again then, from the step that failed");
        }
    }
    if task.kind == "log" {
        let message = &outcome.detail;
        tracing::info!(target: AUDIT, event = "task_log", request_id = %rec.id, partner = %rec.partner, message = %message);
    }
    // A sender's file must stay where it is sent from: in the send folder.
    if let (true, Some(to)) = (rec.is_sender() && list == TaskList::Pre, &moved_to) {
        if to.parent() != Some(rule.send_dir.as_path()) {
            let why = format!("a sender's pre-task must leave the file in the send folder {}", rule.send_dir.display());
            ctx.core.store.log(&rec.id, &format!("{what}: failed after {took} ms: {why}")).map_err(internal)?;
            return Err(failure(&why));
        }
    }
    let line =
        format!("{what}: ok in {took} ms{}", if detail.is_empty() { String::new() } else { format!(": {detail}") });
    let sender_pre = rec.is_sender() && list == TaskList::Pre;
    ctx.core
        .store
        .update(&rec.id, &line, |r| {
            if r.step == Step::ErrorTask || r.step == rec.step {
                lifecycle::task_done(r);
            }
            if let Some(to) = &moved_to {
                let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if sender_pre {
                    // The request now carries the new name (and size).
                    if r.original_file_name.is_none() {
                        r.original_file_name = Some(r.file_name.clone());
                    }
                    r.file_name = name;
                } else {
                    r.local_path = Some(to.display().to_string());
                }
            }
        })
        .map_err(internal)?;
    ctx.core.store.flush().await.map_err(internal)?;
    Ok(())
}

/// A `transfer` task: submits a push of the file to `partner` under the id
/// derived from this request and task (found again, not submitted twice,
/// when the task runs again), and links both records.
async fn submit_chained(
    ctx: &Intake,
    rec: &RequestRecord,
    file: &Path,
    partner: &str,
    rule: Option<&str>,
    list: TaskList,
    index: usize,
) -> Result<String, String> {
    let id = lifecycle::chained_id(&rec.id, lifecycle::step_of(list), index);
    let rule = rule.unwrap_or(&rec.rule).to_owned();
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let existing = ctx.core.store.get(&id).map_err(|e| e.to_string())?;
    let chained = match existing {
        // Submitted by an earlier run of this task.
        Some(r) if r.role == Role::Requester && r.chained_from.as_ref() == Some(&rec.id) => r,
        // The id is derived from this request's: a partner that knows it
        // could have used it first (a push of its own under that id).
        Some(r) => {
            return Err(format!(
                "request id {id} is taken by another request (from {}, file {:?}); nothing was sent on",
                r.partner, r.file_name
            ))
        }
        None => {
            let send_dir = ctx.core.config.rule(&rule).map(|r| r.send_dir.clone());
            if send_dir.as_deref() != file.parent() {
                return Err(format!(
                    "the file is in {}, not in the send folder of rule {rule:?}; move it there first",
                    file.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ));
            }
            let s = Submit {
                external_job_id: rec.external_job_id.clone(),
                transfer_info: rec.transfer_info.clone(),
                compression: rec.compression,
                ..Submit::file(partner, &rule, Direction::Push, &name)
            };
            super::intake::submit(ctx, s, id.clone(), None, Some(rec.id.clone())).await.map_err(|e| e.to_string())?
        }
    };
    if !rec.chained_to.contains(&chained.id) {
        let line = format!("request {} sends {name} on to {partner}", chained.id);
        let cid = chained.id.clone();
        ctx.core
            .store
            .update(&rec.id, &line, |r| {
                if !r.chained_to.contains(&cid) {
                    r.chained_to.push(cid.clone());
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(format!("submitted request {} to send {name} to {} under rule {rule:?}", chained.id, chained.partner))
}

/// Runs the error tasks of a request that ended `InError` with some left
/// to run; a failing one is logged, the request keeps its first cause.
pub async fn run_error_tasks(ctx: &Intake, id: &RequestId) {
    let Ok(Some(rec)) = ctx.core.store.get(id) else { return };
    if rec.step != Step::ErrorTask {
        return;
    }
    if let Err((code, why)) = run_tasks(ctx, id, TaskList::Error).await {
        tracing::error!(request_id = %id, code = %code, error = %why, "error tasks stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::date_and_hour;

    #[test]
    fn date_and_hour_are_the_variables_format() {
        assert_eq!(date_and_hour(1_795_955_696), ("20261129".into(), "123456".into()));
    }
}
