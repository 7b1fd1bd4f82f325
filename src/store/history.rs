//! A generator of history: fills a store with requests that ended long
//! ago, as a node that ran for months leaves them, so the rates and the
//! start-up time at scale can be measured (`ferry bench --history N`) and
//! the retention setting tried on a realistic store.

use super::{RequestRecord, Role, Status, Store, StoreError};
use crate::protocol::{Direction, RequestId};

/// How far back the generated requests reach.
pub const SPAN_MS: u64 = 180 * 24 * 60 * 60 * 1000;

/// Job-log lines each generated request gets (about what a plain push leaves).
pub const LOG_LINES: usize = 3;

/// Writes `count` requests with `partner` under `rule` that ended `Done`
/// (one in a hundred `InError`), created evenly over the [`SPAN_MS`]
/// before `now_ms`, each with [`LOG_LINES`] job-log lines, then flushes.
/// They run nothing: the Commander never takes an ended request.
pub fn fill(store: &Store, count: usize, partner: &str, rule: &str, now_ms: u64) -> Result<(), StoreError> {
    let step = SPAN_MS / count.max(1) as u64;
    for i in 0..count {
        let at = now_ms.saturating_sub(SPAN_MS) + step * i as u64;
        let failed = i % 100 == 99;
        let rec = RequestRecord {
            status: if failed { Status::InError } else { Status::Done },
            step: if failed { super::Step::Transfer } else { super::Step::AllDone },
            size: 4096,
            transferred: if failed { 0 } else { 4096 },
            created_at: at,
            updated_at: at + 40,
            started_at: Some(at + 5),
            finished_at: Some(at + 40),
            attempts: 1,
            error: failed.then(|| super::RequestError {
                code: crate::protocol::ErrorCode::FileNotFound,
                message: "generated: the file was gone".into(),
            }),
            ..RequestRecord::new(
                RequestId::generate_at(at),
                Role::Requester,
                partner,
                rule,
                Direction::Push,
                &format!("history-{i:08}.dat"),
            )
        };
        let rec = store.insert(rec, "submitted (generated history)")?;
        store.log(&rec.id, "started (generated history)")?;
        store.log(&rec.id, "done (generated history)")?;
    }
    store.flush_blocking()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_ended_requests_with_their_logs_over_the_span() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let now = 10 * SPAN_MS;
        fill(&store, 200, "b", "default", now).expect("filled");
        let all = store.list(None).expect("list");
        assert_eq!(all.len(), 200);
        assert!(all.iter().all(|r| r.status.is_final() && r.created_at >= now - SPAN_MS && r.created_at < now));
        assert_eq!(all.iter().filter(|r| r.status == Status::InError).count(), 2);
        assert!(all.iter().all(|r| store.job_log(&r.id).expect("log").len() == LOG_LINES));
        assert!(store.queued(10).expect("queued").is_empty(), "nothing to run");
    }
}
