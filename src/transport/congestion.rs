//! Congestion control of the node's QUIC connections: which of quinn's
//! controllers runs, and whether random loss below a set rate is ignored.
//!
//! Every controller quinn ships treats each loss as congestion and shrinks
//! its window. On a link that drops a share of packets at random (a noisy
//! radio link, a policer, a faulty cable) that caps a transfer far below the
//! link's rate: with 2% loss the window settles near `1.22 / sqrt(0.02)`,
//! about nine packets, whatever the link could carry (docs/BENCHMARKS.md
//! "Lossy links" has the figures). [`LossTolerant`] wraps a controller and
//! passes a loss on only when the share of bytes lost recently is above the
//! tolerance (or the loss is persistent congestion, or an ECN mark), in the
//! spirit of BBRv2's loss threshold. Below it, lost packets are still
//! detected and resent; only the window does not shrink.
//!
//! The price: a flow that overruns a shared bottleneck backs off only once
//! it drives the loss there above its tolerance, so it takes more than its
//! share from loss-based flows (TCP) on that link. That is why the tolerance
//! is off unless the config sets it (`[transport] loss_tolerance_percent`),
//! for links whose loss is known not to be congestion.
//!
//! The decision is pure ([`reacts`]); the wrapper only counts.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// The congestion controller of the node's QUIC connections
/// (`[transport] congestion` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// quinn's default: backs off on every loss, like TCP's default.
    #[default]
    Cubic,
    /// The classic AIMD controller.
    NewReno,
    /// quinn's BBR (its own docs call it experimental).
    Bbr,
}

impl Congestion {
    /// The factory quinn builds each connection's controller with; wrapped
    /// in [`LossTolerant`] when `tolerance` (a share, 0 to 1) is above 0.
    pub fn factory(self, tolerance: f64) -> Arc<dyn ControllerFactory + Send + Sync> {
        let inner: Arc<dyn ControllerFactory + Send + Sync> = match self {
            Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        };
        if tolerance > 0.0 {
            Arc::new(LossTolerantConfig { inner, tolerance })
        } else {
            inner
        }
    }
}

/// Bytes (acknowledged plus lost) over which the loss rate is measured:
/// about a thousand full packets, a few milliseconds at LAN rates.
pub const EPOCH_BYTES: u64 = 1_200_000;

/// Whether a loss reaches the wrapped controller: when no full epoch was
/// measured yet (nothing is known: the controller decides, as without the
/// wrapper), with no tolerance, when the last epoch lost more than `tolerance`, or when the
/// epoch under way already did over at least a quarter of an epoch.
pub fn reacts(last: Option<f64>, acked: u64, lost: u64, tolerance: f64) -> bool {
    let Some(last) = last.filter(|_| tolerance > 0.0) else { return true };
    let seen = acked + lost;
    let current = (seen >= EPOCH_BYTES / 4).then(|| lost as f64 / seen as f64);
    last > tolerance || current.is_some_and(|c| c > tolerance)
}

/// Builds a [`LossTolerant`] around each connection's controller.
#[derive(Clone)]
pub struct LossTolerantConfig {
    pub inner: Arc<dyn ControllerFactory + Send + Sync>,
    /// The share of bytes (0 to 1) that may be lost at random without the
    /// window shrinking.
    pub tolerance: f64,
}

impl ControllerFactory for LossTolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.inner.clone().build(now, current_mtu),
            tolerance: self.tolerance,
            acked: 0,
            lost: 0,
            last: None,
        })
    }
}

/// A controller that ignores losses while the recent loss rate stays below
/// its tolerance (see the module doc).
pub struct LossTolerant {
    inner: Box<dyn Controller>,
    tolerance: f64,
    /// Bytes acknowledged and lost in the epoch under way.
    acked: u64,
    lost: u64,
    /// The loss rate of the last full epoch.
    last: Option<f64>,
}

impl LossTolerant {
    /// Closes the epoch once it covers [`EPOCH_BYTES`].
    fn roll(&mut self) {
        let seen = self.acked + self.lost;
        if seen >= EPOCH_BYTES {
            self.last = Some(self.lost as f64 / seen as f64);
            self.acked = 0;
            self.lost = 0;
        }
    }
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.acked += bytes;
        self.roll();
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.lost += lost_bytes;
        // An ECN mark (no bytes lost) is the network saying "congested" outright.
        let passes =
            is_persistent_congestion || lost_bytes == 0 || reacts(self.last, self.acked, self.lost, self.tolerance);
        self.roll();
        if passes {
            self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.inner.clone_box(),
            tolerance: self.tolerance,
            acked: self.acked,
            lost: self.lost,
            last: self.last,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_nothing_measured_every_loss_reaches_the_controller() {
        assert!(reacts(None, 0, 1200, 0.05));
        assert!(reacts(None, EPOCH_BYTES, 0, 0.05));
    }

    #[test]
    fn a_loss_rate_below_the_tolerance_is_ignored_above_it_passed_on() {
        assert!(!reacts(Some(0.02), 10_000, 1_200, 0.05), "2% last epoch, too little seen now");
        assert!(reacts(Some(0.06), 10_000, 0, 0.05), "the last epoch lost 6%");
        let quarter = EPOCH_BYTES / 4;
        assert!(!reacts(Some(0.02), quarter, quarter / 50, 0.05), "2% now too");
        assert!(reacts(Some(0.02), quarter, quarter / 5, 0.05), "a burst of 20% under way");
        assert!(reacts(Some(0.0), 0, 1, 0.0), "no tolerance: any loss passes");
    }

    /// A NewReno whose window shows whether a congestion event reached it.
    fn tolerant(tolerance: f64) -> LossTolerant {
        let inner = Arc::new(quinn::congestion::NewRenoConfig::default());
        let factory = Arc::new(LossTolerantConfig { inner, tolerance });
        let built = factory.build(Instant::now(), 1200);
        *built.into_any().downcast::<LossTolerant>().expect("a LossTolerant")
    }

    #[test]
    fn random_loss_under_the_tolerance_leaves_the_window_alone_and_persistent_congestion_does_not() {
        let mut c = tolerant(0.05);
        // (A controller ignores losses of packets sent before it was built.)
        let now = Instant::now() + std::time::Duration::from_millis(10);
        let w0 = c.window();
        // Before a full epoch was measured, a loss shrinks the window.
        c.on_congestion_event(now, now, false, 1200);
        let w1 = c.window();
        assert!(w1 < w0, "{w1} < {w0}");
        // An epoch at 1% loss is measured...
        c.acked = EPOCH_BYTES;
        c.lost = EPOCH_BYTES / 100;
        c.roll();
        assert!(c.last.is_some_and(|r| (r - 0.0099).abs() < 0.0001), "{:?}", c.last);
        // ...so a later loss (sent after the last one) is ignored...
        let later = now + std::time::Duration::from_millis(10);
        c.on_congestion_event(later, later, false, 1200);
        assert_eq!(c.window(), w1, "a random loss under the tolerance");
        // ...but persistent congestion and an ECN mark are not.
        let later = later + std::time::Duration::from_millis(10);
        c.on_congestion_event(later, later, true, 1200);
        assert!(c.window() < w1, "persistent congestion shrinks it");
    }
}
