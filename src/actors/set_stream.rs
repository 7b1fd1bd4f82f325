//! The set stream (see [`crate::protocol::set_stream`]): a pushed file
//! set's small files sent back to back on one stream, their durable work
//! grouped on the receiver.
//!
//! **Sender** ([`lead`]): a ClientRunner that runs a small file of a pushed
//! set becomes the stream's leader: it takes the set's [`Slot`] first (so
//! runners started meanwhile hand it their files instead of opening
//! streams of their own), then opens a stream of kind `S`, sends
//! its own file and claims more queued small files of the same set
//! (`ToSubmit → Running`, one store write each), keeping at most a
//! [`Window`] unanswered, until no file of the set is left to claim. Each
//! `Filed` answer records its files `Done` (or failed), then one flush.
//! A refused stream falls back to the one-request-per-file path for the
//! leader's own file (the rest stay queued for their own runners). If the
//! stream breaks, the files claimed and not answered go back to the queue
//! (the leader's own file fails as any request would and is retried): the
//! one-request path then finds the receiver's record and confirms a file
//! the receiver had already delivered, so nothing is delivered twice. A
//! stop or cancel of the set (seen in the set's record between batches)
//! stops or cancels the files not answered.
//!
//! **Receiver** ([`serve`]): checks the `Open` (the rule exists, allows the
//! partner, has no per-file tasks on the receiving side, and its target
//! mode is `replace` or `create`; otherwise `Refused`), records the set
//! (`record_set`: each streamed file is recorded as its member), then writes each
//! file under its work name as it arrives (claimed in the table of
//! running requests, so no other run of the same file can interleave; its
//! write-back started at once) and commits a [`Batch`] when it is full, or
//! nothing more is waiting and no commit runs. A commit runs on a task of
//! its own while the next batch is written; commits never overlap. The
//! commit's durable order:
//! 1. every file of the batch is fsynced under its work name (up to 16 at
//!    once);
//! 2. each is recorded verified and `delivered` (or held, for `delivery =
//!    all`), then one flush: from here a crash finishes the delivery (the
//!    one-request path's rule);
//! 3. each is renamed into place (its folders made, each new folder's
//!    parent fsynced), then each folder that received a file is fsynced
//!    once (in `create` mode each file's no-clobber placement also fsyncs
//!    its folder);
//! 4. each is recorded `Done` and the set counts them, then one flush;
//! 5. only then does `Filed` tell the sender.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::mpsc;

use super::channel_run::{claim_serving, release_serving, Command};
use super::connections::{self, ConnectionsMsg};
use super::context::{Core, RunHandle};
use super::AUDIT;
use crate::fileset::progress::{Delivery, OnFailure};
use crate::lifecycle;
use crate::protocol::codec::{self, HEADER_LEN};
use crate::protocol::names::{check_entry_path, is_folder_entry};
use crate::protocol::set_stream::{
    Batch, FileOutcome, Filed, Moment, SetFrame, StreamedFile, Window, MAX_STREAMED_FILE,
};
use crate::protocol::{Digest, Direction, ErrorCode, RequestId, StreamKind};
use crate::store::{member_id, now_ms, RequestRecord, Role, SetMember, Status, Step, TargetMode};
use crate::transfer::{receive, retrieve};

type Refusal = (ErrorCode, String);

/// What the leader did with its own file.
pub enum Led {
    /// Sent on the stream (its outcome is recorded).
    Handled,
    /// The stream could not be used: send the file one request alone.
    Declined(String),
    /// Handed to the stream another runner leads for the same set.
    Joined,
    /// The partner refused the set for good (it cancelled it: its
    /// `partial_keep_hours` sweep, or its operator): the leader's own file
    /// fails with this, as the set's queued files did.
    Refused(ErrorCode, String),
}

/// Whether `rec` may lead (or ride on) a set stream: a small file of a
/// pushed set, sent fresh (no step past the transfer, nothing delivered),
/// under a rule whose sending side runs no per-file tasks (error tasks
/// included: a file that fails on the stream runs none).
pub fn is_streamable(rec: &RequestRecord, rule: &crate::config::Rule) -> bool {
    rec.member_of.is_some()
        && rec.direction == Direction::Push
        && rec.role == Role::Requester
        && rec.size <= MAX_STREAMED_FILE
        && matches!(rec.step, Step::PreTask | Step::Transfer)
        && !rec.delivered
        && rec.restart_point.is_none()
        && rule.sender.has_no_file_tasks()
}

// ---------------------------------------------------------------- frames

/// Reads frames from `recv` into `tx` until the stream ends, an error, or
/// the receiver of `tx` is gone. (A task of its own: a half-read frame is
/// never dropped by a `select!`.)
async fn read_frames(mut recv: quinn::RecvStream, tx: mpsc::Sender<Result<SetFrame, String>>) {
    loop {
        let frame = read_frame(&mut recv, usize::MAX).await;
        let (next, end) = match frame {
            Ok(Some(f)) => (Ok(f), false),
            Ok(None) => (Err("the partner finished the stream".to_string()), true),
            Err(e) => (Err(e), true),
        };
        if tx.send(next).await.is_err() || end {
            return;
        }
    }
}

/// One frame (`None` at the end of the stream), its body at most `max`
/// bytes as well as the set-stream limit.
async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<SetFrame>, String> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(format!("stream lost: {e}")),
    }
    let len = codec::set_body_len(header).map_err(|e| e.to_string())?;
    if len > max {
        return Err(format!("a frame of {len} bytes where at most {max} are expected"));
    }
    let mut body = vec![0; len];
    recv.read_exact(&mut body).await.map_err(|e| format!("stream lost: {e}"))?;
    codec::decode_set_body(&body).map(Some).map_err(|e| format!("bad set-stream frame: {e}"))
}

/// Largest `Open` frame: a set id, a rule name, a flag, a count and a
/// pattern cut to `fileset::SHOWN_PATTERN_BYTES`.
const MAX_OPEN_BODY: usize = 8192;

/// How long a write may wait for the peer to read (its flow control).
const WRITE_LIMIT: Duration = Duration::from_secs(60);

async fn write_bytes(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_LIMIT, send.write_all(bytes)).await {
        Ok(r) => r.map_err(|e| format!("stream lost: {e}")),
        Err(_) => Err(format!("the partner read nothing for {} s", WRITE_LIMIT.as_secs())),
    }
}

async fn write_frame(send: &mut quinn::SendStream, frame: &SetFrame) -> Result<(), String> {
    let bytes = codec::encode_set_frame(frame).map_err(|e| e.to_string())?;
    write_bytes(send, &bytes).await
}

// ---------------------------------------------------------------- sender

/// One file the leader sent and waits to hear of.
struct InFlight {
    size: u64,
    hash: Digest,
    own: bool,
}

/// How a stream the leader ran ended early.
enum Abort {
    /// The link or the partner: files not answered go back to the queue.
    Lost(ErrorCode, String),
    /// An operator stopped the set.
    Stopped,
    /// An operator cancelled the set.
    Cancelled(String),
}

