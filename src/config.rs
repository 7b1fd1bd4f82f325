//! Node configuration: one TOML file per node.
//!
//! ```toml
//! node_id = "a"
//! listen = "127.0.0.1:7001"      # QUIC (UDP)
//! api = "127.0.0.1:8001"         # REST (TCP), HTTPS with the node's certificate
//! # api_plain_http = true        # plain HTTP instead: only on a loopback address
//! data_dir = "/var/lib/ferry/a"  # the store (fjall)
//! concurrency = 64               # ClientRunners at once
//! block_size = 1048576
//!
//! [tls]
//! cert = "certs/a.pem"
//! key = "certs/a.key"
//! ca = "certs/ca.pem"
//!
//! [[partners]]
//! id = "b"
//! address = "127.0.0.1:7002"
//! aliases = ["bravo"]
//!
//! [[rules]]
//! name = "default"
//! send_dir = "/srv/ferry/a/out"
//! recv_dir = "/srv/ferry/a/in"
//! partners = ["b"]               # who may use it; "*" for every partner
//! ```
//!
//! Relative paths are resolved against the config file's folder. Validation
//! happens at load: a node never starts with a config it cannot honour.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{TargetMode, DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::tasks::{SideTasks, TaskList};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is not valid TOML for a node: {reason}")]
    Parse { path: String, reason: String },
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The cluster's certificate revocation list (`ferry certs revoke`
    /// writes it): a partner whose certificate it lists is refused at
    /// every handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    pub id: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Keep an outbound connection to this partner at all times (redialed
    /// when lost), so a node behind a firewall stays reachable through it.
    #[serde(default)]
    pub keep_connected: bool,
}

/// A name that stands for several partners able to serve the same rules; a
/// request to a group goes to one available member.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
}

/// How a node watches its partners and reaches those behind firewalls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct ClusterSettings {
    /// A heartbeat (Ping) goes to every connected partner this often.
    pub heartbeat_ms: u64,
    /// A partner that has not answered a heartbeat for this long is unavailable.
    pub heartbeat_timeout_ms: u64,
    /// How often an unavailable partner with waiting requests is dialed again.
    pub probe_interval_ms: u64,
    /// How long a request waits for an unavailable partner before it ends
    /// `InError` with the last cause.
    pub partner_wait_secs: u64,
    /// After a direct dial failed, how long to wait for the partner to dial
    /// back when asked through a relay (reverse connect).
    pub reverse_connect_timeout_ms: u64,
    /// Partners asked to relay a dial-back request, in this order; empty:
    /// every other partner, those this node is connected to first.
    pub relays: Vec<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_ms: 1_000,
            heartbeat_timeout_ms: 3_500,
            probe_interval_ms: 2_000,
            partner_wait_secs: 3_600,
            reverse_connect_timeout_ms: 5_000,
            relays: Vec::new(),
        }
    }
}

