//! Crash safety with real `ferry node` processes on loopback: nodes are
//! SIGKILLed in the middle of transfers and restarted on the same stores and
//! folders, partial files are corrupted between a kill and the restart,
//! operators stop, restart and cancel a running transfer, a receiver runs
//! out of room and a source grows while it is sent.
//!
//! Every node process is owned by the cluster and killed when it is
//! dropped; every wait is bounded and fails with both nodes' job logs. Tests
//! that move large files run one at a time (a 2-core machine runs two nodes
//! and the test), so their kill points and timings stay meaningful.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::procs::{digest_streamed, format_log, now_ms, parse_resume, run_ferry, write_random_streamed, ProcCluster};
use common::{delivered, sh_task, work_files};
use ferry::api::{ApiClient, LogLineView, TransferView};
use ferry::cluster::LocalLayout;
use ferry::config::{OnResumeMismatch, RetryPolicy, Rule};
use ferry::model::Submit;
use ferry::protocol::{Digest, Direction};
use ferry::store::Status;

const MIB: u64 = 1 << 20;
/// The receivers' restart interval in these tests.
const INTERVAL: u64 = 8 * MIB;
/// The block size (the default).
const BLOCK: u64 = MIB;
/// Size of the large transfers.
const BIG: u64 = 256 * MIB;
/// Bound on a transfer, resumes and retries included.
const TRANSFER_WITHIN: Duration = Duration::from_secs(120);
/// Bound on one step (a kill point, a resume, a status change).
const STEP_WITHIN: Duration = Duration::from_secs(60);

/// Tests run one at a time: each moves large files or many requests with two
/// node processes on a small machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Small restart interval, fast retries.
fn tweak(layout: &mut LocalLayout) {
    for c in &mut layout.configs {
        c.restart_interval_bytes = INTERVAL;
        c.retry = RetryPolicy { attempts: 50, initial_delay_ms: 200, max_delay_ms: 1000 };
    }
}

fn request(direction: Direction, rule: &str, file: &str) -> Submit {
    Submit { rule: rule.into(), ..common::submit(direction, "b", file) }
}

async fn log_of(api: &ApiClient, id: &str) -> Vec<LogLineView> {
    api.log(id).await.unwrap_or_else(|e| panic!("job log of {id} on {}: {e}", api.base()))
}

fn count_lines(log: &[LogLineView], prefix: &str) -> usize {
    log.iter().filter(|l| l.message.starts_with(prefix)).count()
}

/// Offsets of the `VERB SIZE bytes from offset OFF` lines (`sending` / `receiving`).
fn attempt_offsets(log: &[LogLineView], verb: &str) -> Vec<u64> {
    log.iter()
        .filter_map(|l| l.message.strip_prefix(&format!("{verb} ")))
        .filter_map(|rest| rest.rsplit_once(" bytes from offset ").and_then(|(_, off)| off.parse().ok()))
        .collect()
}

