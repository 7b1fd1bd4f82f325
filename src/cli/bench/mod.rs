//! `ferry bench`: throughput of one big push, of many small requests and
//! of the same small files as one file set, between two nodes on this machine. Prints figures; asserts nothing.
//!
//! Each node runs as a child process (`ferry node`), so that the sender's
//! and the receiver's CPU time and memory are measured apart, and requests
//! are submitted through the REST API, as an operator's scheduler would.
//! `cluster/bench.sh` runs this and then scp and rsync over a local sshd on
//! the same files.
//!
//! Two measurements are asked for by name only: `--parallel N` (N pushes
//! of `--parallel-mib` at once: each node's peak memory, and what it still
//! holds afterwards) and `--queued N` (N small requests queued while the
//! partner is down: submitting, listing and memory with the queue, how long
//! the node takes to move again once the partner is back, and its peak
//! memory while the queue drains 64 at a time).
//!
//! Beside the big push it measures two bounds in the same run: one raw
//! QUIC stream between two fresh endpoints with the nodes' own identities
//! and transport settings, no disk and no hashing (the transport's bound),
//! and reading plus hashing the big file alone (the local bound).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry::api::{ApiClient, EventQuery, StreamItem, TransferView};
use ferry::cluster::LocalLayout;
use ferry::model::{Submit, TransferFilter};
use ferry::protocol::Direction;
use ferry::store::Status;
use rand::RngCore;

use super::display;

/// Arguments of `ferry bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Work in DIR (kept afterwards, with the generated files) instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Size of the big file, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub big_mib: u64,
    /// How many small files.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub small_count: usize,
    /// Size of each small file, in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 4)]
    pub small_kib: u64,
    /// Small-file submissions in flight at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub submit_parallel: usize,
    /// Kept for scripts: the comparison with scp/rsync is done by cluster/bench.sh.
    #[arg(long)]
    pub skip_ssh: bool,
    /// Before the nodes start, fill each node's store with N requests that
    /// ended over the last 180 days (3 job-log lines each), then report
    /// the fill, the nodes' start, a listing page and memory with them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub history: usize,
    /// Internal: only fill the store in DIR with `--history` requests with
    /// partner `--fill-partner`, then exit (run as a child process, so the
    /// bench's own memory figures do not count the fill).
    #[arg(long, value_name = "DIR", hide = true)]
    pub fill_store: Option<PathBuf>,
    #[arg(long, value_name = "ID", hide = true, default_value = "b")]
    pub fill_partner: String,
    /// Also push N files of `--parallel-mib` MiB at once and report each
    /// node's peak resident memory and what it holds once all are done.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub parallel: usize,
    /// Size of each file of `--parallel`, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub parallel_mib: u64,
    /// Also queue N small requests while the partner is stopped, then start
    /// it again: submit rate, a listing page and memory with the queue, how
    /// long until the first request is done, the drain rate and peak memory.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub queued: usize,
    /// The nodes' `[transport] send_buffer_bytes`, in MiB (the default when left out).
    #[arg(long, value_name = "MIB")]
    pub send_buffer_mib: Option<usize>,
}

mod node_process;

use node_process::NodeProcess;

/// The two nodes, a (the requester, a sender) and b, and a's API.
struct Nodes {
    a: NodeProcess,
    b: NodeProcess,
    api: ApiClient,
}

impl Nodes {
    /// Each node's CPU seconds so far.
    fn cpu(&self) -> (f64, f64) {
        (self.a.cpu_seconds(), self.b.cpu_seconds())
    }

    fn reset_peaks(&self) {
        self.a.reset_peak();
        self.b.reset_peak();
    }

    /// "a 12.0 MiB, b 9.0 MiB" of `f` applied to each node.
    fn both(&self, f: impl Fn(&NodeProcess) -> u64) -> String {
        format!("a {}, b {}", display::bytes(f(&self.a)), display::bytes(f(&self.b)))
    }
}

/// How long one measured step may take before the bench gives up (a node
/// that died leaves its requests unfinished for ever).
const STEP_WITHIN: Duration = Duration::from_secs(1800);

/// `work`, or an error naming `what` once [`STEP_WITHIN`] has passed.
async fn bounded<T>(work: impl std::future::Future<Output = T>, what: &str) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_WITHIN, work)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not end within {} s", STEP_WITHIN.as_secs()))
}