/// Sends `rec` (a small file of a pushed set, already `Running`) and as
/// many more small files of its set as are queued, on one stream.
pub async fn lead(
    ctx: &RunHandle,
    conns: &ActorRef<ConnectionsMsg>,
    rec: &RequestRecord,
    rule: &crate::config::Rule,
    control: &mut mpsc::Receiver<Command>,
) -> Led {
    let Some(member) = rec.member_of.clone() else { return Led::Declined("not a file of a set".into()) };
    let set = match ctx.core.store.get(&member.set) {
        Ok(Some(s)) => s,
        _ => return Led::Declined("its set cannot be read".into()),
    };
    // The set's slot is taken before the stream is opened, so the files
    // whose runners start meanwhile join this stream instead of opening
    // streams of their own (each with batches too small to share much).
    let (join_tx, mut joined) = mpsc::unbounded_channel();
    match take_slot(&ctx.set_streams, &member.set, rec, &join_tx) {
        SlotTaken::Leader => {}
        SlotTaken::Joined => return Led::Joined,
        SlotTaken::Declined => return Led::Declined(format!("{} refused the set's stream lately", rec.partner)),
        SlotTaken::Refused(why) => return Led::Refused(ErrorCode::Cancelled, why),
    }
    let hold = lifecycle::set::holds_files(&set);
    let files = set.set.as_ref().map_or(0, |i| i.files);
    let link = match connections::connect(conns, &rec.partner).await {
        Ok(l) => l,
        Err(e) => return decline(ctx, &member.set, &join_tx, &mut joined, Unopened::Failed(e.message)),
    };
    let _channel = link.channel_guard();
    let (mut send, recv) = match link.conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            let why = Unopened::Failed(crate::transport::channel::describe_connection(&e));
            return decline(ctx, &member.set, &join_tx, &mut joined, why);
        }
    };
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_frames(recv, tx));
    let _stop_reader = AbortOnDrop(reader);
    let pattern = set.set.as_ref().map(|i| crate::fileset::shown_pattern(&i.pattern)).unwrap_or_default();
    let open_frame = SetFrame::Open { set: member.set.clone(), rule: rec.rule.clone(), hold, files, pattern };
    match open(ctx, &mut send, &mut rx, &open_frame, &rec.partner).await {
        Ok(()) => {}
        Err(Unopened::Refused(ErrorCode::Cancelled, why)) => {
            // Sent alone, the files would be held there for a set that
            // will never be released: every runner of the set's files
            // fails from now on, the files that joined fail now, and the
            // queued ones are failed below.
            refuse_slot(&ctx.set_streams, &member.set, &join_tx, &why);
            joined.close();
            while let Ok(late) = joined.try_recv() {
                record_failure(&ctx.core, &late.id, ErrorCode::Cancelled, &why);
            }
            let (core, set, message) = (ctx.core.clone(), member.set.clone(), why.clone());
            let leader = rec.id.clone();
            let ended =
                crate::determinism::blocking(move || cancelled_there(&core, &set, files, &message, &leader)).await;
            match ended {
                Ok(Reach { running, held }) => {
                    // Files of the set sent alone right now (a large file
                    // started beside this stream's leader) are cancelled,
                    // and the partner is told to discard the ones it holds.
                    if let Some(a) = ctx.intake.actors.get() {
                        for id in running {
                            let _ = a
                                .commander
                                .cast(super::commander::CommanderMsg::Command(id, Command::Cancel(why.clone())));
                        }
                    }
                    if held {
                        ctx.intake.actors.wake_commander();
                    }
                }
                Err(e) => {
                    tracing::error!(set = %member.set, error = %e, "the files of a set its partner cancelled were not all failed")
                }
            }
            return Led::Refused(ErrorCode::Cancelled, why);
        }
        Err(why) => return decline(ctx, &member.set, &join_tx, &mut joined, why),
    }
    tracing::info!(request_id = %rec.id, set = %member.set, partner = %rec.partner, "set stream opened");

    let mut stream = Leader {
        ctx,
        rec,
        rule,
        set: member.set.clone(),
        files,
        next_index: 0,
        own_sent: false,
        window: Window::default(),
        in_flight: HashMap::new(),
        claimed: VecDeque::new(),
        exhausted: false,
        stop_on_failure: set.set.as_ref().is_some_and(|i| i.policy.on_failure == OnFailure::Stop),
        joined,
        any_failed: false,
        hold,
    };
    ctx.open_channels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outcome = stream.run(&mut send, &mut rx, control).await;
    ctx.open_channels.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    // No file joins from here; those that joined too late go back to the queue.
    leave_slot(&ctx.set_streams, &member.set, &join_tx, None);
    drop(join_tx);
    settle_late(&ctx.core, &member.set, &mut stream.joined, "its set's stream had ended");
    // Files of the set the stream left queued are the Commander's again.
    ctx.intake.actors.wake_commander();
    match outcome {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(abort) => {
            let _ = send.reset(quinn::VarInt::from_u32(0));
            stream.abort(abort).await;
        }
    }
    Led::Handled
}

/// Why a set's stream was not opened.
enum Unopened {
    /// The partner refused it (its rule cannot take a stream): the set's
    /// files go one request each for a while.
    Refused(ErrorCode, String),
    /// The partner was not reached or did not answer: the files wait for
    /// it as any request does, and the next one tries a stream again.
    Failed(String),
}

/// Sends `open` and waits for the answer.
async fn open(
    ctx: &RunHandle,
    send: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<Result<SetFrame, String>>,
    open: &SetFrame,
    partner: &str,
) -> Result<(), Unopened> {
    let mut first = vec![StreamKind::SetStream.byte()];
    first.extend_from_slice(&codec::encode_set_frame(open).map_err(|e| Unopened::Failed(e.to_string()))?);
    write_bytes(send, &first).await.map_err(Unopened::Failed)?;
    let limit = Duration::from_millis(ctx.core.config.limits.handshake_timeout_ms);
    match tokio::time::timeout(limit, rx.recv()).await {
        Ok(Some(Ok(SetFrame::Opened))) => Ok(()),
        Ok(Some(Ok(SetFrame::Refused { code, message }))) => {
            Err(Unopened::Refused(code, format!("{partner} refused the set stream ({code}: {message})")))
        }
        Ok(Some(Ok(other))) => Err(Unopened::Failed(format!("unexpected answer to Open: {other:?}"))),
        Ok(Some(Err(e))) => Err(Unopened::Failed(e)),
        Ok(None) | Err(_) => Err(Unopened::Failed("no answer to Open".into())),
    }
}

/// A set's entry in the node's table of set streams.
pub enum Slot {
    /// A runner leads the set's stream (or is opening it): another file
    /// of the set joins it through this sender.
    Led(mpsc::UnboundedSender<RequestRecord>),
    /// The partner refused the set's stream: until then its files go one
    /// request each, rather than each trying to lead a stream again.
    Declined(tokio::time::Instant),
    /// The partner cancelled the set (it refused its stream `Cancelled`):
    /// every file of the set run here from now on fails with this, none
    /// goes alone (for as long as this process runs).
    Refused(String),
}

/// How long a set whose stream was refused sends its files one request
/// each before one of them tries to lead a stream again.
const DECLINED_FOR: Duration = Duration::from_secs(30);

/// The node's set streams, by set.
pub type SetStreams = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<RequestId, Slot>>>;

/// What the node's table of set streams says now.
#[derive(Debug, Default)]
pub struct SlotsNow {
    /// Sets whose stream is led (or being opened) here: their small files
    /// are the stream's to claim.
    pub led: BTreeSet<RequestId>,
    /// Sets whose stream the partner refused lately: their files go one
    /// request each.
    pub declined: BTreeSet<RequestId>,
}

pub fn slots_now(streams: &SetStreams) -> SlotsNow {
    let streams = streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = tokio::time::Instant::now();
    let mut out = SlotsNow::default();
    for (set, slot) in streams.iter() {
        match slot {
            Slot::Led(_) => {
                out.led.insert(set.clone());
            }
            Slot::Declined(until) if now < *until => {
                out.declined.insert(set.clone());
            }
            Slot::Declined(_) => {}
            // Each of its files fails when its runner starts.
            Slot::Refused(_) => {
                out.declined.insert(set.clone());
            }
        }
    }
    out
}

/// An operator restarts set `set`: a refusal of its stream as cancelled
/// is forgotten, so its next file tries a stream again.
pub fn forget_refusal(streams: &SetStreams, set: &RequestId) {
    let mut streams = streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if matches!(streams.get(set), Some(Slot::Refused(_))) {
        streams.remove(set);
    }
}

/// Why the partner refused set `set` for good, if it did (see
/// [`Slot::Refused`]): a file of it must not be sent, streamed or alone.
pub fn refused_by_partner(streams: &SetStreams, set: &RequestId) -> Option<String> {
    let streams = streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match streams.get(set) {
        Some(Slot::Refused(why)) => Some(why.clone()),
        _ => None,
    }
}

enum SlotTaken {
    /// This runner leads the set's stream.
    Leader,
    /// Handed to the stream another runner leads.
    Joined,
    /// The set's stream was declined lately.
    Declined,
    /// The partner cancelled the set.
    Refused(String),
}

fn take_slot(
    streams: &SetStreams,
    set: &RequestId,
    rec: &RequestRecord,
    join: &mpsc::UnboundedSender<RequestRecord>,
) -> SlotTaken {
    let mut streams = streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match streams.get(set) {
        Some(Slot::Led(tx)) if tx.send(rec.clone()).is_ok() => return SlotTaken::Joined,
        Some(Slot::Declined(until)) if tokio::time::Instant::now() < *until => return SlotTaken::Declined,
        Some(Slot::Refused(why)) => return SlotTaken::Refused(why.clone()),
        _ => {}
    }
    streams.insert(set.clone(), Slot::Led(join.clone()));
    SlotTaken::Leader
}

/// Gives up the set's slot if this leader still holds it, leaving a
/// `Declined` mark when `declined`.
fn leave_slot(
    streams: &SetStreams,
    set: &RequestId,
    join: &mpsc::UnboundedSender<RequestRecord>,
    declined: Option<tokio::time::Instant>,
) {
    let mut streams = streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if matches!(streams.get(set), Some(Slot::Led(tx)) if tx.same_channel(join)) {
        match declined {
            Some(until) => streams.insert(set.clone(), Slot::Declined(until)),
            None => streams.remove(set),
        };
    }
}

