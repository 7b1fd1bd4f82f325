//! The control plane: answers the control asks partners send outside any
//! request's private channel (see [`crate::protocol::control`]).
//!
//! - `Ping` → `Pong` (heartbeats).
//! - `Handover` → this node becomes the request's requester under the
//!   submitting node's id, records it durably, then answers `Accepted`.
//! - `Query` → this node's record of a request (the cluster-wide view).
//! - `RelayDialBack` (we are the relay) → asks the target to dial the asker
//!   (`DialMe`) and passes its answer on.
//! - `DialMe` (we are the target) → dials the named node, answers once the
//!   connection is up or the dial failed.
//! - `Release` → a file set's held files (`delivery = all`) go under their
//!   final names ([`super::set_release::release_held`]), then the
//!   receiving rule's set tasks run once
//!   ([`super::set_release::run_received_set_tasks`]).
//! - `List` → a pulled file set's entries, resolved in the rule's send
//!   folder, one page ([`super::set_listing::answer`]).
//! - `SetEnded` → this node's record of a set the partner streams here
//!   ends in error with it ([`super::set_release::set_ended_by_sender`]).
//!
//! The asker's identity is the connection's verified peer; nothing it says
//! about itself is trusted. Every exchange is bounded in time.

use std::time::Duration;

use ractor::ActorRef;

use super::connections::{self, ConnectionsMsg};
use super::context::RunHandle;
use crate::protocol::control::{Answer, Ask, RequestState};
use crate::protocol::ErrorCode;
use crate::store::RequestRecord;
use crate::transport::control;

/// How long a peer may take to send its ask once the stream is open.
const ASK_LIMIT: Duration = Duration::from_secs(10);

/// One node's record of a request as the cluster-wide view shows it.
pub fn request_state(node: &str, rec: &RequestRecord) -> RequestState {
    RequestState {
        node: node.to_owned(),
        role: format!("{:?}", rec.role),
        partner: rec.partner.clone(),
        direction: rec.direction,
        rule: rec.rule.clone(),
        file: rec.file_name.clone(),
        status: format!("{:?}", rec.status),
        step: format!("{:?}", rec.step),
        size: rec.size,
        transferred: rec.transferred,
        error: rec.error.as_ref().map(|e| format!("{}: {}", e.code, e.code.told_to_partner(&e.message))),
        updated_at: rec.updated_at,
    }
}

fn refused(code: ErrorCode, message: impl Into<String>) -> Answer {
    Answer::Refused { code, message: message.into() }
}

/// Serves one control stream the partner opened (its kind byte read).
pub async fn serve(
    ctx: RunHandle,
    conns: ActorRef<ConnectionsMsg>,
    partner: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let ask = match control::read_ask(&mut recv, ASK_LIMIT).await {
        Ok(a) => a,
        Err(e) => {
            crate::partner_warning!(ctx.budgets.of(&partner), partner = %partner, error = %e, "bad control ask");
            let _ = control::answer(&mut send, &refused(ErrorCode::Protocol, format!("bad control ask: {e}"))).await;
            return;
        }
    };
    let kind = ask.kind();
    let reply = answer(&ctx, &conns, &partner, ask).await;
    if let Answer::Refused { message, .. } = &reply {
        crate::partner_warning!(ctx.budgets.of(&partner), partner = %partner, ask = kind, reason = %message, "control ask refused");
    }
    if let Err(e) = control::answer(&mut send, &reply).await {
        tracing::debug!(partner = %partner, ask = kind, error = %e, "cannot answer a control ask");
    }
}

