use super::*;
use crate::protocol::RequestId;

fn rec(role: Role, direction: Direction) -> RequestRecord {
    RequestRecord::new(RequestId::generate(), role, "b", "payroll", direction, "f.csv")
}

#[test]
fn a_new_record_enters_its_status() {
    let r = rec(Role::Requester, Direction::Push);
    let d = deltas(None, &r);
    assert_eq!((d.left, d.entered), (None, Some(Status::ToSubmit)));
    assert_eq!((d.bytes_sent, d.bytes_received, d.retries, d.delivered), (0, 0, 0, false));
    assert_eq!(d.finished, None);
}

#[test]
fn progress_counts_on_this_nodes_side() {
    // A push this node asked for: it sends.
    let old = RequestRecord { status: Status::Running, transferred: 100, ..rec(Role::Requester, Direction::Push) };
    let new = RequestRecord { transferred: 350, ..old.clone() };
    let d = deltas(Some(&old), &new);
    assert_eq!((d.bytes_sent, d.bytes_received), (250, 0));
    assert_eq!((d.left, d.entered), (None, None), "the status did not change");
    // A pull it serves: it sends too.
    let old = RequestRecord { transferred: 0, ..rec(Role::Requested, Direction::Pull) };
    let new = RequestRecord { transferred: 10, ..old.clone() };
    assert_eq!(deltas(Some(&old), &new).bytes_sent, 10);
    // A push it receives and a pull it asked for: it receives.
    for (role, direction) in [(Role::Requested, Direction::Push), (Role::Requester, Direction::Pull)] {
        let old = rec(role, direction);
        let new = RequestRecord { transferred: 7, ..old.clone() };
        let d = deltas(Some(&old), &new);
        assert_eq!((d.bytes_sent, d.bytes_received), (0, 7), "{role:?} {direction:?}");
    }
    // A resumed pull: the server resets its count, then starts at the
    // restart point; the bytes before it were sent by the earlier run.
    let reset = RequestRecord { transferred: 0, ..rec(Role::Requested, Direction::Pull) };
    let resumed = RequestRecord { transferred: 9_000, restart_offset: 9_000, ..reset.clone() };
    assert_eq!(deltas(Some(&reset), &resumed).bytes_sent, 0);
    let on = RequestRecord { transferred: 9_500, ..resumed.clone() };
    assert_eq!(deltas(Some(&resumed), &on).bytes_sent, 500);
    // Back to a restart point: nothing is taken away.
    let old = RequestRecord { transferred: 500, ..rec(Role::Requester, Direction::Push) };
    let new = RequestRecord { transferred: 200, ..old.clone() };
    assert_eq!(deltas(Some(&old), &new).bytes_sent, 0);
}

#[test]
fn delivery_is_counted_once_by_the_receiver() {
    let old = rec(Role::Requested, Direction::Push);
    let new = RequestRecord { delivered: true, ..old.clone() };
    assert!(deltas(Some(&old), &new).delivered);
    assert!(!deltas(Some(&new), &new).delivered, "already delivered");
    // The sender's record never counts a delivery.
    let old = rec(Role::Requester, Direction::Push);
    let new = RequestRecord { delivered: true, ..old.clone() };
    assert!(!deltas(Some(&old), &new).delivered);
}

#[test]
fn attempts_beyond_the_first_are_retries() {
    let r = rec(Role::Requester, Direction::Push);
    let first = RequestRecord { attempts: 1, ..r.clone() };
    assert_eq!(deltas(Some(&r), &first).retries, 0);
    let second = RequestRecord { attempts: 2, ..r.clone() };
    assert_eq!(deltas(Some(&first), &second).retries, 1);
    // An operator restart resets the count; the run after it is a first again.
    let reset = RequestRecord { attempts: 0, ..r.clone() };
    assert_eq!(deltas(Some(&second), &reset).retries, 0);
    assert_eq!(deltas(Some(&reset), &first).retries, 0);
}