/// The partner cancelled the set: its slot says so for good (if this
/// leader still holds it).
fn refuse_slot(streams: &SetStreams, set: &RequestId, join: &mpsc::UnboundedSender<RequestRecord>, why: &str) {
    let mut streams = streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if matches!(streams.get(set), Some(Slot::Led(tx)) if tx.same_channel(join)) {
        streams.insert(set.clone(), Slot::Refused(why.to_owned()));
    }
}

/// The stream was not opened: the files that joined meanwhile go back to
/// the queue, and the leader's own file goes alone. A refused stream marks
/// the set declined for a while.
fn decline(
    ctx: &RunHandle,
    set: &RequestId,
    join: &mpsc::UnboundedSender<RequestRecord>,
    joined: &mut mpsc::UnboundedReceiver<RequestRecord>,
    why: Unopened,
) -> Led {
    let (why, declined) = match why {
        Unopened::Refused(_, why) => (why, Some(tokio::time::Instant::now() + DECLINED_FOR)),
        Unopened::Failed(why) => (why, None),
    };
    leave_slot(&ctx.set_streams, set, join, declined);
    if settle_late(&ctx.core, set, joined, &format!("its set's stream could not be opened ({why})")) {
        ctx.intake.actors.wake_commander();
    }
    Led::Declined(why)
}

/// What of a set its partner cancelled is still out there: the files
/// sent alone now, and whether the partner holds any (owed a notice).
struct Reach {
    running: Vec<RequestId>,
    held: bool,
}

/// The partner cancelled the set (its stream was refused `Cancelled`):
/// the set's files still queued here fail with that, so none is sent
/// alone (the partner would hold it for a release that cannot come); the
/// partner is owed a cancel notice for each file it may hold, sent alone
/// (too large for a stream) and `Done` here under `delivery = all`, so it
/// discards it. Returns the files running now, other than `leader`, for
/// the caller to cancel.
fn cancelled_there(core: &Core, set: &RequestId, files: u32, why: &str, leader: &RequestId) -> Reach {
    let holds = core.store.get(set).ok().flatten().is_some_and(|s| lifecycle::set::holds_files(&s));
    let mut reach = Reach { running: Vec::new(), held: false };
    for index in 0..files {
        let id = member_id(set, index);
        let r = core.store.update_if(
            &id,
            why,
            |r| r.status == Status::ToSubmit,
            |r| {
                lifecycle::fail(r, ErrorCode::Cancelled, why, 0, now_ms());
            },
        );
        match r {
            Ok(Some(_)) => {}
            Ok(None) => match core.store.get(&id) {
                Ok(Some(m)) if m.status == Status::Running && m.id != *leader => reach.running.push(m.id),
                // (A file that fits a stream went on one, and the partner's
                // sweep removed it with its set: no notice for those.)
                Ok(Some(m)) if holds && m.status == Status::Done && m.size > MAX_STREAMED_FILE => {
                    match core.store.owe_cancel_notice(&m.id) {
                        Ok(()) => reach.held = true,
                        Err(e) => tracing::error!(request_id = %id, error = %e, "cannot owe a cancel notice"),
                    }
                }
                _ => {}
            },
            Err(e) => {
                tracing::error!(request_id = %id, error = %e, "cannot record a file of a set its partner cancelled")
            }
        }
    }
    reach
}

/// The files that joined a stream which will not send them: stopped or
/// cancelled with their set if it was meanwhile, else back in the queue.
/// Closes `joined` first, so none joins after. Whether any file was there.
fn settle_late(core: &Core, set: &RequestId, joined: &mut mpsc::UnboundedReceiver<RequestRecord>, why: &str) -> bool {
    joined.close();
    let verdict = set_verdict(core, set);
    let mut any = false;
    while let Ok(late) = joined.try_recv() {
        match &verdict {
            Err(Abort::Stopped) => record_failure(core, &late.id, ErrorCode::Stopped, STOPPED_WITH_SET),
            Err(Abort::Cancelled(reason)) => cancel_one(core, &late.id, reason),
            _ => give_back(core, &late.id, &format!("{why}; back in the queue")),
        }
        any = true;
    }
    any
}

const STOPPED_WITH_SET: &str = "stopped by an operator with its set";

/// Whether the set was stopped or cancelled (its stream ends then).
fn set_verdict(core: &Core, set: &RequestId) -> Result<(), Abort> {
    match core.store.get(set) {
        Ok(Some(s)) if s.status == Status::Cancelled => {
            Err(Abort::Cancelled(s.error.map_or_else(|| "the set was cancelled".into(), |e| e.message)))
        }
        Ok(Some(s)) if lifecycle::is_stopped(&s) => Err(Abort::Stopped),
        _ => Ok(()),
    }
}

/// Puts a file claimed for a stream back in the queue.
fn give_back(core: &Core, id: &RequestId, why: &str) {
    let r = core.store.update_if(id, why, |r| r.status == Status::Running, lifecycle::give_back);
    if let Err(e) = r {
        tracing::error!(request_id = %id, error = %e, "cannot put a file back in the queue");
    }
}

/// Cancels a file of the set. The receiver may hold it or have it
/// written: it is owed a cancel notice (which discards a held file and
/// leaves a delivered one).
fn cancel_one(core: &Core, id: &RequestId, reason: &str) {
    let r =
        core.store.update_if(id, reason, |r| r.status == Status::Running, |r| lifecycle::cancel(r, reason, now_ms()));
    if let Err(e) = r.and_then(|_| core.store.owe_cancel_notice(id)) {
        tracing::error!(request_id = %id, error = %e, "cannot record request state");
    }
}

/// Records a running file of the set failed.
fn record_failure(core: &Core, id: &RequestId, code: ErrorCode, message: &str) {
    let status = std::cell::Cell::new(None);
    let r = core.store.update_if(
        id,
        &format!("{code}: {message}"),
        |r| r.status == Status::Running,
        |r| status.set(lifecycle::fail(r, code, message, 0, now_ms())),
    );
    if let Err(e) = r {
        tracing::error!(request_id = %id, error = %e, "cannot record request state");
    }
    tracing::warn!(target: AUDIT, event = "failed", request_id = %id, code = %code, message = %message, status = ?status.get());
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Leader<'a> {
    ctx: &'a RunHandle,
    rec: &'a RequestRecord,
    rule: &'a crate::config::Rule,
    set: RequestId,
    files: u32,
    /// The next member index to look at for a file to claim.
    next_index: u32,
    own_sent: bool,
    window: Window,
    in_flight: HashMap<RequestId, InFlight>,
    /// Claimed (`Running`), not sent yet.
    claimed: VecDeque<RequestRecord>,
    /// No file of the set is left to claim.
    exhausted: bool,
    /// `on_failure = stop`: a failed file skips the files not sent yet.
    stop_on_failure: bool,
    /// Files whose own runners handed them to this stream.
    joined: mpsc::UnboundedReceiver<RequestRecord>,
    /// A file failed (under `on_failure = stop`).
    any_failed: bool,
    /// The set is sent with `delivery = all`.
    hold: bool,
}

/// Files claimed per store pass.
const CLAIM_BATCH: usize = 64;

/// Files read (and written to the stream) per pass.
const READ_AHEAD: usize = 64;

/// Files the receiver accepts per pass, and their bytes at most (one file
/// more may pass the bound).
const ACCEPT_AHEAD: usize = 64;
const ACCEPT_BYTES: usize = 4 << 20;

/// Frames the receiver reads ahead of the one it handles.
const READ_AHEAD_FRAMES: usize = 4;

/// The receiver's memory for one stream, reserved in the partner's budget:
/// the frames read ahead, the files being accepted, the one being read.
const STREAM_MEMORY: u64 = (READ_AHEAD_FRAMES as u64 + 1) * MAX_STREAMED_FILE + ACCEPT_BYTES as u64 + MAX_STREAMED_FILE;

