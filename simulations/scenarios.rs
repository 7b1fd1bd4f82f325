//! The scenarios: each turns a seed into a [`RunSpec`] — which requests,
//! which faults, and when. Fault timing is drawn from the seed, so every
//! seed tries another moment (before, during or after the transfers).

use std::collections::BTreeSet;

use ferry::config::Group;
use ferry::protocol::Direction;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::host::Operation;
use crate::harness::{Fault, RequestSpec, RunSpec};

fn rng(seed: u64, scenario: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ scenario)
}

fn request(n: usize, at_ms: u64, requester: &str, partner: &str, direction: Direction, size: usize) -> RequestSpec {
    RequestSpec {
        at_ms,
        requester: requester.into(),
        partner: partner.into(),
        direction,
        file: format!("f{n:03}.bin"),
        size,
        set_files: 0,
        delivery_all: false,
    }
}

/// Pushes from a to b and pulls by b from a: b receives everything, a sends
/// everything, and each side is the requester of some.
fn a_sends_to_b(r: &mut StdRng, spec: &mut RunSpec, count: usize) {
    for n in 0..count {
        let size = r.random_range(64 * 1024..=1024 * 1024);
        let at = r.random_range(0..200);
        spec.requests.push(match n % 2 {
            0 => request(n, at, "a", "b", Direction::Push, size),
            _ => request(n, at, "b", "a", Direction::Pull, size),
        });
    }
}

/// A crash somewhere in the first transfers, and the restart after it.
fn crash_and_restart(r: &mut StdRng, spec: &mut RunSpec, node: &str) {
    let at = r.random_range(20..1_500);
    let down = r.random_range(100..5_000);
    spec.faults.push((at, Fault::Crash(node.into())));
    spec.faults.push((at + down, Fault::Restart(node.into())));
}

/// a sends four files to b while each of `crashing` crashes and restarts.
fn crashes(seed: u64, scenario: u64, crashing: &[&str]) -> RunSpec {
    let mut r = rng(seed, scenario);
    let mut spec = RunSpec::new(&["a", "b"]);
    a_sends_to_b(&mut r, &mut spec, 4);
    for node in crashing {
        crash_and_restart(&mut r, &mut spec, node);
    }
    spec
}

/// The receiver (b) crashes mid-transfer and restarts.
pub fn receiver_crash(seed: u64) -> RunSpec {
    crashes(seed, 1, &["b"])
}

/// The sender (a) crashes mid-transfer and restarts.
pub fn sender_crash(seed: u64) -> RunSpec {
    crashes(seed, 2, &["a"])
}

/// Both crash, at independent moments (their downtimes may overlap).
pub fn both_crash(seed: u64) -> RunSpec {
    crashes(seed, 3, &["a", "b"])
}

/// a and b lose each other for a while; the partition heals.
pub fn partition_healed(seed: u64) -> RunSpec {
    let mut r = rng(seed, 4);
    let mut spec = RunSpec::new(&["a", "b"]);
    a_sends_to_b(&mut r, &mut spec, 4);
    let at = r.random_range(0..1_500);
    let heal = at + r.random_range(200..20_000);
    spec.faults.push((at, Fault::Partition("a".into(), "b".into())));
    spec.faults.push((heal, Fault::Repair("a".into(), "b".into())));
    spec
}

/// b's firewall drops new traffic from a for the whole run: a reaches b
/// only through reverse connect via c, for its pushes and its pulls.
pub fn one_way_partition(seed: u64) -> RunSpec {
    let mut r = rng(seed, 5);
    let mut spec = RunSpec::new(&["a", "b", "c"]);
    spec.faults.push((0, Fault::Firewall { host: "b".into(), from: "a".into() }));
    for n in 0..4 {
        let size = r.random_range(16 * 1024..=512 * 1024);
        let at = r.random_range(0..3_000);
        let direction = if n % 2 == 0 { Direction::Push } else { Direction::Pull };
        spec.requests.push(request(n, at, "a", "b", direction, size));
    }
    // Traffic c–b is unaffected and shares the relay's connections.
    spec.requests.push(request(4, r.random_range(0..3_000), "c", "b", Direction::Push, 64 * 1024));
    spec.expect_log = Some("reverse connect");
    spec
}

