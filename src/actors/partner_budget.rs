//! What each partner may cost this node, counted while it spends it.
//!
//! A partner holds a valid certificate, so it is trusted to be who it says,
//! not to behave. Every resource a partner can make this node hold is
//! counted per partner here against [`PartnerLimits`]: open streams, open
//! control exchanges, transfers in their data phase with the bytes their
//! blocks may hold, and reverse-connect asks per minute. Connections per
//! partner are counted by Connections (it owns the table of links),
//! handed-over requests by the store.
//!
//! A transfer's bytes are reserved once, when the requested side judges
//! it ([`PartnerBudget::reserve`]), never in the middle of a frame: a frame
//! waiting for room while its partner's other frames wait for the same
//! connection's flow-control credit could stall them all. A request that
//! finds no room waits for it (in line, before its `Valid`) up to a bound,
//! so a busy partner's requests are slowed, not failed.
//!
//! Slots are RAII guards: a stream's slot is given back when whatever
//! serves the stream ends, however it ends, so nothing a partner did stays
//! counted after its streams are gone. Repeated warnings about one partner
//! are rate-limited here too ([`PartnerBudget::warning`]), so a partner
//! cannot flood the node's log: the first is logged, the rest are counted
//! and the count is logged with the next one let through.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::PartnerLimits;

/// Blocks a transfer's reservation covers: what the receiver's write queue
/// (8) or the sender's pump (4) holds, the block being read or sent, and
/// one more for the frame around it.
pub const RESERVED_BLOCKS: u64 = 10;

/// The bytes a transfer of `size` bytes in blocks of `block_size` may hold
/// in memory at once, on either side.
pub fn reservation(size: u64, block_size: u32) -> u64 {
    let frame = u64::from(block_size) + crate::protocol::session::FRAME_FIELDS as u64;
    size.min(RESERVED_BLOCKS * u64::from(block_size)) + frame
}

/// At most one warning about a partner is logged per this interval.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Every partner's budget, created on first use.
#[derive(Debug)]
pub struct PartnerBudgets {
    limits: PartnerLimits,
    by_partner: Mutex<BTreeMap<String, Arc<PartnerBudget>>>,
}

impl PartnerBudgets {
    pub fn new(limits: PartnerLimits) -> Self {
        PartnerBudgets { limits, by_partner: Mutex::new(BTreeMap::new()) }
    }

    /// The budget of `partner` (an authenticated node id).
    pub fn of(&self, partner: &str) -> Arc<PartnerBudget> {
        let mut map = self.by_partner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(partner.to_owned()).or_insert_with(|| Arc::new(PartnerBudget::new(partner, &self.limits))).clone()
    }
}

/// One partner's budget.
#[derive(Debug)]
pub struct PartnerBudget {
    partner: String,
    limits: PartnerLimits,
    streams: Arc<AtomicUsize>,
    asks: Arc<AtomicUsize>,
    /// Permits are transfers in their data phase.
    transfers: Arc<Semaphore>,
    /// Permits are bytes the partner's accepted transfers may hold.
    bytes: Arc<Semaphore>,
    dial_backs: Mutex<RateWindow>,
    warnings: Mutex<WarningGate>,
}

/// A slot counted until dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an accepted transfer holds of its partner's budget, until dropped.
#[derive(Debug)]
pub struct Reservation {
    _transfer: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Why a partner was refused something: names the limit that was hit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("partner {partner} is over its limit: {what} (limits.{setting} = {limit})")]
pub struct OverLimit {
    pub partner: String,
    pub what: String,
    pub setting: &'static str,
    pub limit: u64,
}

fn take(counter: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
    let mut now = counter.load(Ordering::Relaxed);
    loop {
        if now >= limit {
            return None;
        }
        match counter.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(Slot(counter.clone())),
            Err(seen) => now = seen,
        }
    }
}

