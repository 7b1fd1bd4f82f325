//! Connections: one QUIC connection per partner, whichever side dialed it,
//! partner heartbeats, and reverse connect.
//!
//! This actor owns the table of live connections ([`Link`]s). A runner asks
//! it for the link to a partner; if none is live, one dial is started and
//! every runner asking meanwhile waits for that same dial, so concurrent
//! requests to a partner share one connection. Connections the partner
//! dialed are registered too and carry our own requests in the other
//! direction. Every registered connection gets a task that accepts the
//! partner's streams: a request's private channel starts a ServerRunner, a
//! control exchange goes to [`super::control_plane`].
//!
//! **One connection per pair.** If both nodes dial each other at the same
//! moment, two connections exist for a while. Both nodes prefer the one
//! dialed by the node with the smaller id (the same choice on both sides),
//! open new channels only on it, and the node that dialed the other one
//! closes it once no channel runs on it.
//!
//! **Heartbeats.** Every `cluster.heartbeat_ms` a Ping goes to each
//! connected partner; its answer refreshes the partner's availability and
//! round-trip time, and no answer within `cluster.heartbeat_timeout_ms`
//! makes it unavailable ([`super::availability`]).
//!
//! **Reverse connect.** When a direct dial fails (the partner's firewall
//! drops what we send), this node asks a relay, a partner both can reach,
//! to tell the partner to dial back (`RelayDialBack` → `DialMe`). The
//! waiting runners get the connection the partner then dials; if no relay
//! manages it within `cluster.reverse_connect_timeout_ms`, they get an
//! error that names both attempts. Partners marked `keep_connected` are
//! dialed again whenever their connection is lost, so a node behind a
//! firewall stays reachable through its own outbound connection.
//!
//! Dialing runs in tasks of its own, never in the mailbox, so a slow or
//! unreachable partner does not hold up requests to other partners.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::availability::Availability;
use super::context::{Actors, Core, RunHandle};
use super::server_runner::{ServerRunner, ServerRunnerArgs};
use crate::protocol::control::{Answer, Ask, StreamKind};
use crate::protocol::ErrorCode;
use crate::transport::endpoint::CLOSE_WRONG_PEER;
use crate::transport::{self, control, TransportError};

/// What Connections needs: the node's core, its endpoint, the availability
/// table it keeps, the actors it wakes, and what the ServerRunners and the
/// control plane it starts need. Cloned for every stream, so one `Arc`.
#[derive(Clone)]
pub struct ConnectionsContext(Arc<ConnectionsParts>);

impl std::ops::Deref for ConnectionsContext {
    type Target = ConnectionsParts;

    fn deref(&self) -> &ConnectionsParts {
        &self.0
    }
}

impl ConnectionsContext {
    pub fn new(parts: ConnectionsParts) -> ConnectionsContext {
        ConnectionsContext(Arc::new(parts))
    }
}

/// The parts of a [`ConnectionsContext`].
pub struct ConnectionsParts {
    pub core: Core,
    pub endpoint: quinn::Endpoint,
    pub dial: crate::transport::DialConfig,
    pub availability: Arc<Availability>,
    pub actors: Actors,
    pub run: RunHandle,
}

/// QUIC application close codes; 1 ([`CLOSE_WRONG_PEER`]) is the
/// transport's, for a peer whose certificate is not who was expected.
pub const CLOSE_SHUTDOWN: u32 = 3;
pub const CLOSE_UNKNOWN_PARTNER: u32 = 4;
/// A duplicate connection of a pair, closed once idle.
pub const CLOSE_DUPLICATE: u32 = 5;

/// QUIC stream error code for a stream refused before it was served.
pub const STREAM_REFUSED: u32 = 1;

/// QUIC application close code for a connection over the partner's limit.
pub const CLOSE_OVER_LIMIT: u32 = 6;
/// QUIC application close code for a connection whose partner's
/// certificate the node's reloaded trust refuses (revoked, expired).
pub const CLOSE_CERTIFICATE_REFUSED: u32 = 7;

/// Why a connection to a partner could not be had.
#[derive(Clone, Debug)]
pub struct ConnectError {
    pub code: ErrorCode,
    pub message: String,
}

