//! The set keeper: keeps each file set's record (its totals and status) in
//! step with its members, as `lifecycle::set` decides.
//!
//! The store tells it of every member record whose count changes (an
//! observer, so no writer has to remember the set); it applies the change
//! to the set's record in its own task, in the order the writes happened.
//! Under `on_failure = stop`, a failed file makes it skip the members still
//! queued. When a set ends it flushes the store, so a set shown `Done` is
//! durably so.
//!
//! A pushed set that ends in error owes its partner a notice
//! (`Store::owe_set_end_notice`, written before the set's end; the
//! Commander, woken, sends it), so the receiver's record of the set ends
//! too.
//!
//! Crash order: a member's end is written (and flushed by its runner)
//! before the keeper adds it to the set, so a crash in between leaves the
//! set's totals behind, never ahead. At start-up ([`SetKeeper::start`])
//! every set that has not ended is counted again from its members before
//! any runner starts.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::lifecycle;
use crate::lifecycle::set::{Counted, MemberChange};
use crate::protocol::ErrorCode;
use crate::store::{now_ms, RequestRecord, Role, Status, Store, StoreError};

/// Most failed files a set's error message names (the files listing has all).
const NAMED_FAILURES: usize = 5;

/// Most member changes applied in one write of their set.
const COALESCED: usize = 1024;

/// Started once per node, before the Commander.
pub struct SetKeeper;

/// Wakes the Commander (a notice is owed).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

impl SetKeeper {
    /// Counts every open set again from its members, then follows member
    /// changes until the store's last handle is dropped; `wake` once a set
    /// ended owing its partner a notice.
    pub fn start(store: &Store, wake: Wake) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        for set in open_sets(store)? {
            recount(store, &set)?;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<MemberChange>();
        store.observe(Arc::new(move |change| {
            // Only a requester's members count in a set this keeper keeps
            // (a receiver's streamed files are counted by their commits).
            if change.new.role != Role::Requester {
                return;
            }
            if let Some(c) = MemberChange::of(change.old, change.new) {
                let _ = tx.send(c);
            }
        }));
        let store = store.clone();
        Ok(tokio::spawn(async move {
            // The changes waiting are applied together, one write per set
            // and run of changes (a set stream ends hundreds of files at once).
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while waiting.len() < COALESCED {
                    match rx.try_recv() {
                        Ok(c) => waiting.push(c),
                        Err(_) => break,
                    }
                }
                for run in waiting.chunk_by(|x, y| x.set == y.set) {
                    match apply(&store, run).await {
                        Ok(true) => wake(),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(request_id = %run[0].set, error = %e, "cannot update the file set's totals")
                        }
                    }
                }
            }
        }))
    }
}

/// A set whose totals this keeper keeps: the requester's. A receiver's
/// record of a set (made by its set stream, or when it is released) is
/// counted by the stream's commits and made final by the release
/// (`lifecycle::set::streamed_done`, `received_whole`).
fn is_counted_set(r: &RequestRecord) -> bool {
    r.set.is_some() && r.role == Role::Requester
}