#[test]
fn an_end_is_counted_with_its_duration() {
    let running =
        RequestRecord { status: Status::Running, started_at: Some(1_000), ..rec(Role::Requester, Direction::Push) };
    let done = RequestRecord { status: Status::Done, finished_at: Some(3_500), ..running.clone() };
    let d = deltas(Some(&running), &done);
    assert_eq!((d.left, d.entered), (Some(Status::Running), Some(Status::Done)));
    assert_eq!(d.finished, Some((Status::Done, Some(Duration::from_millis(2_500)))));
    // Cancelled before it started: counted, without a duration.
    let queued = rec(Role::Requester, Direction::Push);
    let cancelled = RequestRecord { status: Status::Cancelled, finished_at: Some(5), ..queued.clone() };
    assert_eq!(deltas(Some(&queued), &cancelled).finished, Some((Status::Cancelled, None)));
    // Interrupted is not an end.
    let interrupted = RequestRecord { status: Status::Interrupted, ..running.clone() };
    assert_eq!(deltas(Some(&running), &interrupted).finished, None);
}

/// `name{labels} value` of every sample line.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample is `name value`");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn the_scrape_adds_up_and_parses() {
    let m = Metrics::new();
    let queued = rec(Role::Requester, Direction::Push);
    m.record_change(&RecordChange { old: None, new: &queued });
    let running = RequestRecord { status: Status::Running, attempts: 1, started_at: Some(0), ..queued.clone() };
    m.record_change(&RecordChange { old: Some(&queued), new: &running });
    let moving = RequestRecord { transferred: 4096, ..running.clone() };
    m.record_change(&RecordChange { old: Some(&running), new: &moving });
    let done = RequestRecord { status: Status::Done, finished_at: Some(1500), ..moving.clone() };
    m.record_change(&RecordChange { old: Some(&moving), new: &done });
    m.api_request("GET", "/api/v1/transfers/{id}", 200);

    let text = m.encode();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF:\n{text}");
    let s = samples(&text);
    let value = |name: &str| s.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(value(r#"ferry_transfers{status="Done",rule="payroll",partner="b"}"#), Some(1.0), "{text}");
    assert_eq!(value(r#"ferry_transfers{status="Running",rule="payroll",partner="b"}"#), Some(0.0), "{text}");
    assert_eq!(value(r#"ferry_transfers{status="ToSubmit",rule="payroll",partner="b"}"#), Some(0.0), "{text}");
    assert_eq!(
        value(r#"ferry_transfers_finished_total{status="Done",rule="payroll",partner="b"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(r#"ferry_transfer_bytes_total{direction="sent",partner="b"}"#), Some(4096.0), "{text}");
    assert_eq!(value(r#"ferry_transfer_duration_seconds_count{rule="payroll",status="Done"}"#), Some(1.0), "{text}");
    assert_eq!(value(r#"ferry_transfer_duration_seconds_sum{rule="payroll",status="Done"}"#), Some(1.5), "{text}");
    assert_eq!(
        value(r#"ferry_api_requests_total{method="GET",route="/api/v1/transfers/{id}",status="200"}"#),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_request_moved_to_another_member_leaves_its_old_gauge() {
    let m = Metrics::new();
    let queued = rec(Role::Requester, Direction::Push);
    m.record_change(&RecordChange { old: None, new: &queued });
    let started = RequestRecord { status: Status::Running, partner: "c".into(), ..queued.clone() };
    m.record_change(&RecordChange { old: Some(&queued), new: &started });
    let s = samples(&m.encode());
    let value = |name: &str| s.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(value(r#"ferry_transfers{status="ToSubmit",rule="payroll",partner="b"}"#), Some(0.0));
    assert_eq!(value(r#"ferry_transfers{status="Running",rule="payroll",partner="c"}"#), Some(1.0));
    assert_eq!(value(r#"ferry_transfers{status="ToSubmit",rule="payroll",partner="c"}"#), None, "no negative gauge");
}

#[test]
fn unusual_methods_share_one_series() {
    let m = Metrics::new();
    m.api_request("XQ1", "unmatched", 401);
    m.api_request("XQ2", "unmatched", 401);
    let s = samples(&m.encode());
    let api: Vec<_> = s.iter().filter(|(n, _)| n.starts_with("ferry_api_requests_total")).collect();
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(api[0].1, 2.0);
}