/// What one partner may cost this node (see "What a partner may cost a
/// node" in docs/ARCHITECTURE.md). Every limit applies to each partner on
/// its own, so one partner reaching a limit slows or refuses only itself.
/// Where the audit trail goes (see [`crate::audit`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct AuditSettings {
    /// The audit file; default `DATA_DIR/audit/audit.jsonl`.
    pub path: Option<PathBuf>,
    /// The file is rotated when the next line would pass this size.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` is the newest).
    pub keep: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { path: None, max_bytes: 64 * 1024 * 1024, keep: 5 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct PartnerLimits {
    /// Largest frame a partner may send on a request channel before the
    /// request is agreed (`Valid`); after it, the agreed block size plus
    /// the frame's own fields.
    pub handshake_frame_bytes: usize,
    /// How long a partner may take to start each step of a request's
    /// handshake (its `Startup`, `Authent` and `Request`), and to say what
    /// a stream it opened carries.
    pub handshake_timeout_ms: u64,
    /// Once a frame's first byte has arrived, how long until it is whole;
    /// also how long a sender may take to start the next block, and a peer
    /// to read what this node sends.
    pub frame_timeout_ms: u64,
    /// Connections a partner may hold to this node at once (dialed by it).
    pub connections: usize,
    /// Streams (request channels and control exchanges) a partner may have
    /// open at once, over all its connections.
    pub channels: usize,
    /// Control exchanges a partner may have open at once.
    pub control_asks: usize,
    /// Transfers of a partner's requests that this node runs at once in
    /// their data phase (each holds a thread and blocks in memory); more
    /// are refused with a resumable error, so the partner retries them.
    pub transfers: usize,
    /// Bytes of blocks the partner's running transfers may hold in memory,
    /// reserved when each is accepted (ten blocks, or the file if smaller);
    /// a transfer that does not fit is refused with a resumable error.
    pub buffered_bytes: usize,
    /// Requests a partner may have handed over to this node that have not
    /// ended yet.
    pub handovers: usize,
    /// Reverse-connect asks (`RelayDialBack`, `DialMe`) a partner may make
    /// per minute.
    pub dial_back_asks_per_minute: u32,
}

impl Default for PartnerLimits {
    fn default() -> Self {
        PartnerLimits {
            handshake_frame_bytes: 64 * 1024,
            handshake_timeout_ms: 10_000,
            frame_timeout_ms: 60_000,
            connections: 4,
            channels: 512,
            control_asks: 32,
            transfers: 128,
            buffered_bytes: 1 << 30,
            handovers: 1_000,
            dial_back_asks_per_minute: 20,
        }
    }
}

impl PartnerLimits {
    fn validate(&self) -> Result<(), String> {
        if self.handshake_frame_bytes < 16 * 1024 {
            return Err("limits.handshake_frame_bytes must be at least 16384 (a request's own fields)".into());
        }
        let one = crate::actors::partner_budget::reservation(u64::MAX, crate::protocol::MAX_BLOCK_SIZE);
        if (self.buffered_bytes as u64) < one {
            return Err(format!(
                "limits.buffered_bytes must be at least {one} (one transfer of the largest block: ten 16 MiB blocks and a frame)"
            ));
        }
        if self.handshake_timeout_ms == 0 || self.frame_timeout_ms == 0 {
            return Err("limits.handshake_timeout_ms and limits.frame_timeout_ms must be at least 1".into());
        }
        if self.connections == 0 || self.channels == 0 || self.control_asks == 0 || self.transfers == 0 {
            return Err(
                "limits.connections, limits.channels, limits.control_asks and limits.transfers must be at least 1"
                    .into(),
            );
        }
        if u32::try_from(self.channels).is_err() {
            return Err("limits.channels is too large".into());
        }
        Ok(())
    }
}

/// How an interrupted request is retried: `attempts` runs in all, the
/// delay doubling from `initial_delay_ms` up to `max_delay_ms`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 10, initial_delay_ms: 500, max_delay_ms: 30_000 }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` attempts (1-based).
    pub fn delay_after(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        std::time::Duration::from_millis(self.initial_delay_ms.saturating_mul(factor).min(self.max_delay_ms))
    }
}

/// What a sender does when the receiver's partial file does not match the
/// source's prefix.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnResumeMismatch {
    /// Send the whole file again (the partial file is overwritten).
    #[default]
    Restart,
    /// Fail the request with `ResumeMismatch`.
    Fail,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// Files are sent from here.
    pub send_dir: PathBuf,
    /// Files are received into here. `#PARTNER#` in the path stands for
    /// the partner's id, giving each partner a folder of its own (partners
    /// that share a folder can overwrite each other's files).
    pub recv_dir: PathBuf,
    /// Partners allowed to use the rule; `"*"` allows every partner.
    #[serde(default)]
    pub partners: Vec<String>,
    /// Overrides the node's retry policy for requests of this rule.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// What the sender does when a resume finds a mismatched partial file.
    #[serde(default)]
    pub on_resume_mismatch: OnResumeMismatch,
    /// What the receiver does when the target file exists: `create`
    /// (refuse), `replace` (the default), `append`, `backup`. A request may
    /// override it.
    #[serde(default)]
    pub target: TargetMode,
    /// `backup` mode: the name the existing file is renamed to, in the same
    /// folder (variables allowed; a counter is added if it is taken).
    #[serde(default = "default_backup_name")]
    pub backup_name: String,
    /// More folders this rule's tasks may touch (archives, hand-off
    /// folders), besides its send and receive folders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<PathBuf>,
    /// Tasks this node runs when it sends a file under this rule.
    #[serde(default, skip_serializing_if = "SideTasks::is_empty")]
    pub sender: SideTasks,
    /// Tasks this node runs when it receives a file under this rule.
    #[serde(default, skip_serializing_if = "SideTasks::is_empty")]
    pub receiver: SideTasks,
    /// File sets sent under this rule: what an empty match means
    /// (`fail`, the default, or `succeed`). A request may override it.
    #[serde(default)]
    pub on_empty: crate::fileset::progress::OnEmpty,
    /// File sets: what one failed file means (`stop`, the default: the
    /// files not yet sent are skipped; or `continue`). A request may
    /// override it.
    #[serde(default)]
    pub on_failure: crate::fileset::progress::OnFailure,
    /// File sets: when received files go under their final names (`each`,
    /// the default: each as soon as it is verified; or `all`: none until
    /// every file is verified). A request may override it.
    #[serde(default)]
    pub delivery: crate::fileset::progress::Delivery,
}

