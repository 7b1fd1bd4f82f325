//! Connections: one QUIC connection per partner, whoever dialed it.
//!
//! This actor owns the table of live connections. A runner asks it for the
//! connection to a partner; if none is live, one dial is started and every
//! runner asking meanwhile waits for that same dial, so concurrent requests
//! to a partner share one connection. Connections the partner dialed are
//! registered here too and used for our own requests in the other
//! direction. Every registered connection gets a task that accepts the
//! partner's private channels (bidirectional streams) and starts a
//! ServerRunner for each.
//!
//! Dialing runs in a task of its own, never in the mailbox, so a slow or
//! unreachable partner does not hold up requests to other partners.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::server_runner::{ServerRunner, ServerRunnerArgs};
use crate::node::NodeContext;
use crate::protocol::ErrorCode;
use crate::transport::endpoint::CLOSE_WRONG_PEER;
use crate::transport::{self, TransportError};

/// QUIC application close codes; 1 ([`CLOSE_WRONG_PEER`]) is the
/// transport's, for a peer whose certificate is not who was expected.
pub const CLOSE_SHUTDOWN: u32 = 3;
pub const CLOSE_UNKNOWN_PARTNER: u32 = 4;

/// Why a connection to a partner could not be had.
#[derive(Clone, Debug)]
pub struct ConnectError {
    pub code: ErrorCode,
    pub message: String,
}

pub enum ConnectionsMsg {
    /// The live connection to a partner (by id), dialing it if needed.
    Get(String, RpcReplyPort<Result<quinn::Connection, ConnectError>>),
    Dialed(String, Result<quinn::Connection, ConnectError>),
    /// The partner dialed us; its identity is verified and it is known.
    Accepted(String, quinn::Connection),
    /// A connection ended (its stream-accept task saw it close).
    Closed(String, usize),
    /// Live connection count per partner.
    Counts(RpcReplyPort<BTreeMap<String, usize>>),
}

pub struct Connections;

pub struct ConnectionsState {
    ctx: Arc<NodeContext>,
    live: HashMap<String, Vec<quinn::Connection>>,
    dialing: HashMap<String, Vec<RpcReplyPort<Result<quinn::Connection, ConnectError>>>>,
}

impl ConnectionsState {
    fn usable(&self, partner: &str) -> Option<quinn::Connection> {
        self.live.get(partner)?.iter().find(|c| c.close_reason().is_none()).cloned()
    }

    fn register(&mut self, myself: &ActorRef<ConnectionsMsg>, partner: String, conn: quinn::Connection) {
        tracing::info!(partner = %partner, remote = %conn.remote_address(), "connection up");
        let list = self.live.entry(partner.clone()).or_default();
        list.retain(|c| c.close_reason().is_none());
        list.push(conn.clone());
        tokio::spawn(serve_channels(self.ctx.clone(), myself.clone(), partner, conn));
    }
}

/// Whether a connection ended in a failed TLS handshake (a TLS alert travels
/// as a QUIC CRYPTO_ERROR, codes 0x100..0x1ff).
pub fn is_handshake_failure(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(_) => true,
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            (0x100..0x200).contains(&code)
        }
        _ => false,
    }
}

/// The error code for a connection that ended: a partner that closed it
/// because it does not know us says so in its close code; a failed TLS
/// handshake is not worth retrying; anything else is a lost connection.
pub fn close_code(e: &quinn::ConnectionError) -> ErrorCode {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(CLOSE_UNKNOWN_PARTNER) =>
        {
            ErrorCode::UnknownPartner
        }
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(CLOSE_WRONG_PEER) => {
            ErrorCode::Handshake
        }
        e if is_handshake_failure(e) => ErrorCode::Handshake,
        _ => ErrorCode::Connection,
    }
}

/// Maps a dial failure to an error code: an untrusted certificate is not
/// worth retrying, an unreachable partner is.
fn dial_error(partner: &str, e: &TransportError) -> ConnectError {
    let code = match e {
        TransportError::Handshake { source, .. } if is_handshake_failure(source) => ErrorCode::Handshake,
        TransportError::Tls(_) | TransportError::WrongPeer { .. } => ErrorCode::Handshake,
        _ => ErrorCode::Connection,
    };
    ConnectError { code, message: format!("cannot connect to partner {partner}: {e}") }
}

