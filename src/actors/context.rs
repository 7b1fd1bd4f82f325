//! The handles the node's parts are given: each actor and runner takes the
//! narrow ones it needs, not the whole node.
//!
//! - [`Core`]: what every part reads — the config, the store, and whether
//!   the node is shutting down.
//! - [`Actors`]: the long-lived actors as last (re)started by the
//!   supervisor, to wake the Commander or reach Connections.
//! - [`Intake`]: what submitting a request needs (the API, a partner's
//!   handover, a `transfer` task).
//! - [`RunHandle`]: what one request's run needs: the runners, the channel
//!   loop and its tasks.
//! - [`NodeContext`]: the node's parts in one place, held only by the node
//!   and the supervisor, which hand each actor its handles.
//!
//! Defined here, below the node, so the actors never import the node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ractor::ActorRef;
use tokio::sync::watch;

use super::availability::Availability;
use super::channel_run::ServingRun;
use super::commander::{CommanderContext, CommanderMsg};
use super::connections::{ConnectionsContext, ConnectionsMsg, ConnectionsParts};
use super::partner_budget::PartnerBudgets;
use crate::config::NodeConfig;
use crate::protocol::{Capabilities, RequestId};
use crate::store::Store;
use crate::transport::DialConfig;

/// What every part of a node reads.
#[derive(Clone)]
pub struct Core {
    pub config: Arc<NodeConfig>,
    pub store: Store,
    /// Becomes `true` when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Core {
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The long-lived actors, as last (re)started by the supervisor.
#[derive(Clone)]
pub struct ActorRefs {
    pub commander: ActorRef<CommanderMsg>,
    pub connections: ActorRef<ConnectionsMsg>,
}

/// Where the current long-lived actors are (none before the supervisor
/// started them).
#[derive(Clone, Default)]
pub struct Actors {
    refs: Arc<RwLock<Option<ActorRefs>>>,
    /// A `Wake` is in the Commander's mailbox and not yet taken: another
    /// would only repeat the same scan of the queue. Without this, every
    /// submission queued one, and with thousands queued for a partner that
    /// was down the one that said it was back waited minutes behind them.
    wake_queued: Arc<AtomicBool>,
}

impl Actors {
    pub fn set(&self, refs: ActorRefs) {
        if let Ok(mut a) = self.refs.write() {
            *a = Some(refs);
        }
    }

    pub fn get(&self) -> Option<ActorRefs> {
        self.refs.read().ok().and_then(|a| a.clone())
    }

    /// Tells the Commander new work may be queued (at most one such
    /// message waits in its mailbox at a time).
    pub fn wake_commander(&self) {
        if self.wake_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = self.get().is_some_and(|a| a.commander.cast(CommanderMsg::Wake).is_ok());
        if !sent {
            self.wake_queued.store(false, Ordering::Release);
        }
    }

    /// The Commander took a `Wake`: the next change needs a new one.
    /// Called before it scans the queue, so nothing queued during the scan
    /// is missed.
    pub fn commander_woken(&self) {
        self.wake_queued.store(false, Ordering::Release);
    }
}

/// What submitting a request needs.
#[derive(Clone)]
pub struct Intake {
    pub core: Core,
    /// Which group member is available.
    pub availability: Arc<Availability>,
    pub actors: Actors,
}

/// What one request's run needs: its runner, its channel loop, its tasks.
/// Cloned for every request, so one `Arc` (read through `Deref`).
#[derive(Clone)]
pub struct RunHandle(Arc<RunParts>);

impl std::ops::Deref for RunHandle {
    type Target = RunParts;

