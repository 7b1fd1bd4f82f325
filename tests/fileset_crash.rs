//! A file set of 1,000 files (a few large ones among small ones) between
//! two real `ferry node` processes: the receiver is SIGKILLed in the
//! middle of a large file, then the sender in the middle of another. After
//! each restart the set goes on; at the end every file is present once and
//! identical, no file finished before a kill is sent again, and a file cut
//! by a kill resumes from its restart point.
//!
//! And a set sent with `delivery = all`: the receiver is SIGKILLed in the
//! middle of the final renames (the sender too, so nobody asks it again);
//! restarted alone, it finishes every rename before it serves, and the
//! sender, restarted, ends the set `Done`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::procs::{format_log, now_ms, parse_resume, ProcCluster};
use common::{delivered, work_files};
use ferry::api::{ApiClient, LogLineView};
use ferry::cluster::LocalLayout;
use ferry::config::RetryPolicy;
use ferry::model::Submit;
use ferry::protocol::{Direction, RequestId};
use ferry::store::member_id;
use ferry::store::Status;

const MIB: u64 = 1 << 20;
const INTERVAL: u64 = 8 * MIB;
const BLOCK: u64 = MIB;
const FILES: u32 = 1_000;
/// The large files, by index (path order), and their size.
const LARGE: [u32; 4] = [250, 500, 750, 900];
const LARGE_SIZE: u64 = 64 * MIB;
const SET_WITHIN: Duration = Duration::from_secs(300);
/// The two tests each run two nodes flat out: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const STEP_WITHIN: Duration = Duration::from_secs(90);

/// One request at a time: the set's stream carries its small files first
/// (its leader holds the one slot), then the large files go one by one, in
/// order, so each kill lands in the middle of the large file it waits for,
/// with files Done before it. (Two at a time would run the large files
/// beside the stream, where a large file's writes can hold the stream's
/// first fsync long enough for the kill to find nothing Done yet.)
fn tweak(layout: &mut LocalLayout) {
    for c in &mut layout.configs {
        c.concurrency = 1;
        c.restart_interval_bytes = INTERVAL;
        c.retry = RetryPolicy { attempts: 50, initial_delay_ms: 200, max_delay_ms: 1000 };
    }
}

fn name(i: u32) -> String {
    format!("f{i:04}.bin")
}

async fn log_of(api: &ApiClient, id: &RequestId) -> Vec<LogLineView> {
    api.log(id.as_str()).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_file_set_survives_the_receiver_and_then_the_sender_killed() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut c = ProcCluster::new(&["a", "b"], tweak);
    let api_a = c.start("a").await;
    let api_b = c.start("b").await;
    let dir = c.out_dir("a").join("set");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut digests = BTreeMap::new();
    for i in 0..FILES {
        let size = if LARGE.contains(&i) { LARGE_SIZE as usize } else { 512 + (i as usize * 37) % 8192 };
        let mut data = vec![0u8; size];
        let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(dir.join(name(i)), &data).expect("write");
        digests.insert(format!("set/{}", name(i)), blake3::hash(&data));
    }
    let s =
        Submit { file: String::new(), pattern: Some("set/*.bin".into()), ..common::submit(Direction::Push, "b", "") };
    let set = api_a.submit(&s).await.expect("the set is acknowledged");
    assert_eq!(set.set.as_ref().map(|i| i.files), Some(FILES));
    let set_id = RequestId::parse(&set.id).expect("id");
    let ids: Vec<RequestId> = (0..FILES).map(|i| member_id(&set_id, i)).collect();

    // Kill the receiver in the middle of large file 500, the sender in the
    // middle of large file 750; each is restarted at once.
    let mut done_before_kill = Vec::new();
    for (victim, index) in [("b", 500usize), ("a", 750)] {
        let survivor = if victim == "a" { "b" } else { "a" };
        let member = ids[index].as_str().to_owned();
        // Files Done on a before the kill (read once the large file has
        // begun, not at the threshold: a page of 1,000 views takes a
        // moment, and the kill must follow the threshold at once) are Done
        // on b too (b records Done before its echo): they must never be
        // sent again.
        c.wait_work_len("b", &member, MIB, survivor, STEP_WITHIN).await;
        let page = c.api("a").set_files(&set.id, 0, FILES as usize).await.expect("files page");
        let done_now: Vec<usize> =
            page.files.iter().enumerate().filter(|(_, v)| v.status == Status::Done).map(|(i, _)| i).collect();
        let len = c.wait_work_len("b", &member, LARGE_SIZE * 3 / 10, survivor, STEP_WITHIN).await;
        c.kill9(victim);
        eprintln!(
            "[set] SIGKILL {victim} with {len} bytes of file {index} received; {} files Done on b before it",
            done_now.len()
        );
        done_before_kill.push((now_ms(), done_now));
        c.start(victim).await;
    }

    let done = c.wait_view("a", &set.id, SET_WITHIN, "the set ends", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, c.report(&set.id).await);
    let view = done.set.expect("a set view");
    assert_eq!((view.done, view.failed, view.skipped), (FILES, 0, 0));

    // Every file once, identical; nothing else; no work file left.
    let in_b = c.in_dir("b").join("set");
    let got: Vec<String> = delivered(&in_b).into_iter().map(|n| format!("set/{n}")).collect();
    let want: Vec<String> = digests.keys().cloned().collect();
    assert_eq!(got, want, "each file present on b exactly once, nothing else");
    for (path, digest) in &digests {
        let data = std::fs::read(c.in_dir("b").join(path)).expect("read");
        assert_eq!(blake3::hash(&data), *digest, "{path} differs");
    }
    assert!(work_files(&c.in_dir("b")).is_empty(), "no work file left");

    assert!(
        done_before_kill.iter().all(|(_, done)| done.len() >= 100),
        "each kill came after at least the first hundred files were Done (else the check below proves little)"
    );
    // Files Done before a kill were not sent again; the cut large files
    // resumed from a restart point, re-sending at most one interval.
    let mut resent_after_kill = 0usize;
    for (killed_at, done_now) in &done_before_kill {
        for &i in done_now {
            let alog = log_of(&api_a, &ids[i]).await;
            let sent = |m: &str| m.starts_with("sending ") || m.starts_with("sent on the set stream");
            let again = alog.iter().filter(|l| l.at > *killed_at && sent(&l.message)).count();
            assert_eq!(again, 0, "file {i} was Done before the kill and was sent again:\n{}", format_log(&alog));
        }
    }
    let mut resumes = Vec::new();
    for i in [500usize, 750] {
        let blog = log_of(&api_b, &ids[i]).await;
        let r: Vec<(u64, u64, u64)> = blog.iter().filter_map(|l| parse_resume(&l.message)).collect();
        assert!(!r.is_empty(), "file {i} resumed after the kill:\n{}", format_log(&blog));
        for &(offset, _, again) in &r {
            assert!(offset > 0, "file {i} resumed from a restart point, not 0:\n{}", format_log(&blog));
            assert!(again <= INTERVAL + BLOCK, "file {i}: {again} bytes received again:\n{}", format_log(&blog));
        }
        resumes.extend(r);
    }
    for id in &ids {
        let blog = log_of(&api_b, id).await;
        let n = blog.iter().filter(|l| l.message.starts_with("delivered to")).count();
        assert!(n <= 1, "{id} delivered {n} times:\n{}", format_log(&blog));
        resent_after_kill += usize::from(blog.iter().filter(|l| l.message.starts_with("receiving ")).count() > 1);
    }
    eprintln!(
        "[set] {FILES} files ({} large of {} MiB) Done after two kills in {:.1} s; resumes (R, L, L-R): {resumes:?}; \
         {resent_after_kill} files received in more than one run",
        LARGE.len(),
        LARGE_SIZE / MIB,
        started.elapsed().as_secs_f64()
    );
}