impl Leader<'_> {
    async fn run(
        &mut self,
        send: &mut quinn::SendStream,
        rx: &mut mpsc::Receiver<Result<SetFrame, String>>,
        control: &mut mpsc::Receiver<Command>,
    ) -> Result<(), Abort> {
        let frame_limit = Duration::from_millis(self.ctx.core.config.limits.frame_timeout_ms);
        let mut shutdown = self.ctx.core.shutdown.clone();
        let mut closing = false;
        loop {
            // Send while the window admits the next file.
            if !closing {
                loop {
                    // The files the window admits (up to READ_AHEAD), read in one
                    // pass off the async threads, written in one go.
                    let mut batch = Vec::new();
                    let mut window = self.window;
                    while batch.len() < READ_AHEAD {
                        let next = match self.next_file().await {
                            Ok(Some(n)) => n,
                            Ok(None) => break,
                            Err(e) => {
                                // Claimed and not sent: the abort accounts for them.
                                self.claimed.extend(batch);
                                return Err(e);
                            }
                        };
                        if !window.admits(next.size) {
                            self.claimed.push_front(next);
                            break;
                        }
                        window.sent(next.size);
                        batch.push(next);
                    }
                    if batch.is_empty() {
                        break;
                    }
                    let mut frames = Vec::new();
                    for (next, read) in read_sources(self.ctx, self.rule, batch).await {
                        if self.any_failed {
                            // `on_failure = stop`: a file before it in this pass failed.
                            self.skip(&next);
                            continue;
                        }
                        match read {
                            Ok((data, hash)) => {
                                let size = data.len() as u64;
                                let file = StreamedFile {
                                    index: next.member_of.as_ref().map_or(0, |m| m.index),
                                    id: next.id.clone(),
                                    name: next.file_name.clone(),
                                    data,
                                    hash,
                                };
                                frames.extend(
                                    codec::encode_set_frame(&SetFrame::File(file))
                                        .map_err(|e| Abort::Lost(ErrorCode::Internal, e.to_string()))?,
                                );
                                self.window.sent(size);
                                self.in_flight
                                    .insert(next.id.clone(), InFlight { size, hash, own: next.id == self.rec.id });
                            }
                            Err((code, message)) => {
                                record_failure(&self.ctx.core, &next.id, code, &message);
                                self.after_failure();
                            }
                        }
                    }
                    write_bytes(send, &frames).await.map_err(|e| Abort::Lost(ErrorCode::Connection, e))?;
                }
            }
            if !closing && self.exhausted && self.claimed.is_empty() && self.in_flight.is_empty() {
                write_frame(send, &SetFrame::Close).await.map_err(|e| Abort::Lost(ErrorCode::Connection, e))?;
                closing = true;
            }
            tokio::select! {
                biased;
                Some(r) = self.joined.recv(), if !closing => {
                    if self.stop_on_failure && self.exhausted && self.claimed.is_empty() && self.any_failed {
                        self.skip(&r);
                    } else {
                        self.claimed.push_back(r);
                    }
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Err(Abort::Lost(
                    ErrorCode::Shutdown,
                    format!("node {} is shutting down", self.ctx.core.config.node_id),
                )),
                c = control.recv() => return Err(match c {
                    Some(Command::Stop) => Abort::Stopped,
                    Some(Command::Cancel(reason)) => Abort::Cancelled(reason),
                    Some(Command::Shutdown) | None => Abort::Lost(
                        ErrorCode::Shutdown,
                        format!("node {} is shutting down", self.ctx.core.config.node_id),
                    ),
                }),
                frame = tokio::time::timeout(frame_limit, rx.recv()) => match frame {
                    Ok(Some(Ok(SetFrame::Filed(results)))) => {
                        let done = self.answered(results).await;
                        if let Err(abort) = set_verdict(&self.ctx.core, &self.set) {
                            if matches!(abort, Abort::Cancelled(_)) && self.hold {
                                // Held by the receiver: a cancelled set's files go.
                                for id in &done {
                                    if let Err(e) = self.ctx.core.store.owe_cancel_notice(id) {
                                        tracing::error!(request_id = %id, error = %e, "cannot owe a cancel notice");
                                    }
                                }
                            }
                            return Err(abort);
                        }
                    }
                    Ok(Some(Ok(SetFrame::Closed))) if closing => return Ok(()),
                    Ok(Some(Ok(other))) => {
                        return Err(Abort::Lost(ErrorCode::Protocol, format!("unexpected set-stream frame {other:?}")))
                    }
                    Ok(Some(Err(e))) => return Err(Abort::Lost(ErrorCode::Connection, e)),
                    Ok(None) => return Err(Abort::Lost(ErrorCode::Connection, "stream ended".into())),
                    Err(_) => return Err(Abort::Lost(
                        ErrorCode::Connection,
                        format!("no answer within {} ms (limits.frame_timeout_ms)", frame_limit.as_millis()),
                    )),
                },
            }
        }
    }

    /// The next file to send: the leader's own first, then claimed ones.
    async fn next_file(&mut self) -> Result<Option<RequestRecord>, Abort> {
        if !self.own_sent {
            self.own_sent = true;
            return Ok(Some(self.rec.clone()));
        }
        if self.claimed.is_empty() && !self.exhausted {
            self.claim_more().await?;
        }
        Ok(self.claimed.pop_front())
    }

    /// Claims the next queued small files of the set (index order).
    async fn claim_more(&mut self) -> Result<(), Abort> {
        let store = self.ctx.core.store.clone();
        let (set, from, files, rule) = (self.set.clone(), self.next_index, self.files, self.rule.clone());
        let (leader, partner) = (self.rec.id.clone(), self.rec.partner.clone());
        let claimed = crate::determinism::blocking(move || {
            let mut out = Vec::new();
            let mut i = from;
            let line = format!("sent on the set stream of {leader}");
            while i < files && out.len() < CLAIM_BATCH {
                let id = member_id(&set, i);
                i += 1;
                if id == leader {
                    continue;
                }
                // Read once: the check and the claim are one write.
                let taken = store.update_if(
                    &id,
                    &line,
                    |r| r.status == Status::ToSubmit && r.partner == partner && is_streamable(r, &rule),
                    |r| {
                        lifecycle::take(r, r.attempts + 1, None);
                        lifecycle::start_transfer(r, r.size, 0, now_ms());
                    },
                )?;
                out.extend(taken);
            }
            Ok::<_, crate::store::StoreError>((out, i))
        })
        .await;
        match claimed {
            Ok(Ok((out, next))) => {
                self.next_index = next;
                self.exhausted = next >= self.files;
                self.claimed.extend(out);
                Ok(())
            }
            Ok(Err(e)) => Err(Abort::Lost(ErrorCode::Internal, format!("cannot claim the set's files: {e}"))),
            Err(e) => Err(Abort::Lost(ErrorCode::Internal, e.to_string())),
        }
    }

    /// Records what the receiver answered, then one flush.
    /// Returns the files recorded `Done`.
    async fn answered(&mut self, results: Vec<Filed>) -> Vec<RequestId> {
        let now = now_ms();
        let mut done = Vec::new();
        for r in results {
            let Some(sent) = self.in_flight.remove(&r.id) else { continue };
            self.window.answered(sent.size);
            let (code, message) = match r.outcome {
                FileOutcome::Delivered { bytes, hash } | FileOutcome::Held { bytes, hash }
                    if bytes == sent.size && hash == sent.hash =>
                {
                    let line = format!("{} received {bytes} bytes, BLAKE3 {hash} (set stream)", self.rec.partner);
                    let written = self.ctx.core.store.update_if(
                        &r.id,
                        &line,
                        |x| x.status == Status::Running,
                        |x| {
                            lifecycle::confirmed(x);
                            lifecycle::complete(x, Some((bytes, hash)), now);
                        },
                    );
                    if let Err(e) = written {
                        tracing::error!(request_id = %r.id, error = %e, "cannot record a streamed file");
                    }
                    done.push(r.id.clone());
                    tracing::info!(target: AUDIT, event = "done", request_id = %r.id, partner = %self.rec.partner, bytes);
                    continue;
                }
                FileOutcome::Delivered { bytes, hash } | FileOutcome::Held { bytes, hash } => (
                    ErrorCode::FileHashMismatch,
                    format!(
                        "sent {} bytes with BLAKE3 {}; {} received {bytes} with {hash}",
                        sent.size, sent.hash, self.rec.partner
                    ),
                ),
                FileOutcome::Failed { code, message } => (code, format!("{message} (reported by partner)")),
            };
            if sent.own || !lifecycle::keeps_partial_file(code) {
                record_failure(&self.ctx.core, &r.id, code, &message);
                if !lifecycle::keeps_partial_file(code) {
                    self.after_failure();
                }
            } else {
                // Resumable: back to the queue, to be sent again.
                give_back(&self.ctx.core, &r.id, &format!("{code}: {message}; back in the queue"));
            }
        }
        if let Err(e) = self.ctx.core.store.flush().await {
            tracing::error!(error = %e, "cannot flush the set stream's files");
        }
        done
    }

    /// A file of the set failed: under `on_failure = stop` the files not
    /// sent yet are skipped and no more are claimed (those sent finish).
    fn after_failure(&mut self) {
        if !self.stop_on_failure {
            return;
        }
        self.exhausted = true;
        self.any_failed = true;
        for r in std::mem::take(&mut self.claimed) {
            self.skip(&r);
        }
    }

    fn skip(&self, r: &RequestRecord) {
        let message =
            format!("skipped: another file of set {} failed and its policy stops at the first failure", self.set);
        let written = self.ctx.core.store.update_if(
            &r.id,
            &message,
            |x| x.status == Status::Running,
            |x| {
                lifecycle::fail(x, ErrorCode::Skipped, &message, 0, now_ms());
            },
        );
        if let Err(e) = written {
            tracing::error!(request_id = %r.id, error = %e, "cannot record request state");
        }
    }

    /// The stream ended early: the files not answered are stopped,
    /// cancelled, or put back in the queue (the leader's own fails as any
    /// request would, so the Commander retries it).
    async fn abort(&mut self, abort: Abort) {
        let mut left: Vec<(RequestId, bool)> = self.in_flight.drain().map(|(id, f)| (id, f.own)).collect();
        left.extend(self.claimed.drain(..).map(|r| (r.id.clone(), r.id == self.rec.id)));
        if !self.own_sent {
            left.push((self.rec.id.clone(), true));
        }
        for (id, own) in left {
            match &abort {
                Abort::Stopped => record_failure(&self.ctx.core, &id, ErrorCode::Stopped, STOPPED_WITH_SET),
                Abort::Cancelled(reason) => cancel_one(&self.ctx.core, &id, reason),
                Abort::Lost(code, message) if own => record_failure(&self.ctx.core, &id, *code, message),
                Abort::Lost(code, message) => {
                    give_back(&self.ctx.core, &id, &format!("{code}: {message}; back in the queue"))
                }
            }
        }
        if let Err(e) = self.ctx.core.store.flush().await {
            tracing::error!(error = %e, "cannot flush the set stream's files");
        }
    }
}