/// Kills `victim` when the receiver's work file crosses 30% and again at
/// 70% of a 256 MiB transfer, restarting it each time; checks the request
/// ends Done on both nodes with the right file, delivered once, and that
/// every resume received again at most one restart interval plus a block.
async fn kill_twice(direction: Direction, victim: &str) {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut c = ProcCluster::new(&["a", "b"], tweak);
    let api_a = c.start("a").await;
    c.start("b").await;
    // (node holding the source and sending, node receiving)
    let (sender, receiver) = match direction {
        Direction::Push => ("a", "b"),
        Direction::Pull => ("b", "a"),
    };
    let survivor = if victim == "a" { "b" } else { "a" };
    let name = "big.bin";
    let digest = write_random_streamed(&c.out_dir(sender).join(name), BIG);
    let id = api_a.submit(&request(direction, "default", name)).await.expect("submitted").id;
    let label = format!("{direction:?}, {victim} killed");

    let mut resume_secs = Vec::new();
    for pct in [30u64, 70] {
        let len = c.wait_work_len(receiver, &id, BIG * pct / 100, survivor, STEP_WITHIN).await;
        c.kill9(victim);
        let killed_at = now_ms();
        eprintln!("[{label}] SIGKILL {victim} with {len} bytes ({}%) in {receiver}'s work file", len * 100 / BIG);
        c.start(victim).await;
        let ready_at = now_ms();
        let line = c
            .wait_log_line(receiver, &id, STEP_WITHIN, "the restarted transfer resumes", |l| {
                l.at >= killed_at
                    && (l.message.starts_with("resuming at offset") || l.message.starts_with("starting over"))
            })
            .await;
        assert!(
            line.message.starts_with("resuming at offset"),
            "[{label}] the resume after the kill at {pct}% started over instead: {:?}\n{}",
            line.message,
            c.report(&id).await
        );
        let secs = (line.at as f64 - ready_at as f64) / 1000.0;
        eprintln!("[{label}] {secs:.2} s from {victim}'s API answering to {:?}", line.message);
        resume_secs.push(secs);
    }

    let done = c.wait_view("a", &id, TRANSFER_WITHIN, "the requester records the end", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "[{label}] requester: {:?}\n{}", done.error, c.report(&id).await);
    c.wait_view("b", &id, STEP_WITHIN, "the requested node records Done", |v| v.status == Status::Done).await;
    let delivered_path = c.in_dir(receiver).join(name);
    assert_eq!(digest_streamed(&delivered_path), digest, "[{label}] the delivered file differs from the source");
    assert!(work_files(&c.in_dir(receiver)).is_empty(), "[{label}] no work file left");

    let rlog = log_of(&c.api(receiver), &id).await;
    let slog = log_of(&c.api(sender), &id).await;
    let text = format!("receiver {receiver}:\n{}sender {sender}:\n{}", format_log(&rlog), format_log(&slog));
    let resumes: Vec<(u64, u64, u64)> = rlog.iter().filter_map(|l| parse_resume(&l.message)).collect();
    assert!(resumes.len() >= 2, "[{label}] one resume per kill at least:\n{text}");
    assert_eq!(count_lines(&rlog, "starting over"), 0, "[{label}] no attempt started over:\n{text}");
    // The node that was killed may have lost its last job-log lines (they
    // are flushed within 500 ms, and a SIGKILL can come first), so each
    // resume is looked for in the log of a side that was not killed.
    let sent_from = match sender == victim {
        true => attempt_offsets(&rlog, "receiving"),
        false => attempt_offsets(&slog, "sending"),
    };
    for &(r, l, x) in &resumes {
        assert!(r > 0 && r <= l, "[{label}] restart offset {r} within the {l} bytes held:\n{text}");
        assert_eq!(x, l - r, "[{label}] the log's count is L - R:\n{text}");
        assert!(
            x <= INTERVAL + BLOCK,
            "[{label}] {x} bytes received again after a kill; at most {} expected:\n{text}",
            INTERVAL + BLOCK
        );
        assert!(sent_from.contains(&r), "[{label}] the sender resumed from {r} too: {sent_from:?}\n{text}");
    }
    assert_eq!(count_lines(&rlog, "delivered to"), 1, "[{label}] delivered exactly once:\n{text}");
    eprintln!(
        "[{label}] resumes (R, L, L-R): {resumes:?}; re-sent bytes per resume: {:?}; seconds to resume: {resume_secs:?}; \
         sender attempts from offsets {sent_from:?}; {:.1} s so far",
        resumes.iter().map(|r| r.2).collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    // A runner left behind by the killed partner's lost connection ends at
    // the QUIC idle timeout; what it records must not undo the Done.
    c.wait_idle(survivor, &id, STEP_WITHIN).await;
    for node in ["a", "b"] {
        let v = c.api(node).get(&id).await.expect("view");
        assert_eq!(
            (v.status, v.transferred, v.hash.as_deref()),
            (Status::Done, BIG, Some(digest.to_hex().as_str())),
            "[{label}] node {node} once every runner there ended: {v:?}\n{}",
            c.report(&id).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_survives_the_receiver_killed_twice() {
    kill_twice(Direction::Push, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_survives_the_sending_requester_killed_twice() {
    kill_twice(Direction::Push, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_survives_the_receiving_requester_killed_twice() {
    kill_twice(Direction::Pull, "a").await;
}

/// Flips 16 bytes of a file at `at`.
fn flip(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open work file");
    let mut buf = [0u8; 16];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut buf).expect("read");
    for b in &mut buf {
        *b ^= 0xa5;
    }
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&buf).expect("write");
    f.sync_all().expect("sync");
}

/// Pushes 64 MiB under `rule`, SIGKILLs the receiver at half, corrupts its
/// partial file inside the first restart interval and restarts it.
/// Returns the cluster (both nodes up), the request id, the source's
/// BLAKE3 and its size.
async fn push_kill_and_corrupt(rule_mode: OnResumeMismatch) -> (ProcCluster, String, Digest, u64) {
    let mut c = ProcCluster::new(&["a", "b"], |layout| {
        tweak(layout);
        for cfg in &mut layout.configs {
            let default = cfg.rules[0].clone();
            cfg.rules.push(Rule { name: "checked".into(), on_resume_mismatch: rule_mode, ..default });
        }
    });
    let api_a = c.start("a").await;
    c.start("b").await;
    let size = 64 * MIB;
    let digest = write_random_streamed(&c.out_dir("a").join("part.bin"), size);
    let id = api_a.submit(&request(Direction::Push, "checked", "part.bin")).await.expect("submitted").id;
    let len = c.wait_work_len("b", &id, size / 2, "a", STEP_WITHIN).await;
    c.kill9("b");
    let work = c.work_file("b", &id);
    let held = std::fs::metadata(&work).expect("the work file survives the kill").len();
    eprintln!("[corrupt {rule_mode:?}] SIGKILL b with {len} bytes written; the work file holds {held}");
    assert!(held > MIB + 4096 + 16, "the work file holds {held} bytes");
    flip(&work, MIB + 4096 + 3);
    c.start("b").await;
    (c, id, digest, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_partial_file_is_detected_and_the_transfer_starts_over() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let (c, id, digest, size) = push_kill_and_corrupt(OnResumeMismatch::Restart).await;
    let done = c.wait_view("a", &id, TRANSFER_WITHIN, "the push ends", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, c.report(&id).await);
    c.wait_view("b", &id, STEP_WITHIN, "b records Done", |v| v.status == Status::Done).await;
    let slog = log_of(&c.api("a"), &id).await;
    let rlog = log_of(&c.api("b"), &id).await;
    let text = format!("sender a:\n{}receiver b:\n{}", format_log(&slog), format_log(&rlog));
    let mismatch = slog
        .iter()
        .find(|l| l.message.starts_with("the receiver's partial file differs from the source in its first "))
        .unwrap_or_else(|| panic!("the sender logs the mismatch:\n{text}"));
    assert!(mismatch.message.ends_with("bytes: starting over from 0"), "{text}");
    assert!(count_lines(&rlog, "starting over from offset 0; the work file held ") >= 1, "{text}");
    assert_eq!(count_lines(&rlog, "resuming at offset"), 0, "the corrupted prefix is never resumed from:\n{text}");
    assert_eq!(attempt_offsets(&slog, "sending").last(), Some(&0), "the last attempt sent from 0:\n{text}");
    assert_eq!(count_lines(&rlog, "delivered to"), 1, "{text}");
    let delivered_path = c.in_dir("b").join("part.bin");
    assert_eq!(std::fs::metadata(&delivered_path).expect("delivered").len(), size);
    assert_eq!(digest_streamed(&delivered_path), digest, "the delivered file differs from the source");
    assert!(work_files(&c.in_dir("b")).is_empty());
    eprintln!("[corrupt Restart] {:?}; test took {:.1} s", mismatch.message, started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_partial_file_fails_the_request_when_the_rule_says_so() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let (c, id, _, _) = push_kill_and_corrupt(OnResumeMismatch::Fail).await;
    let end = c.wait_view("a", &id, TRANSFER_WITHIN, "the push ends", |v| v.is_final()).await;
    let report = c.report(&id).await;
    assert_eq!(end.status, Status::InError, "{end:?}\n{report}");
    let err = end.error.clone().expect("an error");
    assert_eq!(err.code, "ResumeMismatch", "{err:?}\n{report}");
    assert!(err.message.contains("differs from the source"), "{err:?}");
    let on_b = c.wait_view("b", &id, STEP_WITHIN, "b records the failure", |v| v.is_final()).await;
    assert_eq!(on_b.status, Status::InError, "{on_b:?}\n{report}");
    assert!(!c.in_dir("b").join("part.bin").exists(), "nothing delivered under the final name");
    assert_eq!(delivered(&c.in_dir("b")), Vec::<String>::new(), "nothing delivered at all");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !work_files(&c.in_dir("b")).is_empty() {
        assert!(Instant::now() < deadline, "the failed request's work file is removed\n{report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("[corrupt Fail] {}: {}; test took {:.1} s", err.code, err.message, started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_acknowledged_requests_survive_a_requester_kill_and_are_delivered_once() {
    const N: usize = 500;
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut c = ProcCluster::new(&["a", "b"], tweak);
    let api_a = c.start("a").await;
    let api_b = c.start("b").await;
    let out = c.out_dir("a");
    let mut files = std::collections::BTreeMap::new();
    for i in 0..N {
        let name = format!("small-{i:03}.bin");
        // 8 KiB, different for every file.
        let mut data: Vec<u8> = (0..8192u32).map(|j| (j as u8) ^ (i as u8).wrapping_mul(31)).collect();
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(out.join(&name), &data).expect("write source");
        files.insert(name, blake3::hash(&data));
    }

    // Submit through the API from 8 clients at once; every answer is an acknowledgement.
    let names: Vec<String> = files.keys().cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in names.chunks(N.div_ceil(8)) {
        let api = api_a.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut acked = Vec::new();
            for name in chunk {
                let v = api.submit(&request(Direction::Push, "default", &name)).await.expect("submit acknowledged");
                acked.push((v.id, name));
            }
            acked
        });
    }
    let mut acked = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        acked.extend(r.expect("submit task"));
    }
    assert_eq!(acked.len(), N);
    c.kill9("a");
    let killed_at = now_ms();
    let submit_secs = started.elapsed().as_secs_f64();
    let done_on_b_at_kill = api_b.list(Some("done")).await.expect("list b").len();
    eprintln!("[500] all {N} acknowledged in {submit_secs:.1} s; SIGKILL a; b had {done_on_b_at_kill} Done then");

    let api_a = c.start("a").await;
    let deadline = Instant::now() + TRANSFER_WITHIN;
    let views: Vec<TransferView> = loop {
        let all = api_a.list(None).await.expect("list a");
        let pending: Vec<&TransferView> =
            all.iter().filter(|v| acked.contains_key(&v.id) && v.status != Status::Done).collect();
        let known = all.iter().filter(|v| acked.contains_key(&v.id)).count();
        if known == N && pending.is_empty() {
            break all;
        }
        if Instant::now() >= deadline || pending.iter().any(|v| v.is_final()) {
            let first = pending.first().map(|v| v.id.clone()).unwrap_or_default();
            let report = if first.is_empty() { String::new() } else { c.report(&first).await };
            panic!(
                "{known} of {N} acknowledged requests known on a, {} not Done: {:?}\n{report}",
                pending.len(),
                pending.iter().take(10).map(|v| (&v.id, v.status, &v.error)).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(views.len(), N, "a holds exactly the acknowledged requests");
    let all_done = Instant::now();

    let on_b = api_b.list(None).await.expect("list b");
    assert_eq!(on_b.len(), N, "b holds one record per request");
    assert!(on_b.iter().all(|v| v.status == Status::Done && acked.contains_key(&v.id)), "all Done on b");
    let in_b = c.in_dir("b");
    assert_eq!(delivered(&in_b), names, "each file present on b exactly once, nothing else");
    assert!(work_files(&in_b).is_empty(), "no work file left on b");
    for (name, digest) in &files {
        assert_eq!(blake3::hash(&std::fs::read(in_b.join(name)).expect("read")), *digest, "{name} differs");
    }
    let (mut resumed, mut rerun, mut confirmed) = (0, 0, 0);
    for (id, name) in &acked {
        let rlog = log_of(&api_b, id).await;
        let delivered_lines = count_lines(&rlog, "delivered to");
        assert_eq!(delivered_lines, 1, "{name} ({id}) delivered {delivered_lines} times:\n{}", c.report(id).await);
        confirmed += count_lines(&rlog, "already delivered; confirming");
        let alog = log_of(&api_a, id).await;
        resumed += usize::from(alog.iter().any(|l| l.message == "resumed at node start-up"));
        rerun += usize::from(alog.iter().any(|l| l.at > killed_at && l.message.starts_with("attempt ")));
    }
    assert!(rerun > 0, "the kill caught no request in flight or queued; the test proves nothing");
    eprintln!(
        "[500] after the restart: {rerun} requests ran again ({resumed} were Running at the kill, \
         {confirmed} confirmed as already delivered); all Done {:.1} s after the restart; test took {:.1} s",
        all_done.duration_since(started).as_secs_f64() - submit_secs,
        started.elapsed().as_secs_f64()
    );
}

/// Sends an operator command through the REST API; panics on a refusal.
async fn command(c: &ProcCluster, id: &str, action: &str) -> TransferView {
    let api = c.api("a");
    let answer = match action {
        "stop" => api.stop(id).await,
        "restart" => api.restart(id).await,
        "cancel" => api.cancel(id).await,
        other => panic!("no operator command {other}"),
    };
    match answer {
        Ok(v) => v,
        Err(e) => panic!("POST /api/v1/transfers/{id}/{action}: {e}\n{}", c.report(id).await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_holds_restart_resumes_and_cancel_cleans_up() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut c = ProcCluster::new(&["a", "b"], tweak);
    let api_a = c.start("a").await;
    c.start("b").await;
    write_random_streamed(&c.out_dir("a").join("big.bin"), BIG);
    let id = api_a.submit(&request(Direction::Push, "default", "big.bin")).await.expect("submitted").id;
    let work = c.work_file("b", &id);

    c.wait_work_len("b", &id, BIG / 5, "a", STEP_WITHIN).await;
    command(&c, &id, "stop").await;
    let stopped_at = now_ms();
    let v = c.wait_view("a", &id, STEP_WITHIN, "stop makes it Interrupted", |v| v.status != Status::Running).await;
    assert_eq!(v.status, Status::Interrupted, "{v:?}\n{}", c.report(&id).await);
    assert_eq!(v.error.as_ref().map(|e| e.code.as_str()), Some("Stopped"), "{v:?}");
    c.wait_view("b", &id, STEP_WITHIN, "b records the stop", |v| v.status == Status::Interrupted).await;
    // No retry: it stays Interrupted (Stopped) for 2 s.
    let hold = Instant::now() + Duration::from_secs(2);
    while Instant::now() < hold {
        let v = api_a.get(&id).await.expect("view");
        assert!(
            v.status == Status::Interrupted && v.error.as_ref().is_some_and(|e| e.code == "Stopped"),
            "a stopped request is not retried: {v:?}\n{}",
            c.report(&id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alog = log_of(&api_a, &id).await;
    assert!(
        !alog
            .iter()
            .any(|l| l.at > stopped_at && (l.message.starts_with("attempt ") || l.message.starts_with("retry"))),
        "no attempt after the stop:\n{}",
        format_log(&alog)
    );
    let held = std::fs::metadata(&work).map(|m| m.len()).unwrap_or_else(|e| panic!("b keeps its work file: {e}"));
    assert!(held >= BIG / 5, "the work file holds {held} bytes");
    // Both nodes show the same bytes: the receiver's durable restart point.
    let b_view = c.api("b").get(&id).await.expect("b's view");
    let point = b_view.restart_offset_durable.expect("b's restart point");
    let a_view = c.wait_view("a", &id, STEP_WITHIN, "a learns b's restart point", |v| v.transferred == point).await;
    assert_eq!((a_view.transferred, b_view.transferred), (point, point), "{a_view:?}\n{b_view:?}");
    // `ferry status ID` on the requester shows the receiver's restart point.
    let shown = run_ferry(&["status", "--api", c.api("a").base(), &id], STEP_WITHIN).await;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let line = shown.lines().find(|l| l.starts_with("restart point:")).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains("held by b"), "{shown}");
    assert!(!c.in_dir("b").join("big.bin").exists());

    command(&c, &id, "restart").await;
    let restarted_at = now_ms();
    let line = c
        .wait_log_line("b", &id, STEP_WITHIN, "the restart resumes", |l| {
            l.at >= restarted_at
                && (l.message.starts_with("resuming at offset") || l.message.starts_with("starting over"))
        })
        .await;
    let (r, l, x) = parse_resume(&line.message)
        .unwrap_or_else(|| panic!("the restart resumed instead of starting over: {:?}", line.message));
    assert!(r > 0 && x <= INTERVAL + BLOCK, "{:?}", line.message);
    let resume_secs = (line.at - restarted_at) as f64 / 1000.0;
    let v = api_a.get(&id).await.expect("view");
    assert!(!v.is_final(), "the transfer must still run to be cancelled: {v:?}");
    command(&c, &id, "cancel").await;
    let v = c.wait_view("a", &id, STEP_WITHIN, "cancel ends it", |v| v.is_final()).await;
    assert_eq!(v.status, Status::Cancelled, "{v:?}\n{}", c.report(&id).await);
    c.wait_view("b", &id, STEP_WITHIN, "b records the cancel", |v| v.status == Status::Cancelled).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while work.exists() {
        assert!(Instant::now() < deadline, "b removes the work file of a cancelled request\n{}", c.report(&id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!c.in_dir("b").join("big.bin").exists(), "nothing under the final name");
    assert!(delivered(&c.in_dir("b")).is_empty(), "nothing delivered at all");
    eprintln!(
        "[stop/restart/cancel] stopped with {held} bytes held; restart resumed at {r} (held {l}, {x} again) \
         {resume_secs:.2} s after the restart call; test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A tmpfs mounted on a temporary folder; unmounted (then the folder
/// removed) on drop, failure included.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount -t tmpfs (the test needs root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_without_room_refuses_before_the_transfer() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    // Declared first: unmounted after the nodes are killed.
    let tmpfs = Tmpfs::mount("16m");
    let small = tmpfs.path().to_owned();
    let mut c = ProcCluster::new(&["a", "b"], |layout| {
        tweak(layout);
        layout.config_mut("b").expect("b").rules[0].recv_dir = small.clone();
    });
    let api_a = c.start("a").await;
    c.start("b").await;
    write_random_streamed(&c.out_dir("a").join("large.bin"), 64 * MIB);
    let id = api_a.submit(&request(Direction::Push, "default", "large.bin")).await.expect("submitted").id;
    let v = c.wait_view("a", &id, STEP_WITHIN, "the push is refused", |v| v.is_final()).await;
    let report = c.report(&id).await;
    assert_eq!(v.status, Status::InError, "{v:?}\n{report}");
    let err = v.error.clone().expect("an error");
    assert_eq!(err.code, "NoSpace", "{err:?}\n{report}");
    assert!(
        err.message.contains("not enough space") && err.message.contains(&small.display().to_string()),
        "the message names the space and the folder: {err:?}"
    );
    let alog = log_of(&api_a, &id).await;
    assert_eq!(count_lines(&alog, "sending "), 0, "refused before any byte was sent:\n{}", format_log(&alog));
    assert_eq!(files_under(&small), Vec::<String>::new(), "nothing written in the small file system");
    eprintln!("[no space] {}: {}; test took {:.1} s", err.code, err.message, started.elapsed().as_secs_f64());
    drop(c);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_appended_to_during_the_push_fails_and_is_not_delivered() {
    use std::io::Write;
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut c = ProcCluster::new(&["a", "b"], tweak);
    let api_a = c.start("a").await;
    c.start("b").await;
    let source = c.out_dir("a").join("growing.bin");
    write_random_streamed(&source, BIG);
    let id = api_a.submit(&request(Direction::Push, "default", "growing.bin")).await.expect("submitted").id;
    c.wait_work_len("b", &id, 4 * MIB, "a", STEP_WITHIN).await;
    let v = api_a.get(&id).await.expect("view");
    assert_eq!(v.status, Status::Running, "{v:?}");
    let mut f = std::fs::OpenOptions::new().append(true).open(&source).expect("open source");
    f.write_all(&[7u8; 1 << 20]).expect("append");
    f.sync_all().expect("sync");
    let appended_with = std::fs::metadata(c.work_file("b", &id)).map_or(0, |m| m.len());

    let v = c.wait_view("a", &id, TRANSFER_WITHIN, "the push ends", |v| v.is_final()).await;
    let report = c.report(&id).await;
    assert_eq!(v.status, Status::InError, "{v:?}\n{report}");
    let err = v.error.clone().expect("an error");
    assert_eq!(err.code, "SourceChanged", "{err:?}\n{report}");
    assert!(err.message.contains("changed during the transfer"), "a clear message: {err:?}");
    let on_b = c.wait_view("b", &id, STEP_WITHIN, "b records the failure", |v| v.is_final()).await;
    assert_eq!(on_b.status, Status::InError, "{on_b:?}\n{report}");
    assert!(!c.in_dir("b").join("growing.bin").exists(), "nothing delivered under the final name\n{report}");
    let blog = log_of(&c.api("b"), &id).await;
    assert_eq!(count_lines(&blog, "delivered to"), 0, "{}", format_log(&blog));
    eprintln!(
        "[source changed] appended with {appended_with} bytes received; {}: {}; test took {:.1} s",
        err.code,
        err.message,
        started.elapsed().as_secs_f64()
    );
}

fn runs_of(file: &Path) -> usize {
    std::fs::read_to_string(file).map(|t| t.lines().count()).unwrap_or(0)
}

/// The receiver is SIGKILLed while its second post-task (a slow program)
/// runs. After its restart the request ends Done: the first task ran once,
/// the killed one ran again, the third once; the file was not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_during_a_post_task_runs_that_task_again_and_no_other() {
    let _heavy = HEAVY.lock().await;
    let counts = tempfile::tempdir().expect("tempdir");
    let (first, slow, last) = (counts.path().join("first"), counts.path().join("slow"), counts.path().join("last"));
    let (f, s, l) = (first.display().to_string(), slow.display().to_string(), last.display().to_string());
    let mut c = ProcCluster::new(&["a", "b"], |layout| {
        tweak(layout);
        let rule = &mut layout.configs.iter_mut().find(|c| c.node_id == "b").expect("b").rules[0];
        rule.receiver.post_tasks = vec![
            sh_task("echo run >> \"$1\"", &[&f]),
            // The first run is slow (the test kills b during it); the
            // second one is quick.
            sh_task("echo run >> \"$1\"; if [ \"$(wc -l < \"$1\")\" -eq 1 ]; then sleep 30; fi", &[&s]),
            sh_task("echo run >> \"$1\"", &[&l]),
        ];
    });
    let api_a = c.start("a").await;
    c.start("b").await;
    let digest = write_random_streamed(&c.out_dir("a").join("tasked.bin"), 4 * MIB);
    let id = api_a.submit(&request(Direction::Push, "default", "tasked.bin")).await.expect("submitted").id;
    let deadline = Instant::now() + STEP_WITHIN;
    while runs_of(&slow) < 1 {
        assert!(Instant::now() < deadline, "the slow task never started\n{}", c.report(&id).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.kill9("b");
    assert_eq!((runs_of(&first), runs_of(&slow), runs_of(&last)), (1, 1, 0));
    c.start("b").await;
    let done = c.wait_view("a", &id, TRANSFER_WITHIN, "the push ends", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, c.report(&id).await);
    c.wait_view("b", &id, STEP_WITHIN, "b records Done", |v| v.status == Status::Done).await;
    assert_eq!((runs_of(&first), runs_of(&slow), runs_of(&last)), (1, 2, 1), "{}", c.report(&id).await);
    let rlog = log_of(&c.api("b"), &id).await;
    assert_eq!(count_lines(&rlog, "receiving"), 1, "received once:\n{}", format_log(&rlog));
    assert_eq!(digest_streamed(&c.in_dir("b").join("tasked.bin")), digest);
}

/// Append mode: the receiver is SIGKILLed while it writes old + new data
/// to its temporary file. Right after the kill the target still holds its
/// old content; after the restart it holds old + new, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_during_an_append_leaves_old_or_old_plus_new_never_a_part() {
    let _heavy = HEAVY.lock().await;
    let mut c = ProcCluster::new(&["a", "b"], |layout| {
        tweak(layout);
        let rule = &mut layout.configs.iter_mut().find(|c| c.node_id == "b").expect("b").rules[0];
        rule.target = ferry::store::TargetMode::Append;
    });
    let api_a = c.start("a").await;
    c.start("b").await;
    let target = c.in_dir("b").join("ledger.dat");
    let old = write_random_streamed(&target, BIG);
    let new = write_random_streamed(&c.out_dir("a").join("ledger.dat"), 16 * MIB);
    let id = api_a.submit(&request(Direction::Push, "default", "ledger.dat")).await.expect("submitted").id;
    let tmp = c.in_dir("b").join(".ferry-work").join(format!("{id}.append"));
    let deadline = Instant::now() + TRANSFER_WITHIN;
    while !tmp.exists() {
        assert!(Instant::now() < deadline, "the append never started\n{}", c.report(&id).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.kill9("b");
    let held = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    eprintln!("[append] SIGKILL b with {held} bytes of {} in the temporary file", BIG + 16 * MIB);
    assert_eq!(std::fs::metadata(&target).expect("target").len(), BIG, "the target is untouched by a killed append");
    assert_eq!(digest_streamed(&target), old);
    c.start("b").await;
    let done = c.wait_view("a", &id, TRANSFER_WITHIN, "the push ends", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, c.report(&id).await);
    assert_eq!(std::fs::metadata(&target).expect("target").len(), BIG + 16 * MIB, "appended once");
    let mut head = std::fs::File::open(&target).expect("target");
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::io::Read::take(&mut head, BIG), &mut hasher).expect("read");
    assert_eq!(Digest(*hasher.finalize().as_bytes()), old, "the old content comes first, unchanged");
    let mut tail = std::fs::File::open(&target).expect("target");
    std::io::Seek::seek(&mut tail, std::io::SeekFrom::Start(BIG)).expect("seek");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut tail, &mut rest).expect("read");
    assert_eq!(Digest::of(&rest), new, "then the whole new data");
    assert!(work_files(&c.in_dir("b")).is_empty(), "nothing left in the work folder");
}

/// The receiver is SIGKILLed during its first error task (after a failed
/// post-task). At its restart the interrupted error task runs again and
/// the next one runs once; the request keeps its first cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_tasks_a_crash_interrupted_run_at_the_next_start() {
    let _heavy = HEAVY.lock().await;
    let counts = tempfile::tempdir().expect("tempdir");
    let (slow, next) = (counts.path().join("slow"), counts.path().join("next"));
    let (s, n) = (slow.display().to_string(), next.display().to_string());
    let mut c = ProcCluster::new(&["a", "b"], |layout| {
        tweak(layout);
        let rule = &mut layout.configs.iter_mut().find(|c| c.node_id == "b").expect("b").rules[0];
        rule.receiver.post_tasks = vec![sh_task("exit 3", &[])];
        rule.receiver.error_tasks = vec![
            sh_task("echo run >> \"$1\"; if [ \"$(wc -l < \"$1\")\" -eq 1 ]; then sleep 30; fi", &[&s]),
            sh_task("echo run >> \"$1\"", &[&n]),
        ];
    });
    let api_a = c.start("a").await;
    c.start("b").await;
    write_random_streamed(&c.out_dir("a").join("alert.bin"), MIB);
    let id = api_a.submit(&request(Direction::Push, "default", "alert.bin")).await.expect("submitted").id;
    let deadline = Instant::now() + STEP_WITHIN;
    while runs_of(&slow) < 1 {
        assert!(Instant::now() < deadline, "the error task never started\n{}", c.report(&id).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.kill9("b");
    assert_eq!((runs_of(&slow), runs_of(&next)), (1, 0));
    c.start("b").await;
    let deadline = Instant::now() + STEP_WITHIN;
    while runs_of(&next) < 1 {
        assert!(Instant::now() < deadline, "the error tasks did not resume\n{}", c.report(&id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((runs_of(&slow), runs_of(&next)), (2, 1), "the interrupted one again, the next once");
    let view = c.wait_view("b", &id, STEP_WITHIN, "b's record", |v| v.status == Status::InError).await;
    let err = view.error.expect("cause");
    assert_eq!(err.code, "TaskFailed", "the first cause stays: {err:?}");
    let rlog = log_of(&c.api("b"), &id).await;
    assert_eq!(count_lines(&rlog, "node restarted during the error tasks"), 1, "{}", format_log(&rlog));
}
