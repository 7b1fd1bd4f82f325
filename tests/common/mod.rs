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
use ferry::protocol::{Digest, Direction, RequestId};
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
    Submit::file(partner, "default", direction, file)
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

/// A client for an in-process node's API: HTTPS verified against its
/// cluster CA, with the node's first admin token.
pub fn api_client(node: &Node) -> ferry::api::ApiClient {
    ferry::api::ApiClient::for_local_node(node.handle().config(), node.api_addr()).expect("API client")
}

/// The node's first admin token (written to its data folder at start).
pub fn admin_token(config: &NodeConfig) -> String {
    ferry::auth::read_token_file(&config.data_dir.join(ferry::auth::ADMIN_TOKEN_FILE)).expect("admin token file")
}

/// A TLS connection to a node's API, verified against its cluster CA,
/// with a receive buffer of `recv_buffer` bytes if given.
pub async fn tls_connect(
    config: &NodeConfig,
    addr: std::net::SocketAddr,
    recv_buffer: Option<u32>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(&config.tls.ca).expect("CA")).expect("root");
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("receive buffer");
    }
    let tcp = socket.connect(addr).await.expect("connect to the API");
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await.expect("TLS")
}

/// One HTTP/1.1 exchange written by hand over HTTPS (verified against the
/// node's CA), so a test controls every byte of the request: answers the
/// status, the head (lowercased) and the body.
pub async fn raw_exchange(
    config: &NodeConfig,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(config, addr, None).await;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\naccept: application/json\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut answer = Vec::new();
    // A TLS peer may close without close_notify after answering.
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await.expect("answer in time");
    let text = String::from_utf8(answer).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A task that runs `/bin/sh -c SCRIPT sh ARGS…` (`exec`, no other shell:
/// each of ARGS is one argument, `$1`… in SCRIPT).
pub fn sh_task(script: &str, args: &[&str]) -> ferry::tasks::TaskConfig {
    let mut all = vec!["-c".to_string(), script.to_string(), "sh".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    ferry::tasks::TaskConfig {
        kind: "exec".into(),
        program: Some("/bin/sh".into()),
        args: Some(all),
        ..Default::default()
    }
}