fn default_backup_name() -> String {
    "#FILENAME#.#DATE#-#HOUR#".into()
}

/// The placeholder for the partner's id in a rule's receive folder.
pub const PARTNER_PLACEHOLDER: &str = "#PARTNER#";

impl Rule {
    /// A rule with only folders and partners; everything else at its default.
    pub fn new(name: &str, send_dir: PathBuf, recv_dir: PathBuf, partners: Vec<String>) -> Rule {
        Rule {
            name: name.to_owned(),
            send_dir,
            recv_dir,
            partners,
            retry: None,
            on_resume_mismatch: OnResumeMismatch::default(),
            target: TargetMode::default(),
            backup_name: default_backup_name(),
            folders: Vec::new(),
            sender: SideTasks::default(),
            receiver: SideTasks::default(),
            on_empty: Default::default(),
            on_failure: Default::default(),
            delivery: Default::default(),
        }
    }

    pub fn allows(&self, partner: &str) -> bool {
        self.partners.iter().any(|p| p == "*" || p == partner)
    }

    /// The folders its tasks may touch, as written (a receive folder may
    /// still hold `#PARTNER#`).
    pub fn task_folders(&self) -> Vec<PathBuf> {
        let mut v = vec![self.send_dir.clone(), self.recv_dir.clone()];
        v.extend(self.folders.iter().cloned());
        v
    }

    /// Checks every task of the rule; the first problem names the side,
    /// the list and the task.
    pub fn check_tasks(&self) -> Result<(), String> {
        let folders = self.task_folders();
        for (side, tasks) in [("sender", &self.sender), ("receiver", &self.receiver)] {
            for list in TaskList::ALL {
                for (i, t) in tasks.list(list).iter().enumerate() {
                    t.parse(list, &folders).map_err(|why| {
                        format!("rule {:?}: {side}.{} task {} ({}): {why}", self.name, list.key(), i + 1, t.kind)
                    })?;
                }
            }
        }
        crate::tasks::Vars::check(&self.backup_name, false)
            .map_err(|why| format!("rule {:?}: backup_name: {why}", self.name))?;
        if self.backup_name.contains('/') || self.backup_name.is_empty() {
            return Err(format!("rule {:?}: backup_name {:?} must be a file name", self.name, self.backup_name));
        }
        Ok(())
    }

    /// The folder files from `partner` are received into: the rule's
    /// receive folder with `#PARTNER#` replaced by the partner's id (a node
    /// id, which is a plain name: see `certs::node_id_problem`).
    pub fn recv_dir_for(&self, partner: &str) -> PathBuf {
        let text = self.recv_dir.to_string_lossy();
        if text.contains(PARTNER_PLACEHOLDER) {
            PathBuf::from(text.replace(PARTNER_PLACEHOLDER, partner))
        } else {
            self.recv_dir.clone()
        }
    }
}

/// A TOML error as an operator reads it: the line, the table it is in,
/// and toml's own message (which, for an unknown key, lists the valid ones).
fn parse_reason(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return e.message().to_owned() };
    let (Some(before), Some(after)) = (text.get(..span.start), text.get(span.start..)) else {
        return e.message().to_owned();
    };
    let line = before.matches('\n').count() + 1;
    // Every line up to and including the one the error points at; the
    // nearest table header among them is where the key is.
    let upto = &text[..after.find('\n').map_or(text.len(), |n| span.start + n)];
    let table = upto.lines().rev().map(str::trim).find(|l| l.starts_with('[')).map_or_else(
        || "at the top level".to_owned(),
        |h| format!("in table {}", h.split('#').next().unwrap_or(h).trim()),
    );
    format!("line {line}, {table}: {}", e.message())
}

fn default_concurrency() -> usize {
    64
}

fn default_block_size() -> u32 {
    DEFAULT_BLOCK_SIZE
}

fn default_restart_bytes() -> u64 {
    32 << 20
}

