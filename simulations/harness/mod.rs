//! The simulation harness: real ferry nodes on turmoil's simulated network
//! and clock, one run per seed.
//!
//! A run is described by a [`RunSpec`] (nodes, requests, faults and when they
//! happen — a scenario draws it from the seed) and is fully determined by
//! the seed: turmoil's random source (latency, loss), quinn's (seeded per
//! node and start), ferry's ids (seeded through `ferry::determinism`), and
//! the order in which hosts run (one thread, tick by tick). Blocking work
//! runs inline, so wall-clock speed never changes what happens.
//!
//! The driver ([`run`]) steps the simulation, applies each fault at its
//! time, hands submissions to the requesting host, and waits until every
//! request has ended and nothing runs any more. It then shuts every node
//! down, reopens each store from disk and checks the invariants
//! ([`invariants`]).

pub mod audit;
pub mod host;
pub mod invariants;
pub mod udp;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use ferry::cluster::LocalLayout;
use ferry::config::{Group, NodeConfig, RetryPolicy};
use ferry::model::Submit;
use ferry::protocol::{Digest, Direction};
use ferry::store::{RequestRecord, Store};
use ferry::tasks::TaskConfig;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use host::{Command, HostIo, Shared};
use udp::Faults;

/// One request a scenario submits.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// Simulated time of the submission.
    pub at_ms: u64,
    pub requester: String,
    /// Node or group.
    pub partner: String,
    pub direction: Direction,
    pub file: String,
    pub size: usize,
    /// A file set (push only): this many files named `FILE-NNN`, each of
    /// `size` bytes, submitted as the one pattern `FILE-*` (0: one file).
    pub set_files: usize,
    /// A file set sent with `delivery = all` (its receiver holds every
    /// file until all are verified).
    pub delivery_all: bool,
}

impl RequestSpec {
    /// The files this submission sends (one, or each of its set).
    pub fn files(&self) -> Vec<String> {
        match self.set_files {
            0 => vec![self.file.clone()],
            n => (0..n).map(|i| format!("{}-{i:03}", self.file)).collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// The host's process dies: every task, socket and open handle is gone
    /// (like SIGKILL: what reached the file system stays).
    Crash(String),
    /// The crashed host starts again on the same folders.
    Restart(String),
    /// Nothing passes between the two, either way.
    Partition(String, String),
    Repair(String, String),
    /// `host` drops new traffic from `from` (a stateful firewall).
    Firewall {
        host: String,
        from: String,
    },
    /// Per-datagram loss rate and maximum latency of the link between two
    /// hosts.
    Link {
        a: String,
        b: String,
        loss: f64,
        max_latency_ms: u64,
    },
    /// An operator command on the request of submission `tag`, given to
    /// its requester (when it is up).
    Operate {
        tag: usize,
        op: host::Operation,
    },
    /// The cause of a failing task goes away: the file blocking a `link`
    /// post-task in `node`'s archive folder is removed.
    Unblock {
        node: String,
        file: String,
    },
    /// A source file of a set is deleted from `node`'s send folder after
    /// its set resolved it: the file fails (`FileNotFound`) if it was not
    /// sent yet, and its set ends in error.
    RemoveSource {
        node: String,
        file: String,
    },
}

/// Everything a run does.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub nodes: Vec<String>,
    pub groups: Vec<Group>,
    pub requests: Vec<RequestSpec>,
    pub faults: Vec<(u64, Fault)>,
    /// Nodes crashed for good (never restarted).
    pub lost: BTreeSet<String>,
    /// Every fault heals, so every request must end `Done` (or `Cancelled`,
    /// when an operator cancelled it).
    pub all_done: bool,
    pub partner_wait_secs: u64,
    /// A job-log line at least one request must show (the scenario's
    /// mechanism really ran, e.g. reverse connect).
    pub expect_log: Option<&'static str>,
    pub max_latency_ms: u64,
    /// Simulated seconds within which every request must have ended.
    pub limit_secs: u64,
    /// Rules run tasks (see `add_tasks`), and the files that make a
    /// receiver's `link` post-task fail until they are removed.
    pub tasks: bool,
    pub blocked: Vec<(String, String)>,
    /// Bytes per simulated second every request that ends `Done` must
    /// reach, from its start to its end (the `throughput` invariant).
    pub throughput_floor: Option<u64>,
}

/// The suffix the receiver's last post-task gives a delivered file.
pub const DONE_SUFFIX: &str = ".done";

impl RunSpec {
    pub fn new(nodes: &[&str]) -> RunSpec {
        RunSpec {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            groups: vec![],
            requests: vec![],
            faults: vec![],
            lost: BTreeSet::new(),
            all_done: true,
            partner_wait_secs: 3600,
            expect_log: None,
            max_latency_ms: 5,
            limit_secs: 300,
            tasks: false,
            blocked: vec![],
            throughput_floor: None,
        }
    }
}

/// One record as the fingerprint keeps it: id, status, attempts,
/// transferred bytes, finished_at (simulated ms).
pub type RecordPrint = (String, String, u32, u64, Option<u64>);

/// What a finished run looked like; equal for two runs of the same seed.
#[derive(Debug, PartialEq, Eq)]
pub struct RunReport {
    pub steps: u64,
    pub settled_at_ms: u64,
    /// Per node: (id, status, attempts, transferred, finished_at) of each record.
    pub fingerprint: BTreeMap<String, Vec<RecordPrint>>,
    pub done: usize,
    pub failed: usize,
    /// Requests the faults interrupted: run more than once.
    pub rerun: usize,
}

/// Where a run's files live: a RAM disk when there is one (fsync is free).
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.expect("a temporary folder")
}