/// Opens and reads files of the set whole (they are small), each checked
/// to be still what the set resolved: their bytes and BLAKE3.
async fn read_sources(
    ctx: &RunHandle,
    rule: &crate::config::Rule,
    recs: Vec<RequestRecord>,
) -> Vec<(RequestRecord, Result<(Vec<u8>, Digest), Refusal>)> {
    let (dir, node) = (rule.send_dir.clone(), ctx.core.config.node_id.clone());
    let ids: Vec<RequestRecord> = recs.clone();
    let read = crate::determinism::blocking(move || {
        recs.into_iter()
            .map(|rec| {
                let read = read_source(&dir, &node, &rec);
                (rec, read)
            })
            .collect::<Vec<_>>()
    })
    .await;
    read.unwrap_or_else(|e| ids.into_iter().map(|r| (r, Err((ErrorCode::Internal, e.to_string())))).collect())
}

fn read_source(dir: &std::path::Path, node: &str, rec: &RequestRecord) -> Result<(Vec<u8>, Digest), Refusal> {
    let source = retrieve::open_source(dir, &rec.file_name, &rec.rule, node)?;
    if let Some(why) = super::client_runner::changed_since_resolved(rec, &source) {
        return Err((ErrorCode::SourceChanged, why));
    }
    let size = source.snapshot.size;
    if size > MAX_STREAMED_FILE {
        return Err((ErrorCode::SourceChanged, format!("{} grew to {size} bytes", rec.file_name)));
    }
    let mut data = vec![0; size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&*source.file, &mut data, 0)
        .map_err(|e| (ErrorCode::Io, format!("cannot read {}: {e}", source.path.display())))?;
    let hash = Digest::of(&data);
    Ok((data, hash))
}

// ---------------------------------------------------------------- receiver

/// A file written under its work name, waiting for its batch's commit.
struct Pending {
    rec: RequestRecord,
    /// `None` for a folder entry, or for a file whose rename happened
    /// before (`finishing`). Not held open: a stream of many files must not
    /// hold as many descriptors.
    work: Option<PathBuf>,
    /// Recorded as delivered by an earlier attempt: only its rename (if
    /// its work file is still there) and its `Done` are left.
    finishing: bool,
    /// This node had a record of the file when it was accepted (else the
    /// commit inserts one, unless a record appeared meanwhile).
    recorded: bool,
}

/// What the receiving side of one stream needs.
struct Served {
    core: Core,
    partner: String,
    set: RequestId,
    /// How many files the set has (`Open`).
    files: u32,
    rule: crate::config::Rule,
    hold: bool,
    mode: TargetMode,
    dir: PathBuf,
    token: u64,
    superseded: Arc<AtomicBool>,
    serving: Arc<std::sync::Mutex<std::collections::BTreeMap<RequestId, super::channel_run::ServingRun>>>,
    /// Disk space promised to other transfers: a pass of files, written at
    /// once, fits beside it.
    room: Arc<crate::transfer::room::DiskRoom>,
    /// The set, in use while the stream (and its last commit) lives.
    _in_use: super::sets_in_use::InUse,
}

/// Serves a set stream `partner` opened (its kind byte read).
pub async fn serve(ctx: RunHandle, partner: String, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    // `Open` is read here, small; the files are read ahead only once the
    // stream's memory is reserved.
    let limit = Duration::from_millis(ctx.core.config.limits.handshake_timeout_ms);
    let open = match tokio::time::timeout(limit, read_frame(&mut recv, MAX_OPEN_BODY)).await {
        Ok(Ok(Some(open @ SetFrame::Open { .. }))) => open,
        other => {
            tracing::warn!(partner = %partner, frame = ?other.map(|f| f.map(|f| f.map(|f| format!("{f:?}")))), "a set stream without Open");
            let refused =
                SetFrame::Refused { code: ErrorCode::Protocol, message: "a set stream starts with Open".into() };
            let _ = write_frame(&mut send, &refused).await;
            let _ = send.finish();
            return;
        }
    };
    let served = match opened(&ctx, &partner, open) {
        Ok(s) => s,
        Err((code, message)) => {
            tracing::info!(partner = %partner, %code, %message, "refused a set stream");
            let _ = write_frame(&mut send, &SetFrame::Refused { code, message }).await;
            let _ = send.finish();
            return;
        }
    };
    // What the stream may hold in memory (frames read ahead, files being
    // written), counted in the partner's budget like a transfer's blocks.
    let wait = Duration::from_millis(ctx.core.config.limits.frame_timeout_ms);
    let _room = match ctx.budgets.of(&partner).reserve(STREAM_MEMORY, wait).await {
        Ok(r) => r,
        Err(over) => {
            let message = format!("node {} cannot take a set stream now: {over}", ctx.core.config.node_id);
            let _ = write_frame(&mut send, &SetFrame::Refused { code: ErrorCode::Connection, message }).await;
            let _ = send.finish();
            return;
        }
    };
    let served = Arc::new(served);
    if write_frame(&mut send, &SetFrame::Opened).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel(READ_AHEAD_FRAMES);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(recv, tx)));
    ctx.open_channels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ended = receive_files(&served, &mut send, &mut rx).await;
    ctx.open_channels.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match ended {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(why) => {
            tracing::info!(partner = %partner, set = %served.set, reason = %why, "set stream ended early");
            let _ = send.reset(quinn::VarInt::from_u32(0));
        }
    }
}

/// The checks of an `Open` (the rule, the partner, the receiving side),
/// then this node's record of the set.
fn opened(ctx: &RunHandle, partner: &str, open: SetFrame) -> Result<Served, Refusal> {
    let SetFrame::Open { set, rule, hold, files, pattern } = open else {
        return Err((ErrorCode::Protocol, "a set stream starts with Open".into()));
    };
    let rule = rule.as_str();
    let cfg = &ctx.core.config;
    let rule = cfg
        .rule(rule)
        .ok_or_else(|| (ErrorCode::UnknownRule, format!("rule {rule:?} does not exist on node {}", cfg.node_id)))?
        .clone();
    if !cfg.rule_allows(&rule, partner) {
        return Err((
            ErrorCode::RuleNotAllowed,
            format!("partner {partner} may not use rule {:?} on node {}", rule.name, cfg.node_id),
        ));
    }
    let receiver = &rule.receiver;
    if !receiver.has_no_file_tasks() {
        return Err((
            ErrorCode::CapabilityMismatch,
            format!("rule {:?} runs tasks on each received file; its files come one request each", rule.name),
        ));
    }
    let mode = super::channel_run::target_mode_of(&ctx.core, &rule.name, None);
    if !matches!(mode, TargetMode::Replace | TargetMode::Create) {
        return Err((
            ErrorCode::CapabilityMismatch,
            format!("rule {:?} has target mode {mode:?}; its files come one request each", rule.name),
        ));
    }
    let dir = rule.recv_dir_for(partner);
    // In use before its record is read (see `sets_in_use`).
    let token = crate::determinism::random_u128() as u64;
    let in_use = ctx.sets_in_use.take(&set);
    record_set(&ctx.core, partner, &set, &rule.name, SetOpened { files, pattern: &pattern, hold })?;
    Ok(Served {
        core: ctx.core.clone(),
        partner: partner.to_owned(),
        set,
        files,
        rule,
        hold,
        mode,
        dir,
        token,
        superseded: Arc::new(AtomicBool::new(false)),
        serving: ctx.serving.clone(),
        room: ctx.room.clone(),
        _in_use: in_use,
    })
}