/// Writes `mib` MiB of random bytes to `path` and fsyncs it: on disk
/// before the clock starts, so a push does not race the write-back of its
/// own source.
fn write_random_file(path: &std::path::Path, mib: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rand::rng().fill_bytes(&mut chunk);
        std::io::Write::write_all(&mut f, &chunk)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Figures of the big push and its bounds.
#[derive(Default)]
struct Big {
    mbs: f64,
    /// CPU seconds per GiB of the sender (a) and the receiver (b).
    cpu_a: f64,
    cpu_b: f64,
    quic_mbs: f64,
    local_mbs: f64,
}

/// The big push and its two bounds.
async fn big_push(nodes: &Nodes, layout: &LocalLayout, big_mib: u64) -> anyhow::Result<Big> {
    let api = &nodes.api;
    let big = "big.bin";
    let big_bytes = big_mib << 20;
    write_random_file(&layout.out_dir("a").join(big), big_mib)?;
    let t = Instant::now();
    let cpu = nodes.cpu();
    let view = api.submit(&submit(big.into())).await?;
    let done = bounded(wait_final(api, &view.id), "the big push").await??;
    let secs = t.elapsed().as_secs_f64();
    if done.status != Status::Done {
        bail!("big push ended {:?}: {:?}", done.status, done.error);
    }
    let big_mbs = big_bytes as f64 / 1e6 / secs;
    let gib = big_bytes as f64 / f64::from(1u32 << 30);
    let (cpu_a, cpu_b) = nodes.cpu();
    let (cpu_a, cpu_b) = ((cpu_a - cpu.0) / gib, (cpu_b - cpu.1) / gib);
    println!(
        "big push: {} in {secs:.2} s = {} (verified, fsynced, delivered); CPU s per GiB: sender {cpu_a:.2}, receiver {cpu_b:.2}",
        display::bytes(big_bytes),
        display::rate(big_bytes, secs)
    );
    let quic_secs =
        bounded(raw_quic_secs(layout, big_bytes), "the raw QUIC bound").await?.context("the raw QUIC bound")?;
    let quic_mbs = big_bytes as f64 / 1e6 / quic_secs;
    println!(
        "transport bound: one raw QUIC stream, {} of zeros, no disk or hashing: {}; the big push is {:.2}x it",
        display::bytes(big_bytes),
        display::rate(big_bytes, quic_secs),
        big_mbs / quic_mbs
    );
    let path = layout.out_dir("a").join(big);
    let local_secs = tokio::task::spawn_blocking(move || read_and_hash_secs(&path)).await??;
    let local_mbs = big_bytes as f64 / 1e6 / local_secs;
    println!(
        "local bound: reading and hashing (BLAKE3) the big file alone, page cache warm: {}; the big push is {:.2}x it",
        display::rate(big_bytes, local_secs),
        big_mbs / local_mbs
    );
    Ok(Big { mbs: big_mbs, cpu_a, cpu_b, quic_mbs, local_mbs })
}

/// Sends `bytes` of zeros on one QUIC stream from a fresh endpoint with a's
/// identity to one with b's, both with the nodes' transport settings;
/// seconds from the dial until the receiver read the last byte.
async fn raw_quic_secs(layout: &LocalLayout, bytes: u64) -> anyhow::Result<f64> {
    use ferry::transport::{self, NodeIdentity, TransportTuning};
    let identity = |i: usize| {
        let c = &layout.configs[i];
        NodeIdentity::load(&c.node_id, &c.tls.cert, &c.tls.key, &c.tls.ca)
    };
    let (ia, ib) = (identity(0)?, identity(1)?);
    let tuning = TransportTuning::default();
    let server = transport::make_endpoint("127.0.0.1:0".parse()?, &ib, &tuning)?;
    let client = transport::make_endpoint("127.0.0.1:0".parse()?, &ia, &tuning)?;
    let addr = server.local_addr()?;
    let receiving = tokio::spawn(async move {
        let incoming = server.accept().await.context("no connection")?;
        let (conn, _) = transport::accept(incoming).await?;
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while let Some(n) = recv.read(&mut buf).await? {
            got += n as u64;
        }
        anyhow::Ok(got)
    });
    let t = Instant::now();
    let conn = transport::dial(&client, addr, &layout.configs[1].node_id).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min(usize::try_from(bytes - sent).unwrap_or(usize::MAX));
        send.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    send.finish()?;
    let got = receiving.await??;
    let secs = t.elapsed().as_secs_f64();
    if got != sent {
        bail!("the raw QUIC stream delivered {got} of {sent} bytes");
    }
    Ok(secs)
}

/// Reads `path` and hashes it with BLAKE3, 1 MiB at a time; seconds.
fn read_and_hash_secs(path: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Read;
    let t = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    std::hint::black_box(h.finalize());
    Ok(t.elapsed().as_secs_f64())
}

fn submit(file: String) -> Submit {
    Submit::file("b", "default", Direction::Push, &file)
}

/// Waits until no request a created at or after `since_ms` is still to
/// run (queued, running or interrupted), then fails if any of them ended
/// otherwise than `Done`. Polls a's API (a page of one per status).
async fn wait_settled(api: &ApiClient, since_ms: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let any = |status: Status| {
        let filter = TransferFilter {
            status: Some(format!("{status:?}")),
            from: Some(since_ms),
            limit: Some(1),
            ..Default::default()
        };
        async move { api.list_page(&filter).await.map(|(page, _)| page.into_iter().next()) }
    };
    'poll: loop {
        for status in [Status::ToSubmit, Status::Running, Status::Interrupted] {
            if any(status).await?.is_some() {
                if Instant::now() > deadline {
                    bail!("requests still {status:?} after {} s", within.as_secs());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue 'poll;
            }
        }
        break;
    }
    for status in [Status::InError, Status::Cancelled] {
        if let Some(t) = any(status).await? {
            bail!("request {} ended {status:?}: {}", t.id, t.error.map(|e| e.message).unwrap_or_default());
        }
    }
    Ok(())
}

/// Waits until transfer `id` ends, on a's event stream: the clock stops
/// at the event that ends it, not at the next poll. Its final view.
async fn wait_final(api: &ApiClient, id: &str) -> anyhow::Result<TransferView> {
    let query = EventQuery { transfer: Some(id.to_owned()), ..EventQuery::default() };
    let mut stream = api.events(&query).await?;
    // Opened first, then read: an end between the two is not missed.
    let view = api.get(id).await?;
    if view.is_final() {
        return Ok(view);
    }
    while let Some(item) = stream.next().await {
        if let StreamItem::Transfer(event) = item? {
            if event.transfer.is_final() {
                return Ok(api.get(id).await?);
            }
        }
    }
    bail!("a's event stream ended before transfer {id} did")
}

/// Writes `count` files of `bytes` random bytes named `{prefix}{i:05}.dat` in `dir`.
fn write_small_files(dir: &std::path::Path, prefix: &str, count: usize, bytes: u64) -> anyhow::Result<Vec<String>> {
    let mut data = vec![0u8; usize::try_from(bytes)?];
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i:05}.dat")).collect();
    for n in &names {
        rand::rng().fill_bytes(&mut data);
        std::fs::write(dir.join(n), &data)?;
    }
    Ok(names)
}

