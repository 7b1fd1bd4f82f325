//! The retention setting on a real node: requests that ended long ago are
//! removed with their job logs when the node starts (and every sweep),
//! while requests that have not ended, failed ones, and recent ones stay,
//! and the node goes on transferring.

mod common;

use std::time::Duration;

use common::*;
use ferry::protocol::{Direction, ErrorCode, RequestId};
use ferry::store::{now_ms, RequestError, RequestRecord, Role, Status, Store};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn record(status: Status, age_days: u64, file: &str) -> RequestRecord {
    let at = now_ms() - age_days * DAY_MS;
    RequestRecord {
        status,
        created_at: at,
        updated_at: at,
        finished_at: status.is_final().then_some(at),
        error: (status == Status::InError)
            .then(|| RequestError { code: ErrorCode::FileNotFound, message: "gone".into() }),
        ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "default", Direction::Push, file)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_ended_requests_and_keeps_running_failed_and_recent_ones() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("a").retention.keep_days = 30;
    // What a node that ran for months left in its store.
    let (old, kept) = {
        let store = Store::open(&layout.config("a").data_dir.join("store")).expect("store");
        let put = |r: RequestRecord| {
            let r = store.insert(r, "submitted").expect("insert");
            store.log(&r.id, "delivered long ago").expect("log");
            r
        };
        let old = vec![put(record(Status::Done, 90, "old.csv")), put(record(Status::Cancelled, 31, "cancelled.csv"))];
        let mut stopped = record(Status::Interrupted, 90, "stopped.csv");
        ferry::lifecycle::stop(&mut stopped, "stopped by an operator");
        let kept = vec![
            put(stopped),                                   // not ended: an operator may restart it
            put(record(Status::InError, 90, "failed.csv")), // failed: kept for the operator
            put(record(Status::Done, 29, "recent.csv")),    // inside the 30 days
        ];
        store.flush_blocking().expect("flush");
        (old, kept)
    };
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    // The first sweep runs at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while old.iter().any(|r| a.handle().store().get(&r.id).expect("get").is_some()) {
        assert!(std::time::Instant::now() < deadline, "old requests still there after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in &old {
        assert!(a.handle().store().job_log(&r.id).expect("log").is_empty(), "{}'s job log went with it", r.file_name);
    }
    for r in &kept {
        let now = a.handle().store().get(&r.id).expect("get").expect("kept");
        assert_eq!(now.status, r.status, "{} is kept as it was", r.file_name);
        assert!(!a.handle().store().job_log(&r.id).expect("log").is_empty());
    }
    // The node goes on: a new transfer runs and stays.
    write_random(&layout.out_dir("a").join("new.bin"), 200_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "new.bin")).await.expect("submitted");
    let done = wait_final(&a.handle(), &rec.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert!(a.handle().store().get(&rec.id).expect("get").is_some());
    a.shutdown().await;
    b.shutdown().await;
}