/// Every link loses up to 10% of its packets and delays them up to 200 ms.
pub fn lossy_links(seed: u64) -> RunSpec {
    let mut r = rng(seed, 6);
    let mut spec = RunSpec::new(&["a", "b", "c"]);
    spec.max_latency_ms = r.random_range(5..=200);
    for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
        let loss = r.random_range(0.0..=0.10);
        let latency = r.random_range(1..=200);
        spec.faults.push((0, Fault::Link { a: x.into(), b: y.into(), loss, max_latency_ms: latency }));
    }
    random_requests(&mut r, &mut spec, 6, 1_000, 16 * 1024..=256 * 1024);
    spec
}

/// The floor `lossy_slow` holds every push to, in bytes per simulated
/// second (docs/SIMULATION.md gives the rates measured over seeds).
pub const LOSSY_SLOW_FLOOR: u64 = 100 * 1024;

/// A long, lossy link: a and b lose 2% of their datagrams and delay each by
/// up to 50 ms (this machine's kernel has no netem, so latency is covered
/// here, not in the namespaces); a pushes one 4 MiB file to b, which must
/// arrive above [`LOSSY_SLOW_FLOOR`].
pub fn lossy_slow(seed: u64) -> RunSpec {
    let mut r = rng(seed, 12);
    let mut spec = RunSpec::new(&["a", "b"]);
    spec.max_latency_ms = 50;
    spec.faults.push((0, Fault::Link { a: "a".into(), b: "b".into(), loss: 0.02, max_latency_ms: 50 }));
    spec.requests.push(request(0, r.random_range(0..100), "a", "b", Direction::Push, 4 << 20));
    spec.throughput_floor = Some(LOSSY_SLOW_FLOOR);
    spec
}

/// `count` requests between random pairs of the spec's nodes, in random
/// directions, submitted within `within_ms`.
fn random_requests(
    r: &mut StdRng,
    spec: &mut RunSpec,
    count: usize,
    within_ms: u64,
    sizes: std::ops::RangeInclusive<usize>,
) {
    let nodes = spec.nodes.clone();
    for n in 0..count {
        let from = &nodes[r.random_range(0..nodes.len())];
        let others: Vec<&String> = nodes.iter().filter(|x| *x != from).collect();
        let to = others[r.random_range(0..others.len())];
        let direction = if r.random_bool(0.5) { Direction::Push } else { Direction::Pull };
        let at = r.random_range(0..within_ms);
        spec.requests.push(request(n, at, from, to, direction, r.random_range(sizes.clone())));
    }
}

/// 100 requests across 5 nodes, with random crashes and partitions that heal.
pub fn many_requests(seed: u64) -> RunSpec {
    let mut r = rng(seed, 7);
    let nodes = ["a", "b", "c", "d", "e"];
    let mut spec = RunSpec::new(&nodes);
    random_requests(&mut r, &mut spec, 100, 2_000, 4 * 1024..=128 * 1024);
    for _ in 0..r.random_range(1..=3) {
        let node = nodes[r.random_range(0..5)];
        // One fault window per node at most, so restarts never overlap crashes.
        if spec.faults.iter().any(|(_, f)| matches!(f, Fault::Crash(n) if n == node)) {
            continue;
        }
        crash_and_restart(&mut r, &mut spec, node);
    }
    for _ in 0..r.random_range(1..=3) {
        let a = nodes[r.random_range(0..5)];
        let b = nodes[r.random_range(0..5)];
        if a == b {
            continue;
        }
        let at = r.random_range(0..3_000);
        spec.faults.push((at, Fault::Partition(a.into(), b.into())));
        spec.faults.push((at + r.random_range(200..10_000), Fault::Repair(a.into(), b.into())));
    }
    spec
}

