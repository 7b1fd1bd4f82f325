//! Stores written by earlier releases (schemas 3, 4 and 5, committed
//! under `tests/fixtures/store-schema3`, `store-schema4` and
//! `store-schema5`) open in this one: migrated, every record and job log
//! readable, every record found through the listing indexes schema 5
//! added, the file-set fields schema 6 added empty, and their requests
//! restartable.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ferry::protocol::{ErrorCode, RequestId};
use ferry::store::{ListQuery, Status, Step, Store};

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
    fixture_of(3, node, to);
}

fn fixture_of(schema: u32, node: &str, to: &Path) {
    let dir = format!("tests/fixtures/store-schema{schema}");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(node), to);
}

/// Where a test's store goes: a folder of its own in the test's temporary
/// folder, so that the sled folder kept beside it stays inside too.
fn store_in(tmp: &Path) -> std::path::PathBuf {
    tmp.join("store")
}

/// Where the move to fjall keeps the sled store of [`store_in`]`(tmp)`.
fn kept(tmp: &Path) -> std::path::PathBuf {
    tmp.join("store.sled")
}

/// The schema of a sled store (a fixture, or one kept after the move).
fn schema_of(dir: &Path) -> u32 {
    let db = sled::open(dir).expect("raw open");
    let v = db.open_tree("meta").expect("meta").get("schema").expect("get").expect("version");
    u32::from_be_bytes(v.as_ref().try_into().expect("4 bytes"))
}

/// The ids of one page of `q` (limit 100).
fn listed(store: &Store, q: ListQuery) -> Vec<String> {
    let page = store.page(&ListQuery { limit: 100, ..q }).expect("page");
    assert!(page.next.is_none());
    page.records.iter().map(|r| r.id.to_string()).collect()
}

fn id(s: &str) -> RequestId {
    RequestId::parse(s).expect("fixture id")
}

#[test]
fn a_schema_3_store_is_migrated_and_every_record_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture("a", &store_in(dir.path()));
    let store = Store::open(&store_in(dir.path())).expect("a schema-3 store opens");
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
    assert_eq!(schema_of(&kept(dir.path())), 6, "the sled store, kept, was brought to schema 6 first");
    let again = Store::open(&store_in(dir.path())).expect("reopens");
    assert_eq!(again.list(None).expect("list").len(), 4);
    assert_eq!(listed(&again, ListQuery::default()).len(), 4, "every record is in the listing index");
    assert_eq!(listed(&again, ListQuery { status: Some(Status::Done), ..Default::default() }).len(), 2);
    let b = tempfile::tempdir().expect("tempdir");
    fixture("b", &store_in(b.path()));
    let b = Store::open(&store_in(b.path())).expect("b's store opens");
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

