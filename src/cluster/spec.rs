//! Cluster files: one TOML file that describes a whole cluster of `ferry
//! node` processes on one host, and the state folder generated from it
//! (certificates, one `node.toml` per node, folders, logs and pid files).
//!
//! ```toml
//! # A local 3-node cluster on loopback: `ferry cluster up cluster/local-3.toml`
//! name = "local-3"
//! nodes = ["a", "b", "c"]
//! host = "127.0.0.1"             # optional, this is the default
//! quic_base_port = 7301          # node i (0-based) listens for QUIC on quic_base_port + i (UDP)
//! api_base_port = 8301           # and serves its REST API on api_base_port + i (TCP)
//! state_dir = ".ferry/local-3"   # relative to the current directory of `ferry cluster ...`
//!
//! [[groups]]                     # optional; copied into the config of every node
//! name = "backends"              #  that is not itself a member (members must be
//! members = ["b", "c"]           #  partners of the node that uses the group)
//! ```
//!
//! This module owns the mapping from such a file to node configs and the
//! layout of the state folder:
//!
//! ```text
//! STATE/certs/{ca,NODE}.{pem,key}   created with `certs::init` / `certs::add`, only if missing
//! STATE/NODE/node.toml              the node's config, written only if missing
//! STATE/NODE/{out,in}               the `default` rule's send and receive folders
//! STATE/NODE/data                   the node's store
//! STATE/NODE/node.{log,pid}         written by `ferry cluster up`
//! ```
//!
//! Every node is a partner of every other (full mesh) and has one rule,
//! `default`, open to all partners. The paths inside `node.toml` are relative
//! to its folder (`data`, `out`, `in`, `../certs/...`), so a state folder
//! still works after it is moved. Nothing here starts or stops processes:
//! that is the command line's job (`ferry cluster up|down|status`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::certs::{self, CertError};
use crate::config::{ConfigError, Group, NodeConfig, Partner, Rule, TlsPaths};

/// A node's config file inside its folder of the state folder.
pub const NODE_CONFIG_FILE: &str = "node.toml";
/// The node process's id, written by `ferry cluster up`.
pub const PID_FILE: &str = "node.pid";
/// The node process's stdout and stderr, appended to by every `up`.
pub const LOG_FILE: &str = "node.log";
/// The certificate folder inside the state folder.
pub const CERTS_DIR: &str = "certs";
/// The one rule every generated node has.
pub const RULE: &str = "default";

/// Why a cluster file or its state folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("cannot read cluster file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cluster file {path} is not valid: {reason}")]
    Parse { path: String, reason: String },
    #[error("cluster file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("certificates in {path}: {source}")]
    Certs { path: String, source: CertError },
    #[error("cannot prepare {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// An existing `node.toml` does not load (edited by hand, or written by
    /// an older cluster file).
    #[error("{0} (remove it to have it generated again)")]
    NodeConfig(#[from] ConfigError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io { path: path.display().to_string(), source }
}

fn default_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// A cluster file, as written (see the module documentation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// A name for messages (`cluster local-3: ...`).
    pub name: String,
    /// Node ids, in port order.
    pub nodes: Vec<String>,
    /// The address every node listens on and is dialed at.
    #[serde(default = "default_host")]
    pub host: IpAddr,
    /// Node `i` listens for QUIC (UDP) on `quic_base_port + i`.
    pub quic_base_port: u16,
    /// Node `i` serves its REST API (TCP) on `api_base_port + i`.
    pub api_base_port: u16,
    /// Where certificates, configs, stores, folders, logs and pid files go;
    /// a relative path is taken from the current directory.
    pub state_dir: PathBuf,
    /// Partner groups, copied into the config of every node that is not a member.
    #[serde(default)]
    pub groups: Vec<Group>,
}

