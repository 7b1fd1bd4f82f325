//! Every push and pull sequence, success and failure, with two sessions wired
//! back to back in memory. The driver plays both runners: it judges, pumps
//! blocks, checks block hashes and verifies the whole file.

use super::*;

const BS: u32 = MIN_BLOCK_SIZE;

type Judge = Box<dyn Fn(&Request) -> Result<(u64, u64, Option<Digest>), (ErrorCode, String)>>;
type Tamper = Box<dyn FnMut(bool, Message) -> Option<Message>>;

struct Outcome {
    requester: Vec<Output>,
    requested: Vec<Output>,
    received: Vec<u8>,
    wrote: bool,
    done_order: Vec<bool>,
}

impl Outcome {
    fn failure(outs: &[Output]) -> Option<&Failure> {
        outs.iter().find_map(|o| match o {
            Output::Failed(f) => Some(f),
            _ => None,
        })
    }
    fn done(outs: &[Output]) -> bool {
        outs.contains(&Output::Done)
    }
}

fn request(direction: Direction, size: u64) -> Request {
    Request {
        request_id: RequestId::generate(),
        rule: "r".into(),
        direction,
        file_name: "f.bin".into(),
        size,
        block_size: BS,
        restart_offset: u64::MAX,
        prefix_hash: None,
        delivered: None,
        options: TransferOptions::default(),
        external_job_id: Some("job-1".into()),
        transfer_info: String::new(),
    }
}

fn accept_all(pull_size: u64) -> Judge {
    Box::new(move |_| Ok((pull_size, 0, None)))
}

fn no_tamper() -> Tamper {
    Box::new(|_, m| Some(m))
}

fn data_blocks(file: &[u8], from: u64, block: u32) -> Vec<Message> {
    file[from as usize..]
        .chunks(block as usize)
        .scan(from, |off, c| {
            let d = Data {
                offset: *off,
                raw_len: c.len() as u32,
                payload: c.to_vec().into(),
                compressed: false,
                hash: Digest::of(c),
            };
            *off += c.len() as u64;
            Some(Message::Data(d))
        })
        .collect()
}

struct Driver {
    a: Session,
    b: Session,
    log_a: Vec<Output>,
    log_b: Vec<Output>,
    received: Vec<u8>,
    wrote: bool,
    source: Vec<u8>,
    judge: Judge,
    tamper: Tamper,
    steps: usize,
    /// Messages in flight to the requester (`inbox_a`) and to the requested side.
    inbox_a: std::collections::VecDeque<Message>,
    inbox_b: std::collections::VecDeque<Message>,
    /// Which side reached `Done`, in order (`true`: the requester).
    done_order: Vec<bool>,
    /// What the sender's post-tasks end with.
    sender_tasks: Result<(), (ErrorCode, String)>,
}

impl Driver {
    /// Carries out `outs` of one side as a runner does: local work at once,
    /// messages into the peer's inbox, which the peer reads in order.
    fn process(&mut self, at_a: bool, outs: Vec<Output>) {
        for out in outs {
            self.steps += 1;
            assert!(self.steps < 100_000, "sessions never ended");
            let mut follow_me = Vec::new();
            match &out {
                Output::Send(m) => {
                    if let Some(m) = (self.tamper)(at_a, m.clone()) {
                        if at_a {
                            self.inbox_b.push_back(m)
                        } else {
                            self.inbox_a.push_back(m)
                        }
                    }
                }
                Output::Judge(r) => {
                    let me = if at_a { &mut self.a } else { &mut self.b };
                    follow_me = match (self.judge)(r) {
                        Ok((size, restart, hash)) => me.accept(size, restart, hash),
                        Err((code, msg)) => me.refuse(code, msg),
                    };
                }
                Output::StartSending(plan) => {
                    let blocks = data_blocks(&self.source, plan.restart_offset, plan.block_size);
                    self.record(at_a, out);
                    for m in blocks {
                        self.process(at_a, vec![Output::Send(m)]);
                    }
                    let end = EndTransfer { bytes: self.source.len() as u64, hash: Digest::of(&self.source) };
                    let me = if at_a { &mut self.a } else { &mut self.b };
                    let outs = me.sending_finished(end);
                    self.process(at_a, outs);
                    continue;
                }
                Output::CheckPrefix { offset, hash } => {
                    let me = if at_a { &mut self.a } else { &mut self.b };
                    let mine = Digest::of(&self.source[..*offset as usize]);
                    follow_me = me.resume_checked(mine == *hash);
                }
                Output::StartReceiving(plan) => self.received.truncate(plan.restart_offset as usize),
                Output::Write(d) => {
                    let me = if at_a { &mut self.a } else { &mut self.b };
                    if me.is_finished() {
                    } else if Digest::of(&d.payload) != d.hash {
                        follow_me = me.fail(ErrorCode::BlockHashMismatch, format!("block at {}", d.offset));
                    } else {
                        self.wrote = true;
                        self.received.extend_from_slice(&d.payload);
                    }
                }
                Output::Verify(e) => {
                    let mine = EndTransfer { bytes: self.received.len() as u64, hash: Digest::of(&self.received) };
                    let me = if at_a { &mut self.a } else { &mut self.b };
                    follow_me = if mine.hash == e.hash {
                        me.verified(Ok(mine))
                    } else {
                        me.verified(Err((ErrorCode::FileHashMismatch, "whole-file hash differs".into())))
                    };
                }
                Output::SenderTasks => {
                    let me = if at_a { &mut self.a } else { &mut self.b };
                    follow_me = me.sender_tasks_done(self.sender_tasks.clone());
                }
                Output::Done | Output::Failed(_) => {}
            }
            self.record(at_a, out);
            self.process(at_a, follow_me);
        }
    }

