//! Pulls of a file set: the requested node, which sends the files,
//! resolves the pattern and answers the list (`Ask::List`), page by page;
//! the requester records it as it records a pushed set's list, before any
//! file moves.
//!
//! The list can be longer than a control frame (64 KiB), so it travels in
//! pages of at most [`PAGE_BYTES`] of entries. Every page carries the whole
//! list's length and digest (`fileset::listing_digest`): the requester
//! keeps the pages only if all came from one resolution and the entries it
//! assembled hash to that digest; otherwise (the folder changed between
//! pages and was resolved again) it starts over, at most [`ATTEMPTS`]
//! times. The answering node keeps each list it made until it served the
//! last page (a few per partner; one older than [`LISTING_KEPT`] is
//! dropped at the next ask), so the pages after the first are cut from it
//! instead of resolving the folder again; a first page always resolves
//! anew.
//!
//! What a partner may learn: the entries the pattern reaches in the send
//! folder of a rule that allows it, which it could pull by name anyway.
//! The requester trusts nothing in an answer: every path is checked by the
//! path rule, the list must be in strictly increasing path order (so no
//! file is named twice), a folder entry has size 0, the length is bounded
//! by `fileset::MAX_ENTRIES` and the paths by [`MAX_LIST_BYTES`], and the
//! whole listing by [`LIST_LIMIT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connections;
use super::context::{Core, Intake};
use crate::fileset::{self, Entry, EntryKind};
use crate::model::SubmitError;
use crate::protocol::control::{Answer, Ask, ListedEntry};
use crate::protocol::names::{check_entry_path, is_folder_entry};
use crate::protocol::{Digest, ErrorCode};

/// Most bytes of entries (paths and a fixed allowance per entry) one page
/// carries: well below the control frame's 64 KiB, and a page always has
/// room for one entry of the longest path (4,096 bytes).
pub const PAGE_BYTES: usize = 48 * 1024;

/// What an entry costs of [`PAGE_BYTES`] besides its path (its size and
/// time, at most 8 and 16 bytes, and the lengths).
const ENTRY_ALLOWANCE: usize = 32;

/// How long an answering node keeps a partner's last list for its next
/// pages.
pub const LISTING_KEPT: Duration = Duration::from_secs(60);

/// Times a requester starts over when the pages came from different
/// resolutions.
pub const ATTEMPTS: usize = 3;

/// How long the requester waits for one page (the first resolves the
/// folder, which for a large tree takes a while).
pub const PAGE_LIMIT: Duration = Duration::from_secs(120);

/// How long the requester waits for the whole list.
pub const LIST_LIMIT: Duration = Duration::from_secs(600);

/// Most bytes of paths a requester accepts in one list (a million entries
/// of 128 bytes): a partner cannot make a pull hold more in memory.
pub const MAX_LIST_BYTES: usize = 128 << 20;

/// Most bytes of patterns a pull may name: they travel in every `List`
/// ask, which must fit a control frame (64 KiB) with the rest.
pub const MAX_PATTERN_BYTES: usize = 32 * 1024;

/// Lists an answering node keeps per partner (two pulls of one partner
/// listed at once do not evict each other's).
const KEPT_PER_PARTNER: usize = 4;

/// A partner's last list on the answering node.
struct Kept {
    rule: String,
    patterns: Vec<String>,
    entries: Arc<Vec<Entry>>,
    digest: Digest,
    made_ms: u64,
}

/// The kept lists, by (this node, partner), at most [`KEPT_PER_PARTNER`]
/// each; any older than [`LISTING_KEPT`] are dropped at every ask.
static KEPT: std::sync::LazyLock<Mutex<KeptLists>> = std::sync::LazyLock::new(Mutex::default);

/// (this node, partner) → its kept lists, oldest first.
type KeptLists = HashMap<(String, String), Vec<Kept>>;

type Refusal = (ErrorCode, String);

