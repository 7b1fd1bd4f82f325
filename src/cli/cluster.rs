//! `ferry cluster up|down|status FILE`: a cluster described by a cluster
//! file (format in [`ferry::cluster::spec`] and `cluster/README.md`), run as
//! separate, detached `ferry node` processes on this host.
//!
//! This module owns the processes: starting them in sessions of their own,
//! their pid files, signals, waiting for them, and asking their REST APIs
//! how they are. What goes into the state folder and how the node configs
//! are generated belongs to the library ([`ferry::cluster::ClusterState`]).
//!
//! A pid file only counts while its process is alive *and* its command line
//! names this node's `node.toml`: a pid reused by another program (after a
//! reboot, say) is never signalled, and an exited node that nobody reaped
//! yet counts as gone.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry::api::client::base_of;
use ferry::api::ApiClient;
use ferry::cluster::{ClusterSpec, ClusterState};
use ferry::config::NodeConfig;
use ferry::model::NodeStats;
use serde::Deserialize;

use super::display::{iso_time, out, table};

/// How long `up` waits for every node's API to answer.
const START_WITHIN: Duration = Duration::from_secs(15);

/// How long `down` waits after SIGTERM before SIGKILL. A node's clean
/// shutdown waits up to 5 s for its channels, then flushes its store.
const TERM_WITHIN: Duration = Duration::from_secs(10);

/// How long a SIGKILLed process may take to disappear.
const KILL_WITHIN: Duration = Duration::from_secs(5);

/// Polling interval for process exits and API readiness.
const POLL: Duration = Duration::from_millis(100);

/// Bound on one API call of `up` and `status`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 30;

/// `ferry cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Generate what is missing (certificates, node configs, folders) under the
    /// file's state_dir and start the nodes that are not running (all, or
    /// those named) as detached `ferry node` processes.
    Up(UpArgs),
    /// Stop the nodes (all, or those named): SIGTERM, then SIGKILL after 10 s.
    /// A node started by hand with the cluster's node.toml is stopped too.
    Down(FileArg),
    /// Show each node's process, API, connections and partners (all, or
    /// those named); exit 1 if any of them is down.
    Status(StatusArgs),
}

/// Arguments of `cluster status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: FileArg,
    /// Print one JSON object per node (process, API, node stats, partners) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The cluster file argument.
#[derive(Args, Debug, Clone)]
pub struct FileArg {
    /// The cluster file, e.g. cluster/local-3.toml (its state_dir is taken from the current directory).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Act on these nodes only (default: every node of the cluster).
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Arguments of `cluster up`.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub cluster: FileArg,
    /// The ferry binary the nodes run (default: this one).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// Runs one `cluster` command.
pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Up(args) => up(args).await,
        ClusterCommand::Down(args) => down(&args.file, &args.nodes).await,
        ClusterCommand::Status(args) => status(&args.cluster.file, &args.cluster.nodes, args.json).await,
    }
}

/// A cluster file opened from the current directory.
struct Cluster {
    file: PathBuf,
    state: ClusterState,
    cwd: PathBuf,
}

impl Cluster {
    fn open(file: &Path) -> anyhow::Result<Cluster> {
        let spec = ClusterSpec::load(file)?;
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(Cluster { file: file.to_owned(), state: ClusterState::new(spec, &cwd), cwd })
    }

    fn name(&self) -> &str {
        &self.state.spec.name
    }

    fn ids(&self) -> &[String] {
        &self.state.spec.nodes
    }

    /// The nodes named on the command line, in the cluster's order; every
    /// node when none is named. A name that is not a node is an error.
    fn selected(&self, named: &[String]) -> anyhow::Result<Vec<String>> {
        if let Some(unknown) = named.iter().find(|n| !self.ids().contains(n)) {
            bail!("cluster {} has no node {unknown:?}; its nodes are {}", self.name(), self.ids().join(", "));
        }
        Ok(self.ids().iter().filter(|id| named.is_empty() || named.contains(id)).cloned().collect())
    }