    fn record(&mut self, at_a: bool, out: Output) {
        if matches!(out, Output::Done) {
            self.done_order.push(at_a);
        }
        if at_a {
            self.log_a.push(out)
        } else {
            self.log_b.push(out)
        }
    }
}

/// Runs a request to its end. `tamper(from_requester, msg)` may alter or drop messages in flight.
fn run(req: Request, requested_claims: &str, source: &[u8], judge: Judge, tamper: Tamper) -> Outcome {
    run_full(req, requested_claims, source, &[], judge, tamper, Ok(()))
}

/// Like [`run`], with the receiver holding `partial` from an earlier attempt.
fn run_with_partial(req: Request, source: &[u8], partial: &[u8], judge: Judge) -> Outcome {
    run_full(req, "b", source, partial, judge, no_tamper(), Ok(()))
}

fn run_full(
    req: Request,
    requested_claims: &str,
    source: &[u8],
    partial: &[u8],
    judge: Judge,
    tamper: Tamper,
    sender_tasks: Result<(), (ErrorCode, String)>,
) -> Outcome {
    let mut d = Driver {
        a: Session::requester("a", "b", Capabilities::default(), req),
        b: Session::requested(requested_claims, "a", Capabilities::default()),
        log_a: Vec::new(),
        log_b: Vec::new(),
        received: partial.to_vec(),
        wrote: false,
        source: source.to_vec(),
        judge,
        tamper,
        steps: 0,
        inbox_a: Default::default(),
        inbox_b: Default::default(),
        done_order: Vec::new(),
        sender_tasks,
    };
    let first = d.a.start();
    d.process(true, first);
    loop {
        if let Some(m) = d.inbox_b.pop_front() {
            let outs = d.b.handle(m);
            d.process(false, outs);
        } else if let Some(m) = d.inbox_a.pop_front() {
            let outs = d.a.handle(m);
            d.process(true, outs);
        } else {
            break;
        }
    }
    Outcome { requester: d.log_a, requested: d.log_b, received: d.received, wrote: d.wrote, done_order: d.done_order }
}

fn sent_offsets(outs: &[Output]) -> Vec<u64> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Write(d) => Some(d.offset),
            _ => None,
        })
        .collect()
}

#[test]
fn a_push_resumes_at_the_receivers_offer_when_the_prefixes_match() {
    let src = file(5 * BS as usize);
    let partial = src[..2 * BS as usize].to_vec();
    let offer = Digest::of(&partial);
    let judge: Judge = Box::new(move |_| Ok((0, 2 * BS as u64, Some(offer))));
    let o = run_with_partial(request(Direction::Push, src.len() as u64), &src, &partial, judge);
    assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested));
    assert_eq!(o.received, src);
    assert_eq!(sent_offsets(&o.requested).first(), Some(&(2 * BS as u64)), "nothing before the offer is resent");
}

#[test]
fn a_push_starts_over_when_the_receivers_partial_differs() {
    let src = file(5 * BS as usize);
    let mut partial = src[..2 * BS as usize].to_vec();
    partial[100] ^= 0xff; // corrupted after the crash
    let offer = Digest::of(&partial);
    let judge: Judge = Box::new(move |_| Ok((0, 2 * BS as u64, Some(offer))));
    let o = run_with_partial(request(Direction::Push, src.len() as u64), &src, &partial, judge);
    assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested));
    assert_eq!(o.received, src, "the corrupted prefix was replaced, never appended to");
    assert_eq!(sent_offsets(&o.requested).first(), Some(&0));
}

#[test]
fn a_pull_resumes_at_the_offset_the_sender_agreed() {
    let src = file(4 * BS as usize + 7);
    let partial = src[..3 * BS as usize].to_vec();
    let mut req = request(Direction::Pull, 0);
    req.restart_offset = 3 * BS as u64;
    req.prefix_hash = Some(Digest::of(&partial));
    let size = src.len() as u64;
    let judge: Judge = Box::new(move |r| Ok((size, r.restart_offset, None)));
    let o = run_with_partial(req, &src, &partial, judge);
    assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested));
    assert_eq!(o.received, src);
    assert_eq!(sent_offsets(&o.requester).first(), Some(&(3 * BS as u64)));
}