impl Actor for Connections {
    type Msg = ConnectionsMsg;
    type State = ConnectionsState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ConnectionsState { ctx, live: HashMap::new(), dialing: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionsMsg::Get(partner, reply) => {
                if let Some(c) = state.usable(&partner) {
                    let _ = reply.send(Ok(c));
                    return Ok(());
                }
                let Some(address) = state.ctx.config.partner(&partner).map(|p| p.address) else {
                    let _ = reply.send(Err(ConnectError {
                        code: ErrorCode::UnknownPartner,
                        message: format!("partner {partner} is not configured on node {}", state.ctx.config.node_id),
                    }));
                    return Ok(());
                };
                let waiters = state.dialing.entry(partner.clone()).or_default();
                waiters.push(reply);
                if waiters.len() == 1 {
                    let endpoint = state.ctx.endpoint.clone();
                    let me = myself.clone();
                    let limit = std::time::Duration::from_millis(state.ctx.config.connect_timeout_ms);
                    tokio::spawn(async move {
                        let r = match tokio::time::timeout(limit, transport::dial(&endpoint, address, &partner)).await {
                            Ok(r) => r.map_err(|e| dial_error(&partner, &e)),
                            Err(_) => Err(ConnectError {
                                code: ErrorCode::Connection,
                                message: format!(
                                    "cannot connect to partner {partner} at {address}: no answer within {} ms",
                                    limit.as_millis()
                                ),
                            }),
                        };
                        let _ = me.cast(ConnectionsMsg::Dialed(partner, r));
                    });
                }
            }
            ConnectionsMsg::Dialed(partner, result) => {
                let waiters = state.dialing.remove(&partner).unwrap_or_default();
                let result = match result {
                    Ok(conn) => {
                        state.register(&myself, partner.clone(), conn);
                        state.usable(&partner).ok_or_else(|| ConnectError {
                            code: ErrorCode::Connection,
                            message: format!("connection to {partner} closed as soon as it opened"),
                        })
                    }
                    Err(e) => {
                        tracing::warn!(partner = %partner, error = %e.message, "dial failed");
                        Err(e)
                    }
                };
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            ConnectionsMsg::Accepted(partner, conn) => state.register(&myself, partner, conn),
            ConnectionsMsg::Closed(partner, stable_id) => {
                if let Some(list) = state.live.get_mut(&partner) {
                    list.retain(|c| c.stable_id() != stable_id && c.close_reason().is_none());
                    if list.is_empty() {
                        state.live.remove(&partner);
                    }
                }
            }
            ConnectionsMsg::Counts(reply) => {
                let counts = state
                    .live
                    .iter()
                    .map(|(p, l)| (p.clone(), l.iter().filter(|c| c.close_reason().is_none()).count()))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let _ = reply.send(counts);
            }
        }
        Ok(())
    }
}

/// Accepts the partner's private channels on one connection until it closes.
async fn serve_channels(
    ctx: Arc<NodeContext>,
    conns: ActorRef<ConnectionsMsg>,
    partner: String,
    conn: quinn::Connection,
) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let args = ServerRunnerArgs { ctx: ctx.clone(), partner: partner.clone(), send, recv };
                if let Err(e) = Actor::spawn(None, ServerRunner, args).await {
                    tracing::error!(partner = %partner, error = %e, "cannot start a ServerRunner");
                }
            }
            Err(e) => {
                tracing::info!(partner = %partner, reason = %transport::channel::describe_connection(&e), "connection closed");
                let _ = conns.cast(ConnectionsMsg::Closed(partner, conn.stable_id()));
                return;
            }
        }
    }
}

/// Completes an incoming connection: verifies the peer is a configured
/// partner, or closes it with a reason the peer can read.
pub async fn admit(ctx: Arc<NodeContext>, conns: ActorRef<ConnectionsMsg>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    match transport::accept(incoming).await {
        Ok((conn, peer)) => {
            if ctx.config.partner(&peer).is_none_or(|p| p.id != peer) {
                let reason = format!("node {} does not know partner {peer}", ctx.config.node_id);
                tracing::warn!(partner = %peer, remote = %remote, "refused connection: unknown partner");
                conn.close(quinn::VarInt::from_u32(CLOSE_UNKNOWN_PARTNER), reason.as_bytes());
                return;
            }
            let _ = conns.cast(ConnectionsMsg::Accepted(peer, conn));
        }
        Err(e) => tracing::warn!(remote = %remote, error = %e, "refused connection"),
    }
}
