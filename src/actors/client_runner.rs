//! ClientRunner: the requester's side of one request.
//!
//! Started by the Commander for a request it took from the queue. It checks
//! the local side (rule, partner, source file), gets the shared connection to
//! the partner from Connections, opens the request's private channel (a new
//! bidirectional stream) and drives the session on it. The actor's mailbox
//! only carries control (cancel); the data path runs in the runner's own task.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::connections::ConnectionsMsg;
use super::drive::{self, Control, Drive, Files};
use crate::node::NodeContext;
use crate::protocol::{Direction, ErrorCode, Request, RequestId, Session, TransferOptions};
use crate::store::{RequestError, Status};
use crate::transport::{FrameReader, FrameWriter};

pub enum ClientRunnerMsg {
    Control(Control),
}

pub struct ClientRunnerArgs {
    pub ctx: Arc<NodeContext>,
    pub connections: ActorRef<ConnectionsMsg>,
    pub id: RequestId,
}

pub struct ClientRunner;

pub struct ClientRunnerState {
    control: mpsc::Sender<Control>,
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
        tokio::spawn(
            async move {
                run(args, rx).await;
                myself.stop(None);
            }
            .instrument(span),
        );
        Ok(ClientRunnerState { control: tx })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClientRunnerMsg::Control(c) => {
                let _ = state.control.send(c).await;
            }
        }
        Ok(())
    }
}

/// Fails the request before any channel exists (or after its task died),
/// and makes that durable.
async fn fail_early(ctx: &NodeContext, id: &RequestId, code: ErrorCode, message: String) {
    let status = match code {
        ErrorCode::Connection | ErrorCode::Internal => Status::Interrupted,
        _ => Status::InError,
    };
    tracing::warn!(target: drive::AUDIT, event = "failed", request_id = %id, code = %code, message = %message, status = ?status);
    let r = ctx.store.update(id, &format!("{code}: {message}"), |r| {
        r.status = status;
        r.error = Some(RequestError { code, message: message.clone() });
        if status == Status::InError {
            r.finished_at = Some(crate::store::now_ms());
        }
    });
    if let Err(e) = r {
        tracing::error!(request_id = %id, error = %e, "cannot record request state");
    }
    if let Err(e) = ctx.store.flush().await {
        tracing::error!(request_id = %id, error = %e, "cannot flush request state");
    }
}

async fn run(args: ClientRunnerArgs, control: mpsc::Receiver<Control>) {
    let ctx = args.ctx;
    let id = args.id;
    let rec = match ctx.store.get(&id) {
        Ok(Some(r)) => r,
        Ok(None) => return tracing::error!(request_id = %id, "request vanished before it ran"),
        Err(e) => return tracing::error!(request_id = %id, error = %e, "cannot read request"),
    };
    tracing::Span::current().record("partner", rec.partner.as_str());
    let Some(rule) = ctx.config.rule(&rec.rule) else {
        let msg = format!("rule {:?} does not exist on node {}", rec.rule, ctx.config.node_id);
        return fail_early(&ctx, &id, ErrorCode::UnknownRule, msg).await;
    };
    if !rule.allows(&rec.partner) {
        let msg = format!("partner {} may not use rule {:?} on node {}", rec.partner, rec.rule, ctx.config.node_id);
        return fail_early(&ctx, &id, ErrorCode::RuleNotAllowed, msg).await;
    }
    let mut files = Files::default();
    let mut size = 0;
    if rec.direction == Direction::Push {
        let path = rule.send_dir.join(&rec.file_name);
        match drive::source_snapshot(&path, &rec.rule, &ctx.config.node_id) {
            Ok(snap) => {
                size = snap.size;
                files.source = Some((path, snap));
            }
            Err((code, msg)) => return fail_early(&ctx, &id, code, msg).await,
        }
    }
    let conn = match ractor::call!(args.connections, ConnectionsMsg::Get, rec.partner.clone()) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail_early(&ctx, &id, e.code, e.message).await,
        Err(e) => {
            return fail_early(&ctx, &id, ErrorCode::Internal, format!("connection manager unavailable: {e}")).await
        }
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "cannot open a channel to {}: {}",
                rec.partner,
                crate::transport::channel::describe_connection(&e)
            );
            return fail_early(&ctx, &id, super::connections::close_code(&e), msg).await;
        }
    };
    let request = Request {
        request_id: id.clone(),
        rule: rec.rule.clone(),
        direction: rec.direction,
        file_name: rec.file_name.clone(),
        size,
        block_size: rec.block_size,
        restart_offset: 0,
        options: TransferOptions { compression: rec.compression },
        external_job_id: rec.external_job_id.clone(),
        transfer_info: rec.transfer_info.clone(),
    };
    let mut session = Session::requester(&ctx.config.node_id, &rec.partner, ctx.capabilities.clone(), request);
    let first = session.start();
    let drive = Drive {
        ctx: ctx.clone(),
        partner: rec.partner.clone(),
        session,
        reader: FrameReader::new(recv),
        writer: FrameWriter::new(send),
        conn: Some(conn),
        files,
    };
    drive.run(first, control).await;
}