/// Submits one push per name, `parallel` submissions in flight; seconds
/// until the last was accepted.
async fn submit_each(api: &ApiClient, names: &[String], parallel: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for n in names.iter().cloned() {
        if in_flight.len() >= parallel.max(1) {
            if let Some(r) = in_flight.join_next().await {
                r??;
            }
        }
        let api = api.clone();
        in_flight.spawn(async move { api.submit(&submit(n)).await.map(|v| v.id) });
    }
    while let Some(r) = in_flight.join_next().await {
        r??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Figures of many small files, each its own request.
struct Small {
    rps: f64,
    /// CPU milliseconds per request of a (sender) and b (receiver).
    cpu_a_ms: f64,
    cpu_b_ms: f64,
    /// How busy the whole machine's cores were meanwhile, in percent.
    busy_pct: f64,
}

/// The whole machine's CPU time (the first line of `/proc/stat`), in
/// clock ticks: how busy all cores were over a step, the nodes, the
/// kernel's own threads and this bench together. It tells a step bound by
/// CPU (near 100%) from one that waits (the nodes' own CPU time does not).
#[derive(Clone, Copy, Default)]
struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// Now; zero where `/proc/stat` cannot be read (then no share is given).
    fn now() -> MachineCpu {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return MachineCpu::default() };
        // user nice system idle iowait irq softirq steal (guest time is in user).
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        if ticks.len() < 5 {
            return MachineCpu::default();
        }
        let total = ticks.iter().sum::<u64>();
        MachineCpu { busy: total - ticks[3] - ticks[4], total }
    }

    /// The share of all cores busy since `self`, in percent (0 if unknown).
    fn busy_since(self) -> f64 {
        let now = MachineCpu::now();
        match now.total.checked_sub(self.total) {
            Some(t) if t > 0 && self.total > 0 => 100.0 * now.busy.saturating_sub(self.busy) as f64 / t as f64,
            _ => 0.0,
        }
    }
}