/// A live connection to a partner and what is known of it.
#[derive(Clone, Debug)]
pub struct Link {
    pub conn: quinn::Connection,
    /// Whether this node dialed it.
    pub dialed_by_me: bool,
    /// How it came about, for job logs ("dialed by a", "dialed back by b
    /// through reverse connect via c").
    pub origin: String,
    channels: Arc<AtomicUsize>,
    seq: u64,
    registered: Instant,
}

impl Link {
    /// Counts a channel on this link until the guard is dropped (an idle
    /// duplicate link is closed only when it carries none).
    pub fn channel_guard(&self) -> ChannelGuard {
        self.channels.fetch_add(1, Ordering::Relaxed);
        ChannelGuard(self.channels.clone())
    }

    fn is_live(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

/// A channel running on a [`Link`]; see [`Link::channel_guard`].
pub struct ChannelGuard(Arc<AtomicUsize>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type LinkReply = RpcReplyPort<Result<Link, ConnectError>>;

pub enum ConnectionsMsg {
    /// The link to a partner (by id), dialing it if needed; `reverse`
    /// allows reverse connect when the direct dial fails.
    Get { partner: String, reverse: bool, reply: LinkReply },
    /// Dial a partner with waiting requests if it is not connected (the
    /// outcome only updates its availability).
    Probe(String),
    /// A direct dial ended.
    Dialed { partner: String, result: Result<quinn::Connection, ConnectError>, started: Instant },
    /// The partner dialed us; its identity is verified and it is known.
    Accepted(String, quinn::Connection),
    /// A connection ended (its stream-accept task saw it close).
    Closed { partner: String, stable_id: usize, reason: String },
    /// Reverse connect: the named relay is being asked.
    ReverseVia(String, String),
    /// Reverse connect ended: the relay that got the partner to dial, or
    /// why none did.
    ReverseDone(String, Result<String, String>),
    /// A relay reported a successful dial-back, but the connection never
    /// showed up here.
    ReverseExpired(String, u64),
    /// A relay asks this node to dial `node` back.
    DialBack { node: String, relay: String, reply: RpcReplyPort<Result<(), String>> },
    /// The dial-back ended: a new connection, `Err(None)` when the live
    /// one answered a ping, or why it failed.
    DialedBack { node: String, relay: String, result: Result<quinn::Connection, Option<ConnectError>> },
    /// Heartbeats, duplicate clean-up, keep-connected dials.
    Tick,
    /// A heartbeat's outcome: round-trip milliseconds or why it failed.
    Heartbeat(String, Result<f64, String>),
    /// Live connection count per partner.
    Counts(RpcReplyPort<BTreeMap<String, usize>>),
    /// The node's TLS files were reloaded: close every connection whose
    /// partner's certificate the new trust refuses.
    Recheck(Arc<crate::transport::NodeIdentity>),
}

/// A dial in progress to one partner.
struct Pending {
    waiters: Vec<LinkReply>,
    reverse: bool,
    phase: Phase,
    /// Distinguishes this dial from a later one (for expiry timers).
    generation: u64,
}

enum Phase {
    Direct,
    Reverse { direct_error: String, via: Option<String>, started: Instant },
}

pub struct Connections;

pub struct ConnectionsState {
    ctx: ConnectionsContext,
    live: BTreeMap<String, Vec<Link>>,
    pending: BTreeMap<String, Pending>,
    pinging: BTreeSet<String>,
    /// Dial-backs under way, with the asks waiting for each.
    dialing_back: BTreeMap<String, Vec<RpcReplyPort<Result<(), String>>>>,
    seq: u64,
    /// The trust (CA, revocation lists) of the node's latest TLS reload:
    /// a connection whose handshake began before it is checked again
    /// before it is used. `None` until the first reload.
    trust: Option<Arc<crate::transport::NodeIdentity>>,
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

/// Dials `partner` at its configured address, bounded by `connect_timeout_ms`.
async fn dial_direct(ctx: &ConnectionsContext, partner: &str) -> Result<quinn::Connection, ConnectError> {
    let Some(address) = ctx.core.config.partner(partner).map(|p| p.address) else {
        return Err(unknown_partner(ctx, partner));
    };
    let limit = Duration::from_millis(ctx.core.config.connect_timeout_ms);
    match tokio::time::timeout(limit, transport::dial_with(&ctx.endpoint, Some(ctx.dial.current()), address, partner))
        .await
    {
        Ok(r) => r.map_err(|e| dial_error(partner, &e)),
        Err(_) => Err(ConnectError {
            code: ErrorCode::Connection,
            message: format!("direct dial to {partner} at {address} got no answer within {} ms", limit.as_millis()),
        }),
    }
}

fn unknown_partner(ctx: &ConnectionsContext, partner: &str) -> ConnectError {
    ConnectError {
        code: ErrorCode::UnknownPartner,
        message: format!("partner {partner} is not configured on node {}", ctx.core.config.node_id),
    }
}

/// The link to `partner`, dialing (and reverse connecting) if needed.
pub async fn connect(conns: &ActorRef<ConnectionsMsg>, partner: &str) -> Result<Link, ConnectError> {
    connect_with(conns, partner, true).await
}

/// Like [`connect`], with reverse connect allowed or not.
pub async fn connect_with(
    conns: &ActorRef<ConnectionsMsg>,
    partner: &str,
    reverse: bool,
) -> Result<Link, ConnectError> {
    let partner = partner.to_owned();
    match conns.call(|reply| ConnectionsMsg::Get { partner, reverse, reply }, None).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(_) => Err(ConnectError { code: ErrorCode::Internal, message: "connection manager gave no answer".into() }),
        Err(e) => {
            Err(ConnectError { code: ErrorCode::Internal, message: format!("connection manager unavailable: {e}") })
        }
    }
}

impl ConnectionsState {
    /// The link new channels to `partner` go on: the one dialed by the node
    /// with the smaller id if it is live, else the newest live one.
    fn preferred(&self, partner: &str) -> Option<Link> {
        let by_smaller = |l: &Link| l.dialed_by_me == (self.ctx.core.config.node_id.as_str() < partner);
        let live = self.live.get(partner)?.iter().filter(|l| l.is_live());
        live.max_by_key(|l| (by_smaller(l), l.seq)).cloned()
    }

    fn register(
        &mut self,
        myself: &ActorRef<ConnectionsMsg>,
        partner: &str,
        conn: quinn::Connection,
        dialed_by_me: bool,
        origin: String,
    ) {
        // A handshake that began before a reload was checked against the
        // trust of then: check it against the trust of now.
        if let Some(trust) = &self.trust {
            if let Err(e) = crate::transport::tls::recheck_peer(trust, &conn) {
                let reason = format!("certificate refused after the TLS files were reloaded: {e}");
                tracing::warn!(partner = %partner, %reason, "closing a new connection");
                conn.close(quinn::VarInt::from_u32(CLOSE_CERTIFICATE_REFUSED), reason.as_bytes());
                self.ctx.availability.down(partner, &reason);
                return;
            }
        }
        tracing::info!(partner = %partner, remote = %conn.remote_address(), origin = %origin, "connection up");
        self.seq += 1;
        let link = Link {
            conn: conn.clone(),
            dialed_by_me,
            origin,
            channels: Arc::default(),
            seq: self.seq,
            registered: Instant::now(),
        };
        let list = self.live.entry(partner.to_owned()).or_default();
        list.retain(|l| l.is_live());
        list.push(link.clone());
        if let Some(not_after) = crate::transport::tls::peer_certificate_expiry(&conn) {
            self.ctx.availability.presented(partner, not_after);
        }
        let rtt = conn.rtt().as_secs_f64() * 1000.0;
        if self.ctx.availability.up(partner, Some(rtt)) {
            tracing::info!(partner = %partner, "partner available");
            wake_commander(&self.ctx);
        }
        tokio::spawn(serve_streams(self.ctx.clone(), myself.clone(), partner.to_owned(), link));
    }

    /// Answers everyone waiting for a dial to `partner`.
    fn settle(&mut self, partner: &str, result: Result<Link, ConnectError>) {
        if let Some(p) = self.pending.remove(partner) {
            for w in p.waiters {
                let _ = w.send(result.clone());
            }
        }
        if let Err(e) = &result {
            if self.ctx.availability.down(partner, &e.message) {
                tracing::warn!(partner = %partner, error = %e.message, "partner unavailable");
            }
        }
    }

    fn start_dial(
        &mut self,
        myself: &ActorRef<ConnectionsMsg>,
        partner: &str,
        reverse: bool,
        waiter: Option<LinkReply>,
    ) {
        if let Some(p) = self.pending.get_mut(partner) {
            p.reverse |= reverse;
            p.waiters.extend(waiter);
            return;
        }
        self.seq += 1;
        let pending =
            Pending { waiters: waiter.into_iter().collect(), reverse, phase: Phase::Direct, generation: self.seq };
        self.pending.insert(partner.to_owned(), pending);
        let (ctx, me, partner) = (self.ctx.clone(), myself.clone(), partner.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = dial_direct(&ctx, &partner).await;
            let _ = me.cast(ConnectionsMsg::Dialed { partner, result, started });
        });
    }

    /// Starts reverse connect for a pending dial whose direct attempt failed.
    fn start_reverse(&mut self, myself: &ActorRef<ConnectionsMsg>, partner: &str, direct_error: String) {
        let relays = self.relays(partner);
        let Some(p) = self.pending.get_mut(partner) else { return };
        if relays.is_empty() {
            let message = format!("{direct_error}; reverse connect: no other partner to ask as a relay");
            return self.settle(partner, Err(ConnectError { code: ErrorCode::Connection, message }));
        }
        p.phase = Phase::Reverse { direct_error, via: None, started: Instant::now() };
        tracing::info!(partner = %partner, relays = ?relays, "direct dial failed; trying reverse connect");
        let (ctx, me, partner) = (self.ctx.clone(), myself.clone(), partner.to_owned());
        tokio::spawn(async move {
            let result = reverse_connect(&ctx, &me, &partner, relays).await;
            let _ = me.cast(ConnectionsMsg::ReverseDone(partner, result));
        });
    }

    /// Partners that may relay a dial-back to `target`: the configured
    /// relays, else every other partner, those we are connected to first.
    fn relays(&self, target: &str) -> Vec<String> {
        let configured = &self.ctx.core.config.cluster.relays;
        if !configured.is_empty() {
            return configured.iter().filter(|r| r.as_str() != target).cloned().collect();
        }
        let mut all: Vec<(bool, String)> = self
            .ctx
            .core
            .config
            .partners
            .iter()
            .filter(|p| p.id != target)
            .map(|p| (self.preferred(&p.id).is_none(), p.id.clone()))
            .collect();
        all.sort();
        all.into_iter().map(|(_, p)| p).collect()
    }

    fn tick(&mut self, myself: &ActorRef<ConnectionsMsg>) {
        if *self.ctx.core.shutdown.borrow() {
            return;
        }
        let limit = Duration::from_millis(self.ctx.core.config.cluster.heartbeat_timeout_ms);
        let partners: Vec<String> = self.live.keys().cloned().collect();
        for partner in partners {
            self.retire_duplicates(&partner);
            let Some(link) = self.preferred(&partner) else { continue };
            if !self.pinging.insert(partner.clone()) {
                continue;
            }
            let me = myself.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = match control::ask(&link.conn, &Ask::Ping, limit).await {
                    Ok(Answer::Pong) => Ok(t0.elapsed().as_secs_f64() * 1000.0),
                    Ok(other) => Err(format!("unexpected answer to a heartbeat: {other:?}")),
                    Err(e) => Err(format!("heartbeat: {e}")),
                };
                let _ = me.cast(ConnectionsMsg::Heartbeat(partner, r));
            });
        }
        let keep: Vec<String> =
            self.ctx.core.config.partners.iter().filter(|p| p.keep_connected).map(|p| p.id.clone()).collect();
        for partner in keep {
            if self.preferred(&partner).is_none() && !self.pending.contains_key(&partner) {
                self.start_dial(myself, &partner, false, None);
            }
        }
    }

