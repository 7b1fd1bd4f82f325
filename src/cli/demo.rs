//! `ferry demo`: starts a local cluster of three nodes on loopback, moves a
//! few generated files between them (pushes and pulls, one of 64 MiB) and
//! one file set (a small tree with an empty folder, one request), and
//! checks every delivered file against its source with BLAKE3.
//!
//! The nodes run in this process but are driven through their REST APIs,
//! exactly as an operator's tools would drive separate `ferry node`s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry::api::ApiClient;
use ferry::cluster::LocalLayout;
use ferry::model::Submit;
use ferry::node::Node;
use ferry::protocol::{Digest, Direction};
use ferry::store::Status;
use rand::RngCore;

use super::display;

/// Arguments of `ferry demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keep the demo's files (configs, certificates, stores, transferred files) in DIR
    /// instead of a temporary folder removed at the end.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// How many nodes to start, 2 to 8 (named a to h).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: usize,
}

const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// One planned transfer: `requester` asks; the file goes from `from` to `to`.
struct Planned {
    requester: &'static str,
    partner: &'static str,
    direction: Direction,
    file: String,
    size: usize,
}

impl Planned {
    fn route(&self) -> (&'static str, &'static str) {
        match self.direction {
            Direction::Push => (self.requester, self.partner),
            Direction::Pull => (self.partner, self.requester),
        }
    }
}

