//! Rules that act: pre-, post- and error tasks on both sides of real nodes
//! on loopback, resumed at the failed task, chained to a third node, and
//! the target modes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ferry::model::Submit;
use ferry::protocol::{Direction, ErrorCode};
use ferry::store::{LogEntry, Status, Step, TargetMode};
use ferry::tasks::TaskConfig;

const WITHIN: Duration = Duration::from_secs(60);

fn task(kind: &str) -> TaskConfig {
    TaskConfig { kind: kind.into(), ..TaskConfig::default() }
}

/// A task that appends a line to `file` each time it runs.
fn count_into(file: &Path) -> TaskConfig {
    sh_task("echo run >> \"$1\"", &[&file.display().to_string()])
}

fn runs(file: &Path) -> usize {
    std::fs::read_to_string(file).map(|t| t.lines().count()).unwrap_or(0)
}

/// Polls (bounded) `node`'s record of `id` until `done` holds; returns the
/// last record read either way (the caller's assertions say what was due).
async fn record_when(
    node: &ferry::node::Node,
    id: &ferry::protocol::RequestId,
    done: impl Fn(&ferry::store::RequestRecord) -> bool,
) -> ferry::store::RequestRecord {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let r = node.handle().store().get(id).expect("read").expect("record");
        if done(&r) || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `file` holds at least `n` runs.
async fn runs_reach(file: &Path, n: usize) {
    let deadline = std::time::Instant::now() + WITHIN;
    while runs(file) < n {
        assert!(std::time::Instant::now() < deadline, "{} never reached {n} runs", file.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lines_starting(log: &[LogEntry], prefix: &str) -> usize {
    log.iter().filter(|l| l.message.starts_with(prefix)).count()
}

fn lines_with(log: &[LogEntry], needle: &str) -> Vec<String> {
    log.iter().filter(|l| l.message.contains(needle)).map(|l| l.message.clone()).collect()
}

fn log_of(node: &ferry::node::Node, id: &ferry::protocol::RequestId) -> Vec<LogEntry> {
    node.handle().store().job_log(id).expect("job log")
}

fn show(log: &[LogEntry]) -> String {
    log.iter().map(|l| format!("  {:?}/{:?} {}", l.status, l.step, l.message)).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_post_tasks_act_on_the_delivered_file_and_log_one_line_each() {
    let mut layout = Layout::new(&["a", "b"]);
    let archive = layout.dir.path().join("archive");
    std::fs::create_dir_all(&archive).expect("archive");
    {
        let rule = &mut layout.config_mut("b").rules[0];
        rule.folders = vec![archive.clone()];
        rule.receiver.post_tasks = vec![
            TaskConfig { message: Some("got #FILENAME# (#FILESIZE# bytes) from #PARTNER#".into()), ..task("log") },
            TaskConfig { action: Some("write".into()), ..task("checksum") },
            TaskConfig { to: Some(format!("{}/#DATE#/", archive.display())), ..task("copy") },
            TaskConfig { mode: Some("640".into()), ..task("chmod") },
            TaskConfig { to: Some(format!("{}/latest", archive.display())), symbolic: Some(true), ..task("link") },
            TaskConfig { to: Some("#REQUESTID#-#FILENAME#".into()), ..task("rename") },
        ];
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let digest = write_random(&layout.out_dir("a").join("report.csv"), 300_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "report.csv")).await.expect("submitted");
    let done = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let theirs = wait_record(&b.handle(), &rec.id, Status::Done, WITHIN).await;
    let log = log_of(&b, &rec.id);
    assert_eq!(lines_with(&log, ": ok in ").len(), 6, "one line per task:\n{}", show(&log));
    assert!(
        log.iter().any(|l| l.message.contains("post-task 1/6 (log message=\"got report.csv (300000 bytes) from a\")")),
        "the log task's line shows its arguments after substitution:\n{}",
        show(&log)
    );
    let renamed = layout.in_dir("b").join(format!("{}-report.csv", rec.id));
    assert_eq!(file_digest(&renamed), digest, "the file was renamed, intact");
    assert_eq!(theirs.local_path.as_deref(), Some(renamed.to_str().expect("utf-8")), "the record knows where it is");
    let sidecar = std::fs::read_to_string(layout.in_dir("b").join("report.csv.b3")).expect("sidecar");
    assert_eq!(sidecar, format!("{digest}  report.csv\n"), "b3sum's format");
    let today = std::fs::read_dir(&archive)
        .expect("archive")
        .filter_map(|e| e.ok())
        .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .expect("a dated folder");
    assert_eq!(file_digest(&today.path().join("report.csv")), digest);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&renamed).expect("meta").permissions().mode() & 0o777, 0o640);
    assert!(std::fs::symlink_metadata(archive.join("latest")).expect("link").file_type().is_symlink());
    assert_eq!(theirs.step, Step::AllDone);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_tasks_run_before_the_request_and_after_the_confirmation_in_both_directions() {
    let mut layout = Layout::new(&["a", "b"]);
    let sent = layout.dir.path().join("sent");
    std::fs::create_dir_all(&sent).expect("sent");
    let b_pre = layout.dir.path().join("b-pre-runs");
    {
        let rule = &mut layout.config_mut("a").rules[0];
        rule.folders = vec![sent.clone()];
        // A sender's pre-task renames the file: the request carries the new name.
        rule.sender.pre_tasks = vec![TaskConfig { to: Some("#FILENAME#.#DATE#".into()), ..task("rename") }];
        rule.sender.post_tasks = vec![TaskConfig { to: Some(format!("{}/", sent.display())), ..task("move") }];
    }
    {
        let rule = &mut layout.config_mut("b").rules[0];
        rule.sender.pre_tasks = vec![count_into(&b_pre)];
        rule.sender.post_tasks = vec![task("delete")];
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let push_digest = write_random(&layout.out_dir("a").join("out.bin"), 70_000);
    let pull_digest = write_random(&layout.out_dir("b").join("in.bin"), 50_000);
    let push = a.handle().submit(submit(Direction::Push, "b", "out.bin")).await.expect("push");
    let done = wait_final(&a.handle(), &push.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, show(&log_of(&a, &push.id)));
    assert_eq!(done.original_file_name.as_deref(), Some("out.bin"));
    let new_name = done.file_name.clone();
    assert!(new_name.starts_with("out.bin.2"), "{new_name}");
    assert_eq!(file_digest(&layout.in_dir("b").join(&new_name)), push_digest, "delivered under the new name");
    assert_eq!(file_digest(&sent.join(&new_name)), push_digest, "moved aside after the confirmation");
    assert!(!layout.out_dir("a").join(&new_name).exists() && !layout.out_dir("a").join("out.bin").exists());
    let pull = a.handle().submit(submit(Direction::Pull, "b", "in.bin")).await.expect("pull");
    let done = wait_final(&a.handle(), &pull.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(file_digest(&layout.in_dir("a").join("in.bin")), pull_digest);
    wait_record(&b.handle(), &pull.id, Status::Done, WITHIN).await;
    assert!(
        !layout.out_dir("b").join("in.bin").exists(),
        "the pull's sender deleted its source after the confirmation"
    );
    assert_eq!(runs(&b_pre), 1, "the requested sender's pre-task ran once, before it accepted");
    let b_log = log_of(&b, &pull.id);
    let pre = b_log.iter().position(|l| l.message.contains("pre-task 1/1")).expect("pre-task logged");
    let sending = b_log.iter().position(|l| l.message.starts_with("sending")).expect("sending logged");
    let post = b_log.iter().position(|l| l.message.contains("post-task 1/1 (delete)")).expect("post-task logged");
    assert!(pre < sending && sending < post, "order on the sender:\n{}", show(&b_log));
    a.shutdown().await;
    b.shutdown().await;
}

/// Receiver post-tasks [count A, fail once, count C], and an error task:
/// the first run ends InError at PostTask; a restart runs the failed task
/// and C, not A, and receives nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_post_task_is_resumed_at_that_task_and_nothing_is_resent() {
    let mut layout = Layout::new(&["a", "b"]);
    let dir = layout.dir.path().to_path_buf();
    let (count_a, count_b, count_c, marker) = (dir.join("A"), dir.join("B"), dir.join("C"), dir.join("fixed"));
    layout.config_mut("b").rules[0].receiver.post_tasks = vec![
        count_into(&count_a),
        sh_task(
            "echo run >> \"$1\"; if [ -e \"$2\" ]; then exit 0; fi; echo 'loader not ready' >&2; exit 4",
            &[&count_b.display().to_string(), &marker.display().to_string()],
        ),
        count_into(&count_c),
    ];
    let alerts = dir.join("alerts");
    layout.config_mut("b").rules[0].receiver.error_tasks = vec![count_into(&alerts)];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let digest = write_random(&layout.out_dir("a").join("batch.dat"), 2 << 20);
    let rec = a.handle().submit(submit(Direction::Push, "b", "batch.dat")).await.expect("submitted");
    let failed = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(failed.status, Status::InError);
    let err = failed.error.clone().expect("cause");
    assert_eq!(err.code, ErrorCode::TaskFailed, "{err:?}");
    assert!(err.message.contains("post-task 2/3 (exec) failed on node b"), "{err:?}");
    let mut theirs = wait_record(&b.handle(), &rec.id, Status::InError, WITHIN).await;
    // InError is recorded before the error task runs: wait (bounded) until it ran.
    let deadline = Instant::now() + WITHIN;
    while theirs.error_task_index < 1 {
        assert!(Instant::now() < deadline, "b's error task did not finish: {theirs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        theirs = b.handle().store().get(&rec.id).expect("store").expect("record");
    }
    assert_eq!(
        (theirs.step, theirs.failed_step, theirs.task_index),
        (Step::ErrorTask, Some(Step::PostTask), 1),
        "failed at the second post-task, then ran its error task"
    );
    assert_eq!(b.handle().view(&theirs).task.as_deref(), Some("post-task 2/3 (exec)"), "the view names the task");
    let b_log = log_of(&b, &rec.id);
    assert!(
        b_log.iter().any(|l| l.message.contains("post-task 2/3 (exec")
            && l.message.contains("failed after")
            && l.message.contains("stderr: loader not ready")),
        "the task's line holds the program's output:\n{}",
        show(&b_log)
    );
    assert_eq!((runs(&count_a), runs(&count_b), runs(&count_c)), (1, 1, 0));
    assert_eq!(file_digest(&layout.in_dir("b").join("batch.dat")), digest, "the file itself was delivered");

    std::fs::write(&marker, b"").expect("fix the cause");
    a.handle().restart(&rec.id).await.expect("restart");
    let done = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    wait_record(&b.handle(), &rec.id, Status::Done, WITHIN).await;
    assert_eq!((runs(&count_a), runs(&count_b), runs(&count_c)), (1, 2, 1), "A not again, B again, C once");
    assert_eq!(runs(&alerts), 1, "the error task ran for the one failure");
    let b_log = log_of(&b, &rec.id);
    assert_eq!(lines_starting(&b_log, "receiving"), 1, "received once:\n{}", show(&b_log));
    let a_log = log_of(&a, &rec.id);
    assert_eq!(lines_starting(&a_log, "sending"), 1, "sent once:\n{}", show(&a_log));
    assert_eq!(done.transferred, 2 << 20);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_is_told_which_task_failed_but_not_its_arguments_or_output() {
    let mut layout = Layout::new(&["a", "b"]);
    // The task's argument and its output stand for what must stay on b: a
    // path, a password, the head of a file.
    layout.config_mut("b").rules[0].receiver.post_tasks =
        vec![sh_task("echo \"token=$1\" >&2; exit 3", &["s3cr3t-argument"])];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("x.bin"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "x.bin")).await.expect("submitted");
    let ours = wait_final(&a.handle(), &rec.id, WITHIN).await;
    let told = ours.error.expect("a was told why");
    assert_eq!(told.code, ErrorCode::TaskFailed, "{told:?}");
    assert!(told.message.contains("post-task 1/1 (exec) failed on node b"), "{told:?}");
    assert!(!told.message.contains("s3cr3t-argument") && !told.message.contains("exited"), "{told:?}");
    // b's own record keeps the whole cause (its operator's to read).
    let theirs = wait_record(&b.handle(), &rec.id, Status::InError, WITHIN).await;
    let cause = theirs.error.expect("b's cause").message;
    assert!(cause.contains("s3cr3t-argument") && cause.contains("exited with status 3"), "{cause}");
    // Nor does asking b for the request's state show them.
    let view = a.handle().cluster_view(&rec.id).await;
    let b_state = view.nodes.iter().find(|n| n.node == "b").expect("b answered");
    let shown = b_state.error.as_deref().expect("b's error shown");
    assert!(shown.contains("post-task 1/1 (exec) failed on node b"), "{shown}");
    assert!(!shown.contains("s3cr3t-argument") && !shown.contains("exited"), "{shown}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_task_never_acts_on_a_file_of_the_same_name_that_the_failed_request_did_not_deliver() {
    let mut layout = Layout::new(&["a", "b"]);
    let seen = layout.dir.path().join("seen");
    {
        let receiver = &mut layout.config_mut("b").rules[0].receiver;
        // Fails when a sender names a file "refused.*" (a sender can make a
        // request fail at will; this is the simplest way).
        receiver.pre_tasks = vec![sh_task("case \"$1\" in refused.*) exit 1;; esac", &["#FILENAME#"])];
        receiver.error_tasks =
            vec![sh_task("printf '%s' \"$1\" > \"$2\"", &["#FILEPATH#", &seen.display().to_string()]), task("delete")];
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    // A file b received earlier, under the name the failing request uses.
    let kept = layout.in_dir("b").join("refused.csv");
    std::fs::create_dir_all(layout.in_dir("b")).expect("in folder");
    std::fs::write(&kept, b"delivered yesterday").expect("earlier file");
    write_random(&layout.out_dir("a").join("refused.csv"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "refused.csv")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::InError);
    let theirs = record_when(&b, &rec.id, |r| r.error_task_index == 2).await;
    assert_eq!(theirs.failed_step, Some(Step::PreTask), "{theirs:?}");
    let acted_on = std::fs::read_to_string(&seen).expect("the first error task ran");
    assert!(acted_on.ends_with(&format!(".ferry-work/{}.part", rec.id)), "its own work file: {acted_on}");
    assert_eq!(std::fs::read(&kept).expect("still there"), b"delivered yesterday", "the earlier file is untouched");
    let log = log_of(&b, &rec.id);
    let skipped = lines_with(&log, "error task 2/2 (delete");
    assert!(skipped.len() == 1 && skipped[0].contains("skipped"), "the delete did not run:\n{}", show(&log));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_tasks_see_the_cause_and_a_failing_one_keeps_the_first_cause() {
    let mut layout = Layout::new(&["a", "b"]);
    let seen = layout.dir.path().join("seen");
    let a_seen = layout.dir.path().join("a-seen");
    {
        let rule = &mut layout.config_mut("b").rules[0];
        rule.receiver.post_tasks = vec![sh_task("exit 9", &[])];
        rule.receiver.error_tasks = vec![
            sh_task(
                "printf '%s|%s' \"$1\" \"$2\" > \"$3\"",
                &["#ERRORCODE#", "#ERRORMSG#", &seen.display().to_string()],
            ),
            sh_task("echo 'alert failed' >&2; exit 1", &[]),
            TaskConfig { message: Some("alerted: #ERRORCODE#".into()), ..task("log") },
        ];
    }
    layout.config_mut("a").rules[0].sender.error_tasks =
        vec![sh_task("printf '%s' \"$1\" > \"$2\"", &["#ERRORCODE#", &a_seen.display().to_string()])];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("x.bin"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "x.bin")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::InError);
    wait_record(&b.handle(), &rec.id, Status::InError, WITHIN).await;
    // Error tasks run after the failure is recorded: wait for the last one.
    let theirs = record_when(&b, &rec.id, |r| r.error_task_index == 3).await;
    assert_eq!((theirs.step, theirs.failed_step, theirs.error_task_index), (Step::ErrorTask, Some(Step::PostTask), 3));
    let err = theirs.error.expect("cause");
    assert_eq!(err.code, ErrorCode::TaskFailed, "the first cause stays: {err:?}");
    let text = std::fs::read_to_string(&seen).expect("the error task ran");
    assert!(text.starts_with("TaskFailed|post-task 1/1") && text.contains("exited with status 9"), "{text}");
    let log = log_of(&b, &rec.id);
    assert_eq!(lines_with(&log, "error task 2/3").len(), 1, "the failing error task is logged:\n{}", show(&log));
    assert!(lines_with(&log, "alert failed").len() == 1);
    assert!(lines_with(&log, "alerted: TaskFailed").len() == 1, "later error tasks still ran:\n{}", show(&log));
    // The partner was told, and ran its own error tasks.
    let deadline = std::time::Instant::now() + WITHIN;
    while !a_seen.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_to_string(&a_seen).expect("a's error task ran"), "TaskFailed");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_reach_a_program_as_one_argument() {
    let mut layout = Layout::new(&["a", "b"]);
    let got = layout.dir.path().join("got");
    std::fs::create_dir_all(&got).expect("got");
    layout.config_mut("b").rules[0].receiver.post_tasks =
        vec![sh_task("printf '%s' \"$1\" > \"$2/$3\"", &["#FILENAME#", &got.display().to_string(), "#REQUESTID#"])];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let names =
        ["a b.csv", "it's \"quoted\"", "$(touch pwned)", "x; touch pwned2", "`touch pwned3`", "line\nbreak", "#RULE#"];
    for name in names {
        write_random(&layout.out_dir("a").join(name), 10);
        let rec = a.handle().submit(submit(Direction::Push, "b", name)).await.expect("submitted");
        let done = wait_final(&a.handle(), &rec.id, WITHIN).await;
        assert_eq!(done.status, Status::Done, "{name:?}: {:?}", done.error);
        let text = std::fs::read_to_string(got.join(rec.id.as_str())).expect("the program ran");
        assert_eq!(text, name, "one argument, unchanged, and the others where they belong");
    }
    for dir in [layout.in_dir("b"), got.clone(), PathBuf::from("/")] {
        for f in ["pwned", "pwned2", "pwned3"] {
            assert!(!dir.join(f).exists(), "{f} was created in {}", dir.display());
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_task_chains_a_to_b_to_c_and_links_both_records() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    let b_out = layout.out_dir("b");
    layout.config_mut("b").rules[0].receiver.post_tasks = vec![
        TaskConfig { to: Some(format!("{}/", b_out.display())), ..task("move") },
        TaskConfig { partner: Some("c".into()), ..task("transfer") },
    ];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    let digest = write_random(&layout.out_dir("a").join("relay.bin"), 500_000);
    let first = a.handle().submit(submit(Direction::Push, "b", "relay.bin")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &first.id, WITHIN).await.status, Status::Done);
    let at_b = wait_record(&b.handle(), &first.id, Status::Done, WITHIN).await;
    assert_eq!(at_b.chained_to.len(), 1, "{at_b:?}");
    let second = at_b.chained_to[0].clone();
    let chained = wait_final(&b.handle(), &second, WITHIN).await;
    assert_eq!(chained.status, Status::Done, "{:?}", chained.error);
    assert_eq!(chained.chained_from.as_ref(), Some(&first.id), "the second request names the first");
    assert_eq!(chained.partner, "c");
    wait_record(&c.handle(), &second, Status::Done, WITHIN).await;
    assert_eq!(file_digest(&layout.in_dir("c").join("relay.bin")), digest, "A → B → C, intact");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reschedule_error_task_runs_the_request_again_later() {
    let mut layout = Layout::new(&["a", "b"]);
    let marker = layout.dir.path().join("second-time");
    layout.config_mut("b").rules[0].receiver.post_tasks =
        vec![sh_task("if [ -e \"$1\" ]; then exit 0; fi; touch \"$1\"; exit 2", &[&marker.display().to_string()])];
    layout.config_mut("a").rules[0].sender.error_tasks =
        vec![TaskConfig { delay_ms: Some(300), limit: Some(2), ..task("reschedule") }];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("later.bin"), 4000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "later.bin")).await.expect("submitted");
    let done = record_when(&a, &rec.id, |r| r.status == Status::Done).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, show(&log_of(&a, &rec.id)));
    assert_eq!(done.reschedules, 1);
    assert!(lines_with(&log_of(&a, &rec.id), "as rescheduled").len() == 1, "{}", show(&log_of(&a, &rec.id)));
    a.shutdown().await;
    b.shutdown().await;
}

fn with_mode(file: &str, mode: Option<TargetMode>) -> Submit {
    Submit { target_mode: mode, ..submit(Direction::Push, "b", file) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_modes_create_replace_append_and_backup() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("b").rules[0].backup_name = "#FILENAME#.old".into();
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let (src, dst) = (layout.out_dir("a"), layout.in_dir("b"));
    std::fs::write(dst.join("t.txt"), b"old\n").expect("existing target");

    // create: refused before any data moves; the target is untouched.
    std::fs::write(src.join("t.txt"), b"new\n").expect("source");
    let rec = a.handle().submit(with_mode("t.txt", Some(TargetMode::Create))).await.expect("submitted");
    let refused = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(refused.error.as_ref().map(|e| e.code), Some(ErrorCode::TargetExists), "{:?}", refused.error);
    assert_eq!(std::fs::read(dst.join("t.txt")).expect("target"), b"old\n");
    assert_eq!(lines_starting(&log_of(&a, &rec.id), "sending"), 0, "no data was sent");

    // append: old content then the whole new data.
    let rec = a.handle().submit(with_mode("t.txt", Some(TargetMode::Append))).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    assert_eq!(std::fs::read(dst.join("t.txt")).expect("target"), b"old\nnew\n");

    // backup: the existing file renamed aside, then delivered.
    std::fs::write(src.join("t.txt"), b"newer\n").expect("source");
    let rec = a.handle().submit(with_mode("t.txt", Some(TargetMode::Backup))).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    assert_eq!(std::fs::read(dst.join("t.txt")).expect("target"), b"newer\n");
    assert_eq!(std::fs::read(dst.join("t.txt.old")).expect("backup"), b"old\nnew\n");
    // A second backup does not overwrite the first one.
    std::fs::write(src.join("t.txt"), b"newest\n").expect("source");
    let rec = a.handle().submit(with_mode("t.txt", Some(TargetMode::Backup))).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    assert_eq!(std::fs::read(dst.join("t.txt.old.1")).expect("second backup"), b"newer\n");

    // replace, the rule's default.
    std::fs::write(src.join("t.txt"), b"last\n").expect("source");
    let rec = a.handle().submit(with_mode("t.txt", None)).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    assert_eq!(std::fs::read(dst.join("t.txt")).expect("target"), b"last\n");

    // create on a pull: refused by the requester itself before its Request.
    write_random(&layout.out_dir("b").join("p.bin"), 100);
    std::fs::write(layout.in_dir("a").join("p.bin"), b"mine").expect("existing");
    let s = Submit { target_mode: Some(TargetMode::Create), ..submit(Direction::Pull, "b", "p.bin") };
    let rec = a.handle().submit(s).await.expect("submitted");
    let refused = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(refused.error.as_ref().map(|e| e.code), Some(ErrorCode::TargetExists));
    assert!(b.handle().store().get(&rec.id).expect("read").is_none(), "b was never asked");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_rules_with_their_target_mode_and_tasks() {
    let mut layout = Layout::new(&["a", "b"]);
    {
        let rule = &mut layout.config_mut("a").rules[0];
        rule.target = TargetMode::Backup;
        rule.receiver.post_tasks = vec![TaskConfig { message: Some("got #FILENAME#".into()), ..task("log") }];
        rule.sender.error_tasks = vec![TaskConfig { delay_ms: Some(60_000), ..task("reschedule") }];
    }
    let a = layout.start("a").await;
    let api = api_client(&a);
    let rules = api.rules().await.expect("rules");
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!((r.name.as_str(), r.target), ("default", TargetMode::Backup));
    assert_eq!(r.receiver.post_tasks[0].message.as_deref(), Some("got #FILENAME#"), "as written");
    assert_eq!(r.sender.error_tasks[0].kind, "reschedule");
    assert!(r.sender.pre_tasks.is_empty());
    a.shutdown().await;
}

/// A sender's post-task fails after the receiver confirmed the file: both
/// sides end InError (the receiver is told instead of EndRequest), and a
/// restart is answered `Complete` without sending the file again; the
/// sender then runs its post-tasks from the failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sender_post_task_resumes_after_a_complete_answer() {
    let mut layout = Layout::new(&["a", "b"]);
    let dir = layout.dir.path().to_path_buf();
    let (first, marker, last) = (dir.join("first"), dir.join("ready"), dir.join("last"));
    layout.config_mut("a").rules[0].sender.post_tasks = vec![
        count_into(&first),
        sh_task("[ -e \"$1\" ] || { echo 'archive offline' >&2; exit 5; }", &[&marker.display().to_string()]),
        count_into(&last),
    ];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let digest = write_random(&layout.out_dir("a").join("s.bin"), 200_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "s.bin")).await.expect("submitted");
    let failed = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(failed.error.as_ref().map(|e| e.code), Some(ErrorCode::TaskFailed), "{:?}", failed.error);
    assert_eq!((failed.step, failed.task_index), (Step::PostTask, 1));
    let theirs = wait_record(&b.handle(), &rec.id, Status::InError, WITHIN).await;
    let told = theirs.error.as_ref().map(|e| e.message.as_str()).unwrap_or_default();
    assert!(told.contains("post-task 2/3 (exec) failed on node a"), "b was told which task: {told}");
    assert!(!told.contains("archive offline"), "but not its output: {told}");
    assert_eq!(file_digest(&layout.in_dir("b").join("s.bin")), digest, "delivered before the sender's tasks");
    std::fs::write(&marker, b"").expect("fix");
    a.handle().restart(&rec.id).await.expect("restart");
    let done = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, show(&log_of(&a, &rec.id)));
    wait_record(&b.handle(), &rec.id, Status::Done, WITHIN).await;
    assert_eq!((runs(&first), runs(&last)), (1, 1));
    let a_log = log_of(&a, &rec.id);
    assert_eq!(lines_starting(&a_log, "sending"), 1, "sent once:\n{}", show(&a_log));
    assert_eq!(
        lines_with(&a_log, "post-task 2/3").len(),
        3,
        "failed, then ok (and the failure record):\n{}",
        show(&a_log)
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// An operator stops a request while its sender's post-task (a slow
/// program) runs: the program's process group is killed, the request is
/// `Interrupted` (`Stopped`), and a restart runs that task again and ends
/// `Done` without sending the file again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_task_abandons_it_and_a_restart_runs_it_again() {
    let mut layout = Layout::new(&["a", "b"]);
    let dir = layout.dir.path().to_path_buf();
    let (started, finished, quick) = (dir.join("started"), dir.join("finished"), dir.join("quick"));
    layout.config_mut("a").rules[0].sender.post_tasks = vec![sh_task(
        "echo run >> \"$1\"; [ -e \"$3\" ] || sleep 30; echo run >> \"$2\"",
        &[&started.display().to_string(), &finished.display().to_string(), &quick.display().to_string()],
    )];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("slow.bin"), 50_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "slow.bin")).await.expect("submitted");
    runs_reach(&started, 1).await;
    a.handle().stop(&rec.id).await.expect("stop accepted");
    let stopped = record_when(&a, &rec.id, |r| r.status == Status::Interrupted).await;
    assert_eq!(stopped.error.as_ref().map(|e| e.code), Some(ErrorCode::Stopped), "{:?}", stopped.error);
    assert_eq!((stopped.step, stopped.task_index), (Step::PostTask, 0), "stopped at the task");
    assert_eq!(runs(&finished), 0, "the program was killed, not waited for");
    std::fs::write(&quick, b"").expect("make it quick");
    a.handle().restart(&rec.id).await.expect("restart");
    let done = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}\n{}", done.error, show(&log_of(&a, &rec.id)));
    assert_eq!((runs(&started), runs(&finished)), (2, 1), "ran again, to its end");
    assert_eq!(lines_starting(&log_of(&a, &rec.id), "sending"), 1, "not sent again");
    a.shutdown().await;
    b.shutdown().await;
}

/// A backup name made from what the sender sent (`#TRANSFERINFO#`) that is
/// not one plain name falls back to `NAME.bak` beside the target: the old
/// file never leaves its folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_name_from_the_senders_text_stays_in_the_folder() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("b").rules[0].backup_name = "#TRANSFERINFO#".into();
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let (src, dst) = (layout.out_dir("a"), layout.in_dir("b"));
    std::fs::write(dst.join("t.txt"), b"old\n").expect("existing target");
    std::fs::write(src.join("t.txt"), b"new\n").expect("source");
    let s = Submit { transfer_info: "../escaped".into(), ..with_mode("t.txt", Some(TargetMode::Backup)) };
    let rec = a.handle().submit(s).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    assert_eq!(std::fs::read(dst.join("t.txt")).expect("target"), b"new\n");
    assert_eq!(std::fs::read(dst.join("t.txt.bak")).expect("the fallback backup"), b"old\n");
    assert!(!dst.join("../escaped").exists(), "nothing left the folder");
    a.shutdown().await;
    b.shutdown().await;
}

/// A `transfer` task's request id is derived from its request's: one that
/// a partner took first (a push of its own under that id) is not taken for
/// the task's own. The task fails saying so, and the partner's record is
/// left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_task_does_not_take_a_request_id_a_partner_used_first() {
    use ferry::lifecycle::chained_id;
    use ferry::store::{RequestRecord, Role, Store};
    let mut layout = Layout::new(&["a", "b", "c"]);
    layout.config_mut("b").rules[0].receiver.post_tasks =
        vec![TaskConfig { partner: Some("c".into()), ..task("transfer") }];
    let a = layout.start("a").await;
    write_random(&layout.out_dir("a").join("relay.bin"), 1000);
    // Queued while b is down, so b's store can be written first.
    let first = a.handle().submit(submit(Direction::Push, "b", "relay.bin")).await.expect("submitted");
    let taken = chained_id(&first.id, Step::PostTask, 0);
    {
        let store = Store::open(&layout.config("b").data_dir.join("store")).expect("b's store");
        let theirs = RequestRecord {
            status: Status::Done,
            ..RequestRecord::new(taken.clone(), Role::Requested, "a", "default", Direction::Push, "other.bin")
        };
        store.insert(theirs, "a push of a's own").expect("inserted");
        store.flush_blocking().expect("flushed");
    }
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    let at_b = wait_final(&b.handle(), &first.id, WITHIN).await;
    assert_eq!(at_b.status, Status::InError, "{:?}", at_b.error);
    let error = at_b.error.expect("why");
    assert_eq!(error.code, ErrorCode::TaskFailed);
    assert!(error.message.contains("is taken by another request"), "{}", error.message);
    assert!(at_b.chained_to.is_empty(), "{:?}", at_b.chained_to);
    let theirs = b.handle().store().get(&taken).expect("read").expect("still there");
    assert_eq!((theirs.partner.as_str(), theirs.file_name.as_str(), theirs.chained_from), ("a", "other.bin", None));
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
