//! Shared harness for multi-node tests: real nodes on loopback in one test
//! process, each with its own certificates, sled store and folders.
#![allow(dead_code)]

pub mod peer;
pub mod procs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry::cluster::LocalLayout;
use ferry::config::NodeConfig;
use ferry::model::Submit;
use ferry::node::{Node, NodeHandle};
use ferry::protocol::{Compression, Digest, Direction, RequestId};
use ferry::store::{RequestRecord, Status};

/// Folders and configs of a test cluster; nodes are started separately so
/// tests can tweak configs first. The temporary folder lives as long as this.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
}

impl Layout {
    /// Nodes `ids`, every one a partner of every other, one rule "default"
    /// open to all partners.
    pub fn new(ids: &[&str]) -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = LocalLayout::create(dir.path(), ids).expect("layout");
        Layout { dir, configs: layout.configs }
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
        source: None,
        target: None,
        target_mode: None,
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
