//! Live transfer events: every record write that changes a transfer's
//! status, step or byte count becomes one event, numbered in order, kept
//! in a ring of the last [`KEPT`] and sent to every subscriber
//! (`GET /api/v1/events`, Server-Sent Events).
//!
//! Positions: an event's position is `EPOCH-SEQ`, where `EPOCH` names this
//! run of the node (its start time) and `SEQ` counts from 1. A subscriber
//! that comes back with the position of the last event it saw gets every
//! later event still kept, then the live ones, without a gap or a repeat.
//! If the events after its position are no longer kept (it was away too
//! long, or the node restarted: another epoch), it is told so first with a
//! [`Gap`], and should read the transfers' state again.
//!
//! The bus is fed by [`Store::observe`], on the writer's thread, under one
//! short lock: numbering, keeping and broadcasting happen together, which
//! is what lets [`EventBus::subscribe`] hand out a backlog and a live
//! receiver that neither overlap nor leave a hole.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::model::view::TransferView;
use crate::model::TransferEvent;
use crate::protocol::RequestId;
use crate::store::{now_ms, RecordChange, RequestRecord, Store};

/// Events kept for subscribers that come back.
pub const KEPT: usize = 4096;
/// Events a live subscriber may fall behind by before it is served from
/// the ring instead.
const LIVE_BUFFER: usize = 1024;

/// One event as the bus keeps it: what filters look at, and what the
/// JSON sent is made from.
#[derive(Debug)]
pub struct Kept {
    pub seq: u64,
    pub id: RequestId,
    pub rule: String,
    pub partner: String,
    at: u64,
    rate: Option<f64>,
    /// The record as this write left it.
    record: RequestRecord,
    node_id: Arc<str>,
    /// The run of the node (see [`EventBus::position`]).
    epoch: u64,
    /// The [`TransferEvent`], made and serialized once, when a subscriber
    /// first reads it (most events are never read: a write only pays for
    /// keeping the record).
    json: std::sync::OnceLock<String>,
}

impl Kept {
    /// The [`TransferEvent`] as JSON.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let event = TransferEvent {
                position: format!("{}-{}", self.epoch, self.seq),
                at: self.at,
                rate: self.rate,
                transfer: TransferView::from_record(&self.record, &self.node_id),
            };
            serde_json::to_string(&event).unwrap_or_default()
        })
    }
}

/// Events a subscriber missed and cannot get any more.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Gap {
    /// The position the subscriber asked to resume after.
    pub after: String,
    /// The oldest position still kept (events from it on follow).
    pub oldest: Option<String>,
    pub message: String,
}

/// Whether a write is an event: a new record, or a change of status, step
/// or bytes transferred.
pub fn is_event(old: Option<&RequestRecord>, new: &RequestRecord) -> bool {
    old.is_none_or(|o| o.status != new.status || o.step != new.step || o.transferred != new.transferred)
}

/// Bytes per second between two progress samples `(transferred, at_ms)`;
/// `None` across a restart below the last count or without time between.
pub fn rate(previous: (u64, u64), now: (u64, u64)) -> Option<f64> {
    let (bytes, ms) = (now.0.checked_sub(previous.0)?, now.1.checked_sub(previous.1)?);
    (ms > 0).then(|| bytes as f64 * 1000.0 / ms as f64)
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Arc<Kept>>,
    /// The last progress sample of each unfinished transfer, for its rate.
    progress: HashMap<RequestId, (u64, u64)>,
}

/// The node's event bus.
pub struct EventBus {
    node_id: Arc<str>,
    epoch: u64,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Kept>>,
}

/// What [`EventBus::subscribe`] hands out.
pub struct Subscription {
    /// Set when events after the asked position are no longer kept.
    pub gap: Option<Gap>,
    /// Kept events after the asked position, oldest first.
    pub backlog: Vec<Arc<Kept>>,
    /// Every later event.
    pub live: broadcast::Receiver<Arc<Kept>>,
    /// The sequence number of the last event before what this
    /// subscription hands out (what a lagging subscriber catches up from).
    pub after_seq: u64,
}

