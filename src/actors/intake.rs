//! Intake: how a request enters this node's queue, from its own API or
//! from a partner that handed it over (submit anywhere), or from a
//! `transfer` task of another request.
//!
//! Everything a submission is checked against (partner, rule, file name,
//! sizes of its free-text fields, block size, the source file of a push)
//! is checked here, before anything is recorded. The record is flushed
//! before [`submit`] returns, so an acknowledged request survives a crash.

use super::context::Intake;
use super::AUDIT;
use crate::cluster::rules::{self, pick_member};
use crate::model::{Submit, SubmitError, MAX_EXTERNAL_JOB_ID, MAX_TRANSFER_INFO};
use crate::protocol::names::check_file_name;
use crate::protocol::{Direction, RequestId, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::store::{RequestRecord, Role};

/// Records a request under `id` (chosen here, or by the node that
/// handed it over) and queues it.
pub async fn submit(
    ctx: &Intake,
    s: Submit,
    id: RequestId,
    submitted_on: Option<String>,
    chained_from: Option<RequestId>,
) -> Result<RequestRecord, SubmitError> {
    let cfg = &ctx.core.config;
    if *ctx.core.shutdown.borrow() {
        return Err(SubmitError::ShuttingDown);
    }
    let (partner, group) = match (cfg.partner(&s.partner), cfg.group(&s.partner)) {
        (Some(p), _) => (p.id.clone(), None),
        (None, Some(g)) => (pick_member(&g.members, |m| ctx.availability.get(m).state, None), Some(g.name.clone())),
        (None, None) => return Err(SubmitError::UnknownPartner(s.partner.clone())),
    };
    let rule = cfg.rule(&s.rule).ok_or_else(|| SubmitError::UnknownRule(s.rule.clone()))?;
    if !cfg.rule_allows(rule, &partner) {
        return Err(SubmitError::RuleNotAllowed { rule: s.rule, partner });
    }
    check_file_name(&s.file).map_err(SubmitError::BadFileName)?;
    // Both travel in the Request, which must fit the partner's
    // handshake frame limit (at least 16 KiB).
    if s.transfer_info.len() > MAX_TRANSFER_INFO {
        return Err(SubmitError::BadRequest(format!(
            "transfer_info is {} bytes; at most {MAX_TRANSFER_INFO} are allowed",
            s.transfer_info.len()
        )));
    }
    if s.external_job_id.as_ref().is_some_and(|j| j.len() > MAX_EXTERNAL_JOB_ID) {
        return Err(SubmitError::BadRequest(format!("external_job_id is longer than {MAX_EXTERNAL_JOB_ID} bytes")));
    }
    let block_size = s.block_size.unwrap_or(cfg.block_size);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(SubmitError::BadBlockSize(format!("{block_size} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")));
    }
    let mut size = 0;
    if s.direction == Direction::Push {
        let source = crate::transfer::retrieve::open_source(&rule.send_dir, &s.file, &s.rule, &cfg.node_id)
            .map_err(|(_, msg)| SubmitError::FileNotFound(msg))?;
        size = source.snapshot.size;
    }
    let rec = RequestRecord {
        block_size,
        compression: s.compression,
        size,
        external_job_id: s.external_job_id,
        transfer_info: s.transfer_info,
        group: group.clone(),
        submitted_on: submitted_on.clone(),
        target_mode: s.target_mode,
        chained_from: chained_from.clone(),
        ..RequestRecord::new(id, Role::Requester, &partner, &s.rule, s.direction, &s.file)
    };
    let mut msg = format!("submitted: {:?} {:?} with {partner} under rule {:?}", s.direction, s.file, s.rule);
    if let Some(g) = &group {
        msg.push_str(&format!(" (member {partner} of group {g} chosen)"));
    }
    if let Some(n) = &submitted_on {
        msg.push_str(&format!("; handed over by node {n}, whose API took it"));
    }
    if let Some(from) = &chained_from {
        msg.push_str(&format!("; sent on by a transfer task of request {from}"));
    }
    let rec = ctx.core.store.insert(rec, &msg)?;
    ctx.core.store.flush().await?;
    tracing::info!(target: AUDIT, event = "submitted", request_id = %rec.id, partner = %rec.partner, direction = ?rec.direction, file = %rec.file_name);
    ctx.actors.wake_commander();
    Ok(rec)
}

/// Takes over a request another node's API accepted (submit anywhere):
/// recorded here, as requester, under the id that node chose. Asking
/// again with the same id answers with the existing record.
pub async fn accept_handover(
    ctx: &Intake,
    h: crate::protocol::control::Handover,
    from: &str,
) -> Result<RequestRecord, SubmitError> {
    if let Some(rec) = ctx.core.store.get(&h.id)? {
        // Idempotent for the partner that handed it over; nobody else
        // learns anything of another's request this way.
        if rec.submitted_on.as_deref().is_some_and(|on| rules::handed_over_by(on) == from) {
            return Ok(rec);
        }
        return Err(SubmitError::BadRequest(format!("request id {} belongs to another request", h.id)));
    }
    // A partner may make this node act only as the rules let that
    // partner act itself: the rule must allow the asker too (the named
    // partner is checked by `submit_as`).
    let cfg = &ctx.core.config;
    let rule = cfg.rule(&h.rule).ok_or_else(|| SubmitError::UnknownRule(h.rule.clone()))?;
    if !cfg.rule_allows(rule, from) {
        return Err(SubmitError::RuleNotAllowed { rule: h.rule, partner: from.to_owned() });
    }
    let limit = cfg.limits.handovers;
    let open = ctx.core.store.open_handovers(from)?;
    if open >= limit {
        return Err(SubmitError::BadRequest(format!(
            "partner {from} already has {open} handed-over requests queued on node {} (limits.handovers = {limit})",
            cfg.node_id
        )));
    }
    let s = Submit {
        partner: h.partner,
        rule: h.rule,
        direction: h.direction,
        file: h.file,
        external_job_id: h.external_job_id,
        transfer_info: h.transfer_info,
        block_size: h.block_size,
        compression: h.compression,
        source: None,
        target: None,
        target_mode: h.target_mode,
    };
    let submitted_on = rules::handed_over_via(&h.submitted_on, from);
    let id = h.id.clone();
    let rec = submit(ctx, s, h.id, Some(submitted_on), None).await?;
    ctx.core.store.note_handover(from, &id)?;
    Ok(rec)
}
