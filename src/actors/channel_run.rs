//! The loop that runs one request's session on its private channel, shared
//! by the ClientRunner and the ServerRunner.
//!
//! It feeds the [`Session`] what arrives (frames from the peer, frames from
//! the RetrieveRunner, operator control) and carries out what the session
//! returns: sending, judging an incoming request, starting the block pump or
//! the block writer, verifying and delivering, and recording every
//! transition in the store.
//!
//! Crash guarantees made here: the final state of a request (`Done`,
//! `InError`, `Interrupted`, `Cancelled`) is flushed to disk before the
//! runner ends; the receiver delivers (fsynced rename) before it echoes
//! `EndTransfer`, so a sender that saw the echo knows the file is durable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;

use super::context::{Core, RunHandle};
use super::partner_budget;
use super::task_runner;
use super::AUDIT;
use crate::config::OnResumeMismatch;
use crate::lifecycle;
use crate::protocol::names::{check_entry_path, is_folder_entry};
use crate::protocol::{
    Digest, Direction, EndTransfer, ErrorCode, Failure, Message, Output, Plan, Request, RequestId, Role as SessionRole,
    Session,
};
use crate::store::{now_ms, RequestRecord, RestartPoint, Role, Status, Step, TargetMode};
use crate::tasks::TaskList;
use crate::transfer::receive::{self, BlockWriter, RestartPoints};
use crate::transfer::retrieve::{self, PumpEvent, Source};
use crate::transfer::{hash_prefix_of, Prefix};
use crate::transport::channel::{Due, ReadLimits};
use crate::transport::{ChannelError, FrameReader, FrameWriter};

/// How often progress is written to the store during a transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How long to look for the peer's own error after our write failed (and
/// for the answer to one question after a run ended).
const LAST_WORDS: Duration = Duration::from_secs(2);

/// How often a push requester asks for the receiver's restart point, 100
/// ms apart and within `LAST_WORDS` in all, while the receiver still
/// records its interruption.
const RESTART_POINT_ASKS: usize = 20;

/// Operator and node commands to a running request.
#[derive(Debug)]
pub enum Command {
    Cancel(String),
    /// Operator pause: `Interrupted`, partial file and restart point kept,
    /// not retried until an operator restarts it.
    Stop,
    Shutdown,
}

/// Local files of the request, known once the request is.
#[derive(Debug, Default)]
pub struct Files {
    /// Sender: the source file, opened inside the rule's send folder.
    pub source: Option<Source>,
    /// Receiver: the rule's receive folder.
    pub recv_dir: Option<PathBuf>,
    /// The hashed prefix of the local file where a resume would start
    /// (receiver: its partial file; sender: its source).
    pub prefix: Option<Prefix>,
    /// Receiver: bytes the work file held before this attempt.
    pub work_len: u64,
    /// Requester of a pulled set's file under `delivery = all`: the
    /// verified file stays under its work name until the set's release.
    pub hold: bool,
}

/// The requested side's decision on an incoming request.
enum Judgement {
    Accept {
        size: u64,
        restart: u64,
        prefix_hash: Option<Digest>,
    },
    /// Completed before: confirm with the verified result.
    Complete(EndTransfer),
    Refuse(ErrorCode, String),
}

/// A requested-side run serving a request (see `ChannelRun::claim`).
#[derive(Debug)]
pub struct ServingRun {
    token: u64,
    partner: String,
    superseded: Arc<AtomicBool>,
}

/// Requested side: the run `token` of `partner` now serves `id` (see
/// `ChannelRun::claim`; a set stream claims each file it receives the
/// same way).
pub fn claim_serving(
    serving: &Mutex<BTreeMap<RequestId, ServingRun>>,
    id: &RequestId,
    partner: &str,
    token: u64,
    superseded: &Arc<AtomicBool>,
) -> Result<(), (ErrorCode, String)> {
    let Ok(mut serving) = serving.lock() else {
        return Err((ErrorCode::Internal, "the table of running requests is poisoned".into()));
    };
    if let Some(run) = serving.get(id) {
        if run.partner != partner {
            return Err(id_taken(id));
        }
        if run.token != token {
            run.superseded.store(true, Ordering::Relaxed);
            tracing::info!(request_id = %id, "a newer attempt supersedes a run still open on an old connection");
        }
    }
    let run = ServingRun { token, partner: partner.to_owned(), superseded: superseded.clone() };
    serving.insert(id.clone(), run);
    Ok(())
}

/// Whether the run `token` serves `id` now.
pub fn is_served_by(serving: &Mutex<BTreeMap<RequestId, ServingRun>>, id: &RequestId, token: u64) -> bool {
    serving.lock().is_ok_and(|serving| serving.get(id).is_some_and(|run| run.token == token))
}

/// Removes the work file `work` of `id`, which the run `token` wrote, if
/// that run still holds its claim on `id`. Another run that claimed it
/// since owns the work file now, and keeps owning it after its claim ends
/// (it may have left the file held, or as a resumable partial). Under the
/// table's lock, so no claim comes in between.
pub fn discard_unless_taken(
    serving: &Mutex<BTreeMap<RequestId, ServingRun>>,
    id: &RequestId,
    token: u64,
    work: &std::path::Path,
) {
    let serving = serving.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if serving.get(id).is_some_and(|run| run.token == token) {
        receive::discard(work);
    }
}

/// Runs `f` unless a run serves `id` now, under the table's lock, so no
/// run claims it meanwhile (the retention sweep cancels an abandoned
/// partial this way: never one a resume is reading or writing).
pub fn unless_served<T>(
    serving: &Mutex<BTreeMap<RequestId, ServingRun>>,
    id: &RequestId,
    f: impl FnOnce() -> T,
) -> Option<T> {
    let serving = serving.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    (!serving.contains_key(id)).then(f)
}

/// The run `token` no longer serves `id` (a newer run's claim stays).
pub fn release_serving(serving: &Mutex<BTreeMap<RequestId, ServingRun>>, id: &RequestId, token: u64) {
    if let Ok(mut serving) = serving.lock() {
        if serving.get(id).is_some_and(|run| run.token == token) {
            serving.remove(id);
        }
    }
}

/// The refusal of a request id that belongs to another request.
fn id_taken(id: &RequestId) -> (ErrorCode, String) {
    (ErrorCode::Protocol, format!("request id {id} belongs to another request"))
}

/// What the reader of a channel holds its peer to (its step limits are set
/// by the runner as the session moves on).
pub fn read_limits(ctx: &Core) -> ReadLimits {
    let limits = &ctx.config.limits;
    ReadLimits {
        max_body: limits.handshake_frame_bytes,
        max_body_setting: "limits.handshake_frame_bytes",
        frame_timeout: Duration::from_millis(limits.frame_timeout_ms),
        next_frame_due: None,
    }
}

/// Files at least this large get a job-log line on how the link carried
/// them ([`link_summary`]); smaller ones would only add a store write each.
const LINK_SUMMARY_BYTES: u64 = 16 << 20;