async fn small_requests(nodes: &Nodes, names: &[String], kib: u64, parallel: usize) -> anyhow::Result<Small> {
    let since = ferry::store::now_ms();
    let t = Instant::now();
    let (cpu, machine) = (nodes.cpu(), MachineCpu::now());
    let submitted = submit_each(&nodes.api, names, parallel).await?;
    wait_settled(&nodes.api, since, Duration::from_secs(600)).await?;
    let secs = t.elapsed().as_secs_f64();
    let busy_pct = machine.busy_since();
    let rps = names.len() as f64 / secs;
    let (a, b) = nodes.cpu();
    let per = |now: f64, before: f64| (now - before) * 1e3 / names.len() as f64;
    let (cpu_a_ms, cpu_b_ms) = (per(a, cpu.0), per(b, cpu.1));
    println!(
        "small files: {} requests of {} in {secs:.2} s = {rps:.0} requests/s (all submitted through the API in {submitted:.2} s); CPU ms per request: sender {cpu_a_ms:.2}, receiver {cpu_b_ms:.2}; the machine's cores {busy_pct:.0}% busy",
        names.len(),
        display::bytes(kib << 10)
    );
    Ok(Small { rps, cpu_a_ms, cpu_b_ms, busy_pct })
}

/// The same small files as one file set: one request, resolved by a. A
/// copy in a folder of its own, so the set delivers new files as the
/// requests did (replacing the files just delivered would time the file
/// system's deletes too). Files/s and each node's CPU ms per file.
async fn file_set(nodes: &Nodes, dir: &std::path::Path, names: &[String], kib: u64) -> anyhow::Result<Small> {
    let set_dir = dir.join("set");
    std::fs::create_dir_all(&set_dir)?;
    for n in names {
        std::fs::copy(dir.join(n), set_dir.join(n))?;
    }
    let t = Instant::now();
    let (cpu, machine) = (nodes.cpu(), MachineCpu::now());
    let set = Submit { file: String::new(), pattern: Some("set/small-*.dat".into()), ..submit(String::new()) };
    let view = nodes.api.submit(&set).await?;
    let done = bounded(wait_final(&nodes.api, &view.id), "the file set").await??;
    let secs = t.elapsed().as_secs_f64();
    let busy_pct = machine.busy_since();
    let files = done.set.as_ref().map_or(0, |s| s.done);
    if done.status != Status::Done || files as usize != names.len() {
        bail!("the file set ended {:?} with {files} of {} files: {:?}", done.status, names.len(), done.error);
    }
    let fps = f64::from(files) / secs;
    let (a, b) = nodes.cpu();
    let per = |now: f64, before: f64| (now - before) * 1e3 / f64::from(files);
    let (cpu_a_ms, cpu_b_ms) = (per(a, cpu.0), per(b, cpu.1));
    println!(
        "file set: {files} files of {} as one request in {secs:.2} s = {fps:.0} files/s; CPU ms per file: sender {cpu_a_ms:.2}, receiver {cpu_b_ms:.2}; the machine's cores {busy_pct:.0}% busy",
        display::bytes(kib << 10)
    );
    Ok(Small { rps: fps, cpu_a_ms, cpu_b_ms, busy_pct })
}

