//! One simulated host: a real ferry node, started (and restarted after a
//! crash) by turmoil, driven by the harness through a small mailbox.
//!
//! The harness never holds the node's handle: a crash must drop everything
//! the node owns (its sled store included, so the restarted node can open
//! it again). It talks to the host through [`HostIo`] instead: commands in,
//! acknowledgements and periodic snapshots out.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ferry::config::NodeConfig;
use ferry::model::Submit;
use ferry::node::{Node, NodeOptions, ShutdownReport};
use ferry::store::RequestRecord;
use ferry::transport::Network;

use super::udp::{Faults, SimSocket};

/// The QUIC port every simulated node listens on.
pub const PORT: u16 = 7000;

/// How often a host publishes its snapshot (simulated time).
const SNAPSHOT_EVERY: Duration = Duration::from_millis(50);

pub enum Command {
    Submit {
        tag: usize,
        submit: Box<Submit>,
    },
    /// An operator command on the request of submission `tag`.
    Operate {
        tag: usize,
        op: Operation,
    },
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Stop,
    Cancel,
    Restart,
}

/// What a host last reported.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub records: Vec<RequestRecord>,
    pub running_requests: usize,
    pub open_channels: usize,
    /// The partner of each notice this node still owes (a cancel, a set's
    /// end): the run has not settled while one is owed to a partner that
    /// is not lost.
    pub notices_owed_to: Vec<String>,
}

/// The mailbox between the harness and one host.
#[derive(Default)]
pub struct HostIo {
    pub inbox: VecDeque<Command>,
    /// (submission tag, request id or the refusal).
    pub acks: Vec<(usize, Result<String, String>)>,
    /// The submission being handed to the node (lost if the host crashes
    /// before the node answered it).
    pub in_flight: Option<usize>,
    /// Operator commands carried out: (tag, operation, result).
    pub operations: Vec<(usize, Operation, Result<(), String>)>,
    pub snapshot: Option<Snapshot>,
    pub starts: u32,
    pub start_error: Option<String>,
    pub stopped: Option<ShutdownReport>,
}

pub type Shared = Rc<RefCell<HostIo>>;

/// The host's software: what turmoil runs at start and after each bounce.
pub async fn software(
    name: String,
    config: NodeConfig,
    partners: Vec<String>,
    seed: u64,
    faults: Faults,
    io: Shared,
) -> turmoil::Result {
    let generation = {
        let mut io = io.borrow_mut();
        io.starts += 1;
        io.snapshot = None;
        io.starts
    };
    let mut config = config;
    config.listen = SocketAddr::new(turmoil::lookup(name.as_str()), PORT);
    for p in &mut config.partners {
        if partners.contains(&p.id) {
            p.address = SocketAddr::new(turmoil::lookup(p.id.as_str()), PORT);
        }
    }
    let socket = SimSocket::bind(config.listen, faults).await?;
    let mut quic_seed = [0u8; 32];
    quic_seed[..8].copy_from_slice(&seed.to_le_bytes());
    quic_seed[8..12].copy_from_slice(&generation.to_le_bytes());
    quic_seed[12..12 + name.len().min(20)].copy_from_slice(&name.as_bytes()[..name.len().min(20)]);
    let options = NodeOptions {
        network: Network { socket: Some(std::sync::Arc::new(socket)), rng_seed: Some(quic_seed) },
        without_api: true,
    };
    let node = match Node::start_with(config, options).await {
        Ok(node) => node,
        Err(e) => {
            io.borrow_mut().start_error = Some(format!("{name} (start {generation}) failed to start: {e}"));
            return Ok(());
        }
    };
    let handle = node.handle();
    loop {
        let commands: Vec<Command> = io.borrow_mut().inbox.drain(..).collect();
        for command in commands {
            match command {
                Command::Submit { tag, submit } => {
                    io.borrow_mut().in_flight = Some(tag);
                    let result = handle.submit(*submit).await.map(|r| r.id.to_string()).map_err(|e| e.to_string());
                    let mut io = io.borrow_mut();
                    io.in_flight = None;
                    io.acks.push((tag, result));
                }
                Command::Operate { tag, op } => {
                    let id = io.borrow().acks.iter().find(|(t, _)| *t == tag).and_then(|(_, r)| r.clone().ok());
                    let result = match id {
                        None => Err(format!("submission {tag} was not acknowledged")),
                        Some(id) => match ferry::protocol::RequestId::parse(&id) {
                            None => Err(format!("{id} is not a request id")),
                            Some(id) => match op {
                                Operation::Stop => handle.stop(&id).await,
                                Operation::Cancel => handle.cancel(&id).await,
                                Operation::Restart => handle.restart(&id).await,
                            }
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        },
                    };
                    io.borrow_mut().operations.push((tag, op, result));
                }
                Command::Shutdown => {
                    drop(handle);
                    let report = node.shutdown().await;
                    let mut io = io.borrow_mut();
                    io.stopped = Some(report);
                    io.snapshot = None;
                    return Ok(());
                }
            }
        }
        let records = handle.store().list(None).unwrap_or_default();
        let notices_owed_to = handle
            .store()
            .notices_owed()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, _)| handle.store().get(&id).ok().flatten().map(|r| r.partner))
            .collect();
        let stats = handle.stats().await;
        io.borrow_mut().snapshot = Some(Snapshot {
            records,
            running_requests: stats.running_requests,
            open_channels: stats.open_channels,
            notices_owed_to,
        });
        tokio::time::sleep(SNAPSHOT_EVERY).await;
    }
}
