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
use crate::fileset;
use crate::fileset::progress::{Delivery, OnEmpty, Policy};
use crate::model::{Submit, SubmitError};
use crate::protocol::names::{check_file_name, check_relative_path};
use crate::protocol::{Direction, RequestId, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::store::{RequestRecord, Role, SetInfo, SetMember, Status, Step};

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
    let set = set_patterns(&s, &rule.send_dir)?;
    if set.is_none() {
        check_file_name(&s.file).map_err(SubmitError::BadFileName)?;
    }
    // Both travel in the Request, which must fit the partner's
    // handshake frame limit (at least 16 KiB).
    crate::protocol::names::check_request_text(&s.transfer_info, s.external_job_id.as_deref())
        .map_err(SubmitError::BadRequest)?;
    let block_size = s.block_size.unwrap_or(cfg.block_size);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(SubmitError::BadBlockSize(format!("{block_size} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")));
    }
    if set.is_some() && submitted_on.is_some() {
        return Err(SubmitError::BadRequest(
            "a file set is submitted to the node that sends it, not handed over".into(),
        ));
    }
    if let Some(patterns) = set {
        let policy = Policy {
            on_empty: s.on_empty.unwrap_or(rule.on_empty),
            on_failure: s.on_failure.unwrap_or(rule.on_failure),
            delivery: s.delivery.unwrap_or(rule.delivery),
        };
        if s.direction == Direction::Pull && policy.delivery == Delivery::All && !rule.receiver.post_tasks.is_empty() {
            return Err(SubmitError::BadRequest(format!(
                "rule {:?} runs post-tasks on each received file, which a set pulled with delivery = all cannot \
                 use (its files are delivered together later); pull it with delivery = each",
                s.rule
            )));
        }
        let spec = SetSpec { patterns, policy, partner, group, block_size, submitted_on, chained_from };
        return submit_set(ctx, s, spec, id).await;
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

/// The patterns of a file set, if `s` asks for one: `pattern`, `files`,
/// or a push whose `file` names a folder (its tree). Exactly one of
/// `file`, `pattern` and `files` must be given.
fn set_patterns(s: &Submit, send_dir: &std::path::Path) -> Result<Option<Vec<String>>, SubmitError> {
    let given = [!s.file.is_empty(), s.pattern.is_some(), s.files.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        return Err(SubmitError::BadRequest("give exactly one of file, pattern and files".into()));
    }
    let patterns = match (&s.pattern, &s.files) {
        (Some(p), _) => vec![p.clone()],
        (_, Some(list)) => {
            if list.is_empty() {
                return Err(SubmitError::BadRequest("files is an empty list".into()));
            }
            for path in list {
                check_relative_path(path).map_err(SubmitError::BadFileName)?;
            }
            list.clone()
        }
        // A folder named as the file: its tree (a link is refused by resolve).
        _ if s.direction == Direction::Push
            && check_file_name(&s.file).is_ok()
            && std::fs::symlink_metadata(send_dir.join(&s.file)).is_ok_and(|m| m.is_dir()) =>
        {
            vec![s.file.clone()]
        }
        _ => return Ok(None),
    };
    Ok(Some(patterns))
}

/// What a file set's submission decided before it resolves its patterns.
struct SetSpec {
    patterns: Vec<String>,
    policy: Policy,
    partner: String,
    group: Option<String>,
    block_size: u32,
    submitted_on: Option<String>,
    chained_from: Option<RequestId>,
}

/// Resolves a file set's patterns in the rule's send folder and records
/// the set and one member per file (members first, the set's record as
/// the commit point; see `Store::insert_set`), flushed before
/// it returns: the resolved list (path, size, modification time) is
/// durable before the first byte is sent. A link, a bad name or an
/// unreadable folder refuses the whole set; an empty match is refused
/// (`no_files`) or recorded `Done`, as the policy says.
async fn submit_set(ctx: &Intake, s: Submit, spec: SetSpec, id: RequestId) -> Result<RequestRecord, SubmitError> {
    let cfg = &ctx.core.config;
    let rule = cfg.rule(&s.rule).ok_or_else(|| SubmitError::UnknownRule(s.rule.clone()))?;
    // The sender resolves: this node for a push, the partner for a pull.
    let (entries, sender) = match s.direction {
        Direction::Push => (resolve_here(&rule.send_dir, &spec.patterns).await?, cfg.node_id.as_str()),
        Direction::Pull => {
            // The patterns travel in every `List` ask: they must fit one.
            let bytes: usize = spec.patterns.iter().map(|p| p.len() + 8).sum();
            if bytes > super::set_listing::MAX_PATTERN_BYTES {
                return Err(SubmitError::BadRequest(format!(
                    "a pulled set's patterns take {bytes} bytes; at most {} fit the partner's list ask \
                     (name a pattern or a folder instead of every path)",
                    super::set_listing::MAX_PATTERN_BYTES
                )));
            }
            for p in &spec.patterns {
                fileset::check_pattern(p).map_err(|why| SubmitError::BadFileName(format!("pattern {p:?}: {why}")))?;
            }
            let listed = super::set_listing::fetch(ctx, &spec.partner, &s.rule, &spec.patterns).await?;
            (listed, spec.partner.as_str())
        }
    };
    let shown = spec.patterns.join("\n");
    if entries.is_empty() && spec.policy.on_empty == OnEmpty::Fail {
        return Err(SubmitError::NoFiles(format!(
            "{shown:?} matches no file in the send folder of rule {:?} on node {sender} (on_empty = fail)",
            s.rule
        )));
    }
    let files = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let total: u64 = entries.iter().fold(0u64, |t, e| t.saturating_add(e.size));
    let now = crate::store::now_ms();
    let set = RequestRecord {
        block_size: spec.block_size,
        compression: s.compression,
        size: total,
        status: if files == 0 { Status::Done } else { Status::Running },
        step: if files == 0 { Step::AllDone } else { Step::Transfer },
        started_at: Some(now),
        finished_at: (files == 0).then_some(now),
        external_job_id: s.external_job_id.clone(),
        transfer_info: s.transfer_info.clone(),
        group: spec.group.clone(),
        submitted_on: spec.submitted_on.clone(),
        target_mode: s.target_mode,
        chained_from: spec.chained_from.clone(),
        set: Some(SetInfo { pattern: shown.clone(), policy: spec.policy, files, done: 0, failed: 0, skipped: 0 }),
        ..RequestRecord::new(id.clone(), Role::Requester, &spec.partner, &s.rule, s.direction, &shown)
    };
    let msg = format!(
        "submitted: file set {shown:?} with {} under rule {:?}: {files} files, {total} bytes, resolved and recorded",
        spec.partner, s.rule
    );
    // Members are made one at a time as they are written, off the async
    // threads (a set of 100,000 takes a while).
    let store = ctx.core.store.clone();
    let (partner, rule, direction) = (spec.partner.clone(), s.rule.clone(), s.direction);
    let (block_size, compression, target_mode) = (spec.block_size, s.compression, s.target_mode);
    let (job, info) = (s.external_job_id.clone(), s.transfer_info.clone());
    let rec = crate::determinism::blocking(move || {
        let members = entries.into_iter().enumerate().map(|(i, e)| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            RequestRecord {
                block_size,
                compression,
                size: e.size,
                external_job_id: job.clone(),
                transfer_info: info.clone(),
                target_mode,
                member_of: Some(SetMember { set: id.clone(), index, modified_ns: e.modified_ns }),
                ..RequestRecord::new(
                    crate::store::member_id(&id, index),
                    Role::Requester,
                    &partner,
                    &rule,
                    direction,
                    &e.path,
                )
            }
        });
        store.insert_set(set, members, &msg)
    })
    .await
    .map_err(|e| SubmitError::BadRequest(format!("cannot record the file set: {e}")))??;
    ctx.core.store.flush().await?;
    tracing::info!(target: AUDIT, event = "submitted", request_id = %rec.id, partner = %rec.partner, direction = ?rec.direction, pattern = %shown, files);
    ctx.actors.wake_commander();
    Ok(rec)
}

