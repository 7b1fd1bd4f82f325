//! Every rule of the request lifecycle, without a node.

use std::time::Duration;

use super::*;
use crate::protocol::Direction;
use crate::store::Role;

fn rec(role: Role, status: Status, step: Step) -> RequestRecord {
    RequestRecord { status, step, ..RequestRecord::new(RequestId::generate(), role, "b", "r", Direction::Push, "f") }
}

fn policy(attempts: u32) -> RetryPolicy {
    RetryPolicy { attempts, initial_delay_ms: 100, max_delay_ms: 1_000 }
}

#[test]
fn every_error_code_maps_to_one_status() {
    for code in ErrorCode::ALL {
        let expected = match code {
            ErrorCode::Cancelled => Status::Cancelled,
            ErrorCode::Connection | ErrorCode::Shutdown | ErrorCode::Stopped | ErrorCode::Internal => {
                Status::Interrupted
            }
            _ => Status::InError,
        };
        assert_eq!(status_after(code), expected, "{code}");
        assert_eq!(keeps_partial_file(code), expected == Status::Interrupted, "{code}");
    }
}

#[test]
fn an_internal_failure_is_resumable_wherever_it_happens() {
    // It used to be Interrupted before a channel existed and InError after.
    let mut r = rec(Role::Requester, Status::Running, Step::Transfer);
    assert_eq!(fail(&mut r, ErrorCode::Internal, "boom", 0, 5), Some(Status::Interrupted));
    assert_eq!(r.finished_at, None, "an interrupted request has not finished");
}

#[test]
fn a_failure_records_its_cause_and_the_end_of_a_final_status() {
    let mut r = rec(Role::Requester, Status::Running, Step::Transfer);
    r.retry_at = Some(9);
    assert_eq!(fail(&mut r, ErrorCode::FileNotFound, "no such file", 0, 42), Some(Status::InError));
    assert_eq!(r.error, Some(RequestError { code: ErrorCode::FileNotFound, message: "no such file".into() }));
    assert_eq!(r.finished_at, Some(42));
    assert_eq!(r.retry_at, None);
    assert_eq!(r.step, Step::Transfer, "no error tasks: the step stays where it failed");
}

#[test]
fn a_late_failure_never_rewrites_done_or_cancelled() {
    for status in [Status::Done, Status::Cancelled] {
        let mut r = rec(Role::Requested, status, Step::AllDone);
        let before = r.clone();
        assert_eq!(fail(&mut r, ErrorCode::Connection, "late", 1, 1), None);
        assert_eq!(r, before);
    }
}

#[test]
fn error_tasks_move_to_the_error_step_and_restart_returns_to_the_failed_task() {
    let mut r = rec(Role::Requester, Status::Running, Step::PostTask);
    r.task_index = 2;
    assert_eq!(fail(&mut r, ErrorCode::TaskFailed, "exec exited 1", 3, 7), Some(Status::InError));
    assert_eq!((r.step, r.failed_step, r.error_task_index), (Step::ErrorTask, Some(Step::PostTask), 0));
    assert_eq!(next_task(&r, 3), Some(0));
    task_done(&mut r);
    assert_eq!((r.error_task_index, r.task_index), (1, 2), "error tasks have their own cursor");
    // A second failure (an error task failing) keeps the first cause's step.
    assert_eq!(fail(&mut r, ErrorCode::TaskFailed, "second", 3, 8), Some(Status::InError));
    assert_eq!(r.failed_step, Some(Step::PostTask));
    restart(&mut r);
    assert_eq!((r.status, r.step, r.task_index), (Status::ToSubmit, Step::PostTask, 2));
    assert_eq!((r.failed_step, r.error, r.finished_at, r.attempts), (None, None, None, 0));
}

#[test]
fn the_cursor_starts_at_zero_in_a_new_step_and_is_kept_on_resume() {
    let mut r = rec(Role::Requester, Status::Running, Step::PreTask);
    assert_eq!(next_task(&r, 2), Some(0));
    task_done(&mut r);
    assert_eq!(next_task(&r, 2), Some(1));
    enter_step(&mut r, Step::PreTask);
    assert_eq!(next_task(&r, 2), Some(1), "re-entering the same step resumes");
    task_done(&mut r);
    assert_eq!(next_task(&r, 2), None);
    start_transfer(&mut r, 10, 0, 1);
    assert_eq!((r.step, r.task_index), (Step::Transfer, 0));
    verified(&mut r, 10, Digest::of(b"x"));
    assert_eq!((r.step, r.task_index, r.delivered), (Step::PostTask, 0, true));
    task_done(&mut r);
    confirmed(&mut r);
    assert_eq!(r.task_index, 1, "confirming in PostTask keeps the post-task cursor");
    assert_eq!(next_task(&r, 0), None, "no tasks: nothing to run");
}