/// The answering side of `List { rule, patterns, start }` from `partner`.
pub async fn answer(core: &Core, partner: &str, rule: String, patterns: Vec<String>, start: u32) -> Answer {
    match page(core, partner, rule, patterns, start).await {
        Ok(a) => a,
        Err((code, message)) => Answer::Refused { code, message: format!("node {}: {message}", core.config.node_id) },
    }
}

async fn page(core: &Core, partner: &str, rule: String, patterns: Vec<String>, start: u32) -> Result<Answer, Refusal> {
    let cfg = &core.config;
    let me = cfg.node_id.clone();
    let r = cfg.rule(&rule).ok_or_else(|| (ErrorCode::UnknownRule, format!("rule {rule:?} does not exist")))?;
    if !cfg.rule_allows(r, partner) {
        return Err((ErrorCode::RuleNotAllowed, format!("partner {partner} may not use rule {rule:?}")));
    }
    if patterns.is_empty() {
        return Err((ErrorCode::BadFileName, "a file set names at least one pattern".into()));
    }
    let key = (me, partner.to_owned());
    let now = crate::determinism::now_ms();
    let fresh = |k: &Kept| now.saturating_sub(k.made_ms) < LISTING_KEPT.as_millis() as u64;
    let kept = {
        let mut all = KEPT.lock().expect("the map is only held to read or change its lists");
        all.retain(|_, lists| {
            lists.retain(fresh);
            !lists.is_empty()
        });
        all.get(&key)
            .and_then(|lists| lists.iter().find(|k| k.rule == rule && k.patterns == patterns))
            .filter(|_| start > 0)
            .map(|k| (k.entries.clone(), k.digest))
    };
    let (entries, digest) = match kept {
        Some(k) => k,
        None => {
            let (root, asked) = (r.send_dir.clone(), patterns.clone());
            let resolved = crate::determinism::blocking(move || fileset::resolve_set(&root, &asked))
                .await
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            let entries = Arc::new(resolved.map_err(|e| refusal_of(&rule, e))?);
            let digest = fileset::listing_digest(&entries);
            let made =
                Kept { rule: rule.clone(), patterns: patterns.clone(), entries: entries.clone(), digest, made_ms: now };
            let mut all = KEPT.lock().expect("the map is only held to read or change its lists");
            let lists = all.entry(key.clone()).or_default();
            lists.retain(|k| k.rule != rule || k.patterns != patterns);
            if lists.len() == KEPT_PER_PARTNER {
                lists.remove(0);
            }
            lists.push(made);
            (entries, digest)
        }
    };
    let total = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let page = cut_page(&entries, start);
    if start as usize + page.len() >= entries.len() {
        // The last page: the list is not kept beyond it (asked again, it is
        // resolved again, and the digest tells whether it is the same).
        let mut all = KEPT.lock().expect("the map is only held to read or change its lists");
        if let Some(lists) = all.get_mut(&key) {
            lists.retain(|k| k.rule != rule || k.patterns != patterns);
        }
    }
    Ok(Answer::Listed { entries: page, total, digest })
}

/// The page of `entries` from `start`: as many as fit [`PAGE_BYTES`], and
/// at least one.
fn cut_page(entries: &[Entry], start: u32) -> Vec<ListedEntry> {
    let (mut out, mut bytes) = (Vec::new(), 0);
    for e in entries.iter().skip(start as usize) {
        let cost = e.path.len() + ENTRY_ALLOWANCE;
        if !out.is_empty() && bytes + cost > PAGE_BYTES {
            break;
        }
        bytes += cost;
        out.push(ListedEntry { path: e.path.clone(), size: e.size, modified_ns: e.modified_ns });
    }
    out
}

fn refusal_of(rule: &str, e: fileset::ResolveError) -> Refusal {
    let code = match e {
        fileset::ResolveError::BadPattern { .. } | fileset::ResolveError::BadName { .. } => ErrorCode::BadFileName,
        fileset::ResolveError::Link { .. } | fileset::ResolveError::Io { .. } => ErrorCode::FileNotFound,
        _ => ErrorCode::Protocol,
    };
    (code, format!("cannot resolve the file set in the send folder of rule {rule:?}: {e}"))
}