impl PartnerBudget {
    fn new(partner: &str, limits: &PartnerLimits) -> Self {
        PartnerBudget {
            partner: partner.to_owned(),
            limits: limits.clone(),
            streams: Arc::default(),
            asks: Arc::default(),
            transfers: Arc::new(Semaphore::new(limits.transfers.min(Semaphore::MAX_PERMITS))),
            bytes: Arc::new(Semaphore::new(limits.buffered_bytes.min(Semaphore::MAX_PERMITS))),
            dial_backs: Mutex::new(RateWindow::default()),
            warnings: Mutex::new(WarningGate::default()),
        }
    }

    fn over(&self, what: String, setting: &'static str, limit: usize) -> OverLimit {
        OverLimit { partner: self.partner.clone(), what, setting, limit: limit as u64 }
    }

    /// A slot for one more open stream of this partner.
    pub fn stream(&self) -> Result<Slot, OverLimit> {
        let limit = self.limits.channels;
        take(&self.streams, limit).ok_or_else(|| self.over(format!("{limit} streams open at once"), "channels", limit))
    }

    /// A slot for one more open control exchange of this partner.
    pub fn ask(&self) -> Result<Slot, OverLimit> {
        let limit = self.limits.control_asks;
        take(&self.asks, limit)
            .ok_or_else(|| self.over(format!("{limit} control asks open at once"), "control_asks", limit))
    }

    /// Streams open now (for tests and status).
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Room for one more transfer in its data phase that may hold `bytes`
    /// (see [`reservation`]), waiting for it up to `wait` (transfers ahead
    /// of it end and give theirs back); the limit still full then is named.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Result<Reservation, OverLimit> {
        let over_bytes = || {
            let limit = self.limits.buffered_bytes;
            self.over(format!("{bytes} more bytes of blocks in memory, over {limit} in all"), "buffered_bytes", limit)
        };
        let over_transfers = || {
            let limit = self.limits.transfers;
            self.over(format!("{limit} transfers running at once"), "transfers", limit)
        };
        let n = u32::try_from(bytes).map_err(|_| over_bytes())?;
        let room = async {
            let transfer = self.transfers.clone().acquire_owned().await.map_err(|_| over_transfers())?;
            let bytes = self.bytes.clone().acquire_many_owned(n).await.map_err(|_| over_bytes())?;
            Ok(Reservation { _transfer: transfer, _bytes: bytes })
        };
        match tokio::time::timeout(wait, room).await {
            Ok(r) => r,
            Err(_) if self.transfers.available_permits() == 0 => Err(over_transfers()),
            Err(_) => Err(over_bytes()),
        }
    }

    /// Whether one more reverse-connect ask is allowed now.
    pub fn dial_back(&self, now: Instant) -> Result<(), OverLimit> {
        let limit = self.limits.dial_back_asks_per_minute;
        let mut w = self.dial_backs.lock().unwrap_or_else(|p| p.into_inner());
        if w.admit(now, Duration::from_secs(60), limit as usize) {
            Ok(())
        } else {
            Err(self.over(
                format!("{limit} reverse-connect asks a minute"),
                "dial_back_asks_per_minute",
                limit as usize,
            ))
        }
    }

    /// Whether to log a warning about this partner now: `Some(n)` with the
    /// number of warnings held back since the last one logged, `None` to
    /// hold this one back (it is counted).
    pub fn warning(&self, now: Instant) -> Option<u64> {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).pass(now, WARNING_INTERVAL)
    }
}

/// Events admitted in a sliding window.
#[derive(Debug, Default)]
struct RateWindow {
    admitted: VecDeque<Instant>,
}

impl RateWindow {
    fn admit(&mut self, now: Instant, window: Duration, limit: usize) -> bool {
        while self.admitted.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.admitted.pop_front();
        }
        if self.admitted.len() >= limit {
            return false;
        }
        self.admitted.push_back(now);
        true
    }
}

