//! What each partner may cost this node, counted while it spends it.
//!
//! A partner holds a valid certificate, so it is trusted to be who it says,
//! not to behave. Every resource a partner can make this node hold is
//! counted per partner here against [`PartnerLimits`]: open streams, open
//! control exchanges, bytes of frames being read, and reverse-connect asks
//! per minute. Connections per partner are counted by Connections (it owns
//! the table of links), handed-over requests by the store.
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

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::PartnerLimits;

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

    pub fn limits(&self) -> &PartnerLimits {
        &self.limits
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
    /// Permits are bytes of frame bodies being read from this partner.
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
            bytes: Arc::new(Semaphore::new(limits.buffered_bytes)),
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

    /// The bytes-being-read budget a frame reader draws from.
    pub fn bytes(&self) -> Arc<Semaphore> {
        self.bytes.clone()
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
        PartnerLimits { channels: 2, control_asks: 1, dial_back_asks_per_minute: 2, ..PartnerLimits::default() }
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
