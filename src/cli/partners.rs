//! Cluster-facing client commands: `partners` (who this node can reach),
//! and the cluster-wide view of a request (`status --cluster`, and
//! `send --from ... --wait` following a request another node holds).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ferry::actors::availability::PartnerState;
use ferry::api::ApiClient;
use ferry::model::{ClusterView, PartnersView};

use super::display::{bytes, iso_time, out, out_json, table};
use super::transfer::ApiArg;

/// How often a cluster-wide wait polls.
const POLL: Duration = Duration::from_millis(500);

/// Arguments of `partners`.
#[derive(Args, Debug, Clone)]
pub struct PartnersArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `partners`: every configured partner with its availability.
pub async fn partners(args: PartnersArgs) -> anyhow::Result<()> {
    let view = args.api.client()?.partners().await?;
    if args.json {
        return out_json(&view);
    }
    out(&partners_table(&view))
}

fn state_word(s: PartnerState) -> &'static str {
    match s {
        PartnerState::Available => "available",
        PartnerState::Unavailable => "unavailable",
        PartnerState::Unknown => "unknown",
    }
}

/// Days left of a certificate, flagged from
/// [`EXPIRY_WARNING_DAYS`](ferry::transport::tls::EXPIRY_WARNING_DAYS) on.
fn days(left: i64) -> String {
    match left {
        ..0 => "expired".into(),
        n if n < ferry::transport::tls::EXPIRY_WARNING_DAYS => format!("{n} d (renew)"),
        n => format!("{n} d"),
    }
}

/// `--json` prints [`PartnersView`] as the API answers it.
pub fn partners_table(v: &PartnersView) -> String {
    let rows: Vec<Vec<String>> = v
        .partners
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                if p.aliases.is_empty() { "-".into() } else { p.aliases.join(",") },
                p.address.clone(),
                state_word(p.state).to_owned(),
                p.since_ms.map(iso_time).unwrap_or_else(|| "-".into()),
                p.rtt_ms.map(|r| format!("{r:.2} ms")).unwrap_or_else(|| "-".into()),
                p.connections.to_string(),
                p.certificate_days_left.map(days).unwrap_or_else(|| "-".into()),
                match (p.state, &p.last_error) {
                    (PartnerState::Available, _) | (_, None) => "-".into(),
                    (_, Some(e)) => e.clone(),
                },
            ]
        })
        .collect();
    let mut text = match &v.certificate {
        Some(c) => format!("node {} (its certificate {}: {})\n", v.node_id, c.serial, days(c.days_left)),
        None => format!("node {}\n", v.node_id),
    };
    text.push_str(&table(
        &["PARTNER", "ALIASES", "ADDRESS", "STATE", "SINCE", "RTT", "CONNS", "CERT", "LAST ERROR"],
        &rows,
    ));
    for g in &v.groups {
        text.push_str(&format!("group {}: {}\n", g.name, g.members.join(", ")));
    }
    text
}

/// A request as its two nodes know it.
pub fn cluster_detail(c: &ClusterView) -> String {
    let mut text = format!(
        "id       {}\nholder   {}\nstatus   {}{}\n",
        c.id,
        c.holder.as_deref().unwrap_or("? (its requester did not answer)"),
        c.status.as_deref().unwrap_or("?"),
        if c.agreed { " (both nodes agree)" } else { " (the two nodes do not agree yet, or one did not answer)" }
    );
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.role.clone(),
                n.partner.clone(),
                n.status.clone(),
                n.step.clone(),
                format!("{} / {}", bytes(n.transferred), bytes(n.size)),
                n.error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    text.push_str(&table(&["NODE", "ROLE", "PARTNER", "STATUS", "STEP", "TRANSFERRED / SIZE", "ERROR"], &rows));
    for u in &c.unreachable {
        text.push_str(&format!("not asked: {u}\n"));
    }
    text
}

fn is_final(status: &str) -> bool {
    matches!(status, "Done" | "InError" | "Cancelled")
}

/// Follows a request through the cluster-wide view until both nodes agree
/// it ended (or the holder says it ended); fails unless it ended `Done`.
pub async fn follow_cluster(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    let mut since_final: Option<Instant> = None;
    loop {
        let view = client.cluster_view(id).await.with_context(|| format!("lost track of transfer {id}"))?;
        let status = view.status.clone().unwrap_or_else(|| "?".into());
        if status != last {
            eprintln!("{id}: {status} (holder {})", view.holder.as_deref().unwrap_or("?"));
            last = status.clone();
        }
        // Both nodes record the end; wait briefly for the second one.
        let ended = is_final(&status) && (view.agreed || since_final.is_some_and(|t| t.elapsed() > POLL * 10));
        if is_final(&status) && since_final.is_none() {
            since_final = Some(Instant::now());
        }
        if ended {
            out(&cluster_detail(&view))?;
            if status == "Done" {
                return Ok(());
            }
            let why = view.nodes.iter().find_map(|n| n.error.clone()).unwrap_or_else(|| "no reason recorded".into());
            anyhow::bail!("transfer {id} ended {status}: {why}");
        }
        tokio::time::sleep(POLL).await;
    }
}
