use proptest::prelude::*;

use super::*;

const E: ErrorCode = ErrorCode::SourceChanged;

fn policy(on_failure: OnFailure, delivery: Delivery) -> Policy {
    Policy { on_empty: OnEmpty::Fail, on_failure, delivery }
}

fn set(p: Policy, n: usize) -> SetProgress {
    let mut s = SetProgress::new(p, vec![10; n]);
    assert!(s.start().is_empty());
    s
}

fn send_ok(s: &mut SetProgress, i: usize) -> Vec<Action> {
    assert_eq!(s.next_to_send(), Some(i));
    assert!(s.on(FileEvent::Started(i)).expect("started").is_empty());
    s.on(FileEvent::Verified(i)).expect("verified")
}

#[test]
fn an_empty_match_fails_or_succeeds_by_policy() {
    let mut s = SetProgress::new(Policy::default(), vec![]);
    assert_eq!(s.start(), [Action::Finish(Outcome::NoFiles)]);
    let mut s = SetProgress::new(Policy { on_empty: OnEmpty::Succeed, ..Policy::default() }, vec![]);
    assert_eq!(s.start(), [Action::Finish(Outcome::Done)]);
    assert_eq!(s.next_to_send(), None);
}

#[test]
fn each_delivers_every_file_as_soon_as_it_is_verified() {
    let mut s = set(policy(OnFailure::Stop, Delivery::Each), 2);
    assert_eq!(send_ok(&mut s, 0), [Action::Deliver(vec![0])]);
    assert!(s.on(FileEvent::Delivered(0)).expect("delivered").is_empty());
    assert_eq!(send_ok(&mut s, 1), [Action::Deliver(vec![1])]);
    assert_eq!(s.on(FileEvent::Delivered(1)).expect("delivered"), [Action::Finish(Outcome::Done)]);
    assert_eq!(s.totals(), Totals { files: 2, delivered: 2, bytes: 20, bytes_delivered: 20, ..Totals::default() });
}

#[test]
fn all_renames_nothing_until_every_file_is_verified() {
    let mut s = set(policy(OnFailure::Stop, Delivery::All), 3);
    assert!(send_ok(&mut s, 0).is_empty());
    assert!(send_ok(&mut s, 1).is_empty());
    assert_eq!(send_ok(&mut s, 2), [Action::Deliver(vec![0, 1, 2])]);
    for i in 0..2 {
        assert!(s.on(FileEvent::Delivered(i)).expect("delivered").is_empty());
    }
    assert_eq!(s.on(FileEvent::Delivered(2)).expect("delivered"), [Action::Finish(Outcome::Done)]);
}

#[test]
fn a_crash_during_the_final_renames_finishes_them_on_resume() {
    let mut s = set(policy(OnFailure::Stop, Delivery::All), 3);
    for i in 0..3 {
        send_ok(&mut s, i);
    }
    s.on(FileEvent::Delivered(0)).expect("delivered");
    // The node restarts with the persisted progress.
    let mut resumed: SetProgress = serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("json");
    assert_eq!(resumed.resume(), [Action::Deliver(vec![1, 2])]);
    resumed.on(FileEvent::Delivered(1)).expect("delivered");
    assert_eq!(resumed.on(FileEvent::Delivered(2)).expect("delivered"), [Action::Finish(Outcome::Done)]);
}

#[test]
fn a_file_being_sent_at_a_crash_is_sent_again_and_finished_ones_are_not() {
    let mut s = set(policy(OnFailure::Stop, Delivery::Each), 3);
    send_ok(&mut s, 0);
    s.on(FileEvent::Delivered(0)).expect("delivered");
    s.on(FileEvent::Started(1)).expect("started");
    assert!(s.resume().is_empty());
    assert_eq!(s.next_to_send(), Some(1), "file 1 again (from its restart point), not file 0");
}

