//! Real `ferry node` processes for crash tests: a two-node cluster on
//! loopback whose nodes can be started, SIGKILLed and restarted on the same
//! configs, folders and stores.
//!
//! Every process is owned by a [`NodeProc`], which kills and reaps it when
//! dropped, so a failing test leaves no process behind. Every wait is
//! bounded and panics with both nodes' job logs and process log tails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry::api::{ApiClient, ClientError, LogLineView, TransferView};
use ferry::cluster::LocalLayout;
use ferry::config::NodeConfig;
use ferry::protocol::Digest;

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// Bound on a node's start-up.
pub const START_WITHIN: Duration = Duration::from_secs(30);

/// Unix milliseconds now (the job log's clock).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A generated two-node layout (`a`, `b`) with its configs on disk.
pub fn two_nodes() -> (tempfile::TempDir, LocalLayout, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LocalLayout::create(&dir.path().join("cluster"), &["a", "b"]).expect("layout");
    let configs = layout.write_configs().expect("configs written");
    (dir, layout, configs)
}

/// Runs `ferry ARGS` (without `FERRY_API`, failing the test after
/// `within`) and returns its output.
pub async fn run_ferry(args: &[&str], within: Duration) -> std::process::Output {
    let run = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("FERRY_API")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CA")
        .env("FERRY_ACCESS_DIR", access_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("ferry {args:?} did not end within {within:?}"))
        .expect("run ferry")
}

/// A `ferry node` process; killed and reaped on drop unless it already ended.
pub struct NodeProc {
    pub id: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub config: NodeConfig,
    /// The node's API base, e.g. `https://127.0.0.1:8301`.
    pub api: String,
}

/// The access files of every node this test process starts (see
/// `ferry --help`: the CLI finds a node's token and CA there); `run_ferry`
/// points `FERRY_ACCESS_DIR` at it.
pub fn access_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("ferry-test-access-").tempdir().expect("access dir")).path()
}

/// Writes the access file `ferry cluster up` would write for `config`.
pub fn write_access_file(config: &NodeConfig) {
    let api = ferry::api::client::base_of(config, config.api);
    let name: String =
        config.api.to_string().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    let text = format!(
        "api = {api:?}\nca = {:?}\ntoken_file = {:?}\n",
        config.tls.ca.display().to_string(),
        config.data_dir.join(ferry::auth::ADMIN_TOKEN_FILE).display().to_string()
    );
    std::fs::write(access_dir().join(format!("{name}.toml")), text).expect("access file");
}

impl NodeProc {
    /// Starts `ferry node --config CONFIG`, output to `ROOT/ID-RUN.log`.
    pub fn start(layout: &LocalLayout, id: &str, config: &Path, run: u32) -> NodeProc {
        let log = layout.root.join(format!("{id}-{run}.log"));
        let out = std::fs::File::create(&log).expect("node log file");
        let err = out.try_clone().expect("node log file");
        let child = Command::new(BIN)
            .arg("node")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", std::env::var("FERRY_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("FERRY_API")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ferry node");
        let config = layout.config(id).expect("node in layout").clone();
        write_access_file(&config);
        let api = ferry::api::client::base_of(&config, config.api);
        NodeProc { id: id.to_owned(), child: Some(child), log, config, api }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).expect("pid fits")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client with the node's first admin token (read on each call: the
    /// node writes it when it first starts).
    pub fn client(&self) -> ApiClient {
        ApiClient::for_local_node(&self.config, self.config.api).expect("client").with_timeout(Duration::from_secs(10))
    }