#[test]
fn complete_is_done_all_done_with_the_figures() {
    let mut r = rec(Role::Requester, Status::Running, Step::PostTask);
    r.error = Some(RequestError { code: ErrorCode::Connection, message: "earlier".into() });
    complete(&mut r, Some((5, Digest::of(b"hello"))), 77);
    assert_eq!((r.status, r.step, r.transferred, r.finished_at), (Status::Done, Step::AllDone, 5, Some(77)));
    assert_eq!(r.hash, Some(Digest::of(b"hello")));
    assert_eq!(r.error, None);
}

#[test]
fn the_commander_takes_only_queued_requests() {
    let mut r = rec(Role::Requester, Status::ToSubmit, Step::PreTask);
    assert!(take(&mut r, 3, Some("c")));
    assert_eq!((r.status, r.attempts, r.partner.as_str()), (Status::Running, 3, "c"));
    assert!(!take(&mut r, 4, None), "taken twice");
    assert_eq!(r.attempts, 3);
}

#[test]
fn operator_commands_follow_the_status() {
    use CommandPath::*;
    let cases = [
        (Status::ToSubmit, Record, Record, false),
        (Status::Running, ToRunner, ToRunner, false),
        (Status::Interrupted, Record, Record, true),
        (Status::InError, Refused, Record, true),
        (Status::Done, Refused, Refused, false),
        (Status::Cancelled, Refused, Refused, false),
    ];
    for (status, stop_p, cancel_p, restart_ok) in cases {
        let r = rec(Role::Requester, status, Step::Transfer);
        assert_eq!(stop_path(&r), stop_p, "stop {status:?}");
        assert_eq!(cancel_path(&r), cancel_p, "cancel {status:?}");
        assert_eq!(can_restart(&r), restart_ok, "restart {status:?}");
    }
    let mut r = rec(Role::Requester, Status::ToSubmit, Step::PreTask);
    stop(&mut r, "by an operator");
    assert!(is_stopped(&r));
    assert_eq!(stop_path(&r), Refused, "stopped twice");
    cancel(&mut r, "gone", 9);
    assert_eq!((r.status, r.finished_at), (Status::Cancelled, Some(9)));
}