/// Every set that has not ended (`Done` or `Cancelled`), read through the
/// listing's status indexes, so start-up does not read every record.
fn open_sets(store: &Store) -> Result<Vec<RequestRecord>, StoreError> {
    let mut out = Vec::new();
    store.for_each_with_status(&[Status::Running, Status::Interrupted, Status::InError], |r| {
        if is_counted_set(&r) {
            out.push(r);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Adds one member's change to its set, ends or reopens the set as the
/// `lifecycle::set` decides, and skips the rest when the policy says so. The store
/// work that reads every member (skipping, naming the failed files) runs
/// off the async threads; an ended set is flushed and audited once, when
/// it ends. Whether it owed its partner a notice.
async fn apply(store: &Store, changes: &[MemberChange]) -> Result<bool, StoreError> {
    let Some(first) = changes.first() else { return Ok(false) };
    let mut owes = false;
    let now = now_ms();
    // A set these changes end in error names its first failed files in the
    // same write, so it is never seen `InError` without them.
    let names = match store.get(&first.set)? {
        Some(mut preview) if is_counted_set(&preview) => {
            for change in changes {
                lifecycle::set::apply(&mut preview, change);
            }
            if lifecycle::set::settle(&mut preview, now, &[]) == Some(Status::InError) {
                if super::set_release::tells_its_end(&preview) {
                    // Before the end is written: until it is (or if a crash
                    // comes in between), the Commander keeps the notice
                    // unsent (`set_release::set_end_to_tell`).
                    store.owe_set_end_notice(&preview.id, preview.finished_at.unwrap_or(now))?;
                    owes = true;
                }
                let store = store.clone();
                crate::determinism::blocking(move || failed_names(&store, &preview))
                    .await
                    .map_err(|e| StoreError::Flush(format!("the set keeper's work stopped: {e}")))??
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    };
    // What settle decided in the run of the closure that was written (a
    // lost compare-and-swap runs it again).
    let decided = std::cell::Cell::new(None);
    let Some(set) = store.update_if(&first.set, "", is_counted_set, |r| {
        for change in changes {
            lifecycle::set::apply(r, change);
        }
        decided.set(lifecycle::set::settle(r, now, &names));
    })?
    else {
        return Ok(false);
    };
    let ended = decided.get().filter(|s| s.is_final());
    let skip = changes.iter().any(|change| lifecycle::set::must_skip(&set, change));
    if skip {
        let (store, set) = (store.clone(), set.clone());
        crate::determinism::blocking(move || skip_queued(&store, &set))
            .await
            .map_err(|e| StoreError::Flush(format!("the set keeper's work stopped: {e}")))??;
    }
    if let Some(status) = ended {
        store.flush().await?;
        tracing::info!(target: super::AUDIT, event = "finished", request_id = %set.id, status = ?status, files = set.set.as_ref().map_or(0, |i| i.files));
    }
    Ok(owes && ended == Some(Status::InError))
}

fn members<'a>(store: &'a Store, set: &RequestRecord) -> impl Iterator<Item = Result<RequestRecord, StoreError>> + 'a {
    let (id, files) = (set.id.clone(), set.set.as_ref().map_or(0, |i| i.files));
    (0..files).map(move |i| store.member(&id, i))
}

/// `on_failure = stop`: the members not started yet are skipped (those
/// already running finish).
fn skip_queued(store: &Store, set: &RequestRecord) -> Result<(), StoreError> {
    let message = format!("skipped: another file of set {} failed and its policy stops at the first failure", set.id);
    for member in members(store, set) {
        let member = member?;
        if member.status == Status::ToSubmit {
            store.update_if(
                &member.id,
                &message,
                |r| r.status == Status::ToSubmit,
                |r| {
                    lifecycle::fail(r, ErrorCode::Skipped, &message, 0, now_ms());
                },
            )?;
        }
    }
    Ok(())
}

/// The first failed files of a set, as its error message names them.
fn failed_names(store: &Store, set: &RequestRecord) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for member in members(store, set) {
        let member = member?;
        if let Some(name) = failed_name(&member) {
            names.push(name);
            if names.len() == NAMED_FAILURES {
                break;
            }
        }
    }
    Ok(names)
}

fn failed_name(member: &RequestRecord) -> Option<String> {
    (lifecycle::set::counted(member) == Some(Counted::Failed)).then(|| {
        let code = member.error.as_ref().map_or(ErrorCode::Internal, |e| e.code);
        format!("{} ({code})", member.file_name)
    })
}

/// Counts a set again from its members (start-up: the last changes before
/// a crash may not have reached the set's record).
fn recount(store: &Store, set: &RequestRecord) -> Result<(), StoreError> {
    let (mut done, mut failed, mut skipped, mut bytes) = (0, 0, 0, 0u64);
    let mut names = Vec::new();
    for member in members(store, set) {
        let member = member?;
        if names.len() < NAMED_FAILURES {
            names.extend(failed_name(&member));
        }
        match lifecycle::set::counted(&member) {
            Some(Counted::Done) => {
                done += 1;
                bytes += member.size;
            }
            Some(Counted::Failed) => failed += 1,
            Some(Counted::Skipped) => skipped += 1,
            None => {}
        }
    }
    let now = now_ms();
    let count = |r: &mut RequestRecord| {
        if let Some(info) = r.set.as_mut() {
            (info.done, info.failed, info.skipped) = (done, failed, skipped);
        }
        r.transferred = bytes;
        lifecycle::set::settle(r, now, &names)
    };
    // Ending in error only now (the end a crash cut short): the notice is
    // owed before the end is written, as in `apply`; the Commander's first
    // fill sends it.
    let mut preview = set.clone();
    if count(&mut preview) == Some(Status::InError) && super::set_release::tells_its_end(&preview) {
        store.owe_set_end_notice(&set.id, now)?;
    }
    let set = store.update_if(&set.id, "", is_counted_set, |r| {
        count(r);
    })?;
    // Skips a crash cut short (not flushed) are done again before any
    // runner starts.
    let stops = set.as_ref().is_some_and(|s| {
        s.set.as_ref().is_some_and(|i| i.policy.on_failure == crate::fileset::progress::OnFailure::Stop && i.failed > 0)
            && !s.status.is_final()
    });
    if let (true, Some(set)) = (stops, set) {
        skip_queued(store, &set)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileset::progress::Policy;
    use crate::protocol::{Direction, RequestId};
    use crate::store::{Role, SetInfo, SetMember, Step};

    fn set_with(store: &Store, files: u32) -> RequestRecord {
        let id = RequestId::generate();
        let set = RequestRecord {
            status: Status::Running,
            step: Step::Transfer,
            set: Some(SetInfo {
                pattern: "*".into(),
                policy: Policy::default(),
                files,
                done: 0,
                failed: 0,
                skipped: 0,
            }),
            ..RequestRecord::new(id.clone(), Role::Requester, "b", "r", Direction::Push, "*")
        };
        let members: Vec<RequestRecord> = (0..files)
            .map(|i| RequestRecord {
                size: 10,
                member_of: Some(SetMember { set: id.clone(), index: i, modified_ns: 0 }),
                ..RequestRecord::new(crate::store::member_id(&id, i), Role::Requester, "b", "r", Direction::Push, "f")
            })
            .collect();
        store.insert_set(set, members, "test").expect("inserted")
    }

    async fn settled(store: &Store, id: &crate::protocol::RequestId, want: Status) -> RequestRecord {
        for _ in 0..500 {
            let rec = store.get(id).expect("get").expect("set");
            if rec.status == want {
                return rec;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the set did not reach {want:?}: {:?}", store.get(id));
    }

    #[tokio::test]
    async fn start_up_counts_what_a_crash_left_unapplied_and_then_follows_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let set = set_with(&store, 3);
        // Two members ended while no keeper ran (a crash before it applied them).
        store.update(&crate::store::member_id(&set.id, 0), "", |r| r.status = Status::Done).expect("done");
        store
            .update(&crate::store::member_id(&set.id, 1), "", |r| {
                lifecycle::fail(r, ErrorCode::FileNotFound, "gone", 0, 1);
            })
            .expect("failed");
        let keeper = SetKeeper::start(&store, Arc::new(|| {})).expect("starts");
        let rec = store.get(&set.id).expect("get").expect("set");
        let info = rec.set.clone().expect("info");
        assert_eq!((info.done, info.failed, rec.transferred), (1, 1, 10), "counted again at start-up");
        assert_eq!(rec.status, Status::Running, "one file is left");
        // The last member ends: the keeper applies it and ends the set,
        // naming the failed file; under `stop` nothing was left to skip.
        store.update(&crate::store::member_id(&set.id, 2), "", |r| r.status = Status::Done).expect("done");
        let ended = settled(&store, &set.id, Status::InError).await;
        let err = ended.error.expect("error");
        assert_eq!(err.code, ErrorCode::FilesFailed);
        assert!(err.message.contains("f (FileNotFound)"), "{}", err.message);
        keeper.abort();
    }

    #[tokio::test]
    async fn under_stop_a_failure_skips_the_queued_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let keeper = SetKeeper::start(&store, Arc::new(|| {})).expect("starts");
        let set = set_with(&store, 4);
        store
            .update(&crate::store::member_id(&set.id, 0), "", |r| {
                lifecycle::fail(r, ErrorCode::SourceChanged, "changed", 0, 1);
            })
            .expect("failed");
        let ended = settled(&store, &set.id, Status::InError).await;
        assert_eq!(ended.set.as_ref().map(|i| (i.failed, i.skipped)), Some((1, 3)));
        for i in 1..4 {
            let m = store.get(&crate::store::member_id(&set.id, i)).expect("get").expect("member");
            assert_eq!(m.error.map(|e| e.code), Some(ErrorCode::Skipped), "member {i}");
        }
        keeper.abort();
    }
}