fn default_restart_secs() -> u64 {
    2
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// `[transport]`: how the node's QUIC connections behave.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TransportSettings {
    /// The congestion controller: `"cubic"` (the default), `"newreno"` or
    /// `"bbr"` (docs/BENCHMARKS.md "Lossy links" has the measurements).
    #[serde(default)]
    pub congestion: crate::transport::Congestion,
    /// Random loss, in percent (0 to 20), that does not shrink the
    /// congestion window: for links whose loss is known not to be
    /// congestion. 0 (the default): every loss counts as congestion.
    #[serde(default)]
    pub loss_tolerance_percent: u8,
    /// Bytes of blocks this node's sending transfers may hold together,
    /// read ahead of the network or not yet acknowledged by the partner,
    /// beyond one block each (src/transfer/send_pool.rs). One partner's
    /// transfers together may use half of it.
    #[serde(default = "default_send_buffer_bytes")]
    pub send_buffer_bytes: usize,
}

fn default_send_buffer_bytes() -> usize {
    64 << 20
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            congestion: Default::default(),
            loss_tolerance_percent: 0,
            send_buffer_bytes: default_send_buffer_bytes(),
        }
    }
}

/// `[retention]`: how long ended requests stay in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Requests that ended `Done` or `Cancelled` more than this many days
    /// ago are removed with their job logs (the audit log is kept). 0 (the
    /// default): kept for ever. `InError` requests are never removed.
    #[serde(default)]
    pub keep_days: u32,
    /// How often old requests are looked for (also once at start).
    #[serde(default = "default_sweep_interval_secs")]
    pub sweep_interval_secs: u64,
    /// A push a partner left `Interrupted` here, with nothing delivered,
    /// and did not resume for this many hours is cancelled and its partial
    /// file removed (default 168, a week). The same bounds the files a
    /// `delivery = all` set a partner never releases holds here, and work
    /// files no request names (left by a crash). 0: kept for ever, and a
    /// partner that starts transfers and walks away can fill the disk with
    /// them.
    #[serde(default = "default_partial_keep_hours")]
    pub partial_keep_hours: u32,
}

fn default_partial_keep_hours() -> u32 {
    168
}

