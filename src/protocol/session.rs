//! The per-request state machine of either side, without I/O.
//!
//! A [`Session`] takes inputs — a message from the peer ([`Session::handle`])
//! or a local event (the runner's decision, the end of the block pump, the
//! receiver's verification) — and returns [`Output`]s: messages to send and
//! work for the runner to do. It owns no socket, file, clock or task, so every
//! sequence is tested here without a network and reused by the simulations.
//!
//! Roles: the *requester* opens the channel; the *requested* node answers.
//! Independently, one side *sends* the file and the other *receives* it
//! (push: the requester sends; pull: the requested node sends). The handshake
//! depends on the role, the data phase only on sending vs receiving.
//!
//! Invariants:
//! - A message the current state does not expect ends the session with
//!   [`ErrorCode::Protocol`] and an `Error` to the peer; nothing else happens.
//! - Blocks are accepted only in order, contiguous from the agreed restart
//!   offset, never past the announced size.
//! - `Done` is reached only after the receiver verified the count and the
//!   whole-file hash (its `EndTransfer` echo) and the `EndRequest` exchange.
//! - After `Done` or `Failed` every input is ignored (returns nothing).

use super::message::*;
use super::names::check_entry_path;

/// Room in a frame for a Data message's fields besides its payload.
pub const FRAME_FIELDS: usize = 4096;

/// Which side of the request this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Requester,
    Requested,
}

/// Where a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This node detected it (and told the peer where it could).
    Local,
    /// The peer reported it.
    Remote,
}

/// How a session ended badly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub origin: Origin,
}

/// The agreed parameters of the data phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub size: u64,
    pub block_size: u32,
    pub restart_offset: u64,
    pub compression: Compression,
}

/// What the runner must do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this message to the peer.
    Send(Message),
    /// Requested side: judge the request (rule, partner, file, space), then
    /// call [`Session::accept`] or [`Session::refuse`].
    Judge(Request),
    /// Push sender: the receiver offers to resume at `offset`, where its
    /// partial file hashes to `hash`. Compare with the source's prefix, then
    /// call [`Session::resume_checked`] (or [`Session::fail`] if the rule
    /// forbids starting over).
    CheckPrefix { offset: u64, hash: Digest },
    /// This side sends: pump blocks from `plan.restart_offset`, then call
    /// [`Session::sending_finished`].
    StartSending(Plan),
    /// This side receives: prepare the work file for `plan`.
    StartReceiving(Plan),
    /// Sender: the receiver confirmed the file (its echo matched); run this
    /// side's post-tasks, then call [`Session::sender_tasks_done`].
    SenderTasks,
    /// Receiver: check this block's hash and write it.
    Write(Data),
    /// Receiver: every block arrived; check the count and whole-file hash
    /// against these, deliver, then call [`Session::verified`].
    Verify(EndTransfer),
    /// The request completed on both sides.
    Done,
    /// The request ended badly; the channel is over.
    Failed(Failure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Requester, before [`Session::start`].
    Idle,
    AwaitStartupEcho,
    AwaitPeerAuthent,
    AwaitValid,
    AwaitStartup,
    AwaitRequest,
    Judging,
    /// Push sender, comparing the receiver's prefix hash with its own file.
    CheckingPrefix,
    /// Push receiver, after offering to resume: waits for the sender's decision.
    AwaitResume,
    Sending,
    AwaitEndTransferEcho {
        sent: EndTransfer,
    },
    /// Sender, after a matching echo: its post-tasks run.
    SenderTasks,
    AwaitEndRequestEcho,
    Receiving {
        next: u64,
    },
    Verifying,
    AwaitEndRequest,
    Done,
    Failed,
}

