//! `ferry bench`: throughput of one big push, of many small requests and
//! of the same small files as one file set, between two nodes on this machine. Prints figures; asserts nothing.
//!
//! The nodes run in this process and requests are submitted through the
//! REST API, as an operator's scheduler would. `cluster/bench.sh` runs this
//! and then scp and rsync over a local sshd on the same files.
//!
//! Beside the big push it measures two bounds in the same run: one raw
//! QUIC stream between two fresh endpoints with the nodes' own identities
//! and transport settings, no disk and no hashing (the transport's bound),
//! and reading plus hashing the big file alone (the local bound).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry::api::ApiClient;
use ferry::cluster::LocalLayout;
use ferry::model::Submit;
use ferry::node::Node;
use ferry::protocol::{Compression, Direction};
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
}

/// Resident memory of this process (both nodes), in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The big push and its two bounds: MB/s, CPU s per GiB (both nodes), the
/// raw QUIC bound's MB/s and the local bound's MB/s.
async fn big_push(api: &ApiClient, layout: &LocalLayout, big_mib: u64) -> anyhow::Result<(f64, f64, f64, f64)> {
    let big = "big.bin";
    let big_bytes = big_mib << 20;
    {
        let path = layout.out_dir("a").join(big);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..big_mib {
            rand::rng().fill_bytes(&mut chunk);
            std::io::Write::write_all(&mut f, &chunk)?;
        }
        std::io::Write::flush(&mut f)?;
    }
    let t = Instant::now();
    let cpu = cpu_seconds();
    let view = api.submit(&submit(big.into())).await?;
    let done = api.wait(&view.id, Duration::from_millis(20), |_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    if done.status != Status::Done {
        bail!("big push ended {:?}: {:?}", done.status, done.error);
    }
    let big_mbs = big_bytes as f64 / 1e6 / secs;
    let big_cpu = (cpu_seconds() - cpu) / (big_bytes as f64 / f64::from(1u32 << 30));
    println!(
        "big push: {} in {secs:.2} s = {} (verified, fsynced, delivered); {big_cpu:.2} CPU s per GiB, both nodes",
        display::bytes(big_bytes),
        display::rate(big_bytes, secs)
    );
    let quic_secs = raw_quic_secs(layout, big_bytes).await.context("the raw QUIC bound")?;
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
    Ok((big_mbs, big_cpu, quic_mbs, local_mbs))
}

/// CPU time (user + system) this process has used, in seconds: a steadier
/// figure than wall time when the machine is busy with other work.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: getrusage returned 0, so it initialised the struct.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
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
    Submit {
        partner: "b".into(),
        rule: "default".into(),
        direction: Direction::Push,
        file,
        external_job_id: None,
        transfer_info: String::new(),
        block_size: None,
        source: None,
        target: None,
        target_mode: None,
        pattern: None,
        files: None,
        on_empty: None,
        on_failure: None,
        delivery: None,
        compression: Compression::None,
    }
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
    let layout = LocalLayout::create(&root, &["a", "b"]).context("generating certificates and configs")?;
    if args.history > 0 {
        let t = Instant::now();
        let me = std::env::current_exe().context("this program's path, to fill the stores")?;
        for (cfg, partner) in [(&layout.configs[0], "b"), (&layout.configs[1], "a")] {
            let n = args.history.to_string();
            let dir = cfg.data_dir.join("store");
            let status = tokio::process::Command::new(&me)
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
    let a = Node::start(layout.configs[0].clone()).await?;
    let b = Node::start(layout.configs[1].clone()).await?;
    let start_secs = t.elapsed().as_secs_f64();
    let api = ApiClient::for_local_node(&layout.configs[0], a.api_addr())?.with_timeout(Duration::from_secs(60));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("ferry bench: 2 nodes on loopback, {cores} cores, work folder {}", root.display());

    println!(
        "start: both nodes started in {start_secs:.2} s with {} requests in each store; {} resident",
        args.history,
        display::bytes(resident_bytes())
    );
    let (mut big_mbs, mut big_cpu, mut quic_mbs, mut local_mbs) = (0.0, 0.0, 0.0, 0.0);
    let big_bytes = args.big_mib << 20;
    if big_bytes > 0 {
        (big_mbs, big_cpu, quic_mbs, local_mbs) = big_push(&api, &layout, args.big_mib).await?;
    }

    // Many small files, each its own request.
    let small_dir = layout.out_dir("a");
    let mut data = vec![0u8; (args.small_kib << 10) as usize];
    let names: Vec<String> = (0..args.small_count).map(|i| format!("small-{i:05}.dat")).collect();
    for n in &names {
        rand::rng().fill_bytes(&mut data);
        std::fs::write(small_dir.join(n), &data)?;
    }
    let t = Instant::now();
    let cpu = cpu_seconds();
    let mut ids = Vec::with_capacity(names.len());
    let mut in_flight = tokio::task::JoinSet::new();
    for n in names.iter().cloned() {
        if in_flight.len() >= args.submit_parallel.max(1) {
            if let Some(r) = in_flight.join_next().await {
                ids.push(r??);
            }
        }
        let api = api.clone();
        in_flight.spawn(async move { api.submit(&submit(n)).await.map(|v| v.id) });
    }
    while let Some(r) = in_flight.join_next().await {
        ids.push(r??);
    }
    let submitted = t.elapsed().as_secs_f64();
    // Wait for each request in turn: once the last submitted is final, most
    // others are too, so this costs one store read per request.
    let store = a.handle();
    let deadline = Instant::now() + Duration::from_secs(600);
    for id in &ids {
        let id = ferry::protocol::RequestId::parse(id).context("request id from the API")?;
        loop {
            if store.store().get(&id)?.is_some_and(|r| r.status.is_final()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("request {id} still not final after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let mut failed = 0;
    for id in &ids {
        let id = ferry::protocol::RequestId::parse(id).context("request id from the API")?;
        failed += usize::from(store.store().get(&id)?.is_none_or(|r| r.status != Status::Done));
    }

    if failed > 0 {
        bail!("{failed} requests did not end Done");
    }
    let rps = names.len() as f64 / secs;
    let small_cpu_ms = (cpu_seconds() - cpu) * 1e3 / names.len() as f64;
    println!(
        "small files: {} requests of {} in {secs:.2} s = {rps:.0} requests/s (all submitted through the API in {submitted:.2} s); {small_cpu_ms:.2} CPU ms per request, both nodes",
        names.len(),
        display::bytes(args.small_kib << 10)
    );

    // A page of the listing, newest requests, through the API, as a
    // console would ask for it.
    let t = Instant::now();
    let filter = ferry::model::TransferFilter { limit: Some(100), ..Default::default() };
    let (page, _) = api.list_page(&filter).await?;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "listing: a page of {} transfers in {list_ms:.1} ms with {} requests stored; {} resident",
        page.len(),
        args.history + names.len(),
        display::bytes(resident_bytes())
    );

    // The same small files as one file set: one request, resolved by a.
    // A copy in a folder of its own, so the set delivers new files as the
    // requests did (replacing the files just delivered would time the
    // file system's deletes too).
    let set_dir = small_dir.join("set");
    std::fs::create_dir_all(&set_dir)?;
    for n in &names {
        std::fs::copy(small_dir.join(n), set_dir.join(n))?;
    }
    let t = Instant::now();
    let cpu = cpu_seconds();
    let set = Submit { file: String::new(), pattern: Some("set/small-*.dat".into()), ..submit(String::new()) };
    let view = api.submit(&set).await?;
    let done = api.wait(&view.id, Duration::from_millis(20), |_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    let files = done.set.as_ref().map_or(0, |s| s.done);
    if done.status != Status::Done || files as usize != names.len() {
        bail!("the file set ended {:?} with {files} of {} files: {:?}", done.status, names.len(), done.error);
    }
    let set_fps = f64::from(files) / secs;
    let set_cpu_ms = (cpu_seconds() - cpu) * 1e3 / f64::from(files);
    println!(
        "file set: {files} files of {} as one request in {secs:.2} s = {set_fps:.0} files/s; {set_cpu_ms:.2} CPU ms per file, both nodes",
        display::bytes(args.small_kib << 10)
    );
    println!(
        "BENCH big_bytes={big_bytes} big_mbs={big_mbs:.1} big_cpu_s_per_gib={big_cpu:.2} quic_mbs={quic_mbs:.1} local_mbs={local_mbs:.1} small_count={} small_rps={rps:.1} small_cpu_ms={small_cpu_ms:.2} set_fps={set_fps:.1} set_cpu_ms={set_cpu_ms:.2} history={} start_s={start_secs:.2} list_ms={list_ms:.1} rss_bytes={} cores={cores}",
        names.len(),
        args.history,
        resident_bytes()
    );
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
