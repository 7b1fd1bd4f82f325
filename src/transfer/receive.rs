//! The receiving side's work file: blocks are checked and written off the
//! async executor (by a `WorkFile` on a blocking thread; on a task of its
//! own, block by block, under a simulation), then the file is verified and
//! delivered.
//!
//! Crash and delivery guarantees:
//! - Blocks go into a work file `RECV_DIR/.ferry-work/REQUEST_ID.part`, never
//!   under the final name.
//! - Each block's BLAKE3 is checked before it is written; a mismatch fails the
//!   transfer.
//! - At the end the work file is fsynced; only if the byte count and the
//!   whole-file BLAKE3 match the sender's is it renamed atomically to its
//!   final name, and the folder is fsynced so the rename itself is durable.
//!   A file whose check fails is never delivered under its final name.
//!
//! Writes use `O_DIRECT` where the file system allows it: full, aligned
//! blocks go from an aligned buffer straight to the device, without the
//! page-cache copy (the largest CPU cost of receiving on a 2-core machine)
//! and without leaving a file's worth of dirty pages for the final fsync to
//! write back. The last, shorter block, and file systems that refuse
//! `O_DIRECT` (tmpfs), use ordinary buffered writes. Either way the data is
//! only durable after the final `sync_all`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::block_hash::FileHasher;
use crate::protocol::{Data, EndTransfer, ErrorCode, Plan, RequestId};
use crate::store::{RestartPoint, Store};

/// Where and how often the writer records restart points.
#[derive(Clone, Debug)]
pub struct RestartPoints {
    pub store: Store,
    /// Set when a newer run of the request took over: this writer stops
    /// writing and recording at once.
    pub abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub id: RequestId,
    /// Record after this many bytes since the last point (0: never by size)...
    pub every_bytes: u64,
    /// ...or after this long (zero: never by time).
    pub every: std::time::Duration,
}

impl RestartPoints {
    fn due(&self, bytes: u64, since: tokio::time::Instant) -> bool {
        (self.every_bytes > 0 && bytes >= self.every_bytes) || (!self.every.is_zero() && since.elapsed() >= self.every)
    }

    /// fsyncs the work file, then records the point and flushes the store,
    /// in that order: a recorded point never runs ahead of durable data.
    fn record(&self, file: &File, work: &Path, offset: u64, whole: &FileHasher) -> Result<(), Failure> {
        if self.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(()); // a newer run owns the record
        }
        file.sync_data().map_err(|e| io_failure("fsync", work, e))?;
        let point = RestartPoint { offset, prefix_hash: whole.digest() };
        self.store
            .update(&self.id, "", |r| r.restart_point = Some(point))
            .and_then(|_| self.store.flush_blocking())
            .map_err(|e| (ErrorCode::Internal, format!("cannot record a restart point: {e}")))?;
        tracing::debug!(request_id = %self.id, offset, "restart point");
        Ok(())
    }
}

/// Name of the work-file folder inside a receive folder (its name uses the
/// reserved prefix, so no partner file can collide with it).
pub const WORK_DIR: &str = ".ferry-work";

/// Blocks buffered between the network and the disk.
const PIPELINE_DEPTH: usize = 8;

/// Alignment `O_DIRECT` needs for buffers, offsets and lengths (the largest
/// logical block size in common use).
const DIRECT_ALIGN: usize = 4096;

/// A buffer whose start is aligned for `O_DIRECT`, carved out of a Vec so no
/// unsafe allocation is needed.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(capacity: usize) -> AlignedBuf {
        let storage = vec![0u8; capacity + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { storage, start, len: 0 }
    }

    /// The first `len` bytes, for writing into.
    fn fill(&mut self, len: usize) -> &mut [u8] {
        self.len = len;
        &mut self.storage[self.start..self.start + len]
    }

    fn filled(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// Opens the work file, with `O_DIRECT` when the file system supports it.
fn open_work(work: &Path) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    match opts.clone().custom_flags(libc::O_DIRECT).open(work) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((opts.open(work)?, false)),
        Err(e) => Err(e),
    }
}