#[test]
fn a_resume_outside_the_offer_is_a_protocol_error() {
    let mut b = Session::requested("b", "a", Capabilities::default());
    let id = RequestId::generate();
    b.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() }));
    b.handle(Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() }));
    b.handle(Message::Request(Request { request_id: id, ..request(Direction::Push, 10 * BS as u64) }));
    let out = b.accept(0, 4 * BS as u64, Some(Digest([1; 32])));
    assert!(
        matches!(&out[0], Output::Send(Message::Valid(v)) if v.restart_offset == 4 * BS as u64 && v.prefix_hash.is_some())
    );
    assert_eq!(out.len(), 1, "the receiver waits for the sender's decision");
    let out = b.handle(Message::Resume(Resume { offset: BS as u64 }));
    assert!(matches!(&out[1], Output::Failed(f) if f.code == ErrorCode::Protocol));
}

#[test]
fn a_request_completed_before_is_confirmed_without_moving_the_file() {
    let src = file(3 * BS as usize);
    let end = EndTransfer { bytes: src.len() as u64, hash: Digest::of(&src) };
    let mut b = Session::requested("b", "a", Capabilities::default());
    let mut a = Session::requester("a", "b", Capabilities::default(), request(Direction::Push, src.len() as u64));
    let mut to_b: Vec<Message> = a
        .start()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .collect();
    let mut to_a = Vec::new();
    for m in to_b.drain(..) {
        for o in b.handle(m) {
            match o {
                Output::Send(m) => to_a.push(m),
                Output::Judge(_) => {
                    for o in b.already_complete(end.clone()) {
                        if let Output::Send(m) = o {
                            to_a.push(m)
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert!(b.is_finished());
    let mut outs = Vec::new();
    for m in to_a {
        outs.extend(a.handle(m));
    }
    assert_eq!(outs, vec![Output::Done]);
    assert_eq!(a.end_transfer(), Some(&end));
}

#[test]
fn a_request_with_overlong_or_nul_bearing_text_is_refused_without_asking_the_runner() {
    let long = "x".repeat(crate::protocol::names::MAX_TRANSFER_INFO + 1);
    for (info, job) in [(long.as_str(), None), ("nul\0", None), ("", Some("j".repeat(300))), ("", Some("a\0b".into()))]
    {
        let mut b = Session::requested("b", "a", Capabilities::default());
        let req = Request { transfer_info: info.into(), external_job_id: job.clone(), ..request(Direction::Push, 1) };
        let id = req.request_id.clone();
        let mut outs = b.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id }));
        outs.extend(b.handle(Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() })));
        outs.extend(b.handle(Message::Request(req)));
        assert!(!outs.iter().any(|o| matches!(o, Output::Judge(_))), "{info:.10} {job:?}: not judged");
        assert!(
            outs.iter().any(|o| matches!(o, Output::Send(Message::Refused(r)) if r.code == ErrorCode::Protocol)),
            "{outs:?}"
        );
    }
}

#[test]
fn a_pull_is_complete_only_as_the_requester_claimed_it() {
    let src = file(2 * BS as usize);
    let end = EndTransfer { bytes: src.len() as u64, hash: Digest::of(&src) };
    let awaiting_valid = |req: Request| {
        let mut a = Session::requester("a", "b", Capabilities::default(), req);
        a.start();
        a.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: a.request_id().clone() }));
        a.handle(Message::Authent(Authent { host_id: "b".into(), capabilities: Capabilities::default() }));
        a
    };
    // Claimed: the partner confirms it, nothing moves.
    let claimed = Request { delivered: Some(end.clone()), ..request(Direction::Pull, 0) };
    assert_eq!(awaiting_valid(claimed.clone()).handle(Message::Complete(end.clone())), vec![Output::Done]);
    // Not claimed, or claimed with other bytes: a protocol error, not Done.
    let other = EndTransfer { bytes: end.bytes, hash: Digest::of(b"other bytes") };
    for (req, answer) in [(request(Direction::Pull, 0), end.clone()), (claimed, other)] {
        let outs = awaiting_valid(req).handle(Message::Complete(answer));
        assert!(outs.iter().any(|o| matches!(o, Output::Failed(f) if f.code == ErrorCode::Protocol)), "{outs:?}");
        assert!(!outs.contains(&Output::Done));
    }
    // A push's receiver may say it has the file already.
    assert_eq!(awaiting_valid(request(Direction::Push, end.bytes)).handle(Message::Complete(end)), vec![Output::Done]);
}

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn push_succeeds_for_every_size_shape() {
    for len in [0, 1, BS as usize - 1, BS as usize, BS as usize + 1, 3 * BS as usize + 17] {
        let src = file(len);
        let o = run(request(Direction::Push, len as u64), "b", &src, accept_all(0), no_tamper());
        assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested), "len {len}");
        assert_eq!(o.received, src, "len {len}");
    }
}

#[test]
fn pull_succeeds_for_every_size_shape() {
    for len in [0, 1, BS as usize + 1, 3 * BS as usize] {
        let src = file(len);
        let o = run(request(Direction::Pull, 0), "b", &src, accept_all(len as u64), no_tamper());
        assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested), "len {len}");
        assert_eq!(o.received, src, "len {len}");
        let plan = o.requester.iter().find_map(|x| match x {
            Output::StartReceiving(p) => Some(p.clone()),
            _ => None,
        });
        assert_eq!(plan.expect("requester receives a pull").size, len as u64);
    }
}

