//! ClientRunner: the requester's side of one request.
//!
//! Started by the Commander for a request it took from the queue. It checks
//! the local side (rule, partner, source file), gets the shared connection to
//! the partner from Connections, opens the request's private channel (a new
//! bidirectional stream) and drives the session on it. The actor's mailbox
//! only carries control (cancel); the data path runs in the runner's own task.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::channel_run::{self, ChannelRun, Command, Files};
use super::connections::{self, ConnectionsMsg};
use super::context::RunHandle;
use super::task_runner;
use crate::fileset::progress::Delivery;
use crate::lifecycle;
use crate::protocol::{
    AsResolved, Authent, Cancel, Direction, EndTransfer, ErrorCode, Message, Request, RequestId, Session, Startup,
    StreamKind, TransferOptions, PROTOCOL_VERSION,
};
use crate::store::Step;
use crate::tasks::TaskList;
use crate::transfer::{receive, retrieve};
use crate::transport::{FrameReader, FrameWriter};

pub enum ClientRunnerMsg {
    Command(Command),
}

pub struct ClientRunnerArgs {
    pub ctx: RunHandle,
    pub connections: ActorRef<ConnectionsMsg>,
    pub id: RequestId,
}

pub struct ClientRunner;

pub struct ClientRunnerState {
    control: mpsc::Sender<Command>,
}

impl Actor for ClientRunner {
    type Msg = ClientRunnerMsg;
    type State = ClientRunnerState;
    type Arguments = ClientRunnerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ClientRunnerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tx, rx) = mpsc::channel(4);
        let span = tracing::info_span!("request", request_id = %args.id, partner = tracing::field::Empty);
        let (ctx, id) = (args.ctx.clone(), args.id.clone());
        channel_run::spawn_runner_task(myself, run(args, rx).instrument(span), async move {
            fail_early(&ctx, &id, ErrorCode::Internal, "runner task ended abnormally".into()).await
        });
        Ok(ClientRunnerState { control: tx })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClientRunnerMsg::Command(c) => {
                let _ = state.control.send(c).await;
            }
        }
        Ok(())
    }
}

/// Fails the request before any channel exists (or after its task died),
/// and makes that durable; the status is the lifecycle's decision.
async fn fail_early(ctx: &RunHandle, id: &RequestId, code: ErrorCode, message: String) {
    let error_tasks = super::task_runner::error_task_count(&ctx.core, id);
    let status = std::cell::Cell::new(None);
    let r = ctx.core.store.update(id, &format!("{code}: {message}"), |r| {
        status.set(lifecycle::fail(r, code, &message, error_tasks, crate::store::now_ms()));
    });
    let status = status.get();
    tracing::warn!(target: super::AUDIT, event = "failed", request_id = %id, code = %code, message = %message, status = ?status);
    if let Err(e) = r {
        tracing::error!(request_id = %id, error = %e, "cannot record request state");
    }
    if let Err(e) = ctx.core.store.flush().await {
        tracing::error!(request_id = %id, error = %e, "cannot flush request state");
    }
    super::task_runner::run_error_tasks(&ctx.intake, id).await;
}

