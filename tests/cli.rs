//! The `ferry` binary, run as separate processes: `certs init`, two `node`
//! processes on loopback driven by `send`, `get`, `status` and `log`, and a
//! node stopped by SIGTERM in the middle of a transfer, then restarted.
//!
//! Every node process is owned by a [`NodeProc`], which kills and reaps it
//! when dropped, so a failing test leaves no process behind.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::procs::{run_ferry, two_nodes, NodeProc};
use common::work_files;
use ferry::api::{ApiClient, ClientError, TransferView};
use ferry::protocol::{Digest, RequestId};
use ferry::store::{Role, Status, Step};

/// Bound on a transfer.
const TRANSFER_WITHIN: Duration = Duration::from_secs(300);

/// Runs `ferry ARGS` (bounded) and returns its output.
async fn ferry(args: &[&str]) -> Output {
    run_ferry(args, TRANSFER_WITHIN).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `ferry ARGS`, asserting success; returns stdout.
async fn ferry_ok(args: &[&str]) -> String {
    let out = ferry(args).await;
    assert!(
        out.status.success(),
        "ferry {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Writes `size` random bytes in chunks; returns their BLAKE3.
fn write_random_streamed(path: &Path, size: u64) -> Digest {
    use rand::RngCore;
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create source"));
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 8 << 20];
    let mut rng = rand::rng();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill_bytes(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        f.write_all(&chunk[..n]).expect("write source");
        left -= n as u64;
    }
    f.into_inner().expect("flush source").sync_all().expect("sync source");
    Digest(*hasher.finalize().as_bytes())
}

/// BLAKE3 of a file, read in chunks.
fn digest_streamed(path: &Path) -> Digest {
    let mut hasher = blake3::Hasher::new();
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    hasher.update_reader(f).expect("read file");
    Digest(*hasher.finalize().as_bytes())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn certs_init_writes_a_ca_and_node_keys_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let d = certs.to_str().expect("UTF-8 path");
    let stdout = ferry_ok(&["certs", "init", "--dir", d, "--nodes", "a,b"]).await;
    assert!(stdout.contains("ca.pem") && stdout.contains("a.pem") && stdout.contains("b.key"), "{stdout}");
    for f in ["ca.pem", "a.pem", "b.pem"] {
        let pem = std::fs::read_to_string(certs.join(f)).expect(f);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{f}: {pem}");
        assert_eq!(mode(&certs.join(f)), 0o644, "{f}");
    }
    for f in ["ca.key", "a.key", "b.key"] {
        let pem = std::fs::read_to_string(certs.join(f)).expect(f);
        assert!(pem.contains("PRIVATE KEY-----"), "{f}");
        assert_eq!(mode(&certs.join(f)), 0o600, "{f} must be private");
    }
    let ca_before = std::fs::read(certs.join("ca.pem")).expect("ca.pem");
    let a_key_before = std::fs::read(certs.join("a.key")).expect("a.key");

    let again = ferry(&["certs", "init", "--dir", d, "--nodes", "a,b"]).await;
    assert!(!again.status.success(), "a second init must fail");
    assert_eq!(again.status.code(), Some(1));
    let err = text(&again.stderr);
    assert!(err.starts_with("error: ") && err.contains("already exists") && err.contains("ca.pem"), "{err}");
    assert_eq!(std::fs::read(certs.join("ca.pem")).expect("ca.pem"), ca_before, "the CA was not replaced");
    assert_eq!(std::fs::read(certs.join("a.key")).expect("a.key"), a_key_before, "a's key was not replaced");

    // One more node from the same CA; a second time it is refused.
    let stdout = ferry_ok(&["certs", "add", "--dir", d, "c"]).await;
    assert!(stdout.contains("c.pem"), "{stdout}");
    assert_eq!(mode(&certs.join("c.key")), 0o600);
    let again = ferry(&["certs", "add", "--dir", d, "c"]).await;
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_get_status_and_log_drive_two_node_processes() {
    let (_dir, layout, configs) = two_nodes();
    let mut a = NodeProc::start(&layout, "a", &configs[0], 1);
    let mut b = NodeProc::start(&layout, "b", &configs[1], 1);
    let api_a = a.wait_ready().await;
    let api_b = b.wait_ready().await;
    let at_a = a.api.clone();

    // send: a pushes to b.
    let pushed = write_random_streamed(&layout.out_dir("a").join("pushed.bin"), 3_000_001);
    let out = ferry_ok(&["send", "--api", &at_a, "b", "default", "pushed.bin", "--wait", "--job-id", "j-1"]).await;
    let lines: Vec<&str> = out.lines().collect();
    let push_id = lines.first().copied().unwrap_or_default().to_owned();
    assert!(RequestId::parse(&push_id).is_some(), "send prints the id first: {out}");
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.contains("Done") && last.contains(&pushed.to_hex()), "send --wait ends with a Done summary: {out}");
    assert_eq!(digest_streamed(&layout.in_dir("b").join("pushed.bin")), pushed, "pushed file differs");

    // get: a pulls from b.
    let pulled = write_random_streamed(&layout.out_dir("b").join("pulled.bin"), 2_500_000);
    let out = ferry_ok(&["get", "--api", &at_a, "b", "default", "pulled.bin", "--wait"]).await;
    let pull_id = out.lines().next().unwrap_or_default().to_owned();
    assert!(RequestId::parse(&pull_id).is_some(), "get prints the id first: {out}");
    assert!(out.lines().last().is_some_and(|l| l.contains("Done")), "{out}");
    assert_eq!(digest_streamed(&layout.in_dir("a").join("pulled.bin")), pulled, "pulled file differs");

    // The nodes agree with what the commands reported.
    for id in [&push_id, &pull_id] {
        let v = api_a.get(id).await.expect("known on a");
        assert_eq!((v.status, v.role), (Status::Done, Role::Requester), "{v:?}");
        let v = api_b.get(id).await.expect("known on b");
        assert_eq!((v.status, v.role), (Status::Done, Role::Requested), "{v:?}");
    }

    // status ID: the detail of one transfer.
    let detail = ferry_ok(&["status", "--api", &at_a, &push_id]).await;
    let field = |name: &str| {
        detail
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name:?} line in:\n{detail}"))
            .to_owned()
    };
    assert!(field("id").ends_with(&push_id), "{detail}");
    assert!(field("status").contains("Done") && field("status").contains("AllDone"), "{detail}");
    assert!(field("blake3").ends_with(&pushed.to_hex()), "{detail}");
    assert!(field("job id").ends_with("j-1"), "{detail}");
    let on_b = ferry_ok(&["status", "--api", &b.api, &push_id]).await;
    assert!(on_b.contains("Requested") && on_b.contains("Done"), "b's view of the push:\n{on_b}");

    // status --status done: both, as a table.
    let table = ferry_ok(&["status", "--api", &at_a, "--status", "done"]).await;
    assert!(table.contains(&push_id) && table.contains(&pull_id), "{table}");

    // log ID: one printed line per job log line, submission first, Done last.
    let log = ferry_ok(&["log", "--api", &at_a, &push_id]).await;
    let printed: Vec<&str> = log.lines().collect();
    let stored = api_a.log(&push_id).await.expect("job log");
    assert_eq!(printed.len(), stored.len(), "one line per entry:\n{log}");
    for (line, entry) in printed.iter().zip(&stored) {
        assert!(line.ends_with(&entry.message), "{line:?} prints {:?}", entry.message);
        assert!(line.contains(&format!("{:?}", entry.status)), "{line:?} shows status {:?}", entry.status);
    }
    assert!(printed.first().is_some_and(|l| l.contains("submitted")), "{log}");
    assert!(printed.last().is_some_and(|l| l.contains("Done") && l.contains("AllDone")), "{log}");

    // A missing source file: refused, non-zero, the reason on stderr.
    let out = ferry(&["send", "--api", &at_a, "b", "default", "nonexistent-file", "--wait"]).await;
    assert!(!out.status.success(), "sending a missing file must fail");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("nonexistent-file") && err.contains("file_not_found"), "stderr: {err}");
    assert!(text(&out.stdout).is_empty(), "no id printed for a refused transfer: {}", text(&out.stdout));
    assert_eq!(api_a.list(None).await.expect("list").len(), 2, "the refusal recorded nothing");

    // A pull the partner cannot serve: accepted, then it fails; --wait says so and exits non-zero.
    let out = ferry(&["get", "--api", &at_a, "b", "default", "not-on-b", "--wait"]).await;
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    let failed_id = text(&out.stdout).lines().next().unwrap_or_default().to_owned();
    assert!(RequestId::parse(&failed_id).is_some(), "the accepted pull's id is printed: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("ended InError") && err.contains("FileNotFound"), "stderr: {err}");
    assert_eq!(api_a.get(&failed_id).await.expect("known on a").status, Status::InError);
    assert!(!layout.in_dir("a").join("not-on-b").exists());

    // A node that is not there: non-zero, a clear message.
    let out = ferry(&["status", "--api", "http://127.0.0.1:1", &push_id]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot reach node API"), "{}", text(&out.stderr));

    assert!(a.is_running(), "node a still runs");
    assert!(b.is_running(), "node b still runs");
}

/// Polls (bounded) until `check` accepts the transfer's view on `api`.
async fn poll_view(
    api: &ApiClient,
    id: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&TransferView) -> bool,
) -> TransferView {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        match api.get(id).await {
            Ok(v) if check(&v) => return v,
            Ok(v) => last = Some(v),
            Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => panic!("{what}: GET {id} on {}: {e}", api.base()),
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; last view on {}: {last:?}", api.base());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transfer_exits_cleanly_and_the_restart_resumes_it() {
    let (_dir, layout, configs) = two_nodes();
    let mut a = NodeProc::start(&layout, "a", &configs[0], 1);
    let mut b = NodeProc::start(&layout, "b", &configs[1], 1);
    let api_a = a.wait_ready().await;
    let api_b = b.wait_ready().await;

    // A push big enough to be caught in the middle; should this machine move
    // it too fast to see it under way, the next attempt uses a bigger file.
    let mut caught = None;
    for (attempt, size) in [1u64 << 30, 4 << 30].into_iter().enumerate() {
        let name = format!("big-{attempt}.bin");
        let digest = write_random_streamed(&layout.out_dir("a").join(&name), size);
        let out = ferry_ok(&["send", "--api", &a.api, "b", "default", &name]).await;
        let id = out.trim().to_owned();
        assert!(RequestId::parse(&id).is_some(), "send prints the id: {out}");
        let v = poll_view(&api_a, &id, TRANSFER_WITHIN, "running or done", |v| {
            v.is_final() || (v.status == Status::Running && v.transferred > 0 && v.transferred <= size / 4 * 3)
        })
        .await;
        if v.status == Status::Running {
            caught = Some((name, id, size, digest, v));
            break;
        }
        assert_eq!(v.status, Status::Done, "{name} ended before it could be interrupted: {v:?}");
        eprintln!("{name} ({size} bytes) ended before it was seen under way; trying a bigger file");
        std::fs::remove_file(layout.out_dir("a").join(&name)).expect("remove source");
        std::fs::remove_file(layout.in_dir("b").join(&name)).expect("remove delivered");
    }
    let (name, id, size, digest, under_way) =
        caught.expect("a push seen under way (1 GiB and 4 GiB both ended too fast)");

    eprintln!("{name}: SIGTERM to node a with {} of {size} bytes confirmed", under_way.transferred);
    let status = a.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "node a exits 0 on SIGTERM, got {status}:\n{}", a.log_text());
    let stopped_log = a.log_text();
    assert!(stopped_log.contains("signal received") && stopped_log.contains("node stopped"), "{stopped_log}");

    // The partner records the interruption too, and keeps the partial work file.
    let v_b = poll_view(&api_b, &id, Duration::from_secs(30), "b records the interruption", |v| {
        v.status == Status::Interrupted
    })
    .await;
    assert!(v_b.transferred < size, "{v_b:?}");
    assert_eq!(work_files(&layout.in_dir("b")).len(), 1, "the partial file is kept for the resume");
    assert!(!layout.in_dir("b").join(&name).exists(), "nothing delivered yet");

    let mut a2 = NodeProc::start(&layout, "a", &configs[0], 2);
    let api_a = a2.wait_ready().await;
    let done = poll_view(&api_a, &id, TRANSFER_WITHIN, "the resumed push ends", |v| v.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(done.transferred, size);
    assert_eq!(done.hash.as_deref(), Some(digest.to_hex().as_str()));

    // The job log, through the restarted node's API: the shutdown recorded
    // the request Interrupted, the restart resumed it, then it ended Done.
    let log = api_a.log(&id).await.expect("job log");
    let lines = log.iter().map(|l| format!("{:?}/{:?} {}", l.status, l.step, l.message)).collect::<Vec<_>>().join("\n");
    let interrupted = log
        .iter()
        .position(|l| l.status == Status::Interrupted)
        .unwrap_or_else(|| panic!("no Interrupted line recorded before the node exited:\n{lines}"));
    assert!(log[interrupted].message.contains("Shutdown"), "interrupted by the shutdown:\n{lines}");
    let resumed = log
        .iter()
        .position(|l| l.message.contains("resumed at node start-up"))
        .unwrap_or_else(|| panic!("no resume line:\n{lines}"));
    assert!(interrupted < resumed, "Interrupted was recorded before the restart:\n{lines}");
    assert!(log[..resumed].iter().all(|l| l.status != Status::Done), "nothing was Done before the restart:\n{lines}");
    eprintln!("job log of {id} on a:\n{lines}");
    let last = log.last().expect("lines");
    assert_eq!((last.status, last.step), (Status::Done, Step::AllDone), "{lines}");

    let on_b = poll_view(&api_b, &id, Duration::from_secs(30), "b records Done", |v| v.status == Status::Done).await;
    assert_eq!(on_b.hash, done.hash);
    assert_eq!(digest_streamed(&layout.in_dir("b").join(&name)), digest, "delivered file differs from the source");
    assert!(work_files(&layout.in_dir("b")).is_empty(), "no work file left after the resume");

    for mut p in [a2, b] {
        let status = p.terminate(Duration::from_secs(30)).await;
        assert!(status.success(), "node {} exits 0 on SIGTERM when idle, got {status}", p.id);
    }
}

/// Polls (bounded) until `check` holds for the node's log.
async fn wait_log(node: &NodeProc, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = node.log_text();
        if check(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "node {} never logged {what}:\n{log}", node.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_renew_and_sighup_reload_a_running_node_and_read_commands_print_json() {
    let (_dir, layout, configs) = two_nodes();
    let mut a = NodeProc::start(&layout, "a", &configs[0], 1);
    a.wait_ready().await;

    // SIGHUP reloads (here: the same files) and the node keeps running.
    // SAFETY: signalling our own child, whose pid we hold.
    assert_eq!(unsafe { libc::kill(a.pid(), libc::SIGHUP) }, 0);
    wait_log(&a, "a SIGHUP reload", |log| log.contains("TLS identity reloaded") && log.contains("SIGHUP")).await;
    assert!(a.is_running(), "SIGHUP must not stop the node");

    // `certs renew` replaces the files; the node picks them up on its own.
    let certs = a.config.tls.ca.parent().expect("certs folder").to_str().expect("utf-8").to_owned();
    let out = ferry_ok(&["certs", "renew", "--dir", &certs, "a", "--days", "40"]).await;
    assert!(out.contains("renewed node a") && out.contains("serial"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let json = ferry_ok(&["partners", "--api", &a.api, "--json"]).await;
        let view: ferry::model::PartnersView = serde_json::from_str(&json).expect("partners --json parses");
        let days = view.certificate.as_ref().expect("own certificate").days_left;
        if (39..=40).contains(&days) {
            break view;
        }
        assert!(Instant::now() < deadline, "a never used its renewed certificate: {view:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view.node_id, "a");
    let table = ferry_ok(&["partners", "--api", &a.api]).await;
    assert!(table.contains("CERT") && table.contains("d)"), "{table}");
    // The CLI still verifies the API against the cluster CA after the renewal.
    let rules: serde_json::Value =
        serde_json::from_str(&ferry_ok(&["rules", "--api", &a.api, "--json"]).await).expect("rules --json parses");
    assert!(rules.as_array().is_some_and(|r| !r.is_empty()), "{rules}");
    let list: serde_json::Value =
        serde_json::from_str(&ferry_ok(&["status", "--api", &a.api, "--json"]).await).expect("status --json parses");
    assert_eq!(list, serde_json::json!([]));
    assert!(a.is_running());
}

/// `ferry bench` on small sizes runs both nodes as processes of their own
/// and measures every phase: the big push with each node's CPU, the small
/// requests, the file set, parallel pushes with each node's memory, and a
/// queue that drains once its stopped partner is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_every_phase_with_each_node_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("bench");
    let work = work.to_str().expect("utf-8 path");
    let out = ferry_ok(&[
        "bench",
        "--dir",
        work,
        "--big-mib",
        "2",
        "--small-count",
        "20",
        "--parallel",
        "3",
        "--parallel-mib",
        "2",
        "--queued",
        "30",
    ])
    .await;
    let line = out.lines().find_map(|l| l.strip_prefix("BENCH ")).unwrap_or_else(|| panic!("no BENCH line: {out}"));
    let field = |key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    assert_eq!(field("big_bytes"), f64::from(2u32 << 20));
    assert_eq!(field("small_count"), 20.0);
    assert_eq!(field("queued"), 30.0);
    for key in ["big_mbs", "small_rps", "set_fps", "rss_a_bytes", "rss_b_bytes"] {
        assert!(field(key) > 0.0, "{key} in {line}");
    }
    // Each node's CPU apart (read in clock ticks: a node may have used
    // less than one in so small a run, so only their presence is checked).
    for key in ["big_cpu_a", "big_cpu_b", "small_cpu_a_ms", "small_cpu_b_ms", "set_cpu_a_ms", "set_cpu_b_ms"] {
        assert!(field(key) >= 0.0, "{key} in {line}");
    }
    for key in ["par_mbs", "par_peak_a_bytes", "par_peak_b_bytes", "queued_drain_s", "queued_peak_a_bytes"] {
        assert!(field(key) > 0.0, "{key} in {line}");
    }
    assert!(field("queued_react_s") <= field("queued_drain_s"), "{line}");
    // Every file of the queue reached b.
    let delivered = std::fs::read_dir(dir.path().join("bench/b/in"))
        .expect("b's in folder")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("queued-")))
        .count();
    assert_eq!(delivered, 30);
}
