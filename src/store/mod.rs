//! The node's persistent store: one fjall database, owned by this module
//! alone (a store an earlier release wrote with sled is moved into fjall at
//! open: `from_sled.rs`).
//!
//! Trees (fjall's keyspaces):
//! - `meta`: the schema version (`schema` → u32 big-endian), and where the
//!   next block of sequence numbers starts (`sequence`, see [`Sequence`]).
//!   An older version this build knows is migrated at open; any other is
//!   refused, never silently reinterpreted.
//! - `requests`: request id → bincode([`RequestRecord`]). Schema 6 added
//!   the file-set fields (`set`, `member_of`); a set's members are written
//!   before its record, which is the commit point ([`Store::insert_set`]).
//! - `joblog`: request id ++ sequence (u64 BE) → bincode([`LogEntry`]); the
//!   sequence comes from the store's [`Sequence`], so a request's entries
//!   scan in the order they were written.
//! - `queue`: sequence (u64 BE) ++ request id → empty; one entry per
//!   `ToSubmit` request, so the Commander takes them in submission order
//!   without scanning every request.
//! - `cancel_notices`: request id → empty; a requester's cancelled requests
//!   whose partner has not yet confirmed it was told (the Commander retries
//!   until it has). Added without a schema change: an older store simply
//!   has none.
//! - `set_end_notices`: set id → its end time (u64 BE); pushed sets that
//!   ended in error whose partner was not told yet (the Commander asks
//!   `SetEnded` until answered). Added without a schema change, like
//!   `cancel_notices` (an older build ignores it).
//! - `ended_sets`: set id → empty; the `delivery = all` sets streamed here
//!   that their sender ended in error, so the retention sweep finds them
//!   without reading every `InError` record. The sweep drops an entry once
//!   its set is gone, released or ended for good (kept while the set is
//!   streamed here again). Added without a schema change.
//! - `handovers`: partner id ++ 0 ++ request id → empty; requests a partner
//!   handed over to this node, so how many one partner has queued here can
//!   be bounded ([`Store::open_handovers`] drops the entries of requests
//!   that ended). Added without a schema change, like `cancel_notices`.
//! - `listing` (schema 5): index key → empty; each record under its
//!   creation time in the indexes of every request, of its status, partner,
//!   rule and external job id, so that a page of a filtered listing is one
//!   range scan (see `listing.rs`, which also states the crash order).
//! - `tokens`: token name → bincode([`TokenRecord`]): the API's tokens,
//!   each with the hash of its secret, never the secret. Added without a
//!   schema change: an older store has none, and the node makes its first
//!   admin token at start (see [`crate::auth`]).
//!
//! Invariants: a record, its index entries, its queue entry and its
//! job-log line are written in one atomic batch, by [`Store::insert`] and
//! [`Store::update_if`]; a file set's members get their queue entries after
//! the set's record (the commit point), so readers re-check the record's
//! status, and [`Store::rebuild_queue`] restores missing entries at
//! start-up.
//!
//! Crash guarantees: every write goes to fjall's journal and reaches the
//! OS before it returns, so a process crash (SIGKILL) loses none; the
//! journal is one file for every keyspace, written in order, so after a
//! power loss what survives is a prefix of the writes. [`Store::flush`]
//! makes every write so far durable (fdatasync of the journal, see
//! [`JournalSync`]); callers use it where a write must survive a power
//! loss before they answer anyone: a submitted request before the API
//! acknowledges it, and final states. Flushes are group commits: one
//! flusher thread per store takes every flush request queued while it was
//! busy and answers them all with one fsync, so a burst of submits costs a
//! few fsyncs, not one each. A record that does not decode is reported as
//! [`StoreError::Corrupt`] naming the key, never skipped silently; fjall
//! checks its journal and tables with checksums and reports damage as an
//! error.

mod from_sled;
pub mod history;
pub mod listing;
mod migrate;
mod record;
mod token;

pub use listing::{Cursor, ListQuery, Page};
pub use record::*;
pub use token::*;

use std::path::Path;

use crate::protocol::RequestId;

/// The on-disk layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 7;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store: {0}")]
    Engine(#[from] fjall::Error),
    /// Reading a store an earlier release wrote with sled failed.
    #[error("store (as an earlier release wrote it, with sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("store at {path} has schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Schema { path: String, found: u32 },
    #[error("store: record {key} does not decode: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store: request {0} already exists")]
    Exists(RequestId),
    #[error("store: no request {0}")]
    NotFound(RequestId),
    /// Another process holds the database (its file lock).
    #[error("the store at {path} is in use by another process")]
    InUse { path: String },
    #[error("store: record does not encode: {0}")]
    Encode(String),
    #[error("store: flush to disk failed: {0}")]
    Flush(String),
    /// Moving a store an earlier release wrote with sled into fjall failed.
    #[error("store at {path}: cannot move it from sled to fjall: {reason}")]
    Move { path: String, reason: String },
}

/// One of the store's trees (fjall calls it a keyspace).
type Tree = fjall::Keyspace;

/// The value of an entry whose key says it all (indexes, queue, notices).
const EMPTY: &[u8] = &[];

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

/// The id of member `index` of file set `set`: derived, so a set's files
/// are found (and paged) by index without an index tree, and a set written
/// again after a crash gets the same ids.
pub fn member_id(set: &RequestId, index: u32) -> RequestId {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry file set member\0");
    h.update(set.as_str().as_bytes());
    h.update(&index.to_be_bytes());
    let hex = h.finalize().to_hex();
    RequestId::parse(&hex[..32]).expect("32 lowercase hex digits are a request id")
}

/// A flush request carries its own handle to the database, so the flusher
/// thread keeps the database open only while it flushes: dropping the last
/// [`Store`] closes it (and releases its lock) at once.
type FlushReply = (fjall::Database, Waiter);

/// Who waits for a flush: a task ([`Store::flush`]) or a thread
/// ([`Store::flush_blocking`]).
enum Waiter {
    Task(tokio::sync::oneshot::Sender<Result<(), String>>),
    Thread(std::sync::mpsc::SyncSender<Result<(), String>>),
}

impl Waiter {
    fn answer(self, result: Result<(), String>) {
        // A waiter that gave up (its task dropped) needs no answer.
        let _ = match self {
            Waiter::Task(tx) => tx.send(result),
            Waiter::Thread(tx) => tx.send(result).map_err(|e| e.0),
        };
    }
}

/// A record as it was written: `old` is `None` for a new record.
#[derive(Debug)]
pub struct RecordChange<'a> {
    pub old: Option<&'a RequestRecord>,
    pub new: &'a RequestRecord,
}

/// Told of every record [`Store::insert`] and [`Store::update_if`] write,
/// right after the write, on the writer's thread, in the order the writes
/// happened: it must be quick and must not call back into the store.
pub type Observer = std::sync::Arc<dyn Fn(&RecordChange<'_>) + Send + Sync>;

/// Told how long each [`Store::flush`] caller waited for its data to be on
/// disk (queueing behind other flushes included).
pub type FlushObserver = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// What a partner is owed the news of, about one of this node's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The request was cancelled here (tree `cancel_notices`).
    Cancel,
    /// A pushed file set ended in error here, at `at` (its `finished_at`;
    /// tree `set_end_notices`): a notice of an earlier end of the same set
    /// (restarted since) is told of no more, nor given in its place.
    SetEnded { at: u64 },
}

impl Notice {
    /// Which of the two kinds, for keying notices in flight.
    pub fn kind(self) -> u8 {
        match self {
            Notice::Cancel => 0,
            Notice::SetEnded { .. } => 1,
        }
    }
}