/// Turns `O_DIRECT` off on an open file (for a last, unaligned block).
fn clear_direct(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

type Failure = (ErrorCode, String);

/// Where a request's work file lives.
pub fn work_path(recv_dir: &Path, id: &RequestId) -> PathBuf {
    recv_dir.join(WORK_DIR).join(format!("{id}.part"))
}

/// Receives blocks into a work file.
pub struct BlockWriter {
    mode: Mode,
}

impl std::fmt::Debug for BlockWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Threaded { .. } => "threaded",
            Mode::Held(_) => "held",
        };
        f.debug_struct("BlockWriter").field("mode", &mode).finish_non_exhaustive()
    }
}

enum Mode {
    /// A writer thread takes the blocks as they come.
    Threaded { tx: Option<mpsc::Sender<Data>>, handle: JoinHandle<Result<EndTransfer, Failure>> },
    /// A file of one block from its start: the block is held until
    /// [`BlockWriter::finish`], which opens, writes and fsyncs the work file
    /// in one blocking task (no thread waits for blocks, no hand-off per
    /// block). A second block is held too (the work file then refuses it as
    /// past the file's end); a third stops the writer.
    Held(Box<Held>),
}

/// What a held writer keeps until [`BlockWriter::finish`].
struct Held {
    work: PathBuf,
    plan: Plan,
    points: Option<RestartPoints>,
    blocks: Vec<Data>,
}

/// Blocks a held writer keeps before it stops (see [`Mode::Held`]).
const HELD_BLOCKS: usize = 2;

impl BlockWriter {
    /// Opens the work file, keeping its first `plan.restart_offset` bytes.
    /// `prefix` is the hash state of exactly those bytes when the caller
    /// already has it (it is read and hashed again otherwise).
    pub fn start(
        work: PathBuf,
        plan: Plan,
        prefix: Option<super::Prefix>,
        points: Option<RestartPoints>,
    ) -> BlockWriter {
        let one_block = plan.restart_offset == 0 && plan.size <= u64::from(plan.block_size);
        if one_block && !crate::determinism::inline_io() {
            return BlockWriter { mode: Mode::Held(Box::new(Held { work, plan, points, blocks: Vec::new() })) };
        }
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        let prefix =
            prefix.filter(|p| p.offset == plan.restart_offset && p.hasher.block_size() == u64::from(plan.block_size));
        let handle = if crate::determinism::inline_io() {
            // A simulation writes on a task of its own, each block inline.
            tokio::spawn(async move {
                let mut rx = rx;
                let mut file = WorkFile::open(work, &plan, prefix, points)?;
                while let Some(block) = rx.recv().await {
                    file.write(block)?;
                }
                file.finish()
            })
        } else {
            tokio::task::spawn_blocking(move || write_blocks(work, &plan, prefix, points, rx))
        };
        BlockWriter { mode: Mode::Threaded { tx: Some(tx), handle } }
    }

    /// Queues a block. `false` means the writer stopped: call [`Self::finish`] for why.
    pub async fn write(&mut self, block: Data) -> bool {
        match &mut self.mode {
            Mode::Threaded { tx: Some(tx), .. } => tx.send(block).await.is_ok(),
            Mode::Threaded { tx: None, .. } => false,
            Mode::Held(held) if held.blocks.len() < HELD_BLOCKS => {
                held.blocks.push(block);
                true
            }
            Mode::Held(_) => false,
        }
    }

    /// Ends the stream of blocks; returns the count and whole-file hash of the
    /// fsynced work file, or why writing failed.
    pub async fn finish(self) -> Result<EndTransfer, Failure> {
        let handle = match self.mode {
            Mode::Threaded { tx, handle } => {
                drop(tx);
                handle
            }
            Mode::Held(held) => tokio::task::spawn_blocking(move || {
                let Held { work, plan, points, blocks } = *held;
                let mut file = WorkFile::open(work, &plan, None, points)?;
                for block in blocks {
                    file.write(block)?;
                }
                file.finish()
            }),
        };
        match handle.await {
            Ok(r) => r,
            Err(e) => Err((ErrorCode::Internal, format!("block writer panicked: {e}"))),
        }
    }
}