async fn run(args: ClientRunnerArgs, mut control: mpsc::Receiver<Command>) {
    let ctx = args.ctx;
    let id = args.id;
    let mut rec = match ctx.core.store.get(&id) {
        Ok(Some(r)) => r,
        Ok(None) => return tracing::error!(request_id = %id, "request vanished before it ran"),
        Err(e) => return tracing::error!(request_id = %id, error = %e, "cannot read request"),
    };
    tracing::Span::current().record("partner", rec.partner.as_str());
    let Some(rule) = ctx.core.config.rule(&rec.rule) else {
        let msg = format!("rule {:?} does not exist on node {}", rec.rule, ctx.core.config.node_id);
        return fail_early(&ctx, &id, ErrorCode::UnknownRule, msg).await;
    };
    if !ctx.core.config.rule_allows(rule, &rec.partner) {
        let msg =
            format!("partner {} may not use rule {:?} on node {}", rec.partner, rec.rule, ctx.core.config.node_id);
        return fail_early(&ctx, &id, ErrorCode::RuleNotAllowed, msg).await;
    }
    // A small file of a pushed set goes on its set's stream, with the
    // set's other small files (one request each if the partner refuses).
    if super::set_stream::is_streamable(&rec, rule) {
        match super::set_stream::lead(&ctx, &args.connections, &rec, rule, &mut control).await {
            super::set_stream::Led::Handled | super::set_stream::Led::Joined => return,
            super::set_stream::Led::Refused(code, why) => return fail_early(&ctx, &id, code, why).await,
            super::set_stream::Led::Declined(why) => {
                tracing::debug!(request_id = %id, reason = %why, "no set stream; the file goes alone");
            }
        }
    }
    // A file of a set the partner cancelled (it refused the set's stream
    // so) is not sent alone either: it would be held there for a release
    // that cannot come.
    if let Some(member) = rec.member_of.as_ref().filter(|_| rec.direction == Direction::Push) {
        if let Some(why) = super::set_stream::refused_by_partner(&ctx.set_streams, &member.set) {
            return fail_early(&ctx, &id, ErrorCode::Cancelled, why).await;
        }
    }
    // This side's pre-tasks run once, before the first Request is sent, so
    // the Request carries what they made of the file (its new name and
    // size); see docs/PROTOCOL.md, "Tasks".
    if rec.step == Step::PreTask && !task_runner::side(rule, &rec).pre_tasks.is_empty() {
        // An operator command abandons the task (it runs again on restart).
        let ran = tokio::select! {
            biased;
            Some(c) = control.recv() => return apply_before_channel(&ctx, &rec, c).await,
            r = task_runner::run_tasks(&ctx.intake, &id, TaskList::Pre) => r,
        };
        if let Err((code, msg)) = ran {
            return fail_early(&ctx, &id, code, msg).await;
        }
        rec = match ctx.core.store.get(&id) {
            Ok(Some(r)) => r,
            _ => return tracing::error!(request_id = %id, "request vanished during its pre-tasks"),
        };
    }
    let mut files = Files::default();
    let mut size = 0;
    // Push: the receiver offers where to resume. Pull: this node receives,
    // so it offers its own restart point (or says it already delivered).
    let mut restart_offset = u64::MAX;
    let mut prefix_hash = None;
    let mut delivered = None;
    if rec.direction == Direction::Push {
        match retrieve::open_source(&rule.send_dir, &rec.file_name, &rec.rule, &ctx.core.config.node_id) {
            Ok(source) => {
                if let Some(why) = changed_since_resolved(&rec, &source) {
                    return fail_early(&ctx, &id, ErrorCode::SourceChanged, why).await;
                }
                size = source.snapshot.size;
                files.source = Some(source);
            }
            Err((code, msg)) => return fail_early(&ctx, &id, code, msg).await,
        }
    } else {
        let dir = rule.recv_dir_for(&rec.partner);
        let work = receive::work_path(&dir, &id);
        restart_offset = 0;
        if !rec.delivered && rec.step == Step::Held && rec.hash.is_some() {
            // A pulled `delivery = all` file verified and held before (the
            // channel was lost before the partner's end): claimed as
            // received, so the partner confirms it without sending it again
            // (its source may be gone by now); it stays held.
            delivered = rec.hash.map(|hash| EndTransfer { bytes: rec.size, hash });
        } else if rec.delivered {
            if work.exists() {
                // Verified and recorded as delivered, but the rename did not
                // happen (a pulled set's path: its folders made, no link).
                let delivered = receive::target_path(&dir, &rec.file_name, true).and_then(|final_path| {
                    if crate::protocol::names::is_folder_entry(&rec.file_name) {
                        receive::discard(&work);
                        Ok(format!("folder {} made", final_path.display()))
                    } else {
                        let how = channel_run::delivery_for(&ctx.core, &rec, &final_path);
                        receive::deliver_as(&work, &final_path, &how)
                    }
                });
                match delivered {
                    Ok(line) => {
                        let _ = ctx.core.store.log(&id, &format!("{line} (finishing an interrupted delivery)"));
                    }
                    Err((code, msg)) => return fail_early(&ctx, &id, code, msg).await,
                }
            }
            // This side's post-tasks run before it confirms the file: the
            // ones a crash or a failure left undone run now.
            if rec.step == Step::PostTask {
                let ran = tokio::select! {
                    biased;
                    Some(c) = control.recv() => return apply_before_channel(&ctx, &rec, c).await,
                    r = task_runner::run_tasks(&ctx.intake, &id, TaskList::Post) => r,
                };
                if let Err((code, msg)) = ran {
                    return fail_early(&ctx, &id, code, msg).await;
                }
            }
            delivered = rec.hash.map(|hash| EndTransfer { bytes: rec.size, hash });
        } else {
            let mode = channel_run::target_mode(&ctx.core, &rec);
            let checked = receive::target_path(&dir, &rec.file_name, false)
                .and_then(|target| channel_run::refuse_existing_target(&ctx.core, mode, &target));
            if let Err((code, msg)) = checked {
                return fail_early(&ctx, &id, code, msg).await;
            }
            let (point, block_size) = (rec.restart_point, rec.block_size);
            // The size is the partner's to tell. A point on a block boundary
            // is hashed as the start of a longer file (its digest is the
            // same either way); one off a boundary can only be the file's
            // end (a short last block), so it is hashed as the whole file,
            // and a sender whose file is longer finds it does not match.
            let size = point.map(|p| p.offset).filter(|at| !at.is_multiple_of(u64::from(block_size.max(1))));
            match crate::determinism::blocking(move || receive::resume_offer(&work, point, block_size, size)).await {
                Ok(Ok(offer)) => {
                    files.work_len = offer.work_len;
                    if let Some(p) = offer.prefix {
                        restart_offset = p.offset;
                        prefix_hash = Some(p.digest());
                        files.prefix = Some(p);
                    }
                }
                Ok(Err(e)) => {
                    return fail_early(&ctx, &id, ErrorCode::Io, format!("cannot read the partial file: {e}")).await
                }
                Err(e) => return fail_early(&ctx, &id, ErrorCode::Internal, e.to_string()).await,
            }
        }
        files.recv_dir = Some(dir);
    }
    let got = connections::connect(&args.connections, &rec.partner).await;
    // An operator command that arrived while the partner was being dialed
    // wins over the dial's outcome; once the channel is open, the session
    // handles commands itself.
    if let Ok(c) = control.try_recv() {
        return apply_before_channel(&ctx, &rec, c).await;
    }
    let link = match got {
        Ok(l) => l,
        Err(e) => return fail_early(&ctx, &id, e.code, e.message).await,
    };
    let _channel = link.channel_guard();
    let conn = link.conn.clone();
    if let Err(e) = ctx.core.store.log_for(&rec, &format!("channel opened on the connection {}", link.origin)) {
        tracing::error!(request_id = %id, error = %e, "cannot log");
    }
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "cannot open a channel to {}: {}",
                rec.partner,
                crate::transport::channel::describe_connection(&e)
            );
            return fail_early(&ctx, &id, connections::close_code(&e), msg).await;
        }
    };
    // A file of a `delivery = all` set is held by the receiver until the
    // set is released (`set_release`): the partner for a push (told in the
    // request), this node for a pull.
    let held_set = match &rec.member_of {
        Some(m) => match ctx.core.store.get(&m.set) {
            Ok(set) => set.and_then(|s| s.set).is_some_and(|i| i.policy.delivery == Delivery::All),
            Err(e) => {
                return fail_early(&ctx, &id, ErrorCode::Internal, format!("cannot read its file set: {e}")).await
            }
        },
        None => false,
    };
    let hold = held_set && rec.direction == Direction::Push;
    files.hold = held_set && rec.direction == Direction::Pull;
    // A pulled set's file: the sender checks it is still as it resolved it.
    let as_resolved = match &rec.member_of {
        Some(m) if rec.direction == Direction::Pull => {
            Some(AsResolved { size: rec.size, modified_ns: u64::try_from(m.modified_ns).unwrap_or(u64::MAX) })
        }
        _ => None,
    };
    let request = Request {
        request_id: id.clone(),
        rule: rec.rule.clone(),
        direction: rec.direction,
        file_name: rec.file_name.clone(),
        size,
        block_size: rec.block_size,
        restart_offset,
        prefix_hash,
        delivered,
        options: TransferOptions { compression: rec.compression, target_mode: rec.target_mode, hold, as_resolved },
        external_job_id: rec.external_job_id.clone(),
        transfer_info: rec.transfer_info.clone(),
    };
    let mut session = Session::requester(&ctx.core.config.node_id, &rec.partner, ctx.capabilities.clone(), request);
    let first = session.start();
    let run = ChannelRun::new(
        ctx.clone(),
        rec.partner.clone(),
        session,
        (
            FrameReader::with_limits(recv, channel_run::read_limits(&ctx.core)),
            FrameWriter::opened(send, StreamKind::Request),
        ),
        Some(conn),
        files,
    );
    run.run(first, control).await;
}