impl ClusterSpec {
    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<ClusterSpec, ClusterError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read { path: p.clone(), source })?;
        ClusterSpec::parse(&text, &p)
    }

    /// Parses and validates the text of a cluster file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterSpec, ClusterError> {
        let spec: ClusterSpec =
            toml::from_str(text).map_err(|e| ClusterError::Parse { path: origin.to_owned(), reason: e.to_string() })?;
        spec.validate().map_err(|reason| ClusterError::Invalid { path: origin.to_owned(), reason })?;
        Ok(spec)
    }

    /// Checks what generating and running the cluster needs; returns the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        if self.nodes.len() < 2 {
            return Err("a cluster needs at least 2 nodes".into());
        }
        let mut ids = HashSet::new();
        for id in &self.nodes {
            certs::validate_node_id(id).map_err(|e| format!("nodes: {e}"))?;
            if !ids.insert(id.as_str()) {
                return Err(format!("nodes: {id:?} is listed twice"));
            }
        }
        // Partners dial the node at `host`: a wildcard address is not dialable.
        if self.host.is_unspecified() {
            return Err(format!("host {} is not an address nodes can dial; give a concrete address", self.host));
        }
        for (key, base) in [("quic_base_port", self.quic_base_port), ("api_base_port", self.api_base_port)] {
            if base == 0 {
                return Err(format!("{key} must be at least 1"));
            }
            if usize::from(base) + self.nodes.len() - 1 > usize::from(u16::MAX) {
                return Err(format!("{key} {base} + {} nodes runs past port 65535", self.nodes.len()));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err("state_dir is empty".into());
        }
        let mut names = HashSet::new();
        for g in &self.groups {
            if g.name.trim().is_empty() {
                return Err("a group has an empty name".into());
            }
            if ids.contains(g.name.as_str()) {
                return Err(format!("group {:?} has the name of a node", g.name));
            }
            if !names.insert(g.name.as_str()) {
                return Err(format!("group {:?} is defined twice", g.name));
            }
            if g.members.is_empty() {
                return Err(format!("group {:?} has no members", g.name));
            }
            let mut members = HashSet::new();
            for m in &g.members {
                if !ids.contains(m.as_str()) {
                    return Err(format!("group {:?}: member {m:?} is not one of the nodes", g.name));
                }
                if !members.insert(m.as_str()) {
                    return Err(format!("group {:?}: member {m:?} is listed twice", g.name));
                }
            }
            // A node is never its own partner, so a group of every node
            // would be copied into no config at all.
            if members.len() == ids.len() {
                return Err(format!("group {:?} has every node as a member, so no node could use it", g.name));
            }
        }
        Ok(())
    }

    /// The position of a node in `nodes`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == id)
    }

    /// The QUIC (UDP) address of the node at `index`.
    pub fn quic_addr(&self, index: usize) -> SocketAddr {
        SocketAddr::new(self.host, port(self.quic_base_port, index))
    }

    /// The REST API (TCP) address of the node at `index`.
    pub fn api_addr(&self, index: usize) -> SocketAddr {
        SocketAddr::new(self.host, port(self.api_base_port, index))
    }

    /// The config of the node at `index`, exactly as written to its
    /// `node.toml`: paths are relative to the node's folder `STATE/NODE`.
    pub fn node_config(&self, index: usize) -> Option<NodeConfig> {
        let id = self.nodes.get(index)?;
        let partners: Vec<Partner> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != index)
            .map(|(j, other)| Partner {
                id: other.clone(),
                address: self.quic_addr(j),
                aliases: vec![],
                keep_connected: false,
            })
            .collect();
        let groups = self
            .groups
            .iter()
            .filter(|g| g.members.iter().all(|m| partners.iter().any(|p| &p.id == m)))
            .cloned()
            .collect();
        let certs = Path::new("..").join(CERTS_DIR);
        let tls = certs::paths(&certs, id);
        let tls = TlsPaths { cert: tls.cert, key: tls.key, ca: tls.ca, crl: None };
        Some(NodeConfig {
            partners,
            groups,
            rules: vec![Rule::new(RULE, "out".into(), "in".into(), vec!["*".into()])],
            ..NodeConfig::with_defaults(id.clone(), self.quic_addr(index), self.api_addr(index), "data".into(), tls)
        })
    }

    /// Every node's config, in `nodes` order (see [`Self::node_config`]).
    pub fn node_configs(&self) -> Vec<NodeConfig> {
        (0..self.nodes.len()).filter_map(|i| self.node_config(i)).collect()
    }
}

/// `base + index`; [`ClusterSpec::validate`] guarantees it fits for every node.
fn port(base: u16, index: usize) -> u16 {
    u16::try_from(usize::from(base) + index).unwrap_or(u16::MAX)
}

/// `base/path` without `.` segments (a relative `state_dir` such as
/// `./.ferry/x` then reads the same in every message).
fn join_clean(base: &Path, path: &Path) -> PathBuf {
    base.join(path).components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// What [`ClusterState::prepare`] created; empty lists when everything was there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prepared {
    /// A new cluster CA was created.
    pub ca_created: bool,
    /// Nodes that got a new certificate and key.
    pub certs_created: Vec<String>,
    /// Nodes whose `node.toml` was written.
    pub configs_written: Vec<String>,
}

/// A cluster file together with its state folder.
#[derive(Clone, Debug)]
pub struct ClusterState {
    pub spec: ClusterSpec,
    /// The state folder, absolute when `base` given to [`Self::new`] was.
    pub dir: PathBuf,
}

