//! The retention settings carried out, at start and then every
//! `sweep_interval_secs`:
//! - requests that ended long ago are removed from the store with their
//!   job logs (`[retention] keep_days`; off by default). What is removed,
//!   and what never is, is [`Store::prune`]'s to decide; this task runs it
//!   a bounded batch at a time off the async threads, flushes after each
//!   batch, and writes one audit event per sweep that removed anything
//!   (the audit log itself is never pruned);
//! - pushes a partner left `Interrupted` here with nothing delivered, and
//!   did not resume within `partial_keep_hours` (a week by default,
//!   counted while this node is up; stopped ones and any a run serves now
//!   are kept), are cancelled and their partial files removed
//!   ([`abandon_partials`]): without it a partner that starts transfers
//!   and walks away fills the disk with partial files nobody resumes. Each is recorded `Cancelled`,
//!   then its work file is removed; the records are flushed after the
//!   sweep. A crash before that flush leaves such a request `Interrupted`
//!   without its partial file: resumed, it starts over from offset 0 (a
//!   restart point counts only while the work file holds it);
//! - under the same setting, the files a partner's `delivery = all` sets
//!   hold here and it never releases ([`abandon_unreleased`]): a verified
//!   file kept under its work name waits for its set's `Release`, which a
//!   partner that walks away (or whose set ended in error and is never
//!   restarted) never sends; without this they fill the disk for ever. A
//!   set streamed here whose release was not ordered, none of whose
//!   records changed that long, and that no stream or `Release` works on
//!   now, is recorded `Cancelled`, then each file it holds (not served by
//!   a run now) is recorded `Cancelled`; the records are flushed, and only
//!   then are the work files removed, so a crash never leaves a file
//!   recorded held whose bytes are gone (a crash between the flush and the
//!   removals leaves those work files behind). Files already delivered
//!   stay. A later stream or `Release` of the set is refused, naming why.
//!   (A sender whose stream of such a set is refused `Cancelled` fails
//!   the set's files instead of sending them one request each, cancels
//!   those it is sending alone and tells this node to discard those it
//!   sent alone before; it knows it until it restarts: a large file of
//!   the set that runs first after that is still sent alone, and held.)
//!   Not swept: a set none of whose files came on a stream (it has no
//!   record here before its release, and a file that came one request
//!   alone does not say which set it belongs to); the sender's cancel of
//!   the set removes its held files.
//! - under the same setting, work files no request record names
//!   ([`remove_orphan_work_files`]): a set stream writes each file under
//!   its work name before the batch's commit records it, and a
//!   one-request push's record may not be flushed yet when its work file
//!   is made, so a crash there leaves a work file this node has no record
//!   of. The partner's next attempt writes over it; a partner that cancels
//!   instead (its notice names a request this node never recorded) or
//!   never comes back left it for good. Only `ID.part` files in the work
//!   folders of the rules' receive folders are looked at, each unchanged
//!   that long while the node was up, and removed only if no record and
//!   no run names it (checked under the serving table's lock).

use std::time::Duration;

use tokio::sync::watch;

use super::sets_in_use::SetsInUse;
use super::AUDIT;
use crate::config::{NodeConfig, RetentionSettings};
use crate::lifecycle;
use crate::protocol::{Direction, ErrorCode, RequestId};
use crate::store::{member_id, now_ms, Pruned, RequestRecord, Role, Status, Step, Store, StoreError};

/// Requests removed per batch (a set counts with its files), so a first
/// sweep over years of history does not hold the store for long at once.
pub const BATCH: usize = 10_000;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const HOUR_MS: u64 = 60 * 60 * 1000;