fn default_sweep_interval_secs() -> u64 {
    3600
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            keep_days: 0,
            sweep_interval_secs: default_sweep_interval_secs(),
            partial_keep_hours: default_partial_keep_hours(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    /// Serve the API as plain HTTP instead of HTTPS; refused unless `api`
    /// is a loopback address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_plain_http: bool,
    pub data_dir: PathBuf,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// A receiver records a restart point (fsync + record) after this many
    /// bytes since the last one...
    #[serde(default = "default_restart_bytes")]
    pub restart_interval_bytes: u64,
    /// ...or after this many seconds, whichever comes first.
    #[serde(default = "default_restart_secs")]
    pub restart_interval_secs: u64,
    /// How interrupted requests are retried (a rule may override it).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long one dial to a partner may take before the attempt counts
    /// as failed (an unreachable partner would otherwise hold it for the
    /// whole QUIC idle timeout).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    pub tls: TlsPaths,
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// What one partner may cost this node.
    #[serde(default)]
    pub limits: PartnerLimits,
    /// The audit trail: file, rotation size, files kept.
    #[serde(default)]
    pub audit: AuditSettings,
    /// How the node's QUIC connections behave.
    #[serde(default)]
    pub transport: TransportSettings,
    /// `[retention]`: ended requests pruned after `keep_days` (off by default).
    #[serde(default)]
    pub retention: RetentionSettings,
    #[serde(default)]
    pub partners: Vec<Partner>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl NodeConfig {
    /// A node with every setting at its default (the values a config file
    /// gets for what it leaves out), no partners, groups or rules.
    pub fn with_defaults(
        node_id: String,
        listen: SocketAddr,
        api: SocketAddr,
        data_dir: PathBuf,
        tls: TlsPaths,
    ) -> Self {
        NodeConfig {
            node_id,
            listen,
            api,
            api_plain_http: false,
            data_dir,
            concurrency: default_concurrency(),
            block_size: default_block_size(),
            restart_interval_bytes: default_restart_bytes(),
            restart_interval_secs: default_restart_secs(),
            retry: RetryPolicy::default(),
            connect_timeout_ms: default_connect_timeout_ms(),
            tls,
            cluster: ClusterSettings::default(),
            limits: PartnerLimits::default(),
            audit: AuditSettings::default(),
            transport: TransportSettings::default(),
            retention: RetentionSettings::default(),
            partners: vec![],
            groups: vec![],
            rules: vec![],
        }
    }

    /// Reads, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Self::parse(&text, &p, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses, resolves (against `base`) and validates config text; `name`
    /// is what errors call it. The file-free half of [`NodeConfig::load`],
    /// also what the config fuzz target feeds.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: name.to_owned(), reason: parse_reason(text, &e) })?;
        cfg.resolve_relative(base);
        cfg.validate().map_err(|reason| ConfigError::Invalid { path: name.to_owned(), reason })?;
        Ok(cfg)
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.ca);
        if let Some(p) = &mut self.tls.crl {
            fix(p);
        }
        if let Some(p) = &mut self.audit.path {
            fix(p);
        }
        for r in &mut self.rules {
            fix(&mut r.send_dir);
            fix(&mut r.recv_dir);
            r.folders.iter_mut().for_each(fix);
        }
    }

    /// What a starting node says it loaded: its partners, groups and rules
    /// with their folders, one line each.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for p in &self.partners {
            let aliases =
                if p.aliases.is_empty() { String::new() } else { format!(" (aliases {})", p.aliases.join(", ")) };
            let keep = if p.keep_connected { ", kept connected" } else { "" };
            lines.push(format!("partner {} at {}{aliases}{keep}", p.id, p.address));
        }
        for g in &self.groups {
            lines.push(format!("group {}: {}", g.name, g.members.join(", ")));
        }
        for r in &self.rules {
            lines.push(format!(
                "rule {}: sends from {}, receives into {}, for {}",
                r.name,
                r.send_dir.display(),
                r.recv_dir.display(),
                r.partners.join(", ")
            ));
        }
        lines
    }

    /// The audit file: `[audit] path`, else `DATA_DIR/audit/audit.jsonl`.
    pub fn audit_path(&self) -> PathBuf {
        self.audit.path.clone().unwrap_or_else(|| self.data_dir.join("audit").join("audit.jsonl"))
    }

    /// Why the API may not be served as configured: plain HTTP anywhere
    /// but on a loopback address would send tokens in the clear.
    pub fn api_problem(&self) -> Option<String> {
        (self.api_plain_http && !self.api.ip().is_loopback()).then(|| {
            format!(
                "api_plain_http is set but api {} is not a loopback address: plain HTTP would send API tokens in the clear; remove api_plain_http to serve HTTPS",
                self.api
            )
        })
    }

    /// Checks what a node needs to run; returns the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.is_empty() {
            return Err("node_id is empty".into());
        }
        if let Some(problem) = self.api_problem() {
            return Err(problem);
        }
        if self.restart_interval_bytes == 0 && self.restart_interval_secs == 0 {
            return Err("restart_interval_bytes and restart_interval_secs cannot both be 0".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(format!("block_size {} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}", self.block_size));
        }
        let mut names = HashSet::new();
        for p in &self.partners {
            if p.id == self.node_id {
                return Err(format!("partner {:?} is this node itself", p.id));
            }
            for n in std::iter::once(&p.id).chain(&p.aliases) {
                if !names.insert(n.as_str()) {
                    return Err(format!("partner name or alias {n:?} is used twice"));
                }
            }
        }
        for g in &self.groups {
            if !names.insert(g.name.as_str()) {
                return Err(format!("group name {:?} is already a partner name, alias or group", g.name));
            }
            if g.members.is_empty() {
                return Err(format!("group {:?} has no members", g.name));
            }
            for m in &g.members {
                if self.partners.iter().all(|p| &p.id != m) {
                    return Err(format!("group {:?}: member {m:?} is not a partner id", g.name));
                }
            }
        }
        for r in &self.cluster.relays {
            if self.partners.iter().all(|p| &p.id != r) {
                return Err(format!("cluster.relays: {r:?} is not a partner id"));
            }
        }
        if self.cluster.heartbeat_ms == 0 || self.cluster.probe_interval_ms == 0 {
            return Err("cluster.heartbeat_ms and cluster.probe_interval_ms must be at least 1".into());
        }
        if self.cluster.heartbeat_timeout_ms <= self.cluster.heartbeat_ms {
            return Err("cluster.heartbeat_timeout_ms must be longer than cluster.heartbeat_ms".into());
        }
        self.limits.validate()?;
        if self.transport.loss_tolerance_percent > 20 {
            return Err(format!(
                "transport.loss_tolerance_percent {} is above 20: a link losing more is broken, not noisy",
                self.transport.loss_tolerance_percent
            ));
        }
        let frame = crate::protocol::MAX_BLOCK_SIZE as usize + crate::protocol::session::FRAME_FIELDS;
        if self.transport.send_buffer_bytes < 2 * frame {
            return Err(format!(
                "transport.send_buffer_bytes {} is below {}: room for two frames of the largest block",
                self.transport.send_buffer_bytes,
                2 * frame
            ));
        }
        if self.retention.sweep_interval_secs < 60 {
            return Err(format!(
                "retention.sweep_interval_secs {} is below 60: old requests need not be looked for more often",
                self.retention.sweep_interval_secs
            ));
        }
        let mut rules = HashSet::new();
        for r in &self.rules {
            if !rules.insert(r.name.as_str()) {
                return Err(format!("rule {:?} is defined twice", r.name));
            }
            r.check_tasks()?;
            for t in r
                .sender
                .post_tasks
                .iter()
                .chain(&r.receiver.post_tasks)
                .chain(&r.sender.error_tasks)
                .chain(&r.receiver.error_tasks)
                .chain(&r.sender.pre_tasks)
                .chain(&r.receiver.pre_tasks)
            {
                if let Some(p) = t.partner.as_deref() {
                    if self.partner(p).is_none() {
                        return Err(format!(
                            "rule {:?}: a transfer task names {p:?}, which is not a configured partner",
                            r.name
                        ));
                    }
                }
                if let Some(other) = t.rule.as_deref() {
                    if self.rules.iter().all(|x| x.name != other) {
                        return Err(format!(
                            "rule {:?}: a transfer task names rule {other:?}, which does not exist",
                            r.name
                        ));
                    }
                }
            }
            for p in &r.partners {
                if p != "*" && self.partner(p).is_none() && self.group(p).is_none() {
                    return Err(format!(
                        "rule {:?}: {p:?} is not a configured partner id, alias or group (\"*\" allows every partner)",
                        r.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Resolves a partner id or alias to the partner.
    pub fn partner(&self, name: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.id == name || p.aliases.iter().any(|a| a == name))
    }

    /// Whether `partner` (an id) may use `rule`: named in it directly, as
    /// `"*"`, or through a group it belongs to.
    pub fn rule_allows(&self, rule: &Rule, partner: &str) -> bool {
        rule.allows(partner)
            || rule.partners.iter().any(|n| self.group(n).is_some_and(|g| g.members.iter().any(|m| m == partner)))
    }

    /// Resolves a group name to its group.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The retry policy for requests of `rule`.
    pub fn retry_for(&self, rule: &str) -> RetryPolicy {
        self.rule(rule).and_then(|r| r.retry).unwrap_or(self.retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
node_id = "a"
listen = "127.0.0.1:7001"
api = "127.0.0.1:8001"
data_dir = "data"
[tls]
cert = "certs/a.pem"
key = "certs/a.key"
ca = "certs/ca.pem"
[[partners]]
id = "b"
address = "127.0.0.1:7002"
aliases = ["bravo"]
[[rules]]
name = "default"
send_dir = "out"
recv_dir = "/abs/in"
partners = ["b"]
"#;

    #[test]
    fn loads_resolves_and_finds_aliases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        std::fs::write(&path, SAMPLE).expect("write");
        let cfg = NodeConfig::load(&path).expect("loads");
        assert_eq!(cfg.concurrency, 64);
        assert_eq!(cfg.block_size, DEFAULT_BLOCK_SIZE);
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.rules[0].recv_dir, PathBuf::from("/abs/in"));
        assert_eq!(cfg.partner("bravo").map(|p| p.id.as_str()), Some("b"));
        assert!(cfg.rule("default").expect("rule").allows("b"));
        assert!(!cfg.rule("default").expect("rule").allows("c"));
    }

    #[test]
    fn a_receive_folder_can_be_per_partner() {
        let rule = |recv: &str| Rule::new("r", "out".into(), recv.into(), vec!["*".into()]);
        assert_eq!(rule("/srv/in/#PARTNER#").recv_dir_for("b"), PathBuf::from("/srv/in/b"));
        assert_eq!(rule("/srv/#PARTNER#/in").recv_dir_for("c"), PathBuf::from("/srv/c/in"));
        assert_eq!(rule("/srv/in").recv_dir_for("b"), PathBuf::from("/srv/in"), "shared when not asked for");
    }

    #[test]
    fn retention_is_off_by_default_and_its_sweep_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        let with = |extra: &str| SAMPLE.replace("[tls]", &format!("{extra}\n[tls]"));
        std::fs::write(&path, with("")).expect("write");
        let cfg = NodeConfig::load(&path).expect("loads");
        assert_eq!((cfg.retention.keep_days, cfg.retention.sweep_interval_secs), (0, 3600), "kept for ever");
        std::fs::write(&path, with("[retention]\nkeep_days = 90\nsweep_interval_secs = 600")).expect("write");
        let cfg = NodeConfig::load(&path).expect("loads");
        assert_eq!((cfg.retention.keep_days, cfg.retention.sweep_interval_secs), (90, 600));
        std::fs::write(&path, with("[retention]\nkeep_days = 1\nsweep_interval_secs = 5")).expect("write");
        let err = NodeConfig::load(&path).expect_err("too often");
        assert!(err.to_string().contains("retention.sweep_interval_secs 5 is below 60"), "{err}");
        std::fs::write(&path, with("[retention]\nkeep_days = -1")).expect("write");
        assert!(NodeConfig::load(&path).is_err(), "a negative age is refused");
    }

    #[test]
    fn the_transport_section_picks_the_controller_and_bounds_the_loss_tolerance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        let with = |extra: &str| SAMPLE.replace("[tls]", &format!("{extra}\n[tls]"));
        std::fs::write(&path, with("")).expect("write");
        let cfg = NodeConfig::load(&path).expect("loads");
        assert_eq!(cfg.transport.congestion, crate::transport::Congestion::Cubic, "the default");
        assert_eq!(cfg.transport.loss_tolerance_percent, 0, "off by default");
        assert_eq!(cfg.transport.send_buffer_bytes, 64 << 20, "the default");
        std::fs::write(&path, with("[transport]\ncongestion = \"bbr\"\nloss_tolerance_percent = 5")).expect("write");
        let cfg = NodeConfig::load(&path).expect("loads");
        assert_eq!(cfg.transport.congestion, crate::transport::Congestion::Bbr);
        assert_eq!(cfg.transport.loss_tolerance_percent, 5);
        std::fs::write(&path, with("[transport]\nloss_tolerance_percent = 21")).expect("write");
        let err = NodeConfig::load(&path).expect_err("too much");
        assert!(err.to_string().contains("transport.loss_tolerance_percent 21"), "{err}");
        std::fs::write(&path, with("[transport]\nsend_buffer_bytes = 1048576")).expect("write");
        let err = NodeConfig::load(&path).expect_err("too small for the largest block");
        assert!(err.to_string().contains("transport.send_buffer_bytes 1048576"), "{err}");
        std::fs::write(&path, with("[transport]\ncongestion = \"vegas\"")).expect("write");
        let err = NodeConfig::load(&path).expect_err("unknown");
        assert!(err.to_string().contains("vegas"), "{err}");
    }

    #[test]
    fn partner_limits_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        let with = |extra: &str| SAMPLE.replace("[tls]", &format!("{extra}\n[tls]"));
        std::fs::write(&path, with("[limits]\nchannels = 8\nhandshake_timeout_ms = 500")).expect("write");
        let cfg = NodeConfig::load(&path).expect("loads");
        assert_eq!(cfg.limits.channels, 8);
        assert_eq!(cfg.limits.handshake_timeout_ms, 500);
        assert_eq!(cfg.limits.buffered_bytes, PartnerLimits::default().buffered_bytes);
        std::fs::write(&path, with("[limits]\nbuffered_bytes = 1024")).expect("write");
        let err = NodeConfig::load(&path).expect_err("a budget below one frame");
        assert!(err.to_string().contains("limits.buffered_bytes"), "{err}");
        std::fs::write(&path, with("[limits]\nhandshake_frame_bytes = 100")).expect("write");
        assert!(NodeConfig::load(&path).is_err());
    }

    #[test]
    fn a_typo_in_a_config_is_refused_naming_the_key_its_table_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        let cases = [
            (
                SAMPLE.replace("data_dir = \"data\"", "data_dir = \"data\"\nconcurency = 64"),
                "concurency",
                "at the top level",
                "line 6",
            ),
            (
                SAMPLE.replace("aliases = [\"bravo\"]", "aliases = [\"bravo\"]\nkeep_conected = true"),
                "keep_conected",
                "in table [[partners]]",
                "line 14",
            ),
            (
                format!("{SAMPLE}[cluster]\npartner_wait_sec = 60\n"),
                "partner_wait_sec",
                "in table [cluster]",
                "line 20",
            ),
            (SAMPLE.replace("[[partners]]", "[[partner]]"), "partner", "in table [[partner]]", "line 10"),
            (SAMPLE.replace("[[rules]]", "[[rule]]"), "rule", "in table [[rule]]", "line 14"),
        ];
        for (text, key, table, line) in cases {
            std::fs::write(&path, &text).expect("write");
            let err = NodeConfig::load(&path).expect_err(key).to_string();
            assert!(err.contains(&format!("unknown field `{key}`")), "{key}: {err}");
            assert!(err.contains(table) && err.contains(line), "{key}: {err}");
            assert!(err.contains("expected one of"), "the valid keys are listed: {err}");
        }
    }

    #[test]
    fn a_rule_naming_an_unknown_partner_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        std::fs::write(&path, SAMPLE.replace("partners = [\"b\"]", "partners = [\"zz\"]")).expect("write");
        let err = NodeConfig::load(&path).expect_err("zz is unknown").to_string();
        assert!(err.contains("rule \"default\": \"zz\" is not a configured partner"), "{err}");
        for ok in ["\"*\"", "\"bravo\""] {
            std::fs::write(&path, SAMPLE.replace("partners = [\"b\"]", &format!("partners = [{ok}]"))).expect("write");
            NodeConfig::load(&path).expect("a wildcard or an alias is fine");
        }
    }

    const TASKS: &str = r##"
