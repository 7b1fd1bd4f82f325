//! Migrations of older stores to [`SCHEMA_VERSION`](super::SCHEMA_VERSION):
//! schema 3 (up to 10f75f2) and schema 4 (up to 0ed9da1).
//!
//! Each older record layout is kept here, frozen, with the conversion to
//! the next one. [`migrate`] runs when [`Store::open`](super::Store::open)
//! finds an older schema: it converts every record in one atomic sled
//! batch, then writes the new version and flushes. A crash before the new
//! version is written leaves the old version in `meta`, and the migration
//! runs again on the next open; converting a record twice gives the same
//! record (bincode decodes a schema-3 prefix of a schema-4 record, and the
//! fields schema 4 added hold their defaults until the new build runs).

use serde::{Deserialize, Serialize};

use super::record::{RequestError, RequestRecord, RestartPoint, Role, Status, Step};
use super::{decode, encode, StoreError};
use crate::protocol::{Compression, Digest, Direction, RequestId};

/// Schema 3's record (ferry up to 10f75f2): schema 4 added the task cursor,
/// the target mode, the chain links and the reschedule count.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RequestRecordV3 {
    id: RequestId,
    role: Role,
    partner: String,
    rule: String,
    direction: Direction,
    file_name: String,
    block_size: u32,
    compression: Compression,
    size: u64,
    transferred: u64,
    restart_offset: u64,
    status: Status,
    step: Step,
    hash: Option<Digest>,
    external_job_id: Option<String>,
    transfer_info: String,
    created_at: u64,
    updated_at: u64,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    error: Option<RequestError>,
    queue_seq: Option<u64>,
    restart_point: Option<RestartPoint>,
    delivered: bool,
    attempts: u32,
    retry_at: Option<u64>,
    group: Option<String>,
    submitted_on: Option<String>,
}

impl From<RequestRecordV3> for RequestRecord {
    fn from(v: RequestRecordV3) -> RequestRecord {
        RequestRecord {
            id: v.id,
            role: v.role,
            partner: v.partner,
            rule: v.rule,
            direction: v.direction,
            file_name: v.file_name,
            block_size: v.block_size,
            compression: v.compression,
            size: v.size,
            transferred: v.transferred,
            restart_offset: v.restart_offset,
            status: v.status,
            step: v.step,
            hash: v.hash,
            external_job_id: v.external_job_id,
            transfer_info: v.transfer_info,
            created_at: v.created_at,
            updated_at: v.updated_at,
            started_at: v.started_at,
            finished_at: v.finished_at,
            error: v.error,
            queue_seq: v.queue_seq,
            restart_point: v.restart_point,
            delivered: v.delivered,
            attempts: v.attempts,
            retry_at: v.retry_at,
            group: v.group,
            submitted_on: v.submitted_on,
            // Schema 3 ran no tasks: a request that reached a step had
            // nothing to run in it.
            task_index: 0,
            failed_step: None,
            error_task_index: 0,
            original_file_name: None,
            local_path: None,
            target_mode: None,
            append_base: None,
            chained_from: None,
            chained_to: Vec::new(),
            reschedules: 0,
        }
    }
}

/// Brings a store at schema `found` to the current schema; returns how
/// many records it went through. Writes nothing for a version it does not
/// know.
///
/// - 3 → 4: every record is converted from [`RequestRecordV3`], in one
///   atomic batch.
/// - 4 → 5: the listing indexes are built from every record, in one atomic
///   batch (the records themselves are unchanged).
///
/// The version is written, and flushed, only after the last step, so a
/// crash anywhere runs the migration again from the old version: both steps
/// give the same result when repeated (a schema-4 record decodes as a
/// schema-3 one with trailing fields, which are reset to the defaults they
/// had anyway in a store that never ran schema 4; index entries are keys
/// inserted again).
pub(super) fn migrate(db: &sled::Db, found: u32) -> Result<Option<usize>, StoreError> {
    if !(3..super::SCHEMA_VERSION).contains(&found) {
        return Ok(None);
    }
    let requests = db.open_tree("requests")?;
    if found == 3 {
        let mut batch = sled::Batch::default();
        for kv in requests.iter() {
            let (k, v) = kv?;
            let old: RequestRecordV3 = decode(&k, &v)?;
            batch.insert(k, encode(&RequestRecord::from(old))?);
        }
        requests.apply_batch(batch)?;
    }
    let listing = db.open_tree("listing")?;
    let mut batch = sled::Batch::default();
    let mut count = 0;
    for kv in requests.iter() {
        let (k, v) = kv?;
        let rec: RequestRecord = decode(&k, &v)?;
        for key in super::listing::keys(&rec) {
            batch.insert(key, &[]);
        }
        count += 1;
    }
    listing.apply_batch(batch)?;
    db.flush()?;
    db.open_tree("meta")?.insert("schema", &super::SCHEMA_VERSION.to_be_bytes())?;
    db.flush()?;
    Ok(Some(count))
}
