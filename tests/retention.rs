//! The retention setting on a real node: requests that ended long ago are
//! removed with their job logs when the node starts (and every sweep),
//! while requests that have not ended, failed ones, and recent ones stay,
//! and the node goes on transferring.

mod common;

use std::time::Duration;

use common::*;
use ferry::protocol::{Direction, ErrorCode, RequestId};
use ferry::store::{now_ms, RequestError, RequestRecord, Role, Status, Store};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn record(status: Status, age_days: u64, file: &str) -> RequestRecord {
    let at = now_ms() - age_days * DAY_MS;
    RequestRecord {
        status,
        created_at: at,
        updated_at: at,
        finished_at: status.is_final().then_some(at),
        error: (status == Status::InError)
            .then(|| RequestError { code: ErrorCode::FileNotFound, message: "gone".into() }),
        ..RequestRecord::new(RequestId::generate(), Role::Requester, "b", "default", Direction::Push, file)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_ended_requests_and_keeps_running_failed_and_recent_ones() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("a").retention.keep_days = 30;
    // What a node that ran for months left in its store.
    let (old, kept) = {
        let store = Store::open(&layout.config("a").data_dir.join("store")).expect("store");
        let put = |r: RequestRecord| {
            let r = store.insert(r, "submitted").expect("insert");
            store.log(&r.id, "delivered long ago").expect("log");
            r
        };
        let old = vec![put(record(Status::Done, 90, "old.csv")), put(record(Status::Cancelled, 31, "cancelled.csv"))];
        let mut stopped = record(Status::Interrupted, 90, "stopped.csv");
        ferry::lifecycle::stop(&mut stopped, "stopped by an operator");
        let kept = vec![
            put(stopped),                                   // not ended: an operator may restart it
            put(record(Status::InError, 90, "failed.csv")), // failed: kept for the operator
            put(record(Status::Done, 29, "recent.csv")),    // inside the 30 days
        ];
        store.flush_blocking().expect("flush");
        (old, kept)
    };
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    // The first sweep runs at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while old.iter().any(|r| a.handle().store().get(&r.id).expect("get").is_some()) {
        assert!(std::time::Instant::now() < deadline, "old requests still there after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in &old {
        assert!(a.handle().store().job_log(&r.id).expect("log").is_empty(), "{}'s job log went with it", r.file_name);
    }
    for r in &kept {
        let now = a.handle().store().get(&r.id).expect("get").expect("kept");
        assert_eq!(now.status, r.status, "{} is kept as it was", r.file_name);
        assert!(!a.handle().store().job_log(&r.id).expect("log").is_empty());
    }
    // The node goes on: a new transfer runs and stays.
    write_random(&layout.out_dir("a").join("new.bin"), 200_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "new.bin")).await.expect("submitted");
    let done = wait_final(&a.handle(), &rec.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert!(a.handle().store().get(&rec.id).expect("get").is_some());
    a.shutdown().await;
    b.shutdown().await;
}

/// A push a partner started here and left `Interrupted`, unchanged for
/// longer than `partial_keep_hours` while the node was up, is cancelled and
/// its partial file removed. Kept: a recent one, one whose file was
/// delivered, one an operator stopped, one a run serves now, and every one
/// when the node has not been up that long (its downtime does not count).
#[test]
fn an_unfinished_push_left_longer_than_partial_keep_hours_is_cancelled_and_its_partial_removed() {
    let layout = Layout::new(&["a", "b"]);
    let config = layout.config("b").clone();
    let work_dir = layout.in_dir("b").join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let hour = 60 * 60 * 1000;
    let partial = |age_hours: u64, file: &str| {
        let at = now_ms() - age_hours * hour;
        let rec = RequestRecord {
            status: Status::Interrupted,
            created_at: at,
            updated_at: at,
            size: 10_000,
            transferred: 4_000,
            ..RequestRecord::new(RequestId::generate(), Role::Requested, "a", "default", Direction::Push, file)
        };
        std::fs::write(work_dir.join(format!("{}.part", rec.id)), vec![1u8; 4_000]).expect("partial file");
        rec
    };
    let store = Store::open(&config.data_dir.join("store")).expect("store");
    let put = |r: RequestRecord| store.insert(r, "accepted Push from a").expect("insert");
    let old = put(partial(100, "walked-away.bin"));
    let recent = put(partial(2, "coming-back.bin"));
    let delivered = put(RequestRecord { delivered: true, ..partial(100, "renamed-later.bin") });
    let mut stopped = partial(100, "paused.bin");
    ferry::lifecycle::stop(&mut stopped, "stopped by an operator");
    let stopped = put(stopped);
    let served = put(partial(100, "resuming-now.bin"));
    let serving = ferry::actors::retention::Serving::default();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ferry::actors::channel_run::claim_serving(&serving, &served.id, "a", 7, &flag).expect("claimed");
    let part = |id: &RequestId| work_dir.join(format!("{id}.part"));
    let cutoff = now_ms() - 72 * hour;
    let abandon = |up_since| ferry::actors::retention::abandon_partials(&store, &config, &serving, cutoff, up_since);

    // Just started: nothing is old enough yet, whatever its age.
    assert_eq!(abandon(now_ms()).expect("sweep"), 0);
    // Up for a week.
    assert_eq!(abandon(now_ms() - 168 * hour).expect("sweep"), 1);
    let now = store.get(&old.id).expect("get").expect("kept, cancelled");
    assert_eq!(now.status, Status::Cancelled);
    assert!(now.error.expect("why").message.contains("partial_keep_hours"));
    assert!(!part(&old.id).exists(), "its partial file is removed");
    for kept in [&recent, &delivered, &stopped, &served] {
        let r = store.get(&kept.id).expect("get").expect("kept");
        assert_eq!(r.status, Status::Interrupted, "{} is kept as it was", r.file_name);
        assert!(part(&kept.id).exists(), "{}'s partial file is kept", r.file_name);
    }
}

/// A work file no request record names (a crash came before its record
/// was written, and the partner cancelled or never came back) is removed
/// once it has been there longer than `partial_keep_hours` while the node
/// was up. Kept: a work file whose request is recorded, a recent one, one a
/// run serves now, and anything not named like a work file.
#[test]
fn a_work_file_no_request_names_is_removed_after_partial_keep_hours() {
    let layout = Layout::new(&["a", "b"]);
    let mut config = layout.config("b").clone();
    // And a rule whose receive folder names its partner: its folder for a.
    let mut per_partner = config.rules[0].clone();
    per_partner.name = "per-partner".into();
    per_partner.recv_dir = layout.in_dir("b").join("from-#PARTNER#");
    config.rules.push(per_partner);
    let partner_work_dir = layout.in_dir("b").join("from-a/.ferry-work");
    std::fs::create_dir_all(&partner_work_dir).expect("work folder");
    let work_dir = layout.in_dir("b").join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let hour = 60 * 60 * 1000;
    let file_in = |dir: &std::path::Path, name: String, age_hours: u64| {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).expect("work file");
        std::io::Write::write_all(&mut &f, b"bytes of a file").expect("write");
        let at = std::time::SystemTime::now() - Duration::from_millis(age_hours * hour);
        f.set_modified(at).expect("time");
        path
    };
    let file = |name: String, age_hours: u64| file_in(&work_dir, name, age_hours);
    let store = Store::open(&config.data_dir.join("store")).expect("store");
    let orphan = file(format!("{}.part", RequestId::generate()), 100);
    let partner_orphan = file_in(&partner_work_dir, format!("{}.part", RequestId::generate()), 100);
    let recent = file(format!("{}.part", RequestId::generate()), 2);
    let recorded = record(Status::Interrupted, 0, "recorded.bin");
    let recorded = store.insert(RequestRecord { role: Role::Requested, ..recorded }, "accepted").expect("insert");
    let recorded_file = file(format!("{}.part", recorded.id), 100);
    let served_id = RequestId::generate();
    let served = file(format!("{served_id}.part"), 100);
    let other = file("notes.txt".into(), 100);
    let not_an_id = file("not-a-request.part".into(), 100);
    let serving = ferry::actors::retention::Serving::default();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ferry::actors::channel_run::claim_serving(&serving, &served_id, "a", 7, &flag).expect("claimed");
    let cutoff = now_ms() - 72 * hour;
    let sweep =
        |up_since| ferry::actors::retention::remove_orphan_work_files(&store, &config, &serving, cutoff, up_since);

    // Just started: nothing is old enough yet, whatever its age.
    assert_eq!(sweep(now_ms()).expect("sweep"), 0);
    assert!(orphan.exists());
    // Up for a week.
    assert_eq!(sweep(now_ms() - 168 * hour).expect("sweep"), 2);
    assert!(!orphan.exists(), "the work file no request names is removed");
    assert!(!partner_orphan.exists(), "in a receive folder named after its partner too");
    for kept in [&recent, &recorded_file, &served, &other, &not_an_id] {
        assert!(kept.exists(), "{} is kept", kept.display());
    }
}

