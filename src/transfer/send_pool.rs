//! The node's bound on what its senders hold in memory.
//!
//! A sending transfer holds the blocks its pump has read ahead of the
//! network and, once they are written to the stream, the blocks QUIC keeps
//! until the partner acknowledges them. Without a bound per node, 64
//! concurrent pushes held 64 pumps' read-ahead each (measured: 768 MiB
//! resident on the sender, docs/BENCHMARKS.md "Memory").
//!
//! Every frame a pump produces takes a [`Hold`] first, and the hold goes
//! with the frame's bytes ([`frame_bytes`]): it is given back when the
//! last copy of those bytes is dropped, that is when QUIC has the whole
//! frame acknowledged (or the stream or connection is gone). Each transfer
//! has one frame of its own outside the pool ([`SendSlots`]), so a
//! transfer always makes progress whatever the others hold (a partner that
//! acknowledges slowly cannot stop another partner's transfers); every
//! further frame takes its bytes from the node's pool, and waits while the
//! pool is spent. So a node's senders hold at most the pool plus one frame
//! per running transfer.
//!
//! One partner's transfers together may hold at most half the pool
//! ([`SendPool::share`]). Without that bound, a partner that reads slowly
//! or leaves its frames unacknowledged (a slow link, or a hostile partner
//! with a valid certificate and many transfers) could hold the whole pool,
//! and every other partner's transfers would be left with one frame in
//! flight each. Half the default pool (32 MiB) is still more than one
//! transfer needs to run at full speed here (docs/BENCHMARKS.md "Memory").
//!
//! The pool is a plain mutex and condition variable: pumps run on blocking
//! threads, and a hold is given back from wherever QUIC drops the bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;

/// How often a pump waiting for room looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The bytes of frames a node's senders may hold beyond each transfer's
/// own frame. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct SendPool(Arc<PoolState>);

#[derive(Debug)]
struct PoolState {
    capacity: usize,
    room: Mutex<Room>,
    returned: Condvar,
}

/// What the pool has left, and what each partner's transfers hold of it.
#[derive(Debug)]
struct Room {
    free: usize,
    by_partner: HashMap<Arc<str>, usize>,
}

impl Room {
    fn held_by(&self, partner: &str) -> usize {
        self.by_partner.get(partner).copied().unwrap_or(0)
    }
}

impl SendPool {
    /// A pool of `capacity` bytes.
    pub fn new(capacity: usize) -> SendPool {
        let room = Room { free: capacity, by_partner: HashMap::new() };
        SendPool(Arc::new(PoolState { capacity, room: Mutex::new(room), returned: Condvar::new() }))
    }

    /// The most one partner's transfers may hold together: half the pool.
    pub fn share(&self) -> usize {
        self.0.capacity / 2
    }

    fn room(&self) -> std::sync::MutexGuard<'_, Room> {
        self.0.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of the pool held now.
    pub fn held(&self) -> usize {
        self.0.capacity - self.room().free
    }

    /// Bytes of the pool `partner`'s transfers hold now.
    pub fn held_by(&self, partner: &str) -> usize {
        self.room().held_by(partner)
    }

    /// The slots of one transfer to (or from) `partner`.
    pub fn slots(&self, partner: &str) -> SendSlots {
        SendSlots { pool: self.clone(), partner: Arc::from(partner), own: Arc::new(AtomicBool::new(false)) }
    }

    /// Takes `len` bytes for `partner` if the pool has them and the
    /// partner's share allows, else waits up to `wait` for bytes or for
    /// the transfer's own frame (`own`) to come back (checked under the
    /// lock its return notifies through, so no return is missed). Whether
    /// the bytes were taken.
    fn take_or_wait(&self, len: usize, partner: &Arc<str>, own: &AtomicBool, wait: Duration) -> bool {
        let share = self.share();
        let fits = |r: &Room| r.free >= len && r.held_by(partner) + len <= share;
        let mut room = self.room();
        if !fits(&room) && own.load(Ordering::Acquire) {
            room = self.0.returned.wait_timeout(room, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        if fits(&room) {
            room.free -= len;
            *room.by_partner.entry(partner.clone()).or_insert(0) += len;
            true
        } else {
            false
        }
    }

    /// Wakes the pumps waiting for room: a transfer's own frame came back.
    fn wake(&self) {
        // Under the lock, so a pump between its check and its wait hears it.
        drop(self.room());
        self.0.returned.notify_all();
    }

    fn give_back(&self, partner: &str, len: usize) {
        let mut room = self.room();
        room.free = (room.free + len).min(self.0.capacity);
        if let Some(held) = room.by_partner.get_mut(partner) {
            *held = held.saturating_sub(len);
            if *held == 0 {
                room.by_partner.remove(partner);
            }
        }
        drop(room);
        self.0.returned.notify_all();
    }
}

/// One transfer's way to its frames' room: its own frame, then the pool.
#[derive(Debug)]
pub struct SendSlots {
    pool: SendPool,
    /// The partner whose share of the pool the transfer's frames count in.
    partner: Arc<str>,
    /// Whether the transfer's own frame is out (held by a frame's bytes).
    own: Arc<AtomicBool>,
}

impl SendSlots {
    /// Room for a frame of `len` bytes, waiting while there is none (call
    /// it from a blocking thread). `None` once `stop` is set. A frame
    /// larger than a partner's share waits for the transfer's own frame.
    pub fn hold(&self, len: usize, stop: &AtomicBool) -> Option<Hold> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if self.own.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some(Hold::Own(self.pool.clone(), self.own.clone()));
            }
            if len > self.pool.share() {
                // Only its own frame can carry it (the config keeps the
                // pool above two of the largest frames).
                std::thread::sleep(STOP_CHECK / 10);
            } else if self.pool.take_or_wait(len, &self.partner, &self.own, STOP_CHECK) {
                return Some(Hold::Pool(self.pool.clone(), self.partner.clone(), len));
            }
        }
    }
}