/// b dies for good. a's pushes to and pulls from b end InError naming b;
/// a's requests to the group {b, c} go to c unless b had accepted them.
pub fn node_lost(seed: u64) -> RunSpec {
    let mut r = rng(seed, 8);
    let mut spec = RunSpec::new(&["a", "b", "c"]);
    spec.groups = vec![Group { name: "backends".into(), members: vec!["b".into(), "c".into()] }];
    spec.all_done = false;
    spec.partner_wait_secs = 15;
    spec.lost = BTreeSet::from(["b".to_string()]);
    for n in 0..8 {
        let partner = if n % 2 == 0 { "b" } else { "backends" };
        let direction = if n % 4 < 2 { Direction::Push } else { Direction::Pull };
        spec.requests.push(request(
            n,
            r.random_range(0..2_000),
            "a",
            partner,
            direction,
            r.random_range(64 * 1024..=512 * 1024),
        ));
    }
    spec.faults.push((r.random_range(0..2_500), Fault::Crash("b".into())));
    spec
}

/// Operators at work while b crashes: two requests are stopped and
/// restarted (restart asked three times, as an operator would until it
/// takes), one is cancelled, each at a random moment.
pub fn operator_commands(seed: u64) -> RunSpec {
    let mut r = rng(seed, 9);
    let mut spec = RunSpec::new(&["a", "b"]);
    a_sends_to_b(&mut r, &mut spec, 6);
    crash_and_restart(&mut r, &mut spec, "b");
    let mut tags: Vec<usize> = (0..spec.requests.len()).collect();
    for (i, op) in [Operation::Stop, Operation::Stop, Operation::Cancel].into_iter().enumerate() {
        let tag = tags.remove(r.random_range(0..tags.len()));
        let at = r.random_range(0..1_500);
        spec.faults.push((at, Fault::Operate { tag, op }));
        if op == Operation::Stop {
            for later in [1_000, 3_000, 6_000] {
                spec.faults.push((at + later + i as u64, Fault::Operate { tag, op: Operation::Restart }));
            }
        }
    }
    spec
}

/// Rules with tasks on both sides, both nodes crashing, and the receiver's
/// `link` post-task failing for two requests until its cause is removed;
/// an operator then restarts them and they resume at that task.
pub fn post_task_failures(seed: u64) -> RunSpec {
    let mut r = rng(seed, 10);
    let mut spec = RunSpec::new(&["a", "b"]);
    spec.tasks = true;
    a_sends_to_b(&mut r, &mut spec, 6);
    crash_and_restart(&mut r, &mut spec, "a");
    crash_and_restart(&mut r, &mut spec, "b");
    let mut tags: Vec<usize> = (0..spec.requests.len()).collect();
    for _ in 0..2 {
        let tag = tags.remove(r.random_range(0..tags.len()));
        let file = format!("{}.lnk", spec.requests[tag].file);
        spec.blocked.push(("b".into(), file.clone()));
        spec.faults.push((20_000, Fault::Unblock { node: "b".into(), file }));
        for at in [25_000, 50_000, 80_000] {
            spec.faults.push((at + tag as u64, Fault::Operate { tag, op: Operation::Restart }));
        }
    }
    spec.expect_log = Some("failed after");
    spec
}

/// A file set of 12 files from a to b, beside two single pushes, while b
/// and a crash and restart (a holds the set's record and its keeper) and
/// a and b lose each other for a while: every file of the set ends
/// delivered once, whole, and the set's record agrees with its files (the
/// `sets` invariant).
pub fn file_set_faults(seed: u64) -> RunSpec {
    let mut r = rng(seed, 11);
    let mut spec = RunSpec::new(&["a", "b"]);
    // Large enough that the set is still moving when the faults come.
    let size = r.random_range(512 * 1024..=2 * 1024 * 1024);
    let at = r.random_range(0..100);
    // Every other seed, `delivery = all`: no file in place before all are verified.
    let delivery_all = seed % 2 == 1;
    spec.requests.push(RequestSpec { set_files: 12, delivery_all, ..request(0, at, "a", "b", Direction::Push, size) });
    for n in 1..3 {
        let size = r.random_range(64 * 1024..=512 * 1024);
        spec.requests.push(request(n, r.random_range(0..400), "a", "b", Direction::Push, size));
    }
    // And a set of small files: they travel on a set stream.
    let small = r.random_range(1024..=64 * 1024);
    spec.requests
        .push(RequestSpec { set_files: 24, ..request(3, r.random_range(0..400), "a", "b", Direction::Push, small) });
    crash_and_restart(&mut r, &mut spec, "b");
    crash_and_restart(&mut r, &mut spec, "a");
    let at = r.random_range(0..2_000);
    let heal = at + r.random_range(200..10_000);
    spec.faults.push((at, Fault::Partition("a".into(), "b".into())));
    spec.faults.push((heal, Fault::Repair("a".into(), "b".into())));
    spec
}

