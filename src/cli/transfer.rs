//! The client commands: `send`, `get`, `status` and `log`, all through a
//! node's REST API (the operator commands are in [`super::control`]).

use std::path::PathBuf;

use clap::Args;
use ferry::api::{ApiClient, TransferView};
use ferry::model::{Submit, TransferFilter};
use ferry::protocol::{Compression, Direction};
use ferry::store::{Role, Status, Step};

use super::display::{bytes, iso_time, out, out_json, rate, table};

/// Which node to talk to, and with what token and CA.
#[derive(Args, Debug, Clone)]
pub struct ApiArg {
    /// The node's REST API: `https://host:port`, `host:port` (HTTPS), a bare port
    /// (HTTPS on 127.0.0.1), or `http://127.0.0.1:port` for a node serving plain
    /// HTTP on loopback [env: FERRY_API] [default: https://127.0.0.1:8001]
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// A file holding the API token [else: $FERRY_TOKEN, else the access file
    /// `ferry cluster up` wrote for this address under .ferry/access/]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate the node's HTTPS certificate must chain to
    /// [else: $FERRY_CA, else the access file]
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl ApiArg {
    /// `--api`, else `$FERRY_API`, else the default address.
    pub fn resolve(&self) -> String {
        self.api
            .clone()
            .or_else(|| std::env::var("FERRY_API").ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| ferry::api::client::DEFAULT_API.to_owned())
    }

    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let base = ferry::api::client::normalise_base(&self.resolve())?;
        let access = super::access::resolve(&base, self.token_file.as_deref(), self.ca.as_deref())?;
        Ok(ApiClient::new(&base, &access)?)
    }
}

/// A failed submission: a refusal says so; an API that could not be
/// reached refused nothing, and the message says how to choose another.
fn refused(e: ferry::api::ClientError, what: &'static str) -> anyhow::Error {
    match e {
        e @ ferry::api::ClientError::Unreachable { .. } => anyhow::anyhow!(
            "{e}; is a ferry node running there? Choose the node's API with --api URL (or a bare port) or FERRY_API"
        ),
        e => anyhow::Error::new(e).context(what),
    }
}

/// Arguments of `send` and `get`.
#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The partner node (id or alias).
    pub partner: String,
    /// The rule (decides the folders on both nodes).
    pub rule: String,
    /// A plain file name in the rule's send folder (of this node for `send`,
    /// of the partner for `get`), or a pattern, quoted so the shell leaves
    /// it alone (`'*.csv'`, `'2026-11-??/*.xml'`, `'daily/**'`, `a/b.csv`):
    /// one request, a file set, resolved by the sending node. `send` also
    /// takes a folder's name (its tree); `get` a folder's tree as
    /// `'folder/**'`.
    pub file: String,
    /// File sets: when a file fails, send the others anyway (the set ends
    /// InError naming the failed files). Default: the rule's `on_failure`
    /// (`stop`: the files not yet sent are skipped).
    #[arg(long)]
    pub continue_on_error: bool,
    /// File sets: a pattern that matches nothing is a success, not an
    /// error. Default: the rule's `on_empty` (`fail`).
    #[arg(long)]
    pub allow_empty: bool,
    /// File sets: the receiver puts no file under its final name until
    /// every file is verified, then all together (`delivery = all`).
    /// Default: the rule's `delivery` (`each`: each file as soon as it is
    /// verified).
    #[arg(long)]
    pub all_or_nothing: bool,
    /// An id of your own to attach to the request (e.g. a scheduler's job id).
    #[arg(long, value_name = "X")]
    pub job_id: Option<String>,
    /// Free text attached to the request.
    #[arg(long, value_name = "TEXT")]
    pub info: Option<String>,
    /// Block size: bytes, or with a K/M suffix (e.g. 64K, 4M). Default: the node's.
    #[arg(long, value_name = "N", value_parser = parse_block_size)]
    pub block_size: Option<u32>,
    /// Compress blocks with lz4.
    #[arg(long)]
    pub lz4: bool,
    /// What the receiver does if the target file exists: create (refuse),
    /// replace, append or backup. Default: the receiver's rule says.
    #[arg(long, value_name = "MODE", value_parser = parse_target_mode)]
    pub target_mode: Option<ferry::store::TargetMode>,
    /// Follow the transfer until it ends; exit 1 unless it ends Done.
    /// Ctrl-C stops following, not the transfer.
    #[arg(long)]
    pub wait: bool,
}

