//! File sets between two real nodes on loopback: a pattern or a folder is
//! one request, resolved and recorded by the sender before any byte moves;
//! each file is delivered once, in its place below the receive folder;
//! escapes are refused with nothing sent; the policies for empty matches
//! and failed files; files that change or vanish after resolution.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ferry::fileset::progress::{Delivery, OnEmpty, OnFailure};
use ferry::model::{Submit, SubmitError};
use ferry::node::{Node, NodeHandle};
use ferry::protocol::{Direction, ErrorCode};
use ferry::store::member_id;
use ferry::store::{RequestRecord, Role, Status, Step};

const WITHIN: Duration = Duration::from_secs(120);

fn pattern(p: &str) -> Submit {
    Submit { file: String::new(), pattern: Some(p.into()), ..submit(Direction::Push, "b", "") }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// Every file below `dir` (work folders left out), relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".ferry") {
                continue;
            }
            let path = e.path();
            if e.file_type().expect("type").is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("below").to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn members(node: &NodeHandle, set: &RequestRecord) -> Vec<RequestRecord> {
    let files = set.set.as_ref().expect("a set").files;
    (0..files)
        .map(|i| node.store().get(&member_id(&set.id, i)).expect("get").expect("every member is recorded"))
        .collect()
}

async fn two_nodes() -> (Layout, Node, Node) {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    (layout, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_a_tree_and_odd_names_arrive_in_place_as_one_request() {
    let (layout, a, b) = two_nodes().await;
    let out = layout.out_dir("a");
    let files = [
        "daily/2026-11-28/orders.csv",
        "daily/2026-11-28/sub dir/ünïcödé name.csv",
        "daily/2026-11-29/orders.csv",
        "daily/readme.txt",
        "top.csv",
        "other.txt",
    ];
    for (i, f) in files.iter().enumerate() {
        write(&out.join(f), format!("file {i}: {f}\n").repeat(i * 100 + 1).as_bytes());
    }
    // Empty folders, one nested: they arrive as folders.
    std::fs::create_dir_all(out.join("daily/empty")).expect("mkdir");
    std::fs::create_dir_all(out.join("daily/2026-11-30/a/b")).expect("mkdir");
    // A tree: everything below daily/, kept in place.
    let set = a.handle().submit(pattern("daily/**")).await.expect("submitted");
    let info = set.set.clone().expect("the request is a file set");
    assert_eq!(info.files, 6, "the set resolved the four files and the two empty folders below daily/");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let info = done.set.clone().expect("set");
    assert_eq!((info.done, info.failed, info.skipped), (6, 0, 0));
    let expected: Vec<String> = files.iter().filter(|f| f.starts_with("daily/")).map(|f| f.to_string()).collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(tree(&layout.in_dir("b")), expected, "the tree arrived as a tree");
    for empty in ["daily/empty", "daily/2026-11-30/a/b"] {
        let p = layout.in_dir("b").join(empty);
        assert!(p.is_dir(), "the empty folder {empty} arrived");
        assert_eq!(std::fs::read_dir(&p).expect("read").count(), 0, "{empty} is empty");
    }
    for f in &expected {
        assert_eq!(file_digest(&layout.in_dir("b").join(f)), file_digest(&out.join(f)), "{f} differs");
    }
    assert_eq!(done.transferred, done.size, "the set's bytes are the sum of its files'");
    // Each file is a request of its own on both nodes, Done on both.
    for m in members(&a.handle(), &done) {
        assert_eq!(m.status, Status::Done, "{}", m.file_name);
        let theirs = wait_record(&b.handle(), &m.id, Status::Done, WITHIN).await;
        assert_eq!(theirs.file_name, m.file_name, "the receiver records the relative path");
        if m.file_name.ends_with('/') {
            assert_eq!(m.size, 0, "a folder travels as 0 bytes");
        }
    }
    // The set is one line of the listing; its files are not listed apart.
    let page = a.handle().store().page(&ferry::store::ListQuery { limit: 100, ..Default::default() }).expect("page");
    assert_eq!(page.records.len(), 1, "{:?}", page.records.iter().map(|r| &r.file_name).collect::<Vec<_>>());
    // So on the receiver, whose record of the set its release ended.
    let theirs = b.handle().store().get(&done.id).expect("get").expect("the receiver's record of the set");
    assert_eq!((theirs.status, theirs.role), (Status::Done, Role::Requested));
    assert_eq!(theirs.set.as_ref().map(|i| (i.files, i.done)), Some((6, 6)));
    assert_eq!(theirs.transferred, done.transferred);
    let page = b.handle().store().page(&ferry::store::ListQuery { limit: 100, ..Default::default() }).expect("page");
    assert_eq!(page.records.len(), 1, "{:?}", page.records.iter().map(|r| &r.file_name).collect::<Vec<_>>());

    // A glob at the top: `*.csv` takes top.csv only (`*` stays in its folder).
    let glob = a.handle().submit(pattern("*.csv")).await.expect("submitted");
    assert_eq!(glob.set.as_ref().map(|i| i.files), Some(1));
    assert_eq!(wait_final(&a.handle(), &glob.id, WITHIN).await.status, Status::Done);
    assert!(layout.in_dir("b").join("top.csv").is_file());
    assert!(!layout.in_dir("b").join("other.txt").exists());

    // A glob that matches folders sends their trees (not empty folders).
    let days = a.handle().submit(pattern("daily/2026-11-2?")).await.expect("submitted");
    assert_eq!(days.set.as_ref().map(|i| i.files), Some(3), "the three files below the two day folders it matched");
    assert_eq!(wait_final(&a.handle(), &days.id, WITHIN).await.status, Status::Done);

    // A folder named as the file sends its tree too.
    let folder = a.handle().submit(submit(Direction::Push, "b", "daily")).await.expect("submitted");
    assert_eq!(folder.set.as_ref().map(|i| i.files), Some(6), "a folder name is its tree");
    assert_eq!(wait_final(&a.handle(), &folder.id, WITHIN).await.status, Status::Done);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_is_refused_with_a_clear_error_and_nothing_sent() {
    let (layout, a, b) = two_nodes().await;
    let out = layout.out_dir("a");
    write(&out.join("tree/ok.csv"), b"ok");
    let outside = layout.dir.path().join("outside");
    write(&outside.join("secret.csv"), b"secret");
    std::os::unix::fs::symlink("/etc/passwd", out.join("tree/passwd")).expect("link");
    std::os::unix::fs::symlink(&outside, out.join("linked")).expect("link");
    let cases: [(&str, &str); 5] = [
        ("../outside/*.csv", ".."),
        ("/etc/*", "absolute"),
        ("tree/**", "symbolic link"),
        ("linked/*.csv", "symbolic link"),
        (".ferry-work/*", "reserved"),
    ];
    for (p, why) in cases {
        let err = a.handle().submit(pattern(p)).await.expect_err(p);
        let text = err.to_string();
        assert!(text.contains(why), "{p}: {text}");
        assert!(matches!(err, SubmitError::BadFileName(_) | SubmitError::BadRequest(_)), "{p}: {err:?}");
    }
    // A list with an escaping path is refused the same way.
    let list = Submit { file: String::new(), files: Some(vec!["tree/ok.csv".into(), "../x".into()]), ..pattern("x") };
    let list = Submit { pattern: None, ..list };
    assert!(matches!(a.handle().submit(list).await, Err(SubmitError::BadFileName(_))));
    assert!(a.handle().store().list(None).expect("list").is_empty(), "nothing was recorded");
    assert!(tree(&layout.in_dir("b")).is_empty(), "nothing was sent");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_match_fails_or_succeeds_as_the_policy_says() {
    let (_layout, a, b) = two_nodes().await;
    let err = a.handle().submit(pattern("*.none")).await.expect_err("no file matches");
    assert!(matches!(err, SubmitError::NoFiles(_)), "{err:?}");
    assert!(err.to_string().contains("matches no file"), "{err}");
    let allowed = Submit { on_empty: Some(OnEmpty::Succeed), ..pattern("*.none") };
    let set = a.handle().submit(allowed).await.expect("an empty success");
    assert_eq!(set.status, Status::Done);
    assert_eq!(set.set.as_ref().map(|i| i.files), Some(0));
    a.shutdown().await;
    b.shutdown().await;
}

/// Submits a set of six files and stops it at once, so the test can
/// change its files after resolution; waits (bounded) until every file is
/// paused.
async fn held_set(layout: &Layout, a: &Node, on_failure: OnFailure) -> RequestRecord {
    held_set_in(layout, a, "batch", on_failure).await
}

async fn held_set_named(layout: &Layout, a: &Node, folder: &str) -> RequestRecord {
    held_set_in(layout, a, folder, OnFailure::Stop).await
}

async fn held_set_in(layout: &Layout, a: &Node, folder: &str, on_failure: OnFailure) -> RequestRecord {
    let out = layout.out_dir("a");
    for i in 0..6 {
        write(&out.join(format!("{folder}/f{i}.dat")), format!("content {i}").as_bytes());
    }
    let s = Submit { on_failure: Some(on_failure), ..pattern(&format!("{folder}/*.dat")) };
    let set = a.handle().submit(s).await.expect("submitted");
    assert_eq!(set.set.as_ref().map(|i| i.files), Some(6));
    let stopped = a.handle().stop(&set.id).await.expect("stop the set");
    assert_eq!(stopped.status, Status::Interrupted);
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !members(&a.handle(), &set).iter().all(|m| ferry::lifecycle::is_stopped(m) || m.status.is_final()) {
        assert!(tokio::time::Instant::now() < deadline, "the set's files did not all stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_changed_or_deleted_after_resolution_fail_and_the_others_arrive() {
    // b is down until the files have changed: nothing can arrive before
    // the set is stopped, so every file runs after the changes.
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let set = held_set(&layout, &a, OnFailure::Continue).await;
    let out = layout.out_dir("a");
    // Changed after the set resolved it (another size), and deleted; a
    // file that appears later does not join.
    std::fs::write(out.join("batch/f1.dat"), b"changed after resolution").expect("change");
    std::fs::remove_file(out.join("batch/f4.dat")).expect("delete");
    write(&out.join("batch/late.dat"), b"late");
    assert!(tree(&layout.in_dir("b")).is_empty());
    let b = layout.start("b").await;
    a.handle().restart(&set.id).await.expect("restart the set");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::InError);
    let err = done.error.clone().expect("error");
    assert_eq!(err.code, ErrorCode::FilesFailed);
    assert!(err.message.contains("2 of 6 files failed"), "{}", err.message);
    assert!(err.message.contains("batch/f1.dat (SourceChanged)"), "{}", err.message);
    assert!(err.message.contains("batch/f4.dat (FileNotFound)"), "{}", err.message);
    let arrived = tree(&layout.in_dir("b"));
    assert_eq!(
        arrived,
        ["batch/f0.dat", "batch/f2.dat", "batch/f3.dat", "batch/f5.dat"],
        "the others arrived; late.dat did not join"
    );
    let info = done.set.clone().expect("set");
    assert_eq!((info.done, info.failed, info.skipped), (4, 2, 0));
    // b's record of the set, made by its stream, ends in error too: a
    // tells it (what a partner may be told of the cause).
    let theirs = wait_record(&b.handle(), &set.id, Status::InError, WITHIN).await;
    assert_eq!((theirs.step, theirs.role), (Step::Transfer, Role::Requested));
    let told = theirs.error.clone().expect("why");
    assert_eq!(told.code, ErrorCode::FilesFailed);
    assert!(told.message.starts_with("a ended the set in error"), "{}", told.message);
    assert!(told.message.contains("batch/f1.dat (SourceChanged)"), "{}", told.message);
    let first_end = theirs.updated_at;

    // f4 put back as it was resolved (content and modification time) and
    // the set restarted: f4 is sent; f1 still differs from what the set
    // resolved and fails again; the files done are not sent again.
    let all = members(&a.handle(), &done);
    let f1 = all.iter().find(|m| m.file_name == "batch/f1.dat").expect("f1");
    let f4 = all.iter().find(|m| m.file_name == "batch/f4.dat").expect("f4");
    assert_eq!(f1.error.as_ref().map(|e| e.code), Some(ErrorCode::SourceChanged));
    assert_eq!(f4.error.as_ref().map(|e| e.code), Some(ErrorCode::FileNotFound));
    let resolved_at = f4.member_of.as_ref().expect("member").modified_ns;
    let restored = std::fs::File::create(out.join("batch/f4.dat")).expect("restore");
    std::io::Write::write_all(&mut &restored, b"content 4").expect("write");
    let at = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(resolved_at).expect("fits"));
    restored.set_modified(at).expect("set the resolved modification time");
    drop(restored);
    let f0_attempts = all.iter().find(|m| m.file_name == "batch/f0.dat").expect("f0").attempts;
    a.handle().restart(&set.id).await.expect("restart the set");
    let again = wait_final(&a.handle(), &set.id, WITHIN).await;
    let info = again.set.clone().expect("set");
    assert_eq!((info.done, info.failed), (5, 1), "{:?}", again.error);
    assert!(again.error.as_ref().is_some_and(|e| e.message.contains("batch/f1.dat (SourceChanged)")));
    assert!(layout.in_dir("b").join("batch/f4.dat").is_file());
    let f0 = members(&a.handle(), &again).into_iter().find(|m| m.file_name == "batch/f0.dat").expect("f0");
    assert_eq!(f0.attempts, f0_attempts, "a file done is not sent again");

    // The receiver recorded the set at its stream's `Open`: never released
    // (a file failed), it ran again with the restart (f4 came on a new
    // stream), ended in error again when a told it, counts the streamed
    // files it has `Done`, and lists them through itself, not one line each.
    let store_b = b.handle().store().clone();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let theirs = loop {
        let r = store_b.get(&set.id).expect("get").expect("the receiver's record of the set");
        if r.status == Status::InError && r.updated_at > first_end {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "b's record of the set did not end again: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((theirs.step, theirs.role), (Step::Transfer, Role::Requested));
    let reopened = store_b.job_log(&set.id).expect("log");
    assert!(reopened.iter().any(|l| l.message.contains("opened the set's stream again")), "{reopened:?}");
    let received: Vec<RequestRecord> =
        (0..6).filter_map(|i| store_b.get(&member_id(&set.id, i)).expect("get")).collect();
    let streamed = received.iter().filter(|m| m.member_of.is_some() && m.status == Status::Done).count();
    assert!(streamed > 0, "the small files came on the set stream");
    assert_eq!(theirs.set.as_ref().map(|i| (i.files, i.done as usize)), Some((6, streamed)));
    let listed = store_b.page(&ferry::store::ListQuery { limit: 100, ..Default::default() }).expect("page");
    let apart = received.iter().filter(|m| m.member_of.is_none()).count();
    assert_eq!(
        listed.records.len(),
        1 + apart,
        "{:?}",
        listed.records.iter().map(|r| &r.file_name).collect::<Vec<_>>()
    );
    // Its files page there lists the files received so far (f1 never came).
    assert!(received.len() < 6, "a file that failed on the sender is not on b");
    let page = api_client(&b).set_files(set.id.as_str(), 0, 100).await.expect("b's files page of the set");
    assert_eq!(page.files.len(), received.len());
    // Cancelled on the sender, the receiver's record of the set ends too.
    a.handle().cancel(&set.id).await.expect("cancel the set");
    let ended = wait_record(&b.handle(), &set.id, Status::Cancelled, WITHIN).await;
    assert_eq!(ended.set.as_ref().map(|i| i.done as usize), Some(streamed), "its files stay delivered");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_stop_a_failed_file_skips_the_rest() {
    // One file at a time, in path order: f0 fails first, the rest wait.
    // b is down until the set is stopped, so no file is sent before.
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("a").concurrency = 1;
    let a = layout.start("a").await;
    let set = held_set(&layout, &a, OnFailure::Stop).await;
    let b = layout.start("b").await;
    // The first file is deleted: it fails first when the set restarts, and
    // the files after it wait their turn.
    let first_held = members(&a.handle(), &set).into_iter().next().expect("a file");
    assert_ne!(first_held.status, Status::Done, "nothing was sent while b was down");
    std::fs::remove_file(layout.out_dir("a").join(&first_held.file_name)).expect("delete it");
    a.handle().restart(&set.id).await.expect("restart the set");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::InError);
    let info = done.set.clone().expect("set");
    assert_eq!(info.failed, 1, "{:?}", done.error);
    assert_eq!(info.done + info.skipped, 5);
    assert!(info.skipped >= 1, "files not started when {} failed are skipped: {info:?}", first_held.file_name);
    let skipped: Vec<RequestRecord> = members(&a.handle(), &done)
        .into_iter()
        .filter(|m| m.error.as_ref().is_some_and(|e| e.code == ErrorCode::Skipped))
        .collect();
    assert_eq!(skipped.len() as u32, info.skipped);
    for m in &skipped {
        assert!(!layout.in_dir("b").join(&m.file_name).exists(), "{} was skipped, not sent", m.file_name);
    }
    // The file put back as resolved and the set restarted: the failed and
    // the skipped files all run (a restart does not skip again what it
    // queued), and the set ends Done.
    let resolved_at = first_held.member_of.as_ref().expect("member").modified_ns;
    let back = std::fs::File::create(layout.out_dir("a").join(&first_held.file_name)).expect("restore");
    let index = first_held.member_of.as_ref().expect("member").index;
    std::io::Write::write_all(&mut &back, format!("content {index}").as_bytes()).expect("write");
    back.set_modified(std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(resolved_at).expect("fits")))
        .expect("time");
    drop(back);
    a.handle().restart(&set.id).await.expect("restart the set");
    let again = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(again.status, Status::Done, "{:?}", again.error);
    assert_eq!(tree(&layout.in_dir("b")).len(), 6);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_page_and_operator_commands_cover_the_whole_set() {
    let (layout, a, b) = two_nodes().await;
    // Stopped as a whole: every file is paused (held_set waits for it).
    let set = held_set(&layout, &a, OnFailure::Stop).await;
    // Files stopped before they were ever taken are not sent while stopped.
    let queued: Vec<String> =
        members(&a.handle(), &set).into_iter().filter(|m| m.attempts == 0).map(|m| m.file_name).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for f in &queued {
        assert!(!layout.in_dir("b").join(f).exists(), "{f} was sent while its set was stopped");
    }
    a.handle().restart(&set.id).await.expect("restart");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(tree(&layout.in_dir("b")).len(), 6);

    // Cancelled as a whole: a file that ended meanwhile stays as it is,
    // the others are cancelled, and the set stays Cancelled.
    let second = held_set_named(&layout, &a, "batch2").await;
    let first = members(&a.handle(), &second).remove(0);
    if !first.status.is_final() {
        a.handle().store().update(&first.id, "ended meanwhile (test)", |r| r.status = Status::Done).expect("done");
    }
    let cancelled = a.handle().cancel(&second.id).await.expect("cancel the set");
    assert_eq!(cancelled.status, Status::Cancelled);
    for m in members(&a.handle(), &second).into_iter().skip(1) {
        assert!(matches!(m.status, Status::Cancelled | Status::Done), "{}: {:?}", m.file_name, m.status);
    }
    assert_eq!(a.handle().store().get(&first.id).expect("get").expect("first").status, Status::Done);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.handle().store().get(&second.id).expect("get").expect("set").status, Status::Cancelled);

    // The API pages through the files in path order.
    let client = api_client(&a);
    let first = client.set_files(set.id.as_str(), 0, 4).await.expect("page 1");
    assert_eq!(first.files.len(), 4);
    assert_eq!(first.next, Some(4));
    let second = client.set_files(set.id.as_str(), 4, 4).await.expect("page 2");
    assert_eq!(second.files.len(), 2);
    assert_eq!(second.next, None);
    let names: Vec<String> = first.files.iter().chain(&second.files).map(|v| v.file.clone()).collect();
    let want: Vec<String> = (0..6).map(|i| format!("batch/f{i}.dat")).collect();
    assert_eq!(names, want);
    assert!(first.files.iter().all(|v| v.status == Status::Done && v.member_of.is_some()));
    let view = client.get(set.id.as_str()).await.expect("the set");
    let sv = view.set.expect("a set view");
    assert_eq!((sv.files, sv.done, sv.left), (6, 6, 0));
    // A single transfer has no files page.
    write(&layout.out_dir("a").join("single.bin"), b"x");
    let one = a.handle().submit(submit(Direction::Push, "b", "single.bin")).await.expect("one");
    let err = client.set_files(one.id.as_str(), 0, 10).await.expect_err("not a set");
    assert_eq!(err.http_status(), Some(400));
    a.shutdown().await;
    b.shutdown().await;
}

/// Submits the eight entries below `all/` (six files, one in a subfolder,
/// an empty folder) with `delivery = all` and `on_failure = continue`,
/// stops the set at once and waits (bounded) until every file is paused.
async fn all_or_nothing_set(layout: &Layout, a: &Node) -> RequestRecord {
    let out = layout.out_dir("a");
    for i in 0..6 {
        write(&out.join(format!("all/f{i}.dat")), format!("content {i}\n").repeat(100 * i + 1).as_bytes());
    }
    write(&out.join("all/sub/g.dat"), b"in a subfolder");
    std::fs::create_dir_all(out.join("all/empty")).expect("mkdir");
    let s = Submit { on_failure: Some(OnFailure::Continue), delivery: Some(Delivery::All), ..pattern("all/**") };
    let set = a.handle().submit(s).await.expect("submitted");
    assert_eq!(set.set.as_ref().map(|i| (i.files, i.policy.delivery)), Some((8, Delivery::All)));
    a.handle().stop(&set.id).await.expect("stop the set");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !members(&a.handle(), &set).iter().all(|m| ferry::lifecycle::is_stopped(m) || m.status.is_final()) {
        assert!(tokio::time::Instant::now() < deadline, "the set's files did not all stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set
}

/// How many of the set's files (not folders) verified on a wait under their
/// work names on b.
fn held_work_files(layout: &Layout, a: &Node, set: &RequestRecord) -> usize {
    members(&a.handle(), set)
        .into_iter()
        .filter(|m| m.status == Status::Done && !m.file_name.ends_with('/'))
        .filter(|m| ferry::transfer::receive::work_path(&layout.in_dir("b"), &m.id).is_file())
        .count()
}

/// Puts `m`'s file back as the set resolved it: its content and time.
fn restore(layout: &Layout, m: &RequestRecord, content: &[u8]) {
    let resolved_at = m.member_of.as_ref().expect("member").modified_ns;
    let back = std::fs::File::create(layout.out_dir("a").join(&m.file_name)).expect("restore");
    std::io::Write::write_all(&mut &back, content).expect("write");
    back.set_modified(std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(resolved_at).expect("fits")))
        .expect("time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_delivery_all_no_file_is_in_place_until_every_file_is_verified() {
    // b is down until f4 is deleted, so every file runs after that.
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let set = all_or_nothing_set(&layout, &a).await;
    let f4 = members(&a.handle(), &set).into_iter().find(|m| m.file_name == "all/f4.dat").expect("f4");
    std::fs::remove_file(layout.out_dir("a").join("all/f4.dat")).expect("delete");
    let b = layout.start("b").await;
    a.handle().restart(&set.id).await.expect("restart the set");
    let failed = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError, "{:?}", failed.error);
    let info = failed.set.clone().expect("set");
    assert_eq!((info.done, info.failed), (7, 1), "seven verified, f4 missing");
    // Seven files verified, none under its final name: b holds them under
    // their work names, and not even their folders are made.
    assert!(tree(&layout.in_dir("b")).is_empty(), "{:?}", tree(&layout.in_dir("b")));
    assert!(!layout.in_dir("b").join("all").exists(), "no folder of the set is made before the release");
    for m in members(&a.handle(), &failed).into_iter().filter(|m| m.status == Status::Done) {
        let theirs = b.handle().store().get(&m.id).expect("get").expect("b holds a record of each verified file");
        assert!(ferry::lifecycle::is_held(&theirs), "{}: {:?}/{:?}", m.file_name, theirs.status, theirs.step);
        assert_eq!(theirs.hash, m.hash, "{}: b verified the same digest", m.file_name);
    }
    assert_eq!(held_work_files(&layout, &a, &failed), 6, "the six verified files wait in the work folder");

    // f4 back as resolved, the set restarted: f4 is sent, then every file
    // goes in place together and the set is Done.
    restore(&layout, &f4, "content 4\n".repeat(401).as_bytes());
    a.handle().restart(&set.id).await.expect("restart the set");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let mut want: Vec<String> = (0..6).map(|i| format!("all/f{i}.dat")).collect();
    want.push("all/sub/g.dat".into());
    assert_eq!(tree(&layout.in_dir("b")), want);
    assert!(layout.in_dir("b").join("all/empty").is_dir(), "the empty folder is made at the release");
    for f in &want {
        assert_eq!(file_digest(&layout.in_dir("b").join(f)), file_digest(&layout.out_dir("a").join(f)), "{f}");
    }
    for m in members(&a.handle(), &done) {
        let theirs = wait_record(&b.handle(), &m.id, Status::Done, WITHIN).await;
        assert!(theirs.delivered, "{}", m.file_name);
    }
    assert!(work_files(&layout.in_dir("b")).is_empty(), "no work file left");
    let log = a.handle().store().job_log(&set.id).expect("log");
    assert!(log.iter().any(|l| l.message.contains("put every file under its final name")), "{log:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_delivery_all_set_discards_the_files_the_receiver_holds() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let set = all_or_nothing_set(&layout, &a).await;
    std::fs::remove_file(layout.out_dir("a").join("all/f2.dat")).expect("delete");
    let b = layout.start("b").await;
    a.handle().restart(&set.id).await.expect("restart the set");
    let failed = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError, "{:?}", failed.error);
    assert_eq!(held_work_files(&layout, &a, &failed), 6);
    // An operator on b cannot stop or cancel a held file: its set decides.
    let held = members(&a.handle(), &failed).into_iter().find(|m| m.status == Status::Done).expect("a held file");
    assert!(b.handle().cancel(&held.id).await.is_err(), "a held file is cancelled with its set, on its sender");

    let cancelled = a.handle().cancel(&set.id).await.expect("cancel the set");
    assert_eq!(cancelled.status, Status::Cancelled);
    for m in members(&a.handle(), &failed).into_iter().filter(|m| m.status == Status::Done) {
        wait_record(&b.handle(), &m.id, Status::Cancelled, WITHIN).await;
    }
    assert!(work_files(&layout.in_dir("b")).is_empty(), "the held files are discarded");
    assert!(tree(&layout.in_dir("b")).is_empty(), "and none went in place");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_notices_beyond_those_sent_at_once_all_reach_a_partner_that_comes_back() {
    // More held files than notices go at once (`notice_queue::MAX_TELLING`),
    // cancelled while b is down: each is owed a notice, sent a few at a
    // time once b is back, and b discards every one.
    let held_files = ferry::actors::notice_queue::MAX_TELLING * 3 + 5;
    let layout = Layout::new(&["a", "b"]);
    let out = layout.out_dir("a");
    for i in 0..=held_files {
        write(&out.join(format!("many/f{i:04}.dat")), format!("file {i}\n").as_bytes());
    }
    let a = layout.start("a").await;
    let s = Submit { on_failure: Some(OnFailure::Continue), delivery: Some(Delivery::All), ..pattern("many/*") };
    let set = a.handle().submit(s).await.expect("submitted");
    // b is down: nothing is sent before the last file is gone, so the set
    // ends in error with every other file held on b.
    std::fs::remove_file(out.join(format!("many/f{held_files:04}.dat"))).expect("delete");
    let b = layout.start("b").await;
    let failed = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError, "{:?}", failed.error);
    assert_eq!(held_work_files(&layout, &a, &failed), held_files);
    b.shutdown().await;

    let cancelled = a.handle().cancel(&set.id).await.expect("cancel the set");
    assert_eq!(cancelled.status, Status::Cancelled);
    let owed = a.handle().store().notices_owed().expect("owed");
    assert!(owed.len() > held_files, "one notice per held file and one for the set: {}", owed.len());

    let b = layout.start("b").await;
    for m in members(&a.handle(), &failed).into_iter().filter(|m| m.status == Status::Done) {
        wait_record(&b.handle(), &m.id, Status::Cancelled, WITHIN).await;
    }
    assert!(work_files(&layout.in_dir("b")).is_empty(), "the held files are discarded");
    assert!(tree(&layout.in_dir("b")).is_empty(), "and none went in place");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !a.handle().store().notices_owed().expect("owed").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "notices still owed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_rule_runs_post_tasks_refuses_to_hold_files() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("b").rules[0].receiver.post_tasks =
        vec![ferry::tasks::TaskConfig { kind: "exec".into(), program: Some("/bin/true".into()), ..Default::default() }];
    let (a, b) = (layout.start("a").await, layout.start("b").await);
    write(&layout.out_dir("a").join("p/x.dat"), b"x");
    let s = Submit { delivery: Some(Delivery::All), ..pattern("p/*.dat") };
    let set = a.handle().submit(s).await.expect("submitted");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::InError);
    let m = members(&a.handle(), &done).remove(0);
    let err = m.error.expect("why");
    assert_eq!(err.code, ErrorCode::CapabilityMismatch, "{}", err.message);
    assert!(err.message.contains("post-tasks") && err.message.contains("delivery = all"), "{}", err.message);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tasks_run_once_per_set_on_both_sides_and_resume_at_the_one_that_failed() {
    let mut layout = Layout::new(&["a", "b"]);
    let marks = layout.in_dir("b").parent().expect("the layout's folder").join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    let m = |name: &str| marks.join(name).display().to_string();
    // Receiver: list the set's folder (a loader would load it), count the
    // runs, then a task that fails until `go` exists.
    layout.config_mut("b").rules[0].receiver.set_tasks = vec![
        sh_task(
            "cd \"$1\" && find . -type f ! -path './.ferry*' | LC_ALL=C sort > \"$2\"; echo \"$4\" >> \"$3\"",
            &["#FILEPATH#", &m("b-list"), &m("b-runs"), "#ORIGINALFILENAME# #FILESIZE#"],
        ),
        sh_task("test -e \"$1\"", &[&m("go")]),
    ];
    // Sender: once, after the receiver's set tasks ran.
    layout.config_mut("a").rules[0].sender.set_tasks =
        vec![sh_task("echo \"$2 $3\" >> \"$1\"", &[&m("a-runs"), "#REQUESTID#", "#FILESIZE#"])];
    let (a, b) = (layout.start("a").await, layout.start("b").await);
    for (name, body) in [("d/one.csv", &b"1111"[..]), ("d/sub/two.csv", b"22"), ("d/three.csv", b"333")] {
        write(&layout.out_dir("a").join(name), body);
    }
    let set = a.handle().submit(pattern("d/**")).await.expect("submitted");

    // The receiver's second set task fails: the set ends InError naming it,
    // every file in place, the first set task run once, the sender's none.
    let failed = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError, "{:?}", failed.error);
    let err = failed.error.clone().expect("why");
    assert_eq!(err.code, ErrorCode::TaskFailed, "{}", err.message);
    assert!(err.message.contains("set task 2/2 (exec"), "names the task: {}", err.message);
    assert!(members(&a.handle(), &failed).iter().all(|m| m.status == Status::Done), "every file delivered");
    assert_eq!(tree(&layout.in_dir("b")), ["d/one.csv", "d/sub/two.csv", "d/three.csv"]);
    let listed = std::fs::read_to_string(m("b-list")).expect("the first set task ran");
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["./d/one.csv", "./d/sub/two.csv", "./d/three.csv"]);
    assert_eq!(std::fs::read_to_string(m("b-runs")).expect("runs"), "d/** 9\n", "once, with the pattern and bytes");
    assert!(!marks.join("a-runs").exists(), "the sender's set tasks wait for the receiver's");
    let theirs = b.handle().store().get(&set.id).expect("get").expect("the receiver records the set");
    assert_eq!((theirs.status, theirs.task_index), (Status::InError, 1), "stopped at its second set task");
    assert_eq!(b.handle().view(&theirs).task.as_deref(), Some("set task 2/2 (exec)"));

    // Fixed and restarted on the sender: the receiver runs on from the
    // failed task (the first is not run again), then the sender's runs once.
    std::fs::write(m("go"), b"").expect("go");
    a.handle().restart(&set.id).await.expect("restarted");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(std::fs::read_to_string(m("b-runs")).expect("runs"), "d/** 9\n", "the first set task ran once");
    assert_eq!(std::fs::read_to_string(m("a-runs")).expect("ran"), format!("{} 9\n", set.id));
    let theirs = b.handle().store().get(&set.id).expect("get").expect("set");
    assert_eq!(theirs.status, Status::Done);
    let log = a.handle().store().job_log(&set.id).expect("log");
    assert!(log.iter().any(|l| l.message.contains("set task 1/1 (exec") && l.message.contains(": ok in")), "{log:?}");
    a.shutdown().await;
    b.shutdown().await;
}

fn pull_pattern(p: &str) -> Submit {
    Submit { file: String::new(), pattern: Some(p.into()), ..submit(Direction::Pull, "b", "") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_set_is_resolved_by_the_partner_listed_in_pages_and_arrives_in_place() {
    let mut layout = Layout::new(&["a", "b"]);
    let marks = layout.in_dir("a").parent().expect("the layout's folder").join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    let m = |name: &str| marks.join(name).display().to_string();
    // The requested node (the sender) runs its set tasks first, then the
    // requester (the receiver), which here checks the other ran.
    layout.config_mut("b").rules[0].sender.set_tasks =
        vec![sh_task("echo \"$2\" >> \"$1\"", &[&m("b-runs"), "#ORIGINALFILENAME# #FILESIZE#"])];
    layout.config_mut("a").rules[0].receiver.set_tasks = vec![sh_task(
        "test -e \"$1\" && ls \"$3\" > /dev/null && echo ran >> \"$2\"",
        &[&m("b-runs"), &m("a-runs"), "#FILEPATH#/night/sub dir"],
    )];
    let (a, b) = (layout.start("a").await, layout.start("b").await);
    let out = layout.out_dir("b");
    let mut want = vec![
        ("night/big.bin".to_string(), vec![7u8; 3 * 1024 * 1024 + 5]),
        ("night/sub dir/ünïcødé €.csv".to_string(), b"unicode".to_vec()),
        ("night/a.csv".to_string(), b"a".to_vec()),
    ];
    // Enough entries with long names that the list takes several pages.
    let long = "n".repeat(120);
    want.extend((0..700).map(|i| (format!("night/many/{long}-{i:04}.dat"), format!("{i}").into_bytes())));
    for (path, body) in &want {
        write(&out.join(path), body);
    }
    std::fs::create_dir_all(out.join("night/empty")).expect("empty folder");
    write(&out.join("other/not-asked.csv"), b"no");

    let set = a.handle().submit(pull_pattern("night/**")).await.expect("submitted");
    let info = set.set.clone().expect("a set");
    assert_eq!(info.files as usize, want.len() + 1, "every file and the empty folder, as b resolved them");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let got = tree(&layout.in_dir("a"));
    let mut names: Vec<String> = want.iter().map(|(p, _)| p.clone()).collect();
    names.sort();
    assert_eq!(got, names, "the tree arrives in place; nothing else");
    for (path, body) in &want {
        assert_eq!(&std::fs::read(layout.in_dir("a").join(path)).expect("read"), body, "{path}");
    }
    assert!(layout.in_dir("a").join("night/empty").is_dir(), "the empty folder arrives as a folder");
    // Each file is a request on both nodes; the set's tasks ran once each.
    for member in members(&a.handle(), &done) {
        assert_eq!(member.direction, Direction::Pull);
        let theirs = b.handle().store().get(&member.id).expect("get").expect("b records each file");
        assert_eq!(theirs.status, Status::Done, "{}", theirs.file_name);
    }
    let size: u64 = want.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(std::fs::read_to_string(m("b-runs")).expect("b ran"), format!("night/** {size}\n"));
    assert_eq!(std::fs::read_to_string(m("a-runs")).expect("a ran"), "ran\n");
    let theirs = b.handle().store().get(&set.id).expect("get").expect("b records the set");
    assert_eq!((theirs.status, theirs.direction), (Status::Done, Direction::Pull));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_set_refuses_escapes_and_empty_matches_with_nothing_recorded() {
    let (layout, a, b) = two_nodes().await;
    let out = layout.out_dir("b");
    write(&out.join("tree/ok.csv"), b"ok");
    std::os::unix::fs::symlink("/etc/passwd", out.join("tree/passwd")).expect("symlink");
    let cases: Vec<(Submit, &str, &str)> = vec![
        (pull_pattern("../x/*"), "bad_file_name", "\"..\""),
        (pull_pattern("/etc/*"), "bad_file_name", "pattern"),
        (pull_pattern("tree/**"), "file_not_found", "symbolic link \"tree/passwd\""),
        (pull_pattern("nothing/*.csv"), "no_files", "on node b"),
        (
            Submit {
                pattern: None,
                files: Some((0..2000).map(|i| format!("tree/file-number-{i:06}.csv")).collect()),
                ..pull_pattern("")
            },
            "bad_request",
            "name a pattern or a folder instead",
        ),
    ];
    for (s, code, why) in cases {
        let asked = s.pattern.clone();
        let e = a.handle().submit(s).await.expect_err("refused");
        assert_eq!(e.code(), code, "{asked:?}: {e}");
        assert!(e.to_string().contains(why), "{asked:?}: {e}");
    }
    assert!(a.handle().store().list(None).expect("list").is_empty(), "nothing recorded");
    assert!(tree(&layout.in_dir("a")).is_empty(), "nothing sent");
    // An empty match the policy allows is an empty success.
    let ok = a.handle().submit(Submit { on_empty: Some(OnEmpty::Succeed), ..pull_pattern("nothing/*") }).await;
    assert_eq!(ok.expect("recorded").status, Status::Done);
    // The list is the partner's to make: with it down, nothing is recorded.
    b.shutdown().await;
    let before = a.handle().store().list(None).expect("list").len();
    let e = a.handle().submit(pull_pattern("tree/*.csv")).await.expect_err("refused");
    assert_eq!(e.code(), "unreachable", "{e}");
    assert!(e.to_string().contains("cannot reach b to list the file set"), "{e}");
    assert_eq!(a.handle().store().list(None).expect("list").len(), before);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_set_while_its_partner_runs_set_tasks_ends_the_partners_record_and_stops_them() {
    let mut layout = Layout::new(&["a", "b"]);
    let marks = layout.in_dir("b").parent().expect("the layout's folder").join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    let second = marks.join("second-ran");
    layout.config_mut("b").rules[0].receiver.set_tasks =
        vec![sh_task("sleep 3", &[]), sh_task("echo ran >> \"$1\"", &[&second.display().to_string()])];
    let (a, b) = (layout.start("a").await, layout.start("b").await);
    write(&layout.out_dir("a").join("c/one.csv"), b"1");
    write(&layout.out_dir("a").join("c/two.csv"), b"2");
    let set = a.handle().submit(pattern("c/*.csv")).await.expect("submitted");
    // b records the set and starts its first (slow) set task.
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let theirs = b.handle().store().get(&set.id).expect("get");
        if theirs.is_some_and(|r| r.status == Status::Running) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b never ran its set tasks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = a.handle().cancel(&set.id).await.expect("cancelled");
    assert_eq!(cancelled.status, Status::Cancelled);
    let theirs = wait_record(&b.handle(), &set.id, Status::Cancelled, WITHIN).await;
    assert!(theirs.error.is_some_and(|e| e.message.contains("cancelled by a")));
    // The slow task ends; the one after it never runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!second.exists(), "a set task ran after the set was cancelled");
    assert_eq!(a.handle().store().get(&set.id).expect("get").expect("set").status, Status::Cancelled);
    a.shutdown().await;
    b.shutdown().await;
}

/// Writes the eight entries of a pulled all-or-nothing set below `dir/` on
/// b (six files, one in a subfolder, an empty folder) and submits the pull
/// of `dir/**` with `delivery = all` and `on_failure = continue`.
async fn pulled_all_or_nothing_set(layout: &Layout, a: &Node, dir: &str) -> RequestRecord {
    let out = layout.out_dir("b");
    for i in 0..6 {
        write(&out.join(format!("{dir}/f{i}.dat")), format!("content {i}\n").repeat(100 * i + 1).as_bytes());
    }
    write(&out.join(format!("{dir}/sub/g.dat")), b"in a subfolder");
    std::fs::create_dir_all(out.join(format!("{dir}/empty"))).expect("mkdir");
    let s = Submit {
        on_failure: Some(OnFailure::Continue),
        delivery: Some(Delivery::All),
        ..pull_pattern(&format!("{dir}/**"))
    };
    let set = a.handle().submit(s).await.expect("submitted");
    assert_eq!(set.set.as_ref().map(|i| (i.files, i.policy.delivery)), Some((8, Delivery::All)));
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_set_with_delivery_all_is_in_place_only_once_every_file_is_verified() {
    let mut layout = Layout::new(&["a", "b"]);
    let marks = layout.in_dir("a").parent().expect("the layout's folder").join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    let gate = marks.join("go");
    // Each file's pull waits (bounded) in a pre-task on a until the gate
    // opens, so a file can vanish on b after the set was resolved.
    let wait = "i=0; while [ ! -e \"$1\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done";
    layout.config_mut("a").rules[0].receiver.pre_tasks = vec![sh_task(wait, &[&gate.display().to_string()])];
    let (a, b) = (layout.start("a").await, layout.start("b").await);
    let (inbox, out) = (layout.in_dir("a"), layout.out_dir("b"));

    let set = pulled_all_or_nothing_set(&layout, &a, "all").await;
    let f4 = out.join("all/f4.dat");
    let (f4_content, f4_time) = (std::fs::read(&f4).expect("read"), std::fs::metadata(&f4).expect("stat").modified());
    std::fs::remove_file(&f4).expect("delete");
    std::fs::write(&gate, b"").expect("open the gate");
    let failed = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError, "{:?}", failed.error);
    let info = failed.set.clone().expect("set");
    assert_eq!((info.done, info.failed), (7, 1), "seven verified, f4 missing");
    // Seven verified, none in place: a holds them under their work names,
    // and not even their folders are made.
    assert!(tree(&inbox).is_empty(), "{:?}", tree(&inbox));
    assert!(!inbox.join("all").exists(), "no folder of the set is made before the release");
    let held: Vec<RequestRecord> =
        members(&a.handle(), &failed).into_iter().filter(|m| m.status == Status::Done).collect();
    for m in &held {
        assert!(ferry::actors::set_release::is_own_held(m), "{}: {:?}/{:?}", m.file_name, m.status, m.delivered);
    }
    let work_held = held
        .iter()
        .filter(|m| !m.file_name.ends_with('/'))
        .filter(|m| ferry::transfer::receive::work_path(&inbox, &m.id).is_file())
        .count();
    assert_eq!(work_held, 6, "the six verified files wait in the work folder");

    // f4 back as resolved, the set restarted: f4 arrives, then every file
    // goes in place together and the set is Done on both nodes.
    let back = std::fs::File::create(&f4).expect("restore");
    std::io::Write::write_all(&mut &back, &f4_content).expect("write");
    back.set_modified(f4_time.expect("mtime")).expect("time");
    a.handle().restart(&set.id).await.expect("restart the set");
    let done = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let mut want: Vec<String> = (0..6).map(|i| format!("all/f{i}.dat")).collect();
    want.push("all/sub/g.dat".into());
    assert_eq!(tree(&inbox), want);
    assert!(inbox.join("all/empty").is_dir(), "the empty folder is made at the release");
    for f in &want {
        assert_eq!(file_digest(&inbox.join(f)), file_digest(&out.join(f)), "{f}");
    }
    for m in members(&a.handle(), &done) {
        assert!(m.status == Status::Done && m.delivered, "{}: {:?} delivered {}", m.file_name, m.status, m.delivered);
    }
    assert!(work_files(&inbox).is_empty(), "no work file left");
    let log = a.handle().store().job_log(&set.id).expect("log");
    assert!(
        log.iter().any(|l| l.message.contains("8 of its entries put under their final names on this node")),
        "{log:?}"
    );
    let theirs = b.handle().store().get(&set.id).expect("get").expect("b records the set");
    assert_eq!(theirs.status, Status::Done);

    // Cancelled while its verified files are held: they are discarded, and
    // none was ever in place.
    std::fs::remove_file(&gate).expect("close the gate");
    let set = pulled_all_or_nothing_set(&layout, &a, "gone").await;
    std::fs::remove_file(out.join("gone/f0.dat")).expect("delete");
    std::fs::write(&gate, b"").expect("open the gate");
    let failed = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError, "{:?}", failed.error);
    let held: Vec<RequestRecord> =
        members(&a.handle(), &failed).into_iter().filter(|m| m.status == Status::Done).collect();
    assert!(held.iter().any(|m| ferry::transfer::receive::work_path(&inbox, &m.id).is_file()), "files held");
    a.handle().cancel(&set.id).await.expect("cancel");
    assert!(!inbox.join("gone").exists(), "nothing of the cancelled set in place");
    for m in &held {
        assert!(!ferry::transfer::receive::work_path(&inbox, &m.id).exists(), "{}: held file discarded", m.file_name);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A set the receiver cancelled (here as its `partial_keep_hours` sweep
/// does a set left unreleased) is refused when its sender restarts it:
/// its files fail `Cancelled` with the receiver's reason, and none goes
/// alone, where the receiver would hold it for a release that cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_its_receiver_cancelled_is_not_sent_again_file_by_file() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let out = layout.out_dir("a");
    for i in 0..4 {
        write(&out.join(format!("late/f{i}.dat")), format!("content {i}").as_bytes());
    }
    // And two too large for a stream: they go alone, beside its leader.
    for i in 4..6 {
        write(&out.join(format!("late/f{i}.dat")), &vec![i as u8; 3 << 20]);
    }
    // (Under `on_failure = stop` the first refusal would skip the rest.)
    let s = Submit { delivery: Some(Delivery::All), on_failure: Some(OnFailure::Continue), ..pattern("late/*.dat") };
    let set = a.handle().submit(s).await.expect("submitted");
    a.handle().stop(&set.id).await.expect("stop the set");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !members(&a.handle(), &set).iter().all(|m| ferry::lifecycle::is_stopped(m) || m.status.is_final()) {
        assert!(tokio::time::Instant::now() < deadline, "the set's files did not all stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // b cancelled its record of the set while a was away.
    {
        let store = ferry::store::Store::open(&layout.config("b").data_dir.join("store")).expect("b's store");
        let policy = ferry::fileset::progress::Policy { delivery: Delivery::All, ..Default::default() };
        let info = (6, "late/*.dat", policy);
        let mut theirs = ferry::lifecycle::set::received_set(set.id.clone(), "a", &set.rule, Direction::Push, info, 0);
        let why = "neither released nor sent on by a within 168 hours (retention.partial_keep_hours)";
        ferry::lifecycle::fail(&mut theirs, ErrorCode::Cancelled, why, 0, 0);
        store.insert(theirs, why).expect("insert");
        store.flush_blocking().expect("flush");
    }
    let b = layout.start("b").await;
    a.handle().restart(&set.id).await.expect("restart the set");
    let ended = wait_final(&a.handle(), &set.id, WITHIN).await;
    assert_eq!(ended.status, Status::InError, "{:?}", ended.error);
    for m in members(&a.handle(), &ended) {
        if m.status == Status::Done {
            // A large file b took whole before the refusal: b is told to
            // discard it (a cancel notice).
            assert!(m.size > 1 << 20, "{} went alone", m.file_name);
            continue;
        }
        assert_eq!(m.status, Status::Cancelled, "{}: {:?}", m.file_name, m.error);
        let why = m.error.expect("why").message;
        assert!(why.contains("partial_keep_hours"), "{}: {why}", m.file_name);
    }
    // Nothing stays held on b (a large file cut short or told of is
    // discarded there).
    let work = layout.in_dir("b").join(".ferry-work");
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let held: Vec<_> =
            std::fs::read_dir(&work).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        if held.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b still holds {held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tree(&layout.in_dir("b")).is_empty(), "nothing arrived on b");
    a.shutdown().await;
    b.shutdown().await;
}
