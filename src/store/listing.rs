//! The listing indexes (tree `listing`, schema 5): pages of requests in
//! creation order, filtered by status, partner, rule, external job id and
//! creation time, found without reading every record.
//!
//! Each record has one entry per index it belongs to:
//! `KIND ++ len(VALUE) (u16 BE) ++ VALUE ++ created_at (u64 BE) ++ id`, with
//! KIND `a` (every record, empty value), `s` (status), `p` (partner), `r`
//! (rule) and `j` (external job id, when it has one); a file set's members
//! have none (see [`keys`]). Within one index the
//! keys sort by creation time, then id, so a page is one range scan from
//! its cursor, and a time range is a key range.
//!
//! A query walks one index: the most selective its filters allow
//! ([`index_for`]: job id, then partner, then rule, then status, else
//! all), and checks the other filters on each record it reads.
//!
//! Crash order: [`Store::insert`](super::Store::insert) and
//! [`Store::update_if`](super::Store::update_if) write a record with the
//! entries it gains and the removal of those it loses in one atomic batch,
//! so after any crash every record is reachable through each index it
//! belongs to, and through no other. Concurrent writers: every writer of a
//! record holds the store's write-order lock for its read and its batch.
//! A store written by sled (schema 6 and older, which wrote entries, record
//! and clean-up one after the other) may hold left-over entries: a reader
//! keeps an entry only if it is one of its record's current [`keys`], so a
//! leftover never shows a record twice or under a filter it no longer
//! matches.

use std::collections::BTreeSet;

use super::record::{RequestRecord, Status};
use crate::protocol::RequestId;

/// Most records one page may hold.
pub const MAX_PAGE: usize = 10_000;

/// A page's filters and position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub partner: Option<String>,
    pub rule: Option<String>,
    pub external_job_id: Option<String>,
    /// Created at or after (Unix ms).
    pub created_from: Option<u64>,
    /// Created before (Unix ms).
    pub created_to: Option<u64>,
    /// Start after this record (the previous page's `next`).
    pub after: Option<Cursor>,
    /// Records on the page (at most [`MAX_PAGE`]).
    pub limit: usize,
}

/// A position in creation order: the last record of a page. Shown as
/// `CREATED-ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: u64,
    pub id: RequestId,
}

impl Cursor {
    pub fn of(rec: &RequestRecord) -> Cursor {
        Cursor { created_at: rec.created_at, id: rec.id.clone() }
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let (created, id) = text.split_once('-')?;
        Some(Cursor { created_at: created.parse().ok()?, id: RequestId::parse(id)? })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.created_at, self.id)
    }
}

/// One page of records, oldest first, and where the next one starts
/// (`None`: this is the last).
#[derive(Clone, Debug)]
pub struct Page {
    pub records: Vec<RequestRecord>,
    pub next: Option<Cursor>,
}

fn status_byte(s: Status) -> u8 {
    match s {
        Status::ToSubmit => 0,
        Status::Running => 1,
        Status::Done => 2,
        Status::Interrupted => 3,
        Status::InError => 4,
        Status::Cancelled => 5,
    }
}

/// How many statuses there are (status bytes are below this).
pub const STATUSES: usize = 6;

/// The prefix of every status-index key: kind `s`, a one-byte value.
const STATUS_INDEX: [u8; 3] = [b's', 0, 1];

/// The status byte of a status index (`index_for` of a status query).
pub fn status_of_index(index: &[u8]) -> Option<u8> {
    match index.strip_prefix(&STATUS_INDEX[..]) {
        Some(&[status]) => Some(status),
        _ => None,
    }
}

/// The status byte and creation time of a status-index entry; `None` for
/// an entry of any other index.
pub fn status_entry(key: &[u8]) -> Option<(u8, u64)> {
    let (&status, rest) = key.strip_prefix(&STATUS_INDEX[..])?.split_first()?;
    let created_at = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((status, created_at))
}