/// Room for one frame, given back when dropped.
#[derive(Debug)]
pub enum Hold {
    /// The transfer's own frame (the pool is told when it comes back: its
    /// transfer may be waiting for it).
    Own(SendPool, Arc<AtomicBool>),
    /// Bytes of the node's pool, counted in a partner's share.
    Pool(SendPool, Arc<str>, usize),
}

impl Drop for Hold {
    fn drop(&mut self) {
        match self {
            Hold::Own(pool, out) => {
                out.store(false, Ordering::Release);
                pool.wake();
            }
            Hold::Pool(pool, partner, len) => pool.give_back(partner, *len),
        }
    }
}

/// A frame's bytes that keep `hold` until their last copy is dropped.
pub fn frame_bytes(frame: Vec<u8>, hold: Option<Hold>) -> Bytes {
    match hold {
        None => Bytes::from(frame),
        Some(hold) => Bytes::from_owner(HeldFrame { frame, _hold: hold }),
    }
}

struct HeldFrame {
    frame: Vec<u8>,
    _hold: Hold,
}

impl AsRef<[u8]> for HeldFrame {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_has_one_frame_of_its_own_and_the_rest_comes_from_the_pool() {
        let pool = SendPool::new(20);
        let stop = AtomicBool::new(false);
        let slots = pool.slots("b");
        let own = slots.hold(100, &stop).expect("its own frame, whatever its size");
        assert_eq!(pool.held(), 0);
        let a = slots.hold(6, &stop).expect("room in the pool");
        assert_eq!(pool.held(), 6);
        // Another transfer still gets its own frame while the pool is short.
        let other = pool.slots("b");
        let other_own = other.hold(8, &stop).expect("its own frame");
        assert_eq!(pool.held(), 6);
        drop((own, other_own));
        drop(a);
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn room_comes_back_when_the_last_copy_of_the_bytes_is_dropped() {
        let pool = SendPool::new(10);
        let stop = AtomicBool::new(false);
        let slots = pool.slots("b");
        let _own = slots.hold(1, &stop).expect("own");
        let hold = slots.hold(4, &stop).expect("pool");
        let bytes = frame_bytes(vec![7; 4], Some(hold));
        let tail = bytes.slice(2..);
        drop(bytes);
        assert_eq!(pool.held(), 4, "a slice still holds the frame");
        assert_eq!(&tail[..], &[7, 7]);
        drop(tail);
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn a_pump_waits_for_room_and_goes_on_when_it_is_given_back() {
        let pool = SendPool::new(8);
        let stop = Arc::new(AtomicBool::new(false));
        let slots = pool.slots("b");
        let _own = slots.hold(4, &stop).expect("own");
        let first = slots.hold(4, &stop).expect("pool");
        let waiting = {
            let stop = stop.clone();
            std::thread::spawn(move || slots.hold(4, &stop).map(|h| matches!(h, Hold::Pool(..))))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "no room yet");
        drop(first);
        assert_eq!(waiting.join().expect("joins"), Some(true));
    }

    #[test]
    fn a_waiting_pump_stops_when_told() {
        let pool = SendPool::new(8);
        let stop = Arc::new(AtomicBool::new(false));
        let slots = pool.slots("b");
        let _own = slots.hold(4, &stop).expect("own");
        let _full = slots.hold(4, &stop).expect("pool");
        let waiting = {
            let stop = stop.clone();
            std::thread::spawn(move || slots.hold(4, &stop).is_none())
        };
        stop.store(true, Ordering::Relaxed);
        assert!(waiting.join().expect("joins"), "stopped, nothing held");
    }

    #[test]
    fn one_partner_holds_at_most_half_the_pool_and_another_still_gets_room() {
        let pool = SendPool::new(8);
        let stop = Arc::new(AtomicBool::new(false));
        let slow = pool.slots("slow");
        let _slow_own = slow.hold(4, &stop).expect("own");
        let first = slow.hold(4, &stop).expect("its share");
        assert_eq!((pool.held(), pool.held_by("slow")), (4, 4));
        // A second transfer of the same partner counts in the same share.
        let again = pool.slots("slow");
        let _again_own = again.hold(4, &stop).expect("own frame, outside the pool");
        let waiting = {
            let stop = stop.clone();
            std::thread::spawn(move || again.hold(4, &stop))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "the pool has room, the partner's share has none");
        let other = pool.slots("other");
        let _other_own = other.hold(4, &stop).expect("own");
        let taken = other.hold(4, &stop).expect("the half the slow partner may not take");
        assert_eq!((pool.held(), pool.held_by("other")), (8, 4));
        drop(taken);
        assert_eq!(pool.held_by("other"), 0);
        assert!(!waiting.is_finished(), "room in the pool again, still none in the share");
        drop(first);
        let second = waiting.join().expect("joins");
        assert!(matches!(second, Some(Hold::Pool(..))), "its share came back");
        assert_eq!(pool.held_by("slow"), 4);
    }
}