/// Arguments of `send`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// The node that sends the file, when it is not the node behind --api
    /// (submit anywhere; the request is handed over to it).
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
}

/// Arguments of `get`.
#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// The node that receives the file, when it is not the node behind
    /// --api (submit anywhere).
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
}

/// Arguments of `status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// Show this transfer in detail; without it, list transfers.
    #[arg(conflicts_with = "status")]
    pub id: Option<String>,
    /// List only transfers with this status (ToSubmit, Running, Done, Interrupted, InError, Cancelled; any case).
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// List only transfers with this partner (node id).
    #[arg(long, value_name = "NODE", conflicts_with = "id")]
    pub partner: Option<String>,
    /// List only transfers of this rule.
    #[arg(long, value_name = "RULE", conflicts_with = "id")]
    pub rule: Option<String>,
    /// List only transfers submitted with this external job id.
    #[arg(long = "job-id", value_name = "ID", conflicts_with = "id")]
    pub job_id: Option<String>,
    /// Transfers per page (oldest first; the next page's command is printed on stderr).
    #[arg(long, value_name = "N", default_value_t = 100, conflicts_with = "id")]
    pub limit: usize,
    /// Start after this cursor (printed with the previous page).
    #[arg(long, value_name = "CURSOR", conflicts_with = "id")]
    pub cursor: Option<String>,
    /// With an id: the cluster-wide view (the request as both its nodes
    /// know it, asked through this node, which need not be one of them).
    #[arg(long, requires = "id")]
    pub cluster: bool,
    /// With the id of a file set: list its files, each with its state
    /// (`--limit` per page, `--cursor` an index).
    #[arg(long, requires = "id")]
    pub files: bool,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `log`.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The transfer's id.
    pub id: String,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `N`, `NK`/`NKiB`, `NM`/`NMiB` (binary units, any case) → bytes.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (num, suffix) = lower.split_at(digits_end);
    let mult: u64 = match suffix.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("{t:?} is not a size (examples: 65536, 64K, 4M)")),
    };
    let n: u64 = num.parse().map_err(|_| format!("{t:?} is not a size (examples: 65536, 64K, 4M)"))?;
    n.checked_mul(mult).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| format!("{t:?} is too large"))
}

/// `send` (push) or `get` (pull).
pub async fn transfer(args: TransferArgs, direction: Direction, other_node: Option<String>) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let (source, target) = match (direction, other_node) {
        (Direction::Push, Some(from)) => (Some(from), Some(args.partner.clone())),
        (Direction::Pull, Some(to)) => (Some(args.partner.clone()), Some(to)),
        (_, None) => (None, None),
    };
    let anywhere = source.is_some();
    // A glob or a path is a file set's pattern; a plain name is one file
    // (or, for a push, a folder's tree: the node decides).
    let is_pattern = args.file.contains(['*', '?', '[', '{', '/']);
    let (file, pattern) = if is_pattern { (String::new(), Some(args.file)) } else { (args.file, None) };
    let submit = Submit {
        partner: args.partner,
        rule: args.rule,
        direction,
        file,
        external_job_id: args.job_id,
        transfer_info: args.info.unwrap_or_default(),
        block_size: args.block_size,
        source,
        target,
        compression: if args.lz4 { Compression::Lz4 } else { Compression::None },
        target_mode: args.target_mode,
        pattern,
        files: None,
        on_empty: args.allow_empty.then_some(ferry::fileset::progress::OnEmpty::Succeed),
        on_failure: args.continue_on_error.then_some(ferry::fileset::progress::OnFailure::Continue),
        delivery: args.all_or_nothing.then_some(ferry::fileset::progress::Delivery::All),
    };
    if anywhere {
        let placed =
            client.submit_anywhere(&submit).await.map_err(|e| refused(e, "the cluster refused the transfer"))?;
        out(&format!("{}\n", placed.id))?;
        eprintln!("held by node {} (its requester)", placed.holder);
        if !args.wait {
            return Ok(());
        }
        return super::partners::follow_cluster(&client, placed.id.as_str()).await;
    }
    let view = client.submit(&submit).await.map_err(|e| refused(e, "the node refused the transfer"))?;
    out(&format!("{}\n", view.id))?;
    if !args.wait {
        return Ok(());
    }
    super::follow::follow(&client, &view.id).await
}