/// The connection's path as quinn sees it: its round trip, congestion
/// window and MTU now, and its losses since the connection opened.
fn link_summary(conn: &quinn::Connection) -> String {
    let p = conn.stats().path;
    format!(
        "link: round trip {:.2} ms (least {:.2} ms), congestion window {} KiB, MTU {}; since the connection \
         opened {} packets sent, {} lost ({:.2}%), {} congestion events",
        p.rtt.as_secs_f64() * 1000.0,
        p.min_rtt.as_secs_f64() * 1000.0,
        p.cwnd / 1024,
        p.current_mtu,
        p.sent_packets,
        p.lost_packets,
        100.0 * p.lost_packets as f64 / p.sent_packets.max(1) as f64,
        p.congestion_events
    )
}

/// Everything one run of a request needs.
pub struct ChannelRun {
    pub ctx: RunHandle,
    pub partner: String,
    pub session: Session,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    pub conn: Option<quinn::Connection>,
    pub files: Files,
    /// Identifies this run among runs of the same request on this node.
    token: u64,
    /// Set when a newer run of the same request took over (the partner
    /// retried while this run's connection was dying): from then on this
    /// run records nothing and writes nothing.
    superseded: Arc<AtomicBool>,
    /// Requested side: what this transfer holds of its partner's budget.
    reservation: Option<partner_budget::Reservation>,
    /// Receiver: the disk space promised to the bytes still to come.
    room: Option<crate::transfer::room::Promise>,
    /// Whether this node holds a record of the request (the requester
    /// always; the requested side once it recorded the request).
    recorded: bool,
}

impl ChannelRun {
    pub fn new(
        ctx: RunHandle,
        partner: String,
        session: Session,
        (reader, writer): (FrameReader, FrameWriter),
        conn: Option<quinn::Connection>,
        files: Files,
    ) -> ChannelRun {
        let mut writer = writer;
        writer.set_stall_limit(Duration::from_millis(ctx.core.config.limits.frame_timeout_ms));
        ChannelRun {
            ctx,
            partner,
            session,
            reader,
            writer,
            conn,
            files,
            token: crate::determinism::random_u128() as u64,
            superseded: Arc::new(AtomicBool::new(false)),
            reservation: None,
            room: None,
            recorded: false,
        }
    }

    /// Runs the session to its end (the outcome is in the store).
    pub async fn run(self, first: Vec<Output>, control: mpsc::Receiver<Command>) {
        let ctx = self.ctx.clone();
        let token = self.token;
        ctx.open_channels.fetch_add(1, Ordering::Relaxed);
        let id = self.run_inner(first, control).await;
        ctx.open_channels.fetch_sub(1, Ordering::Relaxed);
        release_serving(&ctx.serving, &id, token);
    }

    /// Requested side: this run now serves `id`; an older run of the same
    /// partner still alive (on a connection that is dying) is told it was
    /// superseded. A run of another partner is never touched: the id is
    /// refused instead, before anything is recorded.
    fn claim(&self, id: &RequestId) -> Result<(), (ErrorCode, String)> {
        claim_serving(&self.ctx.serving, id, &self.partner, self.token, &self.superseded)
    }