    fn deref(&self) -> &RunParts {
        &self.0
    }
}

/// The parts of a [`RunHandle`].
pub struct RunParts {
    pub core: Core,
    pub capabilities: Capabilities,
    /// What each partner may still cost this node.
    pub budgets: Arc<PartnerBudgets>,
    /// The requested-side runner currently serving each request: a token,
    /// the partner it serves, and the flag that tells an older runner of
    /// the same partner it was superseded.
    pub serving: Arc<Mutex<BTreeMap<RequestId, ServingRun>>>,
    /// The sets a partner's set streams and releases work on here now.
    pub sets_in_use: Arc<super::sets_in_use::SetsInUse>,
    /// Private channels (requests) running on this node, either side.
    pub open_channels: Arc<AtomicUsize>,
    /// The set streams this node leads, by set: where another file of the
    /// set joins the stream instead of opening one of its own.
    pub set_streams: super::set_stream::SetStreams,
    /// For `transfer` tasks.
    pub intake: Intake,
    /// What this node's sending transfers may hold in memory together.
    pub send_pool: crate::transfer::send_pool::SendPool,
    /// Disk space promised to the files being received.
    pub room: Arc<crate::transfer::room::DiskRoom>,
}

/// The node's parts, built at start-up.
pub struct NodeContext {
    pub core: Core,
    pub endpoint: quinn::Endpoint,
    /// The client settings of every dial (replaced when the TLS files are reloaded).
    pub dial: DialConfig,
    /// What this node knows of each partner's reachability.
    pub availability: Arc<Availability>,
    /// Requests this node's Commander is running.
    pub running_requests: Arc<AtomicUsize>,
    /// Queued requests per partner (each partner's share of the slots).
    pub queued: Arc<super::partner_share::QueuedByPartner>,
    pub actors: Actors,
    pub intake: Intake,
    pub run: RunHandle,
    /// How many handles of the core the context holds itself.
    own_core_refs: usize,
}

impl NodeContext {
    /// Handles of the node held outside this context — of its core, or of
    /// the run handle every runner shares: the actors, runners and tasks
    /// still alive (0 once every one of them ended).
    pub fn holders(&self) -> usize {
        let core = Arc::strong_count(&self.core.config).saturating_sub(self.own_core_refs);
        let runs = Arc::strong_count(&self.run.0).saturating_sub(1);
        core + runs
    }

    /// The parts of a node starting with this config, store and endpoint
    /// (no actors yet).
    pub fn new(
        config: NodeConfig,
        store: Store,
        endpoint: quinn::Endpoint,
        dial: DialConfig,
        shutdown: watch::Receiver<bool>,
    ) -> NodeContext {
        let budgets = Arc::new(PartnerBudgets::new(config.limits.clone()));
        let send_pool = crate::transfer::send_pool::SendPool::new(config.transport.send_buffer_bytes);
        let queued = super::partner_share::QueuedByPartner::attach(&store);
        let core = Core { config: Arc::new(config), store, shutdown };
        let availability = Arc::new(Availability::default());
        let actors = Actors::default();
        let intake = Intake { core: core.clone(), availability: availability.clone(), actors: actors.clone() };
        let run = RunHandle(Arc::new(RunParts {
            core: core.clone(),
            capabilities: Capabilities::default(),
            budgets,
            serving: Default::default(),
            sets_in_use: Default::default(),
            open_channels: Arc::new(AtomicUsize::new(0)),
            set_streams: Default::default(),
            intake: intake.clone(),
            send_pool,
            room: Default::default(),
        }));
        let own_core_refs = Arc::strong_count(&core.config);
        NodeContext {
            core,
            endpoint,
            dial,
            availability,
            running_requests: Arc::new(AtomicUsize::new(0)),
            queued,
            actors,
            intake,
            run,
            own_core_refs,
        }
    }

    /// The Commander's handles.
    pub fn commander_context(&self) -> CommanderContext {
        CommanderContext {
            core: self.core.clone(),
            availability: self.availability.clone(),
            queued: self.queued.clone(),
            running_requests: self.running_requests.clone(),
            run: self.run.clone(),
        }
    }

    /// Connections' handles (also what the accept loop admits with).
    pub fn connections_context(&self) -> ConnectionsContext {
        ConnectionsContext::new(ConnectionsParts {
            core: self.core.clone(),
            endpoint: self.endpoint.clone(),
            dial: self.dial.clone(),
            availability: self.availability.clone(),
            actors: self.actors.clone(),
            run: self.run.clone(),
        })
    }
}
