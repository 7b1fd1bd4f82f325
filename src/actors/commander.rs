//! Commander: takes queued (`ToSubmit`) requests from the store and starts a
//! ClientRunner for each, within the node's concurrency limit.
//!
//! ClientRunners are spawned linked to the Commander, so their end arrives
//! as a supervision event; that frees a slot and takes the next request. At
//! node start-up (`recover`), requests this node was running or that were
//! interrupted go back to `ToSubmit` so they resume by themselves, and
//! requests a partner was running here are marked `Interrupted` (the partner
//! drives them again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::availability::Availability;
use super::channel_run::Command;
use super::client_runner::{tell_cancel, ClientRunner, ClientRunnerArgs, ClientRunnerMsg};
use super::connections::ConnectionsMsg;
use super::context::{Core, RunHandle};
use crate::lifecycle::{self, AfterRun, Recovery};
use crate::protocol::{ErrorCode, RequestId};
use crate::store::{now_ms, Notice, RequestRecord, Status, Step};

pub enum CommanderMsg {
    /// New requests may be queued.
    Wake,
    /// An interrupted request's backoff is over.
    Retry(RequestId),
    /// Forward a control command to the runner of a request, if it runs here.
    Command(RequestId, Command),
    /// Probe the partners requests are waiting for, and check how long
    /// they have waited; send the notices still owed.
    Tick,
    /// A notice was delivered, or why not.
    Told(RequestId, Notice, Result<(), String>),
}

/// What the Commander needs: the node's core, the availability table it
/// waits on, the gauge of requests it runs, and what its runners need.
#[derive(Clone)]
pub struct CommanderContext {
    pub core: Core,
    pub availability: Arc<Availability>,
    /// Who else waits in the queue, for each partner's share of the slots.
    pub queued: Arc<super::partner_share::QueuedByPartner>,
    pub running_requests: Arc<std::sync::atomic::AtomicUsize>,
    pub run: RunHandle,
}

pub struct CommanderArgs {
    pub ctx: CommanderContext,
    pub connections: ActorRef<ConnectionsMsg>,
    /// Whether to recover requests left running by a previous process.
    pub recover: bool,
}

pub struct Commander;

pub struct CommanderState {
    ctx: CommanderContext,
    connections: ActorRef<ConnectionsMsg>,
    /// The runners, with their request and the partner whose share of
    /// the slots it counts in (`partner_share`).
    running: BTreeMap<ActorId, (RequestId, String, ActorRef<ClientRunnerMsg>)>,
    /// Queued requests passed over because their partner is unavailable,
    /// with when they started waiting (in memory: a restart waits afresh).
    waiting: BTreeMap<RequestId, (String, Instant)>,
    /// The notices owed to partners, and those being sent now.
    notices: super::notice_queue::NoticeQueue,
    /// Notices that failed once already: logged once, not on every retry.
    notice_failed: BTreeSet<(RequestId, u8)>,
    tick_scheduled: bool,
    /// Queued small files of sets whose stream this node leads, by id,
    /// with their set: passed over unread while the stream runs.
    streamed: std::collections::HashMap<RequestId, RequestId>,
}

impl CommanderState {
    fn set_gauge(&self) {
        self.ctx.running_requests.store(self.running.len(), Ordering::Relaxed);
    }

