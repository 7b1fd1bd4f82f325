//! Node configuration: one TOML file per node.
//!
//! ```toml
//! node_id = "a"
//! listen = "127.0.0.1:7001"      # QUIC (UDP)
//! api = "127.0.0.1:8001"         # REST (TCP)
//! data_dir = "/var/lib/ferry/a"  # sled store
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

use crate::protocol::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

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
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Partner {
    pub id: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Files are sent from here.
    pub send_dir: PathBuf,
    /// Files are received into here.
    pub recv_dir: PathBuf,
    /// Partners allowed to use the rule; `"*"` allows every partner.
    #[serde(default)]
    pub partners: Vec<String>,
}

impl Rule {
    pub fn allows(&self, partner: &str) -> bool {
        self.partners.iter().any(|p| p == "*" || p == partner)
    }
}

fn default_concurrency() -> usize {
    64
}

fn default_block_size() -> u32 {
    DEFAULT_BLOCK_SIZE
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    pub tls: TlsPaths,
    #[serde(default)]
    pub partners: Vec<Partner>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl NodeConfig {
    /// Reads, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        let mut cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p.clone(), reason: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_relative(base);
        cfg.validate().map_err(|reason| ConfigError::Invalid { path: p, reason })?;
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
        for r in &mut self.rules {
            fix(&mut r.send_dir);
            fix(&mut r.recv_dir);
        }
    }

    /// Checks what a node needs to run; returns the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.is_empty() {
            return Err("node_id is empty".into());
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
        let mut rules = HashSet::new();
        for r in &self.rules {
            if !rules.insert(r.name.as_str()) {
                return Err(format!("rule {:?} is defined twice", r.name));
            }
        }
        Ok(())
    }

    /// Resolves a partner id or alias to the partner.
    pub fn partner(&self, name: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.id == name || p.aliases.iter().any(|a| a == name))
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
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