impl ClusterState {
    /// The state of `spec`, its relative `state_dir` taken from `base`
    /// (the command line passes the current directory).
    pub fn new(spec: ClusterSpec, base: &Path) -> ClusterState {
        let dir = join_clean(base, &spec.state_dir);
        ClusterState { spec, dir }
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join(CERTS_DIR)
    }

    /// `STATE/NODE`.
    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// `STATE/NODE/node.toml`.
    pub fn config_path(&self, id: &str) -> PathBuf {
        self.node_dir(id).join(NODE_CONFIG_FILE)
    }

    /// `STATE/NODE/node.pid`.
    pub fn pid_path(&self, id: &str) -> PathBuf {
        self.node_dir(id).join(PID_FILE)
    }

    /// `STATE/NODE/node.log`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.node_dir(id).join(LOG_FILE)
    }

    /// The `default` rule's send folder of a generated node.
    pub fn out_dir(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("out")
    }

    /// The `default` rule's receive folder of a generated node.
    pub fn in_dir(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("in")
    }

    /// Creates what is missing: the CA and node certificates, each node's
    /// folders and its `node.toml`. Existing certificates, configs and data
    /// are kept, so a cluster brought down and up again keeps its identity
    /// and its queued requests.
    pub fn prepare(&self) -> Result<Prepared, ClusterError> {
        let mut done = Prepared::default();
        let certs_dir = self.certs_dir();
        let cert_err = |source| ClusterError::Certs { path: certs_dir.display().to_string(), source };
        // The API is reached at `host`: its address goes in each certificate.
        let mut issue = certs::IssueOptions { ips: vec![self.spec.host], ..Default::default() };
        if self.spec.host.is_loopback() {
            issue.ips = certs::IssueOptions::loopback().ips;
        }
        if certs_dir.join(certs::CA_CERT_FILE).exists() {
            for id in &self.spec.nodes {
                let p = certs::paths(&certs_dir, id);
                // A node missing either file goes to `add`, which refuses
                // (never overwrites) when the other one is still there.
                if !p.cert.exists() || !p.key.exists() {
                    certs::add_with(&certs_dir, id, &issue).map_err(cert_err)?;
                    done.certs_created.push(id.clone());
                }
            }
        } else {
            certs::init_with(&certs_dir, &self.spec.nodes, &issue).map_err(cert_err)?;
            done.ca_created = true;
            done.certs_created = self.spec.nodes.clone();
        }
        for (i, cfg) in self.spec.node_configs().into_iter().enumerate() {
            let id = &self.spec.nodes[i];
            for dir in [self.out_dir(id), self.in_dir(id)] {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            }
            let path = self.config_path(id);
            if !path.exists() {
                std::fs::write(&path, cfg.to_toml()).map_err(io(&path))?;
                done.configs_written.push(id.clone());
            }
        }
        Ok(done)
    }

    /// Loads (and validates) a node's `node.toml`, its paths resolved.
    pub fn load_config(&self, id: &str) -> Result<NodeConfig, ClusterError> {
        Ok(NodeConfig::load(&self.config_path(id))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL_3: &str = include_str!("../../cluster/local-3.toml");
    const LOCAL_5: &str = include_str!("../../cluster/local-5.toml");

    fn spec(extra: &str) -> Result<ClusterSpec, ClusterError> {
        ClusterSpec::parse(
            &format!(
                "name = \"t\"\nnodes = [\"a\", \"b\", \"c\", \"d\"]\nquic_base_port = 9000\napi_base_port = 9100\n\
                 state_dir = \"st\"\n{extra}"
            ),
            "t.toml",
        )
    }

    #[test]
    fn the_shipped_cluster_files_parse_and_can_run_side_by_side() {
        let three = ClusterSpec::parse(LOCAL_3, "local-3.toml").expect("local-3");
        let five = ClusterSpec::parse(LOCAL_5, "local-5.toml").expect("local-5");
        assert_eq!(three.nodes, ["a", "b", "c"]);
        assert_eq!(five.nodes, ["a", "b", "c", "d", "e"]);
        assert_ne!(three.state_dir, five.state_dir);
        let mut ports = HashSet::new();
        for s in [&three, &five] {
            for i in 0..s.nodes.len() {
                assert!(ports.insert(("udp", s.quic_addr(i).port())), "{} QUIC port used twice", s.name);
                assert!(ports.insert(("tcp", s.api_addr(i).port())), "{} API port used twice", s.name);
            }
            for cfg in s.node_configs() {
                cfg.validate().unwrap_or_else(|e| panic!("{} node {}: {e}", s.name, cfg.node_id));
            }
        }
    }

    #[test]
    fn ports_follow_the_node_order() {
        let s = spec("host = \"127.0.0.2\"").expect("parses");
        let cfgs = s.node_configs();
        assert_eq!(cfgs.len(), 4);
        for (i, cfg) in cfgs.iter().enumerate() {
            assert_eq!(cfg.node_id, s.nodes[i]);
            assert_eq!(cfg.listen, format!("127.0.0.2:{}", 9000 + i).parse().expect("addr"));
            assert_eq!(cfg.api, format!("127.0.0.2:{}", 9100 + i).parse().expect("addr"));
        }
        assert_eq!(spec("").expect("parses").host, IpAddr::V4(Ipv4Addr::LOCALHOST), "host defaults to loopback");
    }

    #[test]
    fn every_node_is_a_partner_of_every_other_with_one_open_rule() {
        let s = spec("").expect("parses");
        let cfgs = s.node_configs();
        for cfg in &cfgs {
            let mut partners: Vec<&str> = cfg.partners.iter().map(|p| p.id.as_str()).collect();
            partners.sort_unstable();
            let others: Vec<&str> = s.nodes.iter().map(String::as_str).filter(|n| *n != cfg.node_id).collect();
            assert_eq!(partners, others, "node {}", cfg.node_id);
            for p in &cfg.partners {
                let j = s.index(&p.id).expect("a node");
                assert_eq!(p.address, cfgs[j].listen, "{} dials {} where it listens", cfg.node_id, p.id);
            }
            assert_eq!(cfg.rules.len(), 1);
            let rule = &cfg.rules[0];
            assert_eq!((rule.name.as_str(), rule.partners.as_slice()), (RULE, &["*".to_owned()][..]));
            assert_eq!((rule.send_dir.as_path(), rule.recv_dir.as_path()), (Path::new("out"), Path::new("in")));
            assert_eq!(cfg.data_dir, Path::new("data"));
            assert_eq!(cfg.tls.cert, Path::new("../certs").join(format!("{}.pem", cfg.node_id)));
            assert_eq!(cfg.cluster, crate::config::ClusterSettings::default());
            cfg.validate().unwrap_or_else(|e| panic!("node {}: {e}", cfg.node_id));
        }
    }

    #[test]
    fn groups_go_to_the_nodes_whose_partners_they_name() {
        let s = spec("[[groups]]\nname = \"backends\"\nmembers = [\"c\", \"d\"]\n[[groups]]\nname = \"ab\"\nmembers = [\"a\", \"b\"]\n")
            .expect("parses");
        let names = |id: &str| -> Vec<String> {
            s.node_config(s.index(id).expect("node")).expect("config").groups.into_iter().map(|g| g.name).collect()
        };
        assert_eq!(names("a"), ["backends"]);
        assert_eq!(names("b"), ["backends"]);
        assert_eq!(names("c"), ["ab"]);
        assert_eq!(names("d"), ["ab"]);
        let a = s.node_config(0).expect("a");
        assert_eq!(a.group("backends").map(|g| g.members.clone()), Some(vec!["c".to_owned(), "d".to_owned()]));
    }

    #[test]
    fn bad_cluster_files_say_why() {
        let bad = |text: &str, want: &str| {
            let err = ClusterSpec::parse(text, "x.toml").expect_err(text);
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        };
        let base = "name = \"t\"\nquic_base_port = 9000\napi_base_port = 9100\nstate_dir = \"st\"\n";
        bad(&format!("{base}nodes = [\"a\"]"), "at least 2 nodes");
        bad(&format!("{base}nodes = [\"a\", \"a\"]"), "listed twice");
        bad(&format!("{base}nodes = [\"a\", \"B\"]"), "invalid node id");
        bad(&format!("{base}nodes = [\"a\", \"ca\"]"), "reserved");
        bad(&format!("{base}nodes = [\"a\", \"b\"]\nhost = \"0.0.0.0\""), "not an address nodes can dial");
        bad(&format!("{base}nodes = [\"a\", \"b\"]\nport = 3"), "unknown field");
        bad(
            "name = \"t\"\nnodes = [\"a\", \"b\"]\nquic_base_port = 65535\napi_base_port = 1\nstate_dir = \"s\"",
            "65535",
        );
        bad(
            "name = \"t\"\nnodes = [\"a\", \"b\"]\nquic_base_port = 0\napi_base_port = 1\nstate_dir = \"s\"",
            "at least 1",
        );
        let g = |members: &str| format!("[[groups]]\nname = \"g\"\nmembers = {members}");
        assert!(spec(&g("[\"a\", \"z\"]")).expect_err("z").to_string().contains("not one of the nodes"));
        assert!(spec(&g("[]")).expect_err("empty").to_string().contains("no members"));
        assert!(spec(&g("[\"a\", \"b\", \"c\", \"d\"]")).expect_err("all").to_string().contains("every node"));
        assert!(spec("[[groups]]\nname = \"a\"\nmembers = [\"b\"]")
            .expect_err("a")
            .to_string()
            .contains("name of a node"));
        assert!(matches!(ClusterSpec::load(Path::new("/nonexistent/c.toml")), Err(ClusterError::Read { .. })));
    }

    #[test]
    fn a_relative_state_dir_is_taken_from_the_base_and_an_absolute_one_as_is() {
        let s = spec("").expect("parses");
        let st = ClusterState::new(s.clone(), Path::new("/work/here"));
        assert_eq!(st.dir, Path::new("/work/here/st"));
        assert_eq!(st.config_path("b"), Path::new("/work/here/st/b/node.toml"));
        assert_eq!(st.pid_path("b"), Path::new("/work/here/st/b/node.pid"));
        assert_eq!(st.log_path("b"), Path::new("/work/here/st/b/node.log"));
        assert_eq!(st.out_dir("a"), Path::new("/work/here/st/a/out"));
        let dotted = ClusterSpec { state_dir: "./x/./y".into(), ..s.clone() };
        assert_eq!(ClusterState::new(dotted, Path::new("/w")).dir, Path::new("/w/x/y"));
        let abs = ClusterSpec { state_dir: "/srv/ferry".into(), ..s };
        assert_eq!(ClusterState::new(abs, Path::new("/work/here")).dir, Path::new("/srv/ferry"));
    }

    #[test]
    fn prepare_generates_what_is_missing_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = spec("[[groups]]\nname = \"backends\"\nmembers = [\"c\", \"d\"]").expect("parses");
        let state = ClusterState::new(s.clone(), tmp.path());
        let first = state.prepare().expect("prepare");
        assert!(first.ca_created);
        assert_eq!(first.certs_created, s.nodes);
        assert_eq!(first.configs_written, s.nodes);
        for (i, id) in s.nodes.iter().enumerate() {
            let cfg = state.load_config(id).expect("node.toml loads");
            assert_eq!(cfg.data_dir, state.node_dir(id).join("data"), "relative to the node's folder");
            assert_eq!(cfg.rules[0].send_dir, state.out_dir(id));
            assert_eq!(cfg.tls.ca, state.node_dir(id).join("../certs/ca.pem"));
            assert!(cfg.tls.cert.is_file() && cfg.tls.key.is_file() && cfg.tls.ca.is_file());
            assert!(state.out_dir(id).is_dir() && state.in_dir(id).is_dir());
            assert_eq!(cfg.listen, s.quic_addr(i));
        }
        assert_eq!(state.load_config("a").expect("a").groups.len(), 1);

        // A second run changes nothing: same CA, same configs, nothing reported.
        let ca = std::fs::read(state.certs_dir().join("ca.pem")).expect("ca");
        std::fs::write(
            state.config_path("b"),
            "# edited by hand\n".to_owned() + &s.node_config(1).expect("b").to_toml(),
        )
        .expect("edit");
        assert_eq!(state.prepare().expect("again"), Prepared::default());
        assert_eq!(std::fs::read(state.certs_dir().join("ca.pem")).expect("ca"), ca);
        assert!(std::fs::read_to_string(state.config_path("b")).expect("b").starts_with("# edited by hand"));

        // A node whose config and certificate went missing gets new ones from the same CA.
        std::fs::remove_file(state.config_path("c")).expect("rm");
        for f in ["c.pem", "c.key"] {
            std::fs::remove_file(state.certs_dir().join(f)).expect("rm");
        }
        let third = state.prepare().expect("third");
        assert_eq!(
            (third.ca_created, third.certs_created, third.configs_written),
            (false, vec!["c".into()], vec!["c".into()])
        );
        assert_eq!(std::fs::read(state.certs_dir().join("ca.pem")).expect("ca"), ca);
    }

    #[test]
    fn a_broken_node_config_is_reported_with_its_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = ClusterState::new(spec("").expect("parses"), tmp.path());
        state.prepare().expect("prepare");
        std::fs::write(state.config_path("a"), "node_id = 3").expect("write");
        let err = state.load_config("a").expect_err("broken");
        assert!(matches!(err, ClusterError::NodeConfig(_)), "{err}");
        assert!(err.to_string().contains("a/node.toml") && err.to_string().contains("remove it"), "{err}");
    }
}
