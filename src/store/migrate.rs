//! Migrations of older sled stores to schema 6, the last one written with
//! sled, which `from_sled.rs` then moves into fjall (schema 7): schema 3
//! (up to 10f75f2), schema 4 (up to 0ed9da1) and schema 5 (up to e06d4cc).
//!
//! Each older record layout is kept here, frozen, with the conversion to
//! the next one. [`migrate`] runs when `from_sled.rs` finds a sled store at
//! an older schema, before moving it: it converts every record in one atomic sled
//! batch, then writes the new version and flushes. A crash before the new
//! version is written leaves the old version in `meta`, and the migration
//! runs again on the next open; converting a record twice gives the same
//! record (bincode decodes a schema-3 prefix of a schema-4 record, and the
//! fields schema 4 added hold their defaults until the new build runs).

use serde::{Deserialize, Serialize};

use super::record::{RequestError, RequestRecord, RestartPoint, Role, Status, Step, TargetMode};
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
            set: None,
            member_of: None,
        }
    }
}

/// Schema 4 and 5's record (ferry up to e06d4cc; schema 5 added indexes,
/// not fields): schema 6 added the file-set fields `set` and `member_of`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RequestRecordV5 {
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
    task_index: u32,
    failed_step: Option<Step>,
    error_task_index: u32,
    original_file_name: Option<String>,
    local_path: Option<String>,
    target_mode: Option<TargetMode>,
    append_base: Option<u64>,
    chained_from: Option<RequestId>,
    chained_to: Vec<RequestId>,
    reschedules: u32,
}

impl From<RequestRecordV5> for RequestRecord {
    fn from(v: RequestRecordV5) -> RequestRecord {
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
            task_index: v.task_index,
            failed_step: v.failed_step,
            error_task_index: v.error_task_index,
            original_file_name: v.original_file_name,
            local_path: v.local_path,
            target_mode: v.target_mode,
            append_base: v.append_base,
            chained_from: v.chained_from,
            chained_to: v.chained_to,
            reschedules: v.reschedules,
            // No file sets before schema 6.
            set: None,
            member_of: None,
        }
    }
}

/// Brings a sled store at schema `found` to schema 6, the last sled
/// schema ([`LAST_SLED_SCHEMA`](super::from_sled::LAST_SLED_SCHEMA)), in
/// place, before it is moved into fjall; returns how many records it went
/// through. Writes nothing for a version it does not know.
///
/// - 3 → 6: every record is converted from [`RequestRecordV3`];
/// - 4 or 5 → 6: every record is converted from [`RequestRecordV5`]
///   (schema 5 changed no field);
/// - each conversion is one atomic batch; then the listing indexes
///   (schema 5) are built from every record, in one atomic batch.
///
/// The version is written, and flushed, only after the last step, so a
/// crash anywhere runs the migration again from the old version: every
/// step gives the same result when repeated (a record already converted
/// decodes as the old layout with trailing fields, which are reset to the
/// defaults they had anyway in a store that never ran the new schema;
/// index entries are keys inserted again).
pub(super) fn migrate(db: &sled::Db, found: u32) -> Result<Option<usize>, StoreError> {
    if !(3..super::from_sled::LAST_SLED_SCHEMA).contains(&found) {
        return Ok(None);
    }
    let requests = db.open_tree("requests")?;
    let mut batch = sled::Batch::default();
    for kv in requests.iter() {
        let (k, v) = kv?;
        let new = if found == 3 {
            RequestRecord::from(decode::<RequestRecordV3>(&k, &v)?)
        } else {
            RequestRecord::from(decode::<RequestRecordV5>(&k, &v)?)
        };
        batch.insert(k, encode(&new)?);
    }
    requests.apply_batch(batch)?;
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
    db.open_tree("meta")?.insert("schema", &super::from_sled::LAST_SLED_SCHEMA.to_be_bytes())?;
    db.flush()?;
    Ok(Some(count))
}