async fn answer(ctx: &RunHandle, conns: &ActorRef<ConnectionsMsg>, partner: &str, ask: Ask) -> Answer {
    let me = ctx.core.config.node_id.as_str();
    if matches!(ask, Ask::RelayDialBack { .. }) {
        // Each makes this node dial and ask: bounded per partner and minute
        // (a DialMe is counted by Connections, only when it really dials).
        if let Err(over) = ctx.budgets.of(partner).dial_back(tokio::time::Instant::now()) {
            return refused(ErrorCode::Protocol, over.to_string());
        }
    }
    match ask {
        Ask::Ping => Answer::Pong,
        Ask::Query(id) => match ctx.core.store.get(&id) {
            Ok(rec) => Answer::State(rec.map(|r| request_state(me, &r))),
            Err(e) => refused(ErrorCode::Internal, format!("node {me} cannot read its store: {e}")),
        },
        Ask::Handover(h) => match super::intake::accept_handover(&ctx.intake, h, partner).await {
            Ok(rec) => Answer::Accepted(request_state(me, &rec)),
            Err(e) => refused(e.error_code(), format!("node {me} refused the transfer: {e}")),
        },
        Ask::RelayDialBack { target } => {
            if target == partner || target == me {
                return refused(ErrorCode::Protocol, format!("cannot relay a dial-back from {partner} to {target}"));
            }
            let limit = Duration::from_millis(ctx.core.config.cluster.reverse_connect_timeout_ms);
            let relayed = async {
                let link = connections::connect_with(conns, &target, false)
                    .await
                    .map_err(|e| format!("relay {me} cannot reach {target}: {}", e.message))?;
                match control::ask(&link.conn, &Ask::DialMe { node: partner.to_owned() }, limit).await {
                    Ok(a) => Ok(a),
                    Err(e) => Err(format!("relay {me} asked {target} to dial back: {e}")),
                }
            };
            match tokio::time::timeout(limit, relayed).await {
                Ok(Ok(a)) => a,
                Ok(Err(message)) => refused(ErrorCode::Connection, message),
                Err(_) => refused(
                    ErrorCode::Connection,
                    format!("relay {me}: {target} did not dial back within {} ms", limit.as_millis()),
                ),
            }
        }
        Ask::Release { set, files, pattern } => {
            if let Err((code, message)) = super::set_release::check_release_pattern(&pattern) {
                return refused(code, format!("node {me}: {message}"));
            }
            // In use until answered (see `sets_in_use`).
            let _in_use = ctx.sets_in_use.take(&set);
            let (core, owner, id) = (ctx.core.clone(), partner.to_owned(), set.clone());
            let released =
                crate::determinism::blocking(move || super::set_release::release_held(&core, &owner, &id, files)).await;
            let ran = match released {
                Ok(Ok(released)) => {
                    super::set_release::run_received_set_tasks(&ctx.intake, partner, &set, &pattern, files, &released)
                        .await
                        .map(|()| released.delivered)
                }
                Ok(Err(refusal)) => Err(refusal),
                Err(e) => Err((ErrorCode::Internal, e.to_string())),
            };
            match ran {
                Ok(delivered) => Answer::Released { delivered },
                Err((code, message)) => refused(code, format!("node {me}: {}", code.told_to_partner(&message))),
            }
        }
        Ask::SetEnded { set, code, message } => {
            super::set_release::set_ended_by_sender(&ctx.core, &ctx.sets_in_use, partner, &set, code, &message).await
        }
        Ask::List { rule, patterns, start } => {
            super::set_listing::answer(&ctx.core, partner, rule, patterns, start).await
        }
        Ask::DialMe { node } => {
            let relay = partner.to_owned();
            let asked = conns.call(|reply| ConnectionsMsg::DialBack { node: node.clone(), relay, reply }, None).await;
            match asked {
                Ok(ractor::rpc::CallResult::Success(Ok(()))) => Answer::Dialed,
                Ok(ractor::rpc::CallResult::Success(Err(why))) => {
                    refused(ErrorCode::Connection, format!("{me} could not dial back {node}: {why}"))
                }
                _ => refused(ErrorCode::Internal, format!("{me}: connection manager unavailable")),
            }
        }
    }
}