/// One line on the final state of a transfer. `last_run_at` is when its
/// last run started sending or receiving (from its job log): the duration
/// and rate are that run's, and the time since the first start is given
/// apart when the request ran more than once.
pub fn summary(v: &TransferView, last_run_at: Option<u64>) -> String {
    if let Some(set) = &v.set {
        return set_summary(v, set);
    }
    match v.status {
        Status::Done => {
            let moved = v.size.saturating_sub(v.restart_offset);
            let secs = |from: u64| v.finished_at.map_or(0.0, |f| f.saturating_sub(from) as f64 / 1000.0);
            let total = v.started_at.map_or(0.0, secs);
            let run = last_run_at.filter(|&t| v.started_at.is_none_or(|s| t >= s)).map_or(total, secs);
            // Under a tenth of a second, or under a block, a rate says nothing.
            let took = if run < 0.1 || moved < u64::from(v.block_size.max(64 * 1024)) {
                format!("in {run:.2} s")
            } else {
                format!("in {run:.2} s, {}", rate(moved, run))
            };
            let resumed =
                if v.restart_offset > 0 { format!(", resumed at {}", bytes(v.restart_offset)) } else { String::new() };
            let overall =
                if total > run + 0.05 { format!("; {total:.2} s since it first started") } else { String::new() };
            format!(
                "{} Done: {} ({}) {took}{resumed}{overall}, blake3 {}",
                v.id,
                v.file,
                bytes(v.size),
                v.hash.as_deref().unwrap_or("-")
            )
        }
        status => format!(
            "{} {status:?} at step {:?}: {} of {} transferred",
            v.id,
            v.step,
            bytes(v.transferred),
            size_or_unknown(v)
        ),
    }
}

/// A file set's end: its files and bytes, the rate in files and bytes,
/// and the failed files its error names.
fn set_summary(v: &TransferView, set: &ferry::model::SetView) -> String {
    let secs = match (v.started_at, v.finished_at) {
        (Some(s), Some(f)) => f.saturating_sub(s) as f64 / 1000.0,
        _ => 0.0,
    };
    let took = if secs < 0.1 {
        format!("in {secs:.2} s")
    } else {
        format!("in {secs:.2} s, {:.0} files/s, {}", f64::from(set.done) / secs, rate(v.transferred, secs))
    };
    let counts = super::follow::set_counts(set);
    match (&v.error, v.status) {
        (_, Status::Done) => {
            format!("{} Done: file set {:?}: {counts} ({}) {took}", v.id, set.pattern, bytes(v.transferred))
        }
        (Some(e), status) => format!("{} {status:?}: file set {:?}: {counts}: {}", v.id, set.pattern, e.message),
        (None, status) => format!("{} {status:?}: file set {:?}: {counts}", v.id, set.pattern),
    }
}

/// When the last run of a transfer started moving data: its job log's last
/// `sending ...`/`receiving ...` line.
pub(super) async fn last_run_at(client: &ApiClient, id: &str) -> Option<u64> {
    let log = client.log(id).await.ok()?;
    log.iter().rev().find(|l| l.message.starts_with("sending ") || l.message.starts_with("receiving ")).map(|l| l.at)
}

pub(super) fn size_or_unknown(v: &TransferView) -> String {
    if v.size == 0 && v.status != Status::Done {
        "?".to_owned()
    } else {
        bytes(v.size)
    }
}

/// `status ID --files`: one page of a file set's files.
async fn set_files(client: &ApiClient, id: &str, args: &StatusArgs) -> anyhow::Result<()> {
    let cursor = match args.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse().map_err(|_| anyhow::anyhow!("--cursor {c:?}: a file set's cursor is a file index"))?,
    };
    let page = client.set_files(id, cursor, args.limit).await?;
    if let Some(next) = page.next {
        eprintln!("more: ferry status {id} --files --cursor {next}");
    }
    if args.json {
        return out_json(&page);
    }
    let rows: Vec<Vec<String>> = page
        .files
        .iter()
        .map(|v| {
            let status = match &v.error {
                Some(e) => format!("{:?} ({})", v.status, e.code),
                None => format!("{:?}", v.status),
            };
            vec![v.file.clone(), status, bytes(v.size), v.id.clone()]
        })
        .collect();
    out(&table(&["FILE", "STATUS", "SIZE", "ID"], &rows))
}