    /// A path for messages: relative to the current directory when under it.
    fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.cwd).unwrap_or(path).display().to_string()
    }

    /// The node's config as it runs: its `node.toml` if there is one, else
    /// what the cluster file would generate (only its addresses are used).
    fn config(&self, id: &str) -> anyhow::Result<NodeConfig> {
        if self.state.config_path(id).exists() {
            return Ok(self.state.load_config(id)?);
        }
        let i = self.state.spec.index(id).context("node of the cluster")?;
        self.state.spec.node_config(i).context("node of the cluster")
    }

    /// What the node's pid file says about its process.
    fn process(&self, id: &str) -> Proc {
        let path = self.state.pid_path(id);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Proc::NoPidFile,
            Err(e) => return Proc::Stale(format!("its pid file is unreadable: {e}")),
        };
        match text.trim().parse::<i32>() {
            // Never 0, 1 or negative: kill(2) would signal a whole group or everything.
            Ok(pid) if pid > 1 => {
                if is_node_process(pid, &self.state.config_path(id)) {
                    Proc::Running(pid)
                } else {
                    Proc::Stale(format!("pid {pid} had ended"))
                }
            }
            _ => Proc::Stale(format!("its pid file holds no pid ({:?})", text.trim())),
        }
    }

    /// Why a state folder may be missing: a relative `state_dir` is taken
    /// from the current directory, which may not be the intended one.
    fn missing_state(&self) -> String {
        let mut why = format!("{} does not exist", self.state.dir.display());
        if self.state.spec.state_dir.is_relative() {
            why.push_str(&format!(
                "; state_dir {:?} is taken from the current directory",
                self.state.spec.state_dir.display().to_string()
            ));
        }
        why
    }

    /// A `ferry node` process running this node's `node.toml` that `up` did
    /// not start (no pid file names it): started by hand.
    fn started_by_hand(&self, id: &str) -> Option<i32> {
        let config = std::fs::canonicalize(self.state.config_path(id)).ok()?;
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            (pid > 1 && runs_config(pid, &config)).then_some(pid)
        })
    }

    fn remove_pid_file(&self, id: &str) -> anyhow::Result<()> {
        let path = self.state.pid_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("cannot remove {}", self.show(&path))))
            }
            _ => Ok(()),
        }
    }
}

/// A node's process according to its pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Proc {
    NoPidFile,
    /// A pid file whose process is gone; why.
    Stale(String),
    Running(i32),
}

/// Whether `pid` is alive and is the `ferry node` of `config`.
fn is_node_process(pid: i32, config: &Path) -> bool {
    // SAFETY: signal 0 sends nothing; kill(2) only checks the pid exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // A zombie's command line is empty, so an exited node counts as gone.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == config.as_os_str().as_bytes()),
        // Without /proc there is no way to tell: trust kill(2).
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// Whether process `pid` is a `ferry node` whose `--config` is `config`
/// (canonical), however it was named on its command line (a relative path
/// is taken from the process's own working folder).
fn runs_config(pid: i32, config: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    // The program itself, not a wrapper (sudo, timeout, strace) around it.
    if !args.first().is_some_and(|a| a.ends_with(b"ferry")) || args.get(1) != Some(&&b"node"[..]) {
        return false;
    }
    let flag = args.windows(2).find(|w| w[0] == b"--config").map(|w| w[1]);
    let inline = args.iter().find_map(|a| a.strip_prefix(b"--config="));
    let Some(given) = flag.or(inline) else { return false };
    let given = Path::new(std::ffi::OsStr::from_bytes(given));
    let full = match given.is_relative() {
        true => match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => cwd.join(given),
            Err(_) => return false,
        },
        false => given.to_owned(),
    };
    std::fs::canonicalize(full).is_ok_and(|p| p == config)
}

fn signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid > 1 read from our pid file and checked by
    // `is_node_process` just before; it has no memory effects.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A process being stopped.
