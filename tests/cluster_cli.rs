//! `ferry cluster up|status|down` with the real binary: a copy of
//! `cluster/local-3.toml` moved to free ports and a temporary state folder,
//! a push from `a` to `b` through `a`'s API, then `down`, and an `up` after
//! it that keeps the certificates and the data.
//!
//! A [`DownGuard`] runs `ferry cluster down` when the test ends, passed or
//! failed, and SIGKILLs any node it leaves behind, so no process outlives
//! the test. Every command runs with a time limit.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

const NODES: [&str; 3] = ["a", "b", "c"];

/// Bound on one `ferry` command (`up` waits at most 15 s for the APIs,
/// `down` at most 15 s for the processes).
const RUN_WITHIN: Duration = Duration::from_secs(90);

/// What a finished command printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self, args: &[&str]) -> String {
        format!("ferry {args:?} ({}):\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `ferry ARGS` in `cwd`, killed (and the test failed) after [`RUN_WITHIN`].
/// Output goes to files, not pipes, so nothing can hold the command open.
fn ferry(cwd: &Path, args: &[&str]) -> Run {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("FERRY_API")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run ferry");
    let deadline = Instant::now() + RUN_WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ferry {args:?} did not end within {RUN_WITHIN:?}; stdout:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Run { status, stdout: read(&out), stderr: read(&err) }
}

fn ferry_ok(cwd: &Path, args: &[&str]) -> Run {
    let run = ferry(cwd, args);
    assert!(run.status.success(), "{}", run.describe(args));
    run
}

/// A base port with `n` consecutive free ports on loopback (UDP or TCP): the
/// OS picks a free port, then the ones after it are checked by binding them.
fn free_range(n: u16, udp: bool) -> u16 {
    for _ in 0..200 {
        let base = if udp {
            UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("udp port").port()
        } else {
            TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("tcp port").port()
        };
        if u32::from(base) + u32::from(n) > 65_535 {
            continue;
        }
        let all_free = if udp {
            (0..n).map(|i| UdpSocket::bind(("127.0.0.1", base + i))).collect::<Result<Vec<_>, _>>().is_ok()
        } else {
            (0..n).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect::<Result<Vec<_>, _>>().is_ok()
        };
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found on 127.0.0.1");
}

/// Writes a copy of `cluster/local-3.toml` with free ports and the state
/// folder `dir/state`; returns the file and the API base port.
fn cluster_file(dir: &Path) -> (PathBuf, u16) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/local-3.toml");
    let mut t: toml::Table =
        toml::from_str(&std::fs::read_to_string(&shipped).expect("read local-3.toml")).expect("local-3.toml is TOML");
    let n = u16::try_from(NODES.len()).expect("few nodes");
    let (quic, api) = (free_range(n, true), free_range(n, false));
    t.insert("quic_base_port".into(), i64::from(quic).into());
    t.insert("api_base_port".into(), i64::from(api).into());
    t.insert("state_dir".into(), dir.join("state").display().to_string().into());
    let file = dir.join("test-cluster.toml");
    std::fs::write(&file, toml::to_string(&t).expect("toml")).expect("write cluster file");
    (file, api)
}

/// Whether `pid` is a live process (an exited one that nobody reaped yet,
/// a zombie, counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// The pids in the nodes' pid files (absent files are skipped).
fn pids(state: &Path) -> Vec<(String, i32)> {
    NODES
        .iter()
        .filter_map(|id| {
            let text = std::fs::read_to_string(state.join(id).join("node.pid")).ok()?;
            Some((id.to_string(), text.trim().parse().ok()?))
        })
        .collect()
}

/// Brings the cluster down when dropped, whatever happened, and SIGKILLs
/// any node process still running after that.
struct DownGuard {
    cwd: PathBuf,
    file: PathBuf,
    state: PathBuf,
    seen: Vec<i32>,
}

impl DownGuard {
    /// Remembers the nodes now running, to be sure they end.
    fn note_pids(&mut self) {
        self.seen.extend(pids(&self.state).into_iter().map(|(_, pid)| pid));
    }
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        self.note_pids();
        let file = self.file.display().to_string();
        // Not `ferry()`: a panic inside drop while panicking would abort.
        let down = Command::new(BIN)
            .args(["cluster", "down", &file])
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = down {
            let deadline = Instant::now() + RUN_WITHIN;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in &self.seen {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // Only our own node: its command line names a config in our state folder.
            if alive(*pid) && String::from_utf8_lossy(&cmdline).contains(&*self.state.to_string_lossy()) {
                // SAFETY: kill(2) on a pid checked just above to be one of this test's nodes.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn cluster_up_status_push_down_then_up_again_on_the_same_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwd = tmp.path().to_owned();
    let (file, api_base) = cluster_file(&cwd);
    let state = cwd.join("state");
    let f = file.display().to_string();
    let mut guard = DownGuard { cwd: cwd.clone(), file: file.clone(), state: state.clone(), seen: vec![] };

    // up: every node runs as its own process, with a pid file.
    let up = ferry_ok(&cwd, &["cluster", "up", &f]);
    guard.note_pids();
    assert!(up.stdout.contains("cluster local-3 is up"), "{}", up.stdout);
    let first = pids(&state);
    assert_eq!(first.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), NODES, "a pid file per node");
    for (id, pid) in &first {
        assert!(alive(*pid), "node {id} (pid {pid}) is not running after up:\n{}", up.stdout);
        assert!(up.stdout.contains(&format!("https://127.0.0.1:{}", api_base + index(id))), "{}", up.stdout);
    }
    assert!(state.join("certs/ca.pem").is_file() && state.join("b/node.toml").is_file());

    // A second up starts nothing: every node runs already.
    let again = ferry_ok(&cwd, &["cluster", "up", &f]);
    assert!(again.stdout.contains("already running"), "{}", again.stdout);
    assert_eq!(pids(&state), first);

    // status: every node up.
    let status = ferry_ok(&cwd, &["cluster", "status", &f]);
    assert!(status.stdout.contains("3 of 3 nodes up"), "{}", status.stdout);

    // A push from a to b through a's API arrives identical.
    let data: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(state.join("a/out/f.bin"), &data).expect("write source");
    let api_a = format!("https://127.0.0.1:{api_base}");
    ferry_ok(&cwd, &["send", "--api", &api_a, "b", "default", "f.bin", "--wait"]);
    assert!(std::fs::read(state.join("b/in/f.bin")).expect("delivered file") == data, "b/in/f.bin differs");

    // down: every process gone, pid files removed, and status now fails.
    let ca = std::fs::read(state.join("certs/ca.pem")).expect("ca.pem");
    let down = ferry_ok(&cwd, &["cluster", "down", &f]);
    for (id, pid) in &first {
        assert!(down.stdout.contains(&format!("{id}: stopped (pid {pid}")), "{}", down.stdout);
        assert!(!alive(*pid), "node {id} (pid {pid}) still runs after down");
        assert!(!state.join(id).join("node.pid").exists(), "{id}'s pid file is left");
    }
    let status = ferry(&cwd, &["cluster", "status", &f]);
    assert!(!status.status.success(), "{}", status.describe(&["cluster", "status", &f]));
    assert!(status.stdout.contains("0 of 3 nodes up"), "{}", status.stdout);
    let down_again = ferry_ok(&cwd, &["cluster", "down", &f]);
    assert!(down_again.stdout.contains("nothing was running"), "{}", down_again.stdout);

    // up after down reuses the state: same CA, same stores (a still knows the push).
    let up = ferry_ok(&cwd, &["cluster", "up", &f]);
    guard.note_pids();
    assert!(!up.stdout.contains("created the cluster CA"), "{}", up.stdout);
    assert_eq!(std::fs::read(state.join("certs/ca.pem")).expect("ca.pem"), ca, "the CA was replaced");
    let listed = ferry_ok(&cwd, &["status", "--api", &api_a]);
    assert!(listed.stdout.contains("f.bin") && listed.stdout.contains("Done"), "{}", listed.stdout);
    ferry_ok(&cwd, &["cluster", "status", &f]);
    let second = pids(&state);
    ferry_ok(&cwd, &["cluster", "down", &f]);
    for (id, pid) in &second {
        assert!(!alive(*pid), "node {id} (pid {pid}) still runs after the second down");
    }
    drop(guard);
}

#[test]
fn cluster_commands_act_on_the_nodes_named_and_down_stops_a_node_started_by_hand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwd = tmp.path().to_owned();
    let (file, _) = cluster_file(&cwd);
    let state = cwd.join("state");
    let f = file.display().to_string();
    let mut guard = DownGuard { cwd: cwd.clone(), file: file.clone(), state: state.clone(), seen: vec![] };

    // up a: only a runs; status of a passes, of the whole cluster fails.
    ferry_ok(&cwd, &["cluster", "up", &f, "a"]);
    guard.note_pids();
    assert_eq!(pids(&state).iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a"]);
    ferry_ok(&cwd, &["cluster", "status", &f, "a"]);
    assert!(!ferry(&cwd, &["cluster", "status", &f]).status.success(), "b and c are down");
    let unknown = ferry(&cwd, &["cluster", "up", &f, "zz"]);
    assert!(!unknown.status.success() && unknown.stderr.contains("has no node \"zz\""), "{}", unknown.stderr);

    // up: starts b and c, leaves a as it was.
    let a_pid = pids(&state)[0].1;
    let up = ferry_ok(&cwd, &["cluster", "up", &f]);
    guard.note_pids();
    assert!(up.stdout.contains(&format!("already running: a (pid {a_pid})")), "{}", up.stdout);
    assert_eq!(pids(&state).len(), 3);
    assert_eq!(pids(&state)[0], ("a".to_string(), a_pid));

    // down b: only b stops.
    let b_pid = pids(&state)[1].1;
    ferry_ok(&cwd, &["cluster", "down", &f, "b"]);
    assert!(!alive(b_pid) && alive(a_pid), "only b stopped");

    // b started by hand with its node.toml (a relative path): down stops it too.
    let log = std::fs::File::create(cwd.join("b-by-hand.log")).expect("log");
    let mut by_hand = Command::new(BIN)
        .args(["node", "--config", "state/b/node.toml"])
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start b by hand");
    let by_hand_pid = i32::try_from(by_hand.id()).expect("pid");
    guard.seen.push(by_hand_pid);
    let deadline = Instant::now() + RUN_WITHIN;
    while !ferry(&cwd, &["cluster", "status", &f, "b"]).status.success() {
        assert!(Instant::now() < deadline, "b started by hand did not answer");
        std::thread::sleep(Duration::from_millis(200));
    }
    let down = ferry_ok(&cwd, &["cluster", "down", &f, "b"]);
    assert!(down.stdout.contains("started by hand"), "{}", down.stdout);
    let _ = by_hand.wait();
    assert!(!alive(by_hand_pid));
    ferry_ok(&cwd, &["cluster", "down", &f]);
    drop(guard);
}

fn index(id: &str) -> u16 {
    u16::try_from(NODES.iter().position(|n| *n == id).expect("node")).expect("small")
}