/// A requester that is Done never runs the request again, so the requested
/// side must never be left to finish after it (found by the simulation
/// `many_requests`, seed 18: a pull's sender crashed waiting for the echo
/// of its EndRequest and stayed Interrupted while the requester was Done).
#[test]
fn the_requested_side_is_done_before_the_requester_in_both_directions() {
    for direction in [Direction::Push, Direction::Pull] {
        let src = file(3 * BS as usize);
        let size = if direction == Direction::Push { src.len() as u64 } else { 0 };
        let o = run(request(direction, size), "b", &src, accept_all(src.len() as u64), no_tamper());
        assert_eq!(o.done_order, [false, true], "{direction:?}: requested side first, then the requester");
        // The requested side records Done before it sends the message that
        // lets the requester finish (push: the echo of EndRequest; pull:
        // EndRequest): a crash in between leaves the requester running, and
        // the requester's retry is answered Complete. A simulated crash
        // never falls between two outputs of one step, so only this test
        // sees that window.
        let done_at = o.requested.iter().position(|x| matches!(x, Output::Done)).expect("done");
        let end_at = o
            .requested
            .iter()
            .rposition(|x| matches!(x, Output::Send(Message::EndRequest(_))))
            .expect("EndRequest sent");
        assert!(done_at < end_at, "{direction:?}: the requested side records Done before its EndRequest");
    }
}

#[test]
fn the_exchange_follows_the_documented_order() {
    let src = file(10);
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = seen.clone();
    let tamper: Tamper = Box::new(move |from_a, m| {
        log.borrow_mut().push(format!("{}{}", if from_a { "A>" } else { "B>" }, m.kind()));
        Some(m)
    });
    let o = run(request(Direction::Push, 10), "b", &src, accept_all(0), tamper);
    assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested));
    assert_eq!(
        *seen.borrow(),
        [
            "A>Startup",
            "A>Authent",
            "A>Request",
            "B>Startup",
            "B>Authent",
            "B>Valid",
            "A>Data",
            "A>EndTransfer",
            "B>EndTransfer",
            "A>EndRequest",
            "B>EndRequest"
        ]
    );
}

#[test]
fn refusal_by_the_requested_side_reaches_the_requester_and_writes_nothing() {
    for code in [ErrorCode::UnknownRule, ErrorCode::RuleNotAllowed, ErrorCode::FileNotFound, ErrorCode::NoSpace] {
        for dir in [Direction::Push, Direction::Pull] {
            let judge: Judge = Box::new(move |_| Err((code, format!("refused: {code}"))));
            let o = run(request(dir, 5), "b", &file(5), judge, no_tamper());
            let fa = Outcome::failure(&o.requester).expect("requester failed");
            assert_eq!((fa.code, fa.origin), (code, Origin::Remote));
            assert_eq!(fa.message, format!("refused: {code}"));
            let fb = Outcome::failure(&o.requested).expect("requested failed");
            assert_eq!((fb.code, fb.origin), (code, Origin::Local));
            assert!(!o.wrote);
        }
    }
}

#[test]
fn escaping_file_names_are_refused_without_asking_the_runner() {
    // A relative path (a file set's member; `a/` is its empty folder) is
    // fine; nothing that climbs, starts at the root, or enters a work
    // folder is.
    for name in ["../etc/passwd", "/abs", "a/../b", "a//b", "a//", "/", "..", "x\0y", "a\\b", "d/.ferry-work/x"] {
        let mut req = request(Direction::Push, 1);
        req.file_name = name.into();
        let judge: Judge = Box::new(|_| panic!("the runner must not be asked"));
        let o = run(req, "b", &file(1), judge, no_tamper());
        assert_eq!(Outcome::failure(&o.requester).expect("failed").code, ErrorCode::BadFileName, "{name:?}");
        assert!(!o.wrote);
    }
}

#[test]
fn a_relative_path_goes_to_the_judge() {
    let mut req = request(Direction::Push, 1);
    req.file_name = "daily/2026-11-29/orders.csv".into();
    let judged = std::rc::Rc::new(std::cell::Cell::new(false));
    let seen = judged.clone();
    let judge: Judge = Box::new(move |r| {
        assert_eq!(r.file_name, "daily/2026-11-29/orders.csv");
        seen.set(true);
        Ok((0, 0, None))
    });
    let o = run(req, "b", &file(1), judge, no_tamper());
    assert!(judged.get(), "the session asked the runner to judge the path");
    assert!(Outcome::failure(&o.requester).is_none(), "{:?}", o.requester);
}

#[test]
fn block_size_outside_the_capabilities_is_refused() {
    for bs in [0, MIN_BLOCK_SIZE - 1, MAX_BLOCK_SIZE + 1] {
        let mut req = request(Direction::Push, 1);
        req.block_size = bs;
        let o = run(req, "b", &file(1), accept_all(0), no_tamper());
        assert_eq!(Outcome::failure(&o.requester).expect("failed").code, ErrorCode::CapabilityMismatch);
    }
}