    /// Polls (bounded) until the node's API answers; fails early if the process ended.
    pub async fn wait_ready(&mut self) -> ApiClient {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let api = self.client().with_timeout(Duration::from_secs(2));
            if let Some(status) = self.child.as_mut().expect("running").try_wait().expect("try_wait") {
                panic!("node {} exited ({status}) before its API answered:\n{}", self.id, self.log_text());
            }
            match api.node().await {
                Ok(stats) => {
                    assert_eq!(stats.node_id, self.id, "the API at {} is another node's", self.config.api);
                    return self.client();
                }
                Err(ClientError::Unreachable { .. } | ClientError::Timeout { .. } | ClientError::Transport { .. }) => {}
                // Not yet the token file: the node writes it as it starts.
                Err(ClientError::Api { status: 401, .. }) => {}
                Err(e) => panic!("node {} API: {e}", self.id),
            }
            assert!(
                Instant::now() < deadline,
                "node {} API not up within {START_WITHIN:?}:\n{}",
                self.id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to end.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + within;
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} still running {within:?} after SIGTERM:\n{}", self.id, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGKILL and reaps the process (bounded).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill(SIGKILL) node {}: {}", self.id, std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "node {} still running 10 s after SIGKILL", self.id);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A generated cluster of node processes with configs on disk; nodes can be
/// killed and restarted. Dropping it kills every node still running.
pub struct ProcCluster {
    pub layout: LocalLayout,
    configs: BTreeMap<String, PathBuf>,
    nodes: BTreeMap<String, NodeProc>,
    runs: BTreeMap<String, u32>,
    // Last: removed after the nodes are killed.
    pub dir: tempfile::TempDir,
}

impl ProcCluster {
    /// Nodes `ids` (see [`LocalLayout::create`]); `tweak` may change the
    /// configs before they are written.
    pub fn new(ids: &[&str], tweak: impl FnOnce(&mut LocalLayout)) -> ProcCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut layout = LocalLayout::create(&dir.path().join("cluster"), ids).expect("layout");
        tweak(&mut layout);
        let paths = layout.write_configs().expect("configs written");
        let configs = layout.configs.iter().map(|c| c.node_id.clone()).zip(paths).collect();
        ProcCluster { layout, configs, nodes: BTreeMap::new(), runs: BTreeMap::new(), dir }
    }

    /// Starts (or restarts) node `id` and waits for its API.
    pub async fn start(&mut self, id: &str) -> ApiClient {
        assert!(!self.is_up(id), "node {id} is already running");
        let run = self.runs.entry(id.to_owned()).or_insert(0);
        *run += 1;
        let mut p = NodeProc::start(&self.layout, id, &self.configs[id], *run);
        let api = p.wait_ready().await;
        self.nodes.insert(id.to_owned(), p);
        api
    }

    /// SIGKILLs node `id`.
    pub fn kill9(&mut self, id: &str) {
        let mut p = self.nodes.remove(id).unwrap_or_else(|| panic!("node {id} is not running"));
        p.kill9();
    }

    pub fn is_up(&mut self, id: &str) -> bool {
        self.nodes.get_mut(id).is_some_and(|p| p.is_running())
    }

    /// A client for node `id`'s API (whether it runs or not).
    pub fn api(&self, id: &str) -> ApiClient {
        let config = self.layout.config(id).expect("node in layout");
        ApiClient::for_local_node(config, config.api).expect("client").with_timeout(Duration::from_secs(10))
    }

    pub fn out_dir(&self, id: &str) -> PathBuf {
        self.layout.config(id).expect("node").rules[0].send_dir.clone()
    }

    pub fn in_dir(&self, id: &str) -> PathBuf {
        self.layout.config(id).expect("node").rules[0].recv_dir.clone()
    }

    /// The work file of request `id` in node `node`'s default receive folder.
    pub fn work_file(&self, node: &str, id: &str) -> PathBuf {
        self.in_dir(node).join(".ferry-work").join(format!("{id}.part"))
    }

    /// The pid of running node `id`.
    pub fn pid(&self, id: &str) -> i32 {
        self.nodes.get(id).unwrap_or_else(|| panic!("node {id} is not running")).pid()
    }

