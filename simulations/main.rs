//! Seeded, deterministic failover simulations of real ferry nodes (see
//! docs/SIMULATION.md). Each test runs one scenario over `SIM_SEEDS` seeds
//! (50 by default); `SIM_SEED=N` replays one.

mod harness;
mod scenarios;

use harness::run_scenario;

/// Seeds per scenario in `cargo test` (CI).
const CI_SEEDS: u64 = 50;

#[test]
fn receiver_crash() {
    run_scenario("receiver_crash", CI_SEEDS, scenarios::receiver_crash);
}

#[test]
fn sender_crash() {
    run_scenario("sender_crash", CI_SEEDS, scenarios::sender_crash);
}

#[test]
fn both_crash() {
    run_scenario("both_crash", CI_SEEDS, scenarios::both_crash);
}

#[test]
fn partition_healed() {
    run_scenario("partition_healed", CI_SEEDS, scenarios::partition_healed);
}

#[test]
fn one_way_partition() {
    run_scenario("one_way_partition", CI_SEEDS, scenarios::one_way_partition);
}

#[test]
fn lossy_links() {
    run_scenario("lossy_links", CI_SEEDS, scenarios::lossy_links);
}

#[test]
fn many_requests() {
    run_scenario("many_requests", CI_SEEDS, scenarios::many_requests);
}

#[test]
fn node_lost() {
    run_scenario("node_lost", CI_SEEDS, scenarios::node_lost);
}

/// The same seed gives the same run, in every scenario: same steps, same
/// moment everything settled, same records with the same (simulated)
/// timestamps.
#[test]
fn a_seed_replays_exactly() {
    for (name, make) in [
        ("receiver_crash", scenarios::receiver_crash as fn(u64) -> harness::RunSpec),
        ("sender_crash", scenarios::sender_crash),
        ("both_crash", scenarios::both_crash),
        ("partition_healed", scenarios::partition_healed),
        ("one_way_partition", scenarios::one_way_partition),
        ("lossy_links", scenarios::lossy_links),
        ("many_requests", scenarios::many_requests),
        ("node_lost", scenarios::node_lost),
    ] {
        let seed = harness::seeds(1)[0];
        let first = harness::run(&make(seed), seed).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
        let again = harness::run(&make(seed), seed).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
        assert_eq!(first, again, "{name}: seed {seed} ran differently the second time");
    }
}