    async fn run_inner(mut self, first: Vec<Output>, mut control: mpsc::Receiver<Command>) -> RequestId {
        let mut pending: std::collections::VecDeque<Output> = first.into();
        let mut pump: Option<mpsc::Receiver<PumpEvent>> = None;
        let pump_stop = Arc::new(AtomicBool::new(false));
        let mut writer: Option<BlockWriter> = None;
        let mut last_progress = Instant::now();
        let mut shutdown = self.ctx.core.shutdown.clone();
        if self.session.role() == SessionRole::Requester {
            self.recorded = true;
        }
        loop {
            while let Some(out) = pending.pop_front() {
                match out {
                    Output::Send(m) => {
                        if let Err(e) = self.writer.send(&m).await {
                            let more = self.after_write_failure(e).await;
                            pending.extend(more);
                        }
                    }
                    Output::Judge(req) => {
                        tracing::Span::current().record("request_id", tracing::field::display(&req.request_id));
                        let more = match self.judge(&req, &mut control).await {
                            Judgement::Accept { size, restart, prefix_hash } => {
                                self.recorded = true;
                                self.session.accept(size, restart, prefix_hash)
                            }
                            Judgement::Complete(end) => {
                                self.recorded = true;
                                self.session.already_complete(end)
                            }
                            Judgement::Refuse(code, message) => {
                                crate::partner_warning!(self.ctx.budgets.of(&self.partner), code = %code, %message, "refused request");
                                self.session.refuse(code, message)
                            }
                        };
                        pending.extend(more);
                    }
                    Output::CheckPrefix { offset, hash } => {
                        let more = self.check_prefix(offset, hash).await;
                        pending.extend(more);
                    }
                    Output::StartSending(plan) => {
                        self.started(&plan, "sending");
                        match self.files.source.clone() {
                            Some(source) => {
                                let prefix = self.files.prefix.take();
                                let slots = Some(self.ctx.send_pool.slots(&self.partner));
                                pump = Some(retrieve::start(source, plan, prefix, pump_stop.clone(), slots))
                            }
                            None => pending.extend(self.session.fail(ErrorCode::Internal, "no source file".into())),
                        }
                    }
                    Output::StartReceiving(plan) => {
                        self.started(&plan, "receiving");
                        match self.prepare_receive(&plan) {
                            Ok(work) => {
                                let points = RestartPoints {
                                    store: self.ctx.core.store.clone(),
                                    abandoned: self.superseded.clone(),
                                    id: self.session.request_id().clone(),
                                    every_bytes: self.ctx.core.config.restart_interval_bytes,
                                    every: Duration::from_secs(self.ctx.core.config.restart_interval_secs),
                                };
                                let prefix = self.files.prefix.take();
                                writer = Some(BlockWriter::start(work, plan, prefix, Some(points)))
                            }
                            Err((code, msg)) => pending.extend(self.session.fail(code, msg)),
                        }
                    }
                    Output::Write(block) => {
                        let end = block.offset + u64::from(block.raw_len);
                        if let Some(room) = self.room.as_mut() {
                            room.written(u64::from(block.raw_len));
                        }
                        let ok = match writer.as_mut() {
                            Some(w) => w.write(block).await,
                            None => false,
                        };
                        if ok {
                            self.progress(end, &mut last_progress);
                        } else {
                            let (code, msg) = match writer.take() {
                                Some(w) => {
                                    w.finish().await.err().unwrap_or((ErrorCode::Internal, "writer stopped".into()))
                                }
                                None => (ErrorCode::Internal, "no work file open".into()),
                            };
                            pending.extend(self.session.fail(code, msg));
                        }
                    }
                    Output::Verify(theirs) => {
                        let result = self.verify_and_deliver(writer.take(), theirs, &mut control).await;
                        pending.extend(self.session.verified(result));
                    }
                    Output::SenderTasks => {
                        let result = self.post_tasks(&mut control).await;
                        pending.extend(self.session.sender_tasks_done(result));
                    }
                    Output::Done => {
                        if self.holds_file() && self.session.role() == SessionRole::Requested {
                            // Stays `Held` until its set is released.
                            self.record("confirmed; held under its work name until its set is released", |_| {});
                            self.flush().await;
                            continue;
                        }
                        // Post-tasks not run yet (the partner answered
                        // `Complete` to a request this side had not
                        // finished): they run before this side is Done.
                        if let Err((code, message)) = self.post_tasks(&mut control).await {
                            let f = Failure { code, message, origin: crate::protocol::Origin::Local };
                            self.failed(&f);
                            self.flush().await;
                            self.after_failure().await;
                            pending.clear();
                            continue;
                        }
                        let end = self.session.end_transfer().map(|e| (e.bytes, e.hash));
                        self.record("request complete on both sides", |r| lifecycle::complete(r, end, now_ms()));
                        self.flush().await;
                        let end = self.session.end_transfer().cloned();
                        tracing::info!(target: AUDIT, event = "done", request_id = %self.session.request_id(), partner = %self.partner, bytes = end.as_ref().map_or(0, |e| e.bytes));
                    }
                    Output::Failed(f) => {
                        pump_stop.store(true, Ordering::Relaxed);
                        if let Some(w) = writer.take() {
                            // On a resumable failure the written prefix is fsynced and
                            // becomes the restart point: nothing received is sent again.
                            // Recorded before the final state, so one flush covers both.
                            if let (true, Ok(end)) = (lifecycle::keeps_partial_file(f.code), w.finish().await) {
                                let point = RestartPoint { offset: end.bytes, prefix_hash: end.hash };
                                self.record(
                                    &format!(
                                        "interrupted after receiving {} bytes; restart point at {}",
                                        end.bytes, end.bytes
                                    ),
                                    |r| {
                                        r.restart_point = Some(point);
                                        r.transferred = end.bytes;
                                    },
                                );
                            }
                        }
                        if self.recorded {
                            let status = self.failed(&f);
                            if status == Status::Cancelled
                                && f.origin == crate::protocol::Origin::Local
                                && self.session.role() == SessionRole::Requester
                            {
                                // The Cancel just sent may never arrive (the
                                // link may be gone): the partner is owed a
                                // notice until it confirms one, durable with
                                // the flush below.
                                if let Err(e) = self.ctx.core.store.owe_cancel_notice(self.session.request_id()) {
                                    tracing::error!(error = %e, "cannot record an owed cancellation notice");
                                }
                            }
                            self.flush().await;
                            self.after_failure().await;
                            if self.session.role() == SessionRole::Requester
                                && self.session.is_sender() == Some(true)
                                && matches!(f.code, ErrorCode::Stopped | ErrorCode::Connection)
                            {
                                self.learn_restart_point().await;
                            }
                        } else {
                            crate::partner_warning!(self.ctx.budgets.of(&self.partner), code = %f.code, message = %f.message, "request ended before it was recorded");
                        }
                        if !self.recorded
                            && self.session.role() == SessionRole::Requested
                            && f.code == ErrorCode::Cancelled
                        {
                            self.cancelled_before_request();
                        }
                        self.cleanup_after_failure(&f);
                    }
                }
            }
            if self.session.is_finished() {
                break;
            }
            let limits = &self.ctx.core.config.limits;
            let setting = match self.session.plan() {
                Some(_) => "the agreed block size",
                None => "limits.handshake_frame_bytes",
            };
            let due = if self.session.awaits_handshake() {
                Some(Due {
                    within: Duration::from_millis(limits.handshake_timeout_ms),
                    what: "a handshake step",
                    setting: "limits.handshake_timeout_ms",
                })
            } else if self.session.awaits_data() {
                Some(Due {
                    within: Duration::from_millis(limits.frame_timeout_ms),
                    what: "the next block",
                    setting: "limits.frame_timeout_ms",
                })
            } else {
                None
            };
            self.reader.set_step(self.session.frame_limit(limits.handshake_frame_bytes), setting, due);
            // Biased: polling order must not depend on a random draw, so a
            // simulation replays the same interleaving from the same seed.
            tokio::select! {
                biased;
                // Operator commands and shutdown first: they are rarely
                // ready, and a busy channel (the reader always has the next
                // block) must not keep them waiting until the file is done.
                // The reader is cancel-safe, so losing this race costs nothing.
                c = control.recv() => {
                    let more = match c {
                        Some(Command::Cancel(reason)) => self.session.cancel(reason),
                        Some(Command::Stop) => self.session.fail(ErrorCode::Stopped, format!("stopped by an operator on {}", self.ctx.core.config.node_id)),
                        Some(Command::Shutdown) | None => self.session.fail(ErrorCode::Shutdown, format!("node {} is shutting down", self.ctx.core.config.node_id)),
                    };
                    pending.extend(more);
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    pending.extend(self.session.fail(ErrorCode::Shutdown, format!("node {} is shutting down", self.ctx.core.config.node_id)));
                }
                msg = self.reader.next() => {
                    let more = match msg {
                        Ok(Some(m)) => self.session.handle(m),
                        Ok(None) => self.session.channel_lost(self.lost_code(), "partner closed the channel".into()),
                        Err(ChannelError::Lost(why)) => self.session.channel_lost(self.lost_code(), why),
                        Err(ChannelError::Limit(why)) => {
                            self.reader.stop();
                            self.session.fail(ErrorCode::Protocol, why)
                        }
                        // Resumable: a stalled link looks the same.
                        Err(ChannelError::Stalled(why)) => {
                            self.reader.stop();
                            self.session.fail(ErrorCode::Connection, why)
                        }
                        Err(e) => {
                            self.reader.stop();
                            self.session.fail(ErrorCode::BadFrame, e.to_string())
                        }
                    };
                    pending.extend(more);
                }
                ev = async { pump.as_mut().expect("guarded by is_some").recv().await }, if pump.is_some() => {
                    match ev {
                        Some(PumpEvent::Frame { frame, end }) => {
                            match self.writer.send_frame(frame).await {
                                Ok(()) => self.progress(end, &mut last_progress),
                                Err(e) => {
                                    pump = None;
                                    pending.extend(self.after_write_failure(e).await);
                                }
                            }
                        }
                        Some(PumpEvent::Finished(end)) => {
                            pump = None;
                            // How the link carried a large file: what an
                            // operator needs to tell a lossy or long link
                            // from a slow disk (docs/BENCHMARKS.md "Lossy links").
                            if end.bytes >= LINK_SUMMARY_BYTES {
                                if let Some(line) = self.conn.as_ref().map(link_summary) {
                                    self.record(&line, |_| {});
                                }
                            }
                            // A pull's sender: what it sent, for a later
                            // claim that it was delivered, durable before the
                            // EndTransfer that lets the requester deliver. (A
                            // push's sender needs no such record: it is the
                            // requester, and nobody claims to it.)
                            if self.session.role() == SessionRole::Requested {
                                self.record(&format!("sent {} bytes, BLAKE3 {}", end.bytes, end.hash), |r| {
                                    r.transferred = end.bytes;
                                    r.hash = Some(end.hash);
                                });
                                self.flush().await;
                            }
                            pending.extend(self.session.sending_finished(end));
                        }
                        Some(PumpEvent::Failed { code, message }) => {
                            pump = None;
                            pending.extend(self.session.fail(code, message));
                        }
                        None => {
                            pump = None;
                            pending.extend(self.session.fail(ErrorCode::Internal, "block pump ended without a result".into()));
                        }
                    }
                }
            }
        }
        // Let the last message reach the peer before the stream is dropped.
        self.writer.finish();
        self.session.request_id().clone()
    }