/// An I/O error on `path` as a failure: a full disk (no blocks or no
/// inodes left) is `NoSpace`, anything else `Io`.
pub fn io_failure(what: &str, path: &Path, e: std::io::Error) -> Failure {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return (ErrorCode::NoSpace, format!("disk full while trying to {what} {}", path.display()));
    }
    (ErrorCode::Io, format!("cannot {what} {}: {e}", path.display()))
}

/// The blocking writer thread: blocks from the channel into the work file.
fn write_blocks(
    work: PathBuf,
    plan: &Plan,
    prefix: Option<super::Prefix>,
    points: Option<RestartPoints>,
    mut rx: mpsc::Receiver<Data>,
) -> Result<EndTransfer, Failure> {
    let mut file = WorkFile::open(work, plan, prefix, points)?;
    while let Some(block) = rx.blocking_recv() {
        file.write(block)?;
    }
    file.finish()
}

/// An open work file and the state of the blocks written to it so far.
struct WorkFile {
    work: PathBuf,
    file: File,
    direct: bool,
    /// The file's announced size (the last block is the one that ends there).
    size: u64,
    whole: FileHasher,
    points: Option<RestartPoints>,
    since_point: u64,
    point_at: tokio::time::Instant,
    offset: u64,
    buf: AlignedBuf,
    /// The last blocks were zeros left as a hole past the file's end.
    short: bool,
}

/// Gives the file its full length when its last blocks were left as a hole
/// (a file that ends in a hole is only as long as its last write).
fn extend_over_hole(file: &File, work: &Path, short: &mut bool, offset: u64) -> Result<(), Failure> {
    if std::mem::take(short) {
        file.set_len(offset).map_err(|e| io_failure("extend", work, e))?;
    }
    Ok(())
}

