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

/// A push a partner started here and left `Interrupted` for longer than
/// `partial_keep_hours` is cancelled at the sweep and its partial file
/// removed; a recent one, and one whose file was delivered, are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_push_left_longer_than_partial_keep_hours_is_cancelled_and_its_partial_removed() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("b").retention.partial_keep_hours = 72;
    let work_dir = layout.in_dir("b").join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let partial = |age_hours: u64, file: &str, delivered: bool| {
        let at = now_ms() - age_hours * 60 * 60 * 1000;
        let rec = RequestRecord {
            status: Status::Interrupted,
            created_at: at,
            updated_at: at,
            size: 10_000,
            transferred: 4_000,
            delivered,
            ..RequestRecord::new(RequestId::generate(), Role::Requested, "a", "default", Direction::Push, file)
        };
        std::fs::write(work_dir.join(format!("{}.part", rec.id)), vec![1u8; 4_000]).expect("partial file");
        rec
    };
    let (old, recent, delivered) = {
        let store = Store::open(&layout.config("b").data_dir.join("store")).expect("store");
        let put = |r: RequestRecord| store.insert(r, "accepted Push from a").expect("insert");
        let old = put(partial(100, "walked-away.bin", false));
        let recent = put(partial(2, "coming-back.bin", false));
        let delivered = put(partial(100, "renamed-later.bin", true));
        store.flush_blocking().expect("flush");
        (old, recent, delivered)
    };
    let b = layout.start("b").await;
    // The first sweep runs at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let now = loop {
        let now = b.handle().store().get(&old.id).expect("get").expect("kept, cancelled");
        if now.status != Status::Interrupted {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "the old partial was not abandoned within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(now.status, Status::Cancelled);
    let why = now.error.expect("why");
    assert!(why.message.contains("partial_keep_hours"), "{}", why.message);
    assert!(!work_dir.join(format!("{}.part", old.id)).exists(), "its partial file is removed");
    for kept in [&recent, &delivered] {
        let r = b.handle().store().get(&kept.id).expect("get").expect("kept");
        assert_eq!(r.status, Status::Interrupted, "{} is kept as it was", r.file_name);
        assert!(work_dir.join(format!("{}.part", kept.id)).exists(), "{}'s partial file is kept", r.file_name);
    }
    b.shutdown().await;
}
