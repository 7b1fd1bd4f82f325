//! What a deterministic simulation replaces in a node: the wall clock, the
//! source of random ids, and where blocking work (file reads and writes,
//! hashing, store flushes) runs.
//!
//! A node normally reads the system clock, draws ids from the thread-local
//! random generator and runs blocking work on Tokio's blocking threads. Under
//! a simulation (see `simulations/`), every host runs on one thread whose
//! progress the simulator drives tick by tick; a blocking thread would finish
//! its work at a wall-clock moment the simulator does not control, and the
//! system clock would not follow simulated time. So the simulator *enters*
//! simulation mode on its thread ([`enter`]) and, while the returned guard
//! lives, on that thread:
//! - [`now_ms`] is the simulated clock it supplied;
//! - [`random_u128`] comes from a generator seeded by the run's seed;
//! - [`blocking`] runs its closure inline, and the data path and the store
//!   do their file work inline instead of on threads of their own
//!   ([`inline_io`]).
//!
//! The mode is per thread, so tests running in parallel on other threads
//! (and every real node) are unaffected. Nothing here changes *what* the
//! node does, only *when*, relative to the simulated network, it happens.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A simulated clock: milliseconds since the Unix epoch, or `None` when the
/// simulator cannot tell (then the system clock is used).
pub type SimClock = fn() -> Option<u64>;

struct Simulation {
    clock: SimClock,
    rng: StdRng,
}

thread_local! {
    static SIMULATION: RefCell<Option<Simulation>> = const { RefCell::new(None) };
}

/// Leaves simulation mode when dropped.
#[must_use = "simulation mode ends when the guard is dropped"]
#[derive(Debug)]
pub struct SimulationGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for SimulationGuard {
    fn drop(&mut self) {
        SIMULATION.with(|s| s.borrow_mut().take());
    }
}

/// Enters simulation mode on this thread, with `clock` as the wall clock and
/// ids drawn from a generator seeded with `seed`.
pub fn enter(clock: SimClock, seed: u64) -> SimulationGuard {
    SIMULATION.with(|s| *s.borrow_mut() = Some(Simulation { clock, rng: StdRng::seed_from_u64(seed) }));
    SimulationGuard { _not_send: std::marker::PhantomData }
}

/// Whether this thread runs a simulation.
pub fn in_simulation() -> bool {
    SIMULATION.with(|s| s.borrow().is_some())
}

/// Whether file work must run inline on the calling task (simulation) rather
/// than on a thread of its own.
pub fn inline_io() -> bool {
    in_simulation()
}

/// Milliseconds since the Unix epoch: the simulated clock in simulation
/// mode, the system clock otherwise (0 if it is before the epoch).
pub fn now_ms() -> u64 {
    let simulated = SIMULATION.with(|s| s.borrow().as_ref().and_then(|sim| (sim.clock)()));
    simulated.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// A random number for ids and tokens: seeded in simulation mode.
pub fn random_u128() -> u128 {
    SIMULATION
        .with(|s| s.borrow_mut().as_mut().map(|sim| sim.rng.random::<u128>()))
        .unwrap_or_else(rand::random::<u128>)
}

/// A blocking closure that panicked.
#[derive(Debug, thiserror::Error)]
#[error("blocking work failed: {0}")]
pub struct BlockingError(String);

/// Runs blocking work: on Tokio's blocking threads normally, inline in
/// simulation mode (where the simulated clock does not move while it runs).
pub async fn blocking<F, R>(f: F) -> Result<R, BlockingError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if inline_io() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| BlockingError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> Option<u64> {
        Some(1_000)
    }

    #[test]
    fn simulation_mode_uses_its_clock_and_seed_and_ends_with_the_guard() {
        assert!(!in_simulation());
        let first: Vec<u128> = {
            let _g = enter(fixed, 7);
            assert!(in_simulation());
            assert_eq!(now_ms(), 1_000);
            (0..3).map(|_| random_u128()).collect()
        };
        assert!(!in_simulation());
        assert!(now_ms() > 1_000_000, "system clock again after the guard");
        let again: Vec<u128> = {
            let _g = enter(fixed, 7);
            (0..3).map(|_| random_u128()).collect()
        };
        assert_eq!(first, again, "the same seed gives the same ids");
        let _g = enter(fixed, 8);
        assert_ne!(random_u128(), first[0], "another seed, other ids");
    }

    #[test]
    fn the_mode_is_per_thread() {
        let _g = enter(fixed, 1);
        let other = std::thread::spawn(in_simulation).join().expect("thread runs");
        assert!(!other);
        assert!(in_simulation());
    }
}