target = "backup"
folders = ["/srv/archive"]
[[rules.receiver.post_tasks]]
type = "move"
to = "/srv/archive/#DATE#/"
[[rules.receiver.post_tasks]]
type = "exec"
program = "/usr/local/bin/load"
args = ["#FILEPATH#", "#RULE#"]
timeout_ms = 60000
[[rules.receiver.error_tasks]]
type = "log"
message = "failed: #ERRORCODE# #ERRORMSG#"
[[rules.sender.pre_tasks]]
type = "checksum"
action = "check"
expect = "#TRANSFERINFO#"
"##;

    #[test]
    fn a_rule_with_tasks_loads_and_says_what_it_does() {
        let cfg = NodeConfig::parse(&format!("{SAMPLE}{TASKS}"), "a.toml", Path::new("/etc/ferry")).expect("loads");
        let rule = cfg.rule("default").expect("rule");
        assert_eq!(rule.target, TargetMode::Backup);
        assert_eq!(rule.receiver.post_tasks.len(), 2);
        assert_eq!(rule.receiver.post_tasks[1].timeout_ms, Some(60_000));
        assert_eq!(rule.sender.pre_tasks[0].kind, "checksum");
        let again = NodeConfig::parse(&cfg.to_toml(), "again", Path::new("/")).expect("its own TOML loads");
        assert_eq!(again.rules, cfg.rules, "tasks survive a round trip");
    }

    #[test]
    fn a_bad_task_is_refused_naming_the_rule_the_list_the_task_and_why() {
        let cases = [
            ("[[rules.receiver.post_tasks]]\ntype = \"zip\"\n", "receiver.post_tasks task 1 (zip): unknown task type"),
            (
                "[[rules.sender.post_tasks]]\ntype = \"move\"\n",
                "sender.post_tasks task 1 (move): a move task needs \"to\"",
            ),
            (
                "[[rules.receiver.post_tasks]]\ntype = \"log\"\nmessage = \"#SIZE#\"\n",
                "receiver.post_tasks task 1 (log): message: unknown variable #SIZE#",
            ),
            (
                "[[rules.receiver.post_tasks]]\ntype = \"copy\"\nto = \"/etc/ferry-copy\"\n",
                "receiver.post_tasks task 1 (copy): \"/etc/ferry-copy\" is outside the rule's folders",
            ),
            (
                "[[rules.receiver.pre_tasks]]\ntype = \"log\"\nmessage = \"#ERRORMSG#\"\n",
                "has a value only in error_tasks",
            ),
            (
                "[[rules.receiver.post_tasks]]\ntype = \"transfer\"\npartner = \"zz\"\n",
                "\"zz\", which is not a configured partner",
            ),
            ("[[rules.receiver.post_tasks]]\ntype = \"log\"\nmesage = \"x\"\n", "unknown field `mesage`"),
        ];
        for (toml, want) in cases {
            let err = NodeConfig::parse(&format!("{SAMPLE}{toml}"), "a.toml", Path::new("/etc/ferry"))
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{want}\n{err}");
            assert!(err.contains("default") || err.contains("rules"), "names the rule: {err}");
        }
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let p = RetryPolicy { attempts: 5, initial_delay_ms: 100, max_delay_ms: 700 };
        let ms: Vec<u128> = (1..=5).map(|a| p.delay_after(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 700, 700]);
    }

    #[test]
    fn bad_configs_say_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        std::fs::write(&path, SAMPLE.replace("aliases = [\"bravo\"]", "aliases = [\"b\"]")).expect("write");
        let err = NodeConfig::load(&path).expect_err("dup alias");
        assert!(err.to_string().contains("used twice"), "{err}");
        std::fs::write(&path, "node_id = 3").expect("write");
        assert!(matches!(NodeConfig::load(&path), Err(ConfigError::Parse { .. })));
        assert!(matches!(NodeConfig::load(&dir.path().join("none.toml")), Err(ConfigError::Read { .. })));
    }
}