impl WorkFile {
    /// Opens the work file, truncated to the plan's restart offset, with the
    /// hash state of the prefix it keeps.
    fn open(
        work: PathBuf,
        plan: &Plan,
        prefix: Option<super::Prefix>,
        points: Option<RestartPoints>,
    ) -> Result<WorkFile, Failure> {
        if points.as_ref().is_some_and(|p| p.abandoned.load(std::sync::atomic::Ordering::Relaxed)) {
            // A newer run of the request owns the work file: this one must
            // not truncate it (its blocks would be cut under that run's hash).
            return Err((ErrorCode::Connection, "superseded by a newer attempt of the request".into()));
        }
        if let Some(dir) = work.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_failure("create", dir, e))?;
        }
        let (mut file, direct) = open_work(&work).map_err(|e| io_failure("open", &work, e))?;
        // The prefix was read from this file when the resume was agreed: if
        // it no longer holds it (removed or cut meanwhile), extending it
        // would put zeros under a hash that says otherwise.
        let held = file.metadata().map_err(|e| io_failure("stat", &work, e))?.len();
        if held < plan.restart_offset {
            return Err((
                ErrorCode::ResumeMismatch,
                format!(
                    "the work file {} holds {held} bytes, less than the agreed restart offset {}; restart the request to start over",
                    work.display(),
                    plan.restart_offset
                ),
            ));
        }
        file.set_len(plan.restart_offset).map_err(|e| io_failure("truncate", &work, e))?;
        let whole = match prefix {
            Some(p) => p.hasher,
            None => super::hash_prefix(&work, plan.restart_offset, plan.block_size, Some(plan.size))
                .map_err(|e| io_failure("read", &work, e))?
                .ok_or_else(|| {
                    let at = plan.restart_offset;
                    (ErrorCode::Internal, format!("restart offset {at} is not on a block boundary"))
                })?,
        };
        file.seek(SeekFrom::Start(plan.restart_offset)).map_err(|e| io_failure("seek in", &work, e))?;
        Ok(WorkFile {
            file,
            direct,
            size: plan.size,
            whole,
            points,
            since_point: 0,
            point_at: tokio::time::Instant::now(),
            offset: plan.restart_offset,
            buf: AlignedBuf::new((plan.block_size as u64).min(plan.size) as usize),
            short: false,
            work,
        })
    }

    /// Checks one block and appends it, recording a restart point when due.
    fn write(&mut self, block: Data) -> Result<(), Failure> {
        let WorkFile { work, file, direct, size, whole, points, since_point, point_at, offset, buf, short } = self;
        let work = work.as_path();
        let len = block.raw_len as usize;
        // A raw block is written from its frame when it can be: always
        // with buffered writes, and with `O_DIRECT` when the reader placed
        // the payload on an aligned boundary (`channel::PAYLOAD_ALIGN`);
        // otherwise it is copied into the aligned buffer first.
        let from_frame = !block.compressed
            && block.payload.len() == len
            && (!*direct || block.payload.as_ptr().align_offset(DIRECT_ALIGN) == 0);
        if block.compressed {
            match lz4_flex::block::decompress_into(&block.payload, buf.fill(len)) {
                Ok(n) if n == len => {}
                Ok(n) => {
                    return Err((
                        ErrorCode::BlockHashMismatch,
                        format!("block at {} decompressed to {n} bytes, not {len}", block.offset),
                    ))
                }
                Err(e) => {
                    return Err((
                        ErrorCode::BlockHashMismatch,
                        format!("block at {} does not decompress: {e}", block.offset),
                    ))
                }
            }
        } else if !from_frame {
            buf.fill(len).copy_from_slice(&block.payload);
        }
        if points.as_ref().is_some_and(|p| p.abandoned.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err((ErrorCode::Internal, "superseded by a newer attempt of the request".into()));
        }
        let raw = if from_frame { &block.payload[..] } else { buf.filled() };
        // The block's check and its part of the whole-file digest: one pass.
        if !whole.check(*size, block.offset, raw, &block.hash) {
            return Err((
                ErrorCode::BlockHashMismatch,
                format!("block at offset {} failed its BLAKE3 check", block.offset),
            ));
        }
        if *direct && (!len.is_multiple_of(DIRECT_ALIGN) || !offset.is_multiple_of(DIRECT_ALIGN as u64)) {
            clear_direct(file).map_err(|e| io_failure("write", work, e))?;
            *direct = false;
        }
        if raw.iter().all(|&b| b == 0) {
            // A block of zeros is not written: the file gets a hole there
            // (sparse where the file system allows it), which reads as the
            // same zeros. Its length catches up before it counts.
            file.seek(SeekFrom::Current(len as i64)).map_err(|e| io_failure("seek in", work, e))?;
            *short = true;
        } else {
            file.write_all(raw).map_err(|e| io_failure("write", work, e))?;
            *short = false;
        }
        *offset += len as u64;
        *since_point += len as u64;
        if let Some(points) = points.as_ref().filter(|p| p.due(*since_point, *point_at)) {
            // A restart point covers whole bytes.
            extend_over_hole(file, work, short, *offset)?;
            points.record(file, work, *offset, whole)?;
            *since_point = 0;
            *point_at = tokio::time::Instant::now();
        }
        Ok(())
    }

    /// fsyncs the work file; its byte count and whole-file hash.
    fn finish(mut self) -> Result<EndTransfer, Failure> {
        let abandoned = self.points.as_ref().is_some_and(|p| p.abandoned.load(std::sync::atomic::Ordering::Relaxed));
        if !abandoned {
            // (A run superseded by a newer one leaves the file to it.)
            extend_over_hole(&self.file, &self.work, &mut self.short, self.offset)?;
        }
        self.file.sync_all().map_err(|e| io_failure("fsync", &self.work, e))?;
        Ok(EndTransfer { bytes: self.offset, hash: self.whole.digest() })
    }
}

/// What a receiver can offer to resume from.
#[derive(Debug)]
pub struct Offer {
    /// Bytes the work file held before this attempt (0 when there is none).
    pub work_len: u64,
    /// The durable, hashed prefix to offer, if any.
    pub prefix: Option<super::Prefix>,
}

