//! Moves a store an earlier release wrote with sled (schema 6 or older:
//! ferry up to 38183ee) into fjall (schema 7), once, when
//! [`Store::open`](super::Store::open) finds one.
//!
//! Order, each step done before the next:
//! 1. the sled store is brought to schema 6 in place (`migrate.rs`);
//! 2. every entry of every tree is copied into a new fjall store in the
//!    sibling folder `STORE.moving` (one a crash left is removed first),
//!    with `meta`'s schema 7 and where the sequence starts (sled's next id,
//!    beyond every number sled gave), then fsynced: the copy is durable
//!    before anything is renamed;
//! 3. the sled folder is renamed `STORE.sled`;
//! 4. `STORE.moving` is renamed `STORE`, and their parent folder fsynced,
//!    which makes both renames durable (one folder's renames are recorded
//!    in the order made).
//!
//! The whole move holds an exclusive lock on `STORE.move-lock`, so two
//! processes started on one store at once never both move it.
//!
//! A crash before step 3 leaves the sled store where it was, and the next
//! open moves it again. A crash between 3 and 4 leaves no `STORE`, with
//! both folders beside it: the next open finishes step 4. The sled folder
//! is kept: with it an operator can go back to the earlier release (the
//! requests made since are not in it), or remove it.

use std::path::{Path, PathBuf};

use super::{StoreError, SCHEMA_VERSION};

/// The last schema written with sled.
pub(super) const LAST_SLED_SCHEMA: u32 = 6;

/// sled's own tree, which ferry never wrote to.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// Entries per fjall batch while copying.
const COPY_BATCH: usize = 10_000;

/// What a move did.
pub(super) struct Moved {
    /// The schema the sled store had.
    pub schema: u32,
    /// Requests moved (a set's files included).
    pub records: usize,
    /// Where the sled folder is kept.
    pub kept: PathBuf,
}

/// Whether `dir` holds a sled database (fjall writes neither file).
fn is_sled(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// `STORE.ext` beside `dir`.
fn sibling(dir: &Path, ext: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".");
    name.push(ext);
    dir.with_file_name(name)
}

/// Moves the sled store in `dir` into fjall, if `dir` holds one (or
/// finishes a move a crash cut short); `None` when there was nothing to do.
///
/// The move holds an exclusive lock on `STORE.move-lock` from its first
/// look to its last rename, so two processes started on one store at once
/// never move it both (the second finds the move done, then fjall's own
/// lock stops it).
pub(super) fn move_if_sled(dir: &Path) -> Result<Option<Moved>, StoreError> {
    let (moving, kept) = (sibling(dir, "moving"), sibling(dir, "sled"));
    let to_do = |dir: &Path| is_sled(dir) || (!dir.exists() && moving.is_dir() && kept.is_dir());
    if !to_do(dir) {
        return Ok(None);
    }
    let failed = |what: &str, e| move_failed(dir, what, e);
    let lock_path = sibling(dir, "move-lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| failed(&format!("cannot open {}", lock_path.display()), e))?;
    lock.lock().map_err(|e| failed(&format!("cannot lock {}", lock_path.display()), e))?;
    // Another process may have moved it while this one waited.
    let moved = if to_do(dir) { move_locked(dir, &moving, &kept) } else { Ok(None) };
    let _ = std::fs::remove_file(&lock_path);
    drop(lock);
    moved
}

/// The move of the store in `dir` failed at `what`.
fn move_failed(dir: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Move { path: dir.display().to_string(), reason: format!("{what}: {e}") }
}

fn move_locked(dir: &Path, moving: &Path, kept: &Path) -> Result<Option<Moved>, StoreError> {
    let failed = |what: &str, e| move_failed(dir, what, e);
    if !dir.exists() && moving.is_dir() && kept.is_dir() {
        // A crash between steps 3 and 4.
        std::fs::rename(moving, dir).map_err(|e| failed("cannot rename the fjall store into place", e))?;
        sync_parent(dir).map_err(|e| failed("cannot fsync the store's parent folder", e))?;
        tracing::info!(path = %dir.display(), kept = %kept.display(), "finished moving the store from sled to fjall");
    }
    if !is_sled(dir) {
        return Ok(None);
    }
    if kept.exists() {
        return Err(StoreError::Move {
            path: dir.display().to_string(),
            reason: format!("{} is in the way (where the sled store is to be kept); move it elsewhere", kept.display()),
        });
    }
    let (schema, records) = {
        let sled = open_sled(dir)?;
        let meta = sled.open_tree("meta")?;
        let found = match meta.get("schema")? {
            Some(v) => v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        if found != LAST_SLED_SCHEMA && super::migrate::migrate(&sled, found)?.is_none() {
            return Err(StoreError::Move {
                path: dir.display().to_string(),
                reason: format!(
                    "it is a sled store at schema {found}; this build moves sled stores at schemas 3 to {LAST_SLED_SCHEMA}"
                ),
            });
        }
        (found, copy(&sled, moving)?)
    };
    std::fs::rename(dir, kept).map_err(|e| failed("cannot rename the sled store aside", e))?;
    std::fs::rename(moving, dir).map_err(|e| failed("cannot rename the fjall store into place", e))?;
    sync_parent(dir).map_err(|e| failed("cannot fsync the store's parent folder", e))?;
    Ok(Some(Moved { schema, records, kept: kept.to_path_buf() }))
}

/// Step 2: every tree of `sled` into a new fjall store at `to`; returns
/// the requests copied.
fn copy(sled: &sled::Db, to: &Path) -> Result<usize, StoreError> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| StoreError::Move {
            path: to.display().to_string(),
            reason: format!("cannot remove what an interrupted move left: {e}"),
        })?;
    }
    let db = super::open_db(to)?;
    let mut records = 0;
    for name in sled.tree_names() {
        if name.as_ref() == SLED_DEFAULT_TREE || name.as_ref() == b"meta" {
            continue;
        }
        let text = std::str::from_utf8(&name)
            .map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&name).into_owned(),
                reason: "a tree name that is not UTF-8".into(),
            })?
            .to_owned();
        let tree = sled.open_tree(&name)?;
        let keyspace = db.keyspace(&text, super::keyspace_options)?;
        let mut batch = db.batch();
        for kv in tree.iter() {
            let (k, v) = kv?;
            batch.insert(&keyspace, k.as_ref(), v.as_ref());
            if text == "requests" {
                records += 1;
            }
            if batch.len() >= COPY_BATCH {
                std::mem::replace(&mut batch, db.batch()).commit()?;
            }
        }
        batch.commit()?;
    }
    let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default)?;
    // sled's next id is beyond every id it gave (queue and job-log keys).
    meta.insert(super::Sequence::KEY, sled.generate_id()?.to_be_bytes())?;
    meta.insert("schema", SCHEMA_VERSION.to_be_bytes())?;
    db.persist(fjall::PersistMode::SyncAll)?;
    Ok(records)
}

/// Opens sled, waiting (bounded) for its file lock: sled releases the lock
/// of a database dropped in this process from a background thread, a moment
/// after the last handle is gone.
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse { path: dir.display().to_string() });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

fn sync_parent(dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}