    /// Push requester after a stop or a lost channel: what it sent is not
    /// what the receiver holds durably, so it asks the receiver (when the
    /// connection still works) for its record once the receiver has
    /// recorded the interruption, and records the receiver's figure: both
    /// nodes then show the same bytes, the receiver's restart point, where
    /// a restart resumes.
    async fn learn_restart_point(&self) {
        use crate::protocol::control::{Answer, Ask};
        let Some(conn) = self.conn.as_ref().filter(|c| c.close_reason().is_none()) else { return };
        let id = self.session.request_id();
        let deadline = Instant::now() + LAST_WORDS;
        for _ in 0..RESTART_POINT_ASKS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let theirs = match crate::transport::control::ask(conn, &Ask::Query(id.clone()), left).await {
                Ok(Answer::State(Some(state))) => state,
                _ => return,
            };
            if theirs.status == format!("{:?}", Status::Running) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let held = theirs.transferred;
            self.record(
                &format!("{} reports {held} bytes received, kept for a restart to resume from", self.partner),
                |r| r.transferred = held,
            );
            return;
        }
    }

    /// Why the channel was lost: a peer that closed the connection because it
    /// does not know us says so in its close code.
    fn lost_code(&self) -> ErrorCode {
        self.conn
            .as_ref()
            .and_then(|c| c.close_reason())
            .map_or(ErrorCode::Connection, |e| super::connections::close_code(&e))
    }

    /// Our write failed: the peer may have said why before it stopped reading.
    async fn after_write_failure(&mut self, e: ChannelError) -> Vec<Output> {
        if let Ok(Ok(Some(m @ (Message::Error(_) | Message::Cancel(_))))) =
            tokio::time::timeout(LAST_WORDS, self.reader.next()).await
        {
            return self.session.handle(m);
        }
        let why = match (&e, self.conn.as_ref().and_then(|c| c.close_reason())) {
            (_, Some(reason)) => crate::transport::channel::describe_connection(&reason),
            (e, None) => e.to_string(),
        };
        self.session.channel_lost(self.lost_code(), why)
    }

    /// Requested side: decides on an incoming request and records it.
    async fn judge(&mut self, req: &Request, control: &mut mpsc::Receiver<Command>) -> Judgement {
        match self.judge_inner(req, control).await {
            Ok(j) => j,
            Err((code, message)) => Judgement::Refuse(code, message),
        }
    }

    async fn judge_inner(
        &mut self,
        req: &Request,
        control: &mut mpsc::Receiver<Command>,
    ) -> Result<Judgement, (ErrorCode, String)> {
        // An id belongs to the partner it was first recorded with: checked
        // before anything else, and a refusal here touches no other run.
        let existing = self.ctx.core.store.get(&req.request_id).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        if let Some(rec) = &existing {
            if rec.partner != self.partner || rec.role != Role::Requested {
                return Err(id_taken(&rec.id));
            }
            if rec.rule != req.rule || rec.direction != req.direction || rec.requested_name() != req.file_name {
                return Err((
                    ErrorCode::Protocol,
                    format!(
                        "request {} was recorded as {:?} of {:?} under rule {:?}; the partner now names {:?} of {:?} under rule {:?}",
                        rec.id, rec.direction, rec.file_name, rec.rule, req.direction, req.file_name, req.rule
                    ),
                ));
            }
        }
        self.claim(&req.request_id)?;
        let cfg = &self.ctx.core.config;
        let rule = cfg
            .rule(&req.rule)
            .ok_or_else(|| {
                (ErrorCode::UnknownRule, format!("rule {:?} does not exist on node {}", req.rule, cfg.node_id))
            })?
            .clone();
        if !cfg.rule_allows(&rule, &self.partner) {
            return Err((
                ErrorCode::RuleNotAllowed,
                format!("partner {} may not use rule {:?} on node {}", self.partner, req.rule, cfg.node_id),
            ));
        }
        // A plain name, or a file set's relative path (a folder's ends in
        // `/`), checked component by component.
        check_entry_path(&req.file_name).map_err(|why| (ErrorCode::BadFileName, why))?;
        // A folder carries no data.
        if is_folder_entry(&req.file_name) && req.size != 0 {
            return Err((
                ErrorCode::BadFileName,
                format!(
                    "{:?} names a folder, which carries no data, but {} bytes were announced",
                    req.file_name, req.size
                ),
            ));
        }
        if let Some(rec) = &existing {
            if rec.status == Status::Cancelled {
                let (what, me) = (format!("request {}", rec.id), &self.ctx.core.config.node_id);
                return Err(lifecycle::cancelled_refusal(&what, rec, me));
            }
            // The sender of a pull reaches its post-tasks (or Done) only
            // after its requester verified and recorded the file, so a
            // requester asking again claims that delivery. One that does
            // not is not sent the file again, and the post-tasks that ran
            // do not run again.
            let confirmed =
                matches!(rec.step, Step::PostTask | Step::AllDone) || rec.failed_step == Some(Step::PostTask);
            if confirmed && req.direction == Direction::Pull && req.delivered.is_none() {
                return Err((
                    ErrorCode::Protocol,
                    format!(
                        "request {} was delivered to {} and confirmed ({:?}) on node {}; it is not sent again",
                        rec.id, self.partner, rec.status, self.ctx.core.config.node_id
                    ),
                ));
            }
        }
        if req.options.hold {
            // A file of a `delivery = all` set: held verified under its
            // work name until the sender releases the set.
            if req.direction != Direction::Push {
                return Err((ErrorCode::Protocol, "only a pushed file can be held for its set".into()));
            }
            if !rule.receiver.post_tasks.is_empty() {
                return Err((
                    ErrorCode::CapabilityMismatch,
                    format!(
                        "rule {:?} on node {} runs post-tasks on each received file, which a set sent with delivery = all cannot use (its files are delivered together later)",
                        req.rule, cfg.node_id
                    ),
                ));
            }
            if let Some(rec) = existing.as_ref().filter(|r| lifecycle::is_held(r) && !r.delivered) {
                // Verified and held by an earlier attempt: confirmed again.
                let Some(hash) = rec.hash else {
                    return Err((ErrorCode::Internal, "held file without a hash".into()));
                };
                let end = EndTransfer { bytes: rec.transferred, hash };
                self.record("verified and held before; confirming without receiving it again", |r| {
                    lifecycle::held(r, end.bytes, end.hash)
                });
                self.recorded = true;
                self.files.recv_dir = Some(rule.recv_dir_for(&self.partner));
                return Ok(Judgement::Complete(end));
            }
        }
        // This side's pre-tasks run before it accepts (R66's order). The
        // request is recorded first, so the task cursor is durable and a
        // failed task leaves a record to restart from.
        let mut existing = existing;
        let side = if req.direction == Direction::Pull { &rule.sender } else { &rule.receiver };
        let pre_pending = !side.pre_tasks.is_empty()
            && req.delivered.is_none()
            && existing.as_ref().is_none_or(|r| r.step == Step::PreTask && !r.delivered);
        if pre_pending && req.direction == Direction::Pull {
            // The sender's pre-tasks act on the file before it is opened:
            // not through a link the transfer itself would refuse.
            retrieve::check_source_path(&rule.send_dir, &req.file_name, &req.rule, &cfg.node_id)?;
        }
        if pre_pending {
            let line = format!(
                "recorded {:?} of {:?} from {}; its pre-tasks run first",
                req.direction, req.file_name, self.partner
            );
            self.record_requested(req, req.size, existing.is_some(), &line)?;
            self.recorded = true;
            self.tasks_or_command(TaskList::Pre, control).await?;
            existing = self.ctx.core.store.get(&req.request_id).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        }
        // A sender's pre-task may have renamed the file.
        let file_name = existing.as_ref().map_or_else(|| req.file_name.clone(), |r| r.file_name.clone());
        let mut restart = 0;
        let mut prefix_hash = None;
        let size = match req.direction {
            Direction::Pull => {
                if let Some(claim) = &req.delivered {
                    let end = self.check_delivery_claim(req, existing.as_ref(), claim)?;
                    self.record_requested(req, end.bytes, true, "the requester already delivered it; confirming")?;
                    self.recorded = true;
                    // The receiver confirmed the file: this side's
                    // post-tasks, if not all ran before, run now.
                    self.post_tasks(control).await?;
                    return Ok(Judgement::Complete(end));
                }
                let source = retrieve::open_source(&rule.send_dir, &file_name, &req.rule, &cfg.node_id)?;
                // A pulled set's file must still be what the set resolved.
                if let Some(r) = req.options.as_resolved.filter(|_| !is_folder_entry(&file_name)) {
                    if let Some(change) = retrieve::SourceSnapshot::resolved(r.size, u128::from(r.modified_ns))
                        .change_to(&source.snapshot)
                    {
                        return Err((
                            ErrorCode::SourceChanged,
                            format!(
                                "{file_name} on node {} changed after its file set was resolved: {change}",
                                cfg.node_id
                            ),
                        ));
                    }
                }
                let size = source.snapshot.size;
                self.reserve_room(size, req.block_size).await?;
                if let Some(theirs) = req.prefix_hash.filter(|_| req.restart_offset > 0 && req.restart_offset <= size) {
                    let (offset, block_size) = (req.restart_offset, req.block_size);
                    let file = source.file.clone();
                    let mine =
                        crate::determinism::blocking(move || hash_prefix_of(&file, offset, block_size, Some(size)))
                            .await
                            .map_err(|e| (ErrorCode::Internal, e.to_string()))?
                            .map_err(|e| (ErrorCode::Io, format!("cannot read {}: {e}", source.path.display())))?;
                    // A prefix off a block boundary cannot be resumed: as a mismatch.
                    let prefix = mine.map(|hasher| Prefix { offset, hasher });
                    if let Some(prefix) = prefix.filter(|p| p.digest() == theirs) {
                        restart = offset;
                        self.files.prefix = Some(prefix);
                    } else if rule.on_resume_mismatch == OnResumeMismatch::Fail {
                        return Err(mismatch_error(offset, true));
                    }
                }
                self.files.source = Some(source);
                size
            }
            Direction::Push => {
                let dir = rule.recv_dir_for(&self.partner);
                if let Some(rec) = existing.as_ref().filter(|r| r.delivered) {
                    let Some(hash) = rec.hash else {
                        return Err((ErrorCode::Internal, "delivered request without a hash".into()));
                    };
                    self.files.recv_dir = Some(dir.clone());
                    self.finish_interrupted_delivery(&dir, rec)?;
                    self.record_requested(
                        req,
                        rec.size,
                        true,
                        "already delivered; confirming without receiving it again",
                    )?;
                    self.recorded = true;
                    // Post-tasks a crash or a failure left undone run
                    // before the confirmation, as they would before the echo.
                    self.post_tasks(control).await?;
                    return Ok(Judgement::Complete(EndTransfer { bytes: rec.size, hash }));
                }
                let mode = target_mode_of(&self.ctx.core, &req.rule, req.options.target_mode);
                let target = receive::target_path(&dir, &file_name, false)?;
                if !is_folder_entry(&file_name) {
                    refuse_existing_target(&self.ctx.core, mode, &target)?;
                }
                self.reserve_room(req.size, req.block_size).await?;
                let work = receive::work_path(&dir, &req.request_id);
                let point = existing.as_ref().and_then(|r| r.restart_point).filter(|p| p.offset <= req.size);
                let (block_size, size) = (req.block_size, Some(req.size));
                let offer = crate::determinism::blocking(move || receive::resume_offer(&work, point, block_size, size))
                    .await
                    .map_err(|e| (ErrorCode::Internal, e.to_string()))?
                    .map_err(|e| (ErrorCode::Io, format!("cannot read the partial file: {e}")))?;
                let to_come = req.size.saturating_sub(offer.prefix.as_ref().map_or(0, |p| p.offset));
                self.room = Some(self.ctx.room.promise(&dir, &req.request_id, to_come)?);
                self.files.work_len = offer.work_len;
                if let Some(p) = offer.prefix {
                    restart = p.offset;
                    prefix_hash = Some(p.digest());
                    self.files.prefix = Some(p);
                }
                self.files.recv_dir = Some(dir);
                req.size
            }
        };
        let msg = format!("accepted {:?} of {:?} from {}", req.direction, req.file_name, self.partner);
        self.record_requested(req, size, existing.is_some(), &msg)?;
        Ok(Judgement::Accept { size, restart, prefix_hash })
    }

    /// Room for the blocks of a transfer of `size` bytes in the partner's
    /// budget, held until this run ends; waited for (before the costly
    /// checks of a resume) up to `limits.frame_timeout_ms`, then refused as
    /// resumable, so the partner retries it.
    async fn reserve_room(&mut self, size: u64, block_size: u32) -> Result<(), (ErrorCode, String)> {
        let bytes = partner_budget::reservation(size, block_size);
        let wait = Duration::from_millis(self.ctx.core.config.limits.frame_timeout_ms);
        let reserved = self.ctx.budgets.of(&self.partner).reserve(bytes, wait).await.map_err(|over| {
            let me = &self.ctx.core.config.node_id;
            (ErrorCode::Connection, format!("node {me} cannot take this transfer now: {over}; it is retried"))
        })?;
        self.reservation = Some(reserved);
        Ok(())
    }

    /// Pull sender: the requester says it delivered this request before
    /// and lost track. Believed only for a request this node recorded with
    /// this partner (checked by the caller) and whose whole file this node
    /// sent, as its record says (flushed before its `EndTransfer`), with the
    /// claimed count and BLAKE3. Returns this node's own figures.
    fn check_delivery_claim(
        &self,
        req: &Request,
        existing: Option<&RequestRecord>,
        claim: &EndTransfer,
    ) -> Result<EndTransfer, (ErrorCode, String)> {
        let me = &self.ctx.core.config.node_id;
        let Some(rec) = existing else {
            return Err((
                ErrorCode::Protocol,
                format!("request {} says it was delivered, but node {me} holds no record of it", req.request_id),
            ));
        };
        let sent = match rec.hash {
            Some(hash) if rec.transferred == rec.size => EndTransfer { bytes: rec.size, hash },
            _ => {
                return Err((
                    ErrorCode::Protocol,
                    format!(
                        "request {} says it was delivered, but node {me} never finished sending it",
                        req.request_id
                    ),
                ))
            }
        };
        if &sent != claim {
            return Err((
                ErrorCode::Protocol,
                format!(
                    "request {} says {} bytes with BLAKE3 {} were delivered, but node {me} sent {} bytes with BLAKE3 {}",
                    req.request_id, claim.bytes, claim.hash, sent.bytes, sent.hash
                ),
            ));
        }
        Ok(sent)
    }

    /// Records the request on the requested side (new, or running again).
    fn record_requested(&self, req: &Request, size: u64, exists: bool, msg: &str) -> Result<(), (ErrorCode, String)> {
        if exists {
            // Sent again from here on (not a confirmation of what was sent).
            let pull = req.direction == Direction::Pull && req.delivered.is_none();
            self.record(&format!("{msg} (again)"), |r| {
                lifecycle::run_again(r);
                r.size = size;
                if pull {
                    // What an earlier run sent no longer says what this one will.
                    r.hash = None;
                    r.transferred = 0;
                }
            });
            return Ok(());
        }
        let rec = RequestRecord {
            block_size: req.block_size,
            compression: req.options.compression,
            size,
            status: Status::Running,
            step: Step::PreTask,
            target_mode: req.options.target_mode,
            external_job_id: req.external_job_id.clone(),
            transfer_info: req.transfer_info.clone(),
            started_at: Some(now_ms()),
            ..RequestRecord::new(
                req.request_id.clone(),
                Role::Requested,
                &self.partner,
                &req.rule,
                req.direction,
                &req.file_name,
            )
        };
        self.ctx
            .core
            .store
            .insert(rec, msg)
            .map_err(|e| (ErrorCode::Internal, format!("cannot record the request: {e}")))?;
        Ok(())
    }

    /// A receiver that recorded a verified file as delivered but crashed
    /// before (or during) the rename finishes the rename now.
    fn finish_interrupted_delivery(
        &self,
        dir: &std::path::Path,
        rec: &RequestRecord,
    ) -> Result<(), (ErrorCode, String)> {
        let work = receive::work_path(dir, self.session.request_id());
        if work.exists() {
            let final_path = receive::target_path(dir, &rec.file_name, true)?;
            let line = if is_folder_entry(&rec.file_name) {
                receive::discard(&work);
                format!("folder {} made", final_path.display())
            } else {
                receive::deliver_as(&work, &final_path, &delivery_for(&self.ctx.core, rec, &final_path))?
            };
            self.record(&format!("{line} (finishing an interrupted delivery)"), |_| {});
        }
        Ok(())
    }

    /// Push sender: compares the receiver's offered prefix with the source.
    async fn check_prefix(&mut self, offset: u64, theirs: Digest) -> Vec<Output> {
        let Some(source) = self.files.source.clone() else {
            return self.session.fail(ErrorCode::Internal, "no source file".into());
        };
        let file = source.file.clone();
        let Some(block_size) = self.session.plan().map(|p| p.block_size) else {
            return self.session.fail(ErrorCode::Internal, "a resume to check without a plan".into());
        };
        let size = source.snapshot.size;
        let mine =
            match crate::determinism::blocking(move || hash_prefix_of(&file, offset, block_size, Some(size))).await {
                Ok(Ok(h)) => h.map(|hasher| Prefix { offset, hasher }),
                Ok(Err(e)) => {
                    return self.session.fail(ErrorCode::Io, format!("cannot read {}: {e}", source.path.display()))
                }
                Err(e) => return self.session.fail(ErrorCode::Internal, e.to_string()),
            };
        // A prefix off a block boundary cannot be resumed: as a mismatch.
        if let Some(mine) = mine.filter(|p| p.digest() == theirs) {
            self.files.prefix = Some(mine);
            return self.session.resume_checked(true);
        }
        let rule = self.record_snapshot().ok().and_then(|r| self.ctx.core.config.rule(&r.rule).cloned());
        if rule.is_some_and(|r| r.on_resume_mismatch == OnResumeMismatch::Fail) {
            let (code, msg) = mismatch_error(offset, false);
            return self.session.fail(code, msg);
        }
        self.record(
            &format!(
                "the receiver's partial file differs from the source in its first {offset} bytes: starting over from 0"
            ),
            |_| {},
        );
        self.session.resume_checked(false)
    }

    /// The requester cancelled before sending a Request (a request that was
    /// not running): mark this node's record and remove its partial file.
    fn cancelled_before_request(&self) {
        let id = self.session.request_id();
        let Ok(Some(rec)) = self.ctx.core.store.get(id) else { return };
        // Only a request the partner asked for: this node's own requests
        // to it are cancelled by this node's operators.
        // (A set its sender ended in error is cancelled all the same.)
        let ended = rec.status.is_final() && !lifecycle::set::is_ended_by_sender(&rec);
        if rec.partner != self.partner || rec.role != Role::Requested || ended {
            return;
        }
        if lifecycle::is_held(&rec) && rec.delivered {
            // Its set's release was ordered: it finishes, whatever came after.
            return;
        }
        if let Some(rule) = self.ctx.core.config.rule(&rec.rule) {
            receive::discard(&receive::work_path(&rule.recv_dir_for(&self.partner), id));
        }
        self.record(&format!("cancelled by {}", self.partner), |r| {
            r.status = Status::Cancelled;
            r.finished_at = Some(now_ms());
            r.error = Some(crate::store::RequestError {
                code: ErrorCode::Cancelled,
                message: format!("cancelled by {}", self.partner),
            });
        });
        if let Err(e) = self.ctx.core.store.flush_blocking() {
            tracing::error!(error = %e, "cannot flush a cancellation");
        }
    }

    fn prepare_receive(&mut self, plan: &Plan) -> Result<PathBuf, (ErrorCode, String)> {
        if self.files.recv_dir.is_none() {
            // Pull: this node is the requester and receives into its own rule's folder.
            let rec = self.record_snapshot()?;
            let rule = self.ctx.core.config.rule(&rec.rule).ok_or_else(|| {
                (
                    ErrorCode::UnknownRule,
                    format!("rule {:?} does not exist on node {}", rec.rule, self.ctx.core.config.node_id),
                )
            })?;
            self.files.recv_dir = Some(rule.recv_dir_for(&self.partner));
        }
        let dir = self.files.recv_dir.as_ref().expect("set just above");
        if self.room.is_none() {
            // A pulling requester: the room for the bytes still to come
            // (a push's requested side promised it while judging).
            let id = self.session.request_id().clone();
            self.room = Some(self.ctx.room.promise(dir, &id, plan.size.saturating_sub(plan.restart_offset))?);
        }
        std::fs::create_dir_all(dir).map_err(|e| (ErrorCode::Io, format!("cannot create {}: {e}", dir.display())))?;
        let held = self.files.work_len;
        if plan.restart_offset > 0 {
            self.record(
                &format!(
                    "resuming at offset {}; the work file held {held} bytes, so {} bytes are received again",
                    plan.restart_offset,
                    held.saturating_sub(plan.restart_offset)
                ),
                |_| {},
            );
        } else if held > 0 {
            self.record(&format!("starting over from offset 0; the work file held {held} bytes"), |_| {});
        }
        Ok(receive::work_path(dir, self.session.request_id()))
    }

    /// Where the file is delivered; its folders are made (a file set's
    /// relative path), never through a link.
    fn final_path(&self) -> Result<PathBuf, (ErrorCode, String)> {
        let name = &self.session.request().ok_or((ErrorCode::Internal, "no request".to_string()))?.file_name;
        let dir = self.files.recv_dir.as_ref().ok_or((ErrorCode::Internal, "no receive folder".to_string()))?;
        receive::target_path(dir, name, true)
    }

    /// Receiver: checks the fsynced work file against the sender's count and
    /// whole-file hash, records the delivery (flushed) and only then renames
    /// the file into place and fsyncs the folder.
    async fn verify_and_deliver(
        &self,
        writer: Option<BlockWriter>,
        theirs: EndTransfer,
        control: &mut mpsc::Receiver<Command>,
    ) -> Result<EndTransfer, (ErrorCode, String)> {
        let mine = match writer {
            Some(w) => w.finish().await?,
            None => return Err((ErrorCode::Internal, "no work file open".into())),
        };
        if mine != theirs {
            return Err((
                ErrorCode::FileHashMismatch,
                format!(
                    "received {} bytes with BLAKE3 {}; sender sent {} bytes with BLAKE3 {}",
                    mine.bytes, mine.hash, theirs.bytes, theirs.hash
                ),
            ));
        }
        if self.superseded.load(Ordering::Relaxed) {
            // A newer run owns the work file now and delivers it itself.
            return Err((ErrorCode::Connection, "superseded by a newer attempt of the request".into()));
        }
        let id = self.session.request_id().clone();
        tracing::info!(target: AUDIT, event = "verified", request_id = %id, partner = %self.partner, bytes = mine.bytes, blake3 = %mine.hash);
        if self.holds_file() {
            // `delivery = all`: durable under its work name (the writer
            // fsynced it), recorded and flushed before the echo; the
            // release puts it in place (`set_release`).
            self.record(
                &format!("verified {} bytes, BLAKE3 {}; held until its set is released", mine.bytes, mine.hash),
                |r| lifecycle::held(r, mine.bytes, mine.hash),
            );
            self.ctx.core.store.flush().await.map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            return Ok(mine);
        }
        let dir = self.files.recv_dir.clone().ok_or((ErrorCode::Internal, "no receive folder".to_string()))?;
        let final_path = self.final_path()?;
        // An append starts from the target's length now, recorded with the
        // rest before the target is touched.
        let mode = match self.session.request() {
            Some(req) => target_mode_of(&self.ctx.core, &req.rule, req.options.target_mode),
            None => TargetMode::default(),
        };
        let append_base = match mode {
            TargetMode::Append => Some(std::fs::metadata(&final_path).map_or(0, |m| m.len())),
            _ => None,
        };
        // Recorded (and flushed) before the rename: a crash in between is
        // finished on the next attempt, never received twice.
        self.record(&format!("verified {} bytes, BLAKE3 {}", mine.bytes, mine.hash), |r| {
            lifecycle::verified(r, mine.bytes, mine.hash);
            r.append_base = append_base;
        });
        self.ctx.core.store.flush().await.map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        let how = match mode {
            TargetMode::Replace => receive::Delivery::Replace,
            TargetMode::Create => receive::Delivery::Create,
            // These need the record: its variables, its recorded base.
            TargetMode::Append | TargetMode::Backup => {
                delivery_for(&self.ctx.core, &self.record_snapshot()?, &final_path)
            }
        };
        let work = receive::work_path(&dir, &id);
        let target = final_path.clone();
        let folder = self.session.request().is_some_and(|r| is_folder_entry(&r.file_name));
        let line = crate::determinism::blocking(move || {
            if folder {
                // A file set's empty folder: `final_path` made it (and
                // fsynced its parent); the empty work file goes.
                receive::discard(&work);
                Ok(format!("folder {} made", target.display()))
            } else {
                receive::deliver_as(&work, &target, &how)
            }
        })
        .await
        .map_err(|e| (ErrorCode::Internal, e.to_string()))??;
        // A line only: the record itself does not change.
        self.log(&line);
        tracing::info!(target: AUDIT, event = "delivered", request_id = %id, partner = %self.partner, path = %final_path.display());
        // The receiver's post-tasks run before its echo confirms the file.
        self.post_tasks(control).await?;
        Ok(mine)
    }

    /// Whether this side receives a file it holds for its set's release
    /// (`delivery = all`) instead of delivering it.
    fn holds_file(&self) -> bool {
        match self.session.role() {
            SessionRole::Requested => {
                self.session.request().is_some_and(|r| r.options.hold && r.direction == Direction::Push)
            }
            // Its record ends `Done` but not delivered (`set_release::is_own_held`).
            SessionRole::Requester => self.files.hold,
        }
    }

    fn cleanup_after_failure(&self, f: &Failure) {
        if self.superseded.load(Ordering::Relaxed) {
            // The work file belongs to the newer run now: removing it would
            // make that run recreate it with a zero-filled prefix.
            return;
        }
        // A lost connection or a shutdown leaves the work file for a resume;
        // anything else (bad data, cancel, refusal) removes it.
        if lifecycle::keeps_partial_file(f.code) {
            return;
        }
        if let Some(dir) = &self.files.recv_dir {
            receive::discard(&receive::work_path(dir, self.session.request_id()));
        }
    }

    fn record_snapshot(&self) -> Result<RequestRecord, (ErrorCode, String)> {
        self.ctx
            .core
            .store
            .get(self.session.request_id())
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?
            .ok_or_else(|| (ErrorCode::Internal, "request record vanished".to_string()))
    }

    fn started(&self, plan: &Plan, what: &str) {
        tracing::info!(target: AUDIT, event = "started", request_id = %self.session.request_id(), partner = %self.partner, size = plan.size, from = plan.restart_offset, what);
        self.record(&format!("{what} {} bytes from offset {}", plan.size, plan.restart_offset), |r| {
            lifecycle::start_transfer(r, plan.size, plan.restart_offset, now_ms())
        });
    }

    fn progress(&self, end: u64, last: &mut Instant) {
        if last.elapsed() >= PROGRESS_EVERY {
            *last = Instant::now();
            self.record("", |r| r.transferred = end);
        }
    }

    /// Records a failure as the lifecycle decides; returns the status.
    fn failed(&self, f: &Failure) -> Status {
        let origin = match f.origin {
            crate::protocol::Origin::Local => "",
            crate::protocol::Origin::Remote => " (reported by partner)",
        };
        let message = format!("{}: {}{origin}", f.code, f.message);
        let id = self.session.request_id();
        if let Ok(Some(rec)) = self.ctx.core.store.get(id) {
            if matches!(rec.status, Status::Done | Status::Cancelled) {
                // A late failure of a run that was already overtaken never
                // rewrites a final state.
                tracing::info!(code = %f.code, message = %f.message, status = ?rec.status, "late failure ignored");
                return rec.status;
            }
        }
        let status = lifecycle::status_after(f.code);
        tracing::warn!(target: AUDIT, event = "failed", request_id = %id, partner = %self.partner, code = %f.code, message = %f.message, status = ?status);
        let error_tasks = task_runner::error_task_count(&self.ctx.core, id);
        self.record(&message, |r| {
            lifecycle::fail(r, f.code, &f.message, error_tasks, now_ms());
        });
        status
    }

    /// After a recorded failure: this side's error tasks, if the request
    /// ended `InError` with some to run.
    async fn after_failure(&self) {
        if self.superseded.load(Ordering::Relaxed) {
            return;
        }
        task_runner::run_error_tasks(&self.ctx.intake, self.session.request_id()).await;
    }

    /// This side's post-tasks still to run: the request enters (or stays
    /// in) `PostTask` and the list runs from its cursor. Nothing when the
    /// rule has none or they all ran.
    async fn post_tasks(&self, control: &mut mpsc::Receiver<Command>) -> Result<(), (ErrorCode, String)> {
        if self.superseded.load(Ordering::Relaxed) {
            return Err((ErrorCode::Connection, "superseded by a newer attempt of the request".into()));
        }
        // Most rules have no post-tasks: decided without reading the record.
        let Some(rule) = self.session.request().and_then(|req| self.ctx.core.config.rule(&req.rule)) else {
            return Ok(());
        };
        let side = if self.session.is_sender() == Some(true) { &rule.sender } else { &rule.receiver };
        if side.post_tasks.is_empty() {
            return Ok(());
        }
        let rec = self.record_snapshot()?;
        let tasks = task_runner::side(rule, &rec).post_tasks.len();
        let all_ran =
            rec.step == Step::AllDone || (rec.step == Step::PostTask && lifecycle::next_task(&rec, tasks).is_none());
        if tasks == 0 || all_ran {
            return Ok(());
        }
        self.record("", lifecycle::confirmed);
        self.tasks_or_command(TaskList::Post, control).await
    }

    /// Runs this side's tasks of `list`, unless an operator command comes
    /// first: the task is then abandoned (an `exec`'s process group is
    /// killed) and runs again when the request is restarted.
    async fn tasks_or_command(
        &self,
        list: TaskList,
        control: &mut mpsc::Receiver<Command>,
    ) -> Result<(), (ErrorCode, String)> {
        let me = &self.ctx.core.config.node_id;
        tokio::select! {
            biased;
            Some(c) = control.recv() => Err(match c {
                Command::Stop => (
                    ErrorCode::Stopped,
                    format!("stopped by an operator on {me} during a task, which runs again when the request is restarted"),
                ),
                Command::Cancel(reason) => (ErrorCode::Cancelled, reason),
                Command::Shutdown => (ErrorCode::Shutdown, format!("node {me} is shutting down")),
            }),
            r = task_runner::run_tasks(&self.ctx.intake, self.session.request_id(), list) => r,
        }
    }

    /// Makes the final state durable before the runner ends.
    async fn flush(&self) {
        if let Err(e) = self.ctx.core.store.flush().await {
            tracing::error!(request_id = %self.session.request_id(), error = %e, "cannot flush the final state");
        }
    }

    /// A job-log line of the request's, the record unchanged.
    fn log(&self, message: &str) {
        if self.superseded.load(Ordering::Relaxed) {
            return; // a newer run owns the record now
        }
        if let Err(e) = self.ctx.core.store.log(self.session.request_id(), message) {
            tracing::error!(request_id = %self.session.request_id(), error = %e, "cannot log");
        }
    }

    fn record(&self, message: &str, change: impl Fn(&mut RequestRecord)) {
        if self.superseded.load(Ordering::Relaxed) {
            return; // a newer run owns the record now
        }
        if let Err(e) = self.ctx.core.store.update(self.session.request_id(), message, change) {
            tracing::error!(request_id = %self.session.request_id(), error = %e, "cannot record request state");
        }
    }
}