/// A handle to the node's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: fjall::Database,
    requests: Tree,
    joblog: Tree,
    queue: Tree,
    /// Cancelled requests whose partner has not yet confirmed it was told.
    notices: Tree,
    /// Pushed sets that ended in error whose partner was not told yet.
    set_end_notices: Tree,
    /// Sets streamed here that their sender ended in error.
    ended_sets: Tree,
    handovers: Tree,
    tokens: Tree,
    listing: Tree,
    /// Queue and job-log sequence numbers (see [`Sequence`]).
    sequence: std::sync::Arc<Sequence>,
    /// Where readers of the queue start (see [`Floor`]).
    queue_floor: std::sync::Arc<Floor>,
    /// Where walks of each status index start, by the index's status byte
    /// (see [`Floor`]).
    status_floors: std::sync::Arc<[Floor; listing::STATUSES]>,
    /// Who is told of every record written (see [`Store::observe`]).
    observers: std::sync::Arc<std::sync::RwLock<Vec<Observer>>>,
    /// Held from a record write to the end of its observers' calls, so
    /// observers see writes in the order they happened (the live events
    /// number them; two writers of one record would otherwise be told in
    /// either order).
    write_order: std::sync::Arc<std::sync::Mutex<()>>,
    flush_observers: std::sync::Arc<std::sync::RwLock<Vec<FlushObserver>>>,
    flusher: tokio::sync::mpsc::UnboundedSender<FlushReply>,
    /// Notices written since the store opened (see [`Store::notices_written`]).
    notices_written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The group-commit loop: one fsync of the journal answers every request
/// queued while the previous one ran. Ends when the last [`Store`] is dropped.
fn run_flusher(mut rx: tokio::sync::mpsc::UnboundedReceiver<FlushReply>, dir: std::path::PathBuf) {
    let mut journal = JournalSync { dir, newest: None, failed: None };
    while let Some((db, first)) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok((_, more)) = rx.try_recv() {
            batch.push(more);
        }
        let result = journal.sync(&db);
        drop(db);
        for waiter in batch {
            waiter.answer(result.clone());
        }
    }
}

/// Makes everything written so far durable without holding up writers.
///
/// fjall's own `persist(SyncAll)` fsyncs while holding the journal's lock,
/// which every write takes, so every write on the node would wait for the
/// disk during each flush. Instead: `persist(Buffer)` hands fjall's buffer
/// to the OS (quick, under the lock; writes already do so each time), then
/// the newest journal file is fdatasynced through a descriptor of this
/// thread's own, outside the lock. That covers every write made before
/// the call: an older journal was fsynced by fjall when it rotated to a new
/// one (and the folder with it), and fjall removes a journal only once its
/// memtables are in tables it synced. `fdatasync` is enough: on Linux it
/// also writes the file's size and block allocation, which the journal
/// changes as it grows (its `set_len` at creation makes a sparse file).
///
/// A failed fsync is final: Linux reports a write-back error once and then
/// marks the pages clean, so a later fsync could succeed over a hole in
/// the journal and acknowledge writes that recovery would cut off after
/// it. Every later flush fails with the first error (as fjall poisons its
/// database when its own fsync fails); the node must be restarted.
struct JournalSync {
    dir: std::path::PathBuf,
    /// The newest journal's number and a descriptor of it.
    newest: Option<(u64, std::fs::File)>,
    /// The first fsync that failed.
    failed: Option<String>,
}

impl JournalSync {
    fn sync(&mut self, db: &fjall::Database) -> Result<(), String> {
        if let Some(first) = &self.failed {
            return Err(format!("an earlier flush of the store failed ({first}); restart the node"));
        }
        let result = self.sync_once(db);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn sync_once(&mut self, db: &fjall::Database) -> Result<(), String> {
        db.persist(fjall::PersistMode::Buffer).map_err(|e| e.to_string())?;
        let newest = newest_journal(&self.dir).map_err(|e| format!("cannot list the journals: {e}"))?;
        let Some(number) = newest else {
            // No journal file (fjall made none yet): fall back on its own fsync.
            return db.persist(fjall::PersistMode::SyncAll).map_err(|e| e.to_string());
        };
        if self.newest.as_ref().is_none_or(|(n, _)| *n != number) {
            let path = self.dir.join(format!("{number}.jnl"));
            let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            self.newest = Some((number, file));
        }
        let (_, file) = self.newest.as_ref().expect("set just above");
        file.sync_data().map_err(|e| format!("cannot fsync the journal: {e}"))
    }
}

/// The number of the newest journal file (`N.jnl`) in `dir`.
fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name.to_str().and_then(|n| n.strip_suffix(".jnl")).and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(number);
    }
    Ok(newest)
}