/// Carries out a stop or cancel that arrived before the request's channel
/// was open (nothing was sent on this attempt).
async fn apply_before_channel(ctx: &RunHandle, rec: &crate::store::RequestRecord, c: Command) {
    let (code, message) = match c {
        Command::Stop => (ErrorCode::Stopped, "stopped by an operator".to_string()),
        Command::Cancel(reason) => (ErrorCode::Cancelled, reason),
        Command::Shutdown => (ErrorCode::Shutdown, format!("node {} is shutting down", ctx.core.config.node_id)),
    };
    let cancelled = code == ErrorCode::Cancelled;
    // An earlier attempt may have left a record and a partial file with the
    // partner: it is owed a notice, durable with this flush.
    let owe_notice = cancelled && rec.attempts > 1;
    let r = ctx
        .core
        .store
        .update(&rec.id, &message, |r| {
            lifecycle::fail(r, code, &message, 0, crate::store::now_ms());
            r.retry_at = None;
        })
        .and_then(|_| if owe_notice { ctx.core.store.owe_cancel_notice(&rec.id) } else { Ok(()) });
    if let Err(e) = r.and(ctx.core.store.flush().await) {
        tracing::error!(request_id = %rec.id, error = %e, "cannot record an operator command");
    }
    if cancelled && rec.direction == Direction::Pull {
        if let Some(rule) = ctx.core.config.rule(&rec.rule) {
            receive::discard(&receive::work_path(&rule.recv_dir_for(&rec.partner), &rec.id));
        }
    }
    // The Commander sends an owed notice once this runner has ended.
}

