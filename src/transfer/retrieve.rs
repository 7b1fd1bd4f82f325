//! The RetrieveRunner: the sending side's block pump.
//!
//! It runs on a blocking thread of its own (file reads and BLAKE3 are CPU and
//! disk work that must not stall the async executor) and hands encoded frames
//! to the runner through a small bounded channel, so reading and hashing the
//! next blocks overlaps with QUIC sending the previous ones. Under a
//! simulation ([`crate::determinism::inline_io`]) it reads the whole (small)
//! file at once on the runner's task instead, so no thread races the
//! simulated clock.
//!
//! Invariants: blocks are produced in order, contiguous from the plan's
//! restart offset to the announced size. The whole-file BLAKE3 covers the file
//! from offset 0 (the prefix before a restart offset is read and hashed, not
//! resent), so a resumed transfer still ends with an end-to-end check. Each
//! block is hashed once: its digest and its part of the whole-file digest
//! come from the same pass ([`crate::protocol::block_hash`]). If the
//! source's size or modification time differs from when the transfer began,
//! the pump fails with [`ErrorCode::SourceChanged`] instead of finishing.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::send_pool::{frame_bytes, SendSlots};
use crate::protocol::codec;
use crate::protocol::{Compression, EndTransfer, ErrorCode, Plan};

/// Frames buffered between the pump and the network: enough to keep the
/// stream busy while the next block is read, little enough to bound memory.
const PIPELINE_DEPTH: usize = 4;

/// A file this small that fits in one block is read, hashed and encoded on
/// the runner's own task: a thread hand-off would cost more than the work.
const INLINE_MAX: u64 = 64 * 1024;

/// What the pump reports to its runner.
#[derive(Debug)]
pub enum PumpEvent {
    /// An encoded Data frame, and the offset just past its block.
    Frame { frame: Bytes, end: u64 },
    /// Every block was produced; the file did not change meanwhile.
    Finished(EndTransfer),
    /// The pump stopped: the source could not be read or changed.
    Failed { code: ErrorCode, message: String },
}

/// What the pump needs to know about the source when the transfer began.
#[derive(Clone, Debug)]
pub struct SourceSnapshot {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl SourceSnapshot {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        SourceSnapshot { size: meta.len(), modified: meta.modified().ok() }
    }

    /// A file as its file set resolved it (`modified_ns` 0: unknown).
    pub fn resolved(size: u64, modified_ns: u128) -> Self {
        let modified = (modified_ns > 0).then(|| {
            let ns = u64::try_from(modified_ns).unwrap_or(u64::MAX);
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns)
        });
        SourceSnapshot { size, modified }
    }

    /// What differs in `now`, with both values, or `None` if nothing does.
    pub fn change_to(&self, now: &SourceSnapshot) -> Option<String> {
        let mut what = Vec::new();
        if now.size != self.size {
            what.push(format!("its size went from {} to {} bytes", self.size, now.size));
        }
        if now.modified != self.modified {
            what.push(format!(
                "its modification time went from {} to {}",
                unix_time(self.modified),
                unix_time(now.modified)
            ));
        }
        (!what.is_empty()).then(|| what.join(" and "))
    }
}

/// A file time as Unix seconds with nanoseconds (`unknown` if the file
/// system has none).
fn unix_time(t: Option<SystemTime>) -> String {
    match t.map(|t| t.duration_since(SystemTime::UNIX_EPOCH)) {
        Some(Ok(d)) => format!("{}.{:09} (Unix time)", d.as_secs(), d.subsec_nanos()),
        Some(Err(_)) => "a time before 1970".into(),
        None => "unknown".into(),
    }
}

/// A file a rule sends, opened once inside the rule's send folder: every
/// later read (the resume check, the pump) goes through this handle, never
/// through the path again, so what was checked is what is sent.
#[derive(Clone, Debug)]
pub struct Source {
    /// For messages only.
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Its size and modification time when it was opened.
    pub snapshot: SourceSnapshot,
}