/// `--parallel`: `count` pushes of `mib` MiB at once (hard links of one
/// random file, so the sender reads one file from the page cache). Prints
/// each node's peak memory and what each holds when all are done and 5 s
/// later; returns the BENCH fields.
async fn parallel_pushes(nodes: &Nodes, layout: &LocalLayout, count: usize, mib: u64) -> anyhow::Result<String> {
    let out = layout.out_dir("a");
    let first = out.join("par-00000.dat");
    write_random_file(&first, mib)?;
    let names: Vec<String> = (0..count).map(|i| format!("par-{i:05}.dat")).collect();
    for n in names.iter().skip(1) {
        std::fs::hard_link(&first, out.join(n)).or_else(|_| std::fs::copy(&first, out.join(n)).map(|_| ()))?;
    }
    nodes.reset_peaks();
    let since = ferry::store::now_ms();
    let t = Instant::now();
    submit_each(&nodes.api, &names, count).await?;
    wait_settled(&nodes.api, since, Duration::from_secs(1800)).await?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = (count as u64) * (mib << 20);
    let (peak_a, peak_b) = (nodes.a.peak(), nodes.b.peak());
    let (after_a, after_b) = (nodes.a.resident(), nodes.b.resident());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (later_a, later_b) = (nodes.a.resident(), nodes.b.resident());
    println!(
        "parallel: {count} pushes of {} at once in {secs:.2} s = {}; peak resident a {}, b {}; when all were done a {}, b {}; idle 5 s later a {}, b {}",
        display::bytes(mib << 20),
        display::rate(bytes, secs),
        display::bytes(peak_a),
        display::bytes(peak_b),
        display::bytes(after_a),
        display::bytes(after_b),
        display::bytes(later_a),
        display::bytes(later_b),
    );
    for n in &names {
        let _ = std::fs::remove_file(out.join(n));
        let _ = std::fs::remove_file(layout.in_dir("b").join(n));
    }
    Ok(format!(
        " par_count={count} par_mib={mib} par_mbs={:.1} par_peak_a_bytes={peak_a} par_peak_b_bytes={peak_b} par_after_a_bytes={later_a} par_after_b_bytes={later_b}",
        bytes as f64 / 1e6 / secs
    ))
}

