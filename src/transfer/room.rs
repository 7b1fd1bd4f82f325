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
use std::sync::{Arc, Mutex};

use super::receive::{available_space, space_margin};
use crate::protocol::ErrorCode;

type Failure = (ErrorCode, String);

/// The bytes promised and not written yet, per file system (device id).
#[derive(Debug, Default)]
pub struct DiskRoom {
    promised: Mutex<HashMap<u64, u64>>,
}

/// Bytes a transfer being received may still write; given back on drop.
#[derive(Debug)]
pub struct Promise {
    room: Arc<DiskRoom>,
    device: u64,
    left: u64,
}

impl DiskRoom {
    fn promised(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.promised.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks that `dir` (made if missing) has room for `bytes` more, with
    /// a margin, beside what is promised on its file system, and promises
    /// them.
    pub fn promise(self: &Arc<Self>, dir: &Path, bytes: u64) -> Result<Promise, Failure> {
        let device = self.check(dir, bytes, true)?;
        Ok(Promise { room: self.clone(), device, left: bytes })
    }

    /// Checks that `dir` (made if missing) has room for `bytes` more, with
    /// a margin, beside what is promised on its file system, for bytes
    /// written at once (nothing is promised).
    pub fn has_room(&self, dir: &Path, bytes: u64) -> Result<(), Failure> {
        self.check(dir, bytes, false).map(|_| ())
    }

    fn check(&self, dir: &Path, bytes: u64, promise: bool) -> Result<u64, Failure> {
        std::fs::create_dir_all(dir).map_err(|e| (ErrorCode::Io, format!("cannot create {}: {e}", dir.display())))?;
        let device =
            std::fs::metadata(dir).map_err(|e| (ErrorCode::Io, format!("cannot read {}: {e}", dir.display())))?.dev();
        // Read and promised under one lock: two checks never count the
        // same free bytes.
        let mut promised = self.promised();
        let free = available_space(dir)
            .map_err(|e| (ErrorCode::Io, format!("cannot read free space of {}: {e}", dir.display())))?;
        let others = promised.get(&device).copied().unwrap_or(0);
        let needed = bytes.saturating_add(space_margin(bytes));
        if free < needed.saturating_add(others) {
            let promised_part = match others {
                0 => String::new(),
                n => format!(", {n} of them promised to transfers being received"),
            };
            return Err((
                ErrorCode::NoSpace,
                format!(
                    "not enough space in {}: {bytes} bytes plus a margin need {needed}, {free} available{promised_part}",
                    dir.display()
                ),
            ));
        }
        if promise {
            *promised.entry(device).or_default() += bytes;
        }
        Ok(device)
    }

    fn give_back(&self, device: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut promised = self.promised();
        if let Some(n) = promised.get_mut(&device) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                promised.remove(&device);
            }
        }
    }

    /// Bytes promised on the file system of `dir` and not written yet.
    pub fn promised_on(&self, dir: &Path) -> u64 {
        let Ok(meta) = std::fs::metadata(dir) else { return 0 };
        self.promised().get(&meta.dev()).copied().unwrap_or(0)
    }
}

impl Promise {
    /// `bytes` of the promise were written: they now show in the free space.
    pub fn written(&mut self, bytes: u64) {
        let n = bytes.min(self.left);
        self.left -= n;
        self.room.give_back(self.device, n);
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        self.room.give_back(self.device, self.left);
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
        // Fits alone, not twice.
        let half = free / 2 + (2 << 20);
        let mut first = room.promise(dir.path(), half).expect("the first fits");
        assert_eq!(room.promised_on(dir.path()), half);
        let (code, why) = room.promise(dir.path(), half).expect_err("the second does not, beside the first");
        assert_eq!(code, ErrorCode::NoSpace);
        assert!(why.contains("promised to transfers being received"), "{why}");
        assert!(room.has_room(dir.path(), half).is_err(), "nor do bytes written at once");
        // Written bytes leave the promise (they show in the free space).
        first.written(1000);
        assert_eq!(room.promised_on(dir.path()), half - 1000);
        first.written(u64::MAX);
        assert_eq!(room.promised_on(dir.path()), 0, "never below what was promised");
        drop(first);
        let again = room.promise(dir.path(), half).expect("fits once the first is written or gone");
        drop(again);
        assert_eq!(room.promised_on(dir.path()), 0, "a dropped promise gives back what is left");
        assert!(room.has_room(dir.path(), 1 << 20).is_ok());
    }
}