/// The simulated clock ferry reads: turmoil's time since its epoch.
fn sim_clock() -> Option<u64> {
    turmoil::since_epoch().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sim epoch: fixed, so timestamps in records repeat from run to run.
const EPOCH_SECS: u64 = 1_800_000_000;

pub struct Node {
    pub config: NodeConfig,
    pub io: Shared,
}

impl Node {
    pub fn recv_dir(&self) -> PathBuf {
        self.config.rules[0].recv_dir.clone()
    }

    pub fn send_dir(&self) -> PathBuf {
        self.config.rules[0].send_dir.clone()
    }

    /// Where a run with tasks archives what this node received.
    pub fn archive_dir(&self) -> PathBuf {
        self.config.data_dir.with_file_name("archive")
    }

    /// Where a run with tasks keeps copies of what this node sent.
    pub fn sent_dir(&self) -> PathBuf {
        self.config.data_dir.with_file_name("sent")
    }
}

fn task(kind: &str) -> TaskConfig {
    TaskConfig { kind: kind.into(), ..TaskConfig::default() }
}

/// The rule's tasks in a run with tasks: the receiver copies the delivered
/// file to its archive folder, hard-links it there as `NAME.lnk`, logs, and
/// renames it to `NAME.done`; the sender copies what it sent to its `sent`
/// folder. Each leaves one result per request, so a task that ran twice, or
/// a rename done twice, shows.
fn add_tasks(cfg: &mut NodeConfig) {
    let (archive, sent) = (cfg.data_dir.with_file_name("archive"), cfg.data_dir.with_file_name("sent"));
    let rule = &mut cfg.rules[0];
    rule.folders = vec![archive.clone(), sent.clone()];
    rule.receiver.post_tasks = vec![
        TaskConfig { to: Some(format!("{}/", archive.display())), ..task("copy") },
        TaskConfig { to: Some(format!("{}/#FILENAME#.lnk", archive.display())), ..task("link") },
        TaskConfig { message: Some("archived #FILENAME# from #PARTNER#".into()), ..task("log") },
        TaskConfig { to: Some(format!("#FILENAME#{DONE_SUFFIX}")), ..task("rename") },
    ];
    rule.sender.post_tasks = vec![TaskConfig { to: Some(format!("{}/", sent.display())), ..task("copy") }];
}

fn configure(cfg: &mut NodeConfig, spec: &RunSpec) {
    cfg.block_size = 64 * 1024;
    cfg.restart_interval_bytes = 128 * 1024;
    cfg.restart_interval_secs = 1;
    cfg.connect_timeout_ms = 1_000;
    // Faults heal: attempts must outlast them (a lost node is caught by the
    // partner wait instead).
    cfg.retry = RetryPolicy { attempts: 1_000, initial_delay_ms: 200, max_delay_ms: 2_000 };
    cfg.cluster.heartbeat_ms = 500;
    cfg.cluster.heartbeat_timeout_ms = 2_000;
    cfg.cluster.probe_interval_ms = 1_000;
    cfg.cluster.partner_wait_secs = spec.partner_wait_secs;
    cfg.cluster.reverse_connect_timeout_ms = 3_000;
    cfg.groups = spec.groups.clone();
    for rule in &mut cfg.rules {
        rule.partners = vec!["*".into()];
        // Every file set runs a set task on each node (the `sets`
        // invariant checks it ran, and only for a set that is Done).
        let once = |side: &str| TaskConfig {
            message: Some(format!("{side} set #REQUESTID# of #ORIGINALFILENAME# complete on #LOCALHOST#")),
            ..task("log")
        };
        rule.sender.set_tasks = vec![once("sent")];
        rule.receiver.set_tasks = vec![once("received")];
    }
    if spec.tasks {
        add_tasks(cfg);
    }
}

/// The node that sends `r`'s file (holds it in its send folder).
fn sender_of(r: &RequestSpec) -> &str {
    match r.direction {
        Direction::Push => &r.requester,
        Direction::Pull => &r.partner,
    }
}

/// Runs one seed of a spec; `Err` lists the violated invariants.
pub fn run(spec: &RunSpec, seed: u64) -> Result<RunReport, String> {
    let root = scratch();
    let ids: Vec<&str> = spec.nodes.iter().map(String::as_str).collect();
    let layout = LocalLayout::create(root.path(), &ids).map_err(|e| format!("cannot lay out the nodes: {e}"))?;
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for mut cfg in layout.configs {
        configure(&mut cfg, spec);
        for dir in [&cfg.rules[0].send_dir, &cfg.rules[0].recv_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        nodes.insert(cfg.node_id.clone(), Node { config: cfg, io: Rc::new(RefCell::new(HostIo::default())) });
    }
    if spec.tasks {
        for node in nodes.values() {
            for dir in [node.archive_dir(), node.sent_dir()] {
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        for (node, file) in &spec.blocked {
            let path = nodes[node].archive_dir().join(file);
            std::fs::write(&path, b"not a link").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }

    // Source files, from the seed.
    let mut data_rng = StdRng::seed_from_u64(seed ^ 0x5eed_f11e);
    let mut sources: BTreeMap<String, Digest> = BTreeMap::new();
    for r in &spec.requests {
        for file in r.files() {
            let mut data = vec![0u8; r.size];
            data_rng.fill_bytes(&mut data);
            let senders: Vec<&str> = match spec.groups.iter().find(|g| g.name == r.partner) {
                Some(g) if r.direction == Direction::Pull => g.members.iter().map(String::as_str).collect(),
                _ => vec![sender_of(r)],
            };
            for s in senders {
                let path = nodes[s].send_dir().join(&file);
                std::fs::write(&path, &data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            sources.insert(file, Digest::of(&data));
        }
    }

    audit::start();
    let _simulation = ferry::determinism::enter(sim_clock, seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(Duration::from_secs(spec.limit_secs + 120))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(spec.max_latency_ms.max(1)))
        .udp_capacity(16 * 1024)
        .build();
    let net = Faults::new(seed);
    for (name, node) in &nodes {
        let (name, config, io, fw) = (name.clone(), node.config.clone(), node.io.clone(), net.clone());
        let partners = spec.nodes.clone();
        let host_name = name.clone();
        sim.host(host_name.as_str(), move || {
            host::software(name.clone(), config.clone(), partners.clone(), seed, fw.clone(), io.clone())
        });
    }

    let mut faults = spec.faults.clone();
    faults.sort_by_key(|(at, _)| *at);
    let mut faults = faults.into_iter().peekable();
    let mut pending: Vec<(usize, &RequestSpec)> = spec.requests.iter().enumerate().collect();
    pending.sort_by_key(|(_, r)| r.at_ms);
    // Submissions a crash took with it before the node answered them.
    let mut unanswered = 0usize;
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut violations: Vec<String> = Vec::new();
    let mut steps = 0u64;
    let settled_at_ms;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        while let Some((_, fault)) = faults.next_if(|(at, _)| *at <= now) {
            match fault {
                Fault::Crash(n) => {
                    let when = format!("when {n} crashed");
                    violations.extend(invariants::final_files(&nodes, &sources, spec.tasks, &when));
                    sim.crash(n.as_str());
                    let mut io = nodes[&n].io.borrow_mut();
                    io.snapshot = None;
                    unanswered += usize::from(io.in_flight.take().is_some());
                    drop(io);
                    down.insert(n);
                }
                Fault::Restart(n) => {
                    sim.bounce(n.as_str());
                    down.remove(&n);
                }
                Fault::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
                Fault::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
                Fault::Firewall { host, from } => net.block(sim.lookup(host.as_str()), sim.lookup(from.as_str())),
                Fault::Link { a, b, loss, max_latency_ms } => {
                    net.set_loss(sim.lookup(a.as_str()), sim.lookup(b.as_str()), loss);
                    sim.set_link_max_message_latency(a.as_str(), b.as_str(), Duration::from_millis(max_latency_ms));
                }
                Fault::Unblock { node, file } => {
                    let path = nodes[&node].archive_dir().join(&file);
                    std::fs::remove_file(&path).map_err(|e| format!("cannot unblock {}: {e}", path.display()))?;
                }
                Fault::RemoveSource { node, file } => {
                    let path = nodes[&node].send_dir().join(&file);
                    std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                }
                Fault::Operate { tag, op } => {
                    let requester = &spec.requests[tag].requester;
                    if !down.contains(requester) {
                        nodes[requester].io.borrow_mut().inbox.push_back(Command::Operate { tag, op });
                    }
                }
            }
        }
        // Due submissions go to their requester's mailbox; a requester that
        // is down gets them when it is back (a client retrying).
        pending.retain(|(tag, r)| {
            if down.contains(&r.requester) {
                return !spec.lost.contains(&r.requester); // never submitted
            }
            if r.at_ms > now {
                return true;
            }
            nodes[&r.requester]
                .io
                .borrow_mut()
                .inbox
                .push_back(Command::Submit { tag: *tag, submit: Box::new(submission(r)) });
            false
        });
        sim.step().map_err(|e| format!("the simulation failed at {now} ms: {e}"))?;
        steps += 1;
        for (name, node) in &nodes {
            if let Some(e) = node.io.borrow_mut().start_error.take() {
                return Err(format!("{name} could not start: {e}"));
            }
        }
        if !steps.is_multiple_of(100) {
            continue;
        }
        violations.extend(invariants::all_or_nothing(&nodes, spec, &format!("at {now} ms")));
        if faults.peek().is_none() && pending.is_empty() && settled(&nodes, &down, spec, unanswered) {
            settled_at_ms = now;
            break;
        }
        if now > spec.limit_secs * 1000 {
            violations.push(format!(
                "outcome: not settled {} s into the run: {}",
                spec.limit_secs,
                unsettled(&nodes, &down)
            ));
            settled_at_ms = now;
            break;
        }
    }

    // Clean shutdown of every live node, bounded.
    for (name, node) in &nodes {
        if !down.contains(name) {
            node.io.borrow_mut().inbox.push_back(Command::Shutdown);
        }
    }
    let until = sim.elapsed() + Duration::from_secs(30);
    while nodes.iter().any(|(n, node)| !down.contains(n) && node.io.borrow().stopped.is_none()) {
        if sim.elapsed() > until {
            violations.push("no actor left: a node did not stop within 30 s of being asked".into());
            break;
        }
        sim.step().map_err(|e| format!("the simulation failed during shutdown: {e}"))?;
        steps += 1;
    }
    drop(sim);
    let deliveries = audit::take();
    if spec.faults.iter().any(|(_, f)| matches!(f, Fault::Firewall { .. })) && net.dropped() == 0 {
        violations.push("scenario: the firewall dropped nothing, so no direct dial was blocked".into());
    }
    if spec.faults.iter().any(|(_, f)| matches!(f, Fault::Link { loss, .. } if *loss > 0.01)) && net.lost() == 0 {
        violations.push("scenario: links were set to lose packets, but none was lost".into());
    }

    // The durable truth: every store as it is on disk now.
    let mut records: BTreeMap<String, BTreeMap<String, RequestRecord>> = BTreeMap::new();
    let mut logs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (name, node) in &nodes {
        let store = Store::open(&node.config.data_dir.join("store"))
            .map_err(|e| format!("cannot reopen {name}'s store: {e}"))?;
        let mut mine = BTreeMap::new();
        for r in store.list(None).map_err(|e| format!("cannot read {name}'s store: {e}"))? {
            let log = store.job_log(&r.id).unwrap_or_default().into_iter().map(|l| l.message).collect();
            logs.insert((name.clone(), r.id.to_string()), log);
            mine.insert(r.id.to_string(), r);
        }
        records.insert(name.clone(), mine);
    }
    let acks: BTreeMap<usize, (String, Result<String, String>)> = nodes
        .iter()
        .flat_map(|(n, node)| {
            node.io.borrow().acks.iter().map(|(t, r)| (*t, (n.clone(), r.clone()))).collect::<Vec<_>>()
        })
        .collect();
    let reports: BTreeMap<String, usize> =
        nodes.iter().filter_map(|(n, node)| node.io.borrow().stopped.map(|r| (n.clone(), r.lingering))).collect();
    let cancelled: BTreeSet<String> = nodes
        .values()
        .flat_map(|node| {
            let io = node.io.borrow();
            io.operations
                .iter()
                .filter(|(_, op, r)| *op == host::Operation::Cancel && r.is_ok())
                .filter_map(|(tag, _, _)| acks.get(tag).and_then(|(_, id)| id.clone().ok()))
                .collect::<Vec<_>>()
        })
        .collect();
    let world = invariants::World {
        spec,
        nodes: &nodes,
        sources: &sources,
        records: &records,
        logs: &logs,
        acks: &acks,
        deliveries: &deliveries,
        lingering: &reports,
        cancelled: &cancelled,
    };
    violations.extend(world.check());
    if !violations.is_empty() {
        return Err(violations.join("\n  "));
    }
    let fingerprint = records
        .iter()
        .map(|(n, rs)| {
            let v = rs
                .values()
                .map(|r| (r.id.to_string(), format!("{:?}", r.status), r.attempts, r.transferred, r.finished_at))
                .collect();
            (n.clone(), v)
        })
        .collect();
    let requester_records =
        || records.values().flat_map(|m| m.values()).filter(|r| r.role == ferry::store::Role::Requester);
    Ok(RunReport {
        steps,
        settled_at_ms,
        fingerprint,
        done: requester_records().filter(|r| r.status == ferry::store::Status::Done).count(),
        failed: requester_records().filter(|r| r.status != ferry::store::Status::Done).count(),
        rerun: requester_records().filter(|r| r.attempts > 1).count(),
    })
}

fn submission(r: &RequestSpec) -> Submit {
    let file = if r.set_files > 0 { "" } else { r.file.as_str() };
    Submit {
        pattern: (r.set_files > 0).then(|| format!("{}-*", r.file)),
        delivery: r.delivery_all.then_some(ferry::fileset::progress::Delivery::All),
        ..Submit::file(&r.partner, "default", r.direction, file)
    }
}

/// Every submission answered, every request on a live requester final, no
/// runner or channel left on any live node, and no live node owing a
/// notice to a partner that is not lost.
fn settled(nodes: &BTreeMap<String, Node>, down: &BTreeSet<String>, spec: &RunSpec, unanswered: usize) -> bool {
    let answered: usize = nodes.values().map(|n| n.io.borrow().acks.len()).sum();
    let lost_requests = spec.requests.iter().filter(|r| spec.lost.contains(&r.requester)).count();
    if answered + unanswered + lost_requests < spec.requests.len() {
        return false;
    }
    nodes.iter().filter(|(n, _)| !down.contains(*n)).all(|(_, node)| {
        let io = node.io.borrow();
        let Some(s) = &io.snapshot else { return false };
        s.running_requests == 0
            && s.open_channels == 0
            && s.records.iter().filter(|r| r.role == ferry::store::Role::Requester).all(|r| r.status.is_final())
            && s.notices_owed_to.iter().all(|p| spec.lost.contains(p))
    })
}

fn unsettled(nodes: &BTreeMap<String, Node>, down: &BTreeSet<String>) -> String {
    let mut out = Vec::new();
    for (name, node) in nodes.iter().filter(|(n, _)| !down.contains(*n)) {
        let io = node.io.borrow();
        let Some(s) = &io.snapshot else {
            out.push(format!("{name}: no snapshot"));
            continue;
        };
        if s.running_requests > 0 || s.open_channels > 0 {
            out.push(format!("{name}: {} runners, {} channels", s.running_requests, s.open_channels));
        }
        if !s.notices_owed_to.is_empty() {
            out.push(format!("{name}: owes {} notices to {:?}", s.notices_owed_to.len(), s.notices_owed_to));
        }
        for r in s.records.iter().filter(|r| r.role == ferry::store::Role::Requester && !r.status.is_final()) {
            out.push(format!("{name}: {} to {} is {:?} ({})", r.id, r.partner, r.status, r.file_name));
        }
    }
    out.join("; ")
}

/// Seeds to run: `SIM_SEED=N` alone, else `SIM_SEEDS` (default `ci`) seeds
/// from `SIM_FIRST_SEED` (default 1).
pub fn seeds(ci: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(seed) = var("SIM_SEED") {
        return vec![seed];
    }
    let first = var("SIM_FIRST_SEED").unwrap_or(1);
    (first..first + var("SIM_SEEDS").unwrap_or(ci)).collect()
}

/// Runs a scenario over its seeds; panics with the first failing seed and
/// the command that replays it.
pub fn run_scenario(name: &str, ci_seeds: u64, make: fn(u64) -> RunSpec) {
    let seeds = seeds(ci_seeds);
    let started = std::time::Instant::now();
    let (mut done, mut failed, mut rerun, mut sim_ms) = (0usize, 0usize, 0usize, 0u64);
    let mut prints = blake3::Hasher::new();
    for &seed in &seeds {
        let spec = make(seed);
        match run(&spec, seed) {
            Ok(report) => {
                prints.update(format!("{report:?}").as_bytes());
                done += report.done;
                failed += report.failed;
                rerun += report.rerun;
                sim_ms += report.settled_at_ms;
            }
            Err(why) => panic!(
                "simulation {name} failed with seed {seed}:\n  {why}\nreplay: SIM_SEED={seed} cargo test --test simulations {name} -- --nocapture"
            ),
        }
    }
    eprintln!(
        "simulation {name}: {} seeds passed ({}..={}) in {:.1} s; requests Done {done}, ended with a cause {failed}, run more than once {rerun}; {:.0} simulated s",
        seeds.len(),
        seeds.first().copied().unwrap_or(0),
        seeds.last().copied().unwrap_or(0),
        started.elapsed().as_secs_f64(),
        sim_ms as f64 / 1000.0
    );
    // Equal for two runs of the same seeds, in any process.
    eprintln!("simulation {name}: fingerprint {}", &prints.finalize().to_hex()[..16]);
}