/// A push a partner started here and left `Interrupted`, unchanged for
/// longer than `partial_keep_hours` while the node was up, is cancelled and
/// its partial file removed. Kept: a recent one, one whose file was
/// delivered, one an operator stopped, one a run serves now, and every one
/// when the node has not been up that long (its downtime does not count).
#[test]
fn an_unfinished_push_left_longer_than_partial_keep_hours_is_cancelled_and_its_partial_removed() {
    let layout = Layout::new(&["a", "b"]);
    let config = layout.config("b").clone();
    let work_dir = layout.in_dir("b").join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let hour = 60 * 60 * 1000;
    let partial = |age_hours: u64, file: &str| {
        let at = now_ms() - age_hours * hour;
        let rec = RequestRecord {
            status: Status::Interrupted,
            created_at: at,
            updated_at: at,
            size: 10_000,
            transferred: 4_000,
            ..RequestRecord::new(RequestId::generate(), Role::Requested, "a", "default", Direction::Push, file)
        };
        std::fs::write(work_dir.join(format!("{}.part", rec.id)), vec![1u8; 4_000]).expect("partial file");
        rec
    };
    let store = Store::open(&config.data_dir.join("store")).expect("store");
    let put = |r: RequestRecord| store.insert(r, "accepted Push from a").expect("insert");
    let old = put(partial(100, "walked-away.bin"));
    let recent = put(partial(2, "coming-back.bin"));
    let delivered = put(RequestRecord { delivered: true, ..partial(100, "renamed-later.bin") });
    let mut stopped = partial(100, "paused.bin");
    ferry::lifecycle::stop(&mut stopped, "stopped by an operator");
    let stopped = put(stopped);
    let served = put(partial(100, "resuming-now.bin"));
    let serving = ferry::actors::retention::Serving::default();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ferry::actors::channel_run::claim_serving(&serving, &served.id, "a", 7, &flag).expect("claimed");
    let part = |id: &RequestId| work_dir.join(format!("{id}.part"));
    let cutoff = now_ms() - 72 * hour;
    let abandon = |up_since| ferry::actors::retention::abandon_partials(&store, &config, &serving, cutoff, up_since);

    // Just started: nothing is old enough yet, whatever its age.
    assert_eq!(abandon(now_ms()).expect("sweep"), 0);
    // Up for a week.
    assert_eq!(abandon(now_ms() - 168 * hour).expect("sweep"), 1);
    let now = store.get(&old.id).expect("get").expect("kept, cancelled");
    assert_eq!(now.status, Status::Cancelled);
    assert!(now.error.expect("why").message.contains("partial_keep_hours"));
    assert!(!part(&old.id).exists(), "its partial file is removed");
    for kept in [&recent, &delivered, &stopped, &served] {
        let r = store.get(&kept.id).expect("get").expect("kept");
        assert_eq!(r.status, Status::Interrupted, "{} is kept as it was", r.file_name);
        assert!(part(&kept.id).exists(), "{}'s partial file is kept", r.file_name);
    }
}

