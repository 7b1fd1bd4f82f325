//! The operator commands: `stop`, `cancel` and `restart`, through the REST
//! API of the node that drives the request (its requester).
//!
//! Each prints the state the request is in afterwards. A refusal (unknown
//! id, a request the partner drives, a state the command does not accept)
//! ends with exit code 1 and the node's code and message.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ferry::api::{ApiClient, ClientError, TransferView};
use ferry::store::Status;

use super::display::{bytes, iso_time, out};
use super::transfer::ApiArg;

/// How long `stop` and `cancel` of a running request wait for its runner to
/// record the outcome before printing what the node says.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// How often they poll meanwhile.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// Arguments of `stop` and `cancel`.
#[derive(Args, Debug, Clone)]
pub struct CommandArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The transfer's id (send the command to the node that requested it).
    pub id: String,
}

/// Arguments of `restart`.
#[derive(Args, Debug, Clone)]
pub struct RestartArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The transfer's id (send the command to the node that requested it).
    pub id: String,
    /// Follow the transfer until it ends; exit 1 unless it ends Done.
    #[arg(long)]
    pub wait: bool,
}

/// `stop`: pauses a request; it keeps its partial file and restart point.
pub async fn stop(args: CommandArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let v = client.stop(&args.id).await.map_err(|e| refused(e, "stop", &args.id))?;
    let v = settle(&client, v).await?;
    out(&format!("{}\n", outcome(&v)))
}

/// `cancel`: cancels a request on both nodes; its partial file is removed.
pub async fn cancel(args: CommandArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let v = client.cancel(&args.id).await.map_err(|e| refused(e, "cancel", &args.id))?;
    let v = settle(&client, v).await?;
    out(&format!("{}\n", outcome(&v)))
}

/// `restart`: queues an `InError` or `Interrupted` request again.
pub async fn restart(args: RestartArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let v = client.restart(&args.id).await.map_err(|e| refused(e, "restart", &args.id))?;
    out(&format!("{}\n", outcome(&v)))?;
    if args.wait {
        return super::follow::follow(&client, &v.id).await;
    }
    Ok(())
}

/// A refusal by the node reads `CODE: MESSAGE` (e.g. `not_requester: request
/// ... is driven by node b; send the command there`); any other failure says
/// what could not be done and why.
fn refused(e: ClientError, what: &str, id: &str) -> anyhow::Error {
    match e {
        ClientError::Api { code, message, .. } => anyhow::anyhow!("{code}: {message}"),
        other => anyhow::Error::new(other).context(format!("cannot {what} transfer {id}")),
    }
}

/// A stop or cancel of a `Running` request only asks its runner: polls
/// (bounded) until the request leaves `Running`, and returns the last view.
async fn settle(client: &ApiClient, v: TransferView) -> anyhow::Result<TransferView> {
    if v.status != Status::Running {
        return Ok(v);
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = v;
    while last.status == Status::Running && Instant::now() < deadline {
        tokio::time::sleep(SETTLE_POLL).await;
        last = client.get(&last.id).await.with_context(|| format!("lost track of transfer {}", last.id))?;
    }
    Ok(last)
}

/// One line on where a request stands after an operator command.
pub fn outcome(v: &TransferView) -> String {
    let mut s = format!("{} {:?}", v.id, v.status);
    let cause = v.error.as_ref().map(|e| format!("{}: {}", e.code, e.message));
    match v.status {
        Status::Interrupted if v.is_stopped() => {
            s.push_str(&format!(" (stopped; `ferry restart {}` resumes it)", v.id));
        }
        Status::Running => s.push_str(" (the command was sent to its runner, which has not recorded it yet)"),
        Status::ToSubmit => s.push_str(" (queued)"),
        Status::Cancelled => {
            if let Some(e) = &v.error {
                s.push_str(&format!(" ({})", e.message));
            }
        }
        _ => {
            if let Some(c) = &cause {
                s.push_str(&format!(" ({c})"));
            }
        }
    }
    if !matches!(v.status, Status::Done | Status::Cancelled) {
        let size = if v.size == 0 { "?".to_owned() } else { bytes(v.size) };
        s.push_str(&format!(", {} of {size} transferred", bytes(v.transferred)));
        if let Some(o) = v.restart_offset_durable {
            s.push_str(&format!(", restart point at {}", bytes(o)));
        }
    }
    if let Some(t) = v.retry_at {
        s.push_str(&format!(", next retry at {}", iso_time(t)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::api::ErrorView;
    use ferry::protocol::{Compression, Direction};
    use ferry::store::{Role, Step};

    fn view(status: Status) -> TransferView {
        TransferView {
            id: "0123456789abcdef0123456789abcdef".into(),
            role: Role::Requester,
            partner: "b".into(),
            rule: "default".into(),
            direction: Direction::Pull,
            file: "big.bin".into(),
            block_size: 1 << 20,
            compression: Compression::None,
            size: 100 << 20,
            transferred: 40 << 20,
            restart_offset: 0,
            restart_offset_durable: Some(32 << 20),
            delivered: false,
            attempts: 2,
            retry_at: None,
            status,
            step: Step::Transfer,
            hash: None,
            external_job_id: None,
            transfer_info: String::new(),
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_002_000,
            started_at: Some(1_700_000_000_000),
            finished_at: None,
            error: None,
            node: "a".into(),
            group: None,
            submitted_on: None,
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
    fn refusals_read_code_then_message() {
        let e = ClientError::Api { status: 409, code: "not_requester".into(), message: "driven by node b".into() };
        assert_eq!(format!("{:#}", refused(e, "stop", "x")), "not_requester: driven by node b");
        let e = ClientError::BadId("xyz".into());
        let text = format!("{:#}", refused(e, "cancel", "xyz"));
        assert!(text.starts_with("cannot cancel transfer xyz: malformed request id"), "{text}");
    }

    #[test]
    fn a_stopped_request_says_how_to_resume_it() {
        let mut v = view(Status::Interrupted);
        v.error = Some(ErrorView { code: "Stopped".into(), message: "stopped by an operator".into() });
        let s = outcome(&v);
        assert!(s.starts_with(&format!("{} Interrupted (stopped;", v.id)), "{s}");
        assert!(s.contains(&format!("ferry restart {}", v.id)), "{s}");
        assert!(s.contains("40.0 MiB of 100.0 MiB") && s.contains("restart point at 32.0 MiB"), "{s}");
    }

    #[test]
    fn other_states_show_their_cause_and_next_retry() {
        let mut v = view(Status::Cancelled);
        v.error = Some(ErrorView { code: "Cancelled".into(), message: "cancelled by an operator on a".into() });
        let s = outcome(&v);
        assert_eq!(s, format!("{} Cancelled (cancelled by an operator on a)", v.id));

        let mut v = view(Status::Interrupted);
        v.error = Some(ErrorView { code: "Connection".into(), message: "lost".into() });
        v.retry_at = Some(1_700_000_005_000);
        let s = outcome(&v);
        assert!(s.contains("(Connection: lost)") && s.contains("next retry at 2023-11-14T22:13:25.000Z"), "{s}");

        let mut v = view(Status::ToSubmit);
        v.restart_offset_durable = None;
        v.size = 0;
        let s = outcome(&v);
        assert_eq!(s, format!("{} ToSubmit (queued), 40.0 MiB of ? transferred", v.id));

        let s = outcome(&view(Status::Running));
        assert!(s.contains("Running (the command was sent to its runner"), "{s}");
    }
}