/// Opens `name` in the send folder `dir` of `rule`, confined to that folder:
/// the one check that serves a push (the file this node sends) and a pull
/// (the file a partner asks for).
///
/// `name` is a plain name (checked by
/// [`check_file_name`](crate::protocol::names::check_file_name): no
/// separator, no `..`), so only its last component can lead elsewhere; it is
/// opened with `O_NOFOLLOW`, which refuses a symbolic link there, and
/// `O_NONBLOCK`, so a FIFO cannot hold the opener. What was opened is then
/// checked to be a regular file. Check and use are one open file, with no
/// window for the name to be swapped in between.
///
/// A file set's member names a relative path (`a/b/c.csv`, checked by
/// [`check_relative_path`](crate::protocol::names::check_relative_path)):
/// each folder on the way must be a real folder, not a symbolic link.
///
/// A name ending in `/` is a file set's empty folder: it must be a real
/// folder (no link on the way or at the end), and what is sent is an empty
/// anonymous file, so the folder travels as a transfer of 0 bytes that the
/// receiver turns into a folder.
pub fn open_source(dir: &Path, name: &str, rule: &str, node: &str) -> Result<Source, (ErrorCode, String)> {
    if let Err(why) = crate::protocol::names::check_entry_path(name) {
        return Err((ErrorCode::BadFileName, why));
    }
    if let Some(folder) = name.strip_suffix('/') {
        return open_folder_entry(dir, folder, rule, node);
    }
    if let Some((folders, _)) = name.rsplit_once('/') {
        folder_below(dir, folders, name, rule, node)?;
    }
    let path = dir.join(name);
    let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err((
                ErrorCode::FileNotFound,
                format!(
                    "{name:?} in the send folder of rule {rule:?} on node {node} is a symbolic link; \
                     a rule sends only regular files inside its folder"
                ),
            ))
        }
        Err(e) => {
            return Err((
                ErrorCode::FileNotFound,
                format!("file {name:?} not found in the send folder of rule {rule:?} on node {node}: {e}"),
            ))
        }
    };
    let meta = file.metadata().map_err(|e| io_err(&path, "stat", e))?;
    if !meta.is_file() {
        return Err((
            ErrorCode::FileNotFound,
            format!("{name:?} in the send folder of rule {rule:?} on node {node} is not a regular file"),
        ));
    }
    Ok(Source { path, file: Arc::new(file), snapshot: SourceSnapshot::of(&meta) })
}

/// What [`open_source`] can check of `dir/name` before the file is opened,
/// for a sender whose pre-tasks run first (they may make the file): a
/// plain relative path, and no symbolic link on the way or at its end
/// among what exists already. A task must not act, through a link, on a
/// file outside the send folder that the transfer itself would refuse.
pub fn check_source_path(dir: &Path, name: &str, rule: &str, node: &str) -> Result<(), (ErrorCode, String)> {
    if let Err(why) = crate::protocol::names::check_entry_path(name) {
        return Err((ErrorCode::BadFileName, why));
    }
    let mut path = dir.to_path_buf();
    for component in name.trim_end_matches('/').split('/') {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err((
                    ErrorCode::FileNotFound,
                    format!(
                        "{name:?} in the send folder of rule {rule:?} on node {node} is or passes a symbolic link; \
                         a rule sends only regular files inside its folder"
                    ),
                ))
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// `dir/folders`, checked folder by folder: each must be a real folder,
/// never a symbolic link (a link would lead out of the rule's folder).
/// `name` is what the messages call the file or folder asked for.
fn folder_below(dir: &Path, folders: &str, name: &str, rule: &str, node: &str) -> Result<PathBuf, (ErrorCode, String)> {
    let mut path = dir.to_path_buf();
    for component in folders.split('/') {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err((
                    ErrorCode::FileNotFound,
                    format!(
                        "{} in the send folder of rule {rule:?} on node {node} is a symbolic link; \
                         a rule sends only what is inside its folder, never through a link",
                        path.display()
                    ),
                ))
            }
            _ => {
                return Err((
                    ErrorCode::FileNotFound,
                    format!("{name:?} not found in the send folder of rule {rule:?} on node {node}"),
                ))
            }
        }
    }
    Ok(path)
}

/// A file set's empty folder as a source: checked to be a real folder
/// below `dir` (no link anywhere on its path), sent as an empty anonymous
/// file (an unnamed temporary file), whose size and time never change.
fn open_folder_entry(dir: &Path, folder: &str, rule: &str, node: &str) -> Result<Source, (ErrorCode, String)> {
    let path = folder_below(dir, folder, folder, rule, node)?;
    // An unnamed temporary file: empty, seen by no one, gone when closed.
    let file = tempfile::tempfile().map_err(|e| io_err(&path, "make an empty file for", e))?;
    let meta = file.metadata().map_err(|e| io_err(&path, "stat", e))?;
    Ok(Source { path, file: Arc::new(file), snapshot: SourceSnapshot::of(&meta) })
}