fn plan(nodes: &[&'static str]) -> Vec<Planned> {
    let n = nodes.len();
    let mut v = vec![Planned {
        requester: nodes[0],
        partner: nodes[1],
        direction: Direction::Push,
        file: "ledger-64MiB.bin".into(),
        size: 64 << 20,
    }];
    let sizes = [10_000, 3 << 20, 0, 5 << 20 | 12_345, 1, 700_000];
    for (i, size) in sizes.iter().enumerate() {
        let requester = nodes[(i + 1) % n];
        let partner = nodes[(i + 2) % n];
        let direction = if i % 2 == 0 { Direction::Pull } else { Direction::Push };
        v.push(Planned { requester, partner, direction, file: format!("file-{i}-{size}.dat"), size: *size });
    }
    v
}

fn write_random(path: &Path, size: usize) -> anyhow::Result<Digest> {
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(Digest::of(&data))
}

fn file_digest(path: &Path) -> anyhow::Result<Digest> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    h.update_reader(f).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().into())
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(2..=NAMES.len()).contains(&args.nodes) {
        bail!("--nodes must be between 2 and {}", NAMES.len());
    }
    let temp;
    let root = match &args.keep {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty; give --keep a new or empty folder", dir.display());
            }
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let ids: Vec<&'static str> = NAMES[..args.nodes].to_vec();
    println!("ferry demo: {} nodes on loopback, files in {}", ids.len(), root.display());
    let layout = LocalLayout::create(&root, &ids).context("generating certificates and configs")?;
    layout.write_configs()?;

    let mut nodes = Vec::new();
    for cfg in &layout.configs {
        let node = Node::start(cfg.clone()).await.with_context(|| format!("starting node {}", cfg.node_id))?;
        println!(
            "  node {}: QUIC {}  API {}",
            cfg.node_id,
            node.quic_addr(),
            ferry::api::client::base_of(cfg, node.api_addr())
        );
        nodes.push(node);
    }
    let api = |id: &str| -> anyhow::Result<ApiClient> {
        let cfg = layout.config(id).context("node in layout")?;
        Ok(ApiClient::for_local_node(cfg, cfg.api)?)
    };

    let planned = plan(&ids);
    println!("\ngenerating {} files and submitting them through the REST API", planned.len());
    let mut submitted = Vec::new();
    for p in &planned {
        let (from, _) = p.route();
        let digest = write_random(&layout.out_dir(from).join(&p.file), p.size)?;
        let s = Submit {
            external_job_id: Some(format!("demo-{}", submitted.len() + 1)),
            transfer_info: "ferry demo".into(),
            ..Submit::file(p.partner, "default", p.direction, &p.file)
        };
        let view = api(p.requester)?.submit(&s).await.with_context(|| format!("submitting {}", p.file))?;
        submitted.push((p, digest, view.id));
    }

    let mut rows = Vec::new();
    let mut failures = 0;
    for (p, digest, id) in &submitted {
        let (from, to) = p.route();
        let client = api(p.requester)?;
        let mut last_shown = 0u64;
        let view = client
            .wait(id, Duration::from_millis(100), |v| {
                if p.size >= 16 << 20 && v.transferred > last_shown && v.status == Status::Running {
                    last_shown = v.transferred;
                    eprint!(
                        "\r  {} {}: {} of {}   ",
                        id,
                        p.file,
                        display::bytes(v.transferred),
                        display::bytes(v.size)
                    );
                }
            })
            .await?;
        if last_shown > 0 {
            eprintln!();
        }
        let delivered = layout.in_dir(to).join(&p.file);
        let secs = match (view.started_at, view.finished_at) {
            (Some(s), Some(f)) if f > s => (f - s) as f64 / 1000.0,
            _ => 0.0,
        };
        let verdict = if view.status != Status::Done {
            let e = view.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
            format!("FAILED {:?} {e}", view.status)
        } else {
            match file_digest(&delivered) {
                Ok(d) if d == *digest && view.hash.as_deref().is_none_or(|h| h == d.to_hex()) => {
                    "identical".to_string()
                }
                Ok(d) => format!("MISMATCH delivered {d}"),
                Err(e) => format!("MISSING {e:#}"),
            }
        };
        if verdict != "identical" {
            failures += 1;
        }
        rows.push(vec![
            id.clone(),
            format!("{from} -> {to}"),
            format!("{:?} by {}", p.direction, p.requester).to_lowercase(),
            display::bytes(p.size as u64),
            if secs > 0.0 && p.size >= 1 << 20 { display::rate(p.size as u64, secs) } else { "-".into() },
            digest.to_hex(),
            verdict,
        ]);
    }
    println!(
        "\n{}",
        display::table(&["request", "route", "how", "size", "throughput", "BLAKE3 (b3sum)", "result"], &rows)
    );

    // One file set: a small tree (a nested folder, an empty folder) from
    // the first node to the second, as one request.
    let (from, to) = (ids[0], ids[1]);
    let tree = layout.out_dir(from).join("reports");
    let mut set_files = Vec::new();
    for i in 0..24 {
        let rel = if i % 3 == 0 { format!("reports/2026-11/r{i:02}.csv") } else { format!("reports/r{i:02}.csv") };
        let path = layout.out_dir(from).join(&rel);
        std::fs::create_dir_all(path.parent().context("a parent folder")?)?;
        set_files.push((rel, write_random(&path, 1024 + i * 512)?));
    }
    std::fs::create_dir_all(tree.join("empty"))?;
    let set = Submit {
        external_job_id: Some("demo-set".into()),
        transfer_info: "ferry demo: a file set".into(),
        pattern: Some("reports/**".into()),
        ..Submit::file(to, "default", Direction::Push, "")
    };
    println!("file set: {from} pushes 'reports/**' (24 files in a tree and an empty folder) to {to} as one request");
    let client = api(from)?;
    let view = client.submit(&set).await.context("submitting the file set")?;
    let view = client.wait(&view.id, Duration::from_millis(100), |_| {}).await?;
    let mut set_ok = view.status == Status::Done && layout.in_dir(to).join("reports/empty").is_dir();
    for (rel, digest) in &set_files {
        set_ok &= file_digest(&layout.in_dir(to).join(rel)).is_ok_and(|d| d == *digest);
    }
    let counts = view.set.as_ref().map(|s| format!("{} of {} entries done", s.done, s.files)).unwrap_or_default();
    println!(
        "  {} {:?}: {counts}, {}; {}",
        view.id,
        view.status,
        display::bytes(view.transferred),
        if set_ok { "every file identical, the tree and the empty folder in place" } else { "FAILED" }
    );
    if !set_ok {
        failures += 1;
    }
    println!();

    for node in &nodes {
        let stats = node.handle().stats().await;
        let peers: Vec<String> = stats.connections_by_partner.iter().map(|(p, n)| format!("{p}:{n}")).collect();
        println!("node {}: {} QUIC connection(s) to partners [{}]", stats.node_id, stats.connections, peers.join(" "));
    }
    for node in nodes {
        node.shutdown().await;
    }
    if args.keep.is_some() {
        println!("\ncluster folders kept in {} (configs: NODE.toml; received files: NODE/in)", root.display());
    }
    if failures > 0 {
        bail!("{failures} of {} transfers (the file set included) did not arrive identical", submitted.len() + 1);
    }
    println!(
        "\nall {} transfers and the file set verified: every delivered file is identical to its source",
        submitted.len()
    );
    Ok(())
}
