//! Seeded, deterministic failover simulations of real ferry nodes (see
//! docs/SIMULATION.md). Each test runs one scenario over `SIM_SEEDS` seeds
//! (50 by default); `SIM_SEED=N` replays one.

mod harness;
mod scenarios;

use harness::run_scenario;

/// Seeds per scenario in `cargo test` (CI).
const CI_SEEDS: u64 = 50;

/// One test per scenario, and the list the replay check walks.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_scenario(stringify!($name), CI_SEEDS, scenarios::$name);
            }
        )*
        const ALL: &[(&str, fn(u64) -> harness::RunSpec)] = &[$((stringify!($name), scenarios::$name)),*];
    };
}

scenarios!(
    receiver_crash,
    sender_crash,
    both_crash,
    partition_healed,
    one_way_partition,
    lossy_links,
    lossy_slow,
    many_requests,
    node_lost,
    operator_commands,
    post_task_failures,
    file_set_faults,
    pulled_set_faults,
    set_ended_in_error,
);

/// The same seed gives the same run, in every scenario: same steps, same
/// moment everything settled, same records with the same (simulated)
/// timestamps.
#[test]
fn a_seed_replays_exactly() {
    for &(name, make) in ALL {
        let seed = harness::seeds(1)[0];
        let first = harness::run(&make(seed), seed).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
        let again = harness::run(&make(seed), seed).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
        assert_eq!(first, again, "{name}: seed {seed} ran differently the second time");
    }
}