/// `status`: one transfer in detail, or a table.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    if let Some(id) = &args.id {
        if args.cluster {
            let c = client.cluster_view(id).await?;
            return if args.json { out_json(&c) } else { out(&super::partners::cluster_detail(&c)) };
        }
        if args.files {
            return set_files(&client, id, &args).await;
        }
        let v = match client.get(id).await {
            Ok(v) => v,
            Err(e) if e.http_status() == Some(404) => {
                // Not on this node: perhaps elsewhere in the cluster.
                let c = client.cluster_view(id).await.map_err(|_| e)?;
                return if args.json { out_json(&c) } else { out(&super::partners::cluster_detail(&c)) };
            }
            Err(e) => return Err(e.into()),
        };
        if args.json {
            return out_json(&v);
        }
        let extra: Vec<(&str, String)> = receivers_restart_point(&client, &v).await.into_iter().collect();
        return out(&detail(&v, extra));
    }
    let filter = TransferFilter {
        status: args.status.clone(),
        partner: args.partner.clone(),
        rule: args.rule.clone(),
        job: args.job_id.clone(),
        cursor: args.cursor.clone(),
        limit: Some(args.limit),
        ..TransferFilter::default()
    };
    let (list, next) = client.list_page(&filter).await?;
    let more = next.map(|c| format!("more: ferry status --cursor {c} (with the same filters)"));
    if args.json {
        if let Some(more) = &more {
            eprintln!("{more}");
        }
        return out_json(&list);
    }
    if list.is_empty() && more.is_none() {
        let unfiltered = TransferFilter { limit: Some(args.limit), ..TransferFilter::default() };
        eprintln!("no transfers{}", if filter == unfiltered { "" } else { " that match" });
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            let status = match &v.error {
                Some(e) if v.status.is_final() || v.is_stopped() => format!("{:?} ({})", v.status, e.code),
                _ if v.waiting.is_some() => format!("{:?} (waiting)", v.status),
                _ => format!("{:?}", v.status),
            };
            vec![
                v.id.clone(),
                status,
                format!("{:?}", v.step),
                v.partner.clone(),
                direction_word(v).to_owned(),
                v.file.clone(),
                format!("{} / {}", bytes(v.transferred), size_or_unknown(v)),
            ]
        })
        .collect();
    out(&table(&["ID", "STATUS", "STEP", "PARTNER", "DIRECTION", "FILE", "TRANSFERRED / SIZE"], &rows))?;
    if let Some(more) = more {
        eprintln!("{more}");
    }
    Ok(())
}

/// A push requester keeps no restart point of its own (the receiver
/// does): for an interrupted one, the receiver's figure, asked through the
/// cluster-wide view, as one more detail line; nothing if it cannot be had.
async fn receivers_restart_point(client: &ApiClient, v: &TransferView) -> Option<(&'static str, String)> {
    if (v.role, v.direction, v.status) != (Role::Requester, Direction::Push, Status::Interrupted) {
        return None;
    }
    let view = client.cluster_view(&v.id).await.ok()?;
    let theirs = view.nodes.iter().find(|n| n.node == v.partner)?;
    Some(("restart point", format!("{} (held by {}; a restart resumes there)", bytes(theirs.transferred), v.partner)))
}

/// `push`/`pull` as the requester asked, with the way the file goes from this node's side.
fn direction_word(v: &TransferView) -> &'static str {
    match (v.role, v.direction) {
        (Role::Requester, Direction::Push) => "push (out)",
        (Role::Requester, Direction::Pull) => "pull (in)",
        (Role::Requested, Direction::Push) => "push (in)",
        (Role::Requested, Direction::Pull) => "pull (out)",
    }
}

fn parse_target_mode(s: &str) -> Result<ferry::store::TargetMode, String> {
    ferry::store::TargetMode::parse(s).ok_or_else(|| format!("{s:?} is not one of create, replace, append, backup"))
}

fn compression_word(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
    }
}

