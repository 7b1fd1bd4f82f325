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
//! - [`channel_run`]: the loop that runs one request's session on its
//!   private channel, shared by both runners; the sending side's block pump
//!   (RetrieveRunner) lives in [`crate::transfer::retrieve`].
//! - [`task_runner`]: walks a rule's task list for a request, persisting
//!   the cursor after each task.
//! - [`intake`]: checks and records a submission and queues it (a file
//!   set: resolves it and records the set with one member per file).
//! - [`set_keeper`]: keeps each file set's totals and status in step with
//!   its members.
//! - [`set_release`]: `delivery = all`: the sender asks the receiver to
//!   put a verified set's held files under their final names, and the
//!   receiver does.
//! - [`set_stream`]: a pushed set's small files back to back on one
//!   stream (the leader on the sender, the batch commits on the receiver).
//! - [`sets_in_use`]: the sets a partner's streams and releases work on
//!   here now, which the retention sweep passes over.
//! - [`context`]: the narrow handles each actor is given ([`context::Core`],
//!   [`context::Intake`], [`context::RunHandle`]) and the node's parts they
//!   are made from ([`context::NodeContext`]); the node builds them, so
//!   nothing here imports the node.
//!
//! Mailboxes carry control only (wake, cancel, supervision); file blocks
//! never pass through them.

pub mod availability;
pub mod channel_run;
pub mod client_runner;
pub mod commander;
pub mod connections;
pub mod context;
pub mod control_plane;
pub mod intake;
pub mod notice_queue;
pub mod partner_budget;
pub mod partner_share;
pub mod retention;
pub mod server_runner;
pub mod set_keeper;
pub mod set_listing;
pub mod set_release;
pub mod set_stream;
pub mod sets_in_use;
pub mod supervisor;
pub mod task_runner;

/// Audit events go to one dedicated target, separate from diagnostics.
pub const AUDIT: &str = "ferry::audit";