/// One warning per interval; the rest are counted.
#[derive(Debug, Default)]
struct WarningGate {
    last: Option<Instant>,
    held_back: u64,
}

impl WarningGate {
    fn pass(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < interval) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Logs a warning about `partner` unless too many came lately; the number
/// held back is logged with the next one let through.
#[macro_export]
macro_rules! partner_warning {
    ($budget:expr, $($arg:tt)+) => {
        if let Some(held_back) = $budget.warning(tokio::time::Instant::now()) {
            tracing::warn!(held_back, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PartnerLimits {
        PartnerLimits {
            channels: 2,
            control_asks: 1,
            dial_back_asks_per_minute: 2,
            transfers: 3,
            buffered_bytes: 100 << 20,
            ..PartnerLimits::default()
        }
    }

    #[tokio::test]
    async fn transfers_reserve_their_blocks_once_wait_for_room_and_give_it_back() {
        let b = Arc::new(PartnerBudgets::new(limits()).of("b"));
        let big = reservation(1 << 30, 4 << 20);
        assert_eq!(big, 10 * (4 << 20) + (4 << 20) + 4096, "ten blocks and a frame");
        assert_eq!(reservation(4096, 1 << 20), 4096 + (1 << 20) + 4096, "a small file holds little");
        let short = Duration::from_millis(50);
        let first = b.reserve(big, short).await.expect("room for one");
        let second = b.reserve(big, short).await.expect("room for two");
        let err = b.reserve(big, short).await.expect_err("no room for a third");
        assert_eq!(err.setting, "buffered_bytes");
        let small = b.reserve(reservation(10, 4096), short).await.expect("a small one fits");
        assert_eq!(b.reserve(10, short).await.expect_err("three transfers run").setting, "transfers");
        // One that waits gets the room given back meanwhile.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(big, Duration::from_secs(10)).await.map(|_| ()) })
        };
        tokio::time::sleep(short).await;
        drop((first, small));
        waiter.await.expect("task").expect("room came free while it waited");
        drop(second);
    }

    #[test]
    fn stream_slots_are_bounded_and_given_back_on_drop() {
        let budgets = PartnerBudgets::new(limits());
        let b = budgets.of("b");
        let one = b.stream().expect("first");
        let _two = b.stream().expect("second");
        let err = b.stream().expect_err("third is over the limit");
        assert_eq!(err.setting, "channels");
        assert!(err.to_string().contains("limits.channels = 2"), "{err}");
        assert!(budgets.of("c").stream().is_ok(), "another partner has its own budget");
        drop(one);
        assert_eq!(b.open_streams(), 1);
        assert!(b.stream().is_ok(), "a slot given back can be taken again");
    }

    #[test]
    fn control_asks_have_their_own_limit() {
        let b = PartnerBudgets::new(limits()).of("b");
        let _ask = b.ask().expect("first");
        assert_eq!(b.ask().expect_err("second").setting, "control_asks");
        assert!(b.stream().is_ok());
    }

    #[test]
    fn dial_back_asks_are_limited_per_minute() {
        let b = PartnerBudgets::new(limits()).of("b");
        let t0 = Instant::now();
        assert!(b.dial_back(t0).is_ok());
        assert!(b.dial_back(t0 + Duration::from_secs(1)).is_ok());
        assert!(b.dial_back(t0 + Duration::from_secs(2)).is_err());
        assert!(b.dial_back(t0 + Duration::from_secs(60)).is_ok(), "the first ask left the window");
    }

    #[test]
    fn warnings_pass_once_per_interval_and_count_the_rest() {
        let b = PartnerBudgets::new(limits()).of("b");
        let t0 = Instant::now();
        assert_eq!(b.warning(t0), Some(0));
        for i in 1..=500 {
            assert_eq!(b.warning(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(b.warning(t0 + WARNING_INTERVAL), Some(500));
        assert_eq!(b.warning(t0 + WARNING_INTERVAL), None);
    }
}