/// Tells the partner that a request which is not running here was cancelled,
/// so it marks its record and removes its partial file: opens a channel and
/// sends Startup, Authent and Cancel. Once the partner answered, the owed
/// notice is cleared and the job log says so; otherwise, why not.
pub async fn tell_cancel(
    ctx: RunHandle,
    connections: ActorRef<ConnectionsMsg>,
    id: RequestId,
    partner: String,
) -> Result<(), String> {
    let told = async {
        let link = connections::connect(&connections, &partner).await.map_err(|e| e.message)?;
        let _channel = link.channel_guard();
        let (send, recv) = link.conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut w = FrameWriter::opened(send, StreamKind::Request);
        let mut r = FrameReader::with_limits(recv, channel_run::read_limits(&ctx.core));
        let msgs = [
            Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() }),
            Message::Authent(Authent {
                host_id: ctx.core.config.node_id.clone(),
                capabilities: ctx.capabilities.clone(),
            }),
            Message::Cancel(Cancel { reason: format!("cancelled by an operator on {}", ctx.core.config.node_id) }),
        ];
        for m in &msgs {
            w.send(m).await.map_err(|e| e.to_string())?;
        }
        w.finish();
        // The partner answers Startup and Authent, then ends the channel once
        // it has acted. Only that clean end counts: a link that died (the
        // partner crashed and it is not noticed yet) ends in an error.
        let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut answered = false;
            loop {
                match r.next().await {
                    Ok(Some(_)) => answered = true,
                    Ok(None) if answered => return Ok(()),
                    Ok(None) => return Err("the partner closed the channel without answering".to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        drained.await.map_err(|_| "no answer within 10 s".to_string())??;
        Ok::<(), String>(())
    }
    .await;
    if told.is_ok() {
        let line = format!("partner {partner} told of the cancellation");
        if let Err(e) =
            ctx.core.store.notice_given(&id, crate::store::Notice::Cancel).and_then(|_| ctx.core.store.log(&id, &line))
        {
            tracing::error!(request_id = %id, error = %e, "cannot record the cancellation notice");
        }
    }
    told
}

/// A file set's member: how its file differs from what the set resolved
/// (size and modification time), if it does. A set sends exactly what it
/// resolved; a file changed since fails with `SourceChanged`.
pub fn changed_since_resolved(rec: &crate::store::RequestRecord, source: &retrieve::Source) -> Option<String> {
    let member = rec.member_of.as_ref()?;
    if crate::protocol::names::is_folder_entry(&rec.file_name) {
        return None; // a folder's time moves with what is put in it; it exists (open_source checked)
    }
    let resolved = retrieve::SourceSnapshot::resolved(rec.size, member.modified_ns);
    let change = resolved.change_to(&source.snapshot)?;
    Some(format!("{} changed after file set {} resolved it: {change}", rec.file_name, member.set))
}
