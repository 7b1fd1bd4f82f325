//! Node-to-node transport: QUIC (quinn) with mutual TLS (rustls).
//!
//! Owns how nodes authenticate each other and how the node's single QUIC
//! endpoint is built. Invariant: every connection this module hands out is
//! mutually authenticated against the cluster CA, and its peer's node id comes
//! from the verified certificate, never from anything the peer merely says.

pub mod channel;
pub mod congestion;
pub mod control;
pub mod endpoint;
pub mod reload;
pub mod tls;

pub use channel::{ChannelError, FrameReader, FrameWriter};
pub use congestion::Congestion;
pub use endpoint::{
    accept, dial, dial_with, make_endpoint, make_endpoint_on, DialConfig, Network, TransportError, TransportTuning,
};
pub use tls::{peer_node_id, NodeIdentity, TlsError, ALPN};