/// Reads the work file's state for a resume (blocking): its length, and the
/// hash of its first `point.offset` bytes as they are on disk now (not as
/// recorded: the sender compares this with its source, so a partial file
/// changed since the crash is caught), in blocks of `block_size` of a file
/// of `size` bytes (`None` when not known yet). A point that cannot be
/// resumed from (past the work file's end, or off a block boundary) offers
/// nothing.
pub fn resume_offer(
    work: &Path,
    point: Option<RestartPoint>,
    block_size: u32,
    size: Option<u64>,
) -> std::io::Result<Offer> {
    let work_len = match std::fs::metadata(work) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Offer { work_len: 0, prefix: None }),
        Err(e) => return Err(e),
    };
    let prefix = match point {
        Some(p) if p.offset > 0 && p.offset <= work_len => super::hash_prefix(work, p.offset, block_size, size)?
            .map(|hasher| super::Prefix { offset: p.offset, hasher }),
        _ => None,
    };
    Ok(Offer { work_len, prefix })
}

/// Where `name` (a plain name, or a file set's relative path) is delivered
/// below the receive folder `recv_dir`: every folder on the way that exists
/// must be a real folder, never a symbolic link (a link would lead the file
/// out of the rule's folder), and with `create` the missing ones are made,
/// each new folder's parent fsynced so the folder outlives a crash before
/// the file's rename makes it reachable. A name ending in `/` is a file
/// set's (empty) folder: every component is a folder, and the path of the
/// last is returned.
pub fn target_path(recv_dir: &Path, name: &str, create: bool) -> Result<PathBuf, Failure> {
    use crate::protocol::names;
    names::check_entry_path(name).map_err(|why| (ErrorCode::BadFileName, why))?;
    let (folders, file) = match name.strip_suffix('/') {
        Some(folder) => (folder, None),
        None => match name.rsplit_once('/') {
            Some((folders, file)) => (folders, Some(file)),
            None => ("", Some(name)),
        },
    };
    let mut folder = recv_dir.to_path_buf();
    for component in folders.split('/').filter(|c| !c.is_empty()) {
        let next = folder.join(component);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err((
                    ErrorCode::BadFileName,
                    format!("{} is a symbolic link; a received file never goes through a link", next.display()),
                ))
            }
            Ok(_) => {
                return Err((
                    ErrorCode::BadFileName,
                    format!("{} is a file where {name:?} needs a folder", next.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                match std::fs::create_dir(&next) {
                    Ok(()) => {}
                    // Made meanwhile by another file of the same set: checked below.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_failure("create folder", &next, e)),
                }
                if !std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) {
                    return Err((ErrorCode::BadFileName, format!("{} is not a folder", next.display())));
                }
                File::open(&folder).and_then(|d| d.sync_all()).map_err(|e| io_failure("fsync folder", &folder, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failure("read", &next, e)),
        }
        folder = next;
    }
    Ok(match file {
        Some(file) => folder.join(file),
        None => folder,
    })
}

/// Renames a verified, fsynced work file to its final name and fsyncs the
/// folder, so the delivery survives a crash. Replaces an existing file
/// atomically.
pub fn deliver(work: &Path, final_path: &Path) -> Result<(), Failure> {
    std::fs::rename(work, final_path).map_err(|e| io_failure("rename into", final_path, e))?;
    let dir = final_path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_failure("fsync folder", dir, e))?;
    Ok(())
}

/// How a verified work file becomes the target, per the target mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Refuse an existing target (`TargetExists`).
    Create,
    /// Replace an existing target atomically.
    Replace,
    /// Append to the target, whose length was `base` (recorded, flushed,
    /// before the target was touched).
    Append { base: u64 },
    /// Rename an existing target to `backup` (a name in the same folder; a
    /// counter is added if it is taken), then deliver.
    Backup { backup: String },
}