/// Starts pumping `source` per `plan`. Dropping the receiver, or setting `stop`,
/// ends the pump at the next block.
///
/// `prefix` is the source's hash state over `plan.restart_offset` bytes when
/// the caller already computed it to check a resume (read again otherwise).
///
/// `slots` bound what the pump's frames hold in memory until the partner
/// has them ([`super::send_pool`]); a file small enough to be encoded
/// inline, or a simulated one, takes no room.
pub fn start(
    source: Source,
    plan: Plan,
    prefix: Option<super::Prefix>,
    stop: Arc<AtomicBool>,
    slots: Option<SendSlots>,
) -> mpsc::Receiver<PumpEvent> {
    let prefix =
        prefix.filter(|p| p.offset == plan.restart_offset && p.hasher.block_size() == u64::from(plan.block_size));
    let remaining = plan.size - plan.restart_offset.min(plan.size);
    // A simulation has no threads to overlap with: it reads the (small)
    // file at once, and the channel holds every frame.
    let simulated = crate::determinism::inline_io();
    let frames = usize::try_from(remaining.div_ceil(u64::from(plan.block_size.max(1)))).unwrap_or(usize::MAX);
    let (tx, rx) = mpsc::channel(if simulated { frames.saturating_add(1).max(1) } else { PIPELINE_DEPTH });
    if simulated || (remaining <= INLINE_MAX && remaining <= u64::from(plan.block_size)) {
        // Every frame and the final event fit in the channel.
        let last = finish(pump(&source, &plan, prefix, &stop, None, &mut |ev| tx.try_send(ev).is_ok()));
        if let Some(last) = last {
            let _ = tx.try_send(last);
        }
        return rx;
    }
    tokio::task::spawn_blocking(move || {
        let last = finish(pump(&source, &plan, prefix, &stop, slots.as_ref(), &mut |ev| tx.blocking_send(ev).is_ok()));
        if let Some(last) = last {
            let _ = tx.blocking_send(last);
        }
    });
    rx
}

fn finish(r: PumpResult<Option<EndTransfer>>) -> Option<PumpEvent> {
    match r {
        Ok(Some(end)) => Some(PumpEvent::Finished(end)),
        Ok(None) => None,
        Err((code, message)) => Some(PumpEvent::Failed { code, message }),
    }
}

type PumpResult<T> = Result<T, (ErrorCode, String)>;

fn io_err(path: &Path, what: &str, e: std::io::Error) -> (ErrorCode, String) {
    (ErrorCode::Io, format!("cannot {what} {}: {e}", path.display()))
}