    /// The process log of node `id`'s current (last) run.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.layout.root.join(format!("{id}-{}.log", self.runs.get(id).copied().unwrap_or(0)))
    }

    /// Every process log of node `id`, oldest run first.
    pub fn process_logs(&self, id: &str) -> String {
        let runs = self.runs.get(id).copied().unwrap_or(0);
        (1..=runs)
            .map(|r| {
                let path = self.layout.root.join(format!("{id}-{r}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- process log {id} run {r} (last 40 lines) ---\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The job log of request `rid` on every running node, and the tails of
    /// every node's process logs: what a failing assertion prints.
    pub async fn report(&self, rid: &str) -> String {
        let mut out = String::new();
        for id in self.configs.keys() {
            let api = self.api(id).with_timeout(Duration::from_secs(3));
            let view = match api.get(rid).await {
                Ok(v) => format!(
                    "{:?} {:?} transferred {} of {} error {:?}",
                    v.status, v.step, v.transferred, v.size, v.error
                ),
                Err(e) => format!("(no view: {e})"),
            };
            out.push_str(&format!("=== node {id}: {view}\n"));
            match api.log(rid).await {
                Ok(lines) => out.push_str(&format_log(&lines)),
                Err(e) => out.push_str(&format!("(no job log: {e})")),
            }
            out.push('\n');
        }
        for id in self.configs.keys() {
            out.push_str(&self.process_logs(id));
            out.push('\n');
        }
        out
    }

    /// Polls (bounded) node `node` until `check` accepts request `rid`'s view.
    pub async fn wait_view(
        &self,
        node: &str,
        rid: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&TransferView) -> bool,
    ) -> TransferView {
        let api = self.api(node).with_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + within;
        let mut last = None;
        let mut last_err = None;
        loop {
            match api.get(rid).await {
                Ok(v) if check(&v) => return v,
                Ok(v) => last = Some(v),
                Err(e) => last_err = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {within:?} on node {node}; last view: {last:?}; last error: {last_err:?}\n{}",
                    self.report(rid).await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls (bounded) the job log of `rid` on `node` until a line satisfies `check`.
    pub async fn wait_log_line(
        &self,
        node: &str,
        rid: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&LogLineView) -> bool,
    ) -> LogLineView {
        let api = self.api(node).with_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + within;
        loop {
            if let Ok(lines) = api.log(rid).await {
                if let Some(l) = lines.into_iter().find(|l| check(l)) {
                    return l;
                }
            }
            if Instant::now() >= deadline {
                panic!("{what}: no such job log line on {node} within {within:?}\n{}", self.report(rid).await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until node `node` runs no private channel any more
    /// (every runner there, including one left behind by a lost
    /// connection, has ended and recorded its outcome).
    pub async fn wait_idle(&self, node: &str, rid: &str, within: Duration) {
        let api = self.api(node).with_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + within;
        loop {
            match api.node().await {
                Ok(s) if s.open_channels == 0 && s.running_requests == 0 => return,
                _ => {}
            }
            if Instant::now() >= deadline {
                panic!("node {node} still runs channels {within:?} later\n{}", self.report(rid).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the work file of `rid` on `receiver` every 5 ms until it holds
    /// `threshold` bytes; returns its length then. Panics (with the logs) if
    /// the request ends on `watch` first or the bound passes.
    pub async fn wait_work_len(&self, receiver: &str, rid: &str, threshold: u64, watch: &str, within: Duration) -> u64 {
        let work = self.work_file(receiver, rid);
        let api = self.api(watch).with_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + within;
        let mut next_check = Instant::now();
        loop {
            let len = std::fs::metadata(&work).map_or(0, |m| m.len());
            if len >= threshold {
                return len;
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + Duration::from_millis(100);
                if let Ok(v) = api.get(rid).await {
                    if v.is_final() {
                        panic!(
                            "request {rid} ended ({:?}) before {receiver}'s work file reached {threshold} bytes \
                             (it holds {len})\n{}",
                            v.status,
                            self.report(rid).await
                        );
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{receiver}'s work file for {rid} did not reach {threshold} bytes within {within:?} (it holds {len})\n{}",
                    self.report(rid).await
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        // Kill the nodes before the temporary folder is removed.
        self.nodes.clear();
    }
}

/// A job log as text, one line per entry.
pub fn format_log(lines: &[LogLineView]) -> String {
    lines.iter().map(|l| format!("  {} {:?}/{:?} {}\n", l.at, l.status, l.step, l.message)).collect()
}

/// `(R, L, X)` from `resuming at offset R; the work file held L bytes, so X bytes are received again`.
pub fn parse_resume(message: &str) -> Option<(u64, u64, u64)> {
    let rest = message.strip_prefix("resuming at offset ")?;
    let (r, rest) = rest.split_once("; the work file held ")?;
    let (l, rest) = rest.split_once(" bytes, so ")?;
    let (x, _) = rest.split_once(" bytes are received again")?;
    Some((r.parse().ok()?, l.parse().ok()?, x.parse().ok()?))
}

/// Writes `size` random bytes (from /dev/urandom: the kernel's generator
/// is much faster than an unoptimised test build's) in chunks; returns
/// their BLAKE3. The file is not fsynced: the nodes read it from the cache.
pub fn write_random_streamed(path: &Path, size: u64) -> Digest {
    use std::io::{Read, Write};
    let mut random = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut f = std::fs::File::create(path).expect("create source");
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        random.read_exact(&mut chunk[..n]).expect("read /dev/urandom");
        hasher.update(&chunk[..n]);
        f.write_all(&chunk[..n]).expect("write source");
        left -= n as u64;
    }
    Digest(*hasher.finalize().as_bytes())
}

/// BLAKE3 of a file, read in chunks.
pub fn digest_streamed(path: &Path) -> Digest {
    let mut hasher = blake3::Hasher::new();
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    hasher.update_reader(f).expect("read file");
    Digest(*hasher.finalize().as_bytes())
}
