//! The `ferry` command line: argument parsing (clap) and dispatch.
//!
//! `node` and `certs` act locally; `send`, `get`, `status`, `log`, `stop`,
//! `cancel` and `restart` talk to a running node through its REST API
//! ([`ferry::api::ApiClient`]); `cluster`, `demo` and `bench` live in their
//! own modules.

mod access;
mod bench;
mod cluster;
mod control;
mod demo;
mod display;
mod follow;
mod partners;
mod rules;
mod token;
mod transfer;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry::config::NodeConfig;
use ferry::protocol::Direction;

use display::out;

/// Managed file transfer: nodes talk QUIC with mutual TLS, every request is
/// persisted and restartable, every file is verified with BLAKE3.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node until SIGINT or SIGTERM (log level from RUST_LOG, default info).
    Node {
        /// The node's TOML config.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Create the cluster CA and node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Push a file to a partner.
    Send(transfer::SendArgs),
    /// Pull a file from a partner.
    Get(transfer::GetArgs),
    /// Show one transfer in detail, or list transfers.
    Status(transfer::StatusArgs),
    /// Show a transfer's job log.
    Log(transfer::LogArgs),
    /// List this node's partners: available or not, since when, round-trip time.
    Partners(partners::PartnersArgs),
    /// List this node's rules: partners, folders, target mode and the tasks each side runs.
    Rules(rules::RulesArgs),
    /// Stop (pause) a transfer this node requested; `restart` resumes it.
    Stop(control::CommandArgs),
    /// Cancel a transfer this node requested, on both nodes (its partial file is removed).
    Cancel(control::CommandArgs),
    /// Queue an InError or Interrupted transfer again; it resumes from its restart point.
    Restart(control::RestartArgs),
    /// Make, list and revoke API tokens (needs an admin token).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Print the REST API's OpenAPI 3.1 document (as `GET /api/v1/openapi.json` serves it).
    Openapi,
    /// Start a local cluster and run a few transfers through it.
    Demo(demo::DemoArgs),
    /// Measure transfer throughput on a local cluster.
    Bench(bench::BenchArgs),
    /// Start, stop and inspect a cluster of `ferry node` processes described by a cluster file.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a new cluster CA in DIR and a certificate for each node.
    Init {
        /// The certificate folder (created if needed).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Node ids, comma-separated (e.g. a,b,c).
        #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Issue a certificate for one more node with the CA in DIR.
    Add {
        /// The certificate folder holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The new node's id.
        node: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Issue a node a new key and certificate in place of its current ones (same folder, same
    /// file names). A running node picks them up without a restart, on SIGHUP or about a second
    /// after the files change; its connections carry on. Without --ip the old addresses are kept.
    /// The old certificate stays valid until it expires: revoke it too if its key leaked.
    Renew {
        /// The certificate folder holding ca.key and the node's files.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node to renew.
        node: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Revoke a node's certificate: writes DIR/crl.pem, signed by the CA. Give it to every
    /// node as `[tls] crl` (read at start, on SIGHUP and when it changes) and the revoked node
    /// is refused at every handshake.
    Revoke {
        /// The certificate folder holding ca.key and the node's certificate.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node to revoke.
        node: String,
    },
}

/// How node certificates are issued.
#[derive(clap::Args, Debug, Clone)]
pub struct IssueArgs {
    /// Days each node certificate is valid.
    #[arg(long, value_name = "DAYS", default_value_t = ferry::certs::DEFAULT_NODE_VALIDITY_DAYS)]
    days: u32,
    /// An IP address the node's HTTPS API is reached at (repeat for more);
    /// it goes in the certificate so `ferry` can verify `https://IP:port`.
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<std::net::IpAddr>,
}

impl IssueArgs {
    fn options(&self) -> ferry::certs::IssueOptions {
        ferry::certs::IssueOptions { validity_days: self.days, ips: self.ips.clone() }
    }
}

/// Sets up logging to stderr: the filter comes from `RUST_LOG`, else `default`.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second call (a subscriber is already set) is harmless.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node { config } => {
            init_tracing("info");
            let cfg = NodeConfig::load(&config)?;
            ferry::node::run_node(cfg).await.with_context(|| format!("node {}", config.display()))?;
            Ok(())
        }
        Command::Certs(CertsCommand::Init { dir, nodes, issue }) => {
            ferry::certs::init_with(&dir, &nodes, &issue.options())?;
            let mut text = format!(
                "wrote cluster CA {} and {}\n",
                dir.join(ferry::certs::CA_CERT_FILE).display(),
                dir.join(ferry::certs::CA_KEY_FILE).display()
            );
            for node in &nodes {
                text.push_str(&written(&dir, node));
            }
            out(&text)
        }
        Command::Certs(CertsCommand::Add { dir, node, issue }) => {
            ferry::certs::add_with(&dir, &node, &issue.options())?;
            out(&written(&dir, &node))
        }
        Command::Certs(CertsCommand::Renew { dir, node, issue }) => {
            let renewed = ferry::certs::renew(&dir, &node, &issue.options())?;
            let p = ferry::certs::paths(&dir, &node);
            let ips: Vec<String> = renewed.ips.iter().map(ToString::to_string).collect();
            let days = ferry::transport::tls::days_left(renewed.new.not_after, ferry::transport::reload::unix_now());
            out(&format!(
                "renewed node {node}: new key {} and certificate {} (serial {}, valid {days} days{}); \
                 it replaces serial {}, which stays valid until it expires.\n\
                 A running node with these files picks them up within seconds (or at once on SIGHUP).\n",
                p.key.display(),
                p.cert.display(),
                renewed.new.serial,
                if ips.is_empty() { String::new() } else { format!(", addresses {}", ips.join(", ")) },
                renewed.old_serial,
            ))
        }
        Command::Certs(CertsCommand::Revoke { dir, node }) => {
            let crl = ferry::certs::revoke(&dir, &node)?;
            out(&format!(
                "revoked node {node}: {} now lists its certificate (all revoked: {}); nodes refuse it once they run with [tls] crl = \"{}\" (a running node rereads the list within seconds)\n",
                crl.display(),
                dir.join(ferry::certs::REVOKED_FILE).display(),
                crl.display()
            ))
        }
        Command::Openapi => out(&ferry::api::doc::openapi_json()),
        Command::Send(args) => transfer::transfer(args.transfer, Direction::Push, args.from).await,
        Command::Get(args) => transfer::transfer(args.transfer, Direction::Pull, args.to).await,
        Command::Status(args) => transfer::status(args).await,
        Command::Log(args) => transfer::log(args).await,
        Command::Partners(args) => partners::partners(args).await,
        Command::Rules(args) => rules::rules(args).await,
        Command::Stop(args) => control::stop(args).await,
        Command::Cancel(args) => control::cancel(args).await,
        Command::Restart(args) => control::restart(args).await,
        Command::Token(cmd) => token::run(cmd).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Cluster(cmd) => cluster::run(cmd).await,
    }
}

fn written(dir: &std::path::Path, node: &str) -> String {
    let p = ferry::certs::paths(dir, node);
    format!("wrote node {node}: {} and {}\n", p.cert.display(), p.key.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_takes_its_options() {
        let cli = Cli::try_parse_from([
            "ferry",
            "send",
            "--api",
            "h:1",
            "b",
            "default",
            "f.bin",
            "--job-id",
            "j1",
            "--info",
            "hi",
            "--block-size",
            "64K",
            "--lz4",
            "--wait",
        ])
        .expect("parses");
        let Command::Send(a) = cli.command else { panic!("not send: {:?}", cli.command) };
        let a = a.transfer;
        assert_eq!((a.partner.as_str(), a.rule.as_str(), a.file.as_str()), ("b", "default", "f.bin"));
        assert_eq!(a.api.api.as_deref(), Some("h:1"));
        assert_eq!(a.job_id.as_deref(), Some("j1"));
        assert_eq!(a.block_size, Some(65536));
        assert!(a.lz4 && a.wait);
    }

    #[test]
    fn certs_init_splits_node_ids() {
        let cli = Cli::try_parse_from(["ferry", "certs", "init", "--dir", "c", "--nodes", "a,b,c"]).expect("parses");
        let Command::Certs(CertsCommand::Init { nodes, .. }) = cli.command else { panic!("not certs init") };
        assert_eq!(nodes, ["a", "b", "c"]);
        assert!(Cli::try_parse_from(["ferry", "certs", "init", "--dir", "c"]).is_err(), "--nodes is required");
    }

    #[test]
    fn status_takes_an_id_or_a_filter_not_both() {
        assert!(Cli::try_parse_from(["ferry", "status", "--status", "done"]).is_ok());
        assert!(Cli::try_parse_from(["ferry", "status", "abc"]).is_ok());
        assert!(Cli::try_parse_from(["ferry", "status", "abc", "--status", "done"]).is_err());
    }

    #[test]
    fn operator_commands_take_an_id_and_an_api() {
        let id = "0123456789abcdef0123456789abcdef";
        let cli = Cli::try_parse_from(["ferry", "stop", "--api", "h:1", id]).expect("parses");
        let Command::Stop(a) = cli.command else { panic!("not stop: {:?}", cli.command) };
        assert_eq!((a.id.as_str(), a.api.api.as_deref()), (id, Some("h:1")));
        let cli = Cli::try_parse_from(["ferry", "cancel", id]).expect("parses");
        let Command::Cancel(a) = cli.command else { panic!("not cancel: {:?}", cli.command) };
        assert_eq!((a.id.as_str(), a.api.api.as_deref()), (id, None));
        let cli = Cli::try_parse_from(["ferry", "restart", id, "--wait"]).expect("parses");
        let Command::Restart(a) = cli.command else { panic!("not restart: {:?}", cli.command) };
        assert!(a.wait && a.id == id);
        let cli = Cli::try_parse_from(["ferry", "restart", id]).expect("parses");
        let Command::Restart(a) = cli.command else { panic!("not restart: {:?}", cli.command) };
        assert!(!a.wait);
        for cmd in ["stop", "cancel", "restart"] {
            assert!(Cli::try_parse_from(["ferry", cmd]).is_err(), "{cmd} needs an id");
        }
        assert!(Cli::try_parse_from(["ferry", "stop", id, "--wait"]).is_err(), "only restart waits");
    }

    #[test]
    fn bench_and_demo_have_their_defaults() {
        let cli = Cli::try_parse_from(["ferry", "bench"]).expect("parses");
        let Command::Bench(b) = cli.command else { panic!("not bench") };
        assert_eq!((b.big_mib, b.small_count, b.small_kib, b.skip_ssh), (1024, 2000, 4, false));
        let cli = Cli::try_parse_from(["ferry", "demo", "--keep", "d"]).expect("parses");
        let Command::Demo(d) = cli.command else { panic!("not demo") };
        assert_eq!(d.keep, Some(PathBuf::from("d")));
    }
}