/// A file set a partner streamed here with `delivery = all` and never
/// released (it walked away, or its set ended in error and was never
/// restarted) is cancelled once none of its records changed for longer
/// than `partial_keep_hours`, and the files it held under their work names
/// are removed. Kept: delivered files, a recent set, one whose file came
/// (one request alone) recently, one a stream or a `Release` works on
/// now, one whose release was ordered, a `delivery = each` set (it holds
/// nothing), and everything when the node has not been up that long.
#[test]
fn a_set_a_partner_never_released_is_cancelled_and_the_files_it_held_are_removed() {
    use ferry::fileset::progress::{Delivery, Policy};
    use ferry::store::{member_id, SetMember, Step};
    let layout = Layout::new(&["a", "b"]);
    let config = layout.config("b").clone();
    let in_dir = layout.in_dir("b");
    let work_dir = in_dir.join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let hour = 60 * 60 * 1000;
    let store = Store::open(&config.data_dir.join("store")).expect("store");
    let part = |id: &RequestId| work_dir.join(format!("{id}.part"));
    // A set streamed here, its file 0 held, file 1 delivered, file 2 not
    // sent yet (or, `newest` hours ago, arriving one request alone).
    let streamed = |age_hours: u64, name: &str, delivery: Delivery, newest: Option<u64>| {
        let at = now_ms() - age_hours * hour;
        let id = RequestId::generate();
        let policy = Policy { delivery, ..Policy::default() };
        let set =
            ferry::lifecycle::set::received_set(id.clone(), "a", "default", Direction::Push, (3, name, policy), at);
        let set = RequestRecord { created_at: at, updated_at: at, ..set };
        let member = |index: u32, file: &str| RequestRecord {
            created_at: at,
            updated_at: at,
            size: 100,
            transferred: 100,
            member_of: Some(SetMember { set: id.clone(), index, modified_ns: 0 }),
            ..RequestRecord::new(member_id(&id, index), Role::Requested, "a", "default", Direction::Push, file)
        };
        let mut held = member(0, &format!("{name}-held.dat"));
        ferry::lifecycle::held(&mut held, 100, ferry::protocol::Digest::of(&[7; 100]));
        std::fs::write(part(&held.id), [7u8; 100]).expect("held file");
        let mut delivered = member(1, &format!("{name}-delivered.dat"));
        ferry::lifecycle::complete(&mut delivered, None, at);
        delivered.delivered = true;
        std::fs::write(in_dir.join(&delivered.file_name), [8u8; 100]).expect("delivered file");
        (
            set,
            held,
            delivered,
            newest.map(|h| {
                let mut arriving = member(2, &format!("{name}-big.dat"));
                arriving.status = Status::Running;
                arriving.updated_at = now_ms() - h * hour;
                arriving
            }),
        )
    };
    let put =
        |(set, held, delivered, arriving): (RequestRecord, RequestRecord, RequestRecord, Option<RequestRecord>)| {
            let ids = (set.id.clone(), held.id.clone(), delivered.id.clone());
            store.insert(set, "set of 3 files from a").expect("set");
            store.insert(held, "held").expect("member");
            store.insert(delivered, "delivered").expect("member");
            if let Some(a) = arriving {
                store.insert(a, "receiving").expect("member");
            }
            ids
        };
    let (old_set, old_held, old_delivered) = put(streamed(100, "walked-away", Delivery::All, None));
    let (recent_set, recent_held, _) = put(streamed(2, "coming-back", Delivery::All, None));
    let (arriving_set, arriving_held, _) = put(streamed(100, "big-file-coming", Delivery::All, Some(2)));
    let (in_use_set, in_use_held, _) = put(streamed(100, "streaming-now", Delivery::All, None));
    let (each_set, _, _) = put(streamed(100, "each", Delivery::Each, None));
    let mut ordered = streamed(100, "being-released", Delivery::All, None);
    assert!(ferry::lifecycle::set::release_ordered(&mut ordered.0));
    let (ordered_set, ordered_held, _) = put(ordered);
    let mut ended = streamed(100, "ended-by-a", Delivery::All, None);
    assert!(ferry::lifecycle::set::ended_by_sender(&mut ended.0, ErrorCode::FilesFailed, "1 of 3 files failed", 0));
    ended.0.updated_at = now_ms() - 100 * hour;
    let (ended_set, ended_held, _) = put(ended);
    // The receiver notes the sets their sender ended (the sweep does not
    // read every InError record).
    store.note_ended_set(&ended_set).expect("noted");
    let stale = RequestId::generate();
    store.note_ended_set(&stale).expect("a set pruned since");
    let serving = ferry::actors::retention::Serving::default();
    let sets = std::sync::Arc::new(ferry::actors::sets_in_use::SetsInUse::default());
    let _streaming = sets.take(&in_use_set);
    let cutoff = now_ms() - 72 * hour;
    let abandon =
        |up_since| ferry::actors::retention::abandon_unreleased(&store, &config, &serving, &sets, cutoff, up_since);
    let status = |id: &RequestId| store.get(id).expect("get").expect("kept").status;

    // Just started: nothing is old enough yet, whatever its age.
    assert_eq!(abandon(now_ms()).expect("sweep"), Default::default());
    // Up for a week: the set left, and the set its sender ended in error.
    let done = abandon(now_ms() - 168 * hour).expect("sweep");
    assert_eq!((done.sets, done.files), (2, 2));
    for (set, held) in [(&old_set, &old_held), (&ended_set, &ended_held)] {
        let s = store.get(set).expect("get").expect("kept");
        assert_eq!(s.status, Status::Cancelled);
        assert!(s.error.expect("why").message.contains("partial_keep_hours"));
        let r = store.get(held).expect("get").expect("kept");
        assert_eq!(r.status, Status::Cancelled, "{} is cancelled", r.file_name);
        assert!(r.error.expect("why").message.contains("partial_keep_hours"));
        assert!(!part(held).exists(), "{}'s held file is removed", r.file_name);
    }
    assert_eq!(status(&old_delivered), Status::Done, "a delivered file stays");
    assert!(in_dir.join("walked-away-delivered.dat").exists());
    for (set, held) in [
        (&recent_set, &recent_held),
        (&arriving_set, &arriving_held),
        (&in_use_set, &in_use_held),
        (&ordered_set, &ordered_held),
    ] {
        assert_eq!(status(set), Status::Running, "set {set} is kept");
        assert_eq!(status(held), Status::Running, "its held file is kept");
        assert!(part(held).exists(), "its held file stays under its work name");
    }
    assert_eq!(status(&each_set), Status::Running, "a delivery = each set holds nothing: kept");
    assert_eq!(store.get(&ordered_set).expect("get").expect("kept").step, Step::Held);
    // A second sweep finds nothing more, and has forgotten the sets it
    // noted that no longer wait.
    assert_eq!(abandon(now_ms() - 168 * hour).expect("sweep"), Default::default());
    assert!(store.ended_sets().expect("read").is_empty());
}