/// The target mode of a request on this node: the request's, else its rule's.
pub fn target_mode(ctx: &Core, rec: &RequestRecord) -> TargetMode {
    target_mode_of(ctx, &rec.rule, rec.target_mode)
}

/// The target mode under `rule` when a request asks for `requested`.
pub fn target_mode_of(ctx: &Core, rule: &str, requested: Option<TargetMode>) -> TargetMode {
    requested.or_else(|| ctx.config.rule(rule).map(|r| r.target)).unwrap_or_default()
}

/// How a receiver delivers `rec`'s file to `final_path`.
pub fn delivery_for(ctx: &Core, rec: &RequestRecord, final_path: &std::path::Path) -> receive::Delivery {
    use receive::Delivery;
    match target_mode(ctx, rec) {
        TargetMode::Create => Delivery::Create,
        TargetMode::Replace => Delivery::Replace,
        TargetMode::Append => Delivery::Append { base: rec.append_base.unwrap_or(0) },
        TargetMode::Backup => {
            // One plain name beside the target: the variables may carry
            // what a partner sent (`#TRANSFERINFO#`), which must not lead
            // the old file out of its folder.
            let backup = match ctx.config.rule(&rec.rule) {
                Some(rule) => task_runner::vars(rule, rec, &ctx.config.node_id, final_path)
                    .substitute(&rule.backup_name)
                    .ok()
                    .filter(|name| crate::protocol::names::check_file_name(name).is_ok())
                    .unwrap_or_else(|| fallback_backup(final_path)),
                None => fallback_backup(final_path),
            };
            Delivery::Backup { backup }
        }
    }
}

