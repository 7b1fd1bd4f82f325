//! A file set's totals and status, decided without I/O from its members'
//! records: the one place that says what a member's change means for its
//! set (the shape of `lifecycle`; the set keeper only carries it out).
//!
//! - A member counts as `done` once `Done`, `skipped` once `InError` with
//!   [`ErrorCode::Skipped`], `failed` once `InError` or `Cancelled` for any
//!   other cause; a member still queued, running or interrupted counts as
//!   neither, so a restarted member simply stops counting.
//! - [`apply`] adds one member's change (its record before and after) to
//!   the set's record; [`settle`] then decides the set's status: it ends
//!   only when every member ended, `Done` if every file is delivered and
//!   `InError` (`FilesFailed`) otherwise.
//! - A set whose every file is delivered (or, under `delivery = all`,
//!   verified and held) does not end `Done` at once: it waits in step
//!   `Held` ([`awaits_release`]) for its release, the receiver's answer
//!   that every file is under its final name and its set tasks ran
//!   ([`released`]). Then the sender's own set tasks run (step `PostTask`,
//!   [`runs_set_tasks`]) and the set is `Done` ([`set_tasks_ran`]).
//! - A set of no files (`on_empty = succeed`) ends `Done` with no release
//!   and no set tasks.
//! - [`must_skip`]: under `on_failure = stop`, a file that just failed
//!   means the members not yet started are skipped.

use crate::protocol::{ErrorCode, RequestId};
use crate::store::{RequestError, RequestRecord, Role, Status, Step};

use crate::fileset::progress::OnFailure;

/// How a member counts in its set's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Done,
    Failed,
    Skipped,
}

/// How `rec` counts, if it ended.
pub fn counted(rec: &RequestRecord) -> Option<Counted> {
    match rec.status {
        Status::Done => Some(Counted::Done),
        Status::InError if rec.error.as_ref().is_some_and(|e| e.code == ErrorCode::Skipped) => Some(Counted::Skipped),
        Status::InError | Status::Cancelled => Some(Counted::Failed),
        Status::ToSubmit | Status::Running | Status::Interrupted => None,
    }
}

/// A member's change, as the set keeper is told of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub set: RequestId,
    pub before: Option<Counted>,
    pub after: Option<Counted>,
    /// The member's size (added to the set's `transferred` when done).
    pub size: u64,
}

impl MemberChange {
    /// The change `old → new` of a member record, if it changes a count.
    pub fn of(old: Option<&RequestRecord>, new: &RequestRecord) -> Option<MemberChange> {
        let m = new.member_of.as_ref()?;
        let (before, after) = (old.and_then(counted), counted(new));
        (before != after).then(|| MemberChange { set: m.set.clone(), before, after, size: new.size })
    }
}

/// Adds `change` to the set's totals. Returns false if `set` is not a set.
pub fn apply(set: &mut RequestRecord, change: &MemberChange) -> bool {
    let Some(info) = set.set.as_mut() else { return false };
    let mut step = |c: Option<Counted>, sign: i64| match c {
        Some(Counted::Done) => {
            info.done = add(info.done, sign);
            set.transferred = if sign > 0 {
                set.transferred.saturating_add(change.size)
            } else {
                set.transferred.saturating_sub(change.size)
            };
        }
        Some(Counted::Failed) => info.failed = add(info.failed, sign),
        Some(Counted::Skipped) => info.skipped = add(info.skipped, sign),
        None => {}
    };
    step(change.before, -1);
    step(change.after, 1);
    true
}

fn add(n: u32, sign: i64) -> u32 {
    if sign > 0 {
        n.saturating_add(1)
    } else {
        n.saturating_sub(1)
    }
}

