//! Interrupted requests are retried with backoff, resume from the
//! receiver's restart point, and give up with the last cause once the
//! attempts are spent. Real nodes on loopback, in one process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry::config::RetryPolicy;
use ferry::protocol::{Direction, ErrorCode};
use ferry::store::Status;

const WITHIN: Duration = Duration::from_secs(60);

fn quick_retries(layout: &mut Layout, node: &str, attempts: u32) {
    let c = layout.config_mut(node);
    c.retry = RetryPolicy { attempts, initial_delay_ms: 50, max_delay_ms: 200 };
    c.connect_timeout_ms = 300;
}

/// Attempts are spent only on runs that reached the partner: here each
/// run is cut short by the partner stopping mid-transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_runs_spend_attempts_then_fail_with_the_last_cause() {
    let mut layout = Layout::new(&["a", "b"]);
    quick_retries(&mut layout, "a", 1);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("f"), 128 << 20);
    let rec = a.handle().submit(submit(Direction::Push, "b", "f")).await.expect("submitted");
    // b's work file, not its record (progress is recorded every 500 ms, by
    // when a fast machine may be done): stopped once the first bytes land.
    let work = layout.in_dir("b").join(".ferry-work").join(format!("{}.part", rec.id));
    let deadline = Instant::now() + WITHIN;
    while std::fs::metadata(&work).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "transfer never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.shutdown().await;
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::InError);
    assert_eq!(r.attempts, 1);
    let err = r.error.expect("error");
    assert_eq!(err.code, ErrorCode::RetriesExhausted);
    assert!(err.message.contains("gave up after 1 attempts"), "{}", err.message);
    assert!(err.message.contains("Shutdown") || err.message.contains("Connection"), "last cause kept: {}", err.message);
    a.shutdown().await;
}

/// An unreachable partner does not spend the request's attempts: after the
/// first dial fails the request waits, queued, and runs when the partner
/// is back (the probe finds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_that_comes_back_gets_the_request() {
    let mut layout = Layout::new(&["a", "b"]);
    quick_retries(&mut layout, "a", 2);
    layout.config_mut("a").cluster.probe_interval_ms = 200;
    let a = layout.start("a").await;
    let digest = write_random(&layout.out_dir("a").join("f"), 300_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "f")).await.expect("submitted");
    let deadline = Instant::now() + WITHIN;
    let waiting = |log: &[ferry::store::LogEntry]| log.iter().any(|l| l.message.starts_with("waiting: partner b"));
    while !waiting(&a.handle().store().job_log(&rec.id).expect("log")) {
        assert!(Instant::now() < deadline, "never waited for b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let interim = a.handle().store().get(&rec.id).expect("store").expect("record");
    assert!(!interim.status.is_final(), "still waiting: {interim:?}");
    assert_eq!(interim.attempts, 1, "waiting spends no attempts");
    let b = layout.start("b").await;
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::Done, "{:?}", r.error);
    assert_eq!(file_digest(&layout.in_dir("b").join("f")), digest);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_stopped_mid_transfer_is_resumed_from_its_restart_point() {
    let mut layout = Layout::new(&["a", "b"]);
    quick_retries(&mut layout, "a", 50);
    layout.config_mut("b").restart_interval_bytes = 4 << 20;
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let size = 256 << 20;
    let digest = write_random(&layout.out_dir("a").join("big"), size);
    let rec = a.handle().submit(submit(Direction::Push, "b", "big")).await.expect("submitted");
    // Stop b once it has received a good part of the file.
    let deadline = Instant::now() + WITHIN;
    loop {
        let point = b.handle().store().get(&rec.id).expect("store").and_then(|r| r.restart_point);
        if point.is_some_and(|p| p.offset >= 8 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "transfer never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.shutdown().await;
    let on_b = {
        let b2 = layout.start("b").await;
        let r = b2.handle().store().get(&rec.id).expect("store").expect("b recorded it");
        b2.shutdown().await;
        r
    };
    assert_eq!(on_b.status, Status::Interrupted, "b recorded the interruption");
    let point = on_b.restart_point.expect("a restart point survives the stop");
    assert!(point.offset >= 8 << 20 && point.offset < size as u64, "restart point at {}", point.offset);
    // a is retrying meanwhile; bring b back for good.
    let b = layout.start("b").await;
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::Done, "{:?}", r.error);
    assert_eq!(file_digest(&layout.in_dir("b").join("big")), digest);
    let log = b.handle().store().job_log(&rec.id).expect("log");
    let resume = log
        .iter()
        .find(|l| l.message.starts_with("resuming at offset"))
        .unwrap_or_else(|| panic!("b resumed rather than starting over: {log:#?}"));
    assert!(
        resume.message.ends_with("so 0 bytes are received again"),
        "a clean stop loses nothing already received: {}",
        resume.message
    );
    let a_log = a.handle().store().job_log(&rec.id).expect("log");
    assert!(a_log.iter().any(|l| l.message.contains(&format!("from offset {}", point.offset))), "{a_log:#?}");
    a.shutdown().await;
    b.shutdown().await;
}
