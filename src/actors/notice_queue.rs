//! The notices the Commander still owes partners (see
//! [`crate::store::Notice`]), kept in memory between reads of the store.
//!
//! The store keeps every owed notice until its partner answered it. A
//! cancelled `delivery = all` set owes one per file its partner holds, so
//! there may be tens of thousands, all for a partner that is down. Reading
//! them all from the store at every fill made every submit and every
//! runner's end cost time in proportion to them (about 7 ms of CPU per
//! submit with 9,600 owed), and starting a task for each at once, when the
//! partner came back, flooded it with control asks.
//!
//! So the owed notices are read into a backlog, and read again only when
//! one was written since (at once when the backlog is empty and none was
//! passed over since the last read, else at most once a second: a set's
//! cancel writes thousands in a row, and notices owed to a partner that is
//! down are all passed over at each read) or, on a tick, when some could
//! not be sent (partner unavailable, set not ended yet, no answer). At most
//! [`MAX_TELLING`] are sent at once; each answer makes room for the next.
//! A notice that was not answered goes to the back at the next read, so a
//! partner that fails every ask does not keep the others' notices waiting.
//! Pure: the Commander reads the store and sends.
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

use crate::protocol::RequestId;
use crate::store::Notice;

/// Notices sent at once, at most (each is a control ask to its partner).
pub const MAX_TELLING: usize = 32;

/// While the backlog is not empty, or some were passed over since the last
/// read, the store's owed notices are read again at most this often when
/// new ones are written.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A notice in flight: its request and kind ([`Notice::kind`]).
pub type Key = (RequestId, u8);

#[derive(Debug, Default)]
pub struct NoticeQueue {
    /// The store's count of notices written, when they were last read.
    seen: Option<u64>,
    read_at: Option<Instant>,
    /// Some could not be sent: read them again on the next tick.
    retry: bool,
    backlog: VecDeque<(RequestId, Notice)>,
    telling: BTreeSet<Key>,
    /// Not answered since the last read: sent after the others next time.
    unanswered: BTreeSet<Key>,
}

impl NoticeQueue {
    /// Whether the owed notices must be read from the store now: never
    /// read yet; new ones written (`written` is the store's count) and
    /// either the backlog empty with none passed over, or the last read
    /// [`RELOAD_EVERY`] ago; or, `on_tick`, some could not be sent.
    pub fn wants_read(&self, written: u64, on_tick: bool, now: Instant) -> bool {
        let Some(seen) = self.seen else { return true };
        let stale = self.read_at.is_none_or(|at| now.duration_since(at) >= RELOAD_EVERY);
        (seen != written && ((self.backlog.is_empty() && !self.retry) || stale)) || (on_tick && self.retry)
    }

    /// The store's owed notices, read when its count was `written`: they
    /// replace the backlog, less those being sent.
    pub fn read(&mut self, written: u64, owed: Vec<(RequestId, Notice)>, now: Instant) {
        self.seen = Some(written);
        self.read_at = Some(now);
        self.retry = false;
        let (mut first, mut last) = (VecDeque::new(), VecDeque::new());
        for (id, n) in owed {
            let key = (id, n.kind());
            if self.telling.contains(&key) {
                continue;
            }
            match self.unanswered.contains(&key) {
                true => last.push_back((key.0, n)),
                false => first.push_back((key.0, n)),
            }
        }
        first.append(&mut last);
        self.backlog = first;
        self.unanswered.clear();
    }

    /// Notices of one request to look at before the rest (another notice
    /// of a request whose notice was just answered may have waited for it).
    pub fn first(&mut self, owed: Vec<(RequestId, Notice)>) {
        for n in owed.into_iter().rev() {
            self.backlog.push_front(n);
        }
    }

    /// The next notice to look at, if one may be sent now. The caller
    /// marks it [`sending`](Self::sending) or [`passed_over`](Self::passed_over),
    /// or drops it (no longer owed, or given up as the store decides).
    pub fn up_next(&mut self) -> Option<(RequestId, Notice)> {
        while self.telling.len() < MAX_TELLING {
            let (id, notice) = self.backlog.pop_front()?;
            if !self.telling.contains(&(id.clone(), notice.kind())) {
                return Some((id, notice));
            }
        }
        None
    }

    /// `key` is being sent.
    pub fn sending(&mut self, key: Key) {
        self.telling.insert(key);
    }

    /// A notice was not sent now (it is still owed in the store): it is
    /// read again on the next tick.
    pub fn passed_over(&mut self) {
        self.retry = true;
    }