/// a pushes b a set of small files (they travel on a set stream) while
/// the two cannot reach each other, and one of its files is deleted from
/// a's send folder meanwhile, after the set resolved it; then they meet
/// again, and a and b crash and restart. The set ends in error on a, and
/// b's record of it must end too (the `sets` invariant: a pushed set that
/// ended in error tells its receiver, which ends its own record of it),
/// however the crashes fall around the notice.
pub fn set_ended_in_error(seed: u64) -> RunSpec {
    let mut r = rng(seed, 13);
    let mut spec = RunSpec::new(&["a", "b"]);
    spec.all_done = false;
    let small = r.random_range(1024..=32 * 1024);
    let files = 16;
    spec.faults.push((0, Fault::Partition("a".into(), "b".into())));
    // `delivery = each`: a set in error under `all` leaves its files held
    // on b, which the outcome and files invariants (written for sets that
    // end Done) would count as missing.
    let set = RequestSpec { set_files: files, ..request(0, 10, "a", "b", Direction::Push, small) };
    let gone = set.files()[r.random_range(0..files)].clone();
    spec.requests.push(set);
    // Well after the set resolved its files (submitted at 10 ms), well
    // before any could be sent.
    spec.faults.push((1_000, Fault::RemoveSource { node: "a".into(), file: gone }));
    let heal = r.random_range(1_200..3_000);
    spec.faults.push((heal, Fault::Repair("a".into(), "b".into())));
    for node in ["a", "b"] {
        let at = heal + r.random_range(0..3_000);
        spec.faults.push((at, Fault::Crash(node.into())));
        spec.faults.push((at + r.random_range(100..3_000), Fault::Restart(node.into())));
    }
    spec
}

/// b pulls two file sets from a (a resolves and lists them; 10 files of
/// up to 1 MiB, then 30 small ones), listed before the faults, then a and
/// b crash and restart and lose each other for a while: every file ends
/// delivered once, whole, both sets `Done` with their set tasks run on
/// both nodes (the `sets` invariant).
pub fn pulled_set_faults(seed: u64) -> RunSpec {
    let mut r = rng(seed, 12);
    let mut spec = RunSpec::new(&["a", "b"]);
    // Submitted at once: a pulled set is listed by its partner when it is
    // submitted, so the partner must answer then.
    let size = r.random_range(256 * 1024..=1024 * 1024);
    spec.requests.push(RequestSpec { set_files: 10, ..request(0, 0, "b", "a", Direction::Pull, size) });
    let small = r.random_range(512..=32 * 1024);
    // Every other seed, the small files with `delivery = all`: a holds
    // them until all are verified, then puts them in place itself.
    let delivery_all = seed % 2 == 1;
    spec.requests.push(RequestSpec { set_files: 30, delivery_all, ..request(1, 5, "b", "a", Direction::Pull, small) });
    spec.requests.push(request(2, r.random_range(0..400), "a", "b", Direction::Push, small));
    for node in ["a", "b"] {
        let at = r.random_range(300..1_500);
        let down = r.random_range(100..5_000);
        spec.faults.push((at, Fault::Crash(node.into())));
        spec.faults.push((at + down, Fault::Restart(node.into())));
    }
    let at = r.random_range(300..2_000);
    let heal = at + r.random_range(200..10_000);
    spec.faults.push((at, Fault::Partition("a".into(), "b".into())));
    spec.faults.push((heal, Fault::Repair("a".into(), "b".into())));
    spec
}
