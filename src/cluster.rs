//! Local cluster layouts: certificates, folders and node configs for N nodes
//! on loopback, generated in one folder.
//!
//! Two generators live here. [`spec`] reads a cluster file (fixed ports, a
//! state folder, partner groups) and is what `ferry cluster up|down|status`
//! runs on; its types are re-exported here. [`LocalLayout`], below, picks
//! free ports itself and is used by `ferry demo`, `ferry bench` and the
//! tests, which start their nodes in one process.
//!
//! In [`LocalLayout`], every node is a
//! partner of every other and has one rule, `default`, open to all of them,
//! sending from `ROOT/NODE/out` and receiving into `ROOT/NODE/in`.
//!
//! Ports are picked by binding port 0 and releasing it: another process
//! could take one in between, which is acceptable for a local demo or test
//! and reported clearly by the node that then fails to bind.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use crate::config::{NodeConfig, Partner, Rule, TlsPaths};

pub mod rules;
pub mod spec;

pub use spec::{ClusterError, ClusterSpec, ClusterState, Prepared};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("certificates: {0}")]
    Certs(#[from] crate::certs::CertError),
    #[error("cannot prepare {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io { path: path.display().to_string(), source }
}

/// A generated local cluster.
#[derive(Clone, Debug)]
pub struct LocalLayout {
    pub root: PathBuf,
    pub configs: Vec<NodeConfig>,
}

/// A free port on loopback for UDP (QUIC).
pub fn free_udp() -> std::io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// A free port on loopback for TCP (the REST API).
pub fn free_tcp() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl LocalLayout {
    /// Generates certificates (in `ROOT/certs`), folders and configs for `ids`.
    pub fn create(root: &Path, ids: &[&str]) -> Result<LocalLayout, LayoutError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let certs = root.join("certs");
        crate::certs::init_with(
            &certs,
            &ids.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &crate::certs::IssueOptions::loopback(),
        )?;
        let quic: Vec<SocketAddr> = ids.iter().map(|_| free_udp()).collect::<Result<_, _>>().map_err(io(root))?;
        let mut configs = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let home = root.join(id);
            let p = crate::certs::paths(&certs, id);
            let tls = TlsPaths { cert: p.cert, key: p.key, ca: p.ca, crl: None };
            let api = free_tcp().map_err(io(root))?;
            let cfg = NodeConfig {
                partners: ids
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, other)| Partner {
                        id: other.to_string(),
                        address: quic[j],
                        aliases: vec![],
                        keep_connected: false,
                    })
                    .collect(),
                rules: vec![Rule::new("default", home.join("out"), home.join("in"), vec!["*".into()])],
                ..NodeConfig::with_defaults(id.to_string(), quic[i], api, home.join("data"), tls)
            };
            for r in &cfg.rules {
                std::fs::create_dir_all(&r.send_dir).map_err(io(&r.send_dir))?;
                std::fs::create_dir_all(&r.recv_dir).map_err(io(&r.recv_dir))?;
            }
            configs.push(cfg);
        }
        Ok(LocalLayout { root: root.to_owned(), configs })
    }

    /// Writes each node's config to `ROOT/NODE.toml`; returns the paths.
    pub fn write_configs(&self) -> Result<Vec<PathBuf>, LayoutError> {
        self.configs
            .iter()
            .map(|c| {
                let path = self.root.join(format!("{}.toml", c.node_id));
                std::fs::write(&path, c.to_toml()).map_err(io(&path))?;
                Ok(path)
            })
            .collect()
    }

    pub fn config(&self, id: &str) -> Option<&NodeConfig> {
        self.configs.iter().find(|c| c.node_id == id)
    }

    pub fn config_mut(&mut self, id: &str) -> Option<&mut NodeConfig> {
        self.configs.iter_mut().find(|c| c.node_id == id)
    }

    /// The `default` rule's send folder of a node.
    pub fn out_dir(&self, id: &str) -> PathBuf {
        self.root.join(id).join("out")
    }

    /// The `default` rule's receive folder of a node.
    pub fn in_dir(&self, id: &str) -> PathBuf {
        self.root.join(id).join("in")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_round_trips_through_its_config_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = LocalLayout::create(dir.path(), &["a", "b", "c"]).expect("layout");
        let paths = layout.write_configs().expect("write");
        for (path, cfg) in paths.iter().zip(&layout.configs) {
            assert_eq!(&NodeConfig::load(path).expect("loads"), cfg);
            assert_eq!(cfg.partners.len(), 2);
        }
        assert!(layout.out_dir("b").is_dir() && layout.in_dir("c").is_dir());
    }
}