/// `--queued`: stops b, queues `count` small requests on a, lists a page
/// of them, starts b again and times how long a takes to move again and
/// to drain the queue; returns the BENCH fields.
async fn queued_requests(
    nodes: &mut Nodes,
    exe: &std::path::Path,
    layout: &LocalLayout,
    count: usize,
    kib: u64,
) -> anyhow::Result<String> {
    let names = write_small_files(&layout.out_dir("a"), "queued-", count, kib << 10)?;
    nodes.b.stop().await?;
    let since = ferry::store::now_ms();
    let submit_secs = submit_each(&nodes.api, &names, 64).await?;
    let submit_rps = count as f64 / submit_secs;
    let t = Instant::now();
    let filter = TransferFilter { status: Some("ToSubmit".into()), limit: Some(100), ..Default::default() };
    let (page, _) = nodes.api.list_page(&filter).await?;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_queued = nodes.a.resident();
    println!(
        "queued: {count} requests submitted in {submit_secs:.2} s ({submit_rps:.0}/s) with partner b stopped; a page of {} queued in {list_ms:.1} ms; a resident {}",
        page.len(),
        display::bytes(rss_queued)
    );
    nodes.a.reset_peak();
    let t = Instant::now();
    nodes.b.restart(exe).await?;
    let started = t.elapsed().as_secs_f64();
    let done = TransferFilter { status: Some("Done".into()), from: Some(since), limit: Some(1), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(300);
    while nodes.api.list_page(&done).await?.0.is_empty() {
        if Instant::now() > deadline {
            bail!("no queued request was done within 300 s of b's return");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let react = t.elapsed().as_secs_f64();
    wait_settled(&nodes.api, since, Duration::from_secs(1800)).await?;
    let drain = t.elapsed().as_secs_f64();
    let peak = nodes.a.peak();
    println!(
        "queued: b started again in {started:.2} s; the first queued request was done {react:.2} s after b was started, all {count} after {drain:.2} s ({:.0} requests/s); a's peak resident while the queue drained {}",
        count as f64 / drain,
        display::bytes(peak)
    );
    Ok(format!(
        " queued={count} queued_submit_rps={submit_rps:.1} queued_list_ms={list_ms:.1} queued_rss_a_bytes={rss_queued} queued_react_s={react:.2} queued_drain_s={drain:.2} queued_peak_a_bytes={peak}"
    ))
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.fill_store {
        let (dir, n, partner) = (dir.clone(), args.history, args.fill_partner.clone());
        return tokio::task::spawn_blocking(move || {
            let store = ferry::store::Store::open(&dir)?;
            ferry::store::history::fill(&store, n, &partner, "default", ferry::store::now_ms())
        })
        .await?
        .map_err(Into::into);
    }
    let temp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut layout = LocalLayout::create(&root, &["a", "b"]).context("generating certificates and configs")?;
    if let Some(mib) = args.send_buffer_mib {
        for c in &mut layout.configs {
            c.transport.send_buffer_bytes = mib << 20;
        }
    }
    let config_files = layout.write_configs()?;
    let exe = std::env::current_exe().context("this program's path, to start the nodes")?;
    if args.history > 0 {
        let t = Instant::now();
        for (cfg, partner) in [(&layout.configs[0], "b"), (&layout.configs[1], "a")] {
            let n = args.history.to_string();
            let dir = cfg.data_dir.join("store");
            let status = tokio::process::Command::new(&exe)
                .args(["bench", "--history", n.as_str(), "--fill-partner", partner, "--fill-store"])
                .arg(&dir)
                .status()
                .await?;
            if !status.success() {
                bail!("filling {} failed: {status}", dir.display());
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "history: {} ended requests written to each node's store in {secs:.1} s ({:.0} requests/s, {} job-log lines each)",
            args.history,
            (2 * args.history) as f64 / secs,
            ferry::store::history::LOG_LINES
        );
    }
    let t = Instant::now();
    let logs = [root.join("a.log"), root.join("b.log")];
    let (a, b) = tokio::try_join!(
        NodeProcess::start(&exe, &layout.configs[0], &config_files[0], &logs[0]),
        NodeProcess::start(&exe, &layout.configs[1], &config_files[1], &logs[1]),
    )?;
    let start_secs = t.elapsed().as_secs_f64();
    let api =
        ApiClient::for_local_node(&layout.configs[0], layout.configs[0].api)?.with_timeout(Duration::from_secs(60));
    let mut nodes = Nodes { a, b, api };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "ferry bench: 2 nodes (processes) on loopback, {cores} cores, work folder {}; node logs in a.log and b.log",
        root.display()
    );
    println!(
        "start: both nodes started in {start_secs:.2} s with {} requests in each store; resident {}",
        args.history,
        nodes.both(NodeProcess::resident)
    );
    let big_bytes = args.big_mib << 20;
    let big = if big_bytes > 0 { big_push(&nodes, &layout, args.big_mib).await? } else { Big::default() };

    let small_dir = layout.out_dir("a");
    let names = write_small_files(&small_dir, "small-", args.small_count, args.small_kib << 10)?;
    let small = small_requests(&nodes, &names, args.small_kib, args.submit_parallel).await?;

    // A page of the listing, newest requests, through the API, as a
    // console would ask for it.
    let t = Instant::now();
    let filter = TransferFilter { limit: Some(100), ..Default::default() };
    let (page, _) = nodes.api.list_page(&filter).await?;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "listing: a page of {} transfers in {list_ms:.1} ms with {} requests stored; resident {}",
        page.len(),
        args.history + names.len(),
        nodes.both(NodeProcess::resident)
    );

    let set = file_set(&nodes, &small_dir, &names, args.small_kib).await?;
    let (rss_a, rss_b) = (nodes.a.resident(), nodes.b.resident());
    let mut extra = String::new();
    if args.parallel > 0 {
        extra += &parallel_pushes(&nodes, &layout, args.parallel, args.parallel_mib).await?;
    }
    if args.queued > 0 {
        extra += &queued_requests(&mut nodes, &exe, &layout, args.queued, args.small_kib).await?;
    }
    println!(
        "BENCH big_bytes={big_bytes} big_mbs={:.1} big_cpu_s_per_gib={:.2} big_cpu_a={:.2} big_cpu_b={:.2} quic_mbs={:.1} local_mbs={:.1} small_count={} small_rps={:.1} small_cpu_ms={:.2} small_cpu_a_ms={:.2} small_cpu_b_ms={:.2} set_fps={:.1} set_cpu_ms={:.2} set_cpu_a_ms={:.2} set_cpu_b_ms={:.2} small_busy_pct={:.0} set_busy_pct={:.0} history={} start_s={start_secs:.2} list_ms={list_ms:.1} rss_bytes={} rss_a_bytes={rss_a} rss_b_bytes={rss_b} cores={cores}{extra}",
        big.mbs,
        big.cpu_a + big.cpu_b,
        big.cpu_a,
        big.cpu_b,
        big.quic_mbs,
        big.local_mbs,
        names.len(),
        small.rps,
        small.cpu_a_ms + small.cpu_b_ms,
        small.cpu_a_ms,
        small.cpu_b_ms,
        set.rps,
        set.cpu_a_ms + set.cpu_b_ms,
        set.cpu_a_ms,
        set.cpu_b_ms,
        small.busy_pct,
        set.busy_pct,
        args.history,
        rss_a + rss_b,
    );
    nodes.a.stop().await?;
    nodes.b.stop().await?;
    Ok(())
}
