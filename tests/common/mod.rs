//! Shared harness for multi-node tests: real nodes on loopback in one test
//! process, each with its own certificates, sled store and folders.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry::config::{NodeConfig, Partner, Rule, TlsPaths};
use ferry::node::{Node, NodeHandle, Submit};
use ferry::protocol::{Compression, Digest, Direction, RequestId};
use ferry::store::{RequestRecord, Status};

/// A free UDP port on loopback (bound and released: tests tolerate the tiny race).
pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free udp port")
}

pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free tcp port")
}

/// Folders and configs of a test cluster; nodes are started separately so
/// tests can tweak configs first.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
}

impl Layout {
    /// Nodes `ids`, every one a partner of every other, one rule "default"
    /// open to all partners.
    pub fn new(ids: &[&str]) -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        ferry::certs::init(&certs, &ids.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("certs");
        let addrs: Vec<SocketAddr> = ids.iter().map(|_| free_udp()).collect();
        let configs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let home = dir.path().join(id);
                let p = ferry::certs::paths(&certs, id);
                NodeConfig {
                    node_id: id.to_string(),
                    listen: addrs[i],
                    api: free_tcp(),
                    data_dir: home.join("data"),
                    concurrency: 64,
                    block_size: ferry::protocol::DEFAULT_BLOCK_SIZE,
                    tls: TlsPaths { cert: p.cert, key: p.key, ca: p.ca },
                    partners: ids
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(j, other)| Partner { id: other.to_string(), address: addrs[j], aliases: vec![] })
                        .collect(),
                    rules: vec![Rule {
                        name: "default".into(),
                        send_dir: home.join("out"),
                        recv_dir: home.join("in"),
                        partners: vec!["*".into()],
                    }],
                }
            })
            .collect::<Vec<_>>();
        for c in &configs {
            for r in &c.rules {
                std::fs::create_dir_all(&r.send_dir).expect("send dir");
                std::fs::create_dir_all(&r.recv_dir).expect("recv dir");
            }
        }
        Layout { dir, configs }
    }

    pub fn config(&self, id: &str) -> &NodeConfig {
        self.configs.iter().find(|c| c.node_id == id).expect("node in layout")
    }

    pub fn config_mut(&mut self, id: &str) -> &mut NodeConfig {
        self.configs.iter_mut().find(|c| c.node_id == id).expect("node in layout")
    }

    pub fn out_dir(&self, id: &str) -> PathBuf {
        self.config(id).rules[0].send_dir.clone()
    }

    pub fn in_dir(&self, id: &str) -> PathBuf {
        self.config(id).rules[0].recv_dir.clone()
    }

    pub async fn start(&self, id: &str) -> Node {
        Node::start(self.config(id).clone()).await.expect("node starts")
    }
}

/// Writes `size` bytes of random data; returns their BLAKE3.
pub fn write_random(path: &Path, size: usize) -> Digest {
    use rand::RngCore;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).expect("write source");
    Digest::of(&data)
}

pub fn file_digest(path: &Path) -> Digest {
    Digest::of(&std::fs::read(path).expect("read file"))
}

pub fn submit(direction: Direction, partner: &str, file: &str) -> Submit {
    Submit {
        partner: partner.into(),
        rule: "default".into(),
        direction,
        file: file.into(),
        external_job_id: None,
        transfer_info: String::new(),
        block_size: None,
        compression: Compression::None,
    }
}

/// Waits (bounded) until the request is final on `node`.
pub async fn wait_final(node: &NodeHandle, id: &RequestId, within: Duration) -> RequestRecord {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = node.store().get(id).expect("store readable") {
            if r.status.is_final() {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "request {id} not final on {} within {within:?}", node.node_id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `node` holds the request with a final status; used
/// for the requested side, whose record appears when it accepts.
pub async fn wait_record(node: &NodeHandle, id: &RequestId, status: Status, within: Duration) -> RequestRecord {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = node.store().get(id).expect("store readable") {
            if r.status == status {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "request {id} not {status:?} on {} within {within:?}", node.node_id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Files in a folder, work folder excluded.
pub fn delivered(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| !n.starts_with(".ferry"));
    v.sort();
    v
}

/// Work files left in a receive folder.
pub fn work_files(dir: &Path) -> Vec<String> {
    delivered(&dir.join(".ferry-work"))
}
