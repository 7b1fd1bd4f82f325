//! `ferry bench`: measures throughput for one big file and many small ones.
//!
//! PLACEHOLDER: the arguments are final; the body is still to be written.

use std::path::PathBuf;

/// Arguments of `ferry bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Work in DIR (kept afterwards) instead of a temporary folder.
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
    /// Skip the scp/ssh comparison.
    #[arg(long)]
    pub skip_ssh: bool,
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = (&args.dir, args.big_mib, args.small_count, args.small_kib, args.skip_ssh);
    anyhow::bail!("not yet")
}
