//! A peer played by hand: a node's real certificate, a real QUIC connection,
//! frames written one by one. For tests of what a node does when its
//! partner misbehaves, which a well-behaved node cannot show.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry::protocol::{Message, StreamKind};
use ferry::transport::{self, FrameReader, FrameWriter, NodeIdentity, TransportTuning};

/// Bound on every wait of a hand-played exchange.
pub const PEER_WITHIN: Duration = Duration::from_secs(30);

/// A QUIC endpoint holding `who`'s certificate from the certificates in `certs`.
pub fn endpoint_of(certs: &Path, who: &str) -> quinn::Endpoint {
    let p = ferry::certs::paths(certs, who);
    let id = NodeIdentity::load(who, &p.cert, &p.key, &p.ca).expect("identity");
    transport::make_endpoint("127.0.0.1:0".parse().expect("addr"), &id, &TransportTuning::default()).expect("endpoint")
}

/// A connection from `ep` to node `to` at `addr`, mutual TLS done.
pub async fn connect(ep: &quinn::Endpoint, addr: SocketAddr, to: &str) -> quinn::Connection {
    tokio::time::timeout(PEER_WITHIN, transport::dial(ep, addr, to)).await.expect("dial in time").expect("dial")
}

/// A new request channel on `conn`.
pub async fn channel(conn: &quinn::Connection) -> (FrameWriter, FrameReader) {
    let (s, r) = conn.open_bi().await.expect("open channel");
    (FrameWriter::opened(s, StreamKind::Request), FrameReader::new(r))
}

/// The next message on a channel, within [`PEER_WITHIN`].
pub async fn next(r: &mut FrameReader) -> Message {
    tokio::time::timeout(PEER_WITHIN, r.next()).await.expect("answer in time").expect("frame").expect("a message")
}