struct Stopping {
    id: String,
    pid: i32,
    config: PathBuf,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stopped {
    /// Exited after SIGTERM within this time.
    Term(Duration),
    /// Still there after [`TERM_WITHIN`]; SIGKILLed, then gone.
    Killed,
    /// Still there even after SIGKILL.
    Survived,
}

/// SIGTERMs every process, waits up to [`TERM_WITHIN`] for all of them,
/// then SIGKILLs the rest and waits up to [`KILL_WITHIN`].
async fn stop_all(procs: &[Stopping]) -> Vec<Stopped> {
    let alive = |p: &Stopping| {
        is_node_process(p.pid, &p.config) || std::fs::canonicalize(&p.config).is_ok_and(|c| runs_config(p.pid, &c))
    };
    let start = Instant::now();
    for p in procs {
        // It may have ended since it was checked: the wait below tells.
        let _ = signal(p.pid, libc::SIGTERM);
    }
    let mut ended: Vec<Option<Stopped>> = vec![None; procs.len()];
    loop {
        for (p, e) in procs.iter().zip(&mut ended) {
            if e.is_none() && !alive(p) {
                *e = Some(Stopped::Term(start.elapsed()));
            }
        }
        if ended.iter().all(Option::is_some) || start.elapsed() >= TERM_WITHIN {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let killed = Instant::now();
    for (p, e) in procs.iter().zip(&ended) {
        if e.is_none() {
            let _ = signal(p.pid, libc::SIGKILL);
        }
    }
    loop {
        let mut waiting = false;
        for (p, e) in procs.iter().zip(&mut ended) {
            if e.is_none() {
                if alive(p) {
                    waiting = true;
                } else {
                    *e = Some(Stopped::Killed);
                }
            }
        }
        if !waiting || killed.elapsed() >= KILL_WITHIN {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    ended.into_iter().map(|e| e.unwrap_or(Stopped::Survived)).collect()
}

// ---------------------------------------------------------------- up

/// A node process `up` started.
struct Started {
    id: String,
    child: Child,
    /// Where this run's output starts in the node's log.
    log_from: u64,
    cfg: NodeConfig,
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let c = Cluster::open(&args.cluster.file)?;
    let selected = c.selected(&args.cluster.nodes)?;
    let mut running = Vec::new();
    let mut to_start = Vec::new();
    for id in &selected {
        match c.process(id) {
            Proc::Running(pid) => running.push(format!("{id} (pid {pid})")),
            _ => match c.started_by_hand(id) {
                Some(pid) => running.push(format!("{id} (pid {pid}, started by hand with its node.toml)")),
                None => to_start.push(id.clone()),
            },
        }
    }
    if to_start.is_empty() {
        return out(&format!("cluster {}: already running: {}\n", c.name(), running.join(", ")));
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this program's path; give --binary")?,
    };
    // Absolute, because each node runs in its own folder.
    let binary = std::fs::canonicalize(&binary).with_context(|| format!("--binary {}", binary.display()))?;

    let prepared = c.state.prepare()?;
    let state = c.show(&c.state.dir);
    let mut text = format!("cluster {}: {} nodes, state in {state}\n", c.name(), c.ids().len());
    if prepared.ca_created {
        text.push_str(&format!("  created the cluster CA in {}\n", c.show(&c.state.certs_dir())));
    }
    if !prepared.certs_created.is_empty() {
        text.push_str(&format!("  issued certificates for {}\n", prepared.certs_created.join(", ")));
    }
    if !prepared.configs_written.is_empty() {
        text.push_str(&format!("  wrote NODE/node.toml for {}\n", prepared.configs_written.join(", ")));
    }

    if !running.is_empty() {
        text.push_str(&format!("  already running: {}\n", running.join(", ")));
    }
    // Said before the checks below, which may still refuse to start.
    out(&text)?;
    let mut cfgs = Vec::new();
    for (i, id) in c.ids().iter().enumerate().filter(|(_, id)| to_start.contains(id)) {
        let cfg = c.state.load_config(id)?;
        // A kept node.toml wins over the cluster file; say so when they disagree.
        if (cfg.listen, cfg.api) != (c.state.spec.quic_addr(i), c.state.spec.api_addr(i)) {
            out(&format!(
                "  note: {} listens on {} (QUIC) and {} (API), not on the cluster file's {} and {}; \
                 remove it to have it generated again\n",
                c.show(&c.state.config_path(id)),
                cfg.listen,
                cfg.api,
                c.state.spec.quic_addr(i),
                c.state.spec.api_addr(i)
            ))?;
        }
        check_free(id, &cfg)?;
        cfgs.push(cfg);
    }

    let mut started: Vec<Started> = Vec::new();
    for cfg in cfgs {
        match spawn_node(&c, &binary, &cfg.node_id) {
            Ok((child, log_from)) => started.push(Started { id: cfg.node_id.clone(), child, log_from, cfg }),
            Err(e) => {
                abort_start(&c, &mut started).await;
                return Err(e.context(format!("cannot start node {}", cfg.node_id)));
            }
        }
    }
    if let Err(why) = wait_ready(&mut started).await {
        let (failed, reason) = why;
        let mut text = String::new();
        if let Some(s) = started.iter().find(|s| s.id == failed) {
            let log = c.state.log_path(&s.id);
            text.push_str(&format!("node {failed} {reason}; the end of {}:\n", c.show(&log)));
            for line in log_tail(&log, s.log_from, LOG_TAIL_LINES) {
                text.push_str(&format!("  | {line}\n"));
            }
        }
        eprint!("{text}");
        abort_start(&c, &mut started).await;
        bail!("cluster {} did not start: node {failed} {reason} (the nodes started were stopped)", c.name());
    }

    let rows: Vec<Vec<String>> = started
        .iter()
        .map(|s| {
            let rule = s.cfg.rule(ferry::cluster::spec::RULE);
            vec![
                s.id.clone(),
                s.child.id().to_string(),
                s.cfg.listen.to_string(),
                base_of(&s.cfg, s.cfg.api),
                rule.map_or_else(|| "-".into(), |r| c.show(&r.send_dir)),
                rule.map_or_else(|| "-".into(), |r| c.show(&r.recv_dir)),
            ]
        })
        .collect();
    let mut text = format!("cluster {} is up:\n", c.name());
    let mut access_dir = None;
    for s in &started {
        let file = super::access::AccessFile {
            api: base_of(&s.cfg, s.cfg.api),
            ca: absolute(&s.cfg.tls.ca),
            token_file: absolute(&s.cfg.data_dir.join(ferry::auth::ADMIN_TOKEN_FILE)),
        };
        let path = super::access::write(&file)?;
        access_dir = path.parent().map(Path::to_path_buf);
    }
    text.push_str(&table(&["NODE", "PID", "QUIC (UDP)", "API", "SENDS FROM", "RECEIVES INTO"], &rows));
    text.push_str(&format!("logs: {}/NODE/node.log\n", state));
    if let Some(dir) = access_dir {
        text.push_str(&format!(
            "API access (HTTPS verified against the cluster CA, each node's admin token): {}/\n",
            dir.display()
        ));
    }
    // The folders as the nodes' configs have them (a kept node.toml may differ).
    let dir = |s: &Started, send: bool| {
        s.cfg.rule(ferry::cluster::spec::RULE).map(|r| c.show(if send { &r.send_dir } else { &r.recv_dir }))
    };
    if let ([first, second, ..], Some(out_dir), Some(in_dir)) =
        (started.as_slice(), started.first().and_then(|s| dir(s, true)), started.get(1).and_then(|s| dir(s, false)))
    {
        text.push_str(&format!(
            "\nnext: push a file from {a} to {b}:\n  echo hello > {out_dir}/hello.txt\n  \
             ferry send --api {api} {b} default hello.txt --wait   # lands in {in_dir}/hello.txt\n\
             then: ferry cluster status {file}   and   ferry cluster down {file}\n",
            a = first.id,
            b = second.id,
            api = base_of(&first.cfg, first.cfg.api),
            file = c.file.display(),
        ));
    }
    // The children are left running: dropping a `Child` neither kills nor waits.
    out(&text)
}

/// Refuses early, with the port named, when a node's address is taken.
fn check_free(id: &str, cfg: &NodeConfig) -> anyhow::Result<()> {
    UdpSocket::bind(cfg.listen).with_context(|| {
        format!("node {id}: its QUIC address {} (UDP) is not free; another node or cluster may use it", cfg.listen)
    })?;
    TcpListener::bind(cfg.api).with_context(|| {
        format!("node {id}: its API address {} (TCP) is not free; another node or cluster may use it", cfg.api)
    })?;
    Ok(())
}

/// Starts `ferry node --config STATE/ID/node.toml` detached, its output
/// appended to its log, and writes its pid file. Returns the child and
/// where this run's output starts in the log.
fn spawn_node(c: &Cluster, binary: &Path, id: &str) -> anyhow::Result<(Child, u64)> {
    let log_path = c.state.log_path(id);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    writeln!(log, "--- ferry cluster up: node {id} starting at {} ---", iso_time(u64::try_from(now).unwrap_or(0)))
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let stderr = log.try_clone().with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg("node")
        .arg("--config")
        .arg(c.state.config_path(id))
        .current_dir(c.state.node_dir(id))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // A session of its own: no controlling terminal and outside this shell's
    // process group, so neither Ctrl-C nor closing the terminal reaches the
    // node, and it outlives this command.
    // SAFETY: the closure runs between fork and exec and calls only
    // setsid(2), which is async-signal-safe, and reads errno.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", binary.display()))?;
    let pid_path = c.state.pid_path(id);
    if let Err(e) = std::fs::write(&pid_path, format!("{}\n", child.id())) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", pid_path.display())));
    }
    Ok((child, log_from))
}

/// Waits (bounded) until every node's API answers as that node. On failure
/// returns the first node that failed and why.
async fn wait_ready(started: &mut [Started]) -> Result<(), (String, String)> {
    let deadline = Instant::now() + START_WITHIN;
    let mut ready = vec![false; started.len()];
    loop {
        for (i, s) in started.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            match s.child.try_wait() {
                Ok(Some(status)) => return Err((s.id.clone(), format!("exited ({status}) before its API answered"))),
                Ok(None) => {}
                Err(e) => return Err((s.id.clone(), format!("cannot be watched: {e}"))),
            }
            // Built on each probe: the node writes its first admin token
            // when it starts.
            let client = match ApiClient::for_local_node(&s.cfg, s.cfg.api) {
                Ok(c) => c.with_timeout(PROBE_TIMEOUT),
                Err(e) => return Err((s.id.clone(), format!("has no usable API client: {e}"))),
            };
            match client.node().await {
                Ok(stats) if stats.node_id == s.id => ready[i] = true,
                Ok(stats) => {
                    return Err((s.id.clone(), format!("has its API address taken by node {}", stats.node_id)))
                }
                Err(_) => {}
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let i = ready.iter().position(|r| !r).unwrap_or(0);
            return Err((
                started[i].id.clone(),
                format!(
                    "did not answer on {} within {} s",
                    base_of(&started[i].cfg, started[i].cfg.api),
                    START_WITHIN.as_secs()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops the nodes `up` started, reaps them and removes their pid files.
async fn abort_start(c: &Cluster, started: &mut [Started]) {
    let procs: Vec<Stopping> = started
        .iter_mut()
        .filter_map(|s| {
            if !matches!(s.child.try_wait(), Ok(None)) {
                return None;
            }
            Some(Stopping {
                id: s.id.clone(),
                pid: i32::try_from(s.child.id()).ok()?,
                config: c.state.config_path(&s.id),
            })
        })
        .collect();
    for (p, how) in procs.iter().zip(stop_all(&procs).await) {
        if how == Stopped::Survived {
            eprintln!("node {} (pid {}) is still running after SIGKILL", p.id, p.pid);
        }
    }
    for s in started.iter_mut() {
        // Reap what ended; never block on one that survived.
        let _ = s.child.try_wait();
        if let Err(e) = c.remove_pid_file(&s.id) {
            eprintln!("{e:#}");
        }
    }
}

/// The last `lines` lines of `path` from byte `from` on.
fn log_tail(path: &Path, from: u64, lines: usize) -> Vec<String> {
    let mut text = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut text)
    });
    if let Err(e) = read {
        return vec![format!("(cannot read it: {e})")];
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| (*l).to_owned()).collect()
}

// ---------------------------------------------------------------- down

async fn down(file: &Path, named: &[String]) -> anyhow::Result<()> {
    let c = Cluster::open(file)?;
    let selected = c.selected(named)?;
    if !c.state.dir.exists() {
        return out(&format!("cluster {}: nothing to stop ({})\n", c.name(), c.missing_state()));
    }
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut procs = Vec::new();
    for id in &selected {
        let stale = match c.process(id) {
            Proc::NoPidFile => "no pid file".to_owned(),
            Proc::Stale(why) => {
                c.remove_pid_file(id)?;
                format!("{why}; pid file removed")
            }
            Proc::Running(pid) => {
                procs.push(Stopping { id: id.clone(), pid, config: c.state.config_path(id) });
                lines.push((id.clone(), String::new()));
                continue;
            }
        };
        // Not started by `up`: perhaps by hand, from the same node.toml.
        match c.started_by_hand(id) {
            Some(pid) => {
                procs.push(Stopping { id: id.clone(), pid, config: c.state.config_path(id) });
                lines.push((id.clone(), " (started by hand with its node.toml)".into()));
            }
            None => lines.push((id.clone(), format!("not running ({stale})"))),
        }
    }
    let mut survivors = Vec::new();
    for (p, how) in procs.iter().zip(stop_all(&procs).await) {
        let what = match how {
            Stopped::Term(t) => format!("stopped (pid {}, {:.1} s after SIGTERM)", p.pid, t.as_secs_f64()),
            Stopped::Killed => {
                format!("killed (pid {}, still running {} s after SIGTERM)", p.pid, TERM_WITHIN.as_secs())
            }
            Stopped::Survived => {
                survivors.push(format!("{} (pid {})", p.id, p.pid));
                format!("STILL RUNNING (pid {}) after SIGTERM and SIGKILL", p.pid)
            }
        };
        if how != Stopped::Survived {
            c.remove_pid_file(&p.id)?;
        }
        if let Some(line) = lines.iter_mut().find(|(id, _)| *id == p.id) {
            line.1 = format!("{what}{}", line.1);
        }
    }
    let mut text = format!("cluster {}:\n", c.name());
    for (id, what) in &lines {
        text.push_str(&format!("  {id}: {what}\n"));
    }
    if procs.is_empty() {
        text.push_str("nothing was running\n");
    }
    out(&text)?;
    if !survivors.is_empty() {
        bail!("could not stop {}", survivors.join(", "));
    }
    Ok(())
}

// ---------------------------------------------------------------- status

/// `GET /api/v1/partners`, as far as `status` reads it. Every field is
/// optional so that a node adding fields, or leaving some out, still shows.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
struct PartnersAnswer {
    #[serde(default)]
    partners: Vec<PartnerEntry>,
    #[serde(default)]
    groups: Vec<GroupEntry>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct PartnerEntry {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    rtt_ms: Option<f64>,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct GroupEntry {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

/// What `status` learnt about one node.
struct NodeReport {
    id: String,
    proc: Proc,
    api: String,
    stats: Result<NodeStats, String>,
    /// `Ok(None)`: the node has no `/api/v1/partners` (404).
    partners: Result<Option<PartnersAnswer>, String>,
}

impl NodeReport {
    /// `cluster status --json`: one node.
    fn json(&self) -> serde_json::Value {
        let (pid, process) = match &self.proc {
            Proc::Running(pid) => (Some(*pid), "running".to_owned()),
            Proc::NoPidFile => (None, "not running".to_owned()),
            Proc::Stale(why) => (None, format!("not running ({why})")),
        };
        serde_json::json!({
            "node": self.id,
            "up": self.is_up(),
            "process": process,
            "pid": pid,
            "api": self.api,
            "stats": self.stats.as_ref().ok(),
            "error": self.stats.as_ref().err(),
            "partners": match &self.partners { Ok(p) => serde_json::to_value(p).unwrap_or_default(), Err(_) => serde_json::Value::Null },
        })
    }

    fn is_up(&self) -> bool {
        matches!(&self.stats, Ok(s) if s.node_id == self.id)
    }
}

async fn status(file: &Path, named: &[String], json: bool) -> anyhow::Result<()> {
    let c = Cluster::open(file)?;
    let selected = c.selected(named)?;
    let mut tasks = tokio::task::JoinSet::new();
    for id in &selected {
        let cfg = c.config(id)?;
        let id = id.clone();
        tasks.spawn(async move {
            let api = base_of(&cfg, cfg.api);
            let client = ApiClient::for_local_node(&cfg, cfg.api).map(|c| c.with_timeout(PROBE_TIMEOUT));
            let (stats, partners) = match client {
                Ok(client) => {
                    let stats = client.node().await.map_err(|e| e.to_string());
                    let partners = match stats.is_ok() {
                        true => client.get_optional("/api/v1/partners").await.map_err(|e| e.to_string()),
                        false => Ok(None),
                    };
                    (stats, partners)
                }
                Err(e) => (Err(e.to_string()), Ok(None)),
            };
            (id, api, stats, partners)
        });
    }
    let mut reports: Vec<NodeReport> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (id, api, stats, partners) = done.context("a status probe failed")?;
        let proc = c.process(&id);
        reports.push(NodeReport { id, proc, api, stats, partners });
    }
    reports.sort_by_key(|r| c.state.spec.index(&r.id));

    if json {
        let nodes: Vec<serde_json::Value> = reports.iter().map(NodeReport::json).collect();
        super::display::out_json(&serde_json::json!({ "cluster": c.name(), "nodes": nodes }))?;
    } else {
        let mut text = render_status(c.name(), &c.show(&c.state.dir), &reports);
        if !c.state.dir.exists() {
            text.push_str(&format!("  the state folder {}\n", c.missing_state()));
        }
        out(&text)?;
    }
    let down: Vec<&str> = reports.iter().filter(|r| !r.is_up()).map(|r| r.id.as_str()).collect();
    if !down.is_empty() {
        bail!("{} of {} nodes of cluster {} are down: {}", down.len(), reports.len(), c.name(), down.join(", "));
    }
    Ok(())
}

/// The status table and the notes under it.
fn render_status(name: &str, state: &str, reports: &[NodeReport]) -> String {
    let with_partners = reports.iter().any(|r| matches!(r.partners, Ok(Some(_))));
    let mut header = vec!["NODE", "STATE", "PID", "API", "CONNECTIONS", "CHANNELS", "REQUESTS"];
    if with_partners {
        header.push("PARTNERS");
    }
    let mut notes = Vec::new();
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let pid = match &r.proc {
                Proc::Running(pid) => pid.to_string(),
                _ => "-".into(),
            };
            let state = match (&r.proc, r.is_up()) {
                (_, true) => "up",
                (Proc::Running(_), false) => "no API",
                (_, false) => "down",
            };
            if let Proc::Stale(why) = &r.proc {
                notes.push(format!("{}: not running ({why})", r.id));
            }
            let mut row = vec![r.id.clone(), state.into(), pid, r.api.clone()];
            match &r.stats {
                Ok(s) if s.node_id == r.id => {
                    row.extend([
                        s.connections.to_string(),
                        s.open_channels.to_string(),
                        s.running_requests.to_string(),
                    ]);
                    if !matches!(r.proc, Proc::Running(_)) {
                        notes.push(format!("{}: its API answers but no process of `cluster up` runs it", r.id));
                    }
                }
                Ok(s) => {
                    row.extend(["-".into(), "-".into(), "-".into()]);
                    notes.push(format!("{}: {} answers as node {}", r.id, r.api, s.node_id));
                }
                Err(e) => {
                    row.extend(["-".into(), "-".into(), "-".into()]);
                    notes.push(format!("{}: {e}", r.id));
                }
            }
            if with_partners {
                row.push(match &r.partners {
                    Ok(Some(p)) => {
                        for e in p.partners.iter().filter_map(|e| Some((&e.id, e.last_error.as_ref()?))) {
                            notes.push(format!("{} -> {}: last error: {}", r.id, e.0, e.1));
                        }
                        for g in &p.groups {
                            notes.push(format!("{}: group {} = {}", r.id, g.name, g.members.join(", ")));
                        }
                        p.partners.iter().map(partner_cell).collect::<Vec<_>>().join(", ")
                    }
                    Ok(None) => "-".into(),
                    Err(e) => {
                        notes.push(format!("{}: partners: {e}", r.id));
                        "?".into()
                    }
                });
            }
            row
        })
        .collect();
    let up = reports.iter().filter(|r| r.is_up()).count();
    let mut text = format!("cluster {name}: {up} of {} nodes up, state in {state}\n", reports.len());
    text.push_str(&table(&header, &rows));
    for n in notes {
        text.push_str(&format!("  {n}\n"));
    }
    text
}

/// `b available (rtt 0.4 ms)`.
fn partner_cell(p: &PartnerEntry) -> String {
    let state = p.state.as_deref().unwrap_or("unknown");
    match p.rtt_ms {
        Some(rtt) if state == "available" => format!("{} {state} (rtt {rtt:.1} ms)", p.id),
        _ => format!("{} {state}", p.id),
    }
}

/// `path` made absolute against the current folder (access files are read
/// from anywhere).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Cmd};
    use clap::Parser;

    #[test]
    fn cluster_commands_take_a_file() {
        let cli = Cli::try_parse_from(["ferry", "cluster", "up", "c.toml", "--binary", "/bin/f"]).expect("parses");
        let Cmd::Cluster(ClusterCommand::Up(a)) = cli.command else { panic!("not up: {:?}", cli.command) };
        assert_eq!((a.cluster.file.as_path(), a.binary.as_deref()), (Path::new("c.toml"), Some(Path::new("/bin/f"))));
        let cli = Cli::try_parse_from(["ferry", "cluster", "down", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Cmd::Cluster(ClusterCommand::Down(FileArg { .. }))));
        let cli = Cli::try_parse_from(["ferry", "cluster", "status", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Cmd::Cluster(ClusterCommand::Status(StatusArgs { json: false, .. }))));
        for cmd in ["up", "down", "status"] {
            assert!(Cli::try_parse_from(["ferry", "cluster", cmd]).is_err(), "{cmd} needs a file");
        }
    }

    #[test]
    fn only_a_live_process_running_this_config_counts() {
        let me = i32::try_from(std::process::id()).expect("pid");
        // This test process is alive but does not run any node.toml.
        assert!(!is_node_process(me, Path::new("/nowhere/node.toml")));
        // Its own command line's first argument does name it.
        let exe = std::fs::read(format!("/proc/{me}/cmdline")).expect("cmdline");
        let first = exe.split(|b| *b == 0).next().expect("argv0").to_vec();
        assert!(is_node_process(me, Path::new(std::ffi::OsStr::from_bytes(&first))));
        // A pid that cannot exist (above the kernel's maximum).
        assert!(!is_node_process(i32::MAX, Path::new("/nowhere/node.toml")));
    }

    #[test]
    fn pid_files_are_read_carefully() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let text =
            "name = \"t\"\nnodes = [\"a\", \"b\"]\nquic_base_port = 9000\napi_base_port = 9100\nstate_dir = \"s\"";
        let spec = ClusterSpec::parse(text, "t.toml").expect("spec");
        let c = Cluster { file: "t.toml".into(), state: ClusterState::new(spec, tmp.path()), cwd: tmp.path().into() };
        std::fs::create_dir_all(c.state.node_dir("a")).expect("mkdir");
        assert_eq!(c.process("a"), Proc::NoPidFile);
        for garbage in ["", "x", "1", "0", "-1"] {
            std::fs::write(c.state.pid_path("a"), garbage).expect("write");
            assert!(matches!(c.process("a"), Proc::Stale(_)), "{garbage:?}");
        }
        // Our own pid is alive but not this node's process.
        std::fs::write(c.state.pid_path("a"), format!("{}\n", std::process::id())).expect("write");
        assert!(matches!(c.process("a"), Proc::Stale(why) if why.contains("had ended")));
        c.remove_pid_file("a").expect("rm");
        c.remove_pid_file("a").expect("rm twice is fine");
        assert_eq!(c.show(&c.state.out_dir("a")), "s/a/out");
    }

    #[test]
    fn log_tails_start_at_this_run() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("node.log");
        std::fs::write(&log, "old 1\nold 2\n").expect("write");
        let from = std::fs::metadata(&log).expect("meta").len();
        std::fs::write(&log, "old 1\nold 2\nnew 1\nnew 2\nnew 3\n").expect("write");
        assert_eq!(log_tail(&log, from, 2), ["new 2", "new 3"]);
        assert_eq!(log_tail(&log, from, 10), ["new 1", "new 2", "new 3"]);
        assert!(log_tail(&tmp.path().join("none"), 0, 3)[0].contains("cannot read"));
    }

    fn report(id: &str, up: bool, partners: Result<Option<PartnersAnswer>, String>) -> NodeReport {
        NodeReport {
            id: id.into(),
            proc: if up { Proc::Running(4242) } else { Proc::NoPidFile },
            api: "http://127.0.0.1:8301".into(),
            stats: if up {
                Ok(NodeStats {
                    node_id: id.into(),
                    connections: 2,
                    connections_by_partner: Default::default(),
                    open_channels: 1,
                    running_requests: 0,
                    certificate: ferry::model::CertificateView { serial: "01".into(), not_after: 0, days_left: 300 },
                    certificate_reload_error: None,
                })
            } else {
                Err("cannot reach node API at http://127.0.0.1:8302: connection refused".into())
            },
            partners,
        }
    }

    #[test]
    fn status_shows_partners_when_nodes_serve_them() {
        let answer: PartnersAnswer = serde_json::from_str(
            r#"{"node_id": "a", "partners": [
                {"id": "b", "aliases": [], "address": "127.0.0.1:7302", "state": "available", "since_ms": 1, "rtt_ms": 0.42, "connections": 1, "last_error": null},
                {"id": "c", "aliases": [], "address": "127.0.0.1:7303", "state": "unavailable", "since_ms": null, "rtt_ms": null, "connections": 0, "last_error": "timed out"}],
              "groups": [{"name": "backends", "members": ["b", "c"]}]}"#,
        )
        .expect("decodes");
        let text = render_status("t", "st", &[report("a", true, Ok(Some(answer))), report("b", false, Ok(None))]);
        assert!(text.starts_with("cluster t: 1 of 2 nodes up, state in st\n"), "{text}");
        assert!(text.contains("PARTNERS"), "{text}");
        assert!(text.contains("b available (rtt 0.4 ms), c unavailable"), "{text}");
        assert!(text.contains("a -> c: last error: timed out"), "{text}");
        assert!(text.contains("a: group backends = b, c"), "{text}");
        assert!(text.contains("b: cannot reach node API"), "{text}");
        let a_row = text.lines().find(|l| l.starts_with("a ")).expect("row a");
        assert!(a_row.contains(" up ") && a_row.contains("4242"), "{a_row}");
        let b_row = text.lines().find(|l| l.starts_with("b ")).expect("row b");
        assert!(b_row.contains(" down "), "{b_row}");
    }

    #[test]
    fn status_leaves_out_partners_when_no_node_serves_them() {
        let text = render_status("t", "st", &[report("a", true, Ok(None)), report("b", true, Ok(None))]);
        assert!(!text.contains("PARTNERS"), "{text}");
        assert!(text.contains("2 of 2 nodes up"), "{text}");
    }
}
