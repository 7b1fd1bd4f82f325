//! A running node: its store, endpoint, actors and REST API, wired together.
//!
//! [`Node::start`] opens the store, loads the node's identity, binds the one
//! UDP socket (QUIC) and the API's TCP socket, and starts the supervisor
//! (which starts Connections and the Commander). [`Node::shutdown`] stops
//! taking work, tells every runner to stop (their requests become
//! `Interrupted`, resumable), waits for them briefly, closes the connections
//! and flushes the store.
//!
//! [`NodeHandle`] is what the API (and tests) use to submit and inspect
//! requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::watch;

use crate::actors::availability::PartnerHealth;
use crate::actors::channel_run::Command;
use crate::actors::commander::CommanderMsg;
use crate::actors::connections::{self, ConnectionsMsg, CLOSE_SHUTDOWN};
use crate::actors::context::NodeContext;
use crate::actors::control_plane::request_state;
use crate::actors::supervisor::{Supervisor, SupervisorMsg};
use crate::actors::{intake, task_runner, AUDIT};
use crate::auth::TokenBook;
use crate::config::NodeConfig;
use crate::lifecycle::{self, CommandPath};
use crate::model::{
    CertificateView, ClusterSubmitted, ClusterView, CommandError, NodeStats, PartnerState, PartnerView, PartnersView,
    RuleView, Submit, SubmitError,
};
use crate::protocol::{Direction, ErrorCode, RequestId};
use crate::store::{now_ms, RequestRecord, Role, Status, Store, StoreError};
use crate::transfer::receive;
use crate::transport::reload::{self, IdentityFiles, IdentityWatch, ReloadError};
use crate::transport::{self, TransportTuning};

