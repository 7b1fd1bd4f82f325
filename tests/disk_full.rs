//! A receive folder whose disk fills during a transfer: that request fails
//! cleanly with NoSpace, its work file is removed, nothing appears under
//! the final name, and a request to another folder running at the same time
//! is unharmed. The test mounts its own small tmpfs (CI runs as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ferry::protocol::{Direction, ErrorCode};
use ferry::store::Status;

const WITHIN: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test's lifetime, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mib: u64) -> Tmpfs {
        Tmpfs::mount_with(dir, &format!("size={size_mib}m"))
    }

    fn mount_with(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir).output().expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_transfer_fails_only_that_request() {
    let mut layout = Layout::new(&["a", "b"]);
    let small = layout.dir.path().join("b-small-disk");
    let _mount = Tmpfs::mount(&small, 160);
    let mut rule = layout.config("b").rules[0].clone();
    rule.name = "small".into();
    rule.recv_dir = small.clone();
    layout.config_mut("b").rules.push(rule.clone());
    let mut rule_a = layout.config("a").rules[0].clone();
    rule_a.name = "small".into();
    layout.config_mut("a").rules.push(rule_a);
    let a = layout.start("a").await;
    let b = layout.start("b").await;

    // Fits when it starts (120 MiB of 160), not once the disk fills meanwhile.
    write_random(&layout.out_dir("a").join("big"), 120 << 20);
    let other_digest = write_random(&layout.out_dir("a").join("other"), 40 << 20);
    let mut s = submit(Direction::Push, "b", "big");
    s.rule = "small".into();
    let big = a.handle().submit(s).await.expect("submitted");
    let other = a.handle().submit(submit(Direction::Push, "b", "other")).await.expect("submitted");

    // Once bytes are arriving, something else takes most of the disk.
    let deadline = Instant::now() + WITHIN;
    loop {
        let work = small.join(".ferry-work").join(format!("{}.part", big.id));
        if std::fs::metadata(&work).is_ok_and(|m| m.len() > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "transfer never started writing");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let filler = small.join("filler");
    let _ = std::fs::write(&filler, vec![7u8; 100 << 20]); // may itself hit the limit: fine

    let r = wait_final(&a.handle(), &big.id, WITHIN).await;
    assert_eq!(r.status, Status::InError, "{r:?}");
    let err = r.error.expect("error");
    assert_eq!(err.code, ErrorCode::NoSpace, "{}", err.message);
    assert!(err.message.contains("disk full"), "{}", err.message);
    let on_b = wait_final(&b.handle(), &big.id, WITHIN).await;
    assert_eq!(on_b.status, Status::InError);
    assert!(!small.join("big").exists(), "nothing under the final name");
    // The work file goes once the failure is recorded (and its error tasks
    // ran): waited for, bounded.
    let deadline = Instant::now() + WITHIN;
    while !work_files(&small).is_empty() {
        assert!(Instant::now() < deadline, "the failed work file is not removed: {:?}", work_files(&small));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let o = wait_final(&a.handle(), &other.id, WITHIN).await;
    assert_eq!(o.status, Status::Done, "the other request is unharmed: {:?}", o.error);
    assert_eq!(file_digest(&layout.in_dir("b").join("other")), other_digest);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_stream_whose_folder_runs_out_of_inodes_fails_those_files_as_no_space() {
    let mut layout = Layout::new(&["a", "b"]);
    let small = layout.dir.path().join("b-few-inodes");
    // Room for the bytes, not for the files: 40 inodes for 100 files.
    let _mount = Tmpfs::mount_with(&small, "size=64m,nr_inodes=40");
    let mut rule = layout.config("b").rules[0].clone();
    rule.name = "small".into();
    rule.recv_dir = small.clone();
    layout.config_mut("b").rules.push(rule);
    let mut rule_a = layout.config("a").rules[0].clone();
    rule_a.name = "small".into();
    layout.config_mut("a").rules.push(rule_a);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    for i in 0..100 {
        std::fs::create_dir_all(layout.out_dir("a").join("many")).expect("mkdir");
        std::fs::write(layout.out_dir("a").join(format!("many/f{i:03}")), format!("file {i}\n")).expect("write");
    }
    let s = ferry::model::Submit {
        file: String::new(),
        pattern: Some("many/*".into()),
        rule: "small".into(),
        ..submit(Direction::Push, "b", "")
    };
    let set = a.handle().submit(s).await.expect("submitted");
    let r = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(r.status, Status::InError, "{r:?}");
    let message = r.error.expect("error").message;
    assert!(message.contains("(NoSpace)"), "a file without an inode is named as NoSpace: {message}");
    let info = r.set.expect("a set");
    assert!(info.failed > 0 && info.done + info.failed + info.skipped == 100, "{info:?}");
    for i in 0..100 {
        let m = a.handle().store().get(&ferry::store::member_id(&set.id, i)).expect("read").expect("member");
        if let Some(e) = m.error.as_ref().filter(|e| e.code != ErrorCode::Skipped) {
            assert_eq!(e.code, ErrorCode::NoSpace, "file {i} failed for want of space: {}", e.message);
        }
    }
    // A work file is left only for a file b recorded as delivered: its
    // rename is finished when the file comes again.
    for work in work_files(&small) {
        let id = work.strip_suffix(".part").and_then(ferry::protocol::RequestId::parse);
        let rec = id.and_then(|id| b.handle().store().get(&id).expect("read"));
        assert!(rec.as_ref().is_some_and(|r| r.delivered), "{work} is left without a delivered record");
    }
    // Room again: restarted, the set ends Done, each file whole, once.
    let out = Command::new("mount").args(["-o", "remount,nr_inodes=1000"]).arg(&small).output().expect("remount");
    assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    a.handle().restart(&set.id).await.expect("restart the set");
    let r = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(r.status, Status::Done, "{:?}", r.error);
    for i in 0..100 {
        let got = std::fs::read(small.join(format!("many/f{i:03}"))).expect("every file arrived");
        assert_eq!(got, format!("file {i}\n").as_bytes());
    }
    assert!(work_files(&small).is_empty(), "no work file left");
    a.shutdown().await;
    b.shutdown().await;
}

/// Two transfers of `direction` that each fit the receiving disk (64 MiB,
/// 36 MiB each with its margin), started at once: one arrives whole, the
/// other is refused at once, since the first's bytes are promised to it.
/// Without the promise both were accepted, both wrote, and the disk filled
/// under both.
async fn two_at_once_into_a_disk_with_room_for_one(direction: Direction) {
    let mut layout = Layout::new(&["a", "b"]);
    let (sender, receiver) = if direction == Direction::Push { ("a", "b") } else { ("b", "a") };
    let small = layout.dir.path().join("shared-disk");
    let _mount = Tmpfs::mount(&small, 64);
    for node in ["a", "b"] {
        let mut rule = layout.config(node).rules[0].clone();
        rule.name = "small".into();
        if node == receiver {
            rule.recv_dir = small.clone();
        }
        layout.config_mut(node).rules.push(rule);
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let names = ["one", "two"];
    let digests: Vec<_> = names.iter().map(|n| write_random(&layout.out_dir(sender).join(n), 36 << 20)).collect();
    let mut ids = Vec::new();
    for name in names {
        let mut s = submit(direction, "b", name);
        s.rule = "small".into();
        ids.push(a.handle().submit(s).await.expect("submitted").id);
    }
    let mut ends = Vec::new();
    for id in &ids {
        ends.push(wait_final(&a.handle(), id, WITHIN).await);
    }
    let done: Vec<usize> = (0..2).filter(|&i| ends[i].status == Status::Done).collect();
    assert_eq!(done.len(), 1, "one arrives, one is refused: {ends:?}");
    let (kept, refused) = (done[0], 1 - done[0]);
    let err = ends[refused].error.clone().expect("why");
    assert_eq!((ends[refused].status, err.code), (Status::InError, ErrorCode::NoSpace), "{}", err.message);
    assert!(err.message.contains("promised to transfers being received"), "refused at once: {}", err.message);
    assert_eq!(file_digest(&small.join(names[kept])), digests[kept], "the accepted one arrives whole");
    assert!(work_files(&small).is_empty(), "no work file left");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_accepted_at_once_cannot_promise_the_same_free_space_twice() {
    two_at_once_into_a_disk_with_room_for_one(Direction::Push).await;
}

/// The same for pulls: the pulling node promises itself the room of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_started_at_once_cannot_promise_the_same_free_space_twice() {
    two_at_once_into_a_disk_with_room_for_one(Direction::Pull).await;
}