/// `NAME.bak` beside the target (its own name, not a set's whole path).
fn fallback_backup(final_path: &std::path::Path) -> String {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{name}.bak")
}

/// `create` mode: refuses, before any data moves, a target that exists.
pub fn refuse_existing_target(
    ctx: &Core,
    mode: TargetMode,
    final_path: &std::path::Path,
) -> Result<(), (ErrorCode, String)> {
    if mode == TargetMode::Create && final_path.exists() {
        return Err((
            ErrorCode::TargetExists,
            format!("{} exists on node {} and the target mode is create", final_path.display(), ctx.config.node_id),
        ));
    }
    Ok(())
}

/// Runs a runner's work on its own task and stops the runner's actor when
/// it ends. If the work panics, `on_panic` records what it can (the
/// request must not stay `Running` with its Commander slot taken).
pub fn spawn_runner_task<M: ractor::Message>(
    myself: ractor::ActorRef<M>,
    work: impl std::future::Future<Output = ()> + Send + 'static,
    on_panic: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let work = tokio::spawn(work);
    tokio::spawn(async move {
        if let Err(e) = work.await {
            tracing::error!(error = %e, "runner task ended abnormally");
            on_panic.await;
        }
        myself.stop(None);
    });
}

/// The error for a resume whose prefixes differ, when the rule says to fail.
fn mismatch_error(offset: u64, sender_is_us: bool) -> (ErrorCode, String) {
    let whose = if sender_is_us { "requester's" } else { "receiver's" };
    (
        ErrorCode::ResumeMismatch,
        format!(
            "the {whose} partial file differs from the source in its first {offset} bytes; \
             the rule says to fail rather than start over"
        ),
    )
}
