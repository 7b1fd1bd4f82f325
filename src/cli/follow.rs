//! `send/get/restart --wait`: follows one transfer through the node's event
//! stream (`GET /api/v1/events?transfer=ID`) until it ends or an operator
//! stops it, drawing its progress on stderr: an indicatif bar with rate and
//! ETA on a terminal, one plain line per status or step change otherwise.
//!
//! Nothing is missed between the submission and the stream: the stream is
//! opened first, then the transfer's state is read once. A lost stream is
//! opened again (bounded), resuming after the last event seen; if the node
//! no longer keeps what followed (or restarted), the state is read again.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use ferry::api::{ApiClient, ClientError, EventQuery, EventStream, StreamItem, TransferView};
use ferry::store::Status;
use indicatif::{ProgressBar, ProgressStyle};

use super::display::{bytes, out};
use super::transfer::{last_run_at, size_or_unknown, summary};

/// Times a lost event stream is opened again before `--wait` gives up.
const RECONNECTS: u32 = 20;
/// Pause between two attempts to open it.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Whether `--wait` is over for this view.
fn settled(v: &TransferView) -> bool {
    v.is_final() || v.is_stopped()
}

/// `--wait`: shows progress until the transfer is final or an operator
/// stopped it, prints the summary, and fails unless it ended `Done`.
pub async fn follow(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let followed = watch(client, id, &mut progress);
    let end = tokio::select! {
        end = followed => end,
        _ = tokio::signal::ctrl_c() => {
            progress.finish();
            anyhow::bail!(
                "stopped following transfer {id}; the transfer goes on. See it with `ferry status {id}`, \
                 pause it with `ferry stop {id}`, cancel it with `ferry cancel {id}`"
            );
        }
    };
    progress.finish();
    let end = end.with_context(|| format!("lost track of transfer {id}"))?;
    let run_at = if end.status == Status::Done { last_run_at(client, id).await } else { None };
    out(&format!("{}\n", summary(&end, run_at)))?;
    if end.is_stopped() {
        anyhow::bail!("transfer {} was stopped by an operator; `ferry restart {}` resumes it", end.id, end.id)
    }
    match end.status {
        Status::Done => Ok(()),
        status => {
            let (code, message) = match &end.error {
                Some(e) => (e.code.as_str(), e.message.as_str()),
                None => ("-", "no reason recorded"),
            };
            anyhow::bail!("transfer {} ended {status:?} at step {:?}: {code}: {message}", end.id, end.step)
        }
    }
}

/// Follows the events of transfer `id` until it settles; answers its last view.
async fn watch(client: &ApiClient, id: &str, progress: &mut Progress) -> Result<TransferView, ClientError> {
    let mut query = EventQuery { transfer: Some(id.to_owned()), ..EventQuery::default() };
    let mut stream = client.events(&query).await?;
    let mut view = client.get(id).await?;
    progress.show(&view, None);
    let mut lost = 0;
    while !settled(&view) {
        match stream.next().await {
            Some(Ok(StreamItem::Transfer(event))) => {
                query.after = Some(event.position.clone());
                view = event.transfer;
                if view.status == Status::ToSubmit {
                    // Why it waits is the node's view, not the record's.
                    view = client.get(id).await?;
                }
                progress.show(&view, event.rate);
            }
            Some(Ok(StreamItem::Gap(_))) => {
                view = client.get(id).await?;
                progress.show(&view, None);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) if lost >= RECONNECTS => return Err(e),
            None if lost >= RECONNECTS => {
                return Err(ClientError::Transport {
                    base: client.base().to_owned(),
                    reason: "the node ended the event stream".into(),
                })
            }
            Some(Err(_)) | None => {
                lost += 1;
                tokio::time::sleep(RECONNECT_PAUSE).await;
                stream = reopen(client, &query, &mut lost).await?;
                if query.after.is_none() {
                    view = client.get(id).await?;
                }
            }
        }
    }
    // The node's full view of the end (what is waited on, the current task).
    client.get(id).await
}

/// Opens the stream again, trying until `lost` reaches [`RECONNECTS`].
async fn reopen(client: &ApiClient, query: &EventQuery, lost: &mut u32) -> Result<EventStream, ClientError> {
    loop {
        match client.events(query).await {
            Ok(stream) => return Ok(stream),
            Err(e) if *lost >= RECONNECTS => return Err(e),
            Err(_) => {
                *lost += 1;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// The `--wait` display on stderr.
struct Progress {
    bar: Option<ProgressBar>,
    last_state: Option<String>,
    last_waiting: Option<String>,
}

impl Progress {
    fn new(tty: bool) -> Progress {
        let bar = tty.then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg:20} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Progress { bar, last_state: None, last_waiting: None }
    }

    /// Shows `v`; `rate` is the node's bytes per second since the previous
    /// progress event (the bar measures its own).
    fn show(&mut self, v: &TransferView, rate: Option<f64>) {
        let state = format!("{:?}/{:?}", v.status, v.step);
        // A file set: its files too (plain lines still print on a change
        // of status only, not once per file).
        let shown = match &v.set {
            Some(set) => format!("{state}, {}", set_counts(set)),
            None => state.clone(),
        };
        match &self.bar {
            Some(bar) => {
                if v.size > 0 {
                    bar.set_length(v.size);
                }
                if v.transferred < bar.position() {
                    bar.reset_eta(); // resumed from an earlier restart point
                }
                bar.set_position(v.transferred);
                bar.set_message(shown);
            }
            None if self.last_state.as_deref() != Some(state.as_str()) => {
                let speed = rate.map(|r| format!(" ({})", super::display::rate(r as u64, 1.0))).unwrap_or_default();
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{}: {shown} {} / {}{speed}", v.id, bytes(v.transferred), size_or_unknown(v));
            }
            None => {}
        }
        if v.waiting != self.last_waiting {
            if let Some(w) = &v.waiting {
                let line = format!("waiting: {w}");
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            self.last_waiting = v.waiting.clone();
        }
        self.last_state = Some(state);
    }

    /// Clears the bar so what follows starts on a fresh line.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A file set's counts: `120/1000 files, 2 failed`.
pub(super) fn set_counts(set: &ferry::model::SetView) -> String {
    let mut line = format!("{}/{} files", set.done, set.files);
    if set.failed > 0 {
        line.push_str(&format!(", {} failed", set.failed));
    }
    if set.skipped > 0 {
        line.push_str(&format!(", {} skipped", set.skipped));
    }
    line
}