#[test]
fn a_valid_with_another_block_size_than_asked_is_refused() {
    // Blocks and their digests are cut at the request's block size; a
    // peer that answers with another (a larger one within the limits) is
    // refused before any data moves.
    for direction in [Direction::Push, Direction::Pull] {
        let tamper: Tamper = Box::new(|from_a, m| match m {
            Message::Valid(mut v) if !from_a => {
                v.block_size *= 2;
                Some(Message::Valid(v))
            }
            m => Some(m),
        });
        let o = run(request(direction, 1), "b", &file(1), accept_all(0), tamper);
        let f = Outcome::failure(&o.requester).expect("the requester refuses");
        assert_eq!((f.code, f.origin), (ErrorCode::Protocol, Origin::Local), "{direction:?}");
        assert!(f.message.contains("the request asked for"), "{}", f.message);
    }
}

#[test]
fn authent_differing_from_the_certificate_is_refused() {
    // The requested node claims "mallory" while its certificate says "b".
    let o = run(request(Direction::Push, 1), "mallory", &file(1), accept_all(0), no_tamper());
    let f = Outcome::failure(&o.requester).expect("requester refuses");
    assert_eq!((f.code, f.origin), (ErrorCode::AuthentMismatch, Origin::Local));
    assert!(f.message.contains("mallory"));
    // And the requested side refuses a requester that lies.
    let tamper: Tamper = Box::new(|from_a, m| match m {
        Message::Authent(mut a) if from_a => {
            a.host_id = "c".into();
            Some(Message::Authent(a))
        }
        m => Some(m),
    });
    let o = run(request(Direction::Push, 1), "b", &file(1), accept_all(0), tamper);
    let f = Outcome::failure(&o.requested).expect("requested refuses");
    assert_eq!(f.code, ErrorCode::AuthentMismatch);
    assert_eq!(Outcome::failure(&o.requester).expect("requester told").origin, Origin::Remote);
    assert!(!o.wrote);
}

#[test]
fn version_mismatch_fails_both_sides() {
    let tamper: Tamper = Box::new(|_, m| match m {
        Message::Startup(mut s) => {
            s.version += 1;
            Some(Message::Startup(s))
        }
        m => Some(m),
    });
    let o = run(request(Direction::Push, 1), "b", &file(1), accept_all(0), tamper);
    assert_eq!(Outcome::failure(&o.requested).expect("failed").code, ErrorCode::VersionMismatch);
    assert_eq!(Outcome::failure(&o.requester).expect("failed").code, ErrorCode::VersionMismatch);
}

#[test]
fn a_corrupted_block_fails_the_transfer_and_is_not_written() {
    let src = file(3 * BS as usize);
    let tamper: Tamper = Box::new(|_, m| match m {
        Message::Data(mut d) if d.offset == BS as u64 => {
            let mut p = d.payload.to_vec();
            p[7] ^= 1;
            d.payload = p.into();
            Some(Message::Data(d))
        }
        m => Some(m),
    });
    let o = run(request(Direction::Push, src.len() as u64), "b", &src, accept_all(0), tamper);
    assert_eq!(Outcome::failure(&o.requested).expect("receiver fails").code, ErrorCode::BlockHashMismatch);
    assert_eq!(Outcome::failure(&o.requester).expect("sender told").code, ErrorCode::BlockHashMismatch);
    assert_eq!(o.received.len(), BS as usize, "only the block before the bad one was written");
}

#[test]
fn out_of_order_missing_or_extra_blocks_are_protocol_errors() {
    let src = file(3 * BS as usize);
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "dropped",
            Box::new(|_, m| match m {
                Message::Data(d) if d.offset == 0 => None,
                m => Some(m),
            }),
        ),
        (
            "moved",
            Box::new(|_, m| match m {
                Message::Data(mut d) if d.offset == BS as u64 => {
                    d.offset += 1;
                    Some(Message::Data(d))
                }
                m => Some(m),
            }),
        ),
        (
            "raw_len lies",
            Box::new(|_, m| match m {
                Message::Data(mut d) => {
                    d.raw_len -= 1;
                    Some(Message::Data(d))
                }
                m => Some(m),
            }),
        ),
    ];
    for (name, t) in cases {
        let o = run(request(Direction::Push, src.len() as u64), "b", &src, accept_all(0), t);
        assert_eq!(Outcome::failure(&o.requested).expect("receiver fails").code, ErrorCode::Protocol, "{name}");
        assert!(!Outcome::done(&o.requester), "{name}");
    }
}

#[test]
fn a_block_past_the_announced_size_is_refused() {
    // Announce 2 blocks, send 3.
    let src = file(3 * BS as usize);
    let mut req = request(Direction::Push, 2 * BS as u64);
    req.size = 2 * BS as u64;
    let o = run(req, "b", &src, accept_all(0), no_tamper());
    let f = Outcome::failure(&o.requested).expect("receiver fails");
    assert_eq!(f.code, ErrorCode::Protocol);
    assert!(f.message.contains("past the announced size"));
    assert_eq!(o.received.len(), 2 * BS as usize);
}