/// The requester's side: the list `partner` resolved for `patterns` under
/// `rule`, all pages, checked (see the module doc).
pub async fn fetch(intake: &Intake, partner: &str, rule: &str, patterns: &[String]) -> Result<Vec<Entry>, SubmitError> {
    let a = intake.actors.get().ok_or(SubmitError::ShuttingDown)?;
    let link = connections::connect(&a.connections, partner)
        .await
        .map_err(|e| SubmitError::Unreachable(format!("cannot reach {partner} to list the file set: {}", e.message)))?;
    let listing = async {
        let mut changed = 0;
        loop {
            match fetch_once(&link.conn, partner, rule, patterns).await? {
                Some(entries) => return Ok(entries),
                None if changed + 1 < ATTEMPTS => changed += 1,
                None => {
                    return Err(SubmitError::BadRequest(format!(
                        "the send folder on {partner} changed while it was listed, {ATTEMPTS} times; try again"
                    )))
                }
            }
        }
    };
    tokio::time::timeout(LIST_LIMIT, listing).await.map_err(|_| {
        SubmitError::Unreachable(format!("{partner} did not list the file set within {} s", LIST_LIMIT.as_secs()))
    })?
}

/// One pass over the pages; `None` if they came from different
/// resolutions.
async fn fetch_once(
    conn: &quinn::Connection,
    partner: &str,
    rule: &str,
    patterns: &[String],
) -> Result<Option<Vec<Entry>>, SubmitError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut first: Option<(u32, Digest)> = None;
    let mut bytes = 0usize;
    loop {
        let start = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let ask = Ask::List { rule: rule.to_owned(), patterns: patterns.to_vec(), start };
        let answer = crate::transport::control::ask(conn, &ask, PAGE_LIMIT)
            .await
            .map_err(|e| SubmitError::Unreachable(format!("{partner} did not list the file set: {e}")))?;
        let (page, total, digest) = match answer {
            Answer::Listed { entries, total, digest } => (entries, total, digest),
            Answer::Refused { code, message } => return Err(refused(partner, code, message)),
            other => return Err(bad_list(partner, format!("answered {other:?} to a list"))),
        };
        if total as usize > fileset::MAX_ENTRIES {
            return Err(bad_list(
                partner,
                format!("listed {total} entries; a set holds at most {}", fileset::MAX_ENTRIES),
            ));
        }
        match first {
            None => first = Some((total, digest)),
            Some(f) if f != (total, digest) => return Ok(None),
            Some(_) => {}
        }
        if page.is_empty() && entries.len() < total as usize {
            return Err(bad_list(partner, format!("sent an empty page at entry {start} of {total}")));
        }
        for e in page {
            check_listed(partner, entries.last(), &e)?;
            bytes += e.path.len();
            if bytes > MAX_LIST_BYTES {
                return Err(bad_list(partner, format!("listed more than {MAX_LIST_BYTES} bytes of paths")));
            }
            let kind = if is_folder_entry(&e.path) { EntryKind::Folder } else { EntryKind::File };
            entries.push(Entry { path: e.path, kind, size: e.size, modified_ns: e.modified_ns });
        }
        if entries.len() > total as usize {
            return Err(bad_list(partner, format!("sent more than the {total} entries it announced")));
        }
        if entries.len() == total as usize {
            return Ok((fileset::listing_digest(&entries) == digest).then_some(entries));
        }
    }
}