/// Decides the set's status from its totals: ends it when every member
/// ended, reopens it (`Running`) when a member was restarted after it
/// ended. `failed_names` names some failed files for the message. Returns
/// the new status if it changed.
pub fn settle(set: &mut RequestRecord, now: u64, failed_names: &[String]) -> Option<Status> {
    let info = set.set.as_ref()?;
    if set.status == Status::Cancelled {
        return None; // an operator ended it: its files' later ends change nothing
    }
    let ended = info.done + info.failed + info.skipped;
    let before = set.status;
    if runs_set_tasks(set) {
        return None; // released: its set tasks run, from their cursor
    }
    if ended < info.files {
        // A restarted file reopens a set that ended in error (an operator
        // restart of the set does the same); a cancelled set stays so.
        if set.status == Status::InError {
            set.status = Status::Running;
            set.step = Step::Transfer;
            set.error = None;
            set.finished_at = None;
        }
    } else if info.files == 0 {
        set.status = Status::Done;
        set.step = Step::AllDone;
        set.error = None;
        set.finished_at = Some(now);
    } else if info.failed + info.skipped == 0 {
        // Every file delivered (or verified and held by the receiver): the
        // release follows (a refused release stays `InError` until an
        // operator restart).
        if set.status != Status::InError && (set.status != Status::Running || set.step != Step::Held) {
            set.status = Status::Running;
            set.step = Step::Held;
            set.error = None;
            set.finished_at = None;
        }
    } else if set.status != Status::InError {
        let mut message = format!(
            "{} of {} files failed{}",
            info.failed,
            info.files,
            if info.skipped > 0 { format!(" and {} were skipped", info.skipped) } else { String::new() }
        );
        if !failed_names.is_empty() {
            message.push_str(": ");
            message.push_str(&failed_names.join(", "));
            if failed_names.len() < info.failed as usize {
                message.push_str(", …");
            }
        }
        set.status = Status::InError;
        set.error = Some(RequestError { code: ErrorCode::FilesFailed, message });
        set.finished_at = Some(now);
    }
    (set.status != before).then_some(set.status)
}

/// Whether the set waits for its release (every file delivered, or
/// verified and held under `delivery = all`).
pub fn awaits_release(set: &RequestRecord) -> bool {
    set.set.is_some() && set.status == Status::Running && set.step == Step::Held
}

/// The receiver answered that every file is under its final name and its
/// set tasks ran: the set is `Done`, or runs this node's set tasks first
/// when `set_tasks` (their cursor from the start). `false` (nothing
/// changed) if it no longer waited.
pub fn released(set: &mut RequestRecord, now: u64, set_tasks: bool) -> bool {
    if !awaits_release(set) {
        return false;
    }
    set.status = Status::Running;
    set.task_index = 0;
    if set_tasks {
        set.step = Step::PostTask;
    } else {
        set.step = Step::AllDone;
        set.status = Status::Done;
        set.finished_at = Some(now);
    }
    true
}

/// Whether the set runs its set tasks now (released, not yet `Done`).
pub fn runs_set_tasks(set: &RequestRecord) -> bool {
    set.set.is_some() && set.status == Status::Running && set.step == Step::PostTask
}

/// Every set task ran: the set is `Done`.
pub fn set_tasks_ran(set: &mut RequestRecord, now: u64) -> bool {
    if !runs_set_tasks(set) {
        return false;
    }
    set.status = Status::Done;
    set.step = Step::AllDone;
    set.finished_at = Some(now);
    true
}

/// A set task failed: the set ends `InError` at that task (its cursor
/// stays on it); an operator restart runs the set tasks on from there.
pub fn set_task_failed(set: &mut RequestRecord, code: ErrorCode, message: &str, now: u64) -> bool {
    if !runs_set_tasks(set) {
        return false;
    }
    set.status = Status::InError;
    set.error = Some(RequestError { code, message: message.to_owned() });
    set.finished_at = Some(now);
    true
}

/// The receiver refused to release the set (the message names why): the
/// set ends `InError`; a restart asks again.
pub fn release_refused(set: &mut RequestRecord, code: ErrorCode, message: &str, now: u64) -> bool {
    if !awaits_release(set) {
        return false;
    }
    set.status = Status::InError;
    set.error = Some(RequestError { code, message: message.to_owned() });
    set.finished_at = Some(now);
    true
}

/// Whether [`release_again`] applies.
pub fn can_release_again(set: &RequestRecord) -> bool {
    set.set.as_ref().is_some_and(|i| i.files > 0 && i.done == i.files)
        && matches!(set.status, Status::InError | Status::Interrupted)
}

/// An operator restarts a set whose every file is delivered (or verified
/// and held) but whose release was refused (or that was stopped while it
/// waited): it waits for its release again; one whose own set task failed
/// runs its set tasks on from that task. `false` if that is not its state.
pub fn release_again(set: &mut RequestRecord) -> bool {
    if !can_release_again(set) {
        return false;
    }
    set.status = Status::Running;
    if set.step != Step::PostTask {
        set.step = Step::Held;
    }
    set.error = None;
    set.finished_at = None;
    true
}

