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
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
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
    assert!(work_files(&small).is_empty(), "the failed work file is removed");

    let o = wait_final(&a.handle(), &other.id, WITHIN).await;
    assert_eq!(o.status, Status::Done, "the other request is unharmed: {:?}", o.error);
    assert_eq!(file_digest(&layout.in_dir("b").join("other")), other_digest);
    a.shutdown().await;
    b.shutdown().await;
}