/// Resolves a pushed set's patterns in this node's send folder.
async fn resolve_here(root: &std::path::Path, patterns: &[String]) -> Result<Vec<fileset::Entry>, SubmitError> {
    let (root, patterns) = (root.to_path_buf(), patterns.to_vec());
    let resolved = crate::determinism::blocking(move || fileset::resolve_set(&root, &patterns))
        .await
        .map_err(|e| SubmitError::BadRequest(format!("cannot resolve the file set: {e}")))?;
    resolved.map_err(|e| match e {
        fileset::ResolveError::BadPattern { .. } | fileset::ResolveError::BadName { .. } => {
            SubmitError::BadFileName(e.to_string())
        }
        fileset::ResolveError::Io { .. } => SubmitError::FileNotFound(e.to_string()),
        other => SubmitError::BadRequest(other.to_string()),
    })
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
        external_job_id: h.external_job_id,
        transfer_info: h.transfer_info,
        block_size: h.block_size,
        compression: h.compression,
        target_mode: h.target_mode,
        ..Submit::file(&h.partner, &h.rule, h.direction, &h.file)
    };
    let submitted_on = rules::handed_over_via(&h.submitted_on, from);
    let id = h.id.clone();
    let rec = submit(ctx, s, h.id, Some(submitted_on), None).await?;
    ctx.core.store.note_handover(from, &id)?;
    Ok(rec)
}