/// One transfer, one field a line.
/// `extra` lines go before the times.
pub fn detail<'a>(v: &'a TransferView, extra: Vec<(&'a str, String)>) -> String {
    let mut f: Vec<(&str, String)> = vec![
        ("id", v.id.clone()),
        ("node", format!("{} ({:?})", v.node, v.role)),
        ("partner", v.partner.clone()),
        ("rule", v.rule.clone()),
        ("direction", direction_word(v).to_owned()),
        (
            "file",
            match &v.original_file {
                Some(o) => format!("{} (submitted as {o}; a pre-task renamed it)", v.file),
                None => v.file.clone(),
            },
        ),
        (
            "status",
            match &v.task {
                Some(t) if v.status == Status::InError => format!("{:?} (step {:?}, at {t})", v.status, v.step),
                Some(t) => format!("{:?} (step {:?}, running {t})", v.status, v.step),
                None => format!("{:?} (step {:?})", v.status, v.step),
            },
        ),
        (
            "progress",
            format!(
                "{} / {}{}",
                bytes(v.transferred),
                size_or_unknown(v),
                v.progress().map(|p| format!(" ({:.1}%)", p * 100.0)).unwrap_or_default()
            ),
        ),
    ];
    if let Some(set) = &v.set {
        f[5] = ("pattern", set.pattern.clone());
        f.push((
            "files",
            format!(
                "{} in all: {} done, {} failed, {} skipped, {} left (each: ferry status ID --files)",
                set.files, set.done, set.failed, set.skipped, set.left
            ),
        ));
        f.push((
            "policies",
            format!(
                "on_empty = {}, on_failure = {}, delivery = {}",
                format!("{:?}", set.on_empty).to_lowercase(),
                format!("{:?}", set.on_failure).to_lowercase(),
                format!("{:?}", set.delivery).to_lowercase()
            ),
        ));
        if v.status == Status::Running && v.step == Step::Held {
            f.push((
                "release",
                "every file verified; the receiver is asked to put them in place and run its set tasks".into(),
            ));
        }
    }
    if let Some(m) = &v.member_of {
        f.push(("file set", format!("{} (file {} of the set)", m.set, m.index + 1)));
    }
    if v.restart_offset > 0 {
        f.push(("restarted at", bytes(v.restart_offset)));
    }
    if let Some(o) = v.restart_offset_durable {
        f.push(("restart point", format!("{} (durable)", bytes(o))));
    }
    if v.delivered && v.status != Status::Done {
        f.push(("delivered", "yes (verified and in place; the partner has not confirmed yet)".to_owned()));
    }
    if v.attempts > 0 {
        f.push(("attempts", v.attempts.to_string()));
    }
    if let Some(t) = v.retry_at {
        f.push(("next retry", iso_time(t)));
    }
    if let Some(w) = &v.waiting {
        f.push(("waiting", w.clone()));
    }
    if let Some(m) = v.target_mode {
        f.push(("target mode", format!("{m:?}").to_lowercase()));
    }
    if let Some(from) = &v.chained_from {
        f.push(("sent on from", from.clone()));
    }
    if !v.chained_to.is_empty() {
        f.push(("sent on as", v.chained_to.join(", ")));
    }
    if v.reschedules > 0 {
        f.push(("rescheduled", format!("{} times", v.reschedules)));
    }
    f.extend(extra);
    f.push((
        "block size",
        format!("{}, compression {}", bytes(u64::from(v.block_size)), compression_word(v.compression)),
    ));
    if let Some(h) = &v.hash {
        f.push(("blake3", h.clone()));
    }
    if let Some(j) = &v.external_job_id {
        f.push(("job id", j.clone()));
    }
    if !v.transfer_info.is_empty() {
        f.push(("info", v.transfer_info.clone()));
    }
    f.push(("created", iso_time(v.created_at)));
    if let Some(t) = v.started_at {
        f.push(("started", iso_time(t)));
    }
    if let Some(t) = v.finished_at {
        let took = v.started_at.map(|s| format!(" ({:.2} s)", t.saturating_sub(s) as f64 / 1000.0));
        f.push(("finished", format!("{}{}", iso_time(t), took.unwrap_or_default())));
    }
    f.push(("updated", iso_time(v.updated_at)));
    if let Some(e) = &v.error {
        f.push(("error", format!("{}: {}", e.code, e.message)));
    }
    let width = f.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    f.iter().map(|(k, val)| format!("{:<width$} {val}\n", format!("{k}:"))).collect()
}

