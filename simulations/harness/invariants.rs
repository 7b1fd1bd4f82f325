//! The invariants every run must keep, checked against the stores as they
//! are on disk after the run and the files in every receive folder.
//!
//! Each violation starts with the invariant's name:
//! - `outcome`: every request ended `Done` with the delivered file's BLAKE3
//!   equal to the source's, or ended with a recorded cause (and, when every
//!   fault healed, `Done`); a request to a node lost for good ends `InError`
//!   naming the partner, or — sent to a group — moved to another member
//!   unless the lost member had accepted it; nothing acknowledged is lost;
//! - `files`: no file under its final name is partial or wrong (also checked
//!   at every crash);
//! - `single delivery`: no request is delivered twice;
//! - `agreement`: both nodes of a request agree on its final state;
//! - `sets`: a file set's record agrees with its files (totals, status,
//!   ended only once every file ended); each file is a request of its own
//!   under every other invariant; a set `Done` on its requester was
//!   released by its partner (whose record of the set is `Done`) and its
//!   set task ran on both nodes; a set not `Done` ran none on its
//!   requester;
//! - `all or nothing`: a file set sent with `delivery = all` has no file
//!   under its final name while another of its files is not yet received
//!   whole (checked through the run, every 100 steps, and at every crash);
//! - `no actor left`: nothing runs once every request ended, and every node
//!   stops with no task still holding it;
//! - `throughput` (runs that state a floor): every request that ended `Done`
//!   moved its bytes at no less than the floor, from its start to its end on
//!   the simulated clock;
//! - `tasks` (runs with tasks): for a request that ended `Done`, every
//!   post-task of each side ran and is logged done exactly once (a task that
//!   finished is never run again, not after a crash, not after a restart),
//!   and each built-in task's result exists exactly once: one archived copy,
//!   one link, one rename, one copy of what was sent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferry::protocol::{Digest, Direction, ErrorCode};
use ferry::store::{RequestRecord, Role, Status};

use super::{Node, RunSpec};

/// Files under their final names in `dir`: name and BLAKE3.
fn final_names(dir: &Path) -> Vec<(String, Option<Digest>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut out: Vec<(String, Option<Digest>)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".ferry"))
        .map(|n| {
            let digest = std::fs::read(dir.join(&n)).ok().map(|b| Digest::of(&b));
            (n, digest)
        })
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// `files`: every file under a final name is a whole, correct copy of a
/// source of the run (with tasks, also under the name the receiver's
/// rename gives it).
pub fn final_files(
    nodes: &BTreeMap<String, Node>,
    sources: &BTreeMap<String, Digest>,
    tasks: bool,
    when: &str,
) -> Vec<String> {
    let mut v = Vec::new();
    for (name, node) in nodes {
        for (file, digest) in final_names(&node.recv_dir()) {
            let source = match file.strip_suffix(super::DONE_SUFFIX) {
                Some(stem) if tasks => stem,
                _ => file.as_str(),
            };
            match (sources.get(source), digest) {
                (None, _) => v.push(format!("files: {name} holds {file} {when}, which no request sent")),
                (Some(want), Some(got)) if *want == got => {}
                (Some(_), got) => v.push(format!(
                    "files: {name}'s {file} {when} is partial or wrong (BLAKE3 {})",
                    got.map_or("unreadable".into(), |d| d.to_string())
                )),
            }
        }
    }
    v
}

/// `all or nothing`: see the module docs. A file counts as received whole
/// when it is under its final name or its work file has its full size
/// (the `files` invariant checks the content of what is in place).
pub fn all_or_nothing(nodes: &BTreeMap<String, Node>, spec: &RunSpec, when: &str) -> Vec<String> {
    let mut v = Vec::new();
    for (tag, r) in spec.requests.iter().enumerate().filter(|(_, r)| r.delivery_all && r.set_files > 0) {
        let Some(node) = nodes.get(&r.requester) else { continue };
        let acked = node.io.borrow().acks.iter().find(|(t, _)| *t == tag).and_then(|(_, id)| id.clone().ok());
        let Some(set) = acked.as_deref().and_then(ferry::protocol::RequestId::parse) else { continue };
        let receiver_id = if r.direction == Direction::Push { &r.partner } else { &r.requester };
        let Some(receiver) = nodes.get(receiver_id) else { continue };
        let dir = receiver.recv_dir();
        let files = r.files();
        let in_place: Vec<&String> = files.iter().filter(|f| dir.join(f).exists()).collect();
        let Some(first) = in_place.first() else { continue };
        for (i, f) in files.iter().enumerate() {
            let id = ferry::store::member_id(&set, u32::try_from(i).expect("a few files"));
            let work = ferry::transfer::receive::work_path(&dir, &id);
            let whole = dir.join(f).exists() || std::fs::metadata(&work).is_ok_and(|m| m.len() == r.size as u64);
            if !whole {
                v.push(format!(
                    "all or nothing: {receiver_id}'s {first} of set {set} (delivery = all) is in place {when} while {f} of the same set is not received whole"
                ));
                break;
            }
        }
    }
    v
}