#[test]
fn a_schema_4_store_gets_its_listing_indexes_and_every_record_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_of(4, "a", &store_in(dir.path()));
    assert_eq!(schema_of(&store_in(dir.path())), 4);
    let store = Store::open(&store_in(dir.path())).expect("a schema-4 store opens");
    let all = store.list(None).expect("every record decodes");
    assert_eq!(all.len(), 5, "{all:?}");
    let mut by_time: Vec<_> = all.iter().map(|r| (r.created_at, r.id.to_string())).collect();
    by_time.sort();
    let in_order: Vec<String> = by_time.into_iter().map(|(_, id)| id).collect();
    assert_eq!(listed(&store, ListQuery::default()), in_order, "all, oldest first");
    let done = listed(&store, ListQuery { status: Some(Status::Done), ..Default::default() });
    assert_eq!(done, ["520e709edd23a6555cb5189c843b4ccf", "e9a45539a344cf5a93e9106ac17de454"]);
    let job = listed(&store, ListQuery { external_job_id: Some("job-7".into()), ..Default::default() });
    assert_eq!(job, ["520e709edd23a6555cb5189c843b4ccf"]);
    let failed =
        listed(&store, ListQuery { status: Some(Status::InError), partner: Some("b".into()), ..Default::default() });
    assert_eq!(failed, ["b209381a2031ceeb7c6a280fcb83a72f"]);
    let queued = listed(&store, ListQuery { status: Some(Status::ToSubmit), ..Default::default() });
    assert_eq!(queued, ["3f3fa43d2f8291b50bed8d8f8eb4ff38"]);
    let stopped = store.get(&id("3a2be2c65cb2c271bfbaf787c6864fa2")).expect("read").expect("stopped");
    assert_eq!(
        (stopped.status, stopped.error.as_ref().map(|e| e.code)),
        (Status::Interrupted, Some(ErrorCode::Stopped))
    );
    drop(store);
    assert_eq!(schema_of(&kept(dir.path())), 6, "the sled store, kept, was brought to schema 6 first");
    // A change after the migration moves the record between indexes.
    let store = Store::open(&store_in(dir.path())).expect("reopens");
    store
        .update(&id("3f3fa43d2f8291b50bed8d8f8eb4ff38"), "cancelled by the test", |r| r.status = Status::Cancelled)
        .expect("updated");
    assert!(listed(&store, ListQuery { status: Some(Status::ToSubmit), ..Default::default() }).is_empty());
    let cancelled = listed(&store, ListQuery { status: Some(Status::Cancelled), ..Default::default() });
    assert_eq!(cancelled, ["3f3fa43d2f8291b50bed8d8f8eb4ff38"]);
    let b = tempfile::tempdir().expect("tempdir");
    fixture_of(4, "b", &store_in(b.path()));
    let b = Store::open(&store_in(b.path())).expect("b's store opens");
    assert_eq!(listed(&b, ListQuery { status: Some(Status::Done), ..Default::default() }).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_4_node_restarts_its_stopped_request_and_lists_it() {
    let layout = Layout::new(&["a", "b"]);
    fixture_of(4, "a", &layout.config("a").data_dir.join("store"));
    write_random(&layout.out_dir("a").join("later.bin"), 5_000);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let stopped = id("3a2be2c65cb2c271bfbaf787c6864fa2");
    a.handle().restart(&stopped).await.expect("restartable");
    assert_eq!(wait_final(&a.handle(), &stopped, Duration::from_secs(60)).await.status, Status::Done);
    let queued = id("3f3fa43d2f8291b50bed8d8f8eb4ff38");
    assert_eq!(wait_final(&a.handle(), &queued, Duration::from_secs(60)).await.status, Status::Done);
    // (The fixture's store holds its own admin token, whose secret went
    // with the folder it was made in: read the listing from the store.)
    let done = listed(a.handle().store(), ListQuery { status: Some(Status::Done), ..Default::default() });
    assert_eq!(done.len(), 4, "{done:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn a_schema_5_store_is_migrated_to_file_sets_and_every_record_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_of(5, "a", &store_in(dir.path()));
    assert_eq!(schema_of(&store_in(dir.path())), 5);
    let store = Store::open(&store_in(dir.path())).expect("a schema-5 store opens");
    let all = store.list(None).expect("every record decodes");
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all.iter().all(|r| r.set.is_none() && r.member_of.is_none()), "no file sets before schema 6");
    let push = store.get(&id("6595f606df2126881fd78e0c6a8a6519")).expect("read").expect("the push");
    assert_eq!((push.file_name.as_str(), push.size, push.status), ("push.bin", 100_000, Status::Done));
    assert_eq!(push.external_job_id.as_deref(), Some("job-7"));
    assert!(push.hash.is_some());
    let missing = store.get(&id("b6769c14efb4540ae6bc7b9326fddfe8")).expect("read").expect("the failed pull");
    assert_eq!(missing.error.as_ref().map(|e| e.code), Some(ErrorCode::FileNotFound));
    assert!(!store.job_log(&push.id).expect("log").is_empty(), "job logs read back");
    let queued = listed(&store, ListQuery { status: Some(Status::ToSubmit), ..Default::default() });
    assert_eq!(queued, ["d2567132940b9b98180400e25a238c6e"]);
    drop(store);
    assert_eq!(schema_of(&kept(dir.path())), 6, "the sled store, kept, was brought to schema 6 first");
    let again = Store::open(&store_in(dir.path())).expect("reopens at the new schema");
    assert_eq!(again.list(None).expect("decodes").len(), 5, "nothing converted twice");
    let b = tempfile::tempdir().expect("tempdir");
    fixture_of(5, "b", &store_in(b.path()));
    let b = Store::open(&store_in(b.path())).expect("b's store opens");
    assert_eq!(listed(&b, ListQuery { status: Some(Status::Done), ..Default::default() }).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_5_node_runs_its_queued_request_and_then_a_file_set() {
    let layout = Layout::new(&["a", "b"]);
    fixture_of(5, "a", &layout.config("a").data_dir.join("store"));
    write_random(&layout.out_dir("a").join("later.bin"), 5_000);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let queued = id("d2567132940b9b98180400e25a238c6e");
    assert_eq!(wait_final(&a.handle(), &queued, Duration::from_secs(60)).await.status, Status::Done);
    let stopped = id("0723f3b517e335faa9505055f48169fe");
    a.handle().restart(&stopped).await.expect("restartable");
    assert_eq!(wait_final(&a.handle(), &stopped, Duration::from_secs(60)).await.status, Status::Done);
    std::fs::create_dir_all(layout.out_dir("a").join("set")).expect("mkdir");
    write_random(&layout.out_dir("a").join("set/one.bin"), 1_000);
    let s = ferry::model::Submit {
        file: String::new(),
        pattern: Some("set/*.bin".into()),
        ..submit(ferry::protocol::Direction::Push, "b", "")
    };
    let set = a.handle().submit(s).await.expect("a file set in a migrated store");
    assert_eq!(wait_final(&a.handle(), &set.id, Duration::from_secs(60)).await.status, Status::Done);
    assert!(layout.in_dir("b").join("set/one.bin").is_file());
    a.shutdown().await;
    b.shutdown().await;
}

/// The schema-6 fixture's requests (see its README).
const SIX_PUSH: &str = "01a22f21774c0c19f074e00b7103bb1f";
const SIX_SET: &str = "01a22f217765f1413b34d1a863df581d";
const SIX_STOPPED: &str = "01a22f2177e5532e0b0584610a7f05ed";
const SIX_CANCELLED: &str = "01a22f2177eccb78a25d77c1fb1247ba";
const SIX_QUEUED: &str = "01a22f2177f3340cb7adcb373ced9ac1";

/// What the schema-6 fixture of node a holds, read through `store`.
fn check_six(store: &Store) {
    let all = store.list(None).expect("every record decodes");
    assert_eq!(all.len(), 7 + 4, "seven requests and the set's four files: {all:?}");
    assert_eq!(listed(store, ListQuery::default()).len(), 7, "every request in the listing, files of sets not");
    let push = store.get(&id(SIX_PUSH)).expect("read").expect("the push");
    assert_eq!((push.file_name.as_str(), push.size, push.status), ("push.bin", 100_000, Status::Done));
    assert_eq!(push.external_job_id.as_deref(), Some("job-8"));
    assert!(store.job_log(&push.id).expect("log").len() >= 4, "its job log reads back");
    let set = store.get(&id(SIX_SET)).expect("read").expect("the set");
    assert_eq!((set.status, set.set.as_ref().map(|s| s.files)), (Status::Done, Some(4)));
    for i in 0..4 {
        let file = store.member(&set.id, i).expect("each file of the set");
        assert_eq!(file.status, Status::Done, "{file:?}");
    }
    let queued: Vec<String> = store.queued(10).expect("queue").iter().map(|r| r.id.to_string()).collect();
    assert_eq!(queued, [SIX_QUEUED], "the queue index moved");
    assert_eq!(store.get(&id(SIX_STOPPED)).expect("read").expect("stopped").status, Status::Interrupted);
    let cancelled = store.get(&id(SIX_CANCELLED)).expect("read").expect("cancelled");
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(store.notices_owed().expect("notices").is_empty(), "it never reached b: b is owed no notice");
    let tokens: Vec<String> = store.tokens().expect("tokens").into_iter().map(|t| t.name).collect();
    assert_eq!(tokens, ["admin", "sched-1"]);
}

#[test]
fn a_schema_6_sled_store_moves_into_fjall_with_every_tree_and_its_sled_folder_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_of(6, "a", &store_in(dir.path()));
    assert_eq!(schema_of(&store_in(dir.path())), 6);
    let store = Store::open(&store_in(dir.path())).expect("a schema-6 store opens");
    check_six(&store);
    // A request queued now goes after the one queued by the earlier
    // release: the sequence starts beyond every number sled gave.
    let later = store
        .insert(
            ferry::store::RequestRecord::new(
                RequestId::generate(),
                ferry::store::Role::Requester,
                "b",
                "default",
                ferry::protocol::Direction::Push,
                "new.bin",
            ),
            "submitted",
        )
        .expect("insert");
    let queued: Vec<String> = store.queued(10).expect("queue").iter().map(|r| r.id.to_string()).collect();
    assert_eq!(queued, [SIX_QUEUED.to_string(), later.id.to_string()]);
    drop(store);
    assert_eq!(schema_of(&kept(dir.path())), 6, "the sled folder is kept as it was");
    let again = Store::open(&store_in(dir.path())).expect("reopens as fjall");
    assert_eq!(again.list(None).expect("decodes").len(), 12, "nothing moved twice");
    assert_eq!(again.job_log(&later.id).expect("log").len(), 1);
    let b = tempfile::tempdir().expect("tempdir");
    fixture_of(6, "b", &store_in(b.path()));
    let b = Store::open(&store_in(b.path())).expect("b's store opens");
    assert_eq!(b.get(&id(SIX_SET)).expect("read").expect("b's record of the set").status, Status::Done);
}

#[test]
fn a_move_a_crash_cut_short_is_done_again_or_finished() {
    // A crash in step 2: the sled store is still in place, and a
    // half-written fjall folder beside it is thrown away.
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_of(6, "a", &store_in(dir.path()));
    let moving = dir.path().join("store.moving");
    std::fs::create_dir_all(moving.join("keyspaces")).expect("mkdir");
    std::fs::write(moving.join("0.jnl"), b"half a journal").expect("write");
    check_six(&Store::open(&store_in(dir.path())).expect("moved again"));
    assert!(!moving.exists());
    // A crash between steps 3 and 4: the sled folder is aside and the
    // fjall folder not yet in place; the next open puts it there.
    std::fs::rename(store_in(dir.path()), &moving).expect("as a crash left it");
    assert!(kept(dir.path()).is_dir());
    check_six(&Store::open(&store_in(dir.path())).expect("the move finished"));
    assert!(!moving.exists());
}

#[test]
fn a_sled_folder_in_the_way_of_the_one_to_keep_stops_the_move_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_of(6, "a", &store_in(dir.path()));
    std::fs::create_dir_all(kept(dir.path())).expect("mkdir");
    let err = Store::open(&store_in(dir.path())).expect_err("refused");
    assert!(err.to_string().contains("store.sled is in the way"), "{err}");
    assert_eq!(schema_of(&store_in(dir.path())), 6, "the sled store is left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_6_node_runs_its_queued_request_and_restarts_its_stopped_one() {
    let layout = Layout::new(&["a", "b"]);
    fixture_of(6, "a", &layout.config("a").data_dir.join("store"));
    write_random(&layout.out_dir("a").join("later.bin"), 5_000);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    assert_eq!(wait_final(&a.handle(), &id(SIX_QUEUED), Duration::from_secs(60)).await.status, Status::Done);
    a.handle().restart(&id(SIX_STOPPED)).await.expect("restartable");
    assert_eq!(wait_final(&a.handle(), &id(SIX_STOPPED), Duration::from_secs(60)).await.status, Status::Done);
    assert_eq!(std::fs::read(layout.in_dir("b").join("later.bin")).expect("delivered").len(), 5_000);
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn two_nodes_started_at_once_on_one_sled_store_move_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture_of(6, "a", &store_in(dir.path()));
    let path = store_in(dir.path());
    let opens: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || Store::open(&path))
        })
        .collect();
    let results: Vec<_> = opens.into_iter().map(|t| t.join().expect("no panic")).collect();
    let opened: Vec<&Store> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(opened.len(), 1, "one opens it");
    let refused = results.iter().find_map(|r| r.as_ref().err()).expect("the other is refused");
    assert!(refused.to_string().contains("in use by another process"), "{refused}");
    check_six(opened[0]);
    assert_eq!(schema_of(&kept(dir.path())), 6, "moved once: the kept sled store is the fixture");
    assert!(!dir.path().join("store.moving").exists());
}