/// What one [`Store::prune`] call removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Requests removed (a set's files included).
    pub requests: usize,
    /// Job-log lines removed with them.
    pub log_lines: usize,
    /// The call stopped at its limit: old requests may be left.
    pub more: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. A store an earlier release
    /// wrote with sled (schema 6 or older) is first moved into fjall, its
    /// sled folder kept beside it (see `from_sled.rs`).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        if let Some(moved) = from_sled::move_if_sled(dir)? {
            tracing::info!(
                path = %dir.display(),
                from = moved.schema,
                to = SCHEMA_VERSION,
                records = moved.records,
                kept = %moved.kept.display(),
                "store moved from sled to fjall; the sled folder is kept and may be removed once this release is trusted"
            );
        }
        let db = open_db(dir)?;
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default)?;
        match meta.get("schema")? {
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path: dir.display().to_string(), found });
                }
            }
            None => {
                meta.insert("schema", SCHEMA_VERSION.to_be_bytes())?;
                db.persist(fjall::PersistMode::SyncAll)?;
            }
        }
        let sequence = std::sync::Arc::new(Sequence::open(meta)?);
        let tree = |name: &str| db.keyspace(name, keyspace_options);
        let (flusher, rx) = tokio::sync::mpsc::unbounded_channel();
        // A simulation flushes inline (see `flush`): no thread of its own.
        if !crate::determinism::inline_io() {
            std::thread::Builder::new()
                .name("ferry-store-flush".into())
                .spawn({
                    let dir = dir.to_path_buf();
                    move || run_flusher(rx, dir)
                })
                .map_err(|e| StoreError::Flush(format!("cannot start the flusher thread: {e}")))?;
        }
        Ok(Store {
            requests: tree("requests")?,
            joblog: tree("joblog")?,
            queue: tree("queue")?,
            notices: tree("cancel_notices")?,
            set_end_notices: tree("set_end_notices")?,
            ended_sets: tree("ended_sets")?,
            handovers: tree("handovers")?,
            tokens: tree("tokens")?,
            listing: tree("listing")?,
            sequence,
            queue_floor: Default::default(),
            status_floors: Default::default(),
            observers: Default::default(),
            write_order: Default::default(),
            flush_observers: Default::default(),
            db,
            flusher,
            notices_written: Default::default(),
        })
    }

    /// Stores a new request, refusing an id that already exists, and logs `message`.
    pub fn insert(&self, mut rec: RequestRecord, message: &str) -> Result<RequestRecord, StoreError> {
        let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Numbered under the lock, so it is queued in the order numbered
        // (see `Floor`).
        if rec.status == Status::ToSubmit {
            rec.queue_seq = Some(self.sequence.next()?);
        }
        self.write_new(&rec, message)?;
        Ok(rec)
    }

    /// Writes a record that must not exist yet: the record, its index
    /// entries, its queue entry (if it has a queue number) and its log line
    /// in one atomic batch; then tells the observers. The caller holds
    /// `write_order`.
    fn write_new(&self, rec: &RequestRecord, message: &str) -> Result<(), StoreError> {
        let key = rec.id.as_str().as_bytes();
        if self.requests.contains_key(key)? {
            return Err(StoreError::Exists(rec.id.clone()));
        }
        let mut batch = self.db.batch();
        let entries = listing::keys(rec);
        for k in &entries {
            batch.insert(&self.listing, k.as_slice(), EMPTY);
        }
        batch.insert(&self.requests, key, encode(rec)?);
        if let Some(seq) = rec.queue_seq {
            batch.insert(&self.queue, queue_key(seq, &rec.id), EMPTY);
        }
        self.log_into(&mut batch, rec, message)?;
        let written = batch.commit();
        self.lower_status_floors(entries.iter());
        written?;
        self.notify(&RecordChange { old: None, new: rec });
        Ok(())
    }

    /// Stores a file set: its members, then its own record, all new. The
    /// set's record is the commit point: members are written first without
    /// queue entries, so until the set's record is written nothing runs
    /// them, and a crash before it leaves members without a set, which
    /// [`Store::rebuild_queue`] removes at start-up (the submission was
    /// never acknowledged: the caller flushes after this returns). Queue
    /// entries follow the set's record, in index order. (One batch would
    /// make it atomic too, but would hold every member in memory at once.)
    pub fn insert_set(
        &self,
        set: RequestRecord,
        members: impl IntoIterator<Item = RequestRecord>,
        message: &str,
    ) -> Result<RequestRecord, StoreError> {
        if self.requests.contains_key(set.id.as_str().as_bytes())? {
            return Err(StoreError::Exists(set.id));
        }
        // Members one at a time (a set of 100,000 is never all in memory);
        // only their queue keys are kept for after the commit point. The
        // write-order lock is taken per member, so other writers are not
        // held for the whole set.
        let lock = || self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut queue_keys = Vec::new();
        for mut rec in members {
            let _order = lock();
            if rec.status == Status::ToSubmit {
                let seq = self.sequence.next()?;
                rec.queue_seq = Some(seq);
                queue_keys.push(queue_key(seq, &rec.id));
            }
            // Members have no listing entries (see listing::keys).
            let key = rec.id.as_str().as_bytes();
            if self.requests.contains_key(key)? {
                return Err(StoreError::Exists(rec.id));
            }
            self.requests.insert(key, encode(&rec)?)?;
            self.notify(&RecordChange { old: None, new: &rec });
        }
        let _order = lock();
        // The set is never queued itself: its members are.
        let set = RequestRecord { queue_seq: None, ..set };
        self.write_new(&set, message)?;
        // Numbered before other requests queued meanwhile: the floor is
        // lowered once they are written (see `Floor`).
        let lowest = queue_keys.iter().filter_map(|k| seq_of(k)).min();
        let written: Result<(), StoreError> =
            queue_keys.into_iter().try_for_each(|k| Ok(self.queue.insert(k, EMPTY)?));
        // Lowered even if a write failed: those written before it count.
        self.queue_floor.lower_to(lowest);
        written?;
        Ok(set)
    }

    /// Member `index` of file set `set`; a member missing from the store
    /// is damage ([`StoreError::NotFound`]), never skipped.
    pub fn member(&self, set: &RequestId, index: u32) -> Result<RequestRecord, StoreError> {
        let id = member_id(set, index);
        self.get(&id)?.ok_or(StoreError::NotFound(id))
    }

    /// Adds an observer of every record written from now on (the audit
    /// log, the metrics, the live events).
    pub fn observe(&self, observer: Observer) {
        self.observers.write().expect("observer list lock is never poisoned").push(observer);
    }

    /// Adds an observer of every flush's latency from now on (the metrics).
    pub fn observe_flush(&self, observer: FlushObserver) {
        self.flush_observers.write().expect("observer list lock is never poisoned").push(observer);
    }

    fn notify(&self, change: &RecordChange<'_>) {
        for o in self.observers.read().expect("observer list lock is never poisoned").iter() {
            o(change);
        }
    }

    pub fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.requests.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// Changes a request with `change`, logging `message` when it is not empty
    /// or when the status or step changed. Returns the new record.
    pub fn update(
        &self,
        id: &RequestId,
        message: &str,
        change: impl Fn(&mut RequestRecord),
    ) -> Result<RequestRecord, StoreError> {
        self.update_if(id, message, |_| true, change)?.ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    /// Like [`Store::update`], applied only if `cond` holds for the current
    /// record, atomically with the change; `Ok(None)` when it does not.
    pub fn update_if(
        &self,
        id: &RequestId,
        message: &str,
        cond: impl Fn(&RequestRecord) -> bool,
        change: impl Fn(&mut RequestRecord),
    ) -> Result<Option<RequestRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let old_bytes = self.requests.get(key)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let old: RequestRecord = decode(key, &old_bytes)?;
        if !cond(&old) {
            return Ok(None);
        }
        let mut new = old.clone();
        change(&mut new);
        new.updated_at = record::now_ms();
        let leaving_queue = old.queue_seq.is_some() && new.status != Status::ToSubmit;
        if leaving_queue {
            new.queue_seq = None;
        }
        let joining_queue = new.status == Status::ToSubmit && new.queue_seq.is_none();
        if joining_queue {
            new.queue_seq = Some(self.sequence.next()?);
        }
        // The record, the index entries it gains and loses, its queue
        // entry and its log line in one atomic batch.
        let mut batch = self.db.batch();
        let (old_keys, new_keys) = (listing::keys(&old), listing::keys(&new));
        for k in new_keys.difference(&old_keys) {
            batch.insert(&self.listing, k.as_slice(), EMPTY);
        }
        batch.insert(&self.requests, key, encode(&new)?);
        for k in old_keys.difference(&new_keys) {
            batch.remove(&self.listing, k.as_slice());
        }
        if let (true, Some(seq)) = (leaving_queue, old.queue_seq) {
            batch.remove(&self.queue, queue_key(seq, id));
        }
        if let (true, Some(seq)) = (joining_queue, new.queue_seq) {
            batch.insert(&self.queue, queue_key(seq, id), EMPTY);
        }
        if !message.is_empty() || old.status != new.status || old.step != new.step {
            let msg = if message.is_empty() { format!("{:?} / {:?}", new.status, new.step) } else { message.into() };
            self.log_into(&mut batch, &new, &msg)?;
        }
        let written = batch.commit();
        self.lower_status_floors(new_keys.difference(&old_keys));
        written?;
        self.notify(&RecordChange { old: Some(&old), new: &new });
        Ok(Some(new))
    }

    /// Status-index entries were just written (or tried): each lowers its
    /// status's floor to its creation time (see [`Floor`]).
    fn lower_status_floors<'k>(&self, entries: impl Iterator<Item = &'k Vec<u8>>) {
        for (status, created_at) in entries.filter_map(|k| listing::status_entry(k)) {
            if let Some(floor) = self.status_floors.get(usize::from(status)) {
                floor.lower_to(Some(created_at));
            }
        }
    }

    /// Appends a line to a request's job log.
    pub fn log(&self, id: &RequestId, message: &str) -> Result<(), StoreError> {
        let rec = self.get(id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
        self.append_log(&rec, message)
    }

    /// Appends a line to the job log of `rec`, with its status and step as
    /// given (the caller's current copy: nothing is read again).
    pub fn log_for(&self, rec: &RequestRecord, message: &str) -> Result<(), StoreError> {
        self.append_log(rec, message)
    }

    fn append_log(&self, rec: &RequestRecord, message: &str) -> Result<(), StoreError> {
        let (key, entry) = self.log_entry(rec, message)?;
        self.joblog.insert(key, entry)?;
        Ok(())
    }

    /// Adds a line of `rec`'s job log to `batch`.
    fn log_into(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        rec: &RequestRecord,
        message: &str,
    ) -> Result<(), StoreError> {
        let (key, entry) = self.log_entry(rec, message)?;
        batch.insert(&self.joblog, key, entry);
        Ok(())
    }

    fn log_entry(&self, rec: &RequestRecord, message: &str) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let seq = self.sequence.next()?;
        let mut key = rec.id.as_str().as_bytes().to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        let entry = LogEntry { at: record::now_ms(), status: rec.status, step: rec.step, message: message.to_owned() };
        Ok((key, encode(&entry)?))
    }

    /// A request's job log, oldest first.
    pub fn job_log(&self, id: &RequestId) -> Result<Vec<LogEntry>, StoreError> {
        self.joblog
            .prefix(id.as_str().as_bytes())
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every request, optionally only those with `status`.
    pub fn list(&self, status: Option<Status>) -> Result<Vec<RequestRecord>, StoreError> {
        self.list_where(|s| status.is_none_or(|want| s == want))
    }

    /// Every request whose status `keep` accepts, in one pass over the
    /// store (start-up reads what it must act on once, not once per status).
    /// Only each record's head is decoded to decide; the rest of the
    /// records kept.
    pub fn list_where(&self, keep: impl Fn(Status) -> bool) -> Result<Vec<RequestRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.requests.iter() {
            let (k, v) = kv.into_inner()?;
            let head: RecordHead = decode(&k, &v)?;
            if keep(head.status) {
                out.push(decode(&k, &v)?);
            }
        }
        Ok(out)
    }

    /// Calls `f` with the head of every request, one at a time (never all
    /// in memory, and never the rest of a record).
    pub fn for_each_head(&self, mut f: impl FnMut(RecordHead)) -> Result<(), StoreError> {
        for kv in self.requests.iter() {
            let (k, v) = kv.into_inner()?;
            f(decode(&k, &v)?);
        }
        Ok(())
    }

    /// Calls `f` with every record whose status is one of `statuses`, read
    /// a page at a time through the listing's status index: the cost is
    /// the records with those statuses, not every record stored.
    pub fn for_each_with_status(
        &self,
        statuses: &[Status],
        mut f: impl FnMut(RequestRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for &status in statuses {
            let mut q = ListQuery { status: Some(status), limit: listing::MAX_PAGE, ..ListQuery::default() };
            loop {
                let page = self.page(&q)?;
                for rec in page.records {
                    f(rec)?;
                }
                match page.next {
                    Some(next) => q.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// One page of records in creation order (oldest first) that pass
    /// `q`'s filters, read through the listing indexes: the cost is the
    /// entries walked, not the records stored.
    pub fn page(&self, q: &ListQuery) -> Result<Page, StoreError> {
        self.page_where(q, |_| true)
    }

    /// [`Store::page`] of the records `keep` accepts: the page holds up to
    /// `limit` of them and its cursor names the last one kept, never a
    /// record `keep` refused (a scoped token's page says nothing of what is
    /// outside its scope).
    pub fn page_where(&self, q: &ListQuery, keep: impl Fn(&RequestRecord) -> bool) -> Result<Page, StoreError> {
        let limit = q.limit.clamp(1, listing::MAX_PAGE);
        let index = listing::index_for(q);
        let mut start = listing::start_key(&index, q);
        if let Some(floor) = listing::status_of_index(&index).and_then(|s| self.status_floors.get(usize::from(s))) {
            // A status index: no entry lies below its floor. Raise the
            // floor to the first entry found from it (past the tombstones
            // of every request that left the status), then start there if
            // the query would start lower.
            let (at, lowered) = floor.get();
            let mut floor_key = index.clone();
            floor_key.extend_from_slice(&at.to_be_bytes());
            let first = match self.listing.range(floor_key..).next() {
                Some(kv) => listing::parse_entry(&index, &kv.key()?).map_or(u64::MAX, |(created_at, _)| created_at),
                None => u64::MAX,
            };
            floor.raise_to(first, lowered);
            let mut lowest = index.clone();
            lowest.extend_from_slice(&floor.get().0.to_be_bytes());
            start = start.max(lowest);
        }
        let mut records = Vec::with_capacity(limit.min(1024));
        for kv in self.listing.range(start..) {
            let k = kv.key()?;
            let Some((created_at, id)) = listing::parse_entry(&index, &k) else { break };
            if q.created_to.is_some_and(|to| created_at >= to) {
                break;
            }
            let Some(rec) = self.get(&id)? else { continue };
            // A left-over entry (see listing.rs) is not one of the record's keys.
            if !listing::keys(&rec).contains(k.as_ref()) || !listing::matches(q, &rec) || !keep(&rec) {
                continue;
            }
            if records.len() == limit {
                let next = records.last().map(listing::Cursor::of);
                return Ok(Page { records, next });
            }
            records.push(rec);
        }
        Ok(Page { records, next: None })
    }

    /// Removes requests that ended `Done` or `Cancelled` and were created
    /// and finished before `cutoff_ms`, each with its job log and listing
    /// entries: the retention setting's work (the audit log, written
    /// elsewhere, is kept). A file set goes with its files, its files first
    /// and its record last, so a crash in between leaves the set's record,
    /// still old, for the next call to finish. Kept: whatever has not
    /// ended, `InError` requests (an operator may restart them), a
    /// cancelled request whose partner is still owed its notice, and a
    /// set's file on its own (it goes with its set). At most about `max`
    /// requests per call (a set counts with its files); `more` says whether
    /// old ones may be left. The caller flushes.
    pub fn prune(&self, cutoff_ms: u64, max: usize) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        for status in [Status::Done, Status::Cancelled] {
            let mut q = ListQuery {
                status: Some(status),
                created_to: Some(cutoff_ms),
                limit: listing::MAX_PAGE,
                ..ListQuery::default()
            };
            loop {
                let page = self.page(&q)?;
                for rec in &page.records {
                    if pruned.requests >= max {
                        pruned.more = true;
                        return Ok(pruned);
                    }
                    let finished = rec.finished_at.unwrap_or(rec.updated_at);
                    if finished >= cutoff_ms || rec.member_of.is_some() || !self.prunable(rec)? {
                        continue;
                    }
                    if let Some(info) = &rec.set {
                        // A set goes only when every file of it may go too.
                        let mut all = true;
                        for i in 0..info.files {
                            all &= self.get(&member_id(&rec.id, i))?.map_or(Ok(true), |m| self.prunable(&m))?;
                        }
                        if !all {
                            continue;
                        }
                        for i in 0..info.files {
                            pruned.log_lines += self.remove_request(&member_id(&rec.id, i))?;
                            pruned.requests += 1;
                        }
                    }
                    pruned.log_lines += self.remove_request(&rec.id)?;
                    pruned.requests += 1;
                }
                match page.next {
                    Some(next) => q.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(pruned)
    }

    /// Whether pruning may remove `rec` (its age aside): it ended `Done` or
    /// `Cancelled`, and its partner is owed no cancel notice.
    fn prunable(&self, rec: &RequestRecord) -> Result<bool, StoreError> {
        Ok(matches!(rec.status, Status::Done | Status::Cancelled) && !self.notices.contains_key(rec.id.as_str())?)
    }

    /// Removes one request, its listing entries and its job log (nothing
    /// if it is gone already). Returns the job-log lines removed.
    fn remove_request(&self, id: &RequestId) -> Result<usize, StoreError> {
        let key = id.as_str().as_bytes();
        let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(bytes) = self.requests.get(key)? else { return Ok(0) };
        let rec: RequestRecord = decode(key, &bytes)?;
        // Its log, the record, its index and queue entries in one atomic
        // batch.
        let mut batch = self.db.batch();
        let mut lines = 0;
        for kv in self.joblog.prefix(key) {
            batch.remove(&self.joblog, kv.key()?);
            lines += 1;
        }
        batch.remove(&self.requests, key);
        for k in listing::keys(&rec) {
            batch.remove(&self.listing, k);
        }
        if let Some(seq) = rec.queue_seq {
            batch.remove(&self.queue, queue_key(seq, id));
        }
        batch.commit()?;
        Ok(lines)
    }

    /// Up to `max` queued (`ToSubmit`) requests in submission order.
    ///
    /// Stale index entries (the record is gone or no longer `ToSubmit`) are
    /// dropped on the way.
    pub fn queued(&self, max: usize) -> Result<Vec<RequestRecord>, StoreError> {
        self.queued_where(max, |_| false, |_| true)
    }

    /// Like [`Store::queued`], taking only records `take` accepts (the
    /// others stay queued and are passed over); an id `pass` names is
    /// passed over without reading its record.
    pub fn queued_where(
        &self,
        max: usize,
        mut pass: impl FnMut(&RequestId) -> bool,
        mut take: impl FnMut(&RequestRecord) -> bool,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let mut out = Vec::new();
        let (floor, lowered) = self.queue_floor.get();
        let mut first = None;
        for kv in self.queue.range(floor.to_be_bytes()..) {
            if out.len() >= max {
                break;
            }
            let k = kv.key()?;
            if first.is_none() {
                first = seq_of(&k);
                if let Some(seq) = first {
                    self.queue_floor.raise_to(seq, lowered);
                }
            }
            let id = k.get(8..).and_then(|b| std::str::from_utf8(b).ok()).and_then(RequestId::parse);
            if id.as_ref().is_some_and(&mut pass) {
                continue;
            }
            let rec = match &id {
                Some(id) => self.get(id)?,
                None => None,
            };
            match rec {
                Some(rec)
                    if rec.status == Status::ToSubmit
                        && rec.queue_seq.map(|s| queue_key(s, &rec.id)) == Some(k.to_vec()) =>
                {
                    if take(&rec) {
                        out.push(rec)
                    }
                }
                _ => {
                    self.queue.remove(k)?;
                }
            }
        }
        Ok(out)
    }

    /// Re-creates the queue index from the records (after a crash the index
    /// may miss entries written just before it).
    ///
    /// Members of a file set whose set's record is missing are removed: a
    /// crash cut their submission short before its commit point (see
    /// [`Store::insert_set`]), so it was never acknowledged.
    pub fn rebuild_queue(&self) -> Result<(), StoreError> {
        self.rebuild_queue_from(self.list(Some(Status::ToSubmit))?)
    }

    /// [`Store::rebuild_queue`] from the `ToSubmit` requests the caller
    /// read already (others are skipped).
    pub fn rebuild_queue_from(&self, queued: Vec<RequestRecord>) -> Result<(), StoreError> {
        let mut orphans = 0usize;
        for rec in queued.into_iter().filter(|r| r.status == Status::ToSubmit) {
            if let Some(m) = &rec.member_of {
                let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if !self.requests.contains_key(m.set.as_str().as_bytes())? {
                    self.requests.remove(rec.id.as_str().as_bytes())?;
                    orphans += 1;
                    continue;
                }
            }
            match rec.queue_seq {
                Some(seq) => {
                    let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let written = self.queue.insert(queue_key(seq, &rec.id), EMPTY);
                    self.queue_floor.lower_to(Some(seq));
                    written?;
                }
                None => {
                    // Re-queue through update so the record gets its sequence.
                    self.update(&rec.id, "", |r| r.queue_seq = None)?;
                }
            }
        }
        if orphans > 0 {
            tracing::warn!(
                files = orphans,
                "removed the files of a file-set submission a crash cut short (it was never acknowledged)"
            );
        }
        Ok(())
    }

    /// Forces everything written so far to disk (fsync), as a group commit
    /// shared with every other caller waiting at the same time.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if crate::determinism::inline_io() {
            return self.flush_blocking();
        }
        let started = std::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ask_flusher(Waiter::Task(tx))?;
        self.flushed(started, rx.await.ok())
    }

    fn ask_flusher(&self, waiter: Waiter) -> Result<(), StoreError> {
        self.flusher
            .send((self.db.clone(), waiter))
            .map_err(|_| StoreError::Flush("the flusher thread has stopped".into()))
    }

    /// The flusher's answer (`None`: it stopped before answering), told to
    /// the flush observers with how long the caller waited.
    fn flushed(&self, started: std::time::Instant, answer: Option<Result<(), String>>) -> Result<(), StoreError> {
        let result = answer
            .ok_or_else(|| StoreError::Flush("the flusher thread has stopped".into()))?
            .map_err(StoreError::Flush);
        let waited = started.elapsed();
        for o in self.flush_observers.read().expect("observer list lock is never poisoned").iter() {
            o(waited);
        }
        result
    }

    /// Records that the partner of `id` must still be told that the request
    /// was cancelled (durable with the next flush; kept until
    /// [`Store::notice_given`]).
    pub fn owe_cancel_notice(&self, id: &RequestId) -> Result<(), StoreError> {
        self.notices.insert(id.as_str().as_bytes(), EMPTY)?;
        self.notices_written.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Records that the partner of pushed set `id` must still be told the
    /// set ended in error at `at` (durable with the next flush), instead
    /// of any earlier end of it. Written before the end: a notice whose set
    /// did not end so at `at` is dropped unsent.
    pub fn owe_set_end_notice(&self, id: &RequestId, at: u64) -> Result<(), StoreError> {
        // Under the write-order lock: `notice_given` compares and removes.
        let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.set_end_notices.insert(id.as_str().as_bytes(), at.to_be_bytes())?;
        self.notices_written.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// How many notices were written (owed) since the store opened: a
    /// reader of [`Store::notices_owed`] reads them again only when this
    /// changed. Counted after each write, so a count read before
    /// `notices_owed` never misses a notice that read did not see.
    pub fn notices_written(&self) -> u64 {
        self.notices_written.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The partner was told `notice` of `id` (or need not be): it is no
    /// longer owed. A set-end notice of a later end, written meanwhile,
    /// stays owed.
    pub fn notice_given(&self, id: &RequestId, notice: Notice) -> Result<(), StoreError> {
        let key = id.as_str().as_bytes();
        match notice {
            Notice::Cancel => {
                self.notices.remove(key)?;
            }
            Notice::SetEnded { at } => {
                let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if self.set_end_notices.get(key)?.is_some_and(|v| v.as_ref() == at.to_be_bytes()) {
                    self.set_end_notices.remove(key)?;
                }
            }
        }
        Ok(())
    }

    /// The notices owed for `id` (see [`Store::notices_owed`]).
    pub fn notices_owed_for(&self, id: &RequestId) -> Result<Vec<(RequestId, Notice)>, StoreError> {
        let key = id.as_str().as_bytes();
        let mut out = Vec::new();
        if self.notices.contains_key(key)? {
            out.push((id.clone(), Notice::Cancel));
        }
        if let Some(v) = self.set_end_notices.get(key)? {
            let at = v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
                key: id.to_string(),
                reason: "a set-end notice is not a time".into(),
            })?;
            out.push((id.clone(), Notice::SetEnded { at }));
        }
        Ok(out)
    }

    /// Requests whose partner must still be told how they ended, each with
    /// what it must be told.
    pub fn notices_owed(&self) -> Result<Vec<(RequestId, Notice)>, StoreError> {
        let id_of = |k: &[u8]| {
            let text = String::from_utf8_lossy(k).into_owned();
            RequestId::parse(&text).ok_or(StoreError::Corrupt { key: text, reason: "not a request id".into() })
        };
        let mut out = Vec::new();
        for kv in self.notices.iter() {
            let k = kv.key()?;
            out.push((id_of(&k)?, Notice::Cancel));
        }
        for kv in self.set_end_notices.iter() {
            let (k, v) = kv.into_inner()?;
            let at = v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "a set-end notice is not a time".into(),
            })?;
            out.push((id_of(&k)?, Notice::SetEnded { at }));
        }
        Ok(out)
    }

    /// Notes that set `id`, streamed here, was ended in error by its sender
    /// (durable with the next flush).
    pub fn note_ended_set(&self, id: &RequestId) -> Result<(), StoreError> {
        self.ended_sets.insert(id.as_str().as_bytes(), EMPTY)?;
        Ok(())
    }

    /// The sets noted by [`Store::note_ended_set`] and not forgotten.
    pub fn ended_sets(&self) -> Result<Vec<RequestId>, StoreError> {
        let mut out = Vec::new();
        for kv in self.ended_sets.iter() {
            let k = kv.key()?;
            let text = String::from_utf8_lossy(&k).into_owned();
            out.push(
                RequestId::parse(&text).ok_or(StoreError::Corrupt { key: text, reason: "not a request id".into() })?,
            );
        }
        Ok(out)
    }

    /// Set `id` is no longer one its sender ended in error.
    pub fn forget_ended_set(&self, id: &RequestId) -> Result<(), StoreError> {
        self.ended_sets.remove(id.as_str().as_bytes())?;
        Ok(())
    }

    /// Notes that `partner` handed request `id` over to this node.
    pub fn note_handover(&self, partner: &str, id: &RequestId) -> Result<(), StoreError> {
        self.handovers.insert(handover_key(partner, id), EMPTY)?;
        Ok(())
    }

    /// How many requests `partner` handed over that have not ended; the
    /// entries of those that ended (or vanished) are dropped on the way.
    pub fn open_handovers(&self, partner: &str) -> Result<usize, StoreError> {
        let mut prefix = partner.as_bytes().to_vec();
        prefix.push(0);
        let mut open = 0;
        for kv in self.handovers.prefix(&prefix) {
            let k = kv.key()?;
            let text = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some(id) = RequestId::parse(&text) else {
                return Err(StoreError::Corrupt { key: text, reason: "not a request id".into() });
            };
            match self.get(&id)? {
                Some(rec) if !rec.status.is_final() => open += 1,
                _ => {
                    self.handovers.remove(k)?;
                }
            }
        }
        Ok(open)
    }

    /// Every API token, revoked ones included, by name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Writes `token` under its name, replacing any record of that name.
    pub fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(token.name.as_bytes(), encode(token)?)?;
        Ok(())
    }

    /// Whether the database answers a read (one entry, never a scan).
    pub fn is_readable(&self) -> bool {
        self.tokens.first_key_value().is_none_or(|first| first.key().is_ok())
    }

    /// [`Store::flush`] for a thread that may block (a blocking task, a
    /// shutdown path): the same group commit, the calling thread waiting
    /// for it, so a failed fsync fails it too (see [`JournalSync`]). A
    /// simulation, which has no flusher thread, has fjall fsync inline.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        if crate::determinism::inline_io() {
            self.db.persist(fjall::PersistMode::SyncAll)?;
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ask_flusher(Waiter::Thread(tx))?;
        self.flushed(started, rx.recv().ok())
    }
}

/// The block cache, in bytes: the store's working set (queued and running
/// records, recent job logs) fits in it; what falls out is read back from
/// the OS page cache. 16 MiB and 4 MiB memtables (below) kept a node with
/// a million records stored and 10,000 queued at 92–118 MiB at its peak,
/// where 32 MiB and 8 MiB reached 188–241 MiB, at the same rates
/// (docs/BENCHMARKS.md, "The store moved to fjall").
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The journals' total size before fjall writes memtables out to tables
/// (fjall's least). fjall's default (512 MiB) let a node keep that much in
/// memtables: 520 MB resident after a million records were written.
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Each keyspace's memtable before it is written out to a table.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

fn keyspace_options() -> fjall::KeyspaceCreateOptions {
    fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// Opens fjall, waiting (bounded) for its file lock: a store dropped in
/// this process releases it once fjall's own threads let go of it, a
/// moment after the last handle is gone, so a store reopened at once (a
/// node restarted in the same process) may find it still held.
fn open_db(dir: &Path) -> Result<fjall::Database, StoreError> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match fjall::Database::builder(dir).cache_size(CACHE_BYTES).max_journaling_size(JOURNAL_BYTES).open() {
            Err(fjall::Error::Locked) => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse { path: dir.display().to_string() });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

/// Sequence numbers for queue and job-log keys, increasing for the life of
/// the store, across restarts. A block of [`Sequence::BLOCK`] numbers is
/// reserved in `meta` (`sequence` → the first number not reserved, u64 BE)
/// before any of them is used. The journal keeps writes in order, so a
/// reservation is on disk before any key that uses one of its numbers, and
/// a reopened store starts after the last reservation it finds.
struct Sequence {
    meta: Tree,
    /// The next number, and the end of the block reserved.
    state: std::sync::Mutex<(u64, u64)>,
}

impl Sequence {
    const BLOCK: u64 = 1 << 20;
    pub(super) const KEY: &'static str = "sequence";

    fn open(meta: Tree) -> Result<Sequence, StoreError> {
        let end = match meta.get(Self::KEY)? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { key: format!("meta/{}", Self::KEY), reason: "not a u64".into() })?,
            None => 0,
        };
        Ok(Sequence { meta, state: std::sync::Mutex::new((end, end)) })
    }

    fn next(&self) -> Result<u64, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (next, end) = *state;
        if next >= end {
            let end = next + Self::BLOCK;
            self.meta.insert(Self::KEY, end.to_be_bytes())?;
            state.1 = end;
        }
        state.0 = next + 1;
        Ok(next)
    }
}

