//! A node of `ferry bench` run as a child process (`ferry node --config
//! FILE`), so that each node's CPU time and memory are its own and can be
//! read apart from the other's and from the bench's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry::api::ApiClient;
use ferry::config::NodeConfig;

/// How long a node may take to answer on its API after it was started
/// (a store of a million requests takes a few seconds to open).
const START_WITHIN: Duration = Duration::from_secs(120);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(30);

pub struct NodeProcess {
    pub cfg: NodeConfig,
    config_file: PathBuf,
    log: PathBuf,
    child: tokio::process::Child,
}

impl NodeProcess {
    /// Starts `exe node --config config_file`, its output appended to `log`,
    /// and waits until its API answers as this node.
    pub async fn start(exe: &Path, cfg: &NodeConfig, config_file: &Path, log: &Path) -> anyhow::Result<NodeProcess> {
        let child = spawn(exe, config_file, log)?;
        let mut node =
            NodeProcess { cfg: cfg.clone(), config_file: config_file.to_owned(), log: log.to_owned(), child };
        node.wait_ready().await?;
        Ok(node)
    }

    /// Starts the node again after [`NodeProcess::stop`], with the same
    /// config and store.
    pub async fn restart(&mut self, exe: &Path) -> anyhow::Result<()> {
        self.child = spawn(exe, &self.config_file, &self.log)?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let id = &self.cfg.node_id;
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("node {id} exited ({status}) before its API answered; see {}", self.log.display());
            }
            // Built on each probe: the node writes its first admin token
            // when it starts.
            if let Ok(api) = ApiClient::for_local_node(&self.cfg, self.cfg.api) {
                if api.with_timeout(Duration::from_secs(2)).node().await.is_ok_and(|s| &s.node_id == id) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {id} did not answer within {} s; see {}", START_WITHIN.as_secs(), self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node with SIGTERM (killed if it has not stopped within 30 s).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(pid) = self.child.id() else { return Ok(()) };
        // SAFETY: kill(2) with a pid of our own child that has not been reaped.
        unsafe { libc::kill(i32::try_from(pid).context("pid")?, libc::SIGTERM) };
        if tokio::time::timeout(STOP_WITHIN, self.child.wait()).await.is_err() {
            self.child.kill().await?;
            bail!("node {} did not stop within {} s of SIGTERM", self.cfg.node_id, STOP_WITHIN.as_secs());
        }
        Ok(())
    }

    fn proc_file(&self, name: &str) -> String {
        self.child.id().and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok()).unwrap_or_default()
    }

    /// CPU time (user + system) the node has used since it started, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of_stat(&self.proc_file("stat"), clock_ticks())
    }

    /// Resident memory now, in bytes.
    pub fn resident(&self) -> u64 {
        status_kib(&self.proc_file("status"), "VmRSS:") * 1024
    }

    /// The most resident memory since the start or the last
    /// [`NodeProcess::reset_peak`], in bytes.
    pub fn peak(&self) -> u64 {
        status_kib(&self.proc_file("status"), "VmHWM:") * 1024
    }

    /// Starts a new peak from the memory resident now.
    pub fn reset_peak(&self) {
        if let Some(pid) = self.child.id() {
            // "5" resets the peak resident set size (proc(5), clear_refs).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }
}

fn spawn(exe: &Path, config_file: &Path, log: &Path) -> anyhow::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    tokio::process::Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(config_file)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a `/proc/PID/stat` line, in seconds. The command name
/// (field 2) may hold spaces, so the fields are counted after its `)`.
fn cpu_seconds_of_stat(stat: &str, ticks: f64) -> f64 {
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    // After ")": field 3 (state) is index 0, so utime (14) is 11, stime (15) 12.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

/// A `kB` figure of `/proc/PID/status`.
fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (ferry node (a)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert!((cpu_seconds_of_stat(stat, 100.0) - 3.0).abs() < 1e-9);
        assert_eq!(cpu_seconds_of_stat("garbage", 100.0), 0.0);
    }

    #[test]
    fn memory_figures_are_read_by_key() {
        let status = "Name:\tferry\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), 1024);
        assert_eq!(status_kib(status, "VmHWM:"), 2048);
        assert_eq!(status_kib(status, "VmSwap:"), 0);
    }
}