/// A file set a partner sent here with `delivery = all` and never released
/// (it walked away, or its set ended in error) is cancelled once it was
/// left longer than `partial_keep_hours`, and the files it held under
/// their work names are removed; so is a held file that came one request
/// alone. Kept: delivered files, a recent set, one a stream serves now, one
/// whose release was ordered, and everything when the node has not been
/// up that long.
#[test]
fn a_set_a_partner_never_released_is_cancelled_and_the_files_it_held_are_removed() {
    use ferry::fileset::progress::{Delivery, Policy};
    use ferry::store::{member_id, SetMember, Step};
    let layout = Layout::new(&["a", "b"]);
    let config = layout.config("b").clone();
    let in_dir = layout.in_dir("b");
    let work_dir = in_dir.join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let hour = 60 * 60 * 1000;
    let store = Store::open(&config.data_dir.join("store")).expect("store");
    let part = |id: &RequestId| work_dir.join(format!("{id}.part"));
    let policy = Policy { delivery: Delivery::All, ..Policy::default() };
    // A set streamed here, its file 0 held, file 1 delivered, file 2 never sent.
    let streamed = |age_hours: u64, name: &str, ordered: bool| {
        let at = now_ms() - age_hours * hour;
        let id = RequestId::generate();
        let mut set =
            ferry::lifecycle::set::received_set(id.clone(), "a", "default", Direction::Push, (3, name, policy), at);
        set.created_at = at;
        set.updated_at = at;
        if ordered {
            assert!(ferry::lifecycle::set::release_ordered(&mut set));
        }
        store.insert(set, "set of 3 files from a").expect("set");
        let member = |index: u32, file: &str| RequestRecord {
            created_at: at,
            updated_at: at,
            size: 100,
            transferred: 100,
            member_of: Some(SetMember { set: id.clone(), index, modified_ns: 0 }),
            ..RequestRecord::new(member_id(&id, index), Role::Requested, "a", "default", Direction::Push, file)
        };
        let mut held = member(0, &format!("{name}-held.dat"));
        ferry::lifecycle::held(&mut held, 100, ferry::protocol::Digest::of(&[7; 100]));
        std::fs::write(part(&held.id), [7u8; 100]).expect("held file");
        let mut delivered = member(1, &format!("{name}-delivered.dat"));
        ferry::lifecycle::complete(&mut delivered, None, at);
        delivered.delivered = true;
        std::fs::write(in_dir.join(&delivered.file_name), [8u8; 100]).expect("delivered file");
        store.insert(held.clone(), "held").expect("member");
        store.insert(delivered.clone(), "delivered").expect("member");
        (id, held.id, delivered.id)
    };
    let (old_set, old_held, old_delivered) = streamed(100, "walked-away", false);
    let (recent_set, recent_held, _) = streamed(2, "coming-back", false);
    let (served_set, served_held, _) = streamed(100, "streaming-now", false);
    let (ordered_set, ordered_held, _) = streamed(100, "being-released", true);
    // A held file that came one request alone (a large file of a set).
    let alone = |age_hours: u64, file: &str, delivered: bool| {
        let at = now_ms() - age_hours * hour;
        let mut rec = RequestRecord {
            created_at: at,
            updated_at: at,
            ..RequestRecord::new(RequestId::generate(), Role::Requested, "a", "default", Direction::Push, file)
        };
        ferry::lifecycle::held(&mut rec, 100, ferry::protocol::Digest::of(&[9; 100]));
        rec.delivered = delivered;
        std::fs::write(part(&rec.id), [9u8; 100]).expect("held file");
        store.insert(rec, "held").expect("insert").id
    };
    let old_alone = alone(100, "big-walked-away.dat", false);
    let released_alone = alone(100, "big-being-released.dat", true);
    let serving = ferry::actors::retention::Serving::default();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ferry::actors::channel_run::claim_serving(&serving, &served_set, "a", 7, &flag).expect("claimed");
    let cutoff = now_ms() - 72 * hour;
    let abandon = |up_since| ferry::actors::retention::abandon_unreleased(&store, &config, &serving, cutoff, up_since);
    let status = |id: &RequestId| store.get(id).expect("get").expect("kept").status;

    // Just started: nothing is old enough yet, whatever its age.
    assert_eq!(abandon(now_ms()).expect("sweep"), Default::default());
    // Up for a week: the set and its held file, and the file held alone.
    let done = abandon(now_ms() - 168 * hour).expect("sweep");
    assert_eq!((done.sets, done.files), (1, 2));
    let set = store.get(&old_set).expect("get").expect("kept");
    assert_eq!(set.status, Status::Cancelled);
    assert!(set.error.expect("why").message.contains("partial_keep_hours"));
    for id in [&old_held, &old_alone] {
        let r = store.get(id).expect("get").expect("kept");
        assert_eq!(r.status, Status::Cancelled, "{} is cancelled", r.file_name);
        assert!(r.error.expect("why").message.contains("partial_keep_hours"));
        assert!(!part(id).exists(), "{}'s held file is removed", r.file_name);
    }
    assert_eq!(status(&old_delivered), Status::Done, "a delivered file stays");
    assert!(in_dir.join("walked-away-delivered.dat").exists());
    for (set, held) in [(&recent_set, &recent_held), (&served_set, &served_held), (&ordered_set, &ordered_held)] {
        assert_eq!(status(set), Status::Running, "set {set} is kept");
        assert_eq!(status(held), Status::Running, "its held file is kept");
        assert!(part(held).exists(), "its held file stays under its work name");
    }
    assert_eq!(status(&released_alone), Status::Running, "a file whose release was ordered is kept");
    assert!(part(&released_alone).exists());
    assert_eq!(store.get(&ordered_set).expect("get").expect("kept").step, Step::Held);
    // A second sweep finds nothing more.
    assert_eq!(abandon(now_ms() - 168 * hour).expect("sweep"), Default::default());
}