#[test]
fn whole_file_hash_mismatch_fails_both_sides() {
    let src = file(100);
    let tamper: Tamper = Box::new(|from_a, m| match m {
        Message::EndTransfer(mut e) if from_a => {
            e.hash = Digest([9; 32]);
            Some(Message::EndTransfer(e))
        }
        m => Some(m),
    });
    let o = run(request(Direction::Push, 100), "b", &src, accept_all(0), tamper);
    assert_eq!(Outcome::failure(&o.requested).expect("receiver").code, ErrorCode::FileHashMismatch);
    assert_eq!(Outcome::failure(&o.requester).expect("sender").code, ErrorCode::FileHashMismatch);
    assert!(!Outcome::done(&o.requested));
}

#[test]
fn an_echo_that_differs_fails_the_sender() {
    let src = file(100);
    // The receiver's echo comes from the requested node on a push, from the requester on a pull.
    for (dir, echo_from_requester) in [(Direction::Push, false), (Direction::Pull, true)] {
        let tamper: Tamper = Box::new(move |from_a, m| match m {
            Message::EndTransfer(mut e) if from_a == echo_from_requester => {
                e.bytes += 1;
                Some(Message::EndTransfer(e))
            }
            m => Some(m),
        });
        let o = run(request(dir, 100), "b", &src, accept_all(100), tamper);
        let sender = if dir == Direction::Push { &o.requester } else { &o.requested };
        assert_eq!(Outcome::failure(sender).expect("sender fails").code, ErrorCode::FileHashMismatch, "{dir:?}");
        assert!(!Outcome::done(&o.requester) && !Outcome::done(&o.requested), "{dir:?}");
    }
}

#[test]
fn source_shorter_than_announced_fails_as_source_changed() {
    let mut s = Session::requester("a", "b", Capabilities::default(), request(Direction::Push, 100));
    s.start();
    s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: s.request_id().clone() }));
    s.handle(Message::Authent(Authent { host_id: "b".into(), capabilities: Capabilities::default() }));
    let out = s.handle(Message::Valid(Valid {
        size: 100,
        block_size: BS,
        restart_offset: 0,
        prefix_hash: None,
        compression: Compression::None,
    }));
    assert!(matches!(out[0], Output::StartSending(_)));
    let out = s.sending_finished(EndTransfer { bytes: 90, hash: Digest([0; 32]) });
    assert!(matches!(&out[1], Output::Failed(f) if f.code == ErrorCode::SourceChanged));
}

#[test]
fn peer_error_and_cancel_end_the_session_at_any_step() {
    let src = file(3 * BS as usize);
    for (kill_after, cancel) in [(0usize, false), (3, true), (6, false), (7, true), (8, false)] {
        let mut n = 0;
        let tamper: Tamper = Box::new(move |from_a, m| {
            n += 1;
            if n == kill_after + 1 {
                return Some(if cancel {
                    Message::Cancel(Cancel { reason: "operator".into() })
                } else {
                    Message::Error(ErrorReport {
                        code: ErrorCode::Io,
                        message: format!("disk trouble (from_a={from_a})"),
                    })
                });
            }
            Some(m)
        });
        let o = run(request(Direction::Push, src.len() as u64), "b", &src, accept_all(0), tamper);
        let expected = if cancel { ErrorCode::Cancelled } else { ErrorCode::Io };
        let any = Outcome::failure(&o.requester).or(Outcome::failure(&o.requested)).expect("someone failed");
        assert_eq!(any.code, expected, "after {kill_after}");
        assert!(!Outcome::done(&o.requester) || !Outcome::done(&o.requested));
    }
}

