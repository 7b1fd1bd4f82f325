//! Disk room promised to files being received.
//!
//! A receiver checks the free space of the receive folder when it accepts a
//! transfer. A check alone lets transfers accepted at about the same time
//! each count the same free bytes, so a partner that announces many files
//! at once, each of which fits, could fill the disk (the store's too, when
//! it shares the disk) and fail every other transfer writing there. So an
//! accepted transfer takes a [`Promise`] of the bytes it will write, and
//! every later check counts, against the free space of the same file
//! system, the promised bytes not written yet. A promise shrinks as its
//! blocks are written (they then show in the free space) and gives back
//! what is left when it is dropped, however its transfer ends.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::receive::{available_space, space_margin};
use crate::protocol::{ErrorCode, RequestId};

type Failure = (ErrorCode, String);

/// The bytes promised and not written yet, per file system (device id)
/// and request. One promise per request: a newer run of a request (the
/// partner resumed while the old run's connection was dying) takes over
/// its request's promise, so the two never count twice.
#[derive(Debug, Default)]
pub struct DiskRoom {
    promised: Mutex<HashMap<u64, HashMap<RequestId, Held>>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Held {
    /// Which promise holds the entry now.
    token: u64,
    left: u64,
}

/// Bytes a transfer being received may still write; given back on drop.
#[derive(Debug)]
pub struct Promise {
    room: Arc<DiskRoom>,
    device: u64,
    id: RequestId,
    token: u64,
}

impl DiskRoom {
    fn promised(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HashMap<RequestId, Held>>> {
        self.promised.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks that `dir` (made if missing) has room for `bytes` more, with
    /// a margin, beside what is promised to other requests on its file
    /// system, and promises them to request `id` (instead of what an
    /// earlier run of it was promised).
    pub fn promise(self: &Arc<Self>, dir: &Path, id: &RequestId, bytes: u64) -> Result<Promise, Failure> {
        let (device, free) = device_and_free(dir)?;
        let mut promised = self.promised();
        let on_device = promised.entry(device).or_default();
        let others = on_device.iter().filter(|(k, _)| *k != id).map(|(_, h)| h.left).fold(0, u64::saturating_add);
        fits(dir, bytes, free, others)?;
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        on_device.insert(id.clone(), Held { token, left: bytes });
        Ok(Promise { room: self.clone(), device, id: id.clone(), token })
    }

    /// Checks that `dir` (made if missing) has room for `bytes` more, with
    /// a margin, beside what is promised on its file system, for bytes
    /// written at once (nothing is promised).
    pub fn has_room(&self, dir: &Path, bytes: u64) -> Result<(), Failure> {
        let (device, free) = device_and_free(dir)?;
        let others = self.promised_on_device(device);
        fits(dir, bytes, free, others)
    }

    fn promised_on_device(&self, device: u64) -> u64 {
        self.promised().get(&device).map_or(0, |m| m.values().map(|h| h.left).fold(0, u64::saturating_add))
    }

    /// Bytes promised on the file system of `dir` and not written yet. (what the tests look at).
    #[cfg(test)]
    fn promised_on(&self, dir: &Path) -> u64 {
        std::fs::metadata(dir).map_or(0, |m| self.promised_on_device(m.dev()))
    }

    /// Runs `f` on the entry of `p`'s request if `p` still holds it.
    fn with_own(&self, p: &Promise, f: impl FnOnce(&mut HashMap<RequestId, Held>)) {
        let mut promised = self.promised();
        if let Some(on_device) = promised.get_mut(&p.device) {
            if on_device.get(&p.id).is_some_and(|h| h.token == p.token) {
                f(on_device);
            }
            if on_device.is_empty() {
                promised.remove(&p.device);
            }
        }
    }
}

/// The device and the free bytes of `dir`, made if missing. Read before
/// the promises are locked: free space read a moment early is only ever
/// more than what is left, and the promises, compared under the lock,
/// never count the same bytes twice. (A slow file system's `statvfs` then
/// holds no other transfer up.)
fn device_and_free(dir: &Path) -> Result<(u64, u64), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| (ErrorCode::Io, format!("cannot create {}: {e}", dir.display())))?;
    let device =
        std::fs::metadata(dir).map_err(|e| (ErrorCode::Io, format!("cannot read {}: {e}", dir.display())))?.dev();
    let free = available_space(dir)
        .map_err(|e| (ErrorCode::Io, format!("cannot read free space of {}: {e}", dir.display())))?;
    Ok((device, free))
}

fn fits(dir: &Path, bytes: u64, free: u64, others: u64) -> Result<(), Failure> {
    let needed = bytes.saturating_add(space_margin(bytes));
    if free >= needed.saturating_add(others) {
        return Ok(());
    }
    let promised_part = match others {
        0 => String::new(),
        n => format!(", {n} of them promised to transfers being received"),
    };
    Err((
        ErrorCode::NoSpace,
        format!(
            "not enough space in {}: {bytes} bytes plus a margin need {needed}, {free} available{promised_part}",
            dir.display()
        ),
    ))
}

impl Promise {
    /// `bytes` of the promise were written: they now show in the free space.
    pub fn written(&mut self, bytes: u64) {
        self.room.with_own(self, |on_device| {
            if let Some(h) = on_device.get_mut(&self.id) {
                h.left = h.left.saturating_sub(bytes);
            }
        });
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        self.room.with_own(self, |on_device| {
            on_device.remove(&self.id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_promised_to_one_transfer_are_not_counted_for_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = Arc::new(DiskRoom::default());
        let free = available_space(dir.path()).expect("free space");
        let (one, two) = (RequestId::generate(), RequestId::generate());
        // Fits alone, not twice.
        let half = free / 2 + (2 << 20);
        let mut first = room.promise(dir.path(), &one, half).expect("the first fits");
        assert_eq!(room.promised_on(dir.path()), half);
        let (code, why) = room.promise(dir.path(), &two, half).expect_err("the second does not, beside the first");
        assert_eq!(code, ErrorCode::NoSpace);
        assert!(why.contains("promised to transfers being received"), "{why}");
        assert!(room.has_room(dir.path(), half).is_err(), "nor do bytes written at once");
        // Written bytes leave the promise (they show in the free space).
        first.written(1000);
        assert_eq!(room.promised_on(dir.path()), half - 1000);
        first.written(u64::MAX);
        assert_eq!(room.promised_on(dir.path()), 0, "never below what was promised");
        drop(first);
        let again = room.promise(dir.path(), &two, half).expect("fits once the first is written or gone");
        drop(again);
        assert_eq!(room.promised_on(dir.path()), 0, "a dropped promise gives back what is left");
        assert!(room.has_room(dir.path(), 1 << 20).is_ok());
    }

    #[test]
    fn a_newer_run_of_a_request_takes_over_its_promise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = Arc::new(DiskRoom::default());
        let free = available_space(dir.path()).expect("free space");
        let id = RequestId::generate();
        let most = free / 2 + (2 << 20);
        // The old run, superseded while its connection dies, still holds
        // its promise: the resume must fit beside everyone else's, not its own.
        let mut old = room.promise(dir.path(), &id, most).expect("the first run");
        let new = room.promise(dir.path(), &id, most).expect("the resume is not counted against its own old run");
        assert_eq!(room.promised_on(dir.path()), most);
        old.written(most);
        drop(old);
        assert_eq!(room.promised_on(dir.path()), most, "the old run gives back nothing of the new run's promise");
        drop(new);
        assert_eq!(room.promised_on(dir.path()), 0);
    }
}
