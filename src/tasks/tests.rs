//! Parsing and checking tasks, and the work of each file task.

use std::path::PathBuf;
use std::time::Duration;

use super::run::{confine, run, Effect, TaskEnv};
use super::*;

fn cfg(kind: &str) -> TaskConfig {
    TaskConfig { kind: kind.into(), ..TaskConfig::default() }
}

fn folders() -> Vec<PathBuf> {
    vec![PathBuf::from("/srv/out"), PathBuf::from("/srv/in/#PARTNER#"), PathBuf::from("/srv/archive")]
}

#[test]
fn every_type_parses_with_its_arguments() {
    let cases = [
        (TaskConfig { message: Some("got #FILENAME#".into()), ..cfg("log") }, TaskList::Post),
        (TaskConfig { to: Some("#FILENAME#.done".into()), ..cfg("rename") }, TaskList::Post),
        (TaskConfig { to: Some("/srv/archive/#DATE#/".into()), ..cfg("move") }, TaskList::Post),
        (TaskConfig { to: Some("/srv/archive/copy".into()), ..cfg("copy") }, TaskList::Post),
        (cfg("delete"), TaskList::Post),
        (TaskConfig { to: Some("/srv/archive/l".into()), symbolic: Some(true), ..cfg("link") }, TaskList::Post),
        (TaskConfig { mode: Some("640".into()), ..cfg("chmod") }, TaskList::Post),
        (TaskConfig { action: Some("write".into()), ..cfg("checksum") }, TaskList::Post),
        (
            TaskConfig { action: Some("check".into()), expect: Some("#TRANSFERINFO#".into()), ..cfg("checksum") },
            TaskList::Pre,
        ),
        (
            TaskConfig { program: Some("/bin/true".into()), args: Some(vec!["#FILEPATH#".into()]), ..cfg("exec") },
            TaskList::Post,
        ),
        (TaskConfig { partner: Some("c".into()), ..cfg("transfer") }, TaskList::Post),
        (TaskConfig { delay_ms: Some(1000), limit: Some(2), ..cfg("reschedule") }, TaskList::Error),
        (TaskConfig { at: Some("23:30".into()), ..cfg("reschedule") }, TaskList::Error),
        (TaskConfig { message: Some("set #ORIGINALFILENAME# in #FILEPATH#".into()), ..cfg("log") }, TaskList::Set),
        (
            TaskConfig { program: Some("/usr/bin/load".into()), args: Some(vec!["#FILEPATH#".into()]), ..cfg("exec") },
            TaskList::Set,
        ),
    ];
    for (c, list) in cases {
        c.parse(list, &folders()).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

#[test]
fn bad_tasks_are_refused_with_the_reason() {
    let cases = [
        (cfg("zip"), TaskList::Post, "unknown task type \"zip\""),
        (cfg("move"), TaskList::Post, "needs \"to\""),
        (TaskConfig { to: Some("/etc/passwd".into()), ..cfg("move") }, TaskList::Post, "outside the rule's folders"),
        (TaskConfig { to: Some("/srv/archive/../../etc/x".into()), ..cfg("copy") }, TaskList::Post, "\"..\""),
        (TaskConfig { to: Some("a/b".into()), ..cfg("rename") }, TaskList::Post, "not a path"),
        (TaskConfig { message: Some("#NOSUCH#".into()), ..cfg("log") }, TaskList::Post, "unknown variable #NOSUCH#"),
        (TaskConfig { message: Some("#ERRORMSG#".into()), ..cfg("log") }, TaskList::Post, "only in error_tasks"),
        (
            TaskConfig { message: Some("x".into()), to: Some("y".into()), ..cfg("log") },
            TaskList::Post,
            "takes no \"to\"",
        ),
        (TaskConfig { mode: Some("9z".into()), ..cfg("chmod") }, TaskList::Post, "not an octal mode"),
        (TaskConfig { action: Some("sign".into()), ..cfg("checksum") }, TaskList::Post, "neither"),
        (TaskConfig { delay_ms: Some(5), ..cfg("reschedule") }, TaskList::Post, "only among error_tasks"),
        (TaskConfig { to: Some("/srv/archive/".into()), ..cfg("move") }, TaskList::Set, "cannot run among set_tasks"),
        (TaskConfig { partner: Some("c".into()), ..cfg("transfer") }, TaskList::Set, "set_tasks may be log or exec"),
        (TaskConfig { message: Some("#ERRORCODE#".into()), ..cfg("log") }, TaskList::Set, "only in error_tasks"),
        (cfg("reschedule"), TaskList::Error, "either \"delay_ms\" or \"at\""),
        (TaskConfig { at: Some("25:00".into()), ..cfg("reschedule") }, TaskList::Error, "not a time of day"),
        (cfg("exec"), TaskList::Post, "needs \"program\""),
        (TaskConfig { program: Some("#FILEPATH#".into()), ..cfg("exec") }, TaskList::Post, "chosen by the partner"),
        (
            TaskConfig { program: Some("/opt/bin/#TRANSFERINFO#".into()), ..cfg("exec") },
            TaskList::Post,
            "program: #TRANSFERINFO# is chosen by the partner",
        ),
        (TaskConfig { timeout_ms: Some(0), ..cfg("delete") }, TaskList::Post, "timeout_ms"),
    ];
    for (c, list, want) in cases {
        let err = c.parse(list, &folders()).expect_err(want);
        assert!(err.contains(want), "{c:?}: {err}");
    }
}

fn env(dir: &std::path::Path, file: &str) -> TaskEnv {
    let mut vars = Vars::default();
    vars.set("FILENAME", file);
    vars.set("DATE", "20261129");
    TaskEnv {
        file: dir.join("in").join(file),
        folders: vec![dir.join("in"), dir.join("archive")],
        vars,
        timeout: Duration::from_secs(10),
        now_ms: 1_000,
        scratch: ".ferry-task-test".into(),
    }
}

fn setup(file: &str, body: &[u8]) -> (tempfile::TempDir, TaskEnv) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("in")).expect("in");
    std::fs::create_dir_all(dir.path().join("archive")).expect("archive");
    let e = env(dir.path(), file);
    std::fs::write(&e.file, body).expect("write");
    (dir, e)
}

