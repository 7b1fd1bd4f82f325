use super::*;
use crate::protocol::Direction;
use crate::store::{Role, Status, Step};

fn rec() -> RequestRecord {
    RequestRecord::new(RequestId::generate(), Role::Requester, "b", "payroll", Direction::Push, "f")
}

fn write(bus: &EventBus, old: Option<&RequestRecord>, new: &RequestRecord) {
    bus.record_change(&RecordChange { old, new });
}

fn seqs(events: &[Arc<Kept>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[test]
fn status_step_and_bytes_make_events_other_writes_do_not() {
    let r = rec();
    assert!(is_event(None, &r), "a new record");
    assert!(!is_event(Some(&r), &RequestRecord { attempts: 3, ..r.clone() }));
    assert!(is_event(Some(&r), &RequestRecord { status: Status::Running, ..r.clone() }));
    assert!(is_event(Some(&r), &RequestRecord { step: Step::Transfer, ..r.clone() }));
    assert!(is_event(Some(&r), &RequestRecord { transferred: 1, ..r.clone() }));
}

#[test]
fn the_rate_is_bytes_over_time_and_none_across_a_restart() {
    assert_eq!(rate((0, 1_000), (5_000, 1_500)), Some(10_000.0));
    assert_eq!(rate((5_000, 1_000), (1_000, 2_000)), None, "restarted below the last count");
    assert_eq!(rate((0, 1_000), (10, 1_000)), None, "no time between");
}

#[test]
fn a_subscriber_resuming_gets_exactly_what_followed_its_position() {
    let bus = EventBus::new("a");
    let mut r = rec();
    write(&bus, None, &r);
    for n in 1..=5u64 {
        let next = RequestRecord { transferred: n, ..r.clone() };
        write(&bus, Some(&r), &next);
        r = next;
    }
    let all = bus.subscribe(Some(&bus.position(0)));
    assert_eq!(all.gap, None);
    assert_eq!(seqs(&all.backlog), [1, 2, 3, 4, 5, 6]);
    let mut resumed = bus.subscribe(Some(&bus.position(4)));
    assert_eq!(resumed.gap, None);
    assert_eq!(seqs(&resumed.backlog), [5, 6]);
    // A later write reaches the live receiver, once.
    write(&bus, Some(&r), &RequestRecord { status: Status::Done, ..r.clone() });
    assert_eq!(resumed.live.try_recv().expect("live event").seq, 7);
    assert!(resumed.live.try_recv().is_err());
    // Without a position: live only, from after the last event.
    let now = bus.subscribe(None);
    assert!(now.backlog.is_empty() && now.gap.is_none());
    assert_eq!(now.after_seq, 7, "a lagging subscriber catches up from here, not from the start");
    assert_eq!(resumed.after_seq, 4);
    // The event is the transfer's view with its position.
    let json: crate::model::TransferEvent = serde_json::from_str(all.backlog[5].json()).expect("event JSON");
    assert_eq!(json.position, bus.position(6));
    assert_eq!(json.transfer.transferred, 5);
}

#[test]
fn events_no_longer_kept_and_another_runs_positions_are_a_gap() {
    let bus = EventBus::new("a");
    let mut r = rec();
    write(&bus, None, &r);
    for n in 1..(KEPT as u64 + 10) {
        let next = RequestRecord { transferred: n, ..r.clone() };
        write(&bus, Some(&r), &next);
        r = next;
    }
    let s = bus.subscribe(Some(&bus.position(3)));
    let gap = s.gap.expect("events 4.. are gone");
    assert_eq!(gap.oldest, Some(bus.position(11)));
    assert_eq!(s.backlog.len(), KEPT, "every kept one follows");
    assert!(bus.catch_up(3).is_none());
    assert_eq!(bus.catch_up(KEPT as u64 + 5).map(|b| b.len()), Some(5), "events KEPT+6..=KEPT+10");
    // A position from an earlier run of the node (or garbage): a gap, then all kept.
    for stale in ["1-5", "nonsense"] {
        let s = bus.subscribe(Some(stale));
        assert!(s.gap.is_some(), "{stale}");
        assert_eq!(s.backlog.len(), KEPT);
    }
}

#[test]
fn the_ring_forgets_the_rate_of_finished_transfers() {
    let bus = EventBus::new("a");
    let r = rec();
    write(&bus, None, &r);
    let done = RequestRecord { status: Status::Done, ..r.clone() };
    write(&bus, Some(&r), &done);
    assert!(bus.ring.lock().expect("lock").progress.is_empty());
}