/// Delivers a verified, fsynced work file as `how` says, so that it
/// survives a crash, and so that a crash at any moment followed by this
/// call again (the request's `delivered` flag says to) ends the same way:
///
/// - `Replace`: one atomic rename (the work file is gone once it is done).
/// - `Create`: a hard link to the final name, which fails if it exists,
///   then the work file is removed; a final name already linked to the
///   work file is a delivery that crashed before the removal.
/// - `Backup`: the existing target is renamed aside first; a crash after
///   that finds no target and delivers.
/// - `Append`: old content plus the new data are written to a temporary
///   file, fsynced, and renamed over the target: a reader, and a crash,
///   see either the old file or old plus all new data. A target of length
///   `base + new` is an append that crashed before the work file was
///   removed; any other length than `base` means someone else changed
///   the target, and nothing is written.
///
/// Returns a line for the job log.
pub fn deliver_as(work: &Path, final_path: &Path, how: &Delivery) -> Result<String, Failure> {
    let dir = final_path.parent().unwrap_or(Path::new("."));
    let sync_dir = |d: &Path| File::open(d).and_then(|f| f.sync_all()).map_err(|e| io_failure("fsync folder", d, e));
    let shown = final_path.display();
    match how {
        Delivery::Replace => {
            deliver(work, final_path)?;
            Ok(format!("delivered to {shown}"))
        }
        Delivery::Create => {
            use std::os::unix::fs::MetadataExt;
            match (std::fs::metadata(work), std::fs::metadata(final_path)) {
                (Ok(w), Ok(f)) if w.ino() == f.ino() && w.dev() == f.dev() => {}
                (_, Ok(_)) => {
                    return Err((
                        ErrorCode::TargetExists,
                        format!("{shown} exists and the target mode is create; nothing was replaced"),
                    ))
                }
                _ => std::fs::hard_link(work, final_path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => (
                        ErrorCode::TargetExists,
                        format!("{shown} appeared during the transfer and the target mode is create"),
                    ),
                    _ => io_failure("link into", final_path, e),
                })?,
            }
            sync_dir(dir)?;
            std::fs::remove_file(work).map_err(|e| io_failure("remove", work, e))?;
            Ok(format!("delivered to {shown} (created)"))
        }
        Delivery::Backup { backup } => {
            let mut line = String::new();
            if final_path.exists() {
                let mut aside = dir.join(backup);
                let mut n = 1;
                while aside.exists() {
                    aside = dir.join(format!("{backup}.{n}"));
                    n += 1;
                }
                std::fs::rename(final_path, &aside).map_err(|e| io_failure("rename aside", final_path, e))?;
                sync_dir(dir)?;
                line = format!("; the file it replaced is now {}", aside.display());
            }
            deliver(work, final_path)?;
            Ok(format!("delivered to {shown}{line}"))
        }
        Delivery::Append { base } => {
            let added = std::fs::metadata(work).map_err(|e| io_failure("read", work, e))?.len();
            let now = match std::fs::metadata(final_path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io_failure("read", final_path, e)),
            };
            if added > 0 && now == base + added {
                // Appended before a crash; only the work file was left.
                std::fs::remove_file(work).map_err(|e| io_failure("remove", work, e))?;
                return Ok(format!("appended {added} bytes to {shown} (finishing an interrupted delivery)"));
            }
            if now != *base {
                return Err((
                    ErrorCode::Io,
                    format!(
                        "{shown} is {now} bytes, not the {base} it had when the append began; nothing was appended"
                    ),
                ));
            }
            let tmp = work.with_extension("append");
            {
                let mut out = File::create(&tmp).map_err(|e| io_failure("create", &tmp, e))?;
                if now > 0 {
                    let mut old = File::open(final_path).map_err(|e| io_failure("read", final_path, e))?;
                    std::io::copy(&mut old, &mut out).map_err(|e| io_failure("copy into", &tmp, e))?;
                }
                let mut new = File::open(work).map_err(|e| io_failure("read", work, e))?;
                std::io::copy(&mut new, &mut out).map_err(|e| io_failure("copy into", &tmp, e))?;
                out.sync_all().map_err(|e| io_failure("fsync", &tmp, e))?;
            }
            std::fs::rename(&tmp, final_path).map_err(|e| io_failure("rename into", final_path, e))?;
            sync_dir(dir)?;
            std::fs::remove_file(work).map_err(|e| io_failure("remove", work, e))?;
            Ok(format!("appended {added} bytes to {shown}, now {} bytes", base + added))
        }
    }
}

/// Removes a work file that must not be resumed (failed check, cancel).
pub fn discard(work: &Path) {
    if let Err(e) = std::fs::remove_file(work) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %work.display(), error = %e, "cannot remove work file");
        }
    }
}