fn task(c: TaskConfig) -> Task {
    c.parse(TaskList::Post, &[PathBuf::from("/")]).expect("parses")
}

#[tokio::test]
async fn move_twice_is_done_once_and_reports_the_new_place() {
    let (dir, e) = setup("f.csv", b"data");
    let t = task(TaskConfig { to: Some(format!("{}/archive/#DATE#/", dir.path().display())), ..cfg("move") });
    let dest = dir.path().join("archive/20261129/f.csv");
    let first = run(&t, &e).await.expect("moved");
    assert_eq!(first.effect, Effect::FileMoved(dest.clone()));
    assert_eq!(std::fs::read(&dest).expect("moved file"), b"data");
    let again = run(&t, &e).await.expect("a second run after a crash is done");
    assert_eq!(again.effect, Effect::FileMoved(dest));
    assert!(!e.file.exists());
}

#[tokio::test]
async fn copy_rename_delete_link_chmod_do_their_work() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, e) = setup("f.csv", b"data");
    let copy = dir.path().join("archive/f.copy");
    run(&task(TaskConfig { to: Some(copy.display().to_string()), ..cfg("copy") }), &e).await.expect("copy");
    run(&task(TaskConfig { to: Some(copy.display().to_string()), ..cfg("copy") }), &e).await.expect("copy again");
    assert_eq!(std::fs::read(&copy).expect("copy"), b"data");
    let link = dir.path().join("archive/f.link");
    let l = task(TaskConfig { to: Some(link.display().to_string()), ..cfg("link") });
    run(&l, &e).await.expect("link");
    run(&l, &e).await.expect("the same link again is done");
    assert_eq!(std::fs::read(&link).expect("hard link"), b"data");
    run(&task(TaskConfig { mode: Some("600".into()), ..cfg("chmod") }), &e).await.expect("chmod");
    assert_eq!(std::fs::metadata(&e.file).expect("meta").permissions().mode() & 0o7777, 0o600);
    let renamed =
        run(&task(TaskConfig { to: Some("#FILENAME#.done".into()), ..cfg("rename") }), &e).await.expect("rename");
    assert_eq!(renamed.effect, Effect::FileMoved(dir.path().join("in/f.csv.done")));
    let gone = TaskEnv { file: dir.path().join("in/f.csv.done"), ..e.clone() };
    run(&task(cfg("delete")), &gone).await.expect("delete");
    run(&task(cfg("delete")), &gone).await.expect("delete of a deleted file is done");
    assert!(!gone.file.exists());
}

