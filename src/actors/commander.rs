//! Commander: takes queued (`ToSubmit`) requests from the store and starts a
//! ClientRunner for each, within the node's concurrency limit.
//!
//! ClientRunners are spawned linked to the Commander, so their end arrives
//! as a supervision event; that frees a slot and takes the next request. At
//! node start-up (`recover`), requests this node was running or that were
//! interrupted go back to `ToSubmit` so they resume by themselves, and
//! requests a partner was running here are marked `Interrupted` (the partner
//! drives them again).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::client_runner::{ClientRunner, ClientRunnerArgs, ClientRunnerMsg};
use super::connections::ConnectionsMsg;
use super::drive::Control;
use crate::node::NodeContext;
use crate::protocol::{ErrorCode, RequestId};
use crate::store::{RequestError, Role, Status};

pub enum CommanderMsg {
    /// New requests may be queued.
    Wake,
    /// An interrupted request's backoff is over.
    Retry(RequestId),
    /// Forward a control command to the runner of a request, if it runs here.
    Control(RequestId, Control),
}

pub struct CommanderArgs {
    pub ctx: Arc<NodeContext>,
    pub connections: ActorRef<ConnectionsMsg>,
    /// Whether to recover requests left running by a previous process.
    pub recover: bool,
}

pub struct Commander;

pub struct CommanderState {
    ctx: Arc<NodeContext>,
    connections: ActorRef<ConnectionsMsg>,
    running: HashMap<ActorId, (RequestId, ActorRef<ClientRunnerMsg>)>,
}

impl CommanderState {
    fn set_gauge(&self) {
        self.ctx.running_requests.store(self.running.len(), Ordering::Relaxed);
    }

    async fn fill(&mut self, myself: &ActorRef<CommanderMsg>) -> Result<(), ActorProcessingErr> {
        if *self.ctx.shutdown.borrow() {
            return Ok(());
        }
        let free = self.ctx.config.concurrency.saturating_sub(self.running.len());
        if free == 0 {
            return Ok(());
        }
        for rec in self.ctx.store.queued(free)? {
            // Taken only if still queued: an operator may have stopped or
            // cancelled it since `queued` read it.
            let attempt = rec.attempts + 1;
            let taken = self.ctx.store.update_if(
                &rec.id,
                &format!("attempt {attempt} started by the Commander"),
                |r| r.status == Status::ToSubmit,
                |r| {
                    r.status = Status::Running;
                    r.attempts = attempt;
                    r.retry_at = None;
                },
            )?;
            let Some(rec) = taken else { continue };
            let args =
                ClientRunnerArgs { ctx: self.ctx.clone(), connections: self.connections.clone(), id: rec.id.clone() };
            match Actor::spawn_linked(None, ClientRunner, args, myself.get_cell()).await {
                Ok((runner, _)) => {
                    self.running.insert(runner.get_id(), (rec.id, runner));
                }
                Err(e) => {
                    tracing::error!(request_id = %rec.id, error = %e, "cannot start a ClientRunner");
                    self.ctx.store.update(&rec.id, "", |r| {
                        r.status = Status::Interrupted;
                        r.error = Some(RequestError {
                            code: ErrorCode::Internal,
                            message: format!("cannot start runner: {e}"),
                        });
                    })?;
                }
            }
        }
        self.set_gauge();
        Ok(())
    }
}

impl Actor for Commander {
    type Msg = CommanderMsg;
    type State = CommanderState;
    type Arguments = CommanderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CommanderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = &args.ctx.store;
        if args.recover {
            for status in [Status::Running, Status::Interrupted] {
                for rec in store.list(Some(status))? {
                    match rec.role {
                        Role::Requester if is_stopped(&rec) => {}
                        Role::Requester => {
                            store.update(&rec.id, "resumed at node start-up", |r| r.status = Status::ToSubmit)?;
                        }
                        Role::Requested if status == Status::Running => {
                            store.update(&rec.id, "node restarted; the partner drives the request again", |r| {
                                r.status = Status::Interrupted
                            })?;
                        }
                        Role::Requested => {}
                    }
                }
            }
            store.rebuild_queue()?;
            store.flush_blocking()?;
        }
        myself.cast(CommanderMsg::Wake)?;
        Ok(CommanderState { ctx: args.ctx, connections: args.connections, running: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CommanderMsg::Wake => state.fill(&myself).await?,
            CommanderMsg::Retry(id) => {
                if let Some(rec) = state.ctx.store.get(&id)? {
                    if rec.status == Status::Interrupted && !is_stopped(&rec) {
                        state.ctx.store.update(&id, &format!("retrying after attempt {}", rec.attempts), |r| {
                            r.status = Status::ToSubmit;
                            r.retry_at = None;
                        })?;
                        state.fill(&myself).await?;
                    }
                }
            }
            CommanderMsg::Control(id, control) => {
                if let Some((_, runner)) = state.running.values().find(|(rid, _)| *rid == id) {
                    let _ = runner.cast(ClientRunnerMsg::Control(control));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((id, _)) = state.running.remove(&cell.get_id()) {
                    schedule_retry(&myself, &state.ctx, &id).await?;
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((id, _)) = state.running.remove(&cell.get_id()) {
                    tracing::error!(request_id = %id, error = %err, "ClientRunner failed");
                    state.ctx.store.update(&id, "runner failed", |r| {
                        r.status = Status::Interrupted;
                        r.error =
                            Some(RequestError { code: ErrorCode::Internal, message: format!("runner failed: {err}") });
                    })?;
                    state.ctx.store.flush().await?;
                    schedule_retry(&myself, &state.ctx, &id).await?;
                }
            }
            _ => return Ok(()),
        }
        state.set_gauge();
        state.fill(&myself).await
    }
}

/// Whether an operator stopped the request (it waits for a restart).
fn is_stopped(rec: &crate::store::RequestRecord) -> bool {
    rec.error.as_ref().is_some_and(|e| e.code == ErrorCode::Stopped)
}

/// After a runner ended: an interrupted request is retried after a backoff,
/// or goes to `InError` once its attempts are spent.
async fn schedule_retry(
    myself: &ActorRef<CommanderMsg>,
    ctx: &NodeContext,
    id: &RequestId,
) -> Result<(), ActorProcessingErr> {
    if *ctx.shutdown.borrow() {
        return Ok(()); // resumed by the next start-up instead
    }
    let Some(rec) = ctx.store.get(id)? else { return Ok(()) };
    if rec.status != Status::Interrupted || is_stopped(&rec) {
        return Ok(());
    }
    let policy = ctx.config.retry_for(&rec.rule);
    let cause = rec.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
    if rec.attempts >= policy.attempts {
        let message = format!("gave up after {} attempts; last cause: {cause}", rec.attempts);
        ctx.store.update(id, &message, |r| {
            r.status = Status::InError;
            r.finished_at = Some(crate::store::now_ms());
            r.error = Some(RequestError { code: ErrorCode::RetriesExhausted, message: message.clone() });
        })?;
        ctx.store.flush().await?;
        tracing::warn!(target: crate::actors::drive::AUDIT, event = "failed", request_id = %id, code = %ErrorCode::RetriesExhausted, message = %message);
        return Ok(());
    }
    let delay = policy.delay_after(rec.attempts);
    let at = crate::store::now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    ctx.store.update(
        id,
        &format!("retry {} of {} in {} ms", rec.attempts + 1, policy.attempts, delay.as_millis()),
        |r| r.retry_at = Some(at),
    )?;
    let id = id.clone();
    myself.send_after(delay, move || CommanderMsg::Retry(id));
    Ok(())
}