/// What an `Open` says of the set.
struct SetOpened<'a> {
    files: u32,
    pattern: &'a str,
    hold: bool,
}

/// This node's record of a set its partner streams: made at the set's
/// first stream (`Running`, step `Transfer`), kept by later ones. Each
/// streamed file is recorded as its member, so the files are listed and
/// pruned with the set; its `Release` ends it (`set_release`), as does a
/// cancel notice; a set its sender ended in error (`Ask::SetEnded`) runs
/// again when a stream of it opens. Not flushed here: the store's journal
/// keeps writes in order, so it is durable before any member a commit
/// flushes.
fn record_set(core: &Core, partner: &str, set: &RequestId, rule: &str, opened: SetOpened) -> Result<(), Refusal> {
    let me = &core.config.node_id;
    let internal = |e: crate::store::StoreError| (ErrorCode::Internal, e.to_string());
    if opened.files as usize > crate::fileset::MAX_ENTRIES {
        return Err((ErrorCode::Protocol, format!("a set of {} files is larger than any set may be", opened.files)));
    }
    let not_this = || {
        (
            ErrorCode::Protocol,
            format!("request {set} on node {me} is not a file set from {partner} under rule {rule:?}"),
        )
    };
    match core.store.get(set).map_err(internal)? {
        Some(r) if r.role != Role::Requested || r.partner != partner || r.rule != rule => Err(not_this()),
        Some(r) if r.set.is_none() => Err(not_this()),
        Some(r) if r.set.as_ref().is_some_and(|i| i.files != opened.files) => Err((
            ErrorCode::Protocol,
            format!(
                "set {set} was opened on node {me} with {} files; this stream says {}",
                r.set.as_ref().map_or(0, |i| i.files),
                opened.files
            ),
        )),
        Some(r) if r.status == Status::Cancelled => Err(lifecycle::cancelled_refusal(&format!("set {set}"), &r, me)),
        Some(r) if lifecycle::set::is_ended_by_sender(&r) => {
            // The sender restarted a set it had ended in error.
            let line = format!("{partner} opened the set's stream again: it runs again");
            core.store
                .update_if(set, &line, lifecycle::set::is_ended_by_sender, |r| {
                    lifecycle::set::reopen(r);
                })
                .map_err(internal)?;
            Ok(())
        }
        Some(_) => Ok(()),
        None => {
            let delivery = if opened.hold { Delivery::All } else { Delivery::Each };
            let policy = crate::fileset::progress::Policy { delivery, ..Default::default() };
            let info = (opened.files, opened.pattern, policy);
            let rec = lifecycle::set::received_set(set.clone(), partner, rule, Direction::Push, info, now_ms());
            let line = format!("set of {} files from {partner}: its small files arrive on a set stream", opened.files);
            match core.store.insert(rec, &line) {
                // A stream of the same set recorded it first.
                Ok(_) | Err(crate::store::StoreError::Exists(_)) => Ok(()),
                Err(e) => Err(internal(e)),
            }
        }
    }
}

async fn receive_files(
    served: &Arc<Served>,
    send: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<Result<SetFrame, String>>,
) -> Result<(), String> {
    let mut committing: Option<tokio::task::JoinHandle<Vec<Filed>>> = None;
    let result = accept_and_commit(served, send, rx, &mut committing).await;
    // A commit under way finishes (its files' claims end with it); its
    // answers are lost with the stream, and the sender's one-request path
    // confirms those files.
    if let Some(mut c) = committing.take() {
        finished(&mut c).await;
    }
    result
}

/// The receiving loop: files are accepted (written under their work
/// names) while the previous batch commits, one commit at a time.
async fn accept_and_commit(
    served: &Arc<Served>,
    send: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<Result<SetFrame, String>>,
    committing: &mut Option<tokio::task::JoinHandle<Vec<Filed>>>,
) -> Result<(), String> {
    let frame_limit = Duration::from_millis(served.core.config.limits.frame_timeout_ms);
    let mut batch = Batch::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut answers: Vec<Filed> = Vec::new();
    // A frame read ahead while gathering files, handled next.
    let mut carried: Option<Result<SetFrame, String>> = None;
    let result = loop {
        let waiting = carried.take().or_else(|| match rx.try_recv() {
            Ok(f) => Some(f),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err("the stream ended".into())),
        });
        let closing = matches!(waiting, Some(Ok(SetFrame::Close)));
        let now = Moment { more_waiting: waiting.is_some(), closing, committing: committing.is_some() };
        if batch.is_due(now) {
            if let Some(mut previous) = committing.take() {
                answers.extend(finished(&mut previous).await);
            }
            *committing = Some(tokio::spawn(commit(served.clone(), std::mem::take(&mut pending))));
            batch = Batch::default();
        }
        if !answers.is_empty() && (waiting.is_none() || answers.len() >= Batch::MAX_FILES) {
            write_frame(send, &SetFrame::Filed(std::mem::take(&mut answers))).await?;
        }
        let frame = match waiting {
            Some(f) => f,
            None => {
                // The sender may rightly send nothing while a commit runs
                // (its window full of files that commit answers): the
                // frame limit counts only while none runs.
                let limit = if committing.is_some() { Duration::MAX } else { frame_limit };
                let next = async { tokio::time::timeout(limit, rx.recv()).await };
                let ended = async {
                    match committing.as_mut() {
                        Some(c) => finished(c).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    done = ended => {
                        // The commit ended while nothing arrived: its
                        // answers go now, and the batch grown meanwhile
                        // commits next.
                        *committing = None;
                        answers.extend(done);
                        continue;
                    }
                    f = next => match f {
                        Ok(Some(f)) => f,
                        Ok(None) => Err("the stream ended".into()),
                        Err(_) => Err(format!("no frame within {} ms (limits.frame_timeout_ms)", frame_limit.as_millis())),
                    },
                }
            }
        };
        match frame {
            Ok(SetFrame::File(_)) if served.superseded.load(Ordering::Relaxed) => {
                // A newer run of this partner took over one of the stream's
                // files: the stream ends rather than write files whose
                // commits would all be given up.
                break Err("superseded by a newer attempt of the same partner".into());
            }
            Ok(SetFrame::File(file)) => {
                // With the files already waiting, accepted in one pass off
                // the async threads.
                let mut bytes = file.data.len();
                let mut files = vec![file];
                while files.len() < ACCEPT_AHEAD && bytes < ACCEPT_BYTES && carried.is_none() {
                    match rx.try_recv() {
                        Ok(Ok(SetFrame::File(f))) => {
                            bytes += f.data.len();
                            files.push(f);
                        }
                        Ok(other) => carried = Some(other),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => carried = Some(Err("the stream ended".into())),
                    }
                }
                let s = served.clone();
                let accepted = crate::determinism::blocking(move || {
                    // Room for the whole pass (with one margin) means room
                    // for each file; only short of that is each checked.
                    let total = files.iter().map(|f| f.data.len() as u64).sum();
                    let space = if s.room.has_room(&s.dir, total).is_ok() { Space::Checked } else { Space::EachFile };
                    files
                        .into_iter()
                        .map(|f| {
                            let (id, size) = (f.id.clone(), f.data.len() as u64);
                            (id, size, accept_file(&s, space, f))
                        })
                        .collect::<Vec<_>>()
                })
                .await;
                let accepted = match accepted {
                    Ok(a) => a,
                    Err(e) => break Err(e.to_string()),
                };
                for (id, size, a) in accepted {
                    match a {
                        Ok(Accepted::Pending(p)) => {
                            batch.add(size);
                            pending.push(*p);
                        }
                        Ok(Accepted::Answered(outcome)) => answers.push(Filed { id, outcome }),
                        Err((code, message)) => {
                            answers.push(Filed { id, outcome: FileOutcome::Failed { code, message } })
                        }
                    }
                }
            }
            Ok(SetFrame::Close) => {
                if let Some(mut previous) = committing.take() {
                    answers.extend(finished(&mut previous).await);
                }
                if !pending.is_empty() {
                    answers.extend(commit(served.clone(), std::mem::take(&mut pending)).await);
                }
                if !answers.is_empty() {
                    write_frame(send, &SetFrame::Filed(std::mem::take(&mut answers))).await?;
                }
                write_frame(send, &SetFrame::Closed).await?;
                break Ok(());
            }
            Ok(other) => break Err(format!("unexpected set-stream frame {other:?}")),
            Err(e) => break Err(e),
        }
    };
    // Files written but not committed: their work files go (unless a newer
    // run took them over), and their claims end.
    for p in &pending {
        if let (Some(path), false) = (&p.work, p.finishing) {
            super::channel_run::discard_unless_taken(&served.serving, &p.rec.id, served.token, path);
        }
        release_serving(&served.serving, &p.rec.id, served.token);
    }
    result
}