/// Files in the `delivery = all` set: enough that the renames of the
/// release (each fsyncs its folder) take a while to kill into.
const HELD_FILES: usize = 3_000;

fn in_place(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|it| it.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_during_the_final_renames_of_an_all_set_finishes_them_at_start_up() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut c = ProcCluster::new(&["a", "b"], tweak);
    let api_a = c.start("a").await;
    c.start("b").await;
    let dir = c.out_dir("a").join("held");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut digests = BTreeMap::new();
    for i in 0..HELD_FILES {
        let data = format!("file {i} of a set delivered all together\n").repeat(1 + i % 7);
        std::fs::write(dir.join(format!("h{i:05}.txt")), &data).expect("write");
        digests.insert(format!("h{i:05}.txt"), blake3::hash(data.as_bytes()));
    }
    let s = Submit {
        file: String::new(),
        pattern: Some("held/*.txt".into()),
        delivery: Some(ferry::fileset::progress::Delivery::All),
        ..common::submit(Direction::Push, "b", "")
    };
    let set = api_a.submit(&s).await.expect("the set is acknowledged");
    let in_b = c.in_dir("b").join("held");
    // Until the release begins nothing is in place; the first file in
    // place means the renames run: both nodes are killed at once.
    let deadline = Instant::now() + SET_WITHIN;
    while in_place(&in_b) == 0 {
        assert!(Instant::now() < deadline, "the release never began\n{}", c.report(&set.id).await);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.kill9("b");
    c.kill9("a");
    let at_kill = in_place(&in_b);
    eprintln!("[all] SIGKILL b and a with {at_kill} of {HELD_FILES} files renamed");
    assert!(at_kill < HELD_FILES, "the kill came after the last rename; it proves nothing");

    // b alone: before it serves, the renames the release ordered are done.
    c.start("b").await;
    let got = delivered(&in_b);
    let want: Vec<String> = digests.keys().cloned().collect();
    assert_eq!(got.len(), HELD_FILES, "b finished the renames at start-up, with a still down");
    assert_eq!(got, want, "each file present on b exactly once, nothing else");
    for (name, digest) in &digests {
        assert_eq!(blake3::hash(&std::fs::read(in_b.join(name)).expect("read")), *digest, "{name} differs");
    }
    assert!(work_files(&c.in_dir("b")).is_empty(), "no work file left");
    assert!(c.process_logs("b").contains("finished the delivery of released file-set files"));

    // a asks again and is answered: the set is Done.
    c.start("a").await;
    let done = c.wait_view("a", &set.id, SET_WITHIN, "the set ends", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, c.report(&set.id).await);
    let id = RequestId::parse(&set.id).expect("id");
    for i in [0, HELD_FILES as u32 / 2, HELD_FILES as u32 - 1] {
        let theirs = c.api("b").get(member_id(&id, i).as_str()).await.expect("b's record");
        assert_eq!(theirs.status, Status::Done, "file {i} on b");
    }
    eprintln!("[all] {HELD_FILES} files, killed during the renames, Done in {:.1} s", started.elapsed().as_secs_f64());
}