/// Returns `Ok(None)` when stopped or when nobody listens any more.
fn pump(
    source: &Source,
    plan: &Plan,
    prefix: Option<super::Prefix>,
    stop: &AtomicBool,
    slots: Option<&SendSlots>,
    send: &mut dyn FnMut(PumpEvent) -> bool,
) -> PumpResult<Option<EndTransfer>> {
    let (file, path, snapshot) = (&source.file, source.path.as_path(), &source.snapshot);
    let changed = |now: &SourceSnapshot| {
        snapshot.change_to(now).map(|what| {
            (ErrorCode::SourceChanged, format!("source {} changed during the transfer: {what}", path.display()))
        })
    };
    let meta = file.metadata().map_err(|e| io_err(path, "stat", e))?;
    if let Some(e) = changed(&SourceSnapshot::of(&meta)) {
        return Err(e);
    }
    if snapshot.size != plan.size {
        return Err((
            ErrorCode::SourceChanged,
            format!("source is {} bytes, {} were announced", snapshot.size, plan.size),
        ));
    }
    let block = plan.block_size as usize;
    // Compression reads each block into this buffer first (sized on first
    // use); a raw block is read straight into its frame.
    let mut buf = Vec::new();
    // The prefix that is not resent is still hashed, so the final check covers the whole file.
    let mut whole = match prefix {
        Some(p) => p.hasher,
        None => super::hash_prefix_of(file, plan.restart_offset, plan.block_size, Some(plan.size))
            .map_err(|e| io_err(path, "read", e))?
            .ok_or_else(|| {
                (ErrorCode::Internal, format!("restart offset {} is not on a block boundary", plan.restart_offset))
            })?,
    };
    let mut offset = plan.restart_offset;
    while offset < plan.size {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = block.min((plan.size - offset) as usize);
        // Room for the frame before its block is read: the read-ahead is
        // bounded by the node's pool, not only by the channel.
        let hold = match slots {
            Some(slots) => match slots.hold(n + codec::DATA_FRAME_ROOM, stop) {
                Some(hold) => Some(hold),
                None => return Ok(None),
            },
            None => None,
        };
        let raw_len = u32::try_from(n).expect("a block is at most MAX_BLOCK_SIZE");
        let read = |raw: &mut [u8]| match file.read_exact_at(raw, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err((ErrorCode::SourceChanged, format!("source {} shrank during the transfer", path.display())))
            }
            Err(e) => Err(io_err(path, "read", e)),
        };
        // The block's digest and its part of the whole file's, in one pass.
        let mut hash = |raw: &[u8]| {
            whole.add(plan.size, raw).ok_or_else(|| {
                (ErrorCode::Internal, format!("the block at {offset} does not fit blocks of {}", plan.block_size))
            })
        };
        let encoded = match plan.compression {
            Compression::None => codec::encode_data_filled(offset, raw_len, |room| {
                read(room)?;
                hash(room)
            }),
            Compression::Lz4 => {
                buf.resize(block.min(usize::try_from(plan.size).unwrap_or(usize::MAX)), 0);
                let raw = &mut buf[..n];
                read(raw)?;
                let digest = hash(raw)?;
                let compressed = lz4_flex::block::compress(raw);
                Ok(Ok(if compressed.len() < n {
                    codec::encode_data(offset, raw_len, true, digest, &compressed)
                } else {
                    codec::encode_data(offset, raw_len, false, digest, raw)
                }
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?))
            }
        };
        let frame = encoded.map_err(|e| (ErrorCode::Internal, e.to_string()))??;
        offset += n as u64;
        if !send(PumpEvent::Frame { frame: frame_bytes(frame, hold), end: offset }) {
            return Ok(None);
        }
    }
    let meta = file.metadata().map_err(|e| io_err(path, "stat", e))?;
    if let Some(e) = changed(&SourceSnapshot::of(&meta)) {
        return Err(e);
    }
    Ok(Some(EndTransfer { bytes: offset, hash: whole.digest() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_relative_path_or_folder_through_a_link_is_refused_and_a_real_one_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("send");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("real/empty")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(root.join("real/f.csv"), b"data").expect("write");
        std::fs::write(outside.join("secret.csv"), b"secret").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("linked")).expect("link");
        let opened = open_source(&root, "real/f.csv", "r", "a").expect("a real path opens");
        assert_eq!(opened.snapshot.size, 4);
        let folder = open_source(&root, "real/empty/", "r", "a").expect("a real folder opens");
        assert_eq!(folder.snapshot.size, 0, "a folder is sent as 0 bytes");
        for name in ["linked/secret.csv", "linked/", "real/../linked/secret.csv", "missing/f.csv", "real/f.csv/"] {
            let (code, _) = open_source(&root, name, "r", "a").expect_err(name);
            assert!(matches!(code, ErrorCode::FileNotFound | ErrorCode::BadFileName), "{name}: {code:?}");
        }
        let (_, why) = open_source(&root, "linked/secret.csv", "r", "a").expect_err("through a link");
        assert!(why.contains("symbolic link"), "{why}");
    }

    #[test]
    fn a_changed_source_says_what_changed_with_both_values() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::new(1_764_410_000, 5);
        let before = SourceSnapshot { size: 1 << 30, modified: Some(t0) };
        assert_eq!(before.change_to(&before.clone()), None);
        let touched = SourceSnapshot { modified: Some(t0 + Duration::from_secs(2)), ..before.clone() };
        let msg = before.change_to(&touched).expect("changed");
        assert_eq!(
            msg,
            "its modification time went from 1764410000.000000005 (Unix time) to 1764410002.000000005 (Unix time)"
        );
        assert!(!msg.contains("size"), "the size did not change: {msg}");
        let grown = SourceSnapshot { size: (1 << 30) + 1, ..before.clone() };
        assert_eq!(before.change_to(&grown).expect("changed"), "its size went from 1073741824 to 1073741825 bytes");
        let both = SourceSnapshot { size: 7, modified: None };
        let msg = before.change_to(&both).expect("changed");
        assert!(msg.contains("size went from 1073741824 to 7 bytes and its modification time"), "{msg}");
        assert!(msg.ends_with("to unknown"), "{msg}");
    }
}
