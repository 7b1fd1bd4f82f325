//! The retention setting carried out: requests that ended long ago are
//! removed from the store with their job logs (`[retention] keep_days`;
//! off by default). What is removed, and what never is, is
//! [`Store::prune`]'s to decide; this task only runs it at start and then
//! every `sweep_interval_secs`, a bounded batch at a time off the async
//! threads, flushes after each batch, and writes one audit event per sweep
//! that removed anything (the audit log itself is never pruned).

use std::time::Duration;

use tokio::sync::watch;

use super::AUDIT;
use crate::config::RetentionSettings;
use crate::store::{now_ms, Pruned, Store, StoreError};

/// Requests removed per batch (a set counts with its files), so a first
/// sweep over years of history does not hold the store for long at once.
pub const BATCH: usize = 10_000;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Started once per node; ends at once when retention is off, else when
/// the node shuts down.
pub fn start(
    store: &Store,
    settings: RetentionSettings,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move {
        if settings.keep_days == 0 {
            return;
        }
        let every = Duration::from_secs(settings.sweep_interval_secs);
        loop {
            let cutoff = now_ms().saturating_sub(u64::from(settings.keep_days) * DAY_MS);
            match sweep(&store, cutoff, &mut shutdown).await {
                Ok(p) if p.requests > 0 => tracing::info!(
                    target: AUDIT,
                    event = "pruned",
                    requests = p.requests,
                    log_lines = p.log_lines,
                    keep_days = settings.keep_days,
                    "removed requests that ended more than keep_days ago, with their job logs"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot prune old requests; trying again at the next sweep"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    })
}

/// Prunes everything older than `cutoff`, batch by batch, until nothing
/// is left or the node shuts down.
pub async fn sweep(store: &Store, cutoff: u64, shutdown: &mut watch::Receiver<bool>) -> Result<Pruned, StoreError> {
    let mut total = Pruned::default();
    loop {
        let s = store.clone();
        let batch = crate::determinism::blocking(move || s.prune(cutoff, BATCH))
            .await
            .map_err(|e| StoreError::Flush(format!("the pruning stopped: {e}")))??;
        store.flush().await?;
        total.requests += batch.requests;
        total.log_lines += batch.log_lines;
        if !batch.more || *shutdown.borrow() {
            total.more = batch.more;
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