/// After the sweep, the set's sender is refused with the reason: a
/// `Release` of the cancelled set, and, before that, a `Release` of a set
/// whose held file lost its work file (nothing is ordered). A `SetEnded`
/// is answered "ask again" while a stream or release works on the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swept_set_is_refused_with_the_reason_and_a_set_in_use_is_not_ended() {
    use ferry::actors::set_release::{release_held, set_ended_by_sender};
    use ferry::fileset::progress::{Delivery, Policy};
    use ferry::protocol::control::Answer;
    use ferry::store::{member_id, SetMember};
    let layout = Layout::new(&["a", "b"]);
    let config = std::sync::Arc::new(layout.config("b").clone());
    let work_dir = layout.in_dir("b").join(".ferry-work");
    std::fs::create_dir_all(&work_dir).expect("work folder");
    let hour = 60 * 60 * 1000;
    let store = Store::open(&config.data_dir.join("store")).expect("store");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let core = ferry::actors::context::Core { config: config.clone(), store: store.clone(), shutdown };
    // A set of one file, held, left 100 hours ago.
    let set_of_one = |name: &str| {
        let at = now_ms() - 100 * hour;
        let id = RequestId::generate();
        let policy = Policy { delivery: Delivery::All, ..Policy::default() };
        let set =
            ferry::lifecycle::set::received_set(id.clone(), "a", "default", Direction::Push, (1, name, policy), at);
        store.insert(RequestRecord { created_at: at, updated_at: at, ..set }, "set").expect("set");
        let mut held = RequestRecord {
            created_at: at,
            updated_at: at,
            member_of: Some(SetMember { set: id.clone(), index: 0, modified_ns: 0 }),
            ..RequestRecord::new(member_id(&id, 0), Role::Requested, "a", "default", Direction::Push, name)
        };
        ferry::lifecycle::held(&mut held, 3, ferry::protocol::Digest::of(b"abc"));
        std::fs::write(work_dir.join(format!("{}.part", held.id)), b"abc").expect("held file");
        store.insert(held.clone(), "held").expect("member");
        (id, held.id)
    };
    let (swept, _) = set_of_one("swept.dat");
    let (lost, lost_file) = set_of_one("lost.dat");
    let (streaming, _) = set_of_one("streaming.dat");

    // A held file whose work file is gone: nothing is ordered.
    std::fs::remove_file(work_dir.join(format!("{lost_file}.part"))).expect("lose it");
    let (code, why) = release_held(&core, "a", &lost, 1).expect_err("refused");
    assert_eq!(code, ErrorCode::FileNotFound, "{why}");
    assert!(why.contains("work file is gone") && why.contains("nothing was released"), "{why}");
    let unchanged = store.get(&lost_file).expect("get").expect("kept");
    assert!(ferry::lifecycle::is_held(&unchanged) && !unchanged.delivered, "not ordered");

    // A stream works on one set while the sweep runs: that one is kept,
    // and told of its end meanwhile, node b answers "ask again".
    let sets = std::sync::Arc::new(ferry::actors::sets_in_use::SetsInUse::default());
    let in_use = sets.take(&streaming);
    let serving = ferry::actors::retention::Serving::default();
    let cutoff = now_ms() - 72 * hour;
    let done =
        ferry::actors::retention::abandon_unreleased(&store, &config, &serving, &sets, cutoff, 0).expect("sweep");
    assert_eq!(done.sets, 2, "the two sets nobody works on");
    let ask_again =
        set_ended_by_sender(&core, &sets, "a", &streaming, ErrorCode::FilesFailed, "1 of 1 files failed").await;
    assert!(
        matches!(&ask_again, Answer::Refused { code: ErrorCode::Internal, message } if message.contains("ask again")),
        "{ask_again:?}"
    );
    drop(in_use);
    let ended = set_ended_by_sender(&core, &sets, "a", &streaming, ErrorCode::FilesFailed, "1 of 1 files failed").await;
    let Answer::State(Some(state)) = ended else { panic!("{ended:?}") };
    assert_eq!(state.status, "InError");
    assert!(state.error.as_deref().is_some_and(|e| e.contains("a ended the set in error")), "{state:?}");

    // The swept set's release is refused, naming the setting.
    let (code, why) = release_held(&core, "a", &swept, 1).expect_err("refused");
    assert_eq!(code, ErrorCode::Cancelled);
    assert!(why.contains("partial_keep_hours"), "{why}");
}