/// A commit's answers. [`commit`] answers for every file it is given (its
/// blocking part's failure included) and its task is never aborted: an
/// error here is a bug, or the runtime shutting down.
async fn finished(commit: &mut tokio::task::JoinHandle<Vec<Filed>>) -> Vec<Filed> {
    match commit.await {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(error = %e, "a set stream's commit failed");
            Vec::new()
        }
    }
}

enum Accepted {
    Pending(Box<Pending>),
    /// Answered at once (held or delivered before, by an earlier attempt).
    Answered(FileOutcome),
}

/// Whether a pass of files was found to fit the receive folder whole.
#[derive(Clone, Copy)]
enum Space {
    Checked,
    EachFile,
}

/// Checks one file and writes it under its work name (not fsynced yet).
fn accept_file(s: &Served, space: Space, f: StreamedFile) -> Result<Accepted, Refusal> {
    let me = &s.core.config.node_id;
    if f.id != member_id(&s.set, f.index) || f.index >= s.files {
        return Err((ErrorCode::Protocol, format!("{} is not file {} of set {}", f.id, f.index, s.set)));
    }
    if super::channel_run::is_served_by(&s.serving, &f.id, s.token) {
        // Its first copy is written or committing: a second would write
        // over bytes already checked (and perhaps fsynced) under its name.
        return Err((ErrorCode::Protocol, format!("{} ({}) was sent twice on one set stream", f.name, f.id)));
    }
    check_entry_path(&f.name).map_err(|why| (ErrorCode::BadFileName, why))?;
    let folder = is_folder_entry(&f.name);
    if folder && !f.data.is_empty() {
        return Err((ErrorCode::BadFileName, format!("{:?} names a folder, which carries no data", f.name)));
    }
    if Digest::of(&f.data) != f.hash {
        return Err((ErrorCode::FileHashMismatch, format!("{} arrived with another BLAKE3 than announced", f.name)));
    }
    let existing = s.core.store.get(&f.id).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    if let Some(rec) = &existing {
        if rec.partner != s.partner || rec.role != Role::Requested {
            return Err((ErrorCode::Protocol, format!("request id {} belongs to another request", rec.id)));
        }
        if rec.file_name != f.name || rec.rule != s.rule.name || rec.direction != Direction::Push {
            return Err((ErrorCode::Protocol, format!("request {} was recorded for another file", rec.id)));
        }
        let same = rec.hash == Some(f.hash) && rec.transferred == f.data.len() as u64;
        if rec.status == Status::Done && same {
            return Ok(Accepted::Answered(FileOutcome::Delivered { bytes: rec.transferred, hash: f.hash }));
        }
        if lifecycle::is_held(rec) && same {
            // Held (its release may be under way, which finishes it).
            return Ok(Accepted::Answered(FileOutcome::Held { bytes: rec.transferred, hash: f.hash }));
        }
        if lifecycle::is_held(rec) {
            // Its release may be renaming the held bytes now.
            return Err((
                ErrorCode::Protocol,
                format!("{} is held by node {me} with other content; it is not replaced", f.name),
            ));
        }
        if rec.status == Status::Cancelled {
            return Err(lifecycle::cancelled_refusal(&format!("request {}", rec.id), rec, me));
        }
        if rec.delivered && !same {
            return Err((
                ErrorCode::Protocol,
                format!("{} was delivered by node {me} with other content; it is not replaced", f.name),
            ));
        }
        if rec.delivered && !lifecycle::is_held(rec) {
            // Recorded as delivered before a crash or a lost answer: the
            // rename is finished (if it did not happen) and it is Done,
            // with no second delivery.
            claim_serving(&s.serving, &f.id, &s.partner, s.token, &s.superseded)?;
            let path = receive::work_path(&s.dir, &f.id);
            let work = path.exists().then_some(path);
            return Ok(Accepted::Pending(Box::new(Pending {
                rec: rec.clone(),
                work,
                finishing: true,
                recorded: true,
            })));
        }
    }
    // The path's folders are checked now (no link on the way), made at
    // the commit; the file is claimed only once every check passed.
    let target = receive::target_path(&s.dir, &f.name, false)?;
    if !folder {
        super::channel_run::refuse_existing_target(&s.core, s.mode, &target)?;
    }
    if let Space::EachFile = space {
        s.room.has_room(&s.dir, f.data.len() as u64)?;
    }
    claim_serving(&s.serving, &f.id, &s.partner, s.token, &s.superseded)?;
    let work = if folder {
        None
    } else {
        let path = receive::work_path(&s.dir, &f.id);
        let written = (|| -> std::io::Result<()> {
            let create = || std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path);
            // The work folder is made by the first file that finds none.
            let mut file = match create() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    create()?
                }
                other => other?,
            };
            file.write_all(&f.data)?;
            // Written back while the batch fills; its commit's fsync then
            // mostly finds it done.
            receive::start_writeback(&file);
            Ok(())
        })();
        if let Err(e) = written {
            release_serving(&s.serving, &f.id, s.token);
            receive::discard(&path);
            return Err(receive::io_failure("write", &path, e));
        }
        Some(path)
    };
    let size = f.data.len() as u64;
    let recorded = existing.is_some();
    let rec = match existing {
        Some(r) => r,
        None => RequestRecord {
            size,
            status: Status::Running,
            step: Step::Transfer,
            started_at: Some(now_ms()),
            member_of: Some(SetMember { set: s.set.clone(), index: f.index, modified_ns: 0 }),
            ..RequestRecord::new(f.id.clone(), Role::Requested, &s.partner, &s.rule.name, Direction::Push, &f.name)
        },
    };
    let rec = RequestRecord { size, hash: Some(f.hash), transferred: size, ..rec };
    Ok(Accepted::Pending(Box::new(Pending { rec, work, finishing: false, recorded })))
}

/// Commits a batch (see the module doc for the order); how each file ended.
async fn commit(served: Arc<Served>, batch: Vec<Pending>) -> Vec<Filed> {
    if batch.is_empty() {
        return Vec::new();
    }
    let s = served.clone();
    tracing::debug!(set = %served.set, partner = %served.partner, files = batch.len(), "committing a batch");
    let ids: Vec<RequestId> = batch.iter().map(|p| p.rec.id.clone()).collect();
    let done = crate::determinism::blocking(move || commit_blocking(&s, batch)).await;
    let out = match done {
        Ok(out) => out,
        Err(e) => ids
            .iter()
            .map(|id| Filed {
                id: id.clone(),
                outcome: FileOutcome::Failed { code: ErrorCode::Internal, message: e.to_string() },
            })
            .collect(),
    };
    for id in &ids {
        release_serving(&served.serving, id, served.token);
    }
    out
}

/// A newer run of the same partner took over some file of this stream:
/// it leaves these files. Not recorded yet (`recorded = false`), their work
/// files go, except those the newer run claimed (it owns them now); once
/// recorded delivered, they stay for whichever run finishes them.
fn superseded(s: &Served, batch: Vec<Pending>, recorded: bool) -> Vec<Filed> {
    batch
        .into_iter()
        .inspect(|p| {
            if let (Some(path), false, false) = (&p.work, recorded, p.finishing) {
                super::channel_run::discard_unless_taken(&s.serving, &p.rec.id, s.token, path);
            }
        })
        .map(|p| Filed {
            id: p.rec.id,
            outcome: FileOutcome::Failed {
                code: ErrorCode::Connection,
                message: "superseded by a newer attempt of the same partner".into(),
            },
        })
        .collect()
}