#[test]
fn stop_skips_what_was_not_sent_and_names_the_failed_file() {
    let mut s = set(policy(OnFailure::Stop, Delivery::Each), 3);
    send_ok(&mut s, 0);
    s.on(FileEvent::Started(1)).expect("started");
    let out = s.on(FileEvent::Failed(1, E)).expect("failed");
    // File 0 still waits for its rename; then the set ends.
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.next_to_send(), None);
    assert_eq!(
        s.on(FileEvent::Delivered(0)).expect("delivered"),
        [Action::Finish(Outcome::InError { failed: vec![(1, E)] })]
    );
    assert_eq!(s.totals().skipped, 1);
}

#[test]
fn a_stopped_set_resumed_after_a_crash_ends_instead_of_waiting() {
    let mut s = set(policy(OnFailure::Stop, Delivery::Each), 3);
    s.on(FileEvent::Started(0)).expect("started");
    s.on(FileEvent::Started(1)).expect("started");
    s.on(FileEvent::Failed(0, E)).expect("failed");
    // The node stops while file 1 is still being sent.
    assert_eq!(s.resume(), [Action::Finish(Outcome::InError { failed: vec![(0, E)] })]);
    assert_eq!(s.totals().skipped, 2);
    // An empty set that had not ended yet ends by its policy.
    let mut empty = SetProgress::new(Policy::default(), vec![]);
    assert_eq!(empty.resume(), [Action::Finish(Outcome::NoFiles)]);
}

#[test]
fn continue_sends_the_rest_and_ends_in_error_naming_the_failures() {
    let mut s = set(policy(OnFailure::Continue, Delivery::Each), 3);
    s.on(FileEvent::Started(0)).expect("started");
    assert!(s.on(FileEvent::Failed(0, E)).expect("failed").is_empty());
    send_ok(&mut s, 1);
    s.on(FileEvent::Delivered(1)).expect("delivered");
    s.on(FileEvent::Started(2)).expect("started");
    assert_eq!(
        s.on(FileEvent::Failed(2, ErrorCode::FileNotFound)).expect("failed"),
        [Action::Finish(Outcome::InError { failed: vec![(0, E), (2, ErrorCode::FileNotFound)] })]
    );
}

#[test]
fn all_with_a_failure_delivers_nothing() {
    let mut s = set(policy(OnFailure::Continue, Delivery::All), 2);
    send_ok(&mut s, 0);
    s.on(FileEvent::Started(1)).expect("started");
    assert_eq!(
        s.on(FileEvent::Failed(1, E)).expect("failed"),
        [Action::Finish(Outcome::InError { failed: vec![(1, E)] })]
    );
    assert_eq!(s.states[0], FileState::Verified, "never renamed");
}

#[test]
fn events_out_of_order_are_refused() {
    let mut s = set(Policy::default(), 1);
    assert_eq!(
        s.on(FileEvent::Verified(0)),
        Err(ProgressError::OutOfOrder { index: 0, event: "verified", state: FileState::Pending })
    );
    assert_eq!(s.on(FileEvent::Started(5)), Err(ProgressError::NoSuchFile(5)));
    send_ok(&mut s, 0);
    assert!(s.on(FileEvent::Started(0)).is_err());
}

/// What a runner did: every action the set answered, in order.
#[derive(Debug)]
struct Trace {
    actions: Vec<Action>,
    /// The states when each action was answered.
    states_at: Vec<Vec<FileState>>,
}

/// The invariants any run must keep; `Err` names the broken one.
fn check(policy: Policy, n: usize, trace: &Trace, end: &SetProgress) -> Result<(), String> {
    let finishes: Vec<&Outcome> = trace
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Finish(o) => Some(o),
            _ => None,
        })
        .collect();
    if finishes.len() != 1 {
        return Err(format!("{} finishes", finishes.len()));
    }
    for (action, states) in trace.actions.iter().zip(&trace.states_at) {
        if let (Action::Deliver(_), Delivery::All) = (action, policy.delivery) {
            if !states.iter().all(|s| matches!(s, FileState::Verified | FileState::Delivered)) {
                return Err(format!("all-delivery renamed before every file was verified: {states:?}"));
            }
        }
    }
    let failed: Vec<(usize, ErrorCode)> = end
        .states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            FileState::Failed(c) => Some((i, *c)),
            _ => None,
        })
        .collect();
    let expected = match (n, failed.is_empty()) {
        (0, _) if policy.on_empty == OnEmpty::Fail => Outcome::NoFiles,
        (_, true) => Outcome::Done,
        (_, false) => Outcome::InError { failed },
    };
    if *finishes[0] != expected {
        return Err(format!("ended {:?}, expected {expected:?}", finishes[0]));
    }
    if expected == Outcome::Done && !end.states.iter().all(|s| *s == FileState::Delivered) {
        return Err(format!("Done with {:?}", end.states));
    }
    Ok(())
}