/// The asked node's record of a set its partner sends: `Running` in step
/// `Transfer`, nothing counted yet ([`is_streamed_here`]). A set stream's
/// `Open` makes it; a `Release` that finds none makes it and applies
/// [`received_whole`] at once.
pub fn received_set(
    id: RequestId,
    partner: &str,
    rule: &str,
    direction: crate::protocol::Direction,
    info: (u32, &str, crate::fileset::progress::Policy),
    now: u64,
) -> RequestRecord {
    let (files, pattern, policy) = info;
    RequestRecord {
        status: Status::Running,
        step: Step::Transfer,
        started_at: Some(now),
        set: Some(crate::store::SetInfo { pattern: pattern.to_owned(), policy, files, done: 0, failed: 0, skipped: 0 }),
        ..RequestRecord::new(id, Role::Requested, partner, rule, direction, pattern)
    }
}

/// Whether `set` is a file set sent with `delivery = all`: its files are
/// held under their work names until its release.
pub fn holds_files(set: &RequestRecord) -> bool {
    set.set.as_ref().is_some_and(|i| i.policy.delivery == crate::fileset::progress::Delivery::All)
}

/// Whether `set` is a receiver's record of a set its partner sends
/// ([`received_set`]), not yet in place (step `Transfer`, or `Held` once
/// its release is ordered): it counts the streamed files as they are
/// `Done` ([`streamed_done`]) and waits for its `Release`
/// ([`received_whole`]) or a cancel notice.
pub fn is_streamed_here(set: &RequestRecord) -> bool {
    set.set.is_some()
        && set.role == Role::Requested
        && matches!(set.step, Step::Transfer | Step::Held)
        && !set.status.is_final()
}

/// The sender ordered the release of a set streamed here: it moves to
/// step `Held` until its files are in place, so a start-up after a crash
/// finishes the renames of only the sets whose release was ordered (every
/// file received), not of any set a partner opened. `false` if it was not
/// streamed here.
pub fn release_ordered(set: &mut RequestRecord) -> bool {
    if !is_streamed_here(set) {
        return false;
    }
    set.step = Step::Held;
    true
}

/// Whether the release of a set streamed here was ordered and its files
/// may wait for their renames (see [`release_ordered`]).
pub fn is_release_ordered_here(set: &RequestRecord) -> bool {
    is_streamed_here(set) && set.step == Step::Held
}

/// A set stream's commit made `files` more of the set's files `Done`
/// (`bytes` together). `false` if the set no longer counts them (released
/// or ended).
pub fn streamed_done(set: &mut RequestRecord, files: u32, bytes: u64) -> bool {
    if !is_streamed_here(set) {
        return false;
    }
    let Some(info) = set.set.as_mut() else { return false };
    info.done = info.done.saturating_add(files).min(info.files);
    set.transferred = set.transferred.saturating_add(bytes);
    true
}

/// The sender's `Release` put every one of the set's `files` in place
/// (`bytes` together): its totals are final and its set tasks run (step
/// `PostTask`, cursor at the start). `false` if it was not streamed here.
pub fn received_whole(set: &mut RequestRecord, files: u32, bytes: u64, pattern: &str) -> bool {
    if !is_streamed_here(set) {
        return false;
    }
    set.status = Status::Running;
    set.step = Step::PostTask;
    set.task_index = 0;
    set.size = bytes;
    set.transferred = bytes;
    if let Some(info) = set.set.as_mut() {
        (info.pattern, info.files, info.done) = (pattern.to_owned(), files, files);
    }
    true
}

/// The sender told this node its set ended in error (`code`, `message`:
/// what the sender may tell, see `ErrorCode::told_to_partner`): a set
/// streamed here whose release was not ordered ends `InError` too, its
/// files as they are (delivered ones stay; held ones wait for a restart of
/// the set, a cancel, or the retention sweep). `false` if that is not its
/// state (released, ordered, or ended already).
pub fn ended_by_sender(set: &mut RequestRecord, code: ErrorCode, message: &str, now: u64) -> bool {
    if !can_end_by_sender(set) {
        return false;
    }
    set.status = Status::InError;
    set.error = Some(RequestError { code, message: message.to_owned() });
    set.finished_at = Some(now);
    true
}