fn commit_blocking(s: &Served, batch: Vec<Pending>) -> Vec<Filed> {
    let mut out = Vec::with_capacity(batch.len());
    let mut ok = Vec::with_capacity(batch.len());
    let fail = |rec: &RequestRecord, code: ErrorCode, message: String, out: &mut Vec<Filed>| {
        let _ = s.core.store.update_if(
            &rec.id,
            &format!("{code}: {message}"),
            |_| true,
            |r| {
                lifecycle::fail(r, code, &message, 0, now_ms());
            },
        );
        out.push(Filed { id: rec.id.clone(), outcome: FileOutcome::Failed { code, message } });
    };
    // 1. Each file's bytes durable under its work name.
    if s.superseded.load(Ordering::Relaxed) {
        return superseded(s, batch, false);
    }
    let works: Vec<&std::path::Path> = batch.iter().filter_map(|p| p.work.as_deref()).collect();
    let mut synced = receive::sync_files(&works).into_iter();
    for p in batch {
        if let Some(path) = &p.work {
            let result = synced.next().unwrap_or_else(|| Err(std::io::Error::other("not fsynced")));
            if let Err(e) = result {
                receive::discard(path);
                let (code, message) = receive::io_failure("fsync", path, e);
                fail(&p.rec, code, message, &mut out);
                continue;
            }
        }
        ok.push(p);
    }
    // 2. Recorded verified and delivered (or held); one flush.
    let mut recorded = Vec::with_capacity(ok.len());
    for p in ok {
        if p.finishing {
            recorded.push(p);
            continue;
        }
        let (bytes, hash) = (p.rec.transferred, p.rec.hash.unwrap_or(Digest([0; 32])));
        let mut rec = p.rec.clone();
        lifecycle::run_again(&mut rec);
        if s.hold {
            lifecycle::held(&mut rec, bytes, hash);
        } else {
            lifecycle::verified(&mut rec, bytes, hash);
        }
        let line = if s.hold {
            format!("received {bytes} bytes on a set stream, BLAKE3 {hash}; held until its set is released")
        } else {
            format!("received {bytes} bytes on a set stream, verified, BLAKE3 {hash}")
        };
        // Written only over the record this stream accepted the file on (a
        // run that took it over meanwhile, or an end it met, stays).
        let accepted_at = p.rec.updated_at;
        let written = if p.recorded {
            s.core
                .store
                .update_if(
                    &rec.id,
                    &line,
                    |r| !r.delivered && !r.status.is_final() && r.updated_at == accepted_at,
                    |r| *r = RequestRecord { updated_at: r.updated_at, ..rec.clone() },
                )
                .map(|w| w.is_some())
        } else {
            match s.core.store.insert(rec, &line) {
                Ok(_) => Ok(true),
                // Recorded meanwhile by another run: this one leaves it.
                Err(crate::store::StoreError::Exists(_)) => Ok(false),
                Err(e) => Err(e),
            }
        };
        match written {
            Ok(false) => out.push(Filed {
                id: p.rec.id.clone(),
                outcome: FileOutcome::Failed {
                    code: ErrorCode::Connection,
                    message: "another attempt took the file over; it is sent again".into(),
                },
            }),
            Ok(true) => {
                tracing::info!(target: AUDIT, event = "verified", request_id = %p.rec.id, partner = %s.partner, bytes, blake3 = %hash);
                recorded.push(p);
            }
            Err(e) => {
                if let Some(path) = &p.work {
                    receive::discard(path);
                }
                out.push(Filed {
                    id: p.rec.id.clone(),
                    outcome: FileOutcome::Failed {
                        code: ErrorCode::Internal,
                        message: format!("cannot record it: {e}"),
                    },
                });
            }
        }
    }
    if let Err(e) = s.core.store.flush_blocking() {
        // Nothing is renamed on an unflushed record; the sender sends
        // these again on their own.
        for p in recorded {
            out.push(Filed {
                id: p.rec.id.clone(),
                outcome: FileOutcome::Failed { code: ErrorCode::Connection, message: format!("cannot flush: {e}") },
            });
        }
        return out;
    }
    if s.hold {
        for p in recorded {
            let (bytes, hash) = (p.rec.transferred, p.rec.hash.unwrap_or(Digest([0; 32])));
            out.push(Filed { id: p.rec.id.clone(), outcome: FileOutcome::Held { bytes, hash } });
        }
        return out;
    }
    // 3. Renamed into place; each folder fsynced once.
    if s.superseded.load(Ordering::Relaxed) {
        // Recorded delivered: the run that took over finishes them.
        return superseded(s, recorded, true);
    }
    let mut folders = BTreeSet::new();
    let mut placed = Vec::with_capacity(recorded.len());
    for p in recorded {
        let moved = receive::target_path(&s.dir, &p.rec.file_name, true).and_then(|target| match &p.work {
            None => Ok(target),
            Some(work) if s.mode == TargetMode::Create => {
                receive::deliver_as(work, &target, &receive::Delivery::Create).map(|_| target)
            }
            Some(work) => std::fs::rename(work, &target)
                .map(|()| target.clone())
                .map_err(|e| (ErrorCode::Io, format!("cannot rename into {}: {e}", target.display()))),
        });
        match moved {
            Ok(target) => {
                if p.work.is_some() {
                    folders.insert(target.parent().map(PathBuf::from).unwrap_or_default());
                }
                placed.push((p, target));
            }
            Err((code, message)) => fail(&p.rec, code, message, &mut out),
        }
    }
    let mut unsynced = BTreeSet::new();
    for folder in &folders {
        if let Err(e) = std::fs::File::open(folder).and_then(|d| d.sync_all()) {
            tracing::error!(folder = %folder.display(), error = %e, "cannot fsync a folder of delivered files");
            unsynced.insert(folder.clone());
        }
    }
    // A file whose folder did not fsync stays `delivered`, not Done: sent
    // again alone, the one-request path finishes and confirms it.
    type Placed = Vec<(Pending, PathBuf)>;
    let (placed, unsure): (Placed, Placed) =
        placed.into_iter().partition(|(p, t)| p.work.is_none() || !t.parent().is_some_and(|f| unsynced.contains(f)));
    for (p, t) in unsure {
        out.push(Filed {
            id: p.rec.id.clone(),
            outcome: FileOutcome::Failed {
                code: ErrorCode::Connection,
                message: format!("cannot fsync the folder of {}", t.display()),
            },
        });
    }
    // 4. Recorded Done; one flush; 5. answered.
    let now = now_ms();
    for (p, target) in &placed {
        let (bytes, hash) = (p.rec.transferred, p.rec.hash.unwrap_or(Digest([0; 32])));
        let line = match (&p.work, p.finishing) {
            (Some(_), false) => format!("delivered to {}", target.display()),
            (Some(_), true) => format!("delivered to {} (finishing an interrupted delivery)", target.display()),
            (None, true) => format!("{} was delivered before; confirmed on a set stream", target.display()),
            (None, false) => format!("folder {} made", target.display()),
        };
        let _ = s.core.store.update(&p.rec.id, &line, |r| {
            lifecycle::run_again(r);
            lifecycle::complete(r, Some((bytes, hash)), now);
        });
        if p.work.is_some() || !p.finishing {
            tracing::info!(target: AUDIT, event = "delivered", request_id = %p.rec.id, partner = %s.partner, path = %target.display());
        }
    }
    // The set counts the files it now has `Done`, in the same flush (its
    // release then writes the final totals).
    let (newly, bytes) = (placed.len() as u32, placed.iter().map(|(p, _)| p.rec.transferred).sum::<u64>());
    let counted = (newly > 0).then(|| {
        s.core.store.update_if(&s.set, "", lifecycle::set::is_streamed_here, |r| {
            lifecycle::set::streamed_done(r, newly, bytes);
        })
    });
    if let Some(Err(e)) = counted {
        tracing::error!(set = %s.set, error = %e, "cannot count a set's streamed files");
    }
    let flushed = s.core.store.flush_blocking();
    for (p, _) in placed {
        let (bytes, hash) = (p.rec.transferred, p.rec.hash.unwrap_or(Digest([0; 32])));
        let outcome = match &flushed {
            Ok(()) => FileOutcome::Delivered { bytes, hash },
            // Delivered, but `Done` is not durable here: sent again alone,
            // the one-request path confirms it once this side is Done.
            Err(e) => FileOutcome::Failed { code: ErrorCode::Connection, message: format!("cannot flush: {e}") },
        };
        out.push(Filed { id: p.rec.id.clone(), outcome });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;
    use crate::tasks::TaskConfig;

    #[test]
    fn a_small_pushed_file_streams_unless_its_rule_runs_any_per_file_task_on_the_sender() {
        let member = SetMember { set: RequestId::generate(), index: 0, modified_ns: 0 };
        let rec = RequestRecord {
            size: 4096,
            member_of: Some(member),
            ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "r", Direction::Push, "a/x.csv")
        };
        let plain = Rule::new("r", "out".into(), "in".into(), vec!["*".into()]);
        assert!(is_streamable(&rec, &plain));
        let log = TaskConfig { kind: "log".into(), message: Some("x".into()), ..TaskConfig::default() };
        for list in ["pre", "post", "error"] {
            let mut rule = plain.clone();
            let tasks = match list {
                "pre" => &mut rule.sender.pre_tasks,
                "post" => &mut rule.sender.post_tasks,
                _ => &mut rule.sender.error_tasks,
            };
            tasks.push(log.clone());
            assert!(!is_streamable(&rec, &rule), "a sender's {list}-task runs per file, so the file goes alone");
        }
        let big = RequestRecord { size: MAX_STREAMED_FILE + 1, ..rec.clone() };
        assert!(!is_streamable(&big, &plain), "a larger file goes alone");
        let pulled = RequestRecord { direction: Direction::Pull, ..rec };
        assert!(!is_streamable(&pulled, &plain), "only pushes stream");
    }
}