pub struct World<'a> {
    pub spec: &'a RunSpec,
    pub nodes: &'a BTreeMap<String, Node>,
    pub sources: &'a BTreeMap<String, Digest>,
    /// Per node, its records by request id, read back from disk.
    pub records: &'a BTreeMap<String, BTreeMap<String, RequestRecord>>,
    /// Job-log messages per (node, request id).
    pub logs: &'a BTreeMap<(String, String), Vec<String>>,
    /// Submission tag -> (requester, request id or refusal).
    pub acks: &'a BTreeMap<usize, (String, Result<String, String>)>,
    /// `delivered` audit events per request id.
    pub deliveries: &'a BTreeMap<String, u32>,
    /// Per stopped node, tasks still holding it after shutdown.
    pub lingering: &'a BTreeMap<String, usize>,
    /// Requests an operator cancelled (the command was accepted).
    pub cancelled: &'a BTreeSet<String>,
}

impl World<'_> {
    pub fn check(&self) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(self.acknowledged_kept());
        v.extend(self.outcomes());
        v.extend(final_files(self.nodes, self.sources, self.spec.tasks, "after the run"));
        v.extend(self.no_work_file_left());
        v.extend(self.single_delivery());
        v.extend(self.agreement());
        v.extend(self.no_actor_left());
        v.extend(self.expected_log());
        v.extend(self.sets());
        v.extend(self.throughput());
        if self.spec.tasks {
            v.extend(self.tasks());
        }
        v
    }

    /// `tasks`: see the module docs.
    fn tasks(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut archived: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (requester, r) in self.requests() {
            let receiver = Self::receiver(requester, r);
            let sender = if receiver == requester.as_str() { r.partner.as_str() } else { requester.as_str() };
            let both_done = [receiver, sender].iter().all(|n| {
                self.records.get(*n).and_then(|rs| rs.get(r.id.as_str())).is_some_and(|x| x.status == Status::Done)
            });
            if !both_done {
                continue;
            }
            let id = r.id.to_string();
            let f = r.requested_name();
            for (node, count) in [(receiver, 4), (sender, 1)] {
                let log = self.logs.get(&(node.to_owned(), id.clone())).cloned().unwrap_or_default();
                for i in 1..=count {
                    let prefix = format!("post-task {i}/{count} (");
                    let done = log.iter().filter(|l| l.starts_with(&prefix) && l.contains(": ok in ")).count();
                    if done != 1 {
                        v.push(format!(
                            "tasks: {node}'s post-task {i}/{count} of {id} ({f}) is logged done {done} times"
                        ));
                    }
                }
            }
            let want = self.sources.get(f).copied();
            let digest = |p: &Path| std::fs::read(p).ok().map(|b| Digest::of(&b));
            let rnode = &self.nodes[receiver];
            let checks = [
                (rnode.recv_dir().join(format!("{f}{}", super::DONE_SUFFIX)), "renamed once"),
                (rnode.archive_dir().join(f), "archived"),
                (rnode.archive_dir().join(format!("{f}.lnk")), "linked"),
                (self.nodes[sender].sent_dir().join(f), "copied after sending"),
            ];
            for (path, what) in checks {
                if digest(&path) != want {
                    v.push(format!("tasks: {f} of {id} is not {what}: {} is missing or wrong", path.display()));
                }
            }
            for stray in [rnode.recv_dir().join(f), rnode.recv_dir().join(format!("{f}.done.done"))] {
                if stray.exists() {
                    v.push(format!("tasks: {} exists: the rename did not happen once", stray.display()));
                }
            }
            archived.entry(receiver).or_default().extend([f.to_owned(), format!("{f}.lnk")]);
        }
        for (node, expected) in archived {
            for (file, _) in final_names(&self.nodes[node].archive_dir()) {
                if !expected.contains(&file) && !self.spec.blocked.iter().any(|(n, b)| n == node && *b == file) {
                    v.push(format!("tasks: {node}'s archive holds {file}, a second result of some task"));
                }
            }
        }
        v
    }

    /// `throughput`: see the module docs. Measured on the requester's
    /// record, from its start (the partner's acceptance) to its end.
    fn throughput(&self) -> Vec<String> {
        let Some(floor) = self.spec.throughput_floor else { return Vec::new() };
        let mut v = Vec::new();
        for (node, r) in self.requests().filter(|(_, r)| r.status == Status::Done) {
            let (Some(start), Some(end)) = (r.started_at, r.finished_at) else {
                v.push(format!("throughput: {} on {node} is Done without its start and end times", r.id));
                continue;
            };
            let ms = end.saturating_sub(start).max(1);
            let rate = r.size.saturating_mul(1000) / ms;
            eprintln!("   throughput: {} ({} bytes) in {ms} simulated ms: {rate} bytes/s", r.id, r.size);
            if rate < floor {
                v.push(format!(
                    "throughput: {} ({} bytes) took {ms} simulated ms on {node}: {rate} bytes/s, below the floor of {floor}",
                    r.id, r.size
                ));
            }
        }
        v
    }

    fn lost(&self, node: &str) -> bool {
        self.spec.lost.contains(node)
    }

    /// Requests as their requesters (not lost) hold them.
    /// Every request a live requester holds, one per file: a file set's
    /// own record is left out (its files are requests of their own; the
    /// `sets` invariant checks the set).
    fn requests(&self) -> impl Iterator<Item = (&String, &RequestRecord)> {
        self.records
            .iter()
            .filter(|(n, _)| !self.lost(n))
            .flat_map(|(n, rs)| rs.values().map(move |r| (n, r)))
            .filter(|(_, r)| r.role == Role::Requester && r.set.is_none())
    }

    /// `sets`: a file set's record agrees with its files: its totals are
    /// its files' (done, failed, skipped), it is `Done` exactly when every
    /// file is, it ended only once every file ended, and a file is Done
    /// only if its set lists it (no file joined later).
    fn sets(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (node, rs) in self.records.iter().filter(|(n, _)| !self.lost(n)) {
            for set in rs.values().filter(|r| r.set.is_some()) {
                let info = set.set.as_ref().expect("filtered");
                let files: Vec<Option<&RequestRecord>> =
                    (0..info.files).map(|i| rs.get(ferry::store::member_id(&set.id, i).as_str())).collect();
                if files.iter().any(Option::is_none) {
                    if set.role == Role::Requested && set.status != Status::Done {
                        // A receiver's record of a set that did not end
                        // Done lacks the files never sent to it (whether it
                        // ended is `set_end_told`'s, from the requester).
                        continue;
                    }
                    v.push(format!("sets: {node}'s set {} lacks some of its {} files", set.id, info.files));
                    continue;
                }
                let files: Vec<&RequestRecord> = files.into_iter().flatten().collect();
                let count = |c| files.iter().filter(|f| ferry::lifecycle::set::counted(f) == Some(c)).count() as u32;
                use ferry::lifecycle::set::Counted;
                let (done, failed, skipped) = (count(Counted::Done), count(Counted::Failed), count(Counted::Skipped));
                let all_ended = files.iter().all(|f| f.status.is_final());
                let wrong = (info.done, info.failed, info.skipped) != (done, failed, skipped)
                    || (set.status == Status::Done) != (done == info.files)
                    || (set.status.is_final() && !all_ended)
                    || (all_ended && !set.status.is_final());
                if wrong {
                    v.push(format!(
                        "sets: {node}'s set {} is {:?} with totals {}/{}/{} but its files are {done} done, \
                         {failed} failed, {skipped} skipped of {}{}",
                        set.id,
                        set.status,
                        info.done,
                        info.failed,
                        info.skipped,
                        info.files,
                        if all_ended { "" } else { ", not all ended" }
                    ));
                }
                if self.spec.all_done && set.status != Status::Done {
                    v.push(format!("sets: {node}'s set {} ended {:?} though every fault healed", set.id, set.status));
                }
                if set.role == Role::Requester && info.files > 0 {
                    v.extend(self.set_tasks(node, set));
                    v.extend(self.set_end_told(node, set));
                }
            }
        }
        v
    }

    /// A pushed set that ended but not `Done` on `requester` has ended on
    /// its receiver too, if the receiver has a record of it (it does once
    /// a set stream opened): the requester tells it (`SetEnded`, or a
    /// cancel notice), and the run settles only once it was told.
    fn set_end_told(&self, requester: &str, set: &RequestRecord) -> Vec<String> {
        let partner = set.partner.as_str();
        if set.direction != Direction::Push
            || !set.status.is_final()
            || set.status == Status::Done
            || self.lost(partner)
        {
            return Vec::new();
        }
        let id = set.id.to_string();
        match self.records.get(partner).and_then(|rs| rs.get(&id)) {
            Some(theirs) if !theirs.status.is_final() => vec![format!(
                "sets: {requester}'s set {id} ended {:?} but {partner}'s record of it is {:?}\n{}",
                set.status,
                theirs.status,
                self.job_logs(&id, &[requester, partner])
            )],
            _ => Vec::new(),
        }
    }

    /// The set-task half of `sets`, for a set `requester` holds.
    fn set_tasks(&self, requester: &str, set: &RequestRecord) -> Vec<String> {
        let id = set.id.to_string();
        let ran = |node: &str| {
            let log = self.logs.get(&(node.to_owned(), id.clone()));
            log.map_or(0, |l| l.iter().filter(|l| l.starts_with("set task 1/1 (log") && l.contains(": ok in ")).count())
        };
        let mut v = Vec::new();
        if set.status != Status::Done {
            if ran(requester) > 0 {
                v.push(format!("sets: {requester}'s set {id} is {:?} but ran its set task", set.status));
            }
            return v;
        }
        let partner = set.partner.as_str();
        if self.lost(partner) {
            return v;
        }
        match self.records.get(partner).and_then(|rs| rs.get(&id)) {
            Some(theirs) if theirs.status == Status::Done => {}
            other => v.push(format!(
                "sets: {requester}'s set {id} is Done but {partner}'s record of it is {:?}{}",
                other.map(|r| r.status),
                self.job_logs(&id, &[requester, partner])
            )),
        }
        for node in [requester, partner] {
            if ran(node) == 0 {
                v.push(format!(
                    "sets: {requester}'s set {id} is Done but {node} never ran its set task{}",
                    self.job_logs(&id, &[requester, partner])
                ));
            }
        }
        v
    }

    fn receiver<'r>(requester: &'r str, r: &'r RequestRecord) -> &'r str {
        match r.direction {
            Direction::Push => &r.partner,
            Direction::Pull => requester,
        }
    }

    fn acknowledged_kept(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (tag, (node, ack)) in self.acks {
            match ack {
                Ok(id) if !self.records.get(node).is_some_and(|rs| rs.contains_key(id)) => v.push(format!(
                    "outcome: submission {tag} was acknowledged by {node} as {id} but {node} has no record of it"
                )),
                Err(e) => v.push(format!("outcome: submission {tag} was refused by {node}: {e}")),
                _ => {}
            }
        }
        v
    }

    fn outcomes(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (node, r) in self.requests() {
            let what = format!("{} ({} {:?} {} with {})", r.id, r.file_name, r.direction, node, r.partner);
            match r.status {
                Status::Done => {
                    let receiver = Self::receiver(node, r);
                    // With tasks, the receiver's last post-task renamed it.
                    let suffix = if self.spec.tasks { super::DONE_SUFFIX } else { "" };
                    let path = self.nodes[receiver].recv_dir().join(format!("{}{suffix}", r.file_name));
                    let got = std::fs::read(&path).ok().map(|b| Digest::of(&b));
                    let want = self.sources.get(&r.file_name);
                    if got.is_none() || got.as_ref() != want {
                        v.push(format!(
                            "outcome: {what} is Done but {receiver} holds {} (BLAKE3 {}, source {})",
                            r.file_name,
                            got.map_or("missing".into(), |d| d.to_string()),
                            want.map_or("unknown".into(), |d| d.to_string())
                        ));
                    }
                }
                Status::InError | Status::Cancelled => {
                    let cause = r.error.as_ref().map(|e| (e.code, e.message.clone()));
                    match &cause {
                        None => v.push(format!("outcome: {what} ended {:?} with no recorded cause", r.status)),
                        Some((_, m)) if m.trim().is_empty() => {
                            v.push(format!("outcome: {what} ended {:?} with an empty cause", r.status))
                        }
                        Some((ErrorCode::Cancelled, _)) if self.cancelled.contains(r.id.as_str()) => {}
                        Some(_) if self.spec.all_done => v.push(format!(
                            "outcome: {what} ended {:?} although every fault healed: {:?}",
                            r.status, cause
                        )),
                        Some((code, message)) if self.lost(&r.partner) => {
                            let accepted = r.started_at.is_some();
                            if r.group.is_some() && !accepted {
                                v.push(format!(
                                    "outcome: {what} to group {:?} stayed with lost member {} that never accepted it",
                                    r.group, r.partner
                                ));
                            }
                            if *code != ErrorCode::PartnerUnavailable || !message.contains(&r.partner) {
                                v.push(format!(
                                    "outcome: {what} to lost node {} ended with {code:?} \"{message}\", not PartnerUnavailable naming it",
                                    r.partner
                                ));
                            }
                        }
                        Some(_) => {}
                    }
                }
                s => v.push(format!("outcome: {what} ended the run {s:?}")),
            }
        }
        v
    }

    /// `files`: a request that ended Done left no work file behind on either
    /// node (its work file became the delivered file).
    fn no_work_file_left(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (name, node) in self.nodes {
            let work = node.recv_dir().join(".ferry-work");
            let Ok(entries) = std::fs::read_dir(&work) else { continue };
            for entry in entries.filter_map(|e| e.ok()) {
                let file = entry.file_name().to_string_lossy().into_owned();
                let id = file.strip_suffix(".part").unwrap_or(&file);
                let ended = self
                    .requests()
                    .find(|(_, r)| r.id.as_str() == id && matches!(r.status, Status::Done | Status::Cancelled));
                if let Some((requester, r)) = ended {
                    v.push(format!(
                        "files: {name} still holds the work file {file} of a request that is {:?}\n{}",
                        r.status,
                        self.job_logs(id, &[requester, &r.partner])
                    ));
                }
            }
        }
        v
    }

    fn single_delivery(&self) -> Vec<String> {
        self.deliveries
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("single delivery: {id} was delivered {n} times"))
            .collect()
    }

    fn agreement(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (node, r) in self.requests() {
            if self.lost(&r.partner) {
                continue;
            }
            let theirs = self.records.get(&r.partner).and_then(|rs| rs.get(r.id.as_str()));
            let ours = r.status;
            let fine = match (ours, theirs.map(|t| t.status)) {
                (Status::Done, Some(Status::Done)) => true,
                (Status::Done, _) => false,
                // Cancelled is final: the partner must have learnt it too.
                (Status::Cancelled, Some(Status::Cancelled)) | (Status::Cancelled, None) => true,
                (Status::Cancelled, _) => false,
                // Not Done here: the partner must not be Done, nor still think it runs.
                (_, None) => true,
                (_, Some(Status::Done | Status::Running | Status::ToSubmit)) => false,
                (_, Some(_)) => true,
            };
            if !fine {
                v.push(format!(
                    "agreement: {} ({}) is {ours:?} on {node} but {} on {}\n{}",
                    r.id,
                    r.file_name,
                    theirs.map_or("absent".into(), |t| format!("{:?}", t.status)),
                    r.partner,
                    self.job_logs(r.id.as_str(), &[node, &r.partner])
                ));
            }
        }
        v
    }

    /// Both nodes' job logs of a request, for the failure message.
    fn job_logs(&self, id: &str, nodes: &[&str]) -> String {
        let mut out = String::new();
        for n in nodes {
            let lines = self.logs.get(&(n.to_string(), id.to_string())).cloned().unwrap_or_default();
            out.push_str(&format!("    {n}'s job log:\n"));
            for l in lines {
                out.push_str(&format!("      {l}\n"));
            }
        }
        out
    }

    fn no_actor_left(&self) -> Vec<String> {
        let mut v = Vec::new();
        for name in self.nodes.keys().filter(|n| !self.lost(n)) {
            match self.lingering.get(name) {
                None => v.push(format!("no actor left: {name} never reported its shutdown")),
                Some(0) => {}
                Some(n) => v.push(format!("no actor left: {n} tasks or actors still held {name} after it stopped")),
            }
        }
        v
    }

    fn expected_log(&self) -> Vec<String> {
        let Some(text) = self.spec.expect_log else { return vec![] };
        if self.logs.values().flatten().any(|m| m.contains(text)) {
            return vec![];
        }
        vec![format!("scenario: no job log mentions \"{text}\"")]
    }
}
