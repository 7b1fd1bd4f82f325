//! What the node's actors and runners share: the node's config, store,
//! endpoint, partner tables and the handles of the long-lived actors.
//!
//! Defined here, below the node, so the actors never import the node: the
//! node builds one [`NodeContext`] at start-up and hands it down.

use std::sync::atomic::AtomicUsize;
use std::sync::RwLock;

use ractor::ActorRef;
use tokio::sync::watch;

use super::availability::Availability;
use super::commander::CommanderMsg;
use super::connections::ConnectionsMsg;
use super::partner_budget::PartnerBudgets;
use crate::config::NodeConfig;
use crate::protocol::{Capabilities, RequestId};
use crate::store::Store;

/// The long-lived actors, as last (re)started by the supervisor.
#[derive(Clone)]
pub struct ActorRefs {
    pub commander: ActorRef<CommanderMsg>,
    pub connections: ActorRef<ConnectionsMsg>,
}

/// What every part of a running node shares.
pub struct NodeContext {
    pub config: NodeConfig,
    pub store: Store,
    pub endpoint: quinn::Endpoint,
    pub capabilities: Capabilities,
    /// Becomes `true` when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Private channels (requests) currently running on this node, either side.
    pub open_channels: AtomicUsize,
    /// Requests this node's Commander is running.
    pub running_requests: AtomicUsize,
    /// The requested-side runner currently serving each request: a token,
    /// the partner it serves, and the flag that tells an older runner of
    /// the same partner it was superseded.
    pub serving: std::sync::Mutex<std::collections::BTreeMap<RequestId, super::channel_run::ServingRun>>,
    /// What this node knows of each partner's reachability.
    pub availability: Availability,
    /// What each partner may still cost this node.
    pub budgets: PartnerBudgets,
    actors: RwLock<Option<ActorRefs>>,
}

impl NodeContext {
    /// A context for a node starting with these parts (no actors yet).
    pub fn new(
        config: NodeConfig,
        store: Store,
        endpoint: quinn::Endpoint,
        shutdown: watch::Receiver<bool>,
    ) -> NodeContext {
        let budgets = PartnerBudgets::new(config.limits.clone());
        NodeContext {
            config,
            store,
            endpoint,
            capabilities: Capabilities::default(),
            shutdown,
            open_channels: AtomicUsize::new(0),
            running_requests: AtomicUsize::new(0),
            serving: Default::default(),
            availability: Availability::default(),
            budgets,
            actors: RwLock::new(None),
        }
    }

    pub fn set_actors(&self, refs: ActorRefs) {
        if let Ok(mut a) = self.actors.write() {
            *a = Some(refs);
        }
    }

    pub fn actors(&self) -> Option<ActorRefs> {
        self.actors.read().ok().and_then(|a| a.clone())
    }
}