    /// Starts what may start. `on_tick`: also reads the requests queued for
    /// an unavailable partner, to keep how long each has waited (and fail
    /// those that waited too long). Any other fill ends without reading the
    /// queue when only such requests wait, and passes over, unread, those
    /// known to wait: with thousands queued for a partner that is down,
    /// reading them all at each submit and each runner's end made every
    /// fill cost time in proportion to them; the tick does it every
    /// `probe_interval_ms` instead.
    async fn fill(&mut self, myself: &ActorRef<CommanderMsg>, on_tick: bool) -> Result<(), ActorProcessingErr> {
        if *self.ctx.core.shutdown.borrow() {
            return Ok(());
        }
        self.send_notices(myself, on_tick)?;
        let free = self.ctx.core.config.concurrency.saturating_sub(self.running.len());
        if free == 0 {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let mut passed_over = Vec::new();
        let slots = super::set_stream::slots_now(&ctx.run.set_streams);
        // A small file of a set this node streams is the stream's to claim
        // (larger ones run beside the stream, one request each). Those seen
        // once are passed over by id while their set's stream runs, so a
        // fill does not read each of a large set's queued files again. Of a
        // set not streamed yet, one small file is taken: its runner leads
        // the stream and claims the others (unless the partner refused the
        // set's stream lately: then each goes one request, as any).
        self.streamed.retain(|_, set| slots.led.contains(set));
        let mut newly_streamed = Vec::new();
        let mut leaders = BTreeSet::new();
        // Each partner's runners now, and those this fill takes: a partner
        // at its share of the slots waits (`partner_share`).
        let share = super::partner_share::share(ctx.core.config.concurrency);
        let mut holding: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (_, partner, _) in self.running.values() {
            *holding.entry(partner.clone()).or_default() += 1;
        }
        // The most this fill can take; on a tick an unavailable partner's
        // requests are all read (their wait is kept), and between ticks
        // those of a group member another member may take over; the
        // others' up to their share.
        let room = |p: &str| match (ctx.availability.is_unavailable(p), on_tick) {
            (true, true) => usize::MAX,
            (true, false) if has_stand_in(&ctx, p) => usize::MAX,
            (true, false) => 0,
            (false, _) => share.saturating_sub(holding.get(p).copied().unwrap_or(0)),
        };
        let free = free.min(ctx.queued.could_start(room));
        if free == 0 {
            if !on_tick && ctx.queued.could_start(|p| usize::from(ctx.availability.is_unavailable(p))) > 0 {
                // Requests wait for a partner that is down: the tick reads them.
                self.schedule_tick(myself);
            }
            return Ok(());
        }
        // Between ticks, a request known to wait for a partner still
        // unavailable is passed over by id, unread.
        let waits =
            |id: &RequestId| !on_tick && self.waiting.get(id).is_some_and(|(p, _)| ctx.availability.is_unavailable(p));
        let picked = ctx.core.store.queued_where(
            free,
            |id| self.streamed.contains_key(id) || waits(id),
            |rec| {
                let rule = ctx.core.config.rule(&rec.rule);
                let streamable = rec
                    .member_of
                    .as_ref()
                    .filter(|_| rule.is_some_and(|rule| super::set_stream::is_streamable(rec, rule)))
                    .map(|m| &m.set);
                if let Some(set) = streamable.filter(|set| slots.led.contains(*set)) {
                    newly_streamed.push((rec.id.clone(), set.clone()));
                    return false;
                }
                // The partner it would run with: a group's request may move
                // to another member, and counts in that member's share.
                let moved = match ctx.availability.is_unavailable(&rec.partner) {
                    false => None,
                    true => match movable_member(&ctx, rec) {
                        Some(member) => Some(member),
                        None => {
                            passed_over.push((rec.id.clone(), rec.partner.clone()));
                            return false;
                        }
                    },
                };
                let runs_with = moved.unwrap_or_else(|| rec.partner.clone());
                if holding.get(&runs_with).copied().unwrap_or(0) >= share {
                    return false;
                }
                let take = match streamable {
                    Some(set) if !slots.declined.contains(set) => leaders.insert(set.clone()),
                    _ => true,
                };
                if take {
                    *holding.entry(runs_with).or_default() += 1;
                }
                take
            },
        )?;
        self.streamed.extend(newly_streamed);
        self.wait_for_partners(myself, passed_over, on_tick).await?;
        for rec in picked {
            self.waiting.remove(&rec.id);
            // A group request that has sent nothing moves to an available
            // member; one with data at its member stays there.
            let member = movable_member(&self.ctx, &rec);
            // Taken only if still queued: an operator may have stopped or
            // cancelled it since `queued` read it.
            let attempt = rec.attempts + 1;
            let mut line = format!("attempt {attempt} started by the Commander");
            if let (Some(m), Some(g)) = (&member, &rec.group) {
                line = format!("{line}; moved to member {m} of group {g} ({} is unavailable)", rec.partner);
            }
            let taken = self.ctx.core.store.update_if(
                &rec.id,
                &line,
                |r| r.status == Status::ToSubmit,
                |r| {
                    lifecycle::take(r, attempt, member.as_deref());
                },
            )?;
            // Counted in the share of the partner it runs with (a group's
            // request may have moved to another member).
            let runs_with = member.clone().unwrap_or_else(|| rec.partner.clone());
            let Some(rec) = taken else { continue };
            let args = ClientRunnerArgs {
                ctx: self.ctx.run.clone(),
                connections: self.connections.clone(),
                id: rec.id.clone(),
            };
            match Actor::spawn_linked(None, ClientRunner, args, myself.get_cell()).await {
                Ok((runner, _)) => {
                    self.running.insert(runner.get_id(), (rec.id, runs_with, runner));
                }
                Err(e) => {
                    tracing::error!(request_id = %rec.id, error = %e, "cannot start a ClientRunner");
                    let message = format!("cannot start runner: {e}");
                    self.ctx.core.store.update(&rec.id, "", |r| {
                        lifecycle::fail(r, ErrorCode::Internal, &message, 0, now_ms());
                    })?;
                }
            }
        }
        self.set_gauge();
        Ok(())
    }

    /// Keeps requests for unavailable partners queued without spending
    /// their attempts, logs when each starts waiting, fails those that
    /// waited longer than `cluster.partner_wait_secs`, and keeps a probe
    /// timer going while any wait. `passed_over` are those this fill read;
    /// others known to wait keep their time (a fill stops reading the queue
    /// once it took what may start). On a tick (`on_tick`) those whose
    /// partner is available again are forgotten: the next fills read them.
    async fn wait_for_partners(
        &mut self,
        myself: &ActorRef<CommanderMsg>,
        passed_over: Vec<(RequestId, String)>,
        on_tick: bool,
    ) -> Result<(), ActorProcessingErr> {
        let limit = Duration::from_secs(self.ctx.core.config.cluster.partner_wait_secs);
        if on_tick {
            let availability = &self.ctx.availability;
            self.waiting.retain(|_, (p, _)| availability.is_unavailable(p));
        }
        let mut still = BTreeMap::new();
        let mut wrote = false;
        let mut failed_now = Vec::new();
        for (id, partner) in passed_over {
            let health = self.ctx.availability.get(&partner);
            let cause = health.last_error.unwrap_or_else(|| "no answer".into());
            let since = match self.waiting.get(&id) {
                Some((_, since)) => *since,
                None => {
                    self.ctx.core.store.log(&id, &format!("waiting: partner {partner} is unavailable ({cause})"))?;
                    wrote = true;
                    Instant::now()
                }
            };
            if since.elapsed() < limit {
                still.insert(id, (partner, since));
                continue;
            }
            let message = format!(
                "partner {partner} stayed unavailable for {} s, longer than this request may wait; last cause: {cause}",
                since.elapsed().as_secs()
            );
            let error_tasks = super::task_runner::error_task_count(&self.ctx.core, &id);
            let failed = self.ctx.core.store.update_if(
                &id,
                &message,
                |r| r.status == Status::ToSubmit,
                |r| {
                    lifecycle::fail(r, ErrorCode::PartnerUnavailable, &message, error_tasks, now_ms());
                },
            )?;
            self.waiting.remove(&id);
            if failed.is_some() {
                wrote = true;
                tracing::warn!(target: super::AUDIT, event = "failed", request_id = %id, code = %ErrorCode::PartnerUnavailable, message = %message);
                failed_now.push(id.clone());
            }
        }
        if wrote {
            self.ctx.core.store.flush().await?;
        }
        for id in failed_now {
            spawn_error_tasks(myself, &self.ctx, id);
        }
        self.waiting.extend(still);
        if !self.waiting.is_empty() {
            self.schedule_tick(myself);
        }
        Ok(())
    }

    fn schedule_tick(&mut self, myself: &ActorRef<CommanderMsg>) {
        if !self.tick_scheduled {
            self.tick_scheduled = true;
            let every = Duration::from_millis(self.ctx.core.config.cluster.probe_interval_ms);
            myself.send_after(every, || CommanderMsg::Tick);
        }
    }

    /// Tells partners how requests ended when they may not know: a
    /// requester that cancelled while its partner was down, or whose
    /// in-band Cancel was lost with the link, would otherwise leave the
    /// partner's record waiting (and its partial file on disk) for good;
    /// a pushed set that ended in error would leave the receiver's record
    /// of it running. The notice stays owed in the store until the partner
    /// answered it; a partner known to be unavailable is tried again on a
    /// later tick. A set-end notice waits while its set has not ended yet
    /// (the notice is written just before the end), and is dropped unsent
    /// once the set ended otherwise (see `set_release::set_end_to_tell`).
    /// The owed notices are read from the store only when some were
    /// written since or, `on_tick`, must be tried again, and a few are sent
    /// at once (see `notice_queue`).
    fn send_notices(&mut self, myself: &ActorRef<CommanderMsg>, on_tick: bool) -> Result<(), ActorProcessingErr> {
        let store = &self.ctx.core.store;
        // The count first: a notice written after it is read again later.
        let written = store.notices_written();
        let now = Instant::now();
        if self.notices.wants_read(written, on_tick, now) {
            let owed = store.notices_owed()?;
            self.notices.read(written, owed, now);
        }
        while let Some((id, notice)) = self.notices.up_next() {
            self.send_notice(id, notice, myself)?;
        }
        Ok(())
    }

    /// Sends `notice` of `id` if it is still to be told now.
    fn send_notice(
        &mut self,
        id: RequestId,
        notice: Notice,
        myself: &ActorRef<CommanderMsg>,
    ) -> Result<(), ActorProcessingErr> {
        use super::set_release::{set_end_to_tell, ToTell};
        if !self.ctx.core.store.notices_owed_for(&id)?.contains(&(id.clone(), notice)) {
            return Ok(()); // told meanwhile (a copy was read again), or replaced
        }
        let rec = self.ctx.core.store.get(&id)?;
        let to_tell = match (notice, &rec) {
            (_, None) => ToTell::No,
            (Notice::Cancel, Some(_)) => ToTell::Now,
            (Notice::SetEnded { at }, Some(rec)) => set_end_to_tell(rec, at),
        };
        let rec = match (to_tell, rec) {
            (ToTell::Now, Some(rec)) => rec,
            (ToTell::Later, _) => {
                self.notices.passed_over();
                self.schedule_tick(myself);
                return Ok(());
            }
            _ => {
                self.ctx.core.store.notice_given(&id, notice)?;
                return Ok(());
            }
        };
        if self.ctx.availability.is_unavailable(&rec.partner) {
            // Probed now, tried again on the next tick.
            let _ = self.connections.cast(ConnectionsMsg::Probe(rec.partner.clone()));
            self.notices.passed_over();
            self.schedule_tick(myself);
            return Ok(());
        }
        self.notices.sending((id.clone(), notice.kind()));
        let (ctx, conns, me) = (self.ctx.run.clone(), self.connections.clone(), myself.clone());
        tokio::spawn(async move {
            let told = match notice {
                Notice::Cancel => tell_cancel(ctx, conns, id.clone(), rec.partner).await,
                Notice::SetEnded { at } => super::set_release::tell_set_ended(&ctx.core, &conns, &id, at).await,
            };
            let _ = me.cast(CommanderMsg::Told(id, notice, told));
        });
        Ok(())
    }
}

/// Whether `partner` is a member of a group with another member not known
/// to be unavailable: its queued group requests may move there.
fn has_stand_in(ctx: &CommanderContext, partner: &str) -> bool {
    ctx.core.config.groups.iter().any(|g| {
        g.members.iter().any(|m| m == partner)
            && g.members.iter().any(|m| m != partner && !ctx.availability.is_unavailable(m))
    })
}

/// For a queued group request whose member is unavailable and never
/// accepted it: another member to move it to, if one is not known to be
/// unavailable. Once a member accepted the request (`started_at` is set on
/// acceptance, before any data) it may hold a partial file, so the request
/// stays with it; `transferred` cannot tell, as it is recorded only now
/// and then.
fn movable_member(ctx: &CommanderContext, rec: &RequestRecord) -> Option<String> {
    let group = ctx.core.config.group(rec.group.as_deref()?)?;
    if !ctx.availability.is_unavailable(&rec.partner) || rec.started_at.is_some() {
        return None;
    }
    let m = crate::cluster::rules::pick_member(&group.members, |m| ctx.availability.get(m).state, Some(&rec.partner));
    (m != rec.partner && !ctx.availability.is_unavailable(&m)).then_some(m)
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
        let store = &args.ctx.core.store;
        if args.recover {
            // One pass over the store for everything start-up acts on.
            let (mut queued, mut failed, mut left) = (Vec::new(), Vec::new(), Vec::new());
            for rec in store.list_where(|s| !matches!(s, Status::Done | Status::Cancelled))? {
                match rec.status {
                    Status::ToSubmit => queued.push(rec),
                    Status::InError => failed.push(rec),
                    _ => left.push(rec),
                }
            }
            {
                for rec in left {
                    match lifecycle::recovery(&rec) {
                        Recovery::Keep => {
                            if let (Status::Interrupted, Some(at)) = (rec.status, rec.retry_at) {
                                // Its retry (or reschedule) time still holds.
                                let delay = Duration::from_millis(at.saturating_sub(now_ms()));
                                let id = rec.id.clone();
                                myself.send_after(delay, move || CommanderMsg::Retry(id));
                            }
                        }
                        Recovery::Requeue => {
                            let r =
                                store.update(&rec.id, "resumed at node start-up", |r| r.status = Status::ToSubmit)?;
                            queued.push(r);
                        }
                        Recovery::Interrupt => {
                            store.update(&rec.id, "node restarted; the partner drives the request again", |r| {
                                r.status = Status::Interrupted
                            })?;
                        }
                    }
                }
            }
            // Error tasks a crash interrupted: the rest run now, the
            // interrupted one again (at least once).
            let mut error_tasks_left = Vec::new();
            for rec in failed {
                if rec.step == Step::ErrorTask && super::task_runner::error_tasks_left(&args.ctx.core, &rec) {
                    store.log(&rec.id, "node restarted during the error tasks; the rest run now")?;
                    error_tasks_left.push(rec.id);
                }
            }
            store.rebuild_queue_from(queued)?;
            store.flush_blocking()?;
            for id in error_tasks_left {
                spawn_error_tasks(&myself, &args.ctx, id);
            }
            // The queue as it is now (rebuilt above) is who waits. Only at
            // the node's start, before the API serves: a Commander started
            // again after a failure keeps the count the store's observer
            // kept meanwhile (a recount then could miss a write that came
            // while it read the queue).
            args.ctx.queued.recount(store)?;
        }
        myself.cast(CommanderMsg::Wake)?;
        Ok(CommanderState {
            ctx: args.ctx,
            connections: args.connections,
            running: BTreeMap::new(),
            waiting: BTreeMap::new(),
            notices: Default::default(),
            notice_failed: BTreeSet::new(),
            tick_scheduled: false,
            streamed: Default::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CommanderMsg::Wake => {
                state.ctx.run.intake.actors.commander_woken();
                state.fill(&myself, false).await?
            }
            CommanderMsg::Retry(id) => {
                if let Some(rec) = state.ctx.core.store.get(&id)? {
                    let line = format!("retrying after attempt {}", rec.attempts);
                    let due = state.ctx.core.store.update_if(&id, &line, lifecycle::is_retry_due, |r| {
                        lifecycle::retry_due(r);
                    })?;
                    if due.is_some() {
                        state.fill(&myself, false).await?;
                    }
                }
            }
            CommanderMsg::Told(id, notice, told) => {
                let key = (id.clone(), notice.kind());
                state.notices.told(&key, told.is_ok());
                match told {
                    Ok(()) => {
                        state.notice_failed.remove(&key);
                        // Another notice of the same request may have
                        // waited for this one (a cancel while the set's
                        // end was told).
                        let same = state.ctx.core.store.notices_owed_for(&id)?;
                        state.notices.first(same);
                        // And the answer made room for the next.
                        state.send_notices(&myself, false)?;
                    }
                    Err(why) => {
                        if state.notice_failed.insert(key) {
                            let what = match notice {
                                Notice::Cancel => "the cancellation",
                                Notice::SetEnded { .. } => "the set's end",
                            };
                            let line = format!("the partner could not be told of {what} yet: {why}");
                            state.ctx.core.store.log(&id, &line)?;
                        }
                        state.schedule_tick(&myself);
                        // The slot goes to the next notice (this one is
                        // tried again after the others, on the tick).
                        state.send_notices(&myself, false)?;
                    }
                }
            }
            CommanderMsg::Tick => {
                state.tick_scheduled = false;
                let partners: std::collections::BTreeSet<String> =
                    state.waiting.values().map(|(p, _)| p.clone()).collect();
                for p in partners {
                    let _ = state.connections.cast(ConnectionsMsg::Probe(p));
                }
                state.fill(&myself, true).await?;
            }
            CommanderMsg::Command(id, control) => {
                if let Some((_, _, runner)) = state.running.values().find(|(rid, _, _)| *rid == id) {
                    let _ = runner.cast(ClientRunnerMsg::Command(control));
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
                if let Some((id, _, _)) = state.running.remove(&cell.get_id()) {
                    schedule_retry(&myself, &state.ctx, &id).await?;
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((id, _, _)) = state.running.remove(&cell.get_id()) {
                    tracing::error!(request_id = %id, error = %err, "ClientRunner failed");
                    let message = format!("runner failed: {err}");
                    state.ctx.core.store.update(&id, "runner failed", |r| {
                        lifecycle::fail(r, ErrorCode::Internal, &message, 0, now_ms());
                    })?;
                    state.ctx.core.store.flush().await?;
                    schedule_retry(&myself, &state.ctx, &id).await?;
                }
            }
            _ => return Ok(()),
        }
        state.set_gauge();
        state.fill(&myself, false).await
    }
}

/// Runs the error tasks of a request the Commander failed, off its
/// mailbox; a request a `reschedule` task put back gets its retry.
fn spawn_error_tasks(myself: &ActorRef<CommanderMsg>, ctx: &CommanderContext, id: RequestId) {
    let (ctx, me) = (ctx.clone(), myself.clone());
    tokio::spawn(async move {
        super::task_runner::run_error_tasks(&ctx.run.intake, &id).await;
        if let Ok(Some(rec)) = ctx.core.store.get(&id) {
            if let lifecycle::AfterRun::RetryAt(at) =
                lifecycle::after_run(&rec, &ctx.core.config.retry_for(&rec.rule), now_ms())
            {
                me.send_after(Duration::from_millis(at.saturating_sub(now_ms())), move || CommanderMsg::Retry(id));
            }
        }
    });
}

/// After a runner ended: the lifecycle decides whether an interrupted
/// request is retried after a backoff (or at its rescheduled time), or goes
/// to `InError` once its attempts are spent.
async fn schedule_retry(
    myself: &ActorRef<CommanderMsg>,
    ctx: &CommanderContext,
    id: &RequestId,
) -> Result<(), ActorProcessingErr> {
    if *ctx.core.shutdown.borrow() {
        return Ok(()); // resumed by the next start-up instead
    }
    let Some(rec) = ctx.core.store.get(id)? else { return Ok(()) };
    let policy = ctx.core.config.retry_for(&rec.rule);
    let now = now_ms();
    match lifecycle::after_run(&rec, &policy, now) {
        AfterRun::Nothing => {}
        AfterRun::GiveUp(message) => {
            let error_tasks = super::task_runner::error_task_count(&ctx.core, id);
            ctx.core.store.update(id, &message, |r| {
                lifecycle::fail(r, ErrorCode::RetriesExhausted, &message, error_tasks, now);
            })?;
            ctx.core.store.flush().await?;
            tracing::warn!(target: super::AUDIT, event = "failed", request_id = %id, code = %ErrorCode::RetriesExhausted, message = %message);
            spawn_error_tasks(myself, ctx, id.clone());
        }
        AfterRun::RetryAt(at) => {
            let delay = Duration::from_millis(at.saturating_sub(now));
            ctx.core.store.log(id, &format!("runs again in {} ms, as rescheduled", delay.as_millis()))?;
            let id = id.clone();
            myself.send_after(delay, move || CommanderMsg::Retry(id));
        }
        AfterRun::RetryIn { delay, retry, of } => {
            let at = now + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            ctx.core
                .store
                .update(id, &format!("retry {retry} of {of} in {} ms", delay.as_millis()), |r| r.retry_at = Some(at))?;
            let id = id.clone();
            myself.send_after(delay, move || CommanderMsg::Retry(id));
        }
    }
    Ok(())
}
