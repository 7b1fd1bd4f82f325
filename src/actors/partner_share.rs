//! A partner's share of the Commander's slots.
//!
//! The Commander runs at most `concurrency` requests at once. Without a
//! share, a partner whose transfers never end (one that takes the data and
//! never echoes, or a link that crawls) would come to hold every slot once
//! enough of its requests were queued, and no other partner's request
//! would start again. So one partner's requests hold at most [`share`] of
//! the slots (three quarters of `concurrency`, at least 1), whoever else
//! waits: the slots it holds are not taken back, so the share has to hold
//! before anyone else comes.
//!
//! [`QueuedByPartner`] counts the queued (`ToSubmit`) requests of each
//! partner from the store's record changes, so that a fill reads the queue
//! only as far as it can take requests: not past every queued request of a
//! partner at its share, on every wake-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{RecordChange, Status, Store, StoreError};

/// The most slots one partner's requests may hold while another
/// partner's requests wait: three quarters of `concurrency`, at least 1.
pub fn share(concurrency: usize) -> usize {
    (concurrency - concurrency / 4).max(1)
}

/// How many requests of each partner are queued (`ToSubmit`), kept from
/// the store's record changes.
#[derive(Default)]
pub struct QueuedByPartner {
    counts: Mutex<HashMap<String, usize>>,
}

impl QueuedByPartner {
    /// A count that follows every record `store` writes from now on.
    pub fn attach(store: &Store) -> Arc<QueuedByPartner> {
        let me = Arc::new(QueuedByPartner::default());
        let counter = me.clone();
        store.observe(Arc::new(move |change| counter.record_change(change)));
        me
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Follows one written record: it joined or left the queue, or neither.
    pub fn record_change(&self, change: &RecordChange<'_>) {
        let was = change.old.filter(|r| r.status == Status::ToSubmit).map(|r| r.partner.as_str());
        let is = Some(change.new).filter(|r| r.status == Status::ToSubmit).map(|r| r.partner.as_str());
        if was == is {
            return;
        }
        let mut counts = self.counts();
        if let Some(p) = was {
            if let Some(n) = counts.get_mut(p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(p);
                }
            }
        }
        if let Some(p) = is {
            *counts.entry(p.to_owned()).or_default() += 1;
        }
    }

    /// Counts the queue again from the store (at start-up, once the queue
    /// is rebuilt; what was counted before is replaced).
    pub fn recount(&self, store: &Store) -> Result<(), StoreError> {
        let mut fresh: HashMap<String, usize> = HashMap::new();
        store.queued_where(
            usize::MAX,
            |_| false,
            |rec| {
                *fresh.entry(rec.partner.clone()).or_default() += 1;
                false
            },
        )?;
        *self.counts() = fresh;
        Ok(())
    }

    /// How many queued requests could start now when each partner may
    /// start at most `room(partner)` more: the most a fill can take, so it
    /// stops reading the queue once it took them, instead of reading every
    /// queued request of a partner at its share.
    pub fn could_start(&self, room: impl Fn(&str) -> usize) -> usize {
        self.counts().iter().map(|(p, n)| (*n).min(room(p))).fold(0, usize::saturating_add)
    }

    /// The queued requests of `partner`. (what the tests look at).
    #[cfg(test)]
    fn of(&self, partner: &str) -> usize {
        self.counts().get(partner).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Direction, RequestId};
    use crate::store::{RequestRecord, Role};

    fn rec(partner: &str, status: Status) -> RequestRecord {
        RequestRecord {
            status,
            ..RequestRecord::new(RequestId::generate(), Role::Requester, partner, "r", Direction::Push, "f")
        }
    }

    #[test]
    fn a_partner_leaves_a_quarter_of_the_slots_to_the_others() {
        assert_eq!([share(1), share(2), share(3), share(4), share(64)], [1, 2, 3, 3, 48]);
    }

    #[test]
    fn the_count_follows_requests_into_and_out_of_the_queue() {
        let q = QueuedByPartner::default();
        let queued = rec("b", Status::ToSubmit);
        q.record_change(&RecordChange { old: None, new: &queued });
        q.record_change(&RecordChange { old: None, new: &rec("c", Status::ToSubmit) });
        q.record_change(&RecordChange { old: None, new: &rec("c", Status::Running) });
        assert_eq!((q.of("b"), q.of("c")), (1, 1));
        assert_eq!(q.could_start(|_| 5), 2);
        assert_eq!(q.could_start(|p| if p == "b" { 0 } else { 5 }), 1, "b is at its share");
        // b's request runs, then goes back to the queue, then ends.
        let running = RequestRecord { status: Status::Running, ..queued.clone() };
        q.record_change(&RecordChange { old: Some(&queued), new: &running });
        assert_eq!(q.of("b"), 0);
        q.record_change(&RecordChange { old: Some(&running), new: &queued });
        q.record_change(&RecordChange { old: Some(&queued), new: &queued });
        assert_eq!(q.of("b"), 1, "a write that leaves it queued counts once");
        let done = RequestRecord { status: Status::Done, ..queued.clone() };
        q.record_change(&RecordChange { old: Some(&queued), new: &done });
        assert_eq!(q.of("b"), 0);
        assert_eq!(q.could_start(|p| if p == "c" { 0 } else { usize::MAX }), 0);
    }

    #[test]
    fn a_recount_reads_the_queue_of_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let q = QueuedByPartner::attach(&store);
        for p in ["b", "b", "c"] {
            store.insert(rec(p, Status::ToSubmit), "queued").expect("insert");
        }
        store.insert(rec("d", Status::Done), "done").expect("insert");
        assert_eq!((q.of("b"), q.of("c"), q.of("d")), (2, 1, 0));
        let other = QueuedByPartner::default();
        other.recount(&store).expect("recount");
        assert_eq!((other.of("b"), other.of("c"), other.of("d")), (2, 1, 0));
    }
}
