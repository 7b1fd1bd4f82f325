//! `ferry demo`: starts a small local cluster and runs a few transfers through it.
//!
//! PLACEHOLDER: the arguments are final; the body is still to be written.

use std::path::PathBuf;

/// Arguments of `ferry demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keep the demo's files (configs, certificates, stores, transferred files) in DIR
    /// instead of a temporary folder removed at the end.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// How many nodes to start.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: usize,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let _ = (&args.keep, args.nodes);
    anyhow::bail!("not yet")
}
