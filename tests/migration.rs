//! A store written by the previous release (schema 3, committed under
//! `tests/fixtures/store-schema3`) opens in this one: migrated, every
//! record and job log readable, and its requests restartable.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ferry::protocol::{ErrorCode, RequestId};
use ferry::store::{Status, Step, Store};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else if e.file_name() != "README.md" {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

fn fixture(node: &str, to: &Path) {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-schema3").join(node), to);
}

fn id(s: &str) -> RequestId {
    RequestId::parse(s).expect("fixture id")
}

#[test]
fn a_schema_3_store_is_migrated_and_every_record_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture("a", dir.path());
    let store = Store::open(dir.path()).expect("a schema-3 store opens");
    let all = store.list(None).expect("every record decodes");
    assert_eq!(all.len(), 4, "{all:?}");
    let push = store.get(&id("785810bcf545873591752617b9ac8bec")).expect("read").expect("push");
    assert_eq!(
        (push.status, push.step, push.size, push.file_name.as_str()),
        (Status::Done, Step::AllDone, 100_000, "push.bin")
    );
    assert!(push.hash.is_some());
    assert_eq!(
        (push.task_index, push.failed_step, push.target_mode),
        (0, None, None),
        "new fields hold their defaults"
    );
    let missing = store.get(&id("5315365d0e3d4ed905afd85602697e08")).expect("read").expect("missing");
    assert_eq!(missing.status, Status::InError);
    assert_eq!(missing.error.as_ref().map(|e| e.code), Some(ErrorCode::FileNotFound));
    let stopped = store.get(&id("a71720583e03889753a7d94e00967618")).expect("read").expect("stopped");
    assert_eq!(
        (stopped.status, stopped.error.as_ref().map(|e| e.code)),
        (Status::Interrupted, Some(ErrorCode::Stopped))
    );
    let log = store.job_log(&push.id).expect("job log");
    assert!(log.first().is_some_and(|l| l.message.starts_with("submitted")), "{log:?}");
    drop(store);
    // Opened again: now at the current schema, nothing converted twice.
    let meta = {
        let db = sled::open(dir.path()).expect("raw open");
        let v = db.open_tree("meta").expect("meta").get("schema").expect("get").expect("version");
        u32::from_be_bytes(v.as_ref().try_into().expect("4 bytes"))
    };
    assert_eq!(meta, ferry::store::SCHEMA_VERSION, "the version was written");
    let again = Store::open(dir.path()).expect("reopens");
    assert_eq!(again.list(None).expect("list").len(), 4);
    let b = tempfile::tempdir().expect("tempdir");
    fixture("b", b.path());
    let b = Store::open(b.path()).expect("b's store opens");
    assert_eq!(b.list(Some(Status::Done)).expect("list").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_request_restarts_and_completes() {
    let layout = Layout::new(&["a", "b"]);
    let store_dir = layout.config("a").data_dir.join("store");
    fixture("a", &store_dir);
    write_random(&layout.out_dir("a").join("later.bin"), 5_000);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let stopped = id("a71720583e03889753a7d94e00967618");
    a.handle().restart(&stopped).await.expect("restartable");
    let done = wait_final(&a.handle(), &stopped, Duration::from_secs(60)).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(std::fs::read(layout.in_dir("b").join("later.bin")).expect("delivered").len(), 5_000);
    a.shutdown().await;
    b.shutdown().await;
}
