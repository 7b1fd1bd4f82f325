//! The set stream: the small files of a pushed file set sent back to back
//! on one stream, with the durable work grouped on the receiver.
//!
//! A stream of kind `S` carries, after the kind byte, frames of
//! [`SetFrame`] (4-byte big-endian length, bincode body, at most
//! [`MAX_SET_FRAME_BODY`]):
//!
//! ```text
//! sender:   Open{set, rule, ..}        File{..} File{..} ...            Close
//! receiver:                  Opened            Filed{results} ...              Closed
//! ```
//!
//! - `Open` names the set, the rule, how many files the set has and its
//!   pattern; the receiver records the set (its record lists the files as
//!   they arrive) and answers `Opened`, or `Refused` (the sender then
//!   sends those files one request each, as before: the stream is only a
//!   faster path, never the only one).
//! - `File` is one whole file of the set (its index, id, relative path,
//!   bytes and BLAKE3); at most [`MAX_STREAMED_FILE`] bytes.
//! - The receiver writes each file under its work name as it arrives and
//!   commits them in batches ([`Batch`] decides when): every file fsynced,
//!   recorded as delivered and flushed, renamed, each folder fsynced (once
//!   per batch; in `create` mode once per file),
//!   recorded `Done` and flushed; only then does `Filed` tell the sender
//!   how each file of the batch ended.
//! - The sender keeps at most a [`Window`] of files unanswered.
//!
//! These types and rules are plain data, without I/O.

use serde::{Deserialize, Serialize};

use super::message::{Digest, ErrorCode, RequestId};

/// Largest file sent on a set stream; larger files of a set go one request
/// each (with restart points), as before.
pub const MAX_STREAMED_FILE: u64 = 1 << 20;

/// Largest frame body on a set stream: one whole file plus its fields.
pub const MAX_SET_FRAME_BODY: usize = MAX_STREAMED_FILE as usize + 8 * 1024;

/// One frame of a set stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetFrame {
    /// Sender, first: the files that follow belong to `set`, under `rule`;
    /// `hold`: the set is sent with `delivery = all`; `files`: how many
    /// files the set resolved (members are numbered `0..files`);
    /// `pattern`: its pattern as a `Release` shows it (version 8).
    Open { set: RequestId, rule: String, hold: bool, files: u32, pattern: String },
    /// Receiver: ready for the files.
    Opened,
    /// Receiver: the stream is refused (the files go one request each).
    Refused { code: ErrorCode, message: String },
    /// Sender: one whole file of the set.
    File(StreamedFile),
    /// Receiver: how each file of a committed batch ended.
    Filed(Vec<Filed>),
    /// Sender: no more files.
    Close,
    /// Receiver: every file was answered; the stream ends.
    Closed,
}

/// One whole file on a set stream.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamedFile {
    /// Its place in the set: `id` must be the set's member id for it.
    pub index: u32,
    pub id: RequestId,
    /// Its relative path (the path rule of `names::check_entry_path`).
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// BLAKE3 of `data`.
    pub hash: Digest,
}

impl std::fmt::Debug for StreamedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedFile")
            .field("index", &self.index)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("bytes", &self.data.len())
            .field("hash", &self.hash)
            .finish()
    }
}

/// How one streamed file ended on the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filed {
    pub id: RequestId,
    pub outcome: FileOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOutcome {
    /// Under its final name, durably, and recorded `Done`.
    Delivered { bytes: u64, hash: Digest },
    /// Verified and durable under its work name until the set is released
    /// (`delivery = all`), recorded `Held`.
    Held { bytes: u64, hash: Digest },
    /// Not delivered: why.
    Failed { code: ErrorCode, message: String },
}

/// The sender's window: how many files (and bytes) may be sent and not
/// yet answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub files: usize,
    pub bytes: u64,
}

impl Window {
    /// Most files unanswered.
    pub const MAX_FILES: usize = 512;
    /// Most bytes unanswered.
    pub const MAX_BYTES: u64 = 32 << 20;

    /// Whether a file of `size` bytes may be sent now (one is always
    /// allowed when nothing is unanswered, whatever its size).
    pub fn admits(&self, size: u64) -> bool {
        self.files == 0 || (self.files < Self::MAX_FILES && self.bytes + size <= Self::MAX_BYTES)
    }

    pub fn sent(&mut self, size: u64) {
        self.files += 1;
        self.bytes += size;
    }

    pub fn answered(&mut self, size: u64) {
        self.files = self.files.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
    }
}

/// The receiver's batch: files written under their work names, not yet
/// committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub files: usize,
    pub bytes: u64,
}

impl Batch {
    /// Most files committed together.
    pub const MAX_FILES: usize = 256;
    /// Most bytes committed together.
    pub const MAX_BYTES: u64 = 16 << 20;

    pub fn add(&mut self, size: u64) {
        self.files += 1;
        self.bytes += size;
    }

    /// Whether to commit the batch now: it is full, or the sender closed
    /// the stream, or nothing more is waiting to be read and no commit is
    /// under way (committing then costs no throughput and answers the
    /// sender soonest; while one runs, the batch grows instead, and is
    /// committed as soon as that one ends).
    pub fn is_due(&self, now: Moment) -> bool {
        self.files > 0
            && (now.closing
                || self.files >= Self::MAX_FILES
                || self.bytes >= Self::MAX_BYTES
                || (!now.more_waiting && !now.committing))
    }
}

/// What the receiver knows when it asks [`Batch::is_due`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moment {
    /// A frame is waiting to be read.
    pub more_waiting: bool,
    /// The sender closed the stream.
    pub closing: bool,
    /// The previous batch's commit is under way.
    pub committing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_bounds_files_and_bytes_but_always_admits_one() {
        let mut w = Window::default();
        assert!(w.admits(MAX_STREAMED_FILE * 100), "an empty window admits any file");
        for _ in 0..Window::MAX_FILES {
            assert!(w.admits(1));
            w.sent(1);
        }
        assert!(!w.admits(0), "a full window admits nothing");
        w.answered(1);
        assert!(w.admits(1));
        let mut b = Window::default();
        b.sent(Window::MAX_BYTES - 10);
        assert!(!b.admits(11) && b.admits(10), "the byte bound holds");
        b.answered(Window::MAX_BYTES - 10);
        assert_eq!(b, Window::default());
    }

    #[test]
    fn a_batch_commits_when_full_idle_or_closing_and_never_empty() {
        let idle = Moment::default();
        let waiting = Moment { more_waiting: true, ..idle };
        let closing = Moment { closing: true, ..idle };
        let committing = Moment { committing: true, ..idle };
        let mut b = Batch::default();
        for m in [idle, waiting, closing, committing] {
            assert!(!b.is_due(m), "nothing to commit: {m:?}");
        }
        b.add(10);
        assert!(!b.is_due(waiting), "more is coming and there is room");
        assert!(b.is_due(idle), "nothing more waiting: commit now");
        assert!(!b.is_due(committing), "a commit runs: the batch grows meanwhile");
        assert!(b.is_due(closing) && b.is_due(Moment { committing: true, ..closing }), "closing");
        let mut full = Batch::default();
        for _ in 0..Batch::MAX_FILES {
            full.add(0);
        }
        assert!(full.is_due(waiting) && full.is_due(Moment { committing: true, ..waiting }), "full by count");
        let mut big = Batch::default();
        big.add(Batch::MAX_BYTES);
        assert!(big.is_due(Moment { committing: true, ..waiting }), "full by bytes");
    }
}