/// Whether [`ended_by_sender`] applies: streamed here, its release not
/// ordered.
pub fn can_end_by_sender(set: &RequestRecord) -> bool {
    is_streamed_here(set) && set.step == Step::Transfer
}

/// Whether `set` is a set streamed here that its sender ended in error
/// ([`ended_by_sender`]): a restart of the set on the sender reopens it
/// ([`reopen`]), a cancel ends it.
pub fn is_ended_by_sender(set: &RequestRecord) -> bool {
    set.set.is_some() && set.role == Role::Requested && set.status == Status::InError && set.step == Step::Transfer
}

/// The sender restarted a set it had ended in error (a new stream opens,
/// or it asks for the release): it is streamed here again, its counts
/// kept. `false` if it was not ended by its sender.
pub fn reopen(set: &mut RequestRecord) -> bool {
    if !is_ended_by_sender(set) {
        return false;
    }
    set.status = Status::Running;
    set.error = None;
    set.finished_at = None;
    true
}

/// Whether the set must skip its members not yet started after `change`:
/// under `on_failure = stop`, a file that just failed (only then: a
/// restart of the set, which uncounts its failures one by one, must not
/// skip again what it queued).
pub fn must_skip(set: &RequestRecord, change: &MemberChange) -> bool {
    change.after == Some(Counted::Failed)
        && set.set.as_ref().is_some_and(|i| i.policy.on_failure == OnFailure::Stop)
        && !set.status.is_final()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileset::progress::{Delivery, Policy};
    use crate::protocol::Direction;
    use crate::store::member_id;
    use crate::store::{SetInfo, SetMember};

    fn set(files: u32, policy: Policy) -> RequestRecord {
        let id = RequestId::parse(&"a".repeat(32)).expect("id");
        let mut r = RequestRecord::new(id, Role::Requester, "b", "r", Direction::Push, "*.csv");
        r.status = Status::Running;
        r.set = Some(SetInfo { pattern: "*.csv".into(), policy, files, done: 0, failed: 0, skipped: 0 });
        r
    }

    fn member(set: &RequestRecord, index: u32, status: Status, code: Option<ErrorCode>) -> RequestRecord {
        let mut r = RequestRecord::new(member_id(&set.id, index), Role::Requester, "b", "r", Direction::Push, "x");
        r.size = 10;
        r.status = status;
        r.error = code.map(|code| RequestError { code, message: String::new() });
        r.member_of = Some(SetMember { set: set.id.clone(), index, modified_ns: 0 });
        r
    }

    fn change(s: &mut RequestRecord, old: &RequestRecord, new: &RequestRecord) -> Option<Status> {
        if let Some(c) = MemberChange::of(Some(old), new) {
            assert!(apply(s, &c));
        }
        settle(s, 1, &[])
    }

    #[test]
    fn under_delivery_all_a_verified_set_waits_for_its_release_then_is_done() {
        let all = Policy { delivery: Delivery::All, ..Policy::default() };
        let mut s = set(2, all);
        for i in 0..2 {
            let (run, done) = (member(&s, i, Status::Running, None), member(&s, i, Status::Done, None));
            assert_eq!(change(&mut s, &run, &done), None, "never Done while files are held");
        }
        assert!(awaits_release(&s), "every file verified: it waits in Held");
        assert_eq!((s.status, s.step, s.finished_at), (Status::Running, Step::Held, None));
        // Settled again (a recount at start-up): still waiting, unchanged.
        assert_eq!(settle(&mut s, 2, &[]), None);
        assert!(awaits_release(&s));
        // Stopped while it waited, then restarted: it waits again.
        let mut stopped = s.clone();
        crate::lifecycle::stop(&mut stopped, "op");
        assert!(!awaits_release(&stopped) && can_release_again(&stopped));
        assert!(release_again(&mut stopped) && awaits_release(&stopped));
        // The receiver answered: Done, once.
        assert!(released(&mut s, 3, false));
        assert_eq!((s.status, s.step, s.finished_at), (Status::Done, Step::AllDone, Some(3)));
        assert!(!released(&mut s, 4, false), "a late answer changes nothing");
        assert!(!can_release_again(&s), "a Done set is not released again");
    }

    #[test]
    fn a_refused_release_ends_the_set_in_error_and_a_restart_asks_again() {
        let mut s = set(1, Policy { delivery: Delivery::All, ..Policy::default() });
        let (run, done) = (member(&s, 0, Status::Running, None), member(&s, 0, Status::Done, None));
        change(&mut s, &run, &done);
        assert!(release_refused(&mut s, ErrorCode::Protocol, "not held", 5));
        assert_eq!(s.status, Status::InError);
        assert_eq!(s.error.as_ref().map(|e| e.code), Some(ErrorCode::Protocol));
        assert!(!released(&mut s.clone(), 6, false), "only a set that waits can be released");
        assert!(release_again(&mut s));
        assert!(awaits_release(&s) && s.error.is_none());
    }

    #[test]
    fn under_delivery_all_a_failed_file_ends_the_set_in_error_without_a_release() {
        let mut s = set(2, Policy { delivery: Delivery::All, ..Policy::default() });
        let (r0, d0) = (member(&s, 0, Status::Running, None), member(&s, 0, Status::Done, None));
        let (r1, f1) = (member(&s, 1, Status::Running, None), member(&s, 1, Status::InError, Some(ErrorCode::Io)));
        change(&mut s, &r0, &d0);
        assert_eq!(change(&mut s, &r1, &f1), Some(Status::InError));
        assert!(!awaits_release(&s) && !can_release_again(&s), "a file is missing: nothing to release");
        // Each: the same totals wait for the release too (the receiver
        // confirms and runs its set tasks), with nothing held.
        let mut each = set(1, Policy::default());
        let (r, d) = (member(&each, 0, Status::Running, None), member(&each, 0, Status::Done, None));
        assert_eq!(change(&mut each, &r, &d), None);
        assert!(awaits_release(&each));
    }

    #[test]
    fn a_released_set_with_set_tasks_runs_them_from_their_cursor_then_is_done() {
        let mut s = set(1, Policy::default());
        let (r, d) = (member(&s, 0, Status::Running, None), member(&s, 0, Status::Done, None));
        change(&mut s, &r, &d);
        s.task_index = 7; // left from nothing: the set tasks start at 0
        assert!(released(&mut s, 3, true));
        assert!(runs_set_tasks(&s) && !awaits_release(&s));
        assert_eq!((s.status, s.step, s.task_index, s.finished_at), (Status::Running, Step::PostTask, 0, None));
        // A recount at start-up leaves a set that runs its set tasks alone
        // (settled back to Held, it would run them again from the start).
        s.task_index = 1;
        assert_eq!(settle(&mut s, 4, &[]), None);
        assert_eq!((s.step, s.task_index), (Step::PostTask, 1));
        // The second task fails: InError at that task.
        assert!(set_task_failed(&mut s, ErrorCode::TaskFailed, "set task 2/2 (exec) failed", 5));
        assert_eq!((s.status, s.step, s.task_index), (Status::InError, Step::PostTask, 1));
        assert!(!set_tasks_ran(&mut s.clone(), 6), "a failed set is not Done");
        assert_eq!(settle(&mut s, 6, &[]), None, "its files' totals do not reopen it");
        // Restarted: its set tasks run on from the failed one, no new release.
        assert!(release_again(&mut s));
        assert!(runs_set_tasks(&s) && s.task_index == 1 && s.error.is_none());
        assert!(set_tasks_ran(&mut s, 7));
        assert_eq!((s.status, s.step, s.finished_at), (Status::Done, Step::AllDone, Some(7)));
        assert!(!set_tasks_ran(&mut s, 8) && !release_again(&mut s), "Done stays Done");
    }

    #[test]
    fn a_streamed_set_counts_its_files_until_its_release_makes_its_totals_final() {
        let mut s = set(3, Policy::default());
        s.role = Role::Requested;
        s.step = Step::Transfer;
        assert!(is_streamed_here(&s));
        assert!(streamed_done(&mut s, 2, 20));
        assert!(streamed_done(&mut s, 5, 50), "counted at most to its size");
        assert_eq!((s.set.as_ref().map(|i| i.done), s.transferred), (Some(3), 70));
        assert!(!is_release_ordered_here(&s));
        assert!(release_ordered(&mut s));
        assert!(is_release_ordered_here(&s) && is_streamed_here(&s), "ordered: still streamed here until in place");
        assert!(received_whole(&mut s, 3, 30, "*.csv"));
        assert_eq!((s.status, s.step, s.transferred), (Status::Running, Step::PostTask, 30));
        assert!(runs_set_tasks(&s), "released: its set tasks run");
        assert!(!is_streamed_here(&s));
        assert!(!streamed_done(&mut s, 1, 10), "released: the stream no longer counts");
        assert!(!received_whole(&mut s, 3, 30, "*.csv"), "released once");
        assert!(!release_ordered(&mut s) && !is_release_ordered_here(&s));
        // A sender's own set, or a receiver's set that ended, is not one.
        let mut own = set(3, Policy::default());
        own.step = Step::Transfer;
        assert!(!is_streamed_here(&own));
        let mut cancelled = set(3, Policy::default());
        (cancelled.role, cancelled.step, cancelled.status) = (Role::Requested, Step::Transfer, Status::Cancelled);
        assert!(!streamed_done(&mut cancelled, 1, 10));
    }

    #[test]
    fn a_set_its_sender_ended_in_error_ends_here_and_a_restart_reopens_it() {
        let mut s = set(3, Policy::default());
        (s.role, s.step) = (Role::Requested, Step::Transfer);
        assert!(streamed_done(&mut s, 2, 20));
        assert!(!is_ended_by_sender(&s) && !reopen(&mut s), "running: nothing to reopen");
        assert!(ended_by_sender(&mut s, ErrorCode::FilesFailed, "1 of 3 files failed", 5));
        assert_eq!((s.status, s.step, s.finished_at), (Status::InError, Step::Transfer, Some(5)));
        assert_eq!(s.error.as_ref().map(|e| e.code), Some(ErrorCode::FilesFailed));
        assert!(is_ended_by_sender(&s) && !is_streamed_here(&s));
        assert!(!streamed_done(&mut s, 1, 10), "ended: a late commit is not counted");
        assert!(!ended_by_sender(&mut s, ErrorCode::FilesFailed, "again", 6), "ended once");
        assert!(reopen(&mut s));
        assert_eq!((s.status, s.error.is_none(), s.finished_at), (Status::Running, true, None));
        assert!(is_streamed_here(&s) && streamed_done(&mut s, 1, 10), "reopened: counted again");
        assert_eq!(s.set.as_ref().map(|i| i.done), Some(3), "its counts kept");
        // Not once its release was ordered (it finishes), nor a sender's
        // own set, nor a set that ended otherwise.
        let mut ordered = set(3, Policy::default());
        (ordered.role, ordered.step) = (Role::Requested, Step::Transfer);
        assert!(release_ordered(&mut ordered));
        assert!(!ended_by_sender(&mut ordered, ErrorCode::FilesFailed, "late", 7));
        let mut own = set(3, Policy::default());
        own.step = Step::Transfer;
        assert!(!ended_by_sender(&mut own, ErrorCode::FilesFailed, "no", 7));
        let mut cancelled = set(3, Policy::default());
        (cancelled.role, cancelled.step, cancelled.status) = (Role::Requested, Step::Transfer, Status::Cancelled);
        assert!(!ended_by_sender(&mut cancelled, ErrorCode::FilesFailed, "no", 7) && !reopen(&mut cancelled));
        let mut failed_tasks = set(3, Policy::default());
        (failed_tasks.role, failed_tasks.step, failed_tasks.status) =
            (Role::Requested, Step::PostTask, Status::InError);
        assert!(!is_ended_by_sender(&failed_tasks) && !reopen(&mut failed_tasks), "a set task failed here");
    }

    #[test]
    fn an_empty_set_is_done_without_a_release() {
        let mut s = set(0, Policy::default());
        assert_eq!(settle(&mut s, 1, &[]), Some(Status::Done));
        assert!(!awaits_release(&s) && !can_release_again(&s));
    }

    #[test]
    fn member_ids_are_stable_and_distinct() {
        let s = set(3, Policy::default());
        assert_eq!(member_id(&s.id, 1), member_id(&s.id, 1));
        assert_ne!(member_id(&s.id, 1), member_id(&s.id, 2));
        assert_ne!(member_id(&s.id, 0), s.id);
    }

    #[test]
    fn a_set_is_done_when_its_last_file_is_done_and_counts_bytes() {
        let mut s = set(2, Policy::default());
        let (q0, d0) = (member(&s, 0, Status::Running, None), member(&s, 0, Status::Done, None));
        assert_eq!(change(&mut s, &q0, &d0), None, "one of two files done: still running");
        assert_eq!(s.transferred, 10);
        let (q1, d1) = (member(&s, 1, Status::Running, None), member(&s, 1, Status::Done, None));
        assert_eq!(change(&mut s, &q1, &d1), None, "delivered: it waits for its release");
        assert_eq!((s.set.as_ref().map(|i| i.done), s.transferred, s.step), (Some(2), 20, Step::Held));
        assert!(released(&mut s, 2, false));
        assert_eq!((s.status, s.step), (Status::Done, Step::AllDone));
    }

    #[test]
    fn a_failed_file_ends_the_set_in_error_naming_it_once_all_ended() {
        let mut s = set(2, Policy::default());
        let failed = member(&s, 0, Status::InError, Some(ErrorCode::FileNotFound));
        let running = member(&s, 0, Status::Running, None);
        assert_eq!(change(&mut s, &running, &failed), None);
        let failing = MemberChange::of(Some(&running), &failed).expect("a change");
        assert!(must_skip(&s, &failing), "stop policy: the rest is skipped");
        let skipped = member(&s, 1, Status::InError, Some(ErrorCode::Skipped));
        let queued = member(&s, 1, Status::ToSubmit, None);
        if let Some(c) = MemberChange::of(Some(&queued), &skipped) {
            apply(&mut s, &c);
        }
        assert_eq!(settle(&mut s, 1, &["a.csv (FileNotFound)".into()]), Some(Status::InError));
        let err = s.error.clone().expect("error");
        assert_eq!(err.code, ErrorCode::FilesFailed);
        assert!(err.message.contains("1 of 2 files failed and 1 were skipped: a.csv (FileNotFound)"), "{err:?}");
        assert!(!must_skip(&s, &failing), "an ended set skips nothing more");
        let skipping = MemberChange::of(Some(&queued), &skipped).expect("a change");
        assert!(!must_skip(&s, &skipping), "a skip is not a new failure");
    }

    #[test]
    fn continue_policy_never_skips() {
        let mut s = set(2, Policy { on_failure: OnFailure::Continue, ..Policy::default() });
        let failed = member(&s, 0, Status::InError, Some(ErrorCode::SourceChanged));
        let running = member(&s, 0, Status::Running, None);
        change(&mut s, &running, &failed);
        assert!(!must_skip(&s, &MemberChange::of(Some(&running), &failed).expect("a change")));
        assert_eq!(s.status, Status::Running);
    }

    #[test]
    fn a_restarted_file_reopens_an_ended_set_and_uncounts_itself() {
        let mut s = set(1, Policy::default());
        let failed = member(&s, 0, Status::InError, Some(ErrorCode::FileNotFound));
        let running = member(&s, 0, Status::Running, None);
        assert_eq!(change(&mut s, &running, &failed), Some(Status::InError));
        let queued = member(&s, 0, Status::ToSubmit, None);
        assert_eq!(change(&mut s, &failed, &queued), Some(Status::Running));
        assert_eq!(s.set.as_ref().map(|i| i.failed), Some(0));
        assert!(s.error.is_none() && s.finished_at.is_none());
        let done = member(&s, 0, Status::Done, None);
        assert_eq!(change(&mut s, &queued, &done), None);
        assert!(awaits_release(&s), "delivered again: it waits for its release");
    }

    #[test]
    fn a_cancelled_set_stays_cancelled_whatever_its_files_do() {
        let mut s = set(1, Policy::default());
        s.status = Status::Cancelled;
        let (running, done) = (member(&s, 0, Status::Running, None), member(&s, 0, Status::Done, None));
        assert_eq!(change(&mut s, &running, &done), None);
        assert_eq!(s.status, Status::Cancelled);
    }

    #[test]
    fn a_change_that_moves_no_count_is_not_a_change() {
        let s = set(1, Policy::default());
        let (a, b) = (member(&s, 0, Status::ToSubmit, None), member(&s, 0, Status::Running, None));
        assert_eq!(MemberChange::of(Some(&a), &b), None);
        let plain = RequestRecord::new(s.id.clone(), Role::Requester, "b", "r", Direction::Push, "x");
        assert_eq!(MemberChange::of(None, &plain), None, "not a member");
    }
}