/// Node ids never hold a NUL byte, so the 0 ends the partner's part.
fn handover_key(partner: &str, id: &RequestId) -> Vec<u8> {
    let mut k = partner.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// The sequence number of a queue key.
fn seq_of(key: &[u8]) -> Option<u64> {
    key.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// Where an index's first entry may be: every entry's position (a queue
/// entry's number, a status-index entry's creation time) is at least the
/// floor. Removed entries stay in fjall as tombstones until compaction
/// drops them, and a reader that walked the queue (or the index of
/// `Running` requests) from its start would step over every request that
/// passed through since; a reader starts at the floor instead, and raises
/// it to the first entry it finds.
///
/// A status index: entries go in at any position (a request created long
/// ago may become `Running` again), so every write of an entry lowers the
/// floor to its position and counts the lowering, after the write; a
/// reader raises the floor only if no lowering happened since it read it
/// (so since before its walk began), and then no entry it could not see
/// lies below what it found.
///
/// The queue: a request queued by
/// [`Store::insert`] or [`Store::update_if`] is numbered and written under
/// the write-order lock, so it is numbered after, and written after, every
/// entry a reader could find. Only entries numbered earlier and written
/// later (a file set's, after its commit point; the queue rebuilt at
/// start-up) could fall below a floor raised meanwhile: once they are
/// written, their writer lowers the floor and counts the lowering, and a
/// reader raises the floor only if no lowering happened since it read it
/// (so since before it began to read the queue).
#[derive(Default)]
struct Floor(std::sync::Mutex<(u64, u64)>);

impl Floor {
    /// The floor and how many lowerings came before it.
    fn get(&self) -> (u64, u64) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// No entry is below `seq`, as a reader found at `lowered` lowerings.
    fn raise_to(&self, seq: u64, lowered: u64) {
        let mut state = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.1 == lowered && seq > state.0 {
            state.0 = seq;
        }
    }

    /// Entries numbered from `seq` on were just written.
    fn lower_to(&self, seq: Option<u64>) {
        let mut state = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.1 += 1;
        if let Some(seq) = seq {
            state.0 = state.0.min(seq);
        }
    }
}

fn queue_key(seq: u64, id: &RequestId) -> Vec<u8> {
    let mut k = seq.to_be_bytes().to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Direction;

    fn set_of(files: u32) -> (RequestRecord, Vec<RequestRecord>) {
        let set = RequestRecord {
            status: Status::Running,
            set: Some(SetInfo {
                pattern: "*".into(),
                policy: Default::default(),
                files,
                done: 0,
                failed: 0,
                skipped: 0,
            }),
            ..sample(Status::Running)
        };
        let members = (0..files)
            .map(|i| RequestRecord {
                id: member_id(&set.id, i),
                member_of: Some(SetMember { set: set.id.clone(), index: i, modified_ns: 0 }),
                ..sample(Status::ToSubmit)
            })
            .collect();
        (set, members)
    }

    #[test]
    fn a_set_is_queued_in_index_order_and_listed_as_one_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (set, members) = set_of(5);
        let ids: Vec<RequestId> = members.iter().map(|m| m.id.clone()).collect();
        store.insert_set(set.clone(), members, "set").expect("inserted");
        let queued: Vec<RequestId> = store.queued(10).expect("queued").into_iter().map(|r| r.id).collect();
        assert_eq!(queued, ids, "members queue in index order");
        let page = store.page(&ListQuery { limit: 10, ..Default::default() }).expect("page");
        assert_eq!(page.records.iter().map(|r| &r.id).collect::<Vec<_>>(), [&set.id]);
        let (again, more) = set_of(1);
        let again = RequestRecord { id: set.id.clone(), ..again };
        assert!(matches!(store.insert_set(again, more, "again"), Err(StoreError::Exists(_))));
    }

    #[test]
    fn a_failed_flush_fails_every_later_flush_blocking_ones_included() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, away) = (dir.path().join("store"), dir.path().join("away"));
        let store = Store::open(&path).expect("open");
        store.insert(sample(Status::ToSubmit), "one").expect("inserted");
        store.flush_blocking().expect("a healthy store flushes");
        // The flusher finds no journal folder: its fsync fails.
        std::fs::rename(&path, &away).expect("moved away");
        store.insert(sample(Status::ToSubmit), "two").expect("inserted");
        assert!(store.flush_blocking().is_err(), "a flush that cannot fsync fails");
        std::fs::rename(&away, &path).expect("moved back");
        store.insert(sample(Status::ToSubmit), "three").expect("inserted");
        let later = store.flush_blocking().expect_err("a flush after a failed one fails too");
        assert!(later.to_string().contains("restart the node"), "{later}");
    }

    #[test]
    fn a_record_head_is_the_records_first_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let rec = RequestRecord {
            role: Role::Requested,
            direction: Direction::Pull,
            size: u64::MAX,
            transferred: 7,
            restart_offset: 3,
            compression: crate::protocol::Compression::Lz4,
            block_size: 65_536,
            error: Some(RequestError { code: crate::protocol::ErrorCode::Io, message: "x".into() }),
            set: Some(SetInfo {
                pattern: "p".into(),
                policy: Default::default(),
                files: 1,
                done: 1,
                failed: 0,
                skipped: 0,
            }),
            ..sample(Status::InError)
        };
        store.insert(rec.clone(), "in").expect("insert");
        let mut heads = Vec::new();
        store.for_each_head(|h| heads.push(h)).expect("heads");
        let want = RecordHead {
            id: rec.id.clone(),
            role: rec.role,
            partner: rec.partner.clone(),
            rule: rec.rule.clone(),
            direction: rec.direction,
            file_name: rec.file_name.clone(),
            block_size: rec.block_size,
            compression: rec.compression,
            size: rec.size,
            transferred: rec.transferred,
            restart_offset: rec.restart_offset,
            status: rec.status,
        };
        assert_eq!(heads, [want]);
        assert_eq!(store.list_where(|s| s == Status::InError).expect("list"), [rec]);
        assert!(store.list_where(|s| s == Status::Done).expect("list").is_empty());
    }

    #[test]
    fn prune_removes_old_ended_requests_with_their_logs_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (old, cutoff, recent) = (1_000, 5_000, 9_000);
        let aged = |status: Status, created: u64, finished: Option<u64>| RequestRecord {
            created_at: created,
            updated_at: finished.unwrap_or(created),
            finished_at: finished,
            ..sample(status)
        };
        let put = |rec: RequestRecord| {
            let rec = store.insert(rec, "submitted").expect("insert");
            store.log(&rec.id, "a line of its job log").expect("log");
            rec
        };
        let gone = [put(aged(Status::Done, old, Some(old + 10))), put(aged(Status::Cancelled, old, Some(old + 10)))];
        let kept = [
            put(aged(Status::Running, old, None)),
            put(aged(Status::ToSubmit, old, None)),
            put(aged(Status::Interrupted, old, None)),
            put(aged(Status::InError, old, Some(old + 10))),
            // Created before the cutoff but finished after it.
            put(aged(Status::Done, old, Some(recent))),
            put(aged(Status::Done, recent, Some(recent))),
        ];
        // A cancelled request whose partner is still owed its notice.
        let owed = put(aged(Status::Cancelled, old, Some(old + 10)));
        store.owe_cancel_notice(&owed.id).expect("owed");
        // An old set goes with its files; a running set keeps its files.
        let (set, members) = set_of(3);
        let set = RequestRecord { status: Status::Done, created_at: old, finished_at: Some(old + 20), ..set };
        let members: Vec<RequestRecord> =
            members.into_iter().map(|m| RequestRecord { status: Status::Done, created_at: old, ..m }).collect();
        let member_ids: Vec<RequestId> = members.iter().map(|m| m.id.clone()).collect();
        store.insert_set(set.clone(), members, "set").expect("set");
        let (running, running_members) = set_of(2);
        let running = RequestRecord { created_at: old, ..running };
        store.insert_set(running.clone(), running_members, "running set").expect("set");
        // Old ended sets one of whose files must stay: a notice owed for a
        // held file, a file that failed.
        let mut held_sets = Vec::new();
        for (set_status, file_status) in [(Status::Cancelled, Status::Done), (Status::Cancelled, Status::InError)] {
            let (set, members) = set_of(2);
            let set = RequestRecord { status: set_status, created_at: old, finished_at: Some(old), ..set };
            let members: Vec<RequestRecord> =
                members.into_iter().map(|m| RequestRecord { status: file_status, created_at: old, ..m }).collect();
            store.insert_set(set.clone(), members, "set").expect("set");
            if file_status == Status::Done {
                store.owe_cancel_notice(&member_id(&set.id, 1)).expect("owed");
            }
            held_sets.push(set);
        }

        let pruned = store.prune(cutoff, 1_000).expect("pruned");
        assert_eq!((pruned.requests, pruned.more), (2 + 1 + 3, false), "{pruned:?}");
        assert!(pruned.log_lines >= 4, "{pruned:?}");
        for id in gone.iter().map(|r| &r.id).chain([&set.id]).chain(&member_ids) {
            assert!(store.get(id).expect("get").is_none(), "{id} is pruned");
            assert!(store.job_log(id).expect("log").is_empty(), "{id}'s job log is pruned");
        }
        for r in kept.iter().chain([&owed, &running]) {
            assert!(store.get(&r.id).expect("get").is_some(), "{:?} {} is kept", r.status, r.id);
            assert!(!store.job_log(&r.id).expect("log").is_empty());
        }
        for set in held_sets.iter().chain([&running]) {
            assert!(store.get(&set.id).expect("get").is_some(), "a set one of whose files must stay stays");
            for i in 0..2 {
                assert!(store.get(&member_id(&set.id, i)).expect("get").is_some(), "and so do its files");
            }
        }
        let listed = store.page(&ListQuery { limit: 100, ..Default::default() }).expect("page").records.len();
        assert_eq!(listed, kept.len() + 2 + held_sets.len(), "the listing no longer shows what was pruned");
        // A limit stops a call part-way and says more is left.
        let more = put(aged(Status::Done, old, Some(old)));
        let also = put(aged(Status::Done, old, Some(old)));
        let first = store.prune(cutoff, 1).expect("pruned");
        assert_eq!((first.requests, first.more), (1, true));
        assert_eq!(store.prune(cutoff, 1).expect("pruned").requests, 1);
        assert!(store.get(&more.id).expect("get").is_none() && store.get(&also.id).expect("get").is_none());
        assert_eq!(store.prune(cutoff, 1).expect("pruned"), Pruned::default(), "nothing left");
    }

    #[test]
    fn members_a_crash_left_without_their_set_are_removed_at_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // A cut submission: members written, the set's record (the commit
        // point) and the queue entries not.
        let (set, members) = set_of(3);
        for m in &members {
            store.requests.insert(m.id.as_str().as_bytes(), encode(m).expect("encode")).expect("insert");
        }
        // A whole set beside it keeps its members.
        let (whole, whole_members) = set_of(2);
        store.insert_set(whole.clone(), whole_members, "whole").expect("inserted");
        store.rebuild_queue().expect("rebuilt");
        for m in &members {
            assert!(store.get(&m.id).expect("get").is_none(), "an orphan of {} is removed", set.id);
        }
        assert_eq!(store.queued(10).expect("queued").len(), 2, "the whole set's members stay queued");
    }

    pub(crate) fn sample(status: Status) -> RequestRecord {
        RequestRecord {
            size: 10,
            block_size: 1 << 20,
            status,
            ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "r", Direction::Push, "f")
        }
    }

    #[test]
    fn open_handovers_count_per_partner_and_forget_ended_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let (a, b, done) = (sample(Status::ToSubmit), sample(Status::ToSubmit), sample(Status::ToSubmit));
        for rec in [&a, &b, &done] {
            s.insert(rec.clone(), "handed over").expect("insert");
        }
        s.note_handover("c", &a.id).expect("note");
        s.note_handover("c", &done.id).expect("note");
        s.note_handover("cc", &b.id).expect("note");
        assert_eq!(s.open_handovers("c").expect("count"), 2);
        s.update(&done.id, "finished", |r| r.status = Status::Done).expect("update");
        assert_eq!(s.open_handovers("c").expect("count"), 1, "an ended request no longer counts");
        assert_eq!(s.open_handovers("cc").expect("count"), 1, "a partner whose id extends another's is apart");
        assert_eq!(s.open_handovers("d").expect("count"), 0);
    }

    #[test]
    fn records_survive_reopen_and_keep_their_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = sample(Status::ToSubmit);
        {
            let s = Store::open(dir.path()).expect("open");
            s.insert(rec.clone(), "submitted").expect("insert");
            s.update(&rec.id, "", |r| r.status = Status::Running).expect("update");
            s.flush_blocking().expect("flush");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let back = s.get(&rec.id).expect("get").expect("present");
        assert_eq!(back.status, Status::Running);
        let log = s.job_log(&rec.id).expect("log");
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].message, "submitted");
        assert_eq!(log[1].status, Status::Running);
    }

    #[test]
    fn owed_cancel_notices_survive_reopen_until_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = sample(Status::Cancelled);
        {
            let s = Store::open(dir.path()).expect("open");
            assert!(s.notices_owed().expect("read").is_empty());
            s.owe_cancel_notice(&rec.id).expect("owe");
            s.owe_cancel_notice(&rec.id).expect("owing twice is one notice");
            s.flush_blocking().expect("flush");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.notices_owed().expect("read"), vec![(rec.id.clone(), Notice::Cancel)]);
        s.notice_given(&rec.id, Notice::Cancel).expect("given");
        assert!(s.notices_owed().expect("read").is_empty());
    }

    #[test]
    fn a_set_end_notice_is_given_only_for_the_end_it_told_of() {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = RequestId::generate();
        {
            let s = Store::open(dir.path()).expect("open");
            s.owe_set_end_notice(&set, 10).expect("owe");
            s.owe_cancel_notice(&set).expect("owe");
            s.flush_blocking().expect("flush");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let mut owed = s.notices_owed().expect("read");
        owed.sort_by_key(|(_, n)| n.kind());
        assert_eq!(owed, vec![(set.clone(), Notice::Cancel), (set.clone(), Notice::SetEnded { at: 10 })]);
        // Restarted and ended again while the first end was being told:
        // the answer to the first leaves the second owed.
        s.owe_set_end_notice(&set, 20).expect("owe");
        s.notice_given(&set, Notice::SetEnded { at: 10 }).expect("given");
        s.notice_given(&set, Notice::Cancel).expect("given");
        assert_eq!(s.notices_owed().expect("read"), vec![(set.clone(), Notice::SetEnded { at: 20 })]);
        s.notice_given(&set, Notice::SetEnded { at: 20 }).expect("given");
        assert!(s.notices_owed().expect("read").is_empty());
    }

    #[test]
    fn a_duplicate_id_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let rec = sample(Status::Running);
        s.insert(rec.clone(), "x").expect("first");
        assert!(matches!(s.insert(rec, "x"), Err(StoreError::Exists(_))));
    }

    #[test]
    fn the_queue_floor_is_raised_only_by_a_reader_no_lowering_came_after() {
        let floor = Floor::default();
        let (at, lowered) = floor.get();
        assert_eq!(at, 0);
        floor.raise_to(10, lowered);
        assert_eq!(floor.get().0, 10, "a reader raises it to the first entry it found");
        floor.raise_to(5, lowered);
        assert_eq!(floor.get().0, 10, "never lowered by a reader");
        // A reader began; entries numbered 7 on were written meanwhile.
        let (_, lowered) = floor.get();
        floor.lower_to(Some(7));
        assert_eq!(floor.get().0, 7);
        floor.raise_to(12, lowered);
        assert_eq!(floor.get().0, 7, "a reader that began before the lowering may have missed them");
        let (_, lowered) = floor.get();
        floor.raise_to(12, lowered);
        assert_eq!(floor.get().0, 12);
    }

    #[test]
    fn a_status_page_skips_who_left_the_status_and_finds_an_old_request_that_came_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let running = |s: &Store| {
            let q = ListQuery { status: Some(Status::Running), limit: 10, ..ListQuery::default() };
            s.page(&q).expect("page").records.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        let recs: Vec<_> = (0..40u64)
            .map(|i| s.insert(RequestRecord { created_at: 1_000 + i, ..sample(Status::Running) }, "r").expect("insert"))
            .collect();
        for r in &recs[..39] {
            s.update(&r.id, "", |r| r.status = Status::Done).expect("done");
        }
        assert_eq!(running(&s), [recs[39].id.clone()], "the floor is raised past the 39 that left");
        assert_eq!(s.status_floors[1].get().0, 1_039);
        // The oldest comes back to Running: below the raised floor.
        s.update(&recs[0].id, "", |r| r.status = Status::Running).expect("again");
        assert_eq!(running(&s), [recs[0].id.clone(), recs[39].id.clone()], "its write lowered the floor");
        // None left: the floor goes past every entry, and a new one lowers it.
        for r in [&recs[0], &recs[39]] {
            s.update(&r.id, "", |r| r.status = Status::Done).expect("done");
        }
        assert!(running(&s).is_empty());
        let again = s.insert(RequestRecord { created_at: 5, ..sample(Status::Running) }, "r").expect("insert");
        assert_eq!(running(&s), [again.id]);
        let done = ListQuery { status: Some(Status::Done), limit: 100, ..ListQuery::default() };
        assert_eq!(s.page(&done).expect("page").records.len(), 40, "other statuses are unaffected");
    }

    #[test]
    fn the_queue_passes_what_was_taken_and_finds_what_is_queued_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let (set, members) = set_of(3);
        let early: Vec<_> = (0..50).map(|_| s.insert(sample(Status::ToSubmit), "q").expect("insert")).collect();
        for r in &early[..49] {
            s.update(&r.id, "", |r| r.status = Status::Running).expect("take");
        }
        let q: Vec<_> = s.queued(10).expect("queued").into_iter().map(|r| r.id).collect();
        assert_eq!(q, [early[49].id.clone()], "the taken ones are passed, the floor raised");
        s.insert_set(set, members, "set").expect("set");
        let q = s.queued(10).expect("queued");
        assert_eq!(q.len(), 4, "the set's files are found past the raised floor: {q:?}");
        assert_eq!(q[0].id, early[49].id);
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.queued(10).expect("queued").len(), 4, "and after a restart");
    }

    #[test]
    fn the_queue_follows_the_status_in_submission_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let recs: Vec<_> = (0..5).map(|_| s.insert(sample(Status::ToSubmit), "q").expect("insert")).collect();
        let q: Vec<_> = s.queued(10).expect("queued").into_iter().map(|r| r.id).collect();
        assert_eq!(q, recs.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
        s.update(&recs[1].id, "", |r| r.status = Status::Running).expect("run");
        assert_eq!(s.queued(10).expect("queued").len(), 4);
        s.update(&recs[1].id, "", |r| r.status = Status::ToSubmit).expect("requeue");
        let q: Vec<_> = s.queued(10).expect("queued").into_iter().map(|r| r.id).collect();
        assert_eq!(q.last(), Some(&recs[1].id), "a re-queued request goes to the back");
        assert_eq!(s.queued(2).expect("queued").len(), 2);
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open_db(dir.path()).expect("fjall");
            let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).expect("meta");
            meta.insert("schema", 99u32.to_be_bytes()).expect("insert");
            db.persist(fjall::PersistMode::SyncAll).expect("flush");
        }
        let err = Store::open(dir.path()).expect_err("refused");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let s = s.clone();
            set.spawn(async move {
                s.insert(sample(Status::ToSubmit), "x").expect("insert");
                s.flush().await
            });
        }
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            r.expect("task").expect("flushed");
            n += 1;
        }
        assert_eq!(n, 200);
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.list(None).expect("list").len(), 200);
    }

    #[test]
    fn list_filters_by_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.insert(sample(Status::Done), "x").expect("insert");
        s.insert(sample(Status::InError), "x").expect("insert");
        assert_eq!(s.list(None).expect("all").len(), 2);
        assert_eq!(s.list(Some(Status::Done)).expect("done").len(), 1);
        assert_eq!(Status::parse("inerror"), Some(Status::InError));
    }

    #[test]
    fn a_page_follows_status_changes_and_ignores_left_over_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let rec = s.insert(sample(Status::ToSubmit), "x").expect("insert");
        let page = |status: Option<Status>| {
            let q = ListQuery { status, limit: 10, ..Default::default() };
            s.page(&q).expect("page").records.into_iter().map(|r| r.id.to_string()).collect::<Vec<_>>()
        };
        let id = rec.id.to_string();
        assert_eq!(page(Some(Status::ToSubmit)), [id.as_str()]);
        let done = s.update(&rec.id, "done", |r| r.status = Status::Done).expect("update");
        assert_eq!(page(Some(Status::Done)), [id.as_str()]);
        assert!(page(Some(Status::ToSubmit)).is_empty(), "the old entry was removed");
        // A crash between the record and the clean-up leaves the old entry;
        // and an entry naming a time the record does not have is skipped too.
        for k in listing::keys(&rec) {
            s.listing.insert(k, EMPTY).expect("left over");
        }
        s.listing
            .insert(listing::keys(&RequestRecord { created_at: 1, ..done.clone() }).pop_first().expect("key"), EMPTY)
            .expect("left over");
        assert!(
            page(Some(Status::ToSubmit)).is_empty(),
            "a left-over entry does not list a record under its old status"
        );
        assert_eq!(page(None), [id.as_str()], "nor twice");
        assert_eq!(page(Some(Status::Done)), [id.as_str()]);
    }

    #[test]
    fn racing_status_changes_leave_every_current_key_in_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let rec = s.insert(sample(Status::Running), "x").expect("insert");
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (s, id) = (&s, &rec.id);
                scope.spawn(move || {
                    for i in 0..300 {
                        let status = if (t + i) % 2 == 0 { Status::Running } else { Status::Interrupted };
                        s.update(id, "", |r| r.status = status).expect("update");
                    }
                });
            }
        });
        let current = s.get(&rec.id).expect("read").expect("record");
        for k in listing::keys(&current) {
            assert!(s.listing.contains_key(&k).expect("read"), "a current key is missing after the race");
        }
        let q = ListQuery { status: Some(current.status), limit: 10, ..Default::default() };
        assert_eq!(s.page(&q).expect("page").records.len(), 1);
    }
}