/// One request's protocol state on one node.
#[derive(Debug)]
pub struct Session {
    role: Role,
    request_id: RequestId,
    local_id: String,
    /// The peer's id as its certificate names it; Authent must match it.
    peer_id: String,
    capabilities: Capabilities,
    peer_capabilities: Option<Capabilities>,
    /// The request (the requester's own; the requested side's once received).
    request: Option<Request>,
    plan: Option<Plan>,
    /// The count and whole-file hash this side sent or verified.
    end: Option<EndTransfer>,
    state: State,
}

impl Session {
    /// The requester's side of `request`, talking to `peer_id`.
    pub fn requester(local_id: &str, peer_id: &str, capabilities: Capabilities, request: Request) -> Self {
        Session {
            role: Role::Requester,
            request_id: request.request_id.clone(),
            local_id: local_id.to_owned(),
            peer_id: peer_id.to_owned(),
            capabilities,
            peer_capabilities: None,
            request: Some(request),
            plan: None,
            end: None,
            state: State::Idle,
        }
    }

    /// The requested side of an incoming channel from `peer_id` (its certificate name).
    ///
    /// The request id is learnt from the peer's Startup.
    pub fn requested(local_id: &str, peer_id: &str, capabilities: Capabilities) -> Self {
        Session {
            role: Role::Requested,
            request_id: RequestId::parse(&"0".repeat(32)).expect("32 zeros is a valid id"),
            local_id: local_id.to_owned(),
            peer_id: peer_id.to_owned(),
            capabilities,
            peer_capabilities: None,
            request: None,
            plan: None,
            end: None,
            state: State::AwaitStartup,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The request, once known (always on the requester).
    pub fn request(&self) -> Option<&Request> {
        self.request.as_ref()
    }

    /// The agreed data-phase parameters, once agreed.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// The byte count and whole-file BLAKE3 this side sent (sender) or
    /// verified (receiver), once known.
    pub fn end_transfer(&self) -> Option<&EndTransfer> {
        self.end.as_ref()
    }

    /// Whether this side sends the file (known once the request is).
    pub fn is_sender(&self) -> Option<bool> {
        let dir = self.request.as_ref()?.direction;
        Some(matches!((self.role, dir), (Role::Requester, Direction::Push) | (Role::Requested, Direction::Pull)))
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// The largest frame body the peer may send now: `handshake` (the
    /// configured limit for the handshake's own messages) until a plan is
    /// agreed, then the agreed block size plus room for a Data frame's
    /// other fields, and never less than `handshake`.
    pub fn frame_limit(&self, handshake: usize) -> usize {
        match &self.plan {
            Some(plan) => (plan.block_size as usize + FRAME_FIELDS).max(handshake),
            None => handshake,
        }
    }

    /// Whether the peer owes this side a handshake step that it sends
    /// without waiting for anything (the requested side's Startup, Authent
    /// and Request, pipelined by the requester): its next frame is due now,
    /// so a deadline applies.
    pub fn awaits_handshake(&self) -> bool {
        matches!(self.state, State::AwaitStartup | State::AwaitRequest)
            || (self.role == Role::Requested && self.state == State::AwaitPeerAuthent)
    }

    /// Whether this side receives blocks now: the sender owes it the next
    /// block (or its `EndTransfer`), so a deadline applies.
    pub fn awaits_data(&self) -> bool {
        matches!(self.state, State::Receiving { .. })
    }

    /// A short name of the current state, for logs.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Idle => "Idle",
            State::AwaitStartupEcho => "AwaitStartupEcho",
            State::AwaitPeerAuthent => "AwaitPeerAuthent",
            State::AwaitValid => "AwaitValid",
            State::AwaitStartup => "AwaitStartup",
            State::AwaitRequest => "AwaitRequest",
            State::Judging => "Judging",
            State::CheckingPrefix => "CheckingPrefix",
            State::AwaitResume => "AwaitResume",
            State::Sending => "Sending",
            State::AwaitEndTransferEcho { .. } => "AwaitEndTransferEcho",
            State::SenderTasks => "SenderTasks",
            State::AwaitEndRequestEcho => "AwaitEndRequestEcho",
            State::Receiving { .. } => "Receiving",
            State::Verifying => "Verifying",
            State::AwaitEndRequest => "AwaitEndRequest",
            State::Done => "Done",
            State::Failed => "Failed",
        }
    }

    /// Requester: opens the channel. Startup, Authent and Request go out
    /// together: the peer's identity is already proven by its certificate,
    /// its Authent is still checked before any data moves, and pipelining
    /// saves two round trips per request.
    pub fn start(&mut self) -> Vec<Output> {
        if self.state != State::Idle {
            return Vec::new();
        }
        self.state = State::AwaitStartupEcho;
        let req = self.request.clone().expect("the requester always holds its request");
        vec![
            Output::Send(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: self.request_id.clone() })),
            self.own_authent(),
            Output::Send(Message::Request(req)),
        ]
    }

    /// A message from the peer.
    pub fn handle(&mut self, msg: Message) -> Vec<Output> {
        if self.is_finished() {
            return Vec::new();
        }
        match msg {
            Message::Error(e) => return self.fail_remote(e.code, e.message),
            Message::Cancel(c) => {
                return self.fail_remote(ErrorCode::Cancelled, format!("cancelled by {}: {}", self.peer_id, c.reason))
            }
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, State::Failed);
        match (state, msg) {
            // ---- requester handshake ----
            (State::AwaitStartupEcho, Message::Startup(s)) => {
                if s.version != PROTOCOL_VERSION {
                    return self.fail_local(
                        ErrorCode::VersionMismatch,
                        format!("peer speaks protocol version {}, this node {}", s.version, PROTOCOL_VERSION),
                    );
                }
                if s.request_id != self.request_id {
                    return self.fail_local(
                        ErrorCode::Protocol,
                        format!("Startup echo names request {} instead of {}", s.request_id, self.request_id),
                    );
                }
                self.state = State::AwaitPeerAuthent;
                Vec::new()
            }
            (State::AwaitPeerAuthent, Message::Authent(a)) if self.role == Role::Requester => {
                if let Some(out) = self.check_authent(&a) {
                    return out;
                }
                self.peer_capabilities = Some(a.capabilities);
                self.state = State::AwaitValid;
                Vec::new()
            }
            (State::AwaitValid, Message::Valid(v)) => self.on_valid(v),
            (State::AwaitValid, Message::Refused(r)) => self.fail_remote(r.code, r.message),
            (State::AwaitValid, Message::Complete(end)) => {
                // The partner already completed this request (we crashed
                // before recording it): nothing moves again. On a pull this
                // side is the receiver: only the delivery it claimed, with
                // the same count and hash, can be complete.
                let req = self.request.as_ref().expect("the requester always holds its request");
                if req.direction == Direction::Pull && req.delivered.as_ref() != Some(&end) {
                    return self.fail_local(
                        ErrorCode::Protocol,
                        format!(
                            "{} answered Complete ({} bytes, BLAKE3 {}) to a pull this node did not claim delivered so",
                            self.peer_id, end.bytes, end.hash
                        ),
                    );
                }
                self.end = Some(end);
                self.state = State::Done;
                vec![Output::Done]
            }
            (State::AwaitResume, Message::Resume(r)) => {
                let mut plan = self.plan.clone().expect("AwaitResume implies a plan");
                if r.offset != 0 && r.offset != plan.restart_offset {
                    return self.fail_local(
                        ErrorCode::Protocol,
                        format!("sender resumes at {} but {} or 0 was offered", r.offset, plan.restart_offset),
                    );
                }
                plan.restart_offset = r.offset;
                self.plan = Some(plan.clone());
                self.state = State::Receiving { next: plan.restart_offset };
                vec![Output::StartReceiving(plan)]
            }

            // ---- requested handshake ----
            (State::AwaitStartup, Message::Startup(s)) => {
                self.request_id = s.request_id.clone();
                if s.version != PROTOCOL_VERSION {
                    return self.fail_local(
                        ErrorCode::VersionMismatch,
                        format!("peer speaks protocol version {}, this node {}", s.version, PROTOCOL_VERSION),
                    );
                }
                self.state = State::AwaitPeerAuthent;
                vec![Output::Send(Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: s.request_id }))]
            }
            (State::AwaitPeerAuthent, Message::Authent(a)) if self.role == Role::Requested => {
                if let Some(out) = self.check_authent(&a) {
                    return out;
                }
                self.peer_capabilities = Some(a.capabilities);
                self.state = State::AwaitRequest;
                vec![self.own_authent()]
            }
            (State::AwaitRequest, Message::Request(r)) => self.on_request(r),

            // ---- data phase: receiver ----
            (State::Receiving { next }, Message::Data(d)) => self.on_data(next, d),
            (State::Receiving { next }, Message::EndTransfer(e)) => {
                let size = self.plan.as_ref().map_or(0, |p| p.size);
                if e.bytes != next || next != size {
                    return self.fail_local(
                        ErrorCode::SizeMismatch,
                        format!("sender ended after {} bytes; received {next} of an announced {size}", e.bytes),
                    );
                }
                self.state = State::Verifying;
                vec![Output::Verify(e)]
            }
            (State::AwaitEndRequest, Message::EndRequest(_)) => {
                // Recorded before the echo: in a push this side is the
                // requested one and must be Done before the requester can be
                // (see the sender's end below).
                self.state = State::Done;
                vec![Output::Done, Output::Send(Message::EndRequest(EndRequest {}))]
            }

            // ---- data phase: sender ----
            (State::AwaitEndTransferEcho { sent }, Message::EndTransfer(echo)) => {
                if echo != sent {
                    return self.fail_local(
                        ErrorCode::FileHashMismatch,
                        format!(
                            "receiver counted {} bytes with BLAKE3 {}; sent {} bytes with BLAKE3 {}",
                            echo.bytes, echo.hash, sent.bytes, sent.hash
                        ),
                    );
                }
                // The sender's post-tasks run once the receiver confirmed
                // the file, before the exchange ends (R66's order).
                self.state = State::SenderTasks;
                vec![Output::SenderTasks]
            }
            (State::AwaitEndRequestEcho, Message::EndRequest(_)) => {
                self.state = State::Done;
                vec![Output::Done]
            }

            (state, msg) => {
                let name = {
                    self.state = state;
                    self.state_name()
                };
                self.fail_local(ErrorCode::Protocol, format!("unexpected {} message in state {name}", msg.kind()))
            }
        }
    }

    /// Requested side: the runner accepts the request it was asked to judge.
    ///
    /// Push (this node receives): `restart_offset` is this node's durable
    /// restart point and `prefix_hash` the BLAKE3 of its partial file up to
    /// it; an offer above 0 waits for the sender's [`Resume`]. Pull (this
    /// node sends): `size` is the file's size and `restart_offset` the
    /// offset agreed after checking the requester's prefix hash (0 to start
    /// over).
    pub fn accept(&mut self, size: u64, restart_offset: u64, prefix_hash: Option<Digest>) -> Vec<Output> {
        if self.state != State::Judging {
            return Vec::new();
        }
        let req = self.request.clone().expect("Judging implies a request");
        let size = if req.direction == Direction::Push { req.size } else { size };
        let restart_offset = restart_offset.min(req.restart_offset).min(size);
        let plan =
            Plan { size, block_size: req.block_size, restart_offset, compression: self.agreed_compression(&req) };
        let offer = req.direction == Direction::Push && restart_offset > 0;
        let valid = Valid {
            size: plan.size,
            block_size: plan.block_size,
            restart_offset: plan.restart_offset,
            prefix_hash: if offer { prefix_hash } else { None },
            compression: plan.compression,
        };
        let mut out = vec![Output::Send(Message::Valid(valid))];
        if offer {
            self.plan = Some(plan);
            self.state = State::AwaitResume;
        } else {
            out.extend(self.enter_data_phase(plan));
        }
        out
    }

    /// Requested side: this request was completed before (the requester
    /// lost track of it); answer with the verified result and end, without
    /// moving the file again.
    pub fn already_complete(&mut self, end: EndTransfer) -> Vec<Output> {
        if self.state != State::Judging {
            return Vec::new();
        }
        self.end = Some(end.clone());
        self.state = State::Done;
        vec![Output::Send(Message::Complete(end)), Output::Done]
    }

    /// Push sender: the decision after [`Output::CheckPrefix`]: resume at
    /// the offered offset (`true`) or start over from 0 (`false`).
    pub fn resume_checked(&mut self, resume: bool) -> Vec<Output> {
        if self.state != State::CheckingPrefix {
            return Vec::new();
        }
        let mut plan = self.plan.clone().expect("CheckingPrefix implies a plan");
        if !resume {
            plan.restart_offset = 0;
        }
        self.plan = Some(plan.clone());
        self.state = State::Sending;
        vec![Output::Send(Message::Resume(Resume { offset: plan.restart_offset })), Output::StartSending(plan)]
    }

    /// Requested side: the runner refuses the request it was asked to judge.
    pub fn refuse(&mut self, code: ErrorCode, message: String) -> Vec<Output> {
        if self.state != State::Judging {
            return Vec::new();
        }
        self.state = State::Failed;
        vec![
            Output::Send(Message::Refused(Refused { code, message: code.told_to_partner(&message) })),
            Output::Failed(Failure { code, message, origin: Origin::Local }),
        ]
    }

    /// Sender: the pump sent every block; `end` holds its count and whole-file hash.
    pub fn sending_finished(&mut self, end: EndTransfer) -> Vec<Output> {
        if self.state != State::Sending {
            return Vec::new();
        }
        let size = self.plan.as_ref().map_or(0, |p| p.size);
        if end.bytes != size {
            return self.fail_local(
                ErrorCode::SourceChanged,
                format!("read {} bytes from the source, which was {size} bytes when the transfer began", end.bytes),
            );
        }
        self.state = State::AwaitEndTransferEcho { sent: end.clone() };
        self.end = Some(end.clone());
        vec![Output::Send(Message::EndTransfer(end))]
    }

    /// Sender: its post-tasks ended. On success the exchange ends: the
    /// requested side records `Done` before its `EndRequest` (a requester
    /// that is `Done` never runs the request again, so a requested side
    /// still waiting for an echo, lost with its connection or its process,
    /// would stay unfinished for good; recorded first, then announced:
    /// whatever is lost after, the requester runs it again and is answered
    /// `Complete`); the requester sends `EndRequest` and awaits its echo. A
    /// failed task fails the request and tells the receiver.
    pub fn sender_tasks_done(&mut self, result: Result<(), (ErrorCode, String)>) -> Vec<Output> {
        if self.state != State::SenderTasks {
            return Vec::new();
        }
        match result {
            Err((code, message)) => self.fail_local(code, message),
            Ok(()) if self.role == Role::Requested => {
                self.state = State::Done;
                vec![Output::Done, Output::Send(Message::EndRequest(EndRequest {}))]
            }
            Ok(()) => {
                self.state = State::AwaitEndRequestEcho;
                vec![Output::Send(Message::EndRequest(EndRequest {}))]
            }
        }
    }

    /// Receiver: the verification asked for by [`Output::Verify`] ended.
    ///
    /// `Ok(end)` carries this side's own count and whole-file hash, echoed to
    /// the sender once the file is delivered and this side's post-tasks ran
    /// (the runner runs them before it calls this).
    pub fn verified(&mut self, result: Result<EndTransfer, (ErrorCode, String)>) -> Vec<Output> {
        if self.state != State::Verifying {
            return Vec::new();
        }
        match result {
            Ok(end) => {
                self.end = Some(end.clone());
                self.state = State::AwaitEndRequest;
                vec![Output::Send(Message::EndTransfer(end))]
            }
            Err((code, message)) => self.fail_local(code, message),
        }
    }

    /// A local failure (I/O, hash mismatch, shutdown): tell the peer and end.
    pub fn fail(&mut self, code: ErrorCode, message: String) -> Vec<Output> {
        if self.is_finished() {
            return Vec::new();
        }
        self.fail_local(code, message)
    }

    /// Operator cancel: tell the peer and end.
    pub fn cancel(&mut self, reason: String) -> Vec<Output> {
        if self.is_finished() {
            return Vec::new();
        }
        self.state = State::Failed;
        vec![
            Output::Send(Message::Cancel(Cancel { reason: reason.clone() })),
            Output::Failed(Failure { code: ErrorCode::Cancelled, message: reason, origin: Origin::Local }),
        ]
    }

    /// The channel broke (stream reset, connection lost, undecodable frame):
    /// nothing can be sent any more.
    pub fn channel_lost(&mut self, code: ErrorCode, message: String) -> Vec<Output> {
        if self.is_finished() {
            return Vec::new();
        }
        self.state = State::Failed;
        vec![Output::Failed(Failure { code, message, origin: Origin::Local })]
    }

    fn own_authent(&self) -> Output {
        Output::Send(Message::Authent(Authent {
            host_id: self.local_id.clone(),
            capabilities: self.capabilities.clone(),
        }))
    }

    fn check_authent(&mut self, a: &Authent) -> Option<Vec<Output>> {
        if a.host_id != self.peer_id {
            return Some(self.fail_local(
                ErrorCode::AuthentMismatch,
                format!("peer claims host id {:?} but its certificate names {:?}", a.host_id, self.peer_id),
            ));
        }
        None
    }

    fn agreed_compression(&self, req: &Request) -> Compression {
        let theirs = self.peer_capabilities.as_ref().map(|c| c.compression.as_slice()).unwrap_or(&[]);
        let wanted = req.options.compression;
        if self.capabilities.compression.contains(&wanted) && theirs.contains(&wanted) {
            wanted
        } else {
            Compression::None
        }
    }

    fn block_limit(&self) -> u32 {
        let theirs = self.peer_capabilities.as_ref().map_or(MAX_BLOCK_SIZE, |c| c.max_block_size);
        self.capabilities.max_block_size.min(theirs).min(MAX_BLOCK_SIZE)
    }

    fn on_request(&mut self, r: Request) -> Vec<Output> {
        if r.request_id != self.request_id {
            return self.fail_local(
                ErrorCode::Protocol,
                format!("Request names request {} but the channel opened for {}", r.request_id, self.request_id),
            );
        }
        let limit = self.block_limit();
        if r.block_size < MIN_BLOCK_SIZE || r.block_size > limit {
            self.request = Some(r.clone());
            self.state = State::Judging;
            return self.refuse(
                ErrorCode::CapabilityMismatch,
                format!("block size {} is outside the supported {MIN_BLOCK_SIZE}..={limit}", r.block_size),
            );
        }
        if let Err(why) = check_entry_path(&r.file_name) {
            self.request = Some(r);
            self.state = State::Judging;
            return self.refuse(ErrorCode::BadFileName, why);
        }
        if let Err(why) = super::names::check_request_text(&r.transfer_info, r.external_job_id.as_deref()) {
            self.request = Some(r);
            self.state = State::Judging;
            return self.refuse(ErrorCode::Protocol, why);
        }
        self.request = Some(r.clone());
        self.state = State::Judging;
        vec![Output::Judge(r)]
    }

    fn on_valid(&mut self, v: Valid) -> Vec<Output> {
        let req = self.request.as_ref().expect("the requester always holds its request");
        let limit = self.block_limit();
        if v.block_size < MIN_BLOCK_SIZE || v.block_size > limit {
            return self.fail_local(
                ErrorCode::CapabilityMismatch,
                format!("peer chose block size {} outside {MIN_BLOCK_SIZE}..={limit}", v.block_size),
            );
        }
        if v.block_size != req.block_size {
            // Blocks and their digests are cut at the request's block size
            // (a resume offer was hashed with it).
            return self.fail_local(
                ErrorCode::Protocol,
                format!("peer chose block size {}; the request asked for {}", v.block_size, req.block_size),
            );
        }
        if v.restart_offset > v.size || v.restart_offset > req.restart_offset {
            return self.fail_local(
                ErrorCode::Protocol,
                format!("peer chose restart offset {} beyond what was asked or the size", v.restart_offset),
            );
        }
        if req.direction == Direction::Push && v.size != req.size {
            return self.fail_local(
                ErrorCode::Protocol,
                format!("peer accepted {} bytes; {} were announced", v.size, req.size),
            );
        }
        if !self.capabilities.compression.contains(&v.compression) {
            return self.fail_local(
                ErrorCode::CapabilityMismatch,
                format!("peer chose compression {:?}, which this node does not support", v.compression),
            );
        }
        let plan = Plan {
            size: v.size,
            block_size: v.block_size,
            restart_offset: v.restart_offset,
            compression: v.compression,
        };
        if req.direction == Direction::Push && v.restart_offset > 0 {
            let Some(hash) = v.prefix_hash else {
                return self.fail_local(ErrorCode::Protocol, "resume offered without a prefix hash".into());
            };
            self.plan = Some(plan);
            self.state = State::CheckingPrefix;
            return vec![Output::CheckPrefix { offset: v.restart_offset, hash }];
        }
        self.enter_data_phase(plan)
    }

    fn enter_data_phase(&mut self, plan: Plan) -> Vec<Output> {
        self.plan = Some(plan.clone());
        if self.is_sender() == Some(true) {
            self.state = State::Sending;
            vec![Output::StartSending(plan)]
        } else {
            self.state = State::Receiving { next: plan.restart_offset };
            vec![Output::StartReceiving(plan)]
        }
    }

    fn on_data(&mut self, next: u64, d: Data) -> Vec<Output> {
        let plan = self.plan.as_ref().expect("Receiving implies a plan");
        let (size, block_size) = (plan.size, plan.block_size);
        let problem = if d.offset != next {
            Some(format!("block at offset {} but {next} was expected", d.offset))
        } else if d.raw_len == 0 || d.raw_len > block_size {
            Some(format!("block of {} bytes; blocks are 1..={block_size}", d.raw_len))
        } else if !d.compressed && d.payload.len() != d.raw_len as usize {
            Some(format!("uncompressed block carries {} bytes but says {}", d.payload.len(), d.raw_len))
        } else if d.payload.len() > block_size as usize {
            Some(format!("block payload of {} bytes exceeds the block size {block_size}", d.payload.len()))
        } else if next + u64::from(d.raw_len) > size {
            Some(format!("block ending at {} runs past the announced size {size}", next + u64::from(d.raw_len)))
        } else {
            None
        };
        if let Some(why) = problem {
            return self.fail_local(ErrorCode::Protocol, why);
        }
        self.state = State::Receiving { next: next + u64::from(d.raw_len) };
        vec![Output::Write(d)]
    }

    fn fail_local(&mut self, code: ErrorCode, message: String) -> Vec<Output> {
        self.state = State::Failed;
        vec![
            Output::Send(Message::Error(ErrorReport { code, message: code.told_to_partner(&message) })),
            Output::Failed(Failure { code, message, origin: Origin::Local }),
        ]
    }

    fn fail_remote(&mut self, code: ErrorCode, message: String) -> Vec<Output> {
        self.state = State::Failed;
        vec![Output::Failed(Failure { code, message, origin: Origin::Remote })]
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