    /// Closes the duplicate links to `partner` that this node dialed and
    /// that carry no channel; the peer makes the same choice of preferred link.
    fn retire_duplicates(&mut self, partner: &str) {
        let Some(keep) = self.preferred(partner) else { return };
        // The peer must have seen the preferred link too before it stops
        // opening channels on this one.
        let settled = Duration::from_millis(2 * self.ctx.core.config.cluster.heartbeat_ms);
        let Some(list) = self.live.get_mut(partner) else { return };
        list.retain(|l| {
            let idle_duplicate = l.seq != keep.seq
                && l.dialed_by_me
                && l.is_live()
                && l.channels.load(Ordering::Relaxed) == 0
                && keep.registered.elapsed() > settled;
            if idle_duplicate {
                tracing::info!(partner = %partner, origin = %l.origin, "closing a duplicate connection");
                l.conn.close(quinn::VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
            }
            !idle_duplicate && l.is_live()
        });
    }
}

fn wake_commander(ctx: &ConnectionsContext) {
    ctx.actors.wake_commander();
}

/// Asks each relay in turn to get `target` to dial us; the relay's name on
/// success. The relay answers once the target's dial succeeded or failed.
async fn reverse_connect(
    ctx: &ConnectionsContext,
    me: &ActorRef<ConnectionsMsg>,
    target: &str,
    relays: Vec<String>,
) -> Result<String, String> {
    let limit = Duration::from_millis(ctx.core.config.cluster.reverse_connect_timeout_ms);
    let deadline = tokio::time::Instant::now() + limit;
    let mut failures = Vec::new();
    for relay in relays {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            failures.push(format!("{relay}: not asked, time was up"));
            continue;
        }
        let _ = me.cast(ConnectionsMsg::ReverseVia(target.to_owned(), relay.clone()));
        let link = match tokio::time::timeout(left, connect_with(me, &relay, false)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                failures.push(format!("{relay}: {}", e.message));
                continue;
            }
            Err(_) => {
                failures.push(format!("{relay}: not reached within {} ms", limit.as_millis()));
                continue;
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match control::ask(&link.conn, &Ask::RelayDialBack { target: target.to_owned() }, left).await {
            Ok(Answer::Dialed) => return Ok(relay),
            Ok(Answer::Refused { message, .. }) => failures.push(format!("{relay}: {message}")),
            Ok(other) => failures.push(format!("{relay}: unexpected answer {other:?}")),
            Err(e) => failures.push(format!("{relay}: {e}")),
        }
    }
    Err(failures.join("; "))
}

impl Actor for Connections {
    type Msg = ConnectionsMsg;
    type State = ConnectionsState;
    type Arguments = ConnectionsContext;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: ConnectionsContext,
    ) -> Result<Self::State, ActorProcessingErr> {
        let every = Duration::from_millis(ctx.core.config.cluster.heartbeat_ms);
        myself.send_interval(every, || ConnectionsMsg::Tick);
        // Keep-connected partners are dialed at once, not a tick later.
        myself.cast(ConnectionsMsg::Tick)?;
        Ok(ConnectionsState {
            ctx,
            live: BTreeMap::new(),
            pending: BTreeMap::new(),
            pinging: Default::default(),
            dialing_back: BTreeMap::new(),
            seq: 0,
            trust: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionsMsg::Get { partner, reverse, reply } => {
                if let Some(l) = state.preferred(&partner) {
                    let _ = reply.send(Ok(l));
                } else if state.ctx.core.config.partner(&partner).is_none() {
                    let _ = reply.send(Err(unknown_partner(&state.ctx, &partner)));
                } else {
                    state.start_dial(&myself, &partner, reverse, Some(reply));
                }
            }
            ConnectionsMsg::Probe(partner) => {
                if state.preferred(&partner).is_none()
                    && state.ctx.core.config.partner(&partner).is_some()
                    && !state.pending.contains_key(&partner)
                {
                    state.start_dial(&myself, &partner, true, None);
                }
            }
            ConnectionsMsg::Dialed { partner, result, started } => match result {
                Ok(conn) => {
                    let origin = format!("dialed by {}", state.ctx.core.config.node_id);
                    state.register(&myself, &partner, conn, true, origin);
                    let link = state.preferred(&partner).ok_or_else(|| ConnectError {
                        code: ErrorCode::Connection,
                        message: format!("connection to {partner} closed as soon as it opened"),
                    });
                    if state.pending.get(&partner).is_some_and(|p| matches!(p.phase, Phase::Direct)) {
                        state.settle(&partner, link);
                    }
                }
                Err(e) => {
                    tracing::warn!(partner = %partner, error = %e.message, elapsed_ms = started.elapsed().as_millis() as u64, "dial failed");
                    let reverse = state.pending.get(&partner).is_some_and(|p| p.reverse)
                        && e.code == ErrorCode::Connection
                        && !*state.ctx.core.shutdown.borrow();
                    if !state.pending.get(&partner).is_some_and(|p| matches!(p.phase, Phase::Direct)) {
                        // Already settled by a connection the partner dialed.
                    } else if reverse {
                        state.start_reverse(&myself, &partner, e.message);
                    } else {
                        state.settle(&partner, Err(e));
                    }
                }
            },
            ConnectionsMsg::Accepted(partner, conn) => {
                let limit = state.ctx.core.config.limits.connections;
                let theirs =
                    state.live.get(&partner).map_or(0, |l| l.iter().filter(|l| l.is_live() && !l.dialed_by_me).count());
                let idle_oldest = state.live.get(&partner).and_then(|l| {
                    l.iter()
                        .filter(|l| l.is_live() && !l.dialed_by_me && l.channels.load(Ordering::Relaxed) == 0)
                        .min_by_key(|l| l.seq)
                        .cloned()
                });
                if let (true, Some(old)) = (theirs >= limit, idle_oldest) {
                    // A partner that dials again (its old path died, which it
                    // noticed first) replaces its oldest idle connection.
                    let reason =
                        format!("replaced by a newer connection from {partner} (limits.connections = {limit})");
                    tracing::info!(partner = %partner, "{reason}");
                    old.conn.close(quinn::VarInt::from_u32(CLOSE_OVER_LIMIT), reason.as_bytes());
                } else if theirs >= limit {
                    let reason = format!(
                        "partner {partner} already holds {theirs} connections to node {} (limits.connections = {limit})",
                        state.ctx.core.config.node_id
                    );
                    crate::partner_warning!(state.ctx.run.budgets.of(&partner), partner = %partner, %reason, "refused a connection");
                    conn.close(quinn::VarInt::from_u32(CLOSE_OVER_LIMIT), reason.as_bytes());
                    return Ok(());
                }
                let origin = match state.pending.get(&partner).map(|p| &p.phase) {
                    Some(Phase::Reverse { via, started, .. }) => format!(
                        "dialed back by {partner} through reverse connect via {} ({} ms after asking)",
                        via.as_deref().unwrap_or("a relay"),
                        started.elapsed().as_millis()
                    ),
                    _ => format!("dialed by {partner}"),
                };
                state.register(&myself, &partner, conn, false, origin);
                if state.pending.contains_key(&partner) {
                    if let Some(l) = state.preferred(&partner) {
                        state.settle(&partner, Ok(l));
                    }
                }
            }
            ConnectionsMsg::Closed { partner, stable_id, reason } => {
                if let Some(list) = state.live.get_mut(&partner) {
                    list.retain(|l| l.conn.stable_id() != stable_id && l.is_live());
                    if list.is_empty() {
                        state.live.remove(&partner);
                        if !*state.ctx.core.shutdown.borrow() && state.ctx.availability.down(&partner, &reason) {
                            tracing::warn!(partner = %partner, reason = %reason, "partner unavailable");
                        }
                    }
                }
            }
            ConnectionsMsg::ReverseVia(partner, relay) => {
                if let Some(Pending { phase: Phase::Reverse { via, .. }, .. }) = state.pending.get_mut(&partner) {
                    *via = Some(relay);
                }
            }
            ConnectionsMsg::ReverseDone(partner, result) => {
                let Some(p) = state.pending.get(&partner) else { return Ok(()) };
                let Phase::Reverse { direct_error, .. } = &p.phase else { return Ok(()) };
                match result {
                    Ok(relay) => {
                        // The partner's connection may still be on its way
                        // through our accept path; give it a moment.
                        tracing::info!(partner = %partner, relay = %relay, "relay reports the partner dialed back");
                        let generation = p.generation;
                        myself.send_after(Duration::from_secs(2), move || {
                            ConnectionsMsg::ReverseExpired(partner, generation)
                        });
                    }
                    Err(why) => {
                        let message =
                            format!("cannot reach partner {partner}: {direct_error}; reverse connect failed: {why}");
                        state.settle(&partner, Err(ConnectError { code: ErrorCode::Connection, message }));
                    }
                }
            }
            ConnectionsMsg::ReverseExpired(partner, generation) => {
                if state.pending.get(&partner).is_some_and(|p| p.generation == generation) {
                    let message = format!(
                        "cannot reach partner {partner}: a relay reported that it dialed back, but no connection arrived"
                    );
                    state.settle(&partner, Err(ConnectError { code: ErrorCode::Connection, message }));
                }
            }
            ConnectionsMsg::DialBack { node, relay, reply } => {
                if state.ctx.core.config.partner(&node).is_none_or(|p| p.id != node) {
                    let _ =
                        reply.send(Err(format!("node {} does not know partner {node}", state.ctx.core.config.node_id)));
                    return Ok(());
                }
                if let Some(waiting) = state.dialing_back.get_mut(&node) {
                    waiting.push(reply); // one dial answers every ask meanwhile
                    return Ok(());
                }
                state.dialing_back.insert(node.clone(), vec![reply]);
                let (ctx, me) = (state.ctx.clone(), myself.clone());
                let live = state.preferred(&node);
                tokio::spawn(async move {
                    // A connection that still answers serves the node too (it
                    // holds the same connection); a stale one does not.
                    if let Some(link) = live {
                        let limit = Duration::from_millis(ctx.core.config.cluster.heartbeat_timeout_ms);
                        if matches!(control::ask(&link.conn, &Ask::Ping, limit).await, Ok(Answer::Pong)) {
                            let _ = me.cast(ConnectionsMsg::DialedBack { node, relay, result: Err(None) });
                            return;
                        }
                    }
                    // Only a real dial counts against the asker's rate.
                    if let Err(over) = ctx.run.budgets.of(&relay).dial_back(Instant::now()) {
                        let e = ConnectError { code: ErrorCode::Protocol, message: over.to_string() };
                        let _ = me.cast(ConnectionsMsg::DialedBack { node, relay, result: Err(Some(e)) });
                        return;
                    }
                    let result = dial_direct(&ctx, &node).await.map_err(Some);
                    let _ = me.cast(ConnectionsMsg::DialedBack { node, relay, result });
                });
            }
            ConnectionsMsg::DialedBack { node, relay, result } => {
                let waiting = state.dialing_back.remove(&node).unwrap_or_default();
                let answer = match result {
                    Ok(conn) => {
                        let origin = format!("dialed back to {node} at its request (relayed by {relay})");
                        state.register(&myself, &node, conn, true, origin);
                        Ok(())
                    }
                    Err(None) => Ok(()), // the live connection answered
                    Err(Some(e)) => Err(e.message),
                };
                for reply in waiting {
                    let _ = reply.send(answer.clone());
                }
            }
            ConnectionsMsg::Tick => state.tick(&myself),
            ConnectionsMsg::Heartbeat(partner, result) => {
                state.pinging.remove(&partner);
                // A ping of a link this node has since dropped (closed,
                // or refused after a TLS reload) says nothing new, and
                // must not replace why it was dropped.
                if !state.live.contains_key(&partner) {
                    return Ok(());
                }
                match result {
                    Ok(rtt) => {
                        if state.ctx.availability.up(&partner, Some(rtt)) {
                            tracing::info!(partner = %partner, "partner available again");
                            wake_commander(&state.ctx);
                        }
                    }
                    Err(why) if !*state.ctx.core.shutdown.borrow() => {
                        if state.ctx.availability.down(&partner, &why) {
                            tracing::warn!(partner = %partner, reason = %why, "partner unavailable");
                        }
                    }
                    Err(_) => {}
                }
            }
            ConnectionsMsg::Recheck(identity) => {
                state.trust = Some(identity.clone());
                let mut refused = Vec::new();
                for (partner, links) in &mut state.live {
                    links.retain(|link| match crate::transport::tls::recheck_peer(&identity, &link.conn) {
                        Ok(()) => true,
                        Err(e) => {
                            let reason = format!("certificate refused after the TLS files were reloaded: {e}");
                            tracing::warn!(partner = %partner, %reason, "closing connection");
                            link.conn.close(quinn::VarInt::from_u32(CLOSE_CERTIFICATE_REFUSED), reason.as_bytes());
                            refused.push((partner.clone(), reason));
                            false
                        }
                    });
                }
                // Forgotten at once, so the close that follows does not
                // replace the cause with a bare "closed".
                state.live.retain(|_, links| !links.is_empty());
                for (partner, reason) in refused {
                    state.ctx.availability.down(&partner, &reason);
                }
            }
            ConnectionsMsg::Counts(reply) => {
                let counts = state
                    .live
                    .iter()
                    .map(|(p, l)| (p.clone(), l.iter().filter(|l| l.is_live()).count()))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let _ = reply.send(counts);
            }
        }
        Ok(())
    }
}

/// Accepts the partner's streams on one connection until it closes.
async fn serve_streams(ctx: ConnectionsContext, conns: ActorRef<ConnectionsMsg>, partner: String, link: Link) {
    let conn = link.conn.clone();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(ctx.clone(), conns.clone(), partner.clone(), link.clone(), send, recv));
            }
            Err(e) => {
                let reason = transport::channel::describe_connection(&e);
                tracing::info!(partner = %partner, reason = %reason, "connection closed");
                let reason = format!("connection to {partner} lost: {reason}");
                let _ = conns.cast(ConnectionsMsg::Closed { partner, stable_id: conn.stable_id(), reason });
                return;
            }
        }
    }
}