/// Asks the kernel to start writing `file`'s dirty pages back now, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). It makes nothing
/// durable: a later `sync_all` still does, and then finds the data written
/// or under way. Best effort: an error only means the later fsync writes it.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor borrowed for the call; no memory is passed.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Most fsyncs [`sync_files`] runs at once.
const PARALLEL_FSYNCS: usize = 16;

/// Fsyncs (`sync_all`) each file, several at once: a small file's fsync
/// mostly waits for the device, and waits that overlap let the device
/// write (and the file system flush) for many files at a time. The result
/// for each path, in order.
pub fn sync_files(paths: &[&Path]) -> Vec<std::io::Result<()>> {
    let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all());
    let threads = paths.len().div_ceil(8).min(PARALLEL_FSYNCS);
    if threads <= 1 || crate::determinism::inline_io() {
        return paths.iter().map(|p| sync(p)).collect();
    }
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|part| (part.len(), scope.spawn(move || part.iter().map(|p| sync(p)).collect::<Vec<_>>())))
            .collect();
        workers
            .into_iter()
            .flat_map(|(n, w)| {
                w.join().unwrap_or_else(|_| {
                    (0..n).map(|_| Err(std::io::Error::other("an fsync thread panicked"))).collect()
                })
            })
            .collect()
    })
}