impl EventBus {
    pub fn new(node_id: &str) -> EventBus {
        EventBus {
            node_id: Arc::from(node_id),
            epoch: now_ms(),
            ring: Mutex::new(Ring { next_seq: 1, events: VecDeque::new(), progress: HashMap::new() }),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Listens to every record write of `store` from now on.
    pub fn attach(self: &Arc<Self>, store: &Store) {
        let me = self.clone();
        store.observe(Arc::new(move |change| me.record_change(change)));
    }

    /// The position of event `seq` of this run.
    pub fn position(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// The sequence number a position names in this run; `None` for another
    /// run's (or a malformed) position.
    fn seq_of(&self, position: &str) -> Option<u64> {
        let (epoch, seq) = position.split_once('-')?;
        (epoch.parse::<u64>().ok()? == self.epoch).then_some(())?;
        seq.parse().ok()
    }

    /// Turns a write into an event, if it is one.
    pub fn record_change(&self, change: &RecordChange<'_>) {
        let rec = change.new;
        if !is_event(change.old, rec) {
            return;
        }
        let Ok(mut ring) = self.ring.lock() else { return };
        let at = now_ms();
        let sample = (rec.transferred, at);
        let rate = match ring.progress.get(&rec.id) {
            Some(&previous) if rec.transferred != previous.0 => rate(previous, sample),
            _ => None,
        };
        match rec.status.is_final() {
            true => ring.progress.remove(&rec.id),
            false => ring.progress.insert(rec.id.clone(), sample),
        };
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let kept = Arc::new(Kept {
            seq,
            id: rec.id.clone(),
            rule: rec.rule.clone(),
            partner: rec.partner.clone(),
            at,
            rate,
            record: rec.clone(),
            node_id: self.node_id.clone(),
            epoch: self.epoch,
            json: std::sync::OnceLock::new(),
        });
        if ring.events.len() == KEPT {
            ring.events.pop_front();
        }
        ring.events.push_back(kept.clone());
        // No subscriber is not an error.
        let _ = self.live.send(kept);
    }

    /// Subscribes from after `position` (every kept event after it), or
    /// from now without one.
    pub fn subscribe(&self, position: Option<&str>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = self.live.subscribe();
        let last = ring.next_seq - 1;
        let Some(position) = position else {
            return Subscription { gap: None, backlog: Vec::new(), live, after_seq: last };
        };
        let seq = self.seq_of(position);
        let after_seq = seq.map_or(0, |s| s.min(last));
        let (gap, backlog) = backlog_after(&ring.events, seq, ring.next_seq);
        let gap = gap.then(|| Gap {
            after: position.to_owned(),
            oldest: ring.events.front().map(|e| self.position(e.seq)),
            message: format!(
                "events after {position} are no longer kept (the node keeps the last {KEPT}, and restarts \
                 start a new series): read the transfers' state again"
            ),
        });
        Subscription { gap, backlog, live, after_seq }
    }

    /// Kept events after `seq` of this run, for a subscriber that fell
    /// behind the live buffer; `None` if some are no longer kept.
    pub fn catch_up(&self, seq: u64) -> Option<Vec<Arc<Kept>>> {
        let ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match backlog_after(&ring.events, Some(seq), ring.next_seq) {
            (false, backlog) => Some(backlog),
            (true, _) => None,
        }
    }
}

/// The kept events after `seq` and whether some after it are gone
/// (`seq` of `None`: another run's position, so all of this run's are new
/// and the ones of that run are gone).
fn backlog_after(events: &VecDeque<Arc<Kept>>, seq: Option<u64>, next_seq: u64) -> (bool, Vec<Arc<Kept>>) {
    let oldest = events.front().map_or(next_seq, |e| e.seq);
    match seq {
        Some(seq) if seq >= next_seq => (false, Vec::new()),
        Some(seq) => (seq + 1 < oldest, events.iter().filter(|e| e.seq > seq).cloned().collect()),
        None => (true, events.iter().cloned().collect()),
    }
}

#[cfg(test)]
mod tests;