#[tokio::test]
async fn a_path_made_by_substitution_cannot_leave_the_rules_folders() {
    let (dir, mut e) = setup("f.csv", b"data");
    e.vars.set("FILENAME", "../../escape");
    let t = task(TaskConfig { to: Some(format!("{}/archive/#FILENAME#", dir.path().display())), ..cfg("copy") });
    let err = run(&t, &e).await.expect_err("refused");
    assert!(err.contains("not a plain absolute path"), "{err}");
    std::os::unix::fs::symlink("/tmp", dir.path().join("archive/out")).expect("symlink");
    let t = task(TaskConfig { to: Some(format!("{}/archive/out/x", dir.path().display())), ..cfg("copy") });
    let err = run(&t, &e).await.expect_err("refused");
    assert!(err.contains("through a symbolic link"), "{err}");
    let err = confine(std::path::Path::new("/etc/x"), &e.folders).expect_err("outside");
    assert!(err.contains("outside the folders"), "{err}");
    // No folder is made through a link before it is refused.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("archive/away")).expect("symlink");
    let t = task(TaskConfig { to: Some(format!("{}/archive/away/made/x", dir.path().display())), ..cfg("copy") });
    let err = run(&t, &e).await.expect_err("refused");
    assert!(err.contains("through a symbolic link"), "{err}");
    assert!(!elsewhere.path().join("made").exists(), "a folder was made outside the rule's folders");
}

#[tokio::test]
async fn checksum_writes_a_b3sum_sidecar_and_checks_a_given_digest() {
    let (_dir, mut e) = setup("f.csv", b"hello");
    let digest = crate::protocol::Digest::of(b"hello").to_string();
    run(&task(TaskConfig { action: Some("write".into()), ..cfg("checksum") }), &e).await.expect("write");
    let sidecar = std::fs::read_to_string(e.file.with_file_name("f.csv.b3")).expect("sidecar");
    assert_eq!(sidecar, format!("{digest}  f.csv\n"));
    e.vars.set("TRANSFERINFO", sidecar.clone());
    let check =
        task(TaskConfig { action: Some("check".into()), expect: Some("#TRANSFERINFO#".into()), ..cfg("checksum") });
    run(&check, &e).await.expect("matches");
    e.vars.set("TRANSFERINFO", "0".repeat(64));
    let err = run(&check, &e).await.expect_err("differs");
    assert!(err.contains("expected 0000"), "{err}");
}

#[tokio::test]
async fn exec_passes_a_hostile_name_as_one_argument_and_runs_nothing_else() {
    let (dir, mut e) = setup("f.csv", b"x");
    let hostile = "a b'\"$(touch pwned);touch pwned2\n`touch pwned3`";
    e.vars.set("FILENAME", hostile);
    let t = task(TaskConfig {
        program: Some("/bin/sh".into()),
        args: Some(vec!["-c".into(), "printf '%s|' \"$#\" \"$1\"".into(), "sh".into(), "#FILENAME#".into()]),
        ..cfg("exec")
    });
    let out = run(&t, &e).await.expect("ran");
    assert!(out.detail.contains(&format!("1|{hostile}|")), "{}", out.detail);
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(!dir.path().join("in").join(f).exists(), "{f} was created: a name ran as a command");
    }
}

#[tokio::test]
async fn exec_refuses_an_option_that_only_a_variable_made_unless_after_a_double_dash() {
    let (_dir, mut e) = setup("f.csv", b"x");
    e.vars.set("FILENAME", "--version");
    let echo = |args: &[&str]| {
        task(TaskConfig {
            program: Some("/bin/echo".into()),
            args: Some(args.iter().map(|a| a.to_string()).collect()),
            ..cfg("exec")
        })
    };
    // `echo --version` would print echo's version, not the name.
    let why = run(&echo(&["-n", "#FILENAME#"]), &e).await.expect_err("refused");
    assert!(why.contains("argument 2 of /bin/echo would start with '-'") && why.contains("#FILENAME#"), "{why}");
    // The rule's own options, and anything after its "--", are its choice.
    let out = run(&echo(&["-n", "--", "#FILENAME#"]), &e).await.expect("after --");
    assert!(out.detail.contains("--version"), "{}", out.detail);
    let out = run(&echo(&["-n", "name=#FILENAME#"]), &e).await.expect("not at the start");
    assert!(out.detail.contains("name=--version"), "{}", out.detail);
}