/// Reads what a stream carries and hands it on.
async fn serve_stream(
    ctx: ConnectionsContext,
    conns: ActorRef<ConnectionsMsg>,
    partner: String,
    link: Link,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let budget = ctx.run.budgets.of(&partner);
    let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, why: String| {
        crate::partner_warning!(budget, partner = %partner, reason = %why, "refused a stream");
        let _ = recv.stop(quinn::VarInt::from_u32(STREAM_REFUSED));
        let _ = send.reset(quinn::VarInt::from_u32(STREAM_REFUSED));
    };
    // Counted from the moment it is accepted until whatever serves it ends.
    let slot = match budget.stream() {
        Ok(slot) => slot,
        Err(over) => return refuse(&mut send, &mut recv, over.to_string()),
    };
    // The link counts it too (a link carrying one is not idle), whatever
    // the stream turns out to carry.
    let guard = link.channel_guard();
    let limit = Duration::from_millis(ctx.core.config.limits.handshake_timeout_ms);
    let kind = match control::read_kind(&mut recv, limit).await {
        Ok(Some(b)) => StreamKind::from_byte(b).ok_or(format!("unknown stream kind byte 0x{b:02x}")),
        Ok(None) => return,
        Err(e) => Err(format!("no stream kind: {e} (limits.handshake_timeout_ms)")),
    };
    match kind {
        Ok(StreamKind::Request) => {
            let args = ServerRunnerArgs { ctx: ctx.run.clone(), partner: partner.clone(), send, recv, guard, slot };
            if let Err(e) = Actor::spawn(None, ServerRunner, args).await {
                tracing::error!(partner = %partner, error = %e, "cannot start a ServerRunner");
            }
        }
        Ok(StreamKind::SetStream) => {
            super::set_stream::serve(ctx.run.clone(), partner.clone(), send, recv).await;
            drop((slot, guard));
        }
        Ok(StreamKind::Control) => match budget.ask() {
            Ok(ask) => {
                super::control_plane::serve(ctx.run.clone(), conns, partner.clone(), send, recv).await;
                drop((ask, slot, guard));
            }
            Err(over) => {
                // Said to the asker too (a small, bounded answer), unread.
                crate::partner_warning!(budget, partner = %partner, reason = %over, "refused a control ask");
                let answer = Answer::Refused { code: ErrorCode::Protocol, message: over.to_string() };
                let _ = recv.stop(quinn::VarInt::from_u32(STREAM_REFUSED));
                let _ = control::answer(&mut send, &answer).await;
            }
        },
        Err(why) => refuse(&mut send, &mut recv, why),
    }
}

/// Completes an incoming connection: verifies the peer is a configured
/// partner, or closes it with a reason the peer can read.
pub async fn admit(ctx: ConnectionsContext, conns: ActorRef<ConnectionsMsg>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    match transport::accept(incoming).await {
        Ok((conn, peer)) => {
            if ctx.core.config.partner(&peer).is_none_or(|p| p.id != peer) {
                let reason = format!("node {} does not know partner {peer}", ctx.core.config.node_id);
                tracing::warn!(partner = %peer, remote = %remote, "refused connection: unknown partner");
                conn.close(quinn::VarInt::from_u32(CLOSE_UNKNOWN_PARTNER), reason.as_bytes());
                return;
            }
            let _ = conns.cast(ConnectionsMsg::Accepted(peer, conn));
        }
        Err(e) => tracing::warn!(remote = %remote, error = %e, "refused connection"),
    }
}