/// How long shutdown waits for runners to record their interruption.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("cannot create data folder {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(
        "another ferry node{} is already using the data folder {path}: stop it first, or give this node a data_dir of its own",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DataDirInUse { path: String, pid: Option<u32> },
    #[error("rule {rule:?}: {problem}")]
    RuleFolder { rule: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node identity: {0}")]
    Tls(#[from] transport::TlsError),
    #[error("QUIC endpoint: {0}")]
    Transport(#[from] transport::TransportError),
    #[error("cannot bind the REST API on {addr}: {source}")]
    Api { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the node's actors: {0}")]
    Actors(String),
    #[error("API tokens: {0}")]
    Tokens(String),
    #[error("REST API: {0}")]
    ApiConfig(String),
    #[error("cannot open the audit log {0}")]
    Audit(String),
    #[error("cannot wait for a signal: {0}")]
    Signal(std::io::Error),
}

/// The file in a node's data folder that holds the pid of the node using it.
pub const PID_FILE: &str = "ferry-node.pid";

/// How long one control exchange started by the API may take.
const CONTROL_ASK_LIMIT: Duration = Duration::from_secs(10);

/// Checks, before a node starts, that every rule's folders are folders it
/// can use: a send folder it can read, receive folders (one per partner
/// with `#PARTNER#`) it can write in. A missing folder is created; the lines
/// returned say which. The first problem is an error naming the rule and
/// the path.
pub fn check_rule_folders(config: &NodeConfig) -> Result<Vec<String>, NodeError> {
    let mut created = Vec::new();
    for rule in &config.rules {
        let problem = |problem: String| NodeError::RuleFolder { rule: rule.name.clone(), problem };
        let mut ensure = |dir: &Path, what: &str| -> Result<(), NodeError> {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(problem(format!("its {what} {} is not a folder", dir.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Only inside a folder that exists: a missing parent may
                    // be a mount that is not there, and the files would land
                    // on another disk.
                    if !dir.parent().is_some_and(Path::is_dir) {
                        return Err(problem(format!(
                            "its {what} {} does not exist, nor does the folder it would be created in",
                            dir.display()
                        )));
                    }
                    std::fs::create_dir(dir)
                        .map_err(|e| problem(format!("cannot create its {what} {}: {e}", dir.display())))?;
                    created.push(format!("rule {}: created its {what} {}", rule.name, dir.display()));
                    Ok(())
                }
                Err(e) => Err(problem(format!("cannot use its {what} {}: {e}", dir.display()))),
            }
        };
        ensure(&rule.send_dir, "send folder")?;
        std::fs::read_dir(&rule.send_dir)
            .map_err(|e| problem(format!("cannot read its send folder {}: {e}", rule.send_dir.display())))?;
        let mut recv_dirs = vec![rule.recv_dir_for("")];
        if rule.recv_dir.to_string_lossy().contains(crate::config::PARTNER_PLACEHOLDER) {
            recv_dirs = config
                .partners
                .iter()
                .filter(|p| config.rule_allows(rule, &p.id))
                .map(|p| rule.recv_dir_for(&p.id))
                .collect();
        }
        for dir in recv_dirs {
            ensure(&dir, "receive folder")?;
            tempfile::tempfile_in(&dir)
                .map_err(|e| problem(format!("cannot write in its receive folder {}: {e}", dir.display())))?;
        }
    }
    Ok(created)
}

/// Whether process `pid` is alive and runs `ferry node` (Linux: its
/// command line).
fn is_ferry_node(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"ferry")) && args.get(1).is_some_and(|a| *a == b"node")
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    ctx: Arc<NodeContext>,
    identity: Arc<IdentityWatch>,
}

impl NodeHandle {
    pub fn node_id(&self) -> &str {
        &self.ctx.core.config.node_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.ctx.core.config
    }

    pub fn store(&self) -> &Store {
        &self.ctx.core.store
    }

    /// The certificate the node presents and the outcome of the last reload.
    pub fn identity(&self) -> reload::IdentityStatus {
        self.identity.status()
    }

    /// The certificate the node presents now.
    pub fn certificate(&self) -> CertificateView {
        let info = self.identity.status().certificate;
        CertificateView {
            days_left: transport::tls::days_left(info.not_after, reload::unix_now()),
            serial: info.serial,
            not_after: info.not_after,
        }
    }

    /// Reads the node's certificate, key, CA and revocation list again and
    /// uses them from the next handshake on, as SIGHUP does; connections up
    /// carry on. On error the node keeps what it had.
    pub fn reload_identity(&self) -> Result<transport::tls::CertificateInfo, ReloadError> {
        self.identity.reload()
    }

    /// Turns true when the node begins to shut down (long answers, such as
    /// event streams, end then).
    pub fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.ctx.core.shutdown.clone()
    }

    /// Whether the node has begun to shut down.
    pub fn is_shutting_down(&self) -> bool {
        self.ctx.core.shutting_down()
    }

    /// The API's view of `rec` on this node, with why it waits, if it does.
    pub fn view(&self, rec: &RequestRecord) -> crate::api::TransferView {
        let mut view = crate::api::TransferView::from_record(rec, self.node_id());
        view.waiting = self.waiting_reason(rec);
        view.task = self.ctx.core.config.rule(&rec.rule).and_then(|rule| task_runner::current_task(rule, rec));
        view
    }

    /// Every rule of this node, with its partners, folders, target mode and tasks.
    pub fn rules(&self) -> Vec<RuleView> {
        self.ctx.core.config.rules.iter().map(RuleView::from_rule).collect()
    }

    /// Why a queued request of this node does not run yet: its partner is
    /// unavailable (since when, the cause, how often it is probed and how
    /// long the request waits before it ends `InError`).
    pub fn waiting_reason(&self, rec: &RequestRecord) -> Option<String> {
        if rec.role != Role::Requester || rec.status != Status::ToSubmit {
            return None;
        }
        let health = self.ctx.availability.get(&rec.partner);
        if health.state != PartnerState::Unavailable {
            return None;
        }
        let cluster = &self.ctx.core.config.cluster;
        let since =
            health.since_ms.map(|t| format!(" for {} s", now_ms().saturating_sub(t) / 1000)).unwrap_or_default();
        let cause = health.last_error.unwrap_or_else(|| "no answer".into());
        Some(format!(
            "partner {} is unavailable{since} ({cause}); it is dialed again every {} ms, and the request waits \
             up to {} s in all (cluster.partner_wait_secs), then ends InError",
            rec.partner, cluster.probe_interval_ms, cluster.partner_wait_secs
        ))
    }

    /// Records a new request and queues it. The record is on disk before
    /// this returns, so an acknowledged request survives a crash.
    pub async fn submit(&self, s: Submit) -> Result<RequestRecord, SubmitError> {
        intake::submit(&self.ctx.intake, s, RequestId::generate(), None, None).await
    }

    /// Takes over a request another node's API accepted (submit anywhere).
    pub async fn accept_handover(
        &self,
        h: crate::protocol::control::Handover,
        from: &str,
    ) -> Result<RequestRecord, SubmitError> {
        intake::accept_handover(&self.ctx.intake, h, from).await
    }

    /// Submits a transfer from `source` to `target`, either of which may be
    /// another node: run here if this node is one of them, else handed over
    /// to the source (a push) or, if the source cannot be reached, to the
    /// target (a pull). Tracked under one id everywhere.
    pub async fn submit_anywhere(&self, s: Submit) -> Result<ClusterSubmitted, SubmitError> {
        let me = self.ctx.core.config.node_id.clone();
        let resolve = |name: &str| -> Result<String, SubmitError> {
            if name == me {
                return Ok(me.clone());
            }
            self.ctx
                .core
                .config
                .partner(name)
                .map(|p| p.id.clone())
                .ok_or_else(|| SubmitError::UnknownPartner(name.into()))
        };
        let source = resolve(s.source.as_deref().unwrap_or(&me))?;
        let target_name = s.target.clone().unwrap_or_else(|| s.partner.clone());
        if target_name.is_empty() {
            return Err(SubmitError::BadRequest("a transfer needs a target (or partner)".into()));
        }
        // A group target is resolved by the node that runs the request.
        let target =
            if self.ctx.core.config.group(&target_name).is_some() { target_name } else { resolve(&target_name)? };
        if source == target {
            return Err(SubmitError::BadRequest(format!("source and target are the same node ({source})")));
        }
        let local = |partner: String, direction| Submit { partner, direction, source: None, target: None, ..s.clone() };
        if source == me {
            let rec = self.submit(local(target, Direction::Push)).await?;
            return Ok(ClusterSubmitted { id: rec.id.clone(), holder: me.clone(), state: request_state(&me, &rec) });
        }
        if target == me {
            let rec = self.submit(local(source, Direction::Pull)).await?;
            return Ok(ClusterSubmitted { id: rec.id.clone(), holder: me.clone(), state: request_state(&me, &rec) });
        }
        if s.pattern.is_some() || s.files.is_some() {
            return Err(SubmitError::BadRequest(format!(
                "a file set is submitted to the node that sends it ({source}), not handed over; \
                 send the request to that node's API"
            )));
        }
        let id = RequestId::generate();
        let handover = |partner: &str, direction| crate::protocol::control::Handover {
            id: id.clone(),
            partner: partner.to_owned(),
            direction,
            rule: s.rule.clone(),
            file: s.file.clone(),
            external_job_id: s.external_job_id.clone(),
            transfer_info: s.transfer_info.clone(),
            block_size: s.block_size,
            compression: s.compression,
            submitted_on: me.clone(),
            target_mode: s.target_mode,
        };
        let mut unreachable = Vec::new();
        let tries = [
            (source.clone(), handover(&target, Direction::Push)),
            (target.clone(), handover(&source, Direction::Pull)),
        ];
        for (node, h) in tries {
            if self.ctx.core.config.partner(&node).is_none() {
                continue; // a group target: only its source can run it
            }
            match self.ask(&node, crate::protocol::control::Ask::Handover(h)).await {
                Ok(crate::protocol::control::Answer::Accepted(state)) => {
                    tracing::info!(target: AUDIT, event = "submitted", request_id = %id, holder = %node, "handed over");
                    return Ok(ClusterSubmitted { id, holder: node, state });
                }
                Ok(crate::protocol::control::Answer::Refused { code, message }) => {
                    return Err(SubmitError::Refused { node, code, message })
                }
                Ok(other) => unreachable.push(format!("{node}: unexpected answer {other:?}")),
                Err(why) => unreachable.push(why),
            }
        }
        Err(SubmitError::Unreachable(format!(
            "neither {source} nor {target} could take the transfer: {}",
            unreachable.join("; ")
        )))
    }

    /// One control exchange with a partner, connecting if needed.
    async fn ask(
        &self,
        partner: &str,
        question: crate::protocol::control::Ask,
    ) -> Result<crate::protocol::control::Answer, String> {
        let Some(a) = self.ctx.actors.get() else { return Err("the node is not running".into()) };
        let link = connections::connect(&a.connections, partner).await.map_err(|e| e.message)?;
        transport::control::ask(&link.conn, &question, CONTROL_ASK_LIMIT)
            .await
            .map_err(|e| format!("{partner} did not answer: {e}"))
    }

    /// The cluster-wide view of a request: what each of its two nodes knows,
    /// from this node's store and by asking its partners.
    pub async fn cluster_view(&self, id: &RequestId) -> ClusterView {
        let me = self.ctx.core.config.node_id.clone();
        let mut nodes = Vec::new();
        let mut unreachable = Vec::new();
        let mut ask_next: Vec<String> = Vec::new();
        match self.ctx.core.store.get(id) {
            Ok(Some(rec)) => {
                ask_next.push(rec.partner.clone());
                nodes.push(request_state(&me, &rec));
            }
            _ => ask_next.extend(self.ctx.core.config.partners.iter().map(|p| p.id.clone())),
        }
        let mut asked = std::collections::BTreeSet::new();
        while !ask_next.is_empty() {
            let round: Vec<String> = ask_next.drain(..).filter(|n| *n != me && asked.insert(n.clone())).collect();
            let mut set = tokio::task::JoinSet::new();
            for n in round {
                let (me, q) = (self.clone(), crate::protocol::control::Ask::Query(id.clone()));
                set.spawn(async move {
                    let a = tokio::time::timeout(CONTROL_ASK_LIMIT, me.ask(&n, q)).await;
                    (n, a)
                });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((node, a)) = joined else { continue };
                match a {
                    Ok(Ok(crate::protocol::control::Answer::State(Some(st)))) => {
                        // The request's other node, if this one did not know it.
                        if nodes.iter().all(|n: &crate::protocol::control::RequestState| n.node != st.partner) {
                            ask_next.push(st.partner.clone());
                        }
                        nodes.push(st);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(why)) => unreachable.push(why),
                    Err(_) => unreachable.push(format!("{node} did not answer in time")),
                }
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let holder = nodes.iter().find(|n| n.role == "Requester").map(|n| n.node.clone());
        let status = match nodes.first() {
            Some(first) if nodes.iter().all(|n| n.status == first.status) => Some(first.status.clone()),
            _ => holder.as_ref().and_then(|h| nodes.iter().find(|n| &n.node == h)).map(|n| n.status.clone()),
        };
        let agreed = nodes.len() == 2 && nodes.iter().all(|n| Some(&n.status) == status.as_ref());
        ClusterView { id: id.to_string(), holder, status, agreed, nodes, unreachable }
    }

    /// What this node knows of a partner's reachability.
    pub fn availability_of(&self, partner: &str) -> PartnerState {
        self.ctx.availability.get(partner).state
    }

    /// Every configured partner with its availability, and the groups.
    pub async fn partners(&self) -> PartnersView {
        let counts = match self.ctx.actors.get() {
            Some(a) => ractor::call!(a.connections, ConnectionsMsg::Counts).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        let partners = self
            .ctx
            .core
            .config
            .partners
            .iter()
            .map(|p| {
                let h: PartnerHealth = self.ctx.availability.get(&p.id);
                PartnerView {
                    id: p.id.clone(),
                    aliases: p.aliases.clone(),
                    address: p.address.to_string(),
                    state: h.state,
                    since_ms: h.since_ms,
                    rtt_ms: h.rtt_ms,
                    connections: counts.get(&p.id).copied().unwrap_or(0),
                    certificate_not_after: h.certificate_not_after,
                    certificate_days_left: h
                        .certificate_not_after
                        .map(|t| transport::tls::days_left(t, reload::unix_now())),
                    last_error: h.last_error,
                    keep_connected: p.keep_connected,
                }
            })
            .collect();
        PartnersView {
            node_id: self.ctx.core.config.node_id.clone(),
            certificate: Some(self.certificate()),
            partners,
            groups: self.ctx.core.config.groups.clone(),
        }
    }

    fn own(&self, id: &RequestId) -> Result<RequestRecord, CommandError> {
        let rec = self.ctx.core.store.get(id)?.ok_or_else(|| CommandError::NotFound(id.clone()))?;
        if rec.role != Role::Requester {
            // This node knows where the requester listens for QUIC, not its
            // API; the host is still a hint where to look.
            let at = self.ctx.core.config.partner(&rec.partner).map(|p| format!("{} for QUIC", p.address));
            return Err(CommandError::NotRequester { id: id.clone(), partner: rec.partner, at });
        }
        Ok(rec)
    }

    fn invalid(rec: &RequestRecord, action: &'static str) -> CommandError {
        let state = match &rec.error {
            Some(e) if rec.status == Status::Interrupted && e.code == ErrorCode::Stopped => "stopped already".into(),
            _ => format!("{:?}", rec.status),
        };
        CommandError::InvalidState { id: rec.id.clone(), action, state }
    }

    fn command(&self, id: &RequestId, c: Command) {
        if let Some(a) = self.ctx.actors.get() {
            let _ = a.commander.cast(CommanderMsg::Command(id.clone(), c));
        }
    }

    /// Pauses a request: `Interrupted`, its partial file and restart point
    /// kept, not retried until [`NodeHandle::restart`]. A file set's files
    /// are all paused (those running stop at their next block).
    pub async fn stop(&self, id: &RequestId) -> Result<RequestRecord, CommandError> {
        let rec = self.own(id)?;
        let rec = match &rec.set {
            Some(_) => {
                let line = "stopped by an operator";
                // A set waiting for its release, or running its set
                // tasks, has no file left to stop.
                let stoppable = |r: &RequestRecord| {
                    !r.status.is_final()
                        && !lifecycle::is_stopped(r)
                        && !lifecycle::set::awaits_release(r)
                        && !lifecycle::set::runs_set_tasks(r)
                };
                let Some(set) = self.ctx.core.store.update_if(id, line, stoppable, |r| lifecycle::stop(r, line))?
                else {
                    return Err(Self::invalid(&rec, "stop"));
                };
                // A file that ends meanwhile (the Commander runs the set
                // on) needs no stop: skipped, not an error.
                self.each_member(&set, |member| match self.stop_one(member) {
                    Ok(_) | Err(CommandError::InvalidState { .. }) => Ok(()),
                    Err(e) => Err(e),
                })?;
                set
            }
            None => self.stop_one(rec)?,
        };
        self.ctx.core.store.flush().await?;
        Ok(rec)
    }

    /// Stops one request. The record is changed only if the path still
    /// holds when it is written: the Commander may take a queued request
    /// meanwhile, and an unconditional write would mark a request its
    /// runner is running as stopped. Decided again then (bounded).
    fn stop_one(&self, mut rec: RequestRecord) -> Result<RequestRecord, CommandError> {
        for _ in 0..8 {
            let id = rec.id.clone();
            match lifecycle::stop_path(&rec) {
                CommandPath::ToRunner => {
                    self.command(&id, Command::Stop);
                    self.ctx.core.store.log(&id, "stop requested by an operator")?;
                    return Ok(rec);
                }
                CommandPath::Record => {
                    let stopped = self.ctx.core.store.update_if(
                        &id,
                        "stopped by an operator",
                        |r| lifecycle::stop_path(r) == CommandPath::Record,
                        |r| lifecycle::stop(r, "stopped by an operator"),
                    )?;
                    match stopped {
                        Some(r) => return Ok(r),
                        None => rec = self.ctx.core.store.get(&id)?.ok_or_else(|| CommandError::NotFound(id))?,
                    }
                }
                CommandPath::Refused => return Err(Self::invalid(&rec, "stop")),
            }
        }
        Err(Self::invalid(&rec, "stop"))
    }

    /// Cancels a request: `Cancelled` on both nodes, the partial file
    /// removed. A file set is cancelled with every file not yet ended
    /// (files delivered stay delivered).
    pub async fn cancel(&self, id: &RequestId) -> Result<RequestRecord, CommandError> {
        let rec = self.own(id)?;
        let reason = format!("cancelled by an operator on {}", self.ctx.core.config.node_id);
        let rec = match &rec.set {
            Some(_) => {
                let cancellable = |r: &RequestRecord| !r.status.is_final() || r.status == Status::InError;
                let cancel = |r: &mut RequestRecord| lifecycle::cancel(r, &reason, now_ms());
                let Some(set) = self.ctx.core.store.update_if(id, &reason, cancellable, cancel)? else {
                    return Err(Self::invalid(&rec, "cancel"));
                };
                // `delivery = all`: the receiver holds the verified files
                // under their work names; a cancel notice per file has it
                // discard them (the files stay `Done` here: they were sent).
                let held = lifecycle::set::holds_files(&set);
                let mut owed = false;
                if lifecycle::set::awaits_release(&rec) || rec.direction == Direction::Push {
                    // The partner may be releasing the set, running its set
                    // tasks, or (a pushed set) have a record of it from its
                    // set stream: it is told, and its record of the set ends
                    // too. (A set running this node's set tasks was
                    // answered: the partner's ended.)
                    self.ctx.core.store.owe_cancel_notice(&set.id)?;
                    owed = true;
                }
                self.each_member(&set, |member| {
                    if crate::actors::set_release::is_own_held(&member) {
                        // A pulled `delivery = all` set: this node holds the
                        // verified file under its work name; it goes.
                        return self.discard_own_held(&member, &reason);
                    }
                    if held && member.status == Status::Done && member.direction == Direction::Push {
                        self.ctx.core.store.owe_cancel_notice(&member.id)?;
                        owed = true;
                        return Ok(());
                    }
                    if member.status.is_final() && member.status != Status::InError {
                        return Ok(());
                    }
                    match self.cancel_one(member, &reason) {
                        Ok(_) | Err(CommandError::InvalidState { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                })?;
                if owed {
                    self.ctx.actors.wake_commander();
                }
                set
            }
            None => self.cancel_one(rec, &reason)?,
        };
        self.ctx.core.store.flush().await?;
        Ok(rec)
    }

    /// Cancels a pulled `delivery = all` set's file that this node
    /// verified and holds, and removes its work file; unless the set's
    /// release ordered it meanwhile (recorded first), which then finishes
    /// it.
    fn discard_own_held(&self, member: &RequestRecord, reason: &str) -> Result<(), CommandError> {
        let line = format!("{reason}: the held file is discarded");
        let cancelled =
            self.ctx.core.store.update_if(&member.id, &line, crate::actors::set_release::is_own_held, |r| {
                lifecycle::cancel(r, reason, now_ms())
            })?;
        if cancelled.is_some() {
            if let Some(rule) = self.ctx.core.config.rule(&member.rule) {
                crate::transfer::receive::discard(&crate::transfer::receive::work_path(
                    &rule.recv_dir_for(&member.partner),
                    &member.id,
                ));
            }
        }
        Ok(())
    }

    /// Cancels one request; like [`Self::stop_one`], the record is written
    /// only if the path still holds, else decided again (bounded).
    fn cancel_one(&self, mut rec: RequestRecord, reason: &str) -> Result<RequestRecord, CommandError> {
        for _ in 0..8 {
            if lifecycle::cancel_path(&rec) != CommandPath::Record {
                break;
            }
            let cancelled = self.ctx.core.store.update_if(
                &rec.id,
                reason,
                |r| lifecycle::cancel_path(r) == CommandPath::Record,
                |r| lifecycle::cancel(r, reason, now_ms()),
            )?;
            match cancelled {
                Some(r) => return self.cancelled_aside(r),
                None => {
                    let id = rec.id.clone();
                    rec = self.ctx.core.store.get(&id)?.ok_or_else(|| CommandError::NotFound(id))?;
                }
            }
        }
        let id = &rec.id;
        Ok(match lifecycle::cancel_path(&rec) {
            CommandPath::ToRunner => {
                self.command(id, Command::Cancel(reason.to_owned()));
                self.ctx.core.store.log(id, "cancel requested by an operator")?;
                rec
            }
            CommandPath::Record | CommandPath::Refused => return Err(Self::invalid(&rec, "cancel")),
        })
    }

    /// After a cancel written to the record: the partial file of a pull
    /// removed, and the partner owed a notice if it may hold a record.
    fn cancelled_aside(&self, rec: RequestRecord) -> Result<RequestRecord, CommandError> {
        let id = &rec.id;
        if rec.direction == Direction::Pull {
            if let Some(rule) = self.ctx.core.config.rule(&rec.rule) {
                receive::discard(&receive::work_path(&rule.recv_dir_for(&rec.partner), id));
            }
        }
        if rec.attempts > 0 {
            // The partner may hold a record and a partial file: it is
            // owed a notice, which the Commander sends (and retries).
            self.ctx.core.store.owe_cancel_notice(id)?;
            self.ctx.actors.wake_commander();
        }
        Ok(rec)
    }

    /// Puts an `InError` or `Interrupted` request back in the queue; it
    /// resumes at the step and task that failed (from its restart point in
    /// the transfer; tasks that succeeded are not run again). A file set
    /// restarts its failed, skipped and stopped files; delivered files are
    /// not sent again.
    pub async fn restart(&self, id: &RequestId) -> Result<RequestRecord, CommandError> {
        let rec = self.own(id)?;
        if !lifecycle::can_restart(&rec) {
            return Err(Self::invalid(&rec, "restart"));
        }
        let rec = match &rec.set {
            Some(_) => {
                // A stream the partner refused as cancelled is tried again
                // (it may have pruned its record since).
                crate::actors::set_stream::forget_refusal(&self.ctx.run.set_streams, id);
                // Refused while a file still runs (a stop not yet taken
                // effect): it would end stopped after the restart and hold
                // the set open. And refused when no file can run again.
                let (mut restartable, mut running) = (0, 0);
                self.each_member(&rec, |m| {
                    restartable += usize::from(lifecycle::can_restart(&m));
                    running += usize::from(m.status == Status::Running);
                    Ok(())
                })?;
                if running == 0 && restartable == 0 {
                    // Every file delivered (or verified and held): the
                    // release is asked for again, or the set tasks run on.
                    let line = if rec.step == crate::store::Step::PostTask {
                        "restarted by an operator: its set tasks run on from the one that failed"
                    } else {
                        "restarted by an operator: its release is asked for again"
                    };
                    let again = self.ctx.core.store.update_if(id, line, lifecycle::set::can_release_again, |r| {
                        lifecycle::set::release_again(r);
                    })?;
                    if let Some(set) = again {
                        self.ctx.core.store.flush().await?;
                        return Ok(set);
                    }
                }
                if running > 0 || restartable == 0 {
                    let state = if running > 0 {
                        format!("a file set with {running} files still running (restart it once they stopped)")
                    } else {
                        "a file set none of whose files can run again (cancelled files stay cancelled)".into()
                    };
                    return Err(CommandError::InvalidState { id: id.clone(), action: "restart", state });
                }
                let reopen = |r: &mut RequestRecord| {
                    r.status = Status::Running;
                    r.step = crate::store::Step::Transfer;
                    r.error = None;
                    r.finished_at = None;
                };
                let line = "restarted by an operator";
                let Some(set) = self.ctx.core.store.update_if(id, line, lifecycle::can_restart, reopen)? else {
                    return Err(Self::invalid(&rec, "restart"));
                };
                self.each_member(&set, |m| {
                    let line = "restarted with its set";
                    self.ctx.core.store.update_if(&m.id, line, lifecycle::can_restart, lifecycle::restart)?;
                    Ok(())
                })?;
                set
            }
            None => self.ctx.core.store.update(id, "restarted by an operator", lifecycle::restart)?,
        };
        self.ctx.core.store.flush().await?;
        self.ctx.actors.wake_commander();
        Ok(rec)
    }

    /// Runs `f` on each of a file set's members in index order, read one at
    /// a time (a member missing from the store is damage, reported, not
    /// skipped).
    fn each_member(
        &self,
        set: &RequestRecord,
        mut f: impl FnMut(RequestRecord) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        for i in 0..set.set.as_ref().map_or(0, |i| i.files) {
            f(self.ctx.core.store.member(&set.id, i)?)?;
        }
        Ok(())
    }

    pub async fn stats(&self) -> NodeStats {
        let by_partner = match self.ctx.actors.get() {
            Some(a) => ractor::call!(a.connections, ConnectionsMsg::Counts).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        NodeStats {
            node_id: self.ctx.core.config.node_id.clone(),
            certificate: self.certificate(),
            certificate_reload_error: self.identity.status().last_error,
            connections: by_partner.values().sum(),
            connections_by_partner: by_partner,
            open_channels: self.ctx.run.open_channels.load(Ordering::Relaxed),
            running_requests: self.ctx.running_requests.load(Ordering::Relaxed),
        }
    }
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    shutdown_tx: watch::Sender<bool>,
    supervisor: ActorRef<SupervisorMsg>,
    quic_addr: SocketAddr,
    api_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a node is started; the defaults are what `ferry node` does.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// The network QUIC runs on (a simulation's socket and seed).
    pub network: transport::Network,
    /// Do not serve the REST API (a simulation drives the node through its
    /// [`NodeHandle`]).
    pub without_api: bool,
}

/// What a clean shutdown left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks or actors still holding the node's context when the shutdown
    /// grace period ended (0 when every one of them stopped).
    pub lingering: usize,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        Node::start_with(config, NodeOptions::default()).await
    }

    pub async fn start_with(config: NodeConfig, options: NodeOptions) -> Result<Node, NodeError> {
        if let Some(problem) = config.api_problem() {
            return Err(NodeError::ApiConfig(problem));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| NodeError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let pid_file = config.data_dir.join(PID_FILE);
        let store = match Store::open(&config.data_dir.join("store")) {
            Ok(store) => store,
            Err(StoreError::InUse { .. }) => {
                // Named only if it is a running ferry node (a pid file left
                // by a crash may name anything by now).
                let pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .filter(|pid| is_ferry_node(*pid));
                return Err(NodeError::DataDirInUse { path: config.data_dir.display().to_string(), pid });
            }
            Err(e) => return Err(e.into()),
        };
        // Checked once this node holds its data folder: a second node on
        // the same folder changes nothing before it is refused.
        let created = check_rule_folders(&config)?;
        // Written once this node holds the store's lock: a second node on the
        // same folder can then say whose it is.
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %pid_file.display(), error = %e, "cannot write the pid file");
        }
        let identity_files = IdentityFiles {
            node_id: config.node_id.clone(),
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
            ca: config.tls.ca.clone(),
            crl: config.tls.crl.clone(),
        };
        let identity = identity_files.load()?;
        if let Ok((_, not_after)) = transport::tls::certificate_serial_and_expiry(&identity.cert_chain[0]) {
            if let Some(warning) = transport::tls::expiry_warning(&config.node_id, not_after, reload::unix_now()) {
                tracing::warn!(node = %config.node_id, "{warning}");
            }
        }
        let tuning = TransportTuning {
            // Streams a partner may open per connection; the partner's
            // total over its connections is bounded again by its budget.
            max_concurrent_bidi_streams: u32::try_from(config.limits.channels).unwrap_or(u32::MAX),
            congestion: config.transport.congestion,
            loss_tolerance_percent: config.transport.loss_tolerance_percent,
            ..TransportTuning::default()
        };
        let endpoint = transport::make_endpoint_on(config.listen, &identity, &tuning, &options.network)?;
        let quic_addr = endpoint.local_addr().map_err(|e| NodeError::Actors(format!("no local address: {e}")))?;
        let api_listener = match options.without_api {
            true => None,
            false => Some(
                tokio::net::TcpListener::bind(config.api)
                    .await
                    .map_err(|source| NodeError::Api { addr: config.api, source })?,
            ),
        };
        let api_tls = match config.api_plain_http {
            true => None,
            false => Some(watch::channel(
                transport::tls::https_server_config(&identity)
                    .map_err(|e| NodeError::ApiConfig(format!("HTTPS: {e}")))?,
            )),
        };
        let (api_tls_tx, api_tls) = match api_tls {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let dial = transport::DialConfig::new(&identity, &tuning)?;
        let api_addr = match &api_listener {
            Some(l) => l.local_addr().map_err(|source| NodeError::Api { addr: config.api, source })?,
            None => config.api,
        };
        let audit = crate::audit::AuditLog::open(
            &config.node_id,
            &config.audit_path(),
            config.audit.max_bytes,
            config.audit.keep,
        )
        .map_err(|e| NodeError::Audit(format!("{}: {e}", config.audit_path().display())))?;
        let transfer_audit = audit.clone();
        store.observe(Arc::new(move |change| transfer_audit.record_change(change)));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.attach(&store)?;
        let events = Arc::new(crate::events::EventBus::new(&config.node_id));
        events.attach(&store);
        let tokens = TokenBook::open(store.clone()).map_err(|e| NodeError::Tokens(e.to_string()))?;
        if let Some(path) = tokens.bootstrap(&config.data_dir).await.map_err(|e| NodeError::Tokens(e.to_string()))? {
            tracing::info!(node = %config.node_id, path = %path.display(), "made the first admin API token (the store held none)");
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(NodeContext::new(config, store, endpoint.clone(), dial, shutdown_rx.clone()));
        let actors = ctx.actors.clone();
        let identity_watch = Arc::new(
            IdentityWatch::new(identity_files, &identity, endpoint.clone(), ctx.dial.clone(), tuning, api_tls_tx)?
                .on_reload(move |identity| {
                    if let Some(a) = actors.get() {
                        let _ = a.connections.cast(ConnectionsMsg::Recheck(identity));
                    }
                }),
        );
        // Before the node serves: releases a crash cut short are finished.
        let finished = crate::actors::set_release::finish_ordered(&ctx.core)?;
        if finished > 0 {
            tracing::info!(node = %ctx.core.config.node_id, files = finished, "finished the delivery of released file-set files");
        }
        // Before the Commander starts any runner: open sets counted again.
        let woken = ctx.actors.clone();
        let set_keeper =
            crate::actors::set_keeper::SetKeeper::start(&ctx.core.store, Arc::new(move || woken.wake_commander()))?;
        let actors = ctx.actors.clone();
        let asker: crate::actors::set_release::Asker = Arc::new(move |partner, ask, limit| {
            let actors = actors.clone();
            Box::pin(async move {
                let Some(a) = actors.get() else { return Err("the node is not running".to_string()) };
                let link = connections::connect(&a.connections, &partner).await.map_err(|e| e.message)?;
                transport::control::ask(&link.conn, &ask, limit)
                    .await
                    .map_err(|e| format!("{partner} did not answer: {e}"))
            })
        });
        let intake = ctx.intake.clone();
        let set_tasks: crate::actors::set_release::SetTaskRunner = Arc::new(move |id| {
            let intake = intake.clone();
            Box::pin(
                async move { crate::actors::task_runner::run_tasks(&intake, &id, crate::tasks::TaskList::Set).await },
            )
        });
        let releaser = crate::actors::set_release::Releaser::start(ctx.core.clone(), asker, set_tasks)?;
        let (supervisor, _) =
            Actor::spawn(None, Supervisor, ctx.clone()).await.map_err(|e| NodeError::Actors(e.to_string()))?;
        let handle = NodeHandle { ctx: ctx.clone(), identity: identity_watch.clone() };
        let pruner = crate::actors::retention::start(
            &ctx.core.store,
            ctx.core.config.clone(),
            ctx.run.serving.clone(),
            ctx.run.sets_in_use.clone(),
            shutdown_rx.clone(),
        );
        let mut tasks = vec![set_keeper, releaser, pruner];
        tasks.push(tokio::spawn(identity_watch.run(shutdown_rx.clone())));
        // A simulation's hosts share one thread and a simulated clock: no
        // allocator housekeeping there.
        if !crate::determinism::inline_io() {
            tasks.push(tokio::spawn(crate::memory::trim_when_idle(ctx.run.open_channels.clone(), shutdown_rx.clone())));
        }
        let accept_ctx = ctx.connections_context();
        tasks.push(tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Some(a) = accept_ctx.actors.get() else { continue };
                tokio::spawn(connections::admit(accept_ctx.clone(), a.connections, incoming));
            }
        }));
        if let Some(api_listener) = api_listener {
            let mut api_shutdown = shutdown_rx;
            let api_state = crate::api::ApiState {
                node: handle.clone(),
                tokens,
                audit,
                metrics,
                events,
                unauthenticated: Default::default(),
            };
            tasks.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = api_shutdown.wait_for(|s| *s).await;
                };
                if let Err(e) = crate::api::serve(api_listener, api_tls, api_state, stop).await {
                    tracing::error!(error = %e, "REST API stopped");
                }
            }));
        }
        for line in ctx.core.config.summary() {
            tracing::info!(node = %ctx.core.config.node_id, "{line}");
        }
        for line in created {
            tracing::info!(node = %ctx.core.config.node_id, "{line}");
        }
        tracing::info!(node = %ctx.core.config.node_id, quic = %quic_addr, api = %api_addr, "node started");
        Ok(Node { handle, shutdown_tx, supervisor, quic_addr, api_addr, tasks })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound REST API (TCP) address (the configured one when started
    /// without the API).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Stops the node cleanly: running requests become `Interrupted` and the
    /// store is flushed.
    pub async fn shutdown(self) -> ShutdownReport {
        let ctx = self.handle.ctx.clone();
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while ctx.run.open_channels.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Give the last frames (Error to partners) a moment on the wire.
        ctx.endpoint.close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.endpoint.wait_idle()).await;
        // Stopping the supervisor stops its children (Connections, Commander).
        let _ = self.supervisor.stop_and_wait(None, Some(SHUTDOWN_GRACE)).await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        if let Err(e) = ctx.core.store.flush().await {
            tracing::error!(error = %e, "cannot flush the store at shutdown");
        }
        // The data folder is no longer this process's.
        let _ = std::fs::remove_file(ctx.core.config.data_dir.join(PID_FILE));
        // The store closes (and releases its lock) with the last holder of
        // the context: wait, bounded, for runner tasks still finishing.
        drop(self.handle);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        // Every part holds the node through its handles (the core, the run
        // handle), not the context itself: count those beyond the
        // context's own.
        let holders = || (Arc::strong_count(&ctx) - 1) + ctx.holders();
        while holders() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lingering = holders();
        if lingering > 0 {
            tracing::warn!(node = %ctx.core.config.node_id, lingering, "node stopped with tasks still holding it");
        } else {
            tracing::info!(node = %ctx.core.config.node_id, "node stopped");
        }
        ShutdownReport { lingering }
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run_node(config: NodeConfig) -> Result<(), NodeError> {
    let node = Node::start(config).await?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(NodeError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(NodeError::Signal)?,
        _ = term.recv() => {}
    }
    tracing::info!("signal received; shutting down");
    node.shutdown().await;
    Ok(())
}