/// The start of index `kind`'s keys for `value`.
fn prefix(kind: u8, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(3 + value.len() + 8 + 32);
    k.push(kind);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&value[..usize::from(len)]);
    k
}

fn key(kind: u8, value: &[u8], created_at: u64, id: &RequestId) -> Vec<u8> {
    let mut k = prefix(kind, value);
    k.extend_from_slice(&created_at.to_be_bytes());
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// Every index entry `rec` has. A file set's member has none: it is
/// listed through its set (`GET /api/v1/transfers/{id}/files`, by index),
/// so a set of 100,000 files is one line of a listing, not 100,001.
pub fn keys(rec: &RequestRecord) -> BTreeSet<Vec<u8>> {
    if rec.member_of.is_some() {
        return BTreeSet::new();
    }
    let (t, id) = (rec.created_at, &rec.id);
    let mut keys = BTreeSet::from([
        key(b'a', b"", t, id),
        key(b's', &[status_byte(rec.status)], t, id),
        key(b'p', rec.partner.as_bytes(), t, id),
        key(b'r', rec.rule.as_bytes(), t, id),
    ]);
    if let Some(job) = &rec.external_job_id {
        keys.insert(key(b'j', job.as_bytes(), t, id));
    }
    keys
}

/// The index a query walks: its most selective filter.
pub fn index_for(q: &ListQuery) -> Vec<u8> {
    if let Some(job) = &q.external_job_id {
        prefix(b'j', job.as_bytes())
    } else if let Some(p) = &q.partner {
        prefix(b'p', p.as_bytes())
    } else if let Some(r) = &q.rule {
        prefix(b'r', r.as_bytes())
    } else if let Some(s) = q.status {
        prefix(b's', &[status_byte(s)])
    } else {
        prefix(b'a', b"")
    }
}

/// Where the walk of `index` starts for `q`.
pub fn start_key(index: &[u8], q: &ListQuery) -> Vec<u8> {
    let mut start = index.to_vec();
    match (&q.after, q.created_from) {
        (Some(c), from) if from.is_none_or(|f| c.created_at >= f) => {
            start.extend_from_slice(&c.created_at.to_be_bytes());
            start.extend_from_slice(c.id.as_str().as_bytes());
            start.push(0); // just past the cursor's own key
        }
        (_, Some(from)) => start.extend_from_slice(&from.to_be_bytes()),
        (_, None) => {}
    }
    start
}

/// The creation time and id an entry of `index` names.
pub fn parse_entry(index: &[u8], key: &[u8]) -> Option<(u64, RequestId)> {
    let rest = key.strip_prefix(index)?;
    let (created, id) = rest.split_at_checked(8)?;
    let created = u64::from_be_bytes(created.try_into().ok()?);
    Some((created, RequestId::parse(std::str::from_utf8(id).ok()?)?))
}

/// Whether `rec` passes every filter of `q` (the cursor aside).
pub fn matches(q: &ListQuery, rec: &RequestRecord) -> bool {
    q.status.is_none_or(|s| rec.status == s)
        && q.partner.as_deref().is_none_or(|p| rec.partner == p)
        && q.rule.as_deref().is_none_or(|r| rec.rule == r)
        && q.external_job_id.as_deref().is_none_or(|j| rec.external_job_id.as_deref() == Some(j))
        && q.created_from.is_none_or(|f| rec.created_at >= f)
        && q.created_to.is_none_or(|t| rec.created_at < t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Direction;
    use crate::store::Role;

    fn rec(created_at: u64) -> RequestRecord {
        RequestRecord {
            created_at,
            ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "payroll", Direction::Push, "f")
        }
    }

    #[test]
    fn a_status_entry_names_its_status_and_creation_time_and_no_other_entry_does() {
        let r = RequestRecord { status: Status::Interrupted, ..rec(77) };
        let statuses: Vec<_> = keys(&r).iter().filter_map(|k| status_entry(k)).collect();
        assert_eq!(statuses, [(status_byte(Status::Interrupted), 77)]);
        let q = ListQuery { status: Some(Status::Interrupted), ..ListQuery::default() };
        assert_eq!(status_of_index(&index_for(&q)), Some(status_byte(Status::Interrupted)));
        assert_eq!(status_of_index(&index_for(&ListQuery::default())), None);
        let by_rule = ListQuery { rule: Some("s".into()), status: Some(Status::Done), ..ListQuery::default() };
        assert_eq!(status_of_index(&index_for(&by_rule)), None, "a query that walks another index");
    }

    #[test]
    fn a_record_has_one_entry_per_index_and_a_job_entry_only_with_a_job_id() {
        let r = rec(5);
        assert_eq!(keys(&r).len(), 4);
        let with_job = RequestRecord { external_job_id: Some("j-1".into()), ..r.clone() };
        assert_eq!(keys(&with_job).len(), 5);
        for k in keys(&with_job) {
            let index = &k[..k.len() - 8 - 32];
            assert_eq!(parse_entry(index, &k), Some((5, r.id.clone())));
        }
    }

    #[test]
    fn entries_sort_by_creation_time_within_an_index() {
        let (early, late) = (rec(1_000), rec(2_000));
        let all = index_for(&ListQuery::default());
        let ka = keys(&early).into_iter().find(|k| k.starts_with(&all)).expect("all");
        let kb = keys(&late).into_iter().find(|k| k.starts_with(&all)).expect("all");
        assert!(ka < kb);
        // A value that is a prefix of another never mixes their entries.
        let short = prefix(b'p', b"b");
        let long = keys(&RequestRecord { partner: "bb".into(), ..early.clone() });
        assert!(long.iter().all(|k| !k.starts_with(&short)));
    }

    #[test]
    fn the_most_selective_filter_picks_the_index() {
        let q = ListQuery { status: Some(Status::Done), rule: Some("payroll".into()), ..Default::default() };
        assert_eq!(index_for(&q), prefix(b'r', b"payroll"));
        let q = ListQuery { partner: Some("b".into()), external_job_id: Some("j".into()), ..q };
        assert_eq!(index_for(&q), prefix(b'j', b"j"));
        assert_eq!(index_for(&ListQuery { status: Some(Status::Done), ..Default::default() }), prefix(b's', &[2]));
    }

    #[test]
    fn the_walk_starts_past_the_cursor_or_at_the_time_range() {
        let r = rec(7_000);
        let index = index_for(&ListQuery::default());
        let own = key(b'a', b"", 7_000, &r.id);
        let q = ListQuery { after: Some(Cursor::of(&r)), ..Default::default() };
        assert!(start_key(&index, &q) > own, "the cursor's record is not on the next page");
        let q = ListQuery { created_from: Some(7_000), ..Default::default() };
        assert!(start_key(&index, &q) <= own);
        let q = ListQuery { created_from: Some(7_001), ..Default::default() };
        assert!(start_key(&index, &q) > own);
        // A cursor before the range starts at the range.
        let q = ListQuery { after: Some(Cursor::of(&r)), created_from: Some(9_000), ..Default::default() };
        assert_eq!(start_key(&index, &q), [index.clone(), 9_000u64.to_be_bytes().to_vec()].concat());
    }

    #[test]
    fn filters_check_every_field_and_cursors_round_trip() {
        let r = RequestRecord { external_job_id: Some("j".into()), ..rec(10) };
        assert!(matches(&ListQuery::default(), &r));
        assert!(matches(&ListQuery { created_from: Some(10), created_to: Some(11), ..Default::default() }, &r));
        assert!(!matches(&ListQuery { created_to: Some(10), ..Default::default() }, &r));
        assert!(!matches(&ListQuery { partner: Some("c".into()), ..Default::default() }, &r));
        assert!(!matches(&ListQuery { external_job_id: Some("k".into()), ..Default::default() }, &r));
        assert!(!matches(&ListQuery { status: Some(Status::Done), ..Default::default() }, &r));
        let c = Cursor::of(&r);
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        assert_eq!(Cursor::parse("x-y"), None);
    }
}
