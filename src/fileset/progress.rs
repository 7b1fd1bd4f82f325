//! A file set's progress, decided without I/O: which file goes next, what
//! a file's end means for the set, when files go under their final names,
//! and how the set ends. The runners carry out the [`Action`]s; this code
//! only decides (the shape of `protocol::Session` and `lifecycle`).
//!
//! Policies ([`Policy`], per rule, overridable per request):
//! - an empty match is an error (`NoFiles`) or an empty success;
//! - a failed file fails the set (the files not yet sent are skipped), or
//!   the set goes on and ends `InError` naming the failed files;
//! - delivery `each`: a file goes under its final name as soon as it is
//!   verified; `all`: no file does until every file is verified, then all
//!   are renamed, and a crash in the middle of the renames finishes them
//!   when the set resumes ([`SetProgress::resume`]).

use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// What an empty match means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    /// The request fails with `NoFiles`.
    #[default]
    Fail,
    /// The request is done, having sent nothing.
    Succeed,
}

/// What one failed file means for the set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The set stops; files not yet sent are skipped.
    #[default]
    Stop,
    /// The other files go on; the set ends `InError` naming the failed ones.
    Continue,
}

/// When verified files go under their final names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Each file as soon as it is verified.
    #[default]
    Each,
    /// All together, once every file is verified.
    All,
}

/// A set's policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub on_empty: OnEmpty,
    pub on_failure: OnFailure,
    pub delivery: Delivery,
}

/// Where one file of the set is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileState {
    /// Not sent yet.
    Pending,
    /// Being sent.
    Sending,
    /// Received whole and verified, not yet under its final name (`all`).
    Verified,
    /// Under its final name: done.
    Delivered,
    /// Failed, with why.
    Failed(ErrorCode),
    /// Never sent: the set stopped first.
    Skipped,
}

impl FileState {
    fn is_end(self) -> bool {
        matches!(self, FileState::Delivered | FileState::Failed(_) | FileState::Skipped)
    }
}

/// What happened to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileEvent {
    Started(usize),
    /// Received whole and verified.
    Verified(usize),
    /// Under its final name.
    Delivered(usize),
    Failed(usize, ErrorCode),
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put these verified files under their final names (then report each
    /// as [`FileEvent::Delivered`]).
    Deliver(Vec<usize>),
    /// The set ended.
    Finish(Outcome),
}

/// How a set ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every file delivered (or nothing matched and that is allowed).
    Done,
    /// Nothing matched and that is an error.
    NoFiles,
    /// Some files failed (by index, with why); the others are delivered or skipped.
    InError { failed: Vec<(usize, ErrorCode)> },
}

/// Why an event does not fit the set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressError {
    #[error("file {0} is not in the set")]
    NoSuchFile(usize),
    #[error("file {index}: {event} while it is {state:?}")]
    OutOfOrder { index: usize, event: &'static str, state: FileState },
}

/// Counts for the API and the progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: usize,
    pub delivered: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Not ended yet.
    pub left: usize,
    pub bytes: u64,
    pub bytes_delivered: u64,
}

/// A set's files and where each is (persisted with the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetProgress {
    pub policy: Policy,
    pub sizes: Vec<u64>,
    pub states: Vec<FileState>,
    /// `all` delivery: the final renames began (a resume finishes them).
    pub delivering: bool,
    /// The outcome, once decided.
    pub outcome_decided: bool,
}

impl SetProgress {
    /// A set of files of `sizes`, none sent. An empty set ends at once
    /// (see [`SetProgress::start`]).
    pub fn new(policy: Policy, sizes: Vec<u64>) -> SetProgress {
        let states = vec![FileState::Pending; sizes.len()];
        SetProgress { policy, sizes, states, delivering: false, outcome_decided: false }
    }

    /// The actions the set begins with: an empty set ends here.
    pub fn start(&mut self) -> Vec<Action> {
        self.settle()
    }

    /// The next file to send, if the set goes on.
    pub fn next_to_send(&self) -> Option<usize> {
        if self.outcome_decided || self.stopped() {
            return None;
        }
        self.states.iter().position(|s| *s == FileState::Pending)
    }

    fn stopped(&self) -> bool {
        self.policy.on_failure == OnFailure::Stop && self.states.iter().any(|s| matches!(s, FileState::Failed(_)))
    }