/// Drives a session to each reachable state and feeds it every message kind it
/// does not expect there: each ends the session with a protocol error.
#[test]
fn unexpected_messages_in_every_state_are_protocol_errors() {
    let id = RequestId::generate();
    let samples = |id: &RequestId| {
        vec![
            Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() }),
            Message::Authent(Authent { host_id: "b".into(), capabilities: Capabilities::default() }),
            Message::Request(Request { request_id: id.clone(), ..request(Direction::Push, 1) }),
            Message::Valid(Valid {
                size: 1,
                block_size: BS,
                restart_offset: 0,
                prefix_hash: None,
                compression: Compression::None,
            }),
            Message::Refused(Refused { code: ErrorCode::Io, message: "x".into() }),
            Message::Data(Data {
                offset: 0,
                raw_len: 1,
                payload: vec![1].into(),
                compressed: false,
                hash: Digest::of(&[1]),
            }),
            Message::EndTransfer(EndTransfer { bytes: 1, hash: Digest::of(&[1]) }),
            Message::EndRequest(EndRequest {}),
            Message::Resume(Resume { offset: 0 }),
            Message::Complete(EndTransfer { bytes: 1, hash: Digest::of(&[1]) }),
        ]
    };
    // Each entry: how to reach the state, and which message kinds are legal there.
    type Setup = Box<dyn Fn() -> Session>;
    let req = Request { request_id: id.clone(), ..request(Direction::Push, 1) };
    let pull = Request { request_id: id.clone(), ..request(Direction::Pull, 0) };
    let r1 = req.clone();
    let r2 = req.clone();
    let r3 = req.clone();
    let p1 = pull.clone();
    let id1 = id.clone();
    let id2 = id.clone();
    let id3 = id.clone();
    let states: Vec<(&str, Setup, Vec<&str>)> = vec![
        (
            "requester AwaitStartupEcho",
            Box::new(move || {
                let mut s = Session::requester("a", "b", Capabilities::default(), r1.clone());
                s.start();
                s
            }),
            vec!["Startup"],
        ),
        (
            "requester AwaitValid",
            Box::new(move || {
                let mut s = Session::requester("a", "b", Capabilities::default(), r2.clone());
                s.start();
                s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: r2.request_id.clone() }));
                s.handle(Message::Authent(Authent { host_id: "b".into(), capabilities: Capabilities::default() }));
                s
            }),
            vec!["Valid", "Refused", "Complete"],
        ),
        (
            "requester Sending",
            Box::new(move || {
                let mut s = Session::requester("a", "b", Capabilities::default(), r3.clone());
                s.start();
                s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: r3.request_id.clone() }));
                s.handle(Message::Authent(Authent { host_id: "b".into(), capabilities: Capabilities::default() }));
                s.handle(Message::Valid(Valid {
                    size: 1,
                    block_size: BS,
                    restart_offset: 0,
                    prefix_hash: None,
                    compression: Compression::None,
                }));
                s
            }),
            vec![],
        ),
        (
            "requester Receiving (pull)",
            Box::new(move || {
                let mut s = Session::requester("a", "b", Capabilities::default(), p1.clone());
                s.start();
                s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: p1.request_id.clone() }));
                s.handle(Message::Authent(Authent { host_id: "b".into(), capabilities: Capabilities::default() }));
                s.handle(Message::Valid(Valid {
                    size: 1,
                    block_size: BS,
                    restart_offset: 0,
                    prefix_hash: None,
                    compression: Compression::None,
                }));
                s
            }),
            vec!["Data", "EndTransfer"],
        ),
        ("requested AwaitStartup", Box::new(|| Session::requested("b", "a", Capabilities::default())), vec!["Startup"]),
        (
            "requested AwaitAuthent",
            Box::new(move || {
                let mut s = Session::requested("b", "a", Capabilities::default());
                s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id1.clone() }));
                s
            }),
            vec![],
        ),
        (
            "requested AwaitRequest",
            Box::new(move || {
                let mut s = Session::requested("b", "a", Capabilities::default());
                s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id2.clone() }));
                s.handle(Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() }));
                s
            }),
            vec!["Request"],
        ),
        (
            "requested Receiving (push)",
            Box::new(move || {
                let mut s = Session::requested("b", "a", Capabilities::default());
                s.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id3.clone() }));
                s.handle(Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() }));
                s.handle(Message::Request(Request { request_id: id3.clone(), ..request(Direction::Push, 1) }));
                s.accept(0, 0, None);
                s
            }),
            vec!["Data", "EndTransfer"],
        ),
    ];
    for (name, setup, legal) in &states {
        for msg in samples(&id) {
            let kind = msg.kind();
            if legal.contains(&kind) || (kind == "Authent" && name.contains("AwaitAuthent")) {
                continue;
            }
            // An Authent while awaiting the peer's Authent is legal on the requested side.
            let mut s = setup();
            assert!(!s.is_finished(), "{name} setup");
            let out = s.handle(msg);
            let failed = out.iter().find_map(|o| match o {
                Output::Failed(f) => Some(f),
                _ => None,
            });
            let f = failed.unwrap_or_else(|| panic!("{name}: {kind} was accepted: {out:?}"));
            assert_eq!(f.code, ErrorCode::Protocol, "{name}: {kind}");
            assert!(matches!(&out[0], Output::Send(Message::Error(_))), "{name}: {kind} tells the peer");
            assert!(s.is_finished());
        }
    }
}

#[test]
fn nothing_happens_after_the_end() {
    let src = file(10);
    let mut s = Session::requester("a", "b", Capabilities::default(), request(Direction::Push, 10));
    s.start();
    s.handle(Message::Error(ErrorReport { code: ErrorCode::Io, message: "x".into() }));
    assert!(s.is_finished());
    assert!(s
        .handle(Message::Data(Data {
            offset: 0,
            raw_len: 10,
            payload: src.into(),
            compressed: false,
            hash: Digest([0; 32])
        }))
        .is_empty());
    assert!(s.fail(ErrorCode::Io, "again".into()).is_empty());
    assert!(s.cancel("again".into()).is_empty());
}

#[test]
fn restart_offset_is_the_smaller_of_both_sides_and_never_past_the_size() {
    let mut b = Session::requested("b", "a", Capabilities::default());
    let id = RequestId::generate();
    b.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() }));
    b.handle(Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() }));
    let mut r = request(Direction::Push, 1000);
    r.request_id = id;
    r.restart_offset = 800;
    b.handle(Message::Request(r));
    let out = b.accept(0, 500, Some(Digest([0; 32])));
    assert!(matches!(&out[0], Output::Send(Message::Valid(v)) if v.restart_offset == 500));
    assert_eq!(out.len(), 1, "a push receiver's offer waits for the sender's Resume");
    let out = b.handle(Message::Resume(Resume { offset: 500 }));
    assert!(matches!(&out[0], Output::StartReceiving(p) if p.restart_offset == 500));
}