/// `log`: the job log, one line per entry.
pub async fn log(args: LogArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let lines = client.log(&args.id).await?;
    if args.json {
        return out_json(&lines);
    }
    let text: String = lines
        .iter()
        .map(|l| {
            format!(
                "{}  {:<11} {:<9} {}\n",
                iso_time(l.at),
                format!("{:?}", l.status),
                format!("{:?}", l.step),
                l.message
            )
        })
        .collect();
    out(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::api::ErrorView;
    use ferry::store::Step;

    fn view() -> TransferView {
        TransferView {
            id: "0123456789abcdef0123456789abcdef".into(),
            role: Role::Requester,
            partner: "b".into(),
            rule: "default".into(),
            direction: Direction::Push,
            file: "big.bin".into(),
            block_size: 1 << 20,
            compression: Compression::None,
            size: 100_000_000,
            transferred: 100_000_000,
            restart_offset: 0,
            status: Status::Done,
            step: Step::AllDone,
            hash: Some("ab".repeat(32)),
            external_job_id: None,
            transfer_info: String::new(),
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_002_000,
            started_at: Some(1_700_000_000_000),
            finished_at: Some(1_700_000_002_000),
            error: None,
            node: "a".into(),
            group: None,
            submitted_on: None,
            restart_offset_durable: None,
            delivered: false,
            attempts: 1,
            retry_at: None,
            waiting: None,
            task: None,
            original_file: None,
            target_mode: None,
            chained_from: None,
            chained_to: Vec::new(),
            reschedules: 0,
            set: None,
            member_of: None,
        }
    }

    #[test]
    fn block_sizes_take_suffixes() {
        assert_eq!(parse_block_size("65536"), Ok(65536));
        assert_eq!(parse_block_size("64K"), Ok(65536));
        assert_eq!(parse_block_size("64kib"), Ok(65536));
        assert_eq!(parse_block_size("4M"), Ok(4 << 20));
        assert!(parse_block_size("4G").is_err());
        assert!(parse_block_size("").is_err());
        assert!(parse_block_size("-1").is_err());
        assert!(parse_block_size("8192M").is_err(), "overflows u32");
    }

    #[test]
    fn summaries_give_rate_and_hash_or_the_failure() {
        let v = view();
        let s = summary(&v, None);
        assert!(s.contains("Done") && s.contains("50.0 MB/s") && s.contains(&"ab".repeat(32)), "{s}");
        assert!(!s.contains("since it first started"), "one run: {s}");
        // Resumed: the last run's time and rate, the whole time apart.
        let mut r = view();
        r.restart_offset = 50_000_000;
        r.finished_at = Some(1_700_000_007_740);
        let s = summary(&r, Some(1_700_000_004_640));
        assert!(s.contains("in 3.10 s, 16.1 MB/s") && s.contains("resumed at"), "{s}");
        assert!(s.contains("7.74 s since it first started"), "{s}");
        // Tiny: no rate.
        let mut t = view();
        t.size = 2;
        t.finished_at = Some(1_700_000_000_001);
        let s = summary(&t, None);
        assert!(s.contains("in 0.00 s,") && !s.contains("MB/s"), "{s}");
        let mut f = view();
        f.status = Status::InError;
        f.step = Step::Transfer;
        f.transferred = 1 << 20;
        f.error = Some(ErrorView { code: "Connection".into(), message: "lost".into() });
        let s = summary(&f, None);
        assert!(s.contains("InError at step Transfer") && s.contains("1.0 MiB"), "{s}");
        let d = detail(&f, Vec::new());
        assert!(d.contains("error:") && d.contains("Connection: lost"), "{d}");
        assert!(d.contains("created:") && d.contains("2023-11-14T22:13:20.000Z"), "{d}");
    }

    #[test]
    fn details_show_attempts_restart_point_and_next_retry_when_set() {
        let mut v = view();
        v.status = Status::Interrupted;
        v.step = Step::Transfer;
        v.attempts = 3;
        v.restart_offset_durable = Some(32 << 20);
        v.retry_at = Some(1_700_000_005_000);
        v.error = Some(ErrorView { code: "Connection".into(), message: "lost".into() });
        let d = detail(&v, Vec::new());
        assert!(d.contains("attempts:") && d.contains(" 3\n"), "{d}");
        assert!(d.contains("restart point:") && d.contains("32.0 MiB (durable)"), "{d}");
        assert!(d.contains("next retry:") && d.contains("2023-11-14T22:13:25.000Z"), "{d}");
        assert!(!d.contains("delivered:"), "{d}");

        let mut v = view();
        v.attempts = 0;
        let d = detail(&v, Vec::new());
        for absent in ["attempts:", "restart point:", "next retry:", "delivered:"] {
            assert!(!d.contains(absent), "{absent} shown though unset: {d}");
        }
        v.status = Status::Interrupted;
        v.delivered = true;
        assert!(detail(&v, Vec::new()).contains("delivered:"), "{}", detail(&v, Vec::new()));
    }

    #[test]
    fn the_api_address_falls_back_to_the_default() {
        let a = ApiArg { api: Some("http://10.0.0.1:9000".into()), token_file: None, ca: None };
        assert_eq!(a.resolve(), "http://10.0.0.1:9000");
    }
}