    /// Takes one event; answers what to do because of it.
    pub fn on(&mut self, event: FileEvent) -> Result<Vec<Action>, ProgressError> {
        let (index, name) = match event {
            FileEvent::Started(i) => (i, "started"),
            FileEvent::Verified(i) => (i, "verified"),
            FileEvent::Delivered(i) => (i, "delivered"),
            FileEvent::Failed(i, _) => (i, "failed"),
        };
        let state = *self.states.get(index).ok_or(ProgressError::NoSuchFile(index))?;
        let out_of_order = || ProgressError::OutOfOrder { index, event: name, state };
        let next = match (event, state) {
            (FileEvent::Started(_), FileState::Pending) => FileState::Sending,
            (FileEvent::Verified(_), FileState::Sending) => FileState::Verified,
            (FileEvent::Delivered(_), FileState::Verified) => FileState::Delivered,
            (FileEvent::Failed(_, code), FileState::Pending | FileState::Sending | FileState::Verified) => {
                FileState::Failed(code)
            }
            _ => return Err(out_of_order()),
        };
        self.states[index] = next;
        let mut actions = Vec::new();
        if next == FileState::Verified && self.policy.delivery == Delivery::Each {
            actions.push(Action::Deliver(vec![index]));
        }
        if matches!(next, FileState::Failed(_)) && self.policy.on_failure == OnFailure::Stop {
            for s in self.states.iter_mut().filter(|s| **s == FileState::Pending) {
                *s = FileState::Skipped;
            }
        }
        actions.extend(self.settle());
        Ok(actions)
    }

    /// What a resumed set does first: the renames of `all` delivery that a
    /// crash interrupted, and files that were being sent are sent again
    /// (from their own restart points).
    pub fn resume(&mut self) -> Vec<Action> {
        for s in self.states.iter_mut().filter(|s| **s == FileState::Sending) {
            *s = FileState::Pending;
        }
        if self.stopped() {
            // A failure stopped the set: what was being sent is not sent again.
            for s in self.states.iter_mut().filter(|s| **s == FileState::Pending) {
                *s = FileState::Skipped;
            }
        }
        let mut actions = Vec::new();
        let verified: Vec<usize> = self.indexes(FileState::Verified);
        // Verified but not yet renamed when the node stopped: `each`
        // delivers them now; `all` finishes the renames it had begun.
        let interrupted = match self.policy.delivery {
            Delivery::Each => true,
            Delivery::All => self.delivering,
        };
        if interrupted && !verified.is_empty() {
            actions.push(Action::Deliver(verified));
        }
        actions.extend(self.settle());
        actions
    }

    /// Decides the renames of `all` delivery and the end, once due.
    fn settle(&mut self) -> Vec<Action> {
        if self.outcome_decided {
            return Vec::new();
        }
        if self.states.is_empty() {
            self.outcome_decided = true;
            return vec![Action::Finish(match self.policy.on_empty {
                OnEmpty::Fail => Outcome::NoFiles,
                OnEmpty::Succeed => Outcome::Done,
            })];
        }
        let mut actions = Vec::new();
        let failed: Vec<(usize, ErrorCode)> = self
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                FileState::Failed(code) => Some((i, *code)),
                _ => None,
            })
            .collect();
        if self.policy.delivery == Delivery::All {
            let unsent = self.states.iter().any(|s| matches!(s, FileState::Pending | FileState::Sending));
            let verified = self.indexes(FileState::Verified);
            // Under `all`, a failure means no file is delivered: the set
            // ends with the verified ones left unrenamed (a restart may
            // still deliver them all).
            if failed.is_empty() && !unsent && !verified.is_empty() && !self.delivering {
                self.delivering = true;
                actions.push(Action::Deliver(verified));
                return actions;
            }
            if self.delivering && !verified.is_empty() {
                return actions; // renames under way
            }
            if !failed.is_empty() && !unsent {
                self.outcome_decided = true;
                actions.push(Action::Finish(Outcome::InError { failed }));
                return actions;
            }
        }
        if self.states.iter().all(|s| s.is_end()) {
            self.outcome_decided = true;
            actions.push(Action::Finish(if failed.is_empty() { Outcome::Done } else { Outcome::InError { failed } }));
        }
        actions
    }

    fn indexes(&self, state: FileState) -> Vec<usize> {
        self.states.iter().enumerate().filter(|(_, s)| **s == state).map(|(i, _)| i).collect()
    }

    /// Counts for the API.
    pub fn totals(&self) -> Totals {
        let mut t = Totals { files: self.states.len(), ..Totals::default() };
        for (state, size) in self.states.iter().zip(&self.sizes) {
            t.bytes += size;
            match state {
                FileState::Delivered => {
                    t.delivered += 1;
                    t.bytes_delivered += size;
                }
                FileState::Failed(_) => t.failed += 1,
                FileState::Skipped => t.skipped += 1,
                _ => t.left += 1,
            }
        }
        t
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
