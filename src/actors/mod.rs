//! The node's actors (ractor) and the per-request runners.
//!
//! - [`supervisor`]: starts the long-lived actors and restarts a failed one.
//! - [`connections`]: one QUIC connection per partner, whichever side
//!   dialed it; heartbeats, reverse connect, keep-connected partners;
//!   accepts the partner's streams and starts a ServerRunner for each
//!   private channel.
//! - [`control_plane`]: answers partners' control asks (heartbeat,
//!   handover, query, dial-back).
//! - [`availability`]: what this node knows of each partner's reachability.
//! - [`partner_budget`]: what each partner may cost this node, counted.
//! - [`commander`]: starts a ClientRunner per queued request, within the
//!   concurrency limit.
//! - [`client_runner`]: the requester's side of one request.
//! - [`server_runner`]: the requested side of one request.
//! - [`drive`]: the session loop both runners share; the sending side's
//!   block pump (RetrieveRunner) lives in [`crate::transfer::retrieve`].
//!
//! Mailboxes carry control only (wake, cancel, supervision); file blocks
//! never pass through them.

pub mod availability;
pub mod client_runner;
pub mod commander;
pub mod connections;
pub mod control_plane;
pub mod drive;
pub mod partner_budget;
pub mod server_runner;
pub mod supervisor;