/// Started once per node; ends at once when retention is off, else when
/// the node shuts down.
pub fn start(
    store: &Store,
    config: std::sync::Arc<NodeConfig>,
    serving: Serving,
    sets: std::sync::Arc<SetsInUse>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    let settings: RetentionSettings = config.retention.clone();
    // Time this node was down does not count: a partner cannot resume then.
    let up_since = now_ms();
    let watched = Watched { serving, sets };
    tokio::spawn(async move {
        if settings.keep_days == 0 && settings.partial_keep_hours == 0 {
            return;
        }
        let every = Duration::from_secs(settings.sweep_interval_secs);
        loop {
            if settings.partial_keep_hours > 0 {
                let cutoff = now_ms().saturating_sub(u64::from(settings.partial_keep_hours) * HOUR_MS);
                abandon_unfinished(&store, &config, &watched, cutoff, up_since).await;
            }
            if settings.keep_days == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(every) => continue,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
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

/// What a partner's runs work on now, which the sweeps pass over.
struct Watched {
    serving: Serving,
    sets: std::sync::Arc<SetsInUse>,
}

/// One sweep of what partners left unfinished here, unchanged since
/// before `cutoff`: pushes left `Interrupted` ([`abandon_partials`]), then
/// `delivery = all` sets never released ([`abandon_unreleased`]), then work
/// files no request names ([`remove_orphan_work_files`]); each
/// audited when it removed anything.
async fn abandon_unfinished(
    store: &Store,
    config: &std::sync::Arc<NodeConfig>,
    watched: &Watched,
    cutoff: u64,
    up_since: u64,
) {
    let hours = config.retention.partial_keep_hours;
    let (s, c, v) = (store.clone(), config.clone(), watched.serving.clone());
    match crate::determinism::blocking(move || abandon_partials(&s, &c, &v, cutoff, up_since)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => match store.flush().await {
            Ok(()) => tracing::info!(
                target: AUDIT,
                event = "partials_abandoned",
                requests = n,
                partial_keep_hours = hours,
                "cancelled pushes a partner left unfinished and did not resume, and removed their partial files"
            ),
            Err(e) => tracing::error!(error = %e, "cannot flush the cancelled unfinished pushes"),
        },
        Ok(Err(e)) => tracing::error!(error = %e, "cannot look for unfinished pushes; trying again at the next sweep"),
        Err(e) => tracing::error!(error = %e, "the look for unfinished pushes stopped"),
    }
    let (s, c, v, w) = (store.clone(), config.clone(), watched.serving.clone(), watched.sets.clone());
    match crate::determinism::blocking(move || abandon_unreleased(&s, &c, &v, &w, cutoff, up_since)).await {
        Ok(Ok(u)) if u == Unreleased::default() => {}
        // Flushed before the files were removed.
        Ok(Ok(u)) => tracing::info!(
            target: AUDIT,
            event = "held_files_abandoned",
            sets = u.sets,
            files = u.files,
            partial_keep_hours = hours,
            "cancelled file sets a partner never released, and removed the files they held"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "cannot look for unreleased sets; trying again at the next sweep"),
        Err(e) => tracing::error!(error = %e, "the look for unreleased sets stopped"),
    }
    let (s, c, v) = (store.clone(), config.clone(), watched.serving.clone());
    match crate::determinism::blocking(move || remove_orphan_work_files(&s, &c, &v, cutoff, up_since)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(
            target: AUDIT,
            event = "orphan_work_files_removed",
            files = n,
            partial_keep_hours = hours,
            "removed work files that no request names (left by a crash before they were recorded)"
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot look for work files without a request; trying again at the next sweep")
        }
        Err(e) => tracing::error!(error = %e, "the look for work files without a request stopped"),
    }
}

/// Removes the work files (`ID.part` in the work folder of each rule's
/// receive folder) that no request record names, unchanged since before
/// `cutoff` (unix ms) while this node was up (since `up_since`); returns
/// how many. Each is removed under the serving table's lock, only if no
/// run serves its id and the store still has no record of it (a run
/// claims its id before it writes the file). Anything else in a work
/// folder is left alone. A work folder that cannot be read is logged and
/// passed over.
pub fn remove_orphan_work_files(
    store: &Store,
    config: &NodeConfig,
    serving: &Serving,
    cutoff: u64,
    up_since: u64,
) -> Result<usize, StoreError> {
    if up_since >= cutoff {
        return Ok(0); // not up that long: nothing can be that old here
    }
    let mut folders = std::collections::BTreeSet::new();
    for rule in &config.rules {
        folders.insert(rule.recv_dir.clone());
        for p in &config.partners {
            folders.insert(rule.recv_dir_for(&p.id));
        }
    }
    let mut removed = 0;
    for folder in folders {
        let work_dir = folder.join(crate::transfer::receive::WORK_DIR);
        let entries = match std::fs::read_dir(&work_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(folder = %work_dir.display(), error = %e, "cannot read a work folder");
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".part")).and_then(RequestId::parse) else {
                continue;
            };
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let changed_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(u64::MAX, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if !meta.is_file() || changed_ms.max(up_since) >= cutoff || store.get(&id)?.is_some() {
                continue;
            }
            let path = entry.path();
            let remove = || -> Result<bool, StoreError> {
                if store.get(&id)?.is_some() {
                    return Ok(false);
                }
                Ok(std::fs::remove_file(&path).is_ok())
            };
            if super::channel_run::unless_served(serving, &id, remove).transpose()?.unwrap_or(false) {
                tracing::info!(file = %path.display(), "removed a work file no request names");
                removed += 1;
            }
        }
    }
    Ok(removed)
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

/// The requested-side runs serving each request now (`RunParts::serving`).
pub type Serving = std::sync::Arc<
    std::sync::Mutex<std::collections::BTreeMap<crate::protocol::RequestId, super::channel_run::ServingRun>>,
>;

/// Cancels the pushes a partner left `Interrupted` here with nothing
/// delivered or held, unchanged since before `cutoff` (unix ms) while this
/// node was up (since `up_since`), and removes their partial files;
/// returns how many. Kept: a push an operator stopped (paused), a file
/// set's own record, and any a run serves now (a resume reading its
/// prefix: checked under the serving table's lock, so none claims it in
/// between). Each record is written `Cancelled` only if it did not change
/// since it was read, then its work file goes. The caller flushes.
pub fn abandon_partials(
    store: &Store,
    config: &NodeConfig,
    serving: &Serving,
    cutoff: u64,
    up_since: u64,
) -> Result<usize, StoreError> {
    let mut abandoned = 0;
    // Through the status index: the cost is the Interrupted records, not
    // every record stored (a file set's members have no index entries, and
    // none of them is an unfinished push: a streamed file is written whole).
    store.for_each_with_status(&[Status::Interrupted], |rec| {
        let unfinished_push = rec.role == Role::Requested && rec.direction == Direction::Push && rec.set.is_none();
        let kept = rec.delivered || crate::lifecycle::is_held(&rec) || crate::lifecycle::is_stopped(&rec);
        if !unfinished_push || kept || rec.updated_at.max(up_since) >= cutoff {
            return Ok(());
        }
        let Some(rule) = config.rule(&rec.rule) else { return Ok(()) };
        let work = crate::transfer::receive::work_path(&rule.recv_dir_for(&rec.partner), &rec.id);
        let hours = config.retention.partial_keep_hours;
        let message = format!(
            "not resumed by {} within {hours} hours (retention.partial_keep_hours); its partial file was removed",
            rec.partner
        );
        let seen = rec.updated_at;
        let cancel = || -> Result<bool, StoreError> {
            let cancelled = store.update_if(
                &rec.id,
                &message,
                |r| r.status == Status::Interrupted && r.updated_at == seen && !r.delivered,
                |r| {
                    crate::lifecycle::fail(r, ErrorCode::Cancelled, &message, 0, now_ms());
                },
            )?;
            if cancelled.is_some() {
                crate::transfer::receive::discard(&work);
            }
            Ok(cancelled.is_some())
        };
        if super::channel_run::unless_served(serving, &rec.id, cancel).transpose()?.unwrap_or(false) {
            abandoned += 1;
        }
        Ok(())
    })?;
    Ok(abandoned)
}

/// What one [`abandon_unreleased`] call cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unreleased {
    /// Sets streamed here with `delivery = all`, never released.
    pub sets: usize,
    /// Their held files, removed.
    pub files: usize,
}

/// Cancels the sets a partner streamed here with `delivery = all` and
/// never released, and removes the files they held (see the module doc):
/// a set whose release was not ordered (still streamed here, or ended in
/// error by its sender), none of whose records (its own, its files')
/// changed since before `cutoff` (unix ms) while this node was up (since
/// `up_since`), and that no set stream or `Release` works on now (checked
/// under `sets`' lock, which those take before they read the set's record).
/// Each is recorded `Cancelled` only if it did not change since it was
/// read; then each file it holds, not served now, likewise. The
/// cancellations are flushed before any held file is removed: a crash
/// never leaves a file recorded held whose bytes are gone.
pub fn abandon_unreleased(
    store: &Store,
    config: &NodeConfig,
    serving: &Serving,
    sets: &SetsInUse,
    cutoff: u64,
    up_since: u64,
) -> Result<Unreleased, StoreError> {
    let hours = config.retention.partial_keep_hours;
    let old = |at: u64| at.max(up_since) < cutoff;
    let mut done = Unreleased::default();
    let mut removed = Vec::new();
    // The sets still streamed here, through the status index (a set's own
    // record has entries, its members none: they are walked through the
    // set); those their sender ended in error, through their own small
    // list (not every `InError` record kept).
    let mut waiting = Vec::new();
    store.for_each_with_status(&[Status::Running, Status::Interrupted], |rec| {
        if awaits_its_release_here(&rec) {
            waiting.push(rec);
        }
        Ok(())
    })?;
    for id in store.ended_sets()? {
        match store.get(&id)? {
            Some(rec) if lifecycle::set::is_ended_by_sender(&rec) && awaits_its_release_here(&rec) => waiting.push(rec),
            // One streamed here again is kept (its sender may end it
            // again, and noting it again must not race this forgetting);
            // it is walked through the status index meanwhile.
            Some(rec) if lifecycle::set::is_streamed_here(&rec) => {}
            // Gone, released, or ended for good.
            _ => store.forget_ended_set(&id)?,
        }
    }
    'sets: for rec in waiting {
        if !old(rec.updated_at) || sets.unless_in_use(&rec.id, || ()).is_none() {
            continue;
        }
        let files = rec.set.as_ref().map_or(0, |i| i.files);
        // A file of the set arriving one request alone changes its own
        // record, not the set's.
        for index in 0..files {
            if store.get(&member_id(&rec.id, index))?.is_some_and(|m| !old(m.updated_at)) {
                continue 'sets;
            }
        }
        let message = format!(
            "neither released nor sent on by {} within {hours} hours (retention.partial_keep_hours); the files it \
             held here were removed",
            rec.partner
        );
        let seen = rec.updated_at;
        let cancel = || {
            store.update_if(
                &rec.id,
                &message,
                |r| awaits_its_release_here(r) && r.updated_at == seen,
                |r| {
                    lifecycle::fail(r, ErrorCode::Cancelled, &message, 0, now_ms());
                },
            )
        };
        if sets.unless_in_use(&rec.id, cancel).transpose()?.flatten().is_none() {
            continue;
        }
        done.sets += 1;
        let why = format!(
            "its set was not released by {} within {hours} hours (retention.partial_keep_hours); its held file \
             was removed",
            rec.partner
        );
        for index in 0..files {
            let Some(member) = store.get(&member_id(&rec.id, index))? else { continue };
            if let Some(work) = cancel_held(store, config, serving, &member, &why)? {
                removed.push(work);
            }
        }
    }
    done.files = removed.len();
    if done.sets > 0 {
        store.flush_blocking()?;
    }
    for work in &removed {
        crate::transfer::receive::discard(work);
    }
    Ok(done)
}

/// Whether `set` is this node's record of a set a partner sends with
/// `delivery = all` that waits for its release: streamed here, its
/// release not ordered, or ended in error by its sender.
fn awaits_its_release_here(set: &RequestRecord) -> bool {
    lifecycle::set::holds_files(set)
        && ((lifecycle::set::is_streamed_here(set) && set.step == Step::Transfer)
            || lifecycle::set::is_ended_by_sender(set))
}

/// Records `rec` `Cancelled` if it is still a file held here for its set's
/// release (cancelled), unchanged since it was read and not served now;
/// its work file then, for the caller to remove once that is flushed.
fn cancel_held(
    store: &Store,
    config: &NodeConfig,
    serving: &Serving,
    rec: &RequestRecord,
    message: &str,
) -> Result<Option<std::path::PathBuf>, StoreError> {
    // (Not its age: the set is cancelled, so even a file that arrived a
    // moment ago can never be released.)
    if !lifecycle::is_held(rec) || rec.delivered {
        return Ok(None);
    }
    let Some(rule) = config.rule(&rec.rule) else { return Ok(None) };
    let work = crate::transfer::receive::work_path(&rule.recv_dir_for(&rec.partner), &rec.id);
    let seen = rec.updated_at;
    let cancel = || {
        store.update_if(
            &rec.id,
            message,
            |r| lifecycle::is_held(r) && !r.delivered && r.updated_at == seen,
            |r| {
                lifecycle::fail(r, ErrorCode::Cancelled, message, 0, now_ms());
            },
        )
    };
    let cancelled = super::channel_run::unless_served(serving, &rec.id, cancel).transpose()?.flatten();
    Ok(cancelled.map(|_| work))
}