    /// `key` was answered, or not; a notice not answered is still owed and
    /// read again on the next tick.
    pub fn told(&mut self, key: &Key, answered: bool) {
        self.telling.remove(key);
        if !answered {
            self.retry = true;
            self.unanswered.insert(key.clone());
        }
    }

    /// How many are being sent now.
    pub fn in_flight(&self) -> usize {
        self.telling.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId::parse(&format!("{n:032x}")).expect("a valid id")
    }

    fn owed(n: u64) -> Vec<(RequestId, Notice)> {
        (0..n).map(|i| (id(i), Notice::Cancel)).collect()
    }

    #[test]
    fn at_most_max_telling_are_sent_at_once_and_each_answer_makes_room() {
        let (mut q, t) = (NoticeQueue::default(), Instant::now());
        q.read(1, owed(100), t);
        let mut sent = BTreeSet::new();
        let mut telling = Vec::new();
        let mut most = 0;
        loop {
            while let Some((id, n)) = q.up_next() {
                q.sending((id.clone(), n.kind()));
                assert!(sent.insert(id.clone()), "{id} sent twice");
                telling.push(id);
            }
            most = most.max(q.in_flight());
            assert!(q.in_flight() <= MAX_TELLING);
            let Some(answered) = telling.pop() else { break };
            q.told(&(answered, 0), true);
        }
        assert_eq!(most, MAX_TELLING, "as many as allowed at once");
        assert_eq!(sent.len(), 100, "every one in the end");
    }

    #[test]
    fn the_store_is_read_again_only_when_notices_were_written_or_some_must_be_retried() {
        let (mut q, t) = (NoticeQueue::default(), Instant::now());
        assert!(q.wants_read(0, false, t), "never read");
        q.read(0, owed(3), t);
        assert!(!q.wants_read(0, false, t), "nothing written since");
        assert!(!q.wants_read(0, true, t), "a tick with nothing to retry");
        // Written while the backlog is not empty: not before a second.
        assert!(!q.wants_read(5, false, t + Duration::from_millis(10)));
        assert!(q.wants_read(5, false, t + RELOAD_EVERY));
        // Written with the backlog empty: at once.
        while q.up_next().is_some() {}
        assert!(q.wants_read(5, false, t + Duration::from_millis(10)));
        q.read(5, owed(1), t);
        q.up_next();
        q.passed_over();
        assert!(!q.wants_read(5, false, t), "a fill does not retry");
        assert!(q.wants_read(5, true, t), "a tick does");
        q.read(5, Vec::new(), t);
        q.told(&(id(9), 0), false);
        assert!(q.wants_read(5, true, t), "a notice not answered is retried on a tick");
    }

    #[test]
    fn notices_not_answered_go_after_the_others_at_the_next_read() {
        let (mut q, t) = (NoticeQueue::default(), Instant::now());
        // The first MAX_TELLING go to a partner that answers none of them.
        let owed = owed(MAX_TELLING as u64 + 3);
        q.read(1, owed.clone(), t);
        let mut failing = Vec::new();
        while let Some((id, n)) = q.up_next() {
            q.sending((id.clone(), n.kind()));
            failing.push(id);
        }
        for id in &failing {
            q.told(&(id.clone(), 0), false);
        }
        assert!(q.wants_read(1, true, t), "read again on the tick");
        q.read(1, owed, t);
        let (next, _) = q.up_next().expect("one");
        assert_eq!(next, id(MAX_TELLING as u64), "the others' notices first");
        // And a notice written meanwhile waits for a second, not for ever.
        let mut q2 = NoticeQueue::default();
        q2.read(1, Vec::new(), t);
        q2.passed_over();
        assert!(!q2.wants_read(2, false, t), "some were passed over: not at once");
        assert!(q2.wants_read(2, false, t + RELOAD_EVERY), "but within a second");
    }

    #[test]
    fn a_notice_being_sent_is_not_sent_again_when_the_store_is_read() {
        let (mut q, t) = (NoticeQueue::default(), Instant::now());
        q.read(1, owed(2), t);
        let (first, n) = q.up_next().expect("one");
        q.sending((first.clone(), n.kind()));
        q.read(2, owed(2), t);
        let (second, _) = q.up_next().expect("the other");
        assert_ne!(first, second);
        assert!(q.up_next().is_none());
        // Of one request, the other kind is another notice.
        q.first(vec![(first.clone(), Notice::SetEnded { at: 7 })]);
        assert_eq!(q.up_next(), Some((first, Notice::SetEnded { at: 7 })));
    }
}