#[test]
fn compression_is_used_only_when_both_sides_support_it() {
    let mut b =
        Session::requested("b", "a", Capabilities { compression: vec![Compression::None], ..Capabilities::default() });
    let id = RequestId::generate();
    b.handle(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() }));
    b.handle(Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() }));
    let mut r = request(Direction::Push, 10);
    r.request_id = id;
    r.options.compression = Compression::Lz4;
    b.handle(Message::Request(r));
    let out = b.accept(0, 0, None);
    assert!(matches!(&out[0], Output::Send(Message::Valid(v)) if v.compression == Compression::None));
}

#[test]
fn frames_stay_small_until_a_plan_is_agreed_and_handshake_steps_are_due_at_once() {
    const HANDSHAKE: usize = 64 * 1024;
    let req = request(Direction::Push, 3 * u64::from(BS));
    let mut a = Session::requester("a", "b", Capabilities::default(), req);
    let mut b = Session::requested("b", "a", Capabilities::default());
    assert_eq!(b.frame_limit(HANDSHAKE), HANDSHAKE, "before Startup");
    assert!(b.awaits_handshake(), "the requested side waits for Startup on a deadline");
    let opening: Vec<Message> = a
        .start()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .collect();
    assert!(!a.awaits_handshake(), "the requester waits for the judged answer without a handshake deadline");
    let mut judged = None;
    for m in opening {
        assert!(b.awaits_handshake());
        assert_eq!(b.frame_limit(HANDSHAKE), HANDSHAKE);
        for o in b.handle(m) {
            if let Output::Judge(r) = o {
                judged = Some(r);
            }
        }
    }
    assert!(judged.is_some(), "Startup, Authent and Request lead to a judgement");
    assert!(!b.awaits_handshake(), "judging is this side's own work");
    b.accept(0, 0, None);
    let block_limit = BS as usize + FRAME_FIELDS;
    assert_eq!(b.frame_limit(HANDSHAKE), HANDSHAKE.max(block_limit), "after Valid: the agreed block");
    assert_eq!(b.frame_limit(1024), block_limit);
    assert!(!b.awaits_handshake());
}

#[test]
fn the_sender_runs_its_post_tasks_after_the_echo_and_before_the_exchange_ends() {
    for direction in [Direction::Push, Direction::Pull] {
        let src = file(3 * BS as usize + 1);
        let pull_size = if direction == Direction::Pull { src.len() as u64 } else { 0 };
        let o = run(request(direction, src.len() as u64), "b", &src, accept_all(pull_size), no_tamper());
        let sender = if direction == Direction::Push { &o.requester } else { &o.requested };
        let tasks_at = sender.iter().position(|x| *x == Output::SenderTasks).expect("sender tasks asked for");
        let echo_seen = sender.iter().position(|x| matches!(x, Output::Send(Message::EndTransfer(_)))).expect("sent");
        let end_at =
            sender.iter().position(|x| matches!(x, Output::Send(Message::EndRequest(_)))).expect("EndRequest sent");
        assert!(echo_seen < tasks_at && tasks_at < end_at, "{direction:?}: {sender:?}");
        assert!(Outcome::done(&o.requester) && Outcome::done(&o.requested), "{direction:?}");
        let receiver = if direction == Direction::Push { &o.requested } else { &o.requester };
        assert!(!receiver.contains(&Output::SenderTasks), "only the sender runs them");
    }
}

#[test]
fn a_failed_sender_post_task_fails_both_sides_and_names_the_task() {
    for direction in [Direction::Push, Direction::Pull] {
        let src = file(BS as usize);
        let pull_size = if direction == Direction::Pull { src.len() as u64 } else { 0 };
        let failed = Err((
            ErrorCode::TaskFailed,
            "post-task 1/1 (exec) failed on node x: exec program=\"/bin/load\" args=[\"pw\"]: exited 1".to_string(),
        ));
        let o =
            run_full(request(direction, src.len() as u64), "b", &src, &[], accept_all(pull_size), no_tamper(), failed);
        let (sender, receiver) =
            if direction == Direction::Push { (&o.requester, &o.requested) } else { (&o.requested, &o.requester) };
        let f = Outcome::failure(sender).expect("sender failed");
        assert_eq!((f.code, f.origin), (ErrorCode::TaskFailed, Origin::Local), "{direction:?}");
        let f = Outcome::failure(receiver).expect("receiver told");
        assert_eq!((f.code, f.origin), (ErrorCode::TaskFailed, Origin::Remote), "{direction:?}");
        assert!(f.message.contains("post-task 1/1 (exec) failed on node x"), "{}", f.message);
        assert!(!f.message.contains("pw") && !f.message.contains("exited"), "only which task: {}", f.message);
        assert!(!Outcome::done(sender) && !Outcome::done(receiver), "{direction:?}");
        assert!(o.wrote, "the file itself was delivered before the tasks");
    }
}