/// Runs a set to its end: file `i` fails when `fails[i]`, and the node
/// restarts (resume) after the steps in `crashes`.
fn run(policy: Policy, fails: &[bool], crashes: &[usize]) -> (Trace, SetProgress) {
    let mut s = SetProgress::new(policy, vec![1; fails.len()]);
    let mut trace = Trace { actions: Vec::new(), states_at: Vec::new() };
    let mut pending: Vec<Action> = s.start();
    let mut step = 0;
    let record = |actions: &[Action], s: &SetProgress, trace: &mut Trace| {
        for a in actions {
            trace.actions.push(a.clone());
            trace.states_at.push(s.states.clone());
        }
    };
    record(&pending.clone(), &s, &mut trace);
    for _ in 0..1000 {
        if pending.iter().any(|a| matches!(a, Action::Finish(_))) {
            break;
        }
        step += 1;
        if crashes.contains(&step) {
            pending = s.resume();
            record(&pending.clone(), &s, &mut trace);
            continue;
        }
        let out = if let Some(Action::Deliver(files)) = pending.first().cloned() {
            let mut out = Vec::new();
            for i in files {
                if s.states[i] == FileState::Verified {
                    out.extend(s.on(FileEvent::Delivered(i)).expect("deliver"));
                }
            }
            out
        } else if let Some(i) = s.next_to_send() {
            s.on(FileEvent::Started(i)).expect("start");
            match fails[i] {
                true => s.on(FileEvent::Failed(i, E)).expect("fail"),
                false => s.on(FileEvent::Verified(i)).expect("verify"),
            }
        } else {
            break;
        };
        record(&out, &s, &mut trace);
        pending = out;
    }
    (trace, s)
}

fn policies() -> impl Strategy<Value = Policy> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(e, f, d)| Policy {
        on_empty: if e { OnEmpty::Fail } else { OnEmpty::Succeed },
        on_failure: if f { OnFailure::Stop } else { OnFailure::Continue },
        delivery: if d { Delivery::Each } else { Delivery::All },
    })
}

proptest! {
    #[test]
    fn every_run_ends_once_as_its_files_say(
        policy in policies(),
        fails in proptest::collection::vec(prop::bool::weighted(0.2), 0..8),
        crashes in proptest::collection::vec(1usize..30, 0..4),
    ) {
        let (trace, end) = run(policy, &fails, &crashes);
        prop_assert_eq!(check(policy, fails.len(), &trace, &end), Ok(()), "{:?}", trace);
    }
}

#[test]
fn the_invariants_catch_a_planted_early_rename() {
    // A run whose set renamed under `all` before file 1 was verified.
    let policy = policy(OnFailure::Stop, Delivery::All);
    let mut end = SetProgress::new(policy, vec![1, 1]);
    end.states = vec![FileState::Delivered, FileState::Delivered];
    let trace = Trace {
        actions: vec![Action::Deliver(vec![0]), Action::Finish(Outcome::Done)],
        states_at: vec![vec![FileState::Verified, FileState::Pending], vec![FileState::Delivered; 2]],
    };
    let err = check(policy, 2, &trace, &end).expect_err("the early rename is caught");
    assert!(err.contains("before every file was verified"), "{err}");
    // And a run that finished twice.
    let trace = Trace {
        actions: vec![Action::Finish(Outcome::Done), Action::Finish(Outcome::Done)],
        states_at: vec![vec![FileState::Delivered; 2]; 2],
    };
    assert!(check(policy, 2, &trace, &end).is_err());
}