/// A listed entry must be a path the path rule allows, after the one
/// before it (strictly: no entry twice), and a folder carries no bytes.
fn check_listed(partner: &str, before: Option<&Entry>, e: &ListedEntry) -> Result<(), SubmitError> {
    check_entry_path(&e.path).map_err(|why| bad_list(partner, format!("listed {:?}: {why}", e.path)))?;
    if before.is_some_and(|b| b.path.as_str() >= e.path.as_str()) {
        return Err(bad_list(partner, format!("listed {:?} out of order or twice", e.path)));
    }
    if is_folder_entry(&e.path) && e.size != 0 {
        return Err(bad_list(partner, format!("listed the folder {:?} with {} bytes", e.path, e.size)));
    }
    Ok(())
}

fn bad_list(partner: &str, why: String) -> SubmitError {
    SubmitError::Refused { node: partner.to_owned(), code: ErrorCode::Protocol, message: why }
}

fn refused(partner: &str, code: ErrorCode, message: String) -> SubmitError {
    match code {
        ErrorCode::BadFileName => SubmitError::BadFileName(message),
        ErrorCode::FileNotFound => SubmitError::FileNotFound(message),
        ErrorCode::Connection | ErrorCode::Shutdown => SubmitError::Unreachable(message),
        _ => SubmitError::Refused { node: partner.to_owned(), code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(path: &str, size: u64) -> ListedEntry {
        ListedEntry { path: path.into(), size, modified_ns: 1 }
    }

    fn entry(path: &str) -> Entry {
        Entry { path: path.into(), kind: EntryKind::File, size: 1, modified_ns: 1 }
    }

    #[test]
    fn a_listed_entry_must_keep_the_path_rule_the_order_and_a_folder_empty() {
        assert!(check_listed("b", None, &listed("a/b.csv", 3)).is_ok());
        assert!(check_listed("b", Some(&entry("a/a.csv")), &listed("a/b.csv", 3)).is_ok());
        assert!(check_listed("b", None, &listed("empty/", 0)).is_ok());
        for (before, bad, why) in [
            (None, listed("../etc/passwd", 1), "\"..\""),
            (None, listed("/etc/passwd", 1), "listed"),
            (None, listed(".ferry-work/x", 1), "listed"),
            (None, listed("a\0b", 1), "listed"),
            (Some(entry("b")), listed("a", 1), "out of order"),
            (Some(entry("a")), listed("a", 1), "twice"),
            (None, listed("empty/", 5), "with 5 bytes"),
        ] {
            let e = check_listed("b", before.as_ref(), &bad).expect_err(&bad.path);
            let text = e.to_string();
            assert!(text.contains(why) && text.contains("node b"), "{bad:?}: {text}");
            assert!(matches!(e, SubmitError::Refused { code: ErrorCode::Protocol, .. }));
        }
    }

    #[test]
    fn pages_cover_the_list_once_in_order_and_fit_a_control_frame() {
        use crate::protocol::codec::encode_control;
        // Paths of the most bytes the path rule allows (4,096), then short ones.
        let longest =
            |i: usize| format!("{}/{i:0>250}", (0..15).map(|_| "d".repeat(255)).collect::<Vec<_>>().join("/"));
        let mut entries: Vec<Entry> = (0..40)
            .map(|i| Entry { path: longest(i), kind: EntryKind::File, size: u64::MAX, modified_ns: u128::MAX })
            .collect();
        entries.extend((0..3000).map(|i| Entry { path: format!("z/{i:06}.csv"), ..entry("") }));
        assert!(entries.iter().all(|e| check_entry_path(&e.path).is_ok() && e.path.len() <= 4096));
        let mut seen = Vec::new();
        while seen.len() < entries.len() {
            let page = cut_page(&entries, seen.len() as u32);
            assert!(!page.is_empty(), "every page moves on");
            let answer = Answer::Listed { entries: page.clone(), total: u32::MAX, digest: Digest([7; 32]) };
            assert!(encode_control(&answer).is_ok(), "a page of {} entries fits a control frame", page.len());
            seen.extend(page.into_iter().map(|e| e.path));
        }
        assert_eq!(seen, entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>());
        assert!(cut_page(&entries, entries.len() as u32).is_empty());
    }
}