#[test]
fn retries_back_off_then_give_up_naming_the_last_cause() {
    let mut r = rec(Role::Requester, Status::Interrupted, Step::Transfer);
    r.error = Some(RequestError { code: ErrorCode::Connection, message: "link lost".into() });
    r.attempts = 1;
    assert_eq!(after_run(&r, &policy(3), 0), AfterRun::RetryIn { delay: Duration::from_millis(100), retry: 2, of: 3 });
    r.attempts = 2;
    assert_eq!(after_run(&r, &policy(3), 0), AfterRun::RetryIn { delay: Duration::from_millis(200), retry: 3, of: 3 });
    r.attempts = 3;
    match after_run(&r, &policy(3), 0) {
        AfterRun::GiveUp(m) => assert!(m.contains("3 attempts") && m.contains("link lost"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(retry_due(&mut r));
    assert_eq!(r.status, Status::ToSubmit);
}

#[test]
fn nothing_is_retried_that_is_stopped_final_or_running() {
    for status in [Status::Done, Status::InError, Status::Cancelled, Status::Running, Status::ToSubmit] {
        let mut r = rec(Role::Requester, status, Step::Transfer);
        assert_eq!(after_run(&r, &policy(3), 0), AfterRun::Nothing, "{status:?}");
        assert!(!retry_due(&mut r), "{status:?}");
    }
    let mut r = rec(Role::Requester, Status::ToSubmit, Step::Transfer);
    stop(&mut r, "paused");
    assert_eq!(after_run(&r, &policy(3), 0), AfterRun::Nothing);
    assert!(!retry_due(&mut r));
}

#[test]
fn reschedule_runs_again_at_its_time_up_to_its_limit() {
    let mut r = rec(Role::Requester, Status::Running, Step::PostTask);
    r.attempts = 10;
    fail(&mut r, ErrorCode::TaskFailed, "exec exited 2", 1, 5);
    assert_eq!(reschedule(&mut r, 1_000, 2), Ok(()));
    assert_eq!((r.status, r.step, r.attempts, r.reschedules), (Status::Interrupted, Step::PostTask, 0, 1));
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(ErrorCode::TaskFailed), "the first cause stays");
    assert_eq!(after_run(&r, &policy(3), 10), AfterRun::RetryAt(1_000), "attempts do not matter");
    assert_eq!(after_run(&r, &policy(3), 2_000), AfterRun::RetryAt(2_000), "a time past is now");
    assert_eq!(recovery(&r), Recovery::Keep, "a restarted node waits for the time too");
    r.reschedules = 2;
    assert!(reschedule(&mut r, 1, 2).is_err());
    let mut requested = rec(Role::Requested, Status::InError, Step::ErrorTask);
    assert!(reschedule(&mut requested, 1, 5).is_err(), "only the requester runs a request");
}

#[test]
fn start_up_requeues_the_requesters_work_and_interrupts_the_partners() {
    let cases = [
        (Role::Requester, Status::Running, Recovery::Requeue),
        (Role::Requester, Status::Interrupted, Recovery::Requeue),
        (Role::Requester, Status::ToSubmit, Recovery::Keep),
        (Role::Requester, Status::InError, Recovery::Keep),
        (Role::Requested, Status::Running, Recovery::Interrupt),
        (Role::Requested, Status::Interrupted, Recovery::Keep),
        (Role::Requested, Status::Done, Recovery::Keep),
    ];
    for (role, status, expected) in cases {
        assert_eq!(recovery(&rec(role, status, Step::Transfer)), expected, "{role:?} {status:?}");
    }
    let mut stopped = rec(Role::Requester, Status::Running, Step::Transfer);
    stopped.error = Some(RequestError { code: ErrorCode::Stopped, message: "paused".into() });
    stopped.status = Status::Interrupted;
    assert_eq!(recovery(&stopped), Recovery::Keep);
}

#[test]
fn a_chained_request_id_is_the_same_every_time_and_differs_per_task() {
    let id = RequestId::generate();
    let a = chained_id(&id, Step::PostTask, 0);
    assert_eq!(a, chained_id(&id, Step::PostTask, 0));
    assert_ne!(a, chained_id(&id, Step::PostTask, 1));
    assert_ne!(a, chained_id(&id, Step::PreTask, 0));
    assert_ne!(a, id);
}

#[test]
fn the_requested_side_runs_again_from_its_failed_task() {
    let mut r = rec(Role::Requested, Status::Running, Step::PostTask);
    r.task_index = 1;
    fail(&mut r, ErrorCode::TaskFailed, "copy failed", 2, 5);
    assert_eq!(r.step, Step::ErrorTask);
    run_again(&mut r);
    assert_eq!((r.status, r.step, r.task_index, r.error.is_none()), (Status::Running, Step::PostTask, 1, true));
    assert_eq!(r.finished_at, None);
}

#[test]
fn a_held_file_waits_for_its_set_whatever_happens_to_the_node() {
    // delivery = all: verified, held under its work name.
    let mut r = rec(Role::Requested, Status::Running, Step::Transfer);
    held(&mut r, 42, Digest([7; 32]));
    assert!(is_held(&r));
    assert_eq!((r.transferred, r.hash, r.delivered), (42, Some(Digest([7; 32])), false));
    // A restart of the node keeps it (not Interrupted: nothing runs).
    assert_eq!(recovery(&r), Recovery::Keep);
    // Operators cannot stop or cancel it here: its set decides, on its sender.
    assert_eq!(stop_path(&r), CommandPath::Refused);
    assert_eq!(cancel_path(&r), CommandPath::Refused);
    // A channel lost after it was held leaves it held.
    let mut lost = r.clone();
    fail(&mut lost, ErrorCode::Connection, "gone", 0, 1);
    assert!(is_held(&lost), "an interrupted held file is still held");
    // Only the requested side holds files; Done is not held.
    assert!(!is_held(&rec(Role::Requester, Status::Running, Step::Held)));
    assert!(!is_held(&rec(Role::Requested, Status::Done, Step::Held)));
}

#[test]
fn a_pulled_file_its_requester_holds_takes_commands_and_its_set_does_not() {
    // delivery = all on a pull: the requester holds what it received, but
    // the request is its own: it stops and cancels as any other, and a
    // crash requeues it (its retry claims the held file, not sent again).
    let mut r = rec(Role::Requester, Status::Running, Step::Transfer);
    held(&mut r, 42, Digest([7; 32]));
    assert_eq!(stop_path(&r), CommandPath::ToRunner);
    assert_eq!(cancel_path(&r), CommandPath::ToRunner);
    assert_eq!(recovery(&r), Recovery::Requeue);
    let mut lost = r.clone();
    fail(&mut lost, ErrorCode::Connection, "gone", 0, 1);
    assert_eq!(lost.step, Step::Held, "still held, for the claim");
    assert_eq!(cancel_path(&lost), CommandPath::Record);
    // The set itself waits for its release: its own commands decide.
    let mut set = rec(Role::Requester, Status::Running, Step::Held);
    set.set = Some(crate::store::SetInfo {
        pattern: "*".into(),
        policy: Default::default(),
        files: 1,
        done: 1,
        failed: 0,
        skipped: 0,
    });
    assert_eq!(stop_path(&set), CommandPath::Refused);
    assert_eq!(cancel_path(&set), CommandPath::Refused);
}