#[tokio::test]
async fn exec_fails_on_a_nonzero_status_and_at_its_timeout_with_its_output() {
    let (_dir, mut e) = setup("f.csv", b"x");
    let t = task(TaskConfig {
        program: Some("/bin/sh".into()),
        args: Some(vec!["-c".into(), "echo told; echo bad >&2; exit 3".into()]),
        ..cfg("exec")
    });
    let err = run(&t, &e).await.expect_err("fails");
    assert!(
        err.contains("exited with status 3") && err.contains("stdout: told") && err.contains("stderr: bad"),
        "{err}"
    );
    e.timeout = Duration::from_millis(300);
    let slow = task(TaskConfig {
        program: Some("/bin/sh".into()),
        args: Some(vec!["-c".into(), "sleep 30 & wait".into()]),
        ..cfg("exec")
    });
    let started = std::time::Instant::now();
    let err = run(&slow, &e).await.expect_err("timed out");
    assert!(err.contains("ran past its timeout of 300 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "the group was killed, not waited for");
}

#[tokio::test]
async fn exec_keeps_only_the_start_of_a_long_output() {
    let (_dir, e) = setup("f.csv", b"x");
    let t = task(TaskConfig {
        program: Some("/bin/sh".into()),
        args: Some(vec!["-c".into(), "head -c 100000 /dev/zero | tr '\\0' a".into()]),
        ..cfg("exec")
    });
    let out = run(&t, &e).await.expect("ran");
    assert!(out.detail.contains("(100000 bytes in all)"), "{}", &out.detail[out.detail.len() - 60..]);
    assert!(out.detail.len() < run::OUTPUT_KEPT + 200);
}

#[tokio::test]
async fn reschedule_picks_the_next_time_of_day() {
    let (_dir, mut e) = setup("f.csv", b"x");
    e.now_ms = 86_400_000 * 3 + 10 * 3_600_000; // 10:00 UTC
    let e = &e;
    let at = |when| async move {
        match run(&Task::Reschedule { when, limit: 1 }, e).await.expect("ran").effect {
            Effect::Reschedule { at, .. } => at,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(at(When::DailyAt(11 * 60)).await, 86_400_000 * 3 + 11 * 3_600_000);
    assert_eq!(at(When::DailyAt(9 * 60)).await, 86_400_000 * 4 + 9 * 3_600_000);
    assert_eq!(at(When::After(Duration::from_secs(5))).await, 86_400_000 * 3 + 10 * 3_600_000 + 5_000);
}

#[tokio::test]
async fn an_abandoned_exec_takes_its_whole_process_group_with_it() {
    let (dir, e) = setup("f.csv", b"x");
    let pidfile = dir.path().join("pid");
    let t = task(TaskConfig {
        program: Some("/bin/sh".into()),
        args: Some(vec![
            "-c".into(),
            "sleep 30 & echo $! > \"$1\"; wait".into(),
            "sh".into(),
            pidfile.display().to_string(),
        ]),
        ..cfg("exec")
    });
    // The caller gives up on the task (an operator's stop, a shutdown).
    let abandoned = tokio::time::timeout(Duration::from_millis(500), run(&t, &e)).await;
    assert!(abandoned.is_err(), "the task was still running");
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("the grandchild started").trim().parse().expect("pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        // A killed child is a zombie until its parent (gone too) is reaped by
        // init; /proc says so.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the grandchild {pid} outlived the abandoned task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_copy_killed_mid_write_leaves_nothing_the_next_run_does_not_clear() {
    let (dir, e) = setup("f.csv", b"all of it");
    // What a run killed mid-write left: its scratch file, half written.
    let archive = dir.path().join("archive");
    std::fs::write(archive.join(&e.scratch), b"all").expect("leftover");
    let t = task(TaskConfig { to: Some(format!("{}/", archive.display())), ..cfg("copy") });
    run(&t, &e).await.expect("copied");
    assert_eq!(std::fs::read(archive.join("f.csv")).expect("copy"), b"all of it");
    let names: Vec<String> = std::fs::read_dir(&archive)
        .expect("archive")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names, vec!["f.csv".to_string()], "no scratch file left");
}