/// Bytes available to an unprivileged writer in `dir`'s file system.
pub fn available_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right type; statvfs fills it in on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Room to keep free beyond a file's size: 1% of it plus 1 MiB, so a
/// transfer never fills a disk to the last byte.
pub fn space_margin(size: u64) -> u64 {
    size / 100 + (1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Compression, Digest};

    fn plan(size: u64) -> Plan {
        Plan { size, block_size: 4096, restart_offset: 0, compression: Compression::None }
    }

    /// The file's blocks as a sender makes them (blocks of 4 KiB).
    fn blocks(bytes: &[u8]) -> Vec<Data> {
        let mut h = crate::protocol::block_hash::FileHasher::new(4096);
        let size = bytes.len() as u64;
        (0..)
            .zip(bytes.chunks(4096))
            .map(|(i, c): (u64, &[u8])| Data {
                offset: i * 4096,
                raw_len: c.len() as u32,
                payload: c.to_vec().into(),
                compressed: false,
                hash: h.add(size, c).expect("whole blocks in order"),
            })
            .collect()
    }

    #[tokio::test]
    async fn writes_verifies_and_delivers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = RequestId::generate();
        let work = work_path(dir.path(), &id);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut w = BlockWriter::start(work.clone(), plan(data.len() as u64), None, None);
        for b in blocks(&data) {
            assert!(w.write(b).await);
        }
        let end = w.finish().await.expect("finishes");
        assert_eq!(end, EndTransfer { bytes: data.len() as u64, hash: Digest::of(&data) });
        let fin = dir.path().join("f");
        deliver(&work, &fin).expect("delivers");
        assert_eq!(std::fs::read(&fin).expect("read"), data);
        assert!(!work.exists());
    }

    #[tokio::test]
    async fn a_resume_whose_work_file_lost_its_prefix_fails_instead_of_writing_zeros_under_its_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = work_path(dir.path(), &RequestId::generate());
        let data = [5u8; 8192];
        // Agreed on a prefix of 4096 bytes, then the file went (removed
        // meanwhile): the writer must not extend an empty file to 4096.
        let mut prefix = crate::protocol::block_hash::FileHasher::new(4096);
        prefix.add(8192, &data[..4096]).expect("first block");
        let resumed = Plan { restart_offset: 4096, ..plan(8192) };
        let mut w = BlockWriter::start(
            work.clone(),
            resumed,
            Some(super::super::Prefix { offset: 4096, hasher: prefix }),
            None,
        );
        for b in blocks(&data).into_iter().skip(1) {
            w.write(b).await;
        }
        let (code, msg) = w.finish().await.expect_err("fails");
        assert_eq!(code, ErrorCode::ResumeMismatch, "{msg}");
        assert!(msg.contains("less than the agreed restart offset"), "{msg}");
    }

    #[tokio::test]
    async fn a_bad_block_stops_the_writer_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = work_path(dir.path(), &RequestId::generate());
        let mut w = BlockWriter::start(work, plan(8192), None, None);
        let mut b = blocks(&[1; 8192]).remove(0);
        let mut p = b.payload.to_vec();
        p[0] = 2;
        b.payload = p.into();
        w.write(b).await;
        let (code, msg) = w.finish().await.expect_err("fails");
        assert_eq!(code, ErrorCode::BlockHashMismatch);
        assert!(msg.contains("offset 0"), "{msg}");
    }

    #[tokio::test]
    async fn compressed_blocks_are_decompressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = work_path(dir.path(), &RequestId::generate());
        let raw = vec![5u8; 4096];
        let mut w = BlockWriter::start(work, plan(4096), None, None);
        let payload = lz4_flex::block::compress(&raw).into();
        w.write(Data { offset: 0, raw_len: 4096, payload, compressed: true, hash: Digest::of(&raw) }).await;
        assert_eq!(w.finish().await.expect("ok").hash, Digest::of(&raw));
    }

    #[tokio::test]
    async fn a_one_block_file_is_written_and_fsynced_whole_at_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = work_path(dir.path(), &RequestId::generate());
        let data = b"one small file\n".to_vec();
        let mut w = BlockWriter::start(work.clone(), plan(data.len() as u64), None, None);
        assert!(matches!(w.mode, Mode::Held(_)), "{w:?}");
        assert!(w.write(blocks(&data).remove(0)).await);
        assert!(!work.exists(), "held: nothing written before finish");
        let end = w.finish().await.expect("finishes");
        assert_eq!(end, EndTransfer { bytes: data.len() as u64, hash: Digest::of(&data) });
        assert_eq!(std::fs::read(&work).expect("the work file"), data);

        // Blocks past a one-block file: the work file refuses the second;
        // the writer takes no third.
        let work = work_path(dir.path(), &RequestId::generate());
        let mut w = BlockWriter::start(work, plan(4096), None, None);
        let more = blocks(&[3; 3 * 4096]);
        assert!(w.write(more[0].clone()).await && w.write(more[1].clone()).await);
        assert!(!w.write(more[2].clone()).await, "a third block stops a held writer");
        assert!(w.finish().await.is_err(), "a file longer than announced is refused");
        // A file of more than one block, or resumed, goes to a writer thread.
        let w = BlockWriter::start(work_path(dir.path(), &RequestId::generate()), plan(4097), None, None);
        assert!(matches!(w.mode, Mode::Threaded { .. }));
        let resumed = Plan { restart_offset: 10, ..plan(4096) };
        let w = BlockWriter::start(work_path(dir.path(), &RequestId::generate()), resumed, None, None);
        assert!(matches!(w.mode, Mode::Threaded { .. }));
    }

    #[tokio::test]
    async fn a_superseded_writer_leaves_the_work_file_to_the_newer_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let id = RequestId::generate();
        let work = work_path(dir.path(), &id);
        std::fs::create_dir_all(work.parent().expect("a folder")).expect("mkdir");
        let newer = vec![7u8; 10_000];
        std::fs::write(&work, &newer).expect("the newer run's bytes");
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let points = || RestartPoints {
            store: store.clone(),
            abandoned: abandoned.clone(),
            id: id.clone(),
            every_bytes: 0,
            every: std::time::Duration::ZERO,
        };
        // A held one-block file, and a file for a writer thread.
        let data = b"the old run's bytes\n".to_vec();
        let mut held = BlockWriter::start(work.clone(), plan(data.len() as u64), None, Some(points()));
        assert!(held.write(blocks(&data).remove(0)).await);
        assert!(held.finish().await.is_err(), "a superseded run fails");
        let threaded = BlockWriter::start(work.clone(), plan(3 * 4096), None, Some(points()));
        assert!(threaded.finish().await.is_err());
        assert_eq!(std::fs::read(&work).expect("still there"), newer, "not truncated, not written");
    }

    #[test]
    fn free_space_is_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(available_space(dir.path()).expect("statvfs") > 0);
        assert!(available_space(Path::new("/definitely/not/here")).is_err());
    }
}
