//! A partner with a valid certificate cannot harm a node.
//!
//! Node `m` (mallory) holds a certificate of the cluster and is configured
//! as a partner of `b`, but it is never started: the test plays it by hand,
//! over real QUIC with its real certificate, speaking the wire format and
//! misbehaving. Every attack is bounded in count and time. After each, the
//! node's records are checked: no record it did not earn, no transfer of
//! another partner disturbed, no file outside a rule's folder read.
//!
//! The memory attacks run against a real `ferry node` process, whose
//! resident memory is read from `/proc/PID/status` before, during and after,
//! while a normal transfer from another node completes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::peer::{channel, connect, endpoint_of, next};
use common::procs::ProcCluster;
use common::*;
use ferry::protocol::control::{Answer, Ask, Handover};
use ferry::protocol::*;
use ferry::store::Status;
use ferry::transport;

const WITHIN: Duration = Duration::from_secs(30);

/// Startup, Authent and `req` as `who`, the way a requester pipelines them;
/// returns the requested side's answer to the request.
async fn ask_request(conn: &quinn::Connection, who: &str, req: Request) -> Message {
    let (mut w, mut r) = channel(conn).await;
    let opening = [
        Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: req.request_id.clone() }),
        Message::Authent(Authent { host_id: who.into(), capabilities: Capabilities::default() }),
        Message::Request(req),
    ];
    for m in &opening {
        w.send(m).await.expect("send");
    }
    assert!(matches!(next(&mut r).await, Message::Startup(_)));
    assert!(matches!(next(&mut r).await, Message::Authent(_)));
    next(&mut r).await
}

fn request(id: RequestId, direction: Direction, file: &str, size: u64) -> Request {
    Request {
        request_id: id,
        rule: "default".into(),
        direction,
        file_name: file.into(),
        size,
        block_size: DEFAULT_BLOCK_SIZE,
        restart_offset: u64::MAX,
        prefix_hash: None,
        delivered: None,
        options: TransferOptions::default(),
        external_job_id: None,
        transfer_info: String::new(),
    }
}

fn refused(answer: &Message) -> &Refused {
    match answer {
        Message::Refused(r) => r,
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn handover(id: RequestId, rule: &str, partner: &str, file: &str) -> Ask {
    Ask::Handover(Handover {
        id,
        partner: partner.into(),
        direction: Direction::Push,
        rule: rule.into(),
        file: file.into(),
        external_job_id: None,
        transfer_info: String::new(),
        block_size: None,
        compression: Compression::None,
        submitted_on: "m".into(),
        target_mode: None,
    })
}

/// Bug 2: a pull that says the file was already delivered is believed only
/// for a request this node recorded with that partner and sent itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_delivery_claim_earns_no_record() {
    let layout = Layout::new(&["a", "b", "m"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let certs = layout.dir.path().join("certs");
    let ep = endpoint_of(&certs, "m");
    let conn = connect(&ep, layout.config("b").listen, "b").await;
    let claim = EndTransfer { bytes: 4096, hash: Digest([7; 32]) };

    // A file that never existed, under an id b never saw.
    let id = RequestId::generate();
    let mut req = request(id.clone(), Direction::Pull, "never-existed.bin", 0);
    req.delivered = Some(claim.clone());
    let r = ask_request(&conn, "m", req).await;
    let r = refused(&r);
    assert_eq!(r.code, ErrorCode::Protocol, "{}", r.message);
    assert!(r.message.contains("holds no record"), "{}", r.message);
    assert!(b.handle().store().get(&id).expect("store").is_none(), "no record earned");

    // A real file, under an id b never saw: still no.
    write_random(&layout.out_dir("b").join("real.bin"), 4096);
    let id = RequestId::generate();
    let mut req = request(id.clone(), Direction::Pull, "real.bin", 0);
    req.delivered = Some(claim.clone());
    assert_eq!(refused(&ask_request(&conn, "m", req).await).code, ErrorCode::Protocol);
    assert!(b.handle().store().get(&id).expect("store").is_none(), "no record earned");

    // The id of a pull that a really made from b: it is a's, not m's.
    let rec = a.handle().submit(submit(Direction::Pull, "b", "real.bin")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    let theirs = b.handle().store().get(&rec.id).expect("store").expect("b's record");
    let mut req = request(rec.id.clone(), Direction::Pull, "real.bin", 0);
    req.delivered = Some(EndTransfer { bytes: theirs.size, hash: theirs.hash.expect("hash recorded") });
    let r = ask_request(&conn, "m", req).await;
    assert!(refused(&r).message.contains("belongs to another request"), "{r:?}");
    assert_eq!(b.handle().store().get(&rec.id).expect("store"), Some(theirs), "a's record untouched");

    // The real requester, claiming what it really got, is confirmed.
    let a_conn = connect(&endpoint_of(&certs, "a"), layout.config("b").listen, "b").await;
    let b_rec = b.handle().store().get(&rec.id).expect("store").expect("record");
    let mut req = request(rec.id.clone(), Direction::Pull, "real.bin", 0);
    req.delivered = Some(EndTransfer { bytes: b_rec.size, hash: b_rec.hash.expect("hash") });
    assert!(matches!(ask_request(&a_conn, "a", req.clone()).await, Message::Complete(_)));
    // But not with another hash.
    req.delivered = Some(EndTransfer { bytes: b_rec.size, hash: Digest([9; 32]) });
    let r = ask_request(&a_conn, "a", req).await;
    assert!(refused(&r).message.contains("sent"), "{r:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A pull its requester confirmed (Done, or failed in the sender's
/// post-tasks) is not sent again, nor are the sender's post-tasks run
/// again, for a requester that asks for it without claiming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_pull_is_not_sent_again_to_a_requester_that_asks_anew() {
    let mut layout = Layout::new(&["a", "b"]);
    let runs = layout.dir.path().join("runs");
    layout.config_mut("b").rules[0].sender.post_tasks = vec![sh_task(
        "echo run >> \"$1\"; case \"$2\" in fail*) exit 1;; esac",
        &[&runs.display().to_string(), "#FILENAME#"],
    )];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("b").join("report.bin"), 4096);
    let rec = a.handle().submit(submit(Direction::Pull, "b", "report.bin")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    let theirs = wait_record(&b.handle(), &rec.id, Status::Done, WITHIN).await;
    assert_eq!(std::fs::read_to_string(&runs).expect("ran").lines().count(), 1);

    // a's own id, asked again as if new: refused, b's record and tasks untouched.
    let certs = layout.dir.path().join("certs");
    let conn = connect(&endpoint_of(&certs, "a"), layout.config("b").listen, "b").await;
    let r = ask_request(&conn, "a", request(rec.id.clone(), Direction::Pull, "report.bin", 0)).await;
    let r = refused(&r);
    assert_eq!(r.code, ErrorCode::Protocol, "{}", r.message);
    assert!(r.message.contains("confirmed (Done) on node b"), "{}", r.message);
    assert_eq!(b.handle().store().get(&rec.id).expect("store"), Some(theirs), "b's record untouched");
    assert_eq!(std::fs::read_to_string(&runs).expect("ran").lines().count(), 1, "post-tasks ran once");

    // Nor one whose sender's post-task failed after the file was confirmed.
    write_random(&layout.out_dir("b").join("fail.bin"), 4096);
    let rec = a.handle().submit(submit(Direction::Pull, "b", "fail.bin")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::InError);
    let theirs = wait_record(&b.handle(), &rec.id, Status::InError, WITHIN).await;
    assert_eq!(std::fs::read_to_string(&runs).expect("ran").lines().count(), 2);
    let r = ask_request(&conn, "a", request(rec.id.clone(), Direction::Pull, "fail.bin", 0)).await;
    assert!(refused(&r).message.contains("confirmed (InError) on node b"), "{r:?}");
    let now = b.handle().store().get(&rec.id).expect("store").expect("record");
    assert_eq!((now.status, now.step, now.failed_step), (theirs.status, theirs.step, theirs.failed_step));
    assert_eq!(std::fs::read_to_string(&runs).expect("ran").lines().count(), 2, "its post-task did not run again");
    a.shutdown().await;
    b.shutdown().await;
}

/// A partner whose transfers never end (here b's post-task sleeps, so a's
/// pushes wait for their echo) holds at most its share of a's slots (3 of
/// 4): a request for c submitted later still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_whose_transfers_never_end_leaves_slots_for_the_others() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    layout.config_mut("a").concurrency = 4;
    layout.config_mut("b").rules[0].receiver.post_tasks = vec![sh_task("sleep 60", &[])];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    let mut held = Vec::new();
    for i in 0..6 {
        let name = format!("slow-{i}.bin");
        write_random(&layout.out_dir("a").join(&name), 1000);
        held.push(a.handle().submit(submit(Direction::Push, "b", &name)).await.expect("submitted").id);
    }
    let running = |a: &ferry::node::Node| {
        let running =
            |id: &&RequestId| a.handle().store().get(id).expect("store").is_some_and(|r| r.status == Status::Running);
        held.iter().filter(running).count()
    };
    let deadline = std::time::Instant::now() + WITHIN;
    while running(&a) < 3 {
        assert!(std::time::Instant::now() < deadline, "b's requests did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Had b taken the fourth slot, c's request would wait 60 s for one of
    // b's to end.
    write_random(&layout.out_dir("a").join("fast.bin"), 1000);
    let fast = a.handle().submit(submit(Direction::Push, "c", "fast.bin")).await.expect("submitted");
    let done = wait_final(&a.handle(), &fast.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(running(&a), 3, "b still holds its share, no more");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// Bug 3: a Request reusing the id of a transfer running with another
/// partner is refused, and that transfer runs on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_leaves_the_other_partners_transfer_alone() {
    let layout = Layout::new(&["a", "b", "m"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let source = write_random(&layout.out_dir("a").join("big.bin"), 256 << 20);
    let rec = a.handle().submit(submit(Direction::Push, "b", "big.bin")).await.expect("submitted");
    wait_record(&b.handle(), &rec.id, Status::Running, WITHIN).await;

    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    for direction in [Direction::Push, Direction::Pull] {
        let r = ask_request(&conn, "m", request(rec.id.clone(), direction, "big.bin", 256 << 20)).await;
        let r = refused(&r);
        assert_eq!(r.code, ErrorCode::Protocol);
        assert!(r.message.contains("another request"), "{}", r.message);
    }

    let done = wait_final(&a.handle(), &rec.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let theirs = wait_final(&b.handle(), &rec.id, WITHIN).await;
    assert_eq!(theirs.status, Status::Done, "{:?}", theirs.error);
    assert_eq!(theirs.partner, "a");
    assert_eq!(file_digest(&layout.in_dir("b").join("big.bin")), source);
    assert!(work_files(&layout.in_dir("b")).is_empty(), "no orphan work file");
    a.shutdown().await;
    b.shutdown().await;
}

/// Bug 4: a handover is accepted only under a rule that allows the asker,
/// and one partner may queue only so many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_is_bounded_by_what_the_rules_give_the_asker() {
    let mut layout = Layout::new(&["a", "b", "c", "m"]);
    let mut restricted = layout.config("b").rules[0].clone();
    restricted.name = "restricted".into();
    restricted.partners = vec!["a".into()];
    layout.config_mut("b").rules.push(restricted);
    layout.config_mut("b").limits.handovers = 3;
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("b").join("secret.bin"), 1000);
    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    let ask = |q: Ask| {
        let conn = conn.clone();
        async move { transport::control::ask(&conn, &q, WITHIN).await.expect("answered") }
    };

    // m may not use "restricted", so it cannot make b push under it to a.
    let id = RequestId::generate();
    match ask(handover(id.clone(), "restricted", "a", "secret.bin")).await {
        Answer::Refused { code, message } => {
            assert_eq!(code, ErrorCode::RuleNotAllowed, "{message}");
            assert!(message.contains("partner \"m\" may not use rule \"restricted\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(b.handle().store().get(&id).expect("store").is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(delivered(&layout.in_dir("a")).is_empty(), "nothing was sent to a");

    // Under "default" it may, up to the limit (c is down: they stay queued).
    let mut accepted = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..6 {
        let id = RequestId::generate();
        match ask(handover(id.clone(), "default", "c", "secret.bin")).await {
            Answer::Accepted(_) => accepted.push(id),
            Answer::Refused { message, .. } => refusals.push((id, message)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 3, "refusals: {refusals:?}");
    for (id, message) in &refusals {
        assert!(message.contains("limits.handovers = 3"), "{message}");
        assert!(b.handle().store().get(id).expect("store").is_none());
    }
    // Asking again for one it handed over is idempotent; for a's, refused.
    assert!(matches!(ask(handover(accepted[0].clone(), "default", "c", "secret.bin")).await, Answer::Accepted(_)));
    write_random(&layout.out_dir("a").join("own.bin"), 10);
    let own = a.handle().submit(submit(Direction::Push, "b", "own.bin")).await.expect("submitted");
    wait_final(&a.handle(), &own.id, WITHIN).await;
    assert!(matches!(ask(handover(own.id.clone(), "default", "c", "secret.bin")).await, Answer::Refused { .. }));
    a.shutdown().await;
    b.shutdown().await;
}

/// Bug 5 (and the push side of it): a rule's folder confines what it
/// sends; a symbolic link in it is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_in_a_send_folder_is_not_followed() {
    let layout = Layout::new(&["a", "b", "m"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let outside = layout.dir.path().join("outside-secret.txt");
    std::fs::write(&outside, b"not for partners").expect("write");
    std::os::unix::fs::symlink(&outside, layout.out_dir("b").join("link.txt")).expect("symlink");
    std::os::unix::fs::symlink(&outside, layout.out_dir("a").join("link.txt")).expect("symlink");

    // Pull by a hostile partner.
    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    let id = RequestId::generate();
    let r = ask_request(&conn, "m", request(id.clone(), Direction::Pull, "link.txt", 0)).await;
    let r = refused(&r);
    assert_eq!(r.code, ErrorCode::FileNotFound, "{}", r.message);
    assert!(r.message.contains("symbolic link"), "{}", r.message);
    assert!(b.handle().store().get(&id).expect("store").is_none());

    // Pull by a well-behaved partner: ends InError, naming the link.
    let rec = a.handle().submit(submit(Direction::Pull, "b", "link.txt")).await.expect("submitted");
    let rec = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(rec.status, Status::InError);
    assert!(rec.error.expect("error").message.contains("symbolic link"));

    // Push: the node's own API refuses it before anything is queued.
    let e = a.handle().submit(submit(Direction::Push, "b", "link.txt")).await.expect_err("refused");
    assert_eq!(e.code(), "file_not_found");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(delivered(&layout.in_dir("a")).is_empty() && delivered(&layout.in_dir("b")).is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// A pull of a name that is a symbolic link in the send folder is refused
/// before the sender's pre-tasks run: they would act through the link on a
/// file outside the folder that the transfer itself refuses to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_pre_task_never_runs_on_a_file_a_link_leads_to() {
    let mut layout = Layout::new(&["a", "b"]);
    let seen = layout.dir.path().join("seen");
    layout.config_mut("b").rules[0].sender.pre_tasks =
        vec![sh_task("cat \"$1\" >> \"$2\"", &["#FILEPATH#", &seen.display().to_string()])];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let outside = layout.dir.path().join("outside-secret.txt");
    std::fs::write(&outside, b"not for partners").expect("write");
    std::os::unix::fs::symlink(&outside, layout.out_dir("b").join("link.txt")).expect("symlink");
    let rec = a.handle().submit(submit(Direction::Pull, "b", "link.txt")).await.expect("submitted");
    let rec = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(rec.status, Status::InError);
    let why = rec.error.expect("error").message;
    assert!(why.contains("symbolic link"), "{why}");
    assert!(!seen.exists(), "the pre-task ran on the file the link leads to");
    a.shutdown().await;
    b.shutdown().await;
}

/// Partners that share a rule can be given receive folders of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partner_receive_folders_keep_partners_apart() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    let shared = layout.in_dir("b");
    layout.config_mut("b").rules[0].recv_dir = shared.join("#PARTNER#");
    let (a, b, c) = (layout.start("a").await, layout.start("b").await, layout.start("c").await);
    let from_a = write_random(&layout.out_dir("a").join("same-name.bin"), 3000);
    let from_c = write_random(&layout.out_dir("c").join("same-name.bin"), 3000);
    let ra = a.handle().submit(submit(Direction::Push, "b", "same-name.bin")).await.expect("a");
    let rc = c.handle().submit(submit(Direction::Push, "b", "same-name.bin")).await.expect("c");
    assert_eq!(wait_final(&a.handle(), &ra.id, WITHIN).await.status, Status::Done);
    assert_eq!(wait_final(&c.handle(), &rc.id, WITHIN).await.status, Status::Done);
    assert_eq!(file_digest(&shared.join("a").join("same-name.bin")), from_a);
    assert_eq!(file_digest(&shared.join("c").join("same-name.bin")), from_c);
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// Reverse-connect asks reuse a live connection (one dial answers all that
/// come meanwhile) and the dials they cause are limited per minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_back_asks_cannot_make_a_node_dial_without_bound() {
    let mut layout = Layout::new(&["a", "b", "c", "m"]);
    layout.config_mut("b").connect_timeout_ms = 200;
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    let dial_me = |node: &'static str| {
        let conn = conn.clone();
        async move { transport::control::ask(&conn, &Ask::DialMe { node: node.into() }, WITHIN).await }
    };
    // 40 at once for a node that is up: one connection is made and serves
    // them all; those over the partner's open asks are refused, saying so.
    let asks: Vec<_> = (0..40).map(|_| tokio::spawn(dial_me("a"))).collect();
    let mut dialed = 0;
    for ask in asks {
        match ask.await.expect("ask task") {
            Ok(Answer::Dialed) => dialed += 1,
            Ok(Answer::Refused { message, .. }) => assert!(message.contains("limits.control_asks"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(dialed >= 8, "{dialed} answered Dialed");
    let stats = b.handle().stats().await;
    assert!(stats.connections_by_partner.get("a").copied().unwrap_or(0) <= 2, "{stats:?}");
    // One at a time for a node that is down: each is a real dial, and they
    // are limited per minute.
    let per_minute = ferry::config::PartnerLimits::default().dial_back_asks_per_minute as usize;
    let mut failed_dials = 0;
    let mut limited = Vec::new();
    for _ in 0..per_minute + 5 {
        match dial_me("c").await {
            Ok(Answer::Refused { message, .. }) if message.contains("limits.dial_back_asks_per_minute") => {
                limited.push(message)
            }
            Ok(Answer::Refused { .. }) => failed_dials += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // The one dial to a counted too.
    assert_eq!(failed_dials, per_minute - 1, "dials made: limited {limited:?}");
    assert_eq!(limited.len(), 6);
    a.shutdown().await;
    b.shutdown().await;
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// Bug 1 and the limits: frames announced large, trickled frames, streams
/// that never start their handshake, surplus connections, a flood of bad
/// streams. Memory stays bounded and is given back; a transfer from
/// another node completes meanwhile; the log is not flooded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_make_a_node_hold_memory_or_streams() {
    let mut cluster = ProcCluster::new(&["a", "b", "m"], |l| {
        let limits = &mut l.config_mut("b").expect("b").limits;
        limits.handshake_timeout_ms = 2_000;
        limits.frame_timeout_ms = 3_000;
    });
    cluster.start("a").await;
    let b_api = cluster.start("b").await;
    let pid = cluster.pid("b");
    let b_addr = cluster.layout.config("b").expect("b").listen;
    let ep = endpoint_of(&cluster.layout.root.join("certs"), "m");
    let before = rss_mib(pid);

    // A normal transfer a → b runs through the attack.
    let source = write_random(&cluster.out_dir("a").join("normal.bin"), 64 << 20);
    let a_api = cluster.api("a");
    let normal = a_api.submit(&submit(Direction::Push, "b", "normal.bin")).await.expect("submitted");

    // 1. Two connections × 32 streams, each announcing a 16 MiB frame and
    //    sending all but one byte of it.
    let mut conns = Vec::new();
    let mut streams = Vec::new();
    let mut refused_at_header = 0;
    for _ in 0..2 {
        let conn = connect(&ep, b_addr, "b").await;
        for _ in 0..32 {
            let (mut s, r) = conn.open_bi().await.expect("open");
            let len = ferry::protocol::codec::MAX_FRAME_BODY as u32;
            let mut head = vec![StreamKind::Request.byte()];
            head.extend_from_slice(&len.to_be_bytes());
            s.write_all(&head).await.expect("header");
            let body = vec![0x55u8; len as usize - 1];
            // The node stops the stream once it read the header: the write fails.
            let written = tokio::time::timeout(WITHIN, s.write_all(&body)).await.expect("write settles in time");
            if written.is_err() {
                refused_at_header += 1;
            }
            streams.push((s, r));
        }
        conns.push(conn);
    }
    let during_large = rss_mib(pid);

    // 2. 200 streams trickling a handshake-sized frame, one byte a second.
    let trickle = connect(&ep, b_addr, "b").await;
    let mut trickled = Vec::new();
    for _ in 0..200 {
        let (mut s, r) = trickle.open_bi().await.expect("open");
        let mut head = vec![StreamKind::Request.byte()];
        head.extend_from_slice(&(60_000u32).to_be_bytes());
        head.push(0);
        s.write_all(&head).await.expect("header");
        trickled.push((s, r));
    }
    // 3. 500 streams that send only the kind byte and never a Startup.
    let silent = connect(&ep, b_addr, "b").await;
    let mut silents = Vec::new();
    for _ in 0..500 {
        let (mut s, r) = silent.open_bi().await.expect("open");
        s.write_all(&[StreamKind::Request.byte()]).await.expect("kind");
        silents.push((s, r));
    }
    let during_all = rss_mib(pid);

    // Every silent and trickled stream is ended by the node within its
    // deadlines: all are watched at once, until one shared deadline.
    let ended_within = Duration::from_secs(15);
    let deadline = tokio::time::Instant::now() + ended_within;
    let watchers: Vec<_> = silents
        .drain(..)
        .map(|(s, r)| (s, r, false))
        .chain(trickled.drain(..).map(|(s, r)| (s, r, true)))
        .map(|(mut s, mut r, trickles)| {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                tokio::time::timeout_at(deadline, async {
                    loop {
                        tokio::select! {
                            read = r.read(&mut buf) => if !matches!(read, Ok(Some(_))) { return },
                            _ = every_second.tick(), if trickles => { let _ = s.write_all(&[0]).await; }
                        }
                    }
                })
                .await
                .is_ok()
            })
        })
        .collect();
    let mut ended = 0;
    for w in watchers {
        ended += usize::from(w.await.expect("watcher"));
    }

    let done =
        tokio::time::timeout(Duration::from_secs(120), a_api.wait(&normal.id, Duration::from_millis(200), |_| {}))
            .await
            .expect("the normal transfer ends in time")
            .expect("a answers");
    drop(streams);
    for c in conns.iter().chain([&trickle, &silent]) {
        c.close(0u32.into(), b"attack over");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_mib(pid);
    println!(
        "b's resident memory: {before:.0} MiB before, {during_large:.0} MiB after 64 streams announced 16 MiB frames \
         ({refused_at_header} refused at the header), {during_all:.0} MiB with 200 trickling and 500 silent streams \
         added, {after:.0} MiB 5 s after the attacker closed its connections"
    );

    // 4. Surplus connections are closed, naming the limit.
    let limit = ferry::config::PartnerLimits::default().connections;
    let mut extra = Vec::new();
    for _ in 0..limit + 2 {
        extra.push(connect(&ep, b_addr, "b").await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed: Vec<String> =
        extra.iter().filter_map(|c| c.close_reason()).map(|e| transport::channel::describe_connection(&e)).collect();

    // 5. A flood of streams of an unknown kind.
    let flood = extra.iter().find(|c| c.close_reason().is_none()).expect("a connection within the limit").clone();
    for _ in 0..300 {
        if let Ok((mut s, _r)) = flood.open_bi().await {
            let _ = s.write_all(b"X").await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = std::fs::read_to_string(cluster.log_path("b")).expect("b's log");
    let stream_warnings = log.lines().filter(|l| l.contains("refused a stream")).count();
    println!("{stream_warnings} 'refused a stream' lines in b's log for 300+ refused streams; closed: {closed:?}");

    assert_eq!(done.status, Status::Done, "{done:?}");
    assert_eq!(digest_of(&cluster.in_dir("b").join("normal.bin")), source);
    assert!(during_large - before < 100.0, "64 announced 16 MiB frames cost {:.0} MiB", during_large - before);
    assert!(during_all - before < 200.0, "the attack cost {:.0} MiB", during_all - before);
    assert!(after - before < 100.0, "{:.0} MiB still held after the attack", after - before);
    assert_eq!(ended, 700, "streams the node did not end within {ended_within:?}");
    assert_eq!(closed.len(), 2, "connections over the limit: {closed:?}");
    assert!(closed.iter().all(|c| c.contains("limits.connections")), "{closed:?}");
    assert!(stream_warnings < 20, "{stream_warnings} warnings: the log is flooded");
    assert!(log.contains("held_back"), "the warnings held back are counted");
    let recs = b_api.list(None).await.expect("b's records");
    assert!(recs.iter().all(|r| r.partner != "m"), "no record earned by the attacker: {recs:?}");
}

fn digest_of(path: &Path) -> Digest {
    file_digest(path)
}

/// A file delivered under a name that is a symbolic link in the receive
/// folder replaces the link; what the link pointed at is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_replaces_a_link_instead_of_writing_through_it() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let outside = layout.dir.path().join("outside-target.txt");
    std::fs::write(&outside, b"must stay as it is").expect("write");
    let link = layout.in_dir("b").join("landing.txt");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    let source = write_random(&layout.out_dir("a").join("landing.txt"), 5000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "landing.txt")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &rec.id, WITHIN).await.status, Status::Done);
    let meta = std::fs::symlink_metadata(&link).expect("delivered");
    assert!(meta.file_type().is_file(), "the link was replaced by the delivered file");
    assert_eq!(file_digest(&link), source);
    assert_eq!(std::fs::read(&outside).expect("read"), b"must stay as it is");
    a.shutdown().await;
    b.shutdown().await;
}

/// A partner whose request was accepted and then sends nothing holds the
/// node's receiving runner only until `limits.frame_timeout_ms`; the
/// request stays resumable (it may have been a stalled link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_transfer_that_stalls_is_ended_by_its_deadline() {
    let mut layout = Layout::new(&["b", "m"]);
    layout.config_mut("b").limits.frame_timeout_ms = 1_500;
    let b = layout.start("b").await;
    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    let id = RequestId::generate();
    let (mut w, mut r) = channel(&conn).await;
    let opening = [
        Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() }),
        Message::Authent(Authent { host_id: "m".into(), capabilities: Capabilities::default() }),
        Message::Request(request(id.clone(), Direction::Push, "stalled.bin", 1 << 20)),
    ];
    for m in &opening {
        w.send(m).await.expect("send");
    }
    for _ in 0..2 {
        next(&mut r).await; // Startup, Authent
    }
    assert!(matches!(next(&mut r).await, Message::Valid(_)));
    // No block follows, and the channel stays open.
    let rec = wait_record(&b.handle(), &id, Status::Interrupted, WITHIN).await;
    let err = rec.error.expect("a cause");
    assert_eq!(err.code, ErrorCode::Connection, "{}", err.message);
    assert!(err.message.contains("limits.frame_timeout_ms"), "{}", err.message);
    // The runner records the state, flushes it, then ends: give it that long.
    let mut open = b.handle().stats().await.open_channels;
    for _ in 0..250 {
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = b.handle().stats().await.open_channels;
    }
    assert_eq!(open, 0, "the runner ended");
    drop((w, r));
    b.shutdown().await;
}

/// A partner's transfers beyond `limits.transfers` wait for room on the
/// requested side (no attempt is spent): every one ends Done, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_over_the_limit_wait_their_turn() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("b").limits.transfers = 1;
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let files: Vec<_> = (0..3)
        .map(|i| {
            let name = format!("f{i}.bin");
            let digest = write_random(&layout.out_dir("a").join(&name), 32 << 20);
            (name, digest)
        })
        .collect();
    let mut ids = Vec::new();
    for (name, digest) in files {
        let rec = a.handle().submit(submit(Direction::Push, "b", &name)).await.expect("submitted");
        ids.push((rec.id, name, digest));
    }
    let mut runs = Vec::new();
    for (id, name, digest) in &ids {
        let rec = wait_final(&a.handle(), id, Duration::from_secs(120)).await;
        assert_eq!(rec.status, Status::Done, "{name}: {:?}", rec.error);
        assert_eq!(rec.attempts, 1, "{name}: waiting for room spent no attempt");
        assert_eq!(file_digest(&layout.in_dir("b").join(name)), *digest);
        let theirs = wait_final(&b.handle(), id, WITHIN).await;
        runs.push((theirs.started_at.expect("started"), theirs.finished_at.expect("finished")));
    }
    runs.sort();
    assert!(runs.windows(2).all(|w| w[0].1 <= w[1].0), "b ran them one at a time: {runs:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Reads the next set-stream frame, within the peer limit.
async fn next_set_frame(r: &mut quinn::RecvStream) -> ferry::protocol::set_stream::SetFrame {
    let read = async {
        let mut header = [0u8; 4];
        r.read_exact(&mut header).await.expect("a frame header");
        let len = codec::set_body_len(header).expect("within the limit");
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.expect("a frame body");
        codec::decode_set_body(&body).expect("a set-stream frame")
    };
    tokio::time::timeout(WITHIN, read).await.expect("answer in time")
}

/// A set stream opened by hand: the frames `frames` after `Open`, then the
/// answers until `Closed` (or the first answer to `Open` when refused).
async fn set_stream(
    conn: &quinn::Connection,
    open: ferry::protocol::set_stream::SetFrame,
    frames: Vec<ferry::protocol::set_stream::SetFrame>,
) -> Vec<ferry::protocol::set_stream::SetFrame> {
    use ferry::protocol::set_stream::SetFrame;
    let (mut s, mut r) = conn.open_bi().await.expect("open a stream");
    let mut bytes = vec![StreamKind::SetStream.byte()];
    bytes.extend(codec::encode_set_frame(&open).expect("encode"));
    s.write_all(&bytes).await.expect("send Open");
    let first = next_set_frame(&mut r).await;
    if first != SetFrame::Opened {
        return vec![first];
    }
    for f in frames.iter().chain([&SetFrame::Close]) {
        s.write_all(&codec::encode_set_frame(f).expect("encode")).await.expect("send");
    }
    let mut answers = Vec::new();
    for _ in 0..64 {
        let a = next_set_frame(&mut r).await;
        let closed = a == SetFrame::Closed;
        answers.push(a);
        if closed {
            break;
        }
    }
    answers
}

/// Node b, and a connection to it as the hostile partner m, with a new set id.
async fn b_and_mallory() -> (Layout, ferry::node::Node, quinn::Connection, RequestId) {
    let layout = Layout::new(&["b", "m"]);
    let b = layout.start("b").await;
    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    (layout, b, conn, RequestId::generate())
}

/// File `index` of `set`, well formed: its member id and its bytes' BLAKE3.
fn member_file(set: &RequestId, index: u32, name: &str, data: &[u8]) -> ferry::protocol::set_stream::SetFrame {
    ferry::protocol::set_stream::SetFrame::File(ferry::protocol::set_stream::StreamedFile {
        index,
        id: ferry::store::member_id(set, index),
        name: name.into(),
        data: data.to_vec(),
        hash: Digest::of(data),
    })
}

/// A partner's set stream delivers only files named as the set's own
/// members, below the rule's folder, with the bytes they announce; every
/// other file is answered with why, and nothing of it is recorded or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_stream_delivers_only_well_formed_files_of_the_set() {
    use ferry::protocol::set_stream::{FileOutcome, SetFrame, StreamedFile};
    use ferry::store::member_id;
    let (layout, b, conn, set) = b_and_mallory().await;
    let file = |index: u32, id: RequestId, name: &str, data: &[u8], hash: Digest| {
        SetFrame::File(StreamedFile { index, id, name: name.into(), data: data.to_vec(), hash })
    };
    let good = b"a file of the set\n";
    let frames = vec![
        file(0, member_id(&set, 0), "ok/x.txt", good, Digest::of(good)),
        // An id that is not the set's member id for its index.
        file(1, RequestId::generate(), "y.txt", good, Digest::of(good)),
        // Out of the folder, absolute, into the work folder.
        file(2, member_id(&set, 2), "../evil.txt", good, Digest::of(good)),
        file(3, member_id(&set, 3), "/etc/evil.txt", good, Digest::of(good)),
        file(4, member_id(&set, 4), ".ferry-work/z.part", good, Digest::of(good)),
        // Bytes that are not what the hash says.
        file(5, member_id(&set, 5), "liar.txt", good, Digest::of(b"something else")),
        // A folder entry that carries data.
        file(6, member_id(&set, 6), "dir/", good, Digest::of(good)),
        // A member id, but past the files the set has.
        file(7, member_id(&set, 7), "past.txt", good, Digest::of(good)),
    ];
    let open = SetFrame::Open { set: set.clone(), rule: "default".into(), hold: false, files: 7, pattern: "**".into() };
    let answers = set_stream(&conn, open, frames).await;
    assert_eq!(answers.last(), Some(&SetFrame::Closed), "{answers:?}");
    let outcomes: std::collections::BTreeMap<String, FileOutcome> = answers
        .iter()
        .filter_map(|a| match a {
            SetFrame::Filed(v) => Some(v.clone()),
            _ => None,
        })
        .flatten()
        .map(|f| (f.id.to_string(), f.outcome))
        .collect();
    assert_eq!(outcomes.len(), 8, "every file is answered: {outcomes:?}");
    let code_of = |i: u32| match &outcomes[&member_id(&set, i).to_string()] {
        FileOutcome::Failed { code, message } => (*code, message.clone()),
        other => panic!("file {i}: {other:?}"),
    };
    assert!(matches!(outcomes[&member_id(&set, 0).to_string()], FileOutcome::Delivered { bytes: 18, .. }));
    for (i, code) in [
        (2, ErrorCode::BadFileName),
        (3, ErrorCode::BadFileName),
        (4, ErrorCode::BadFileName),
        (5, ErrorCode::FileHashMismatch),
        (6, ErrorCode::BadFileName),
        (7, ErrorCode::Protocol),
    ] {
        let (got, message) = code_of(i);
        assert_eq!(got, code, "file {i}: {message}");
    }
    let wrong_id = outcomes.iter().find(|(id, _)| !(0..8).any(|i| member_id(&set, i).to_string() == **id));
    assert!(
        matches!(wrong_id, Some((_, FileOutcome::Failed { code: ErrorCode::Protocol, .. }))),
        "an id that is not the set's: {wrong_id:?}"
    );
    // Only the good file is recorded (as a member of the set the stream
    // recorded) and written; nothing escaped.
    assert_eq!(std::fs::read(layout.in_dir("b").join("ok/x.txt")).expect("delivered"), good);
    let recorded = b.handle().store().list(None).expect("list");
    assert_eq!(recorded.len(), 2, "{:?}", recorded.iter().map(|r| &r.file_name).collect::<Vec<_>>());
    let the_set = recorded.iter().find(|r| r.id == set).expect("the set's record");
    assert_eq!((the_set.status, the_set.partner.as_str()), (Status::Running, "m"));
    assert_eq!(the_set.set.as_ref().map(|i| (i.files, i.done)), Some((7, 1)), "it counts the file delivered");
    let file = recorded.iter().find(|r| r.id == member_id(&set, 0)).expect("the good file's record");
    assert_eq!((file.status, file.partner.as_str()), (Status::Done, "m"));
    assert_eq!(file.member_of.as_ref().map(|m| (&m.set, m.index)), Some((&set, 0)));
    assert!(!layout.in_dir("b").join("../evil.txt").exists() && !Path::new("/etc/evil.txt").exists());
    assert!(!layout.in_dir("b").join("liar.txt").exists() && !layout.in_dir("b").join("dir").exists());
    assert!(work_files(&layout.in_dir("b")).is_empty(), "no work file left");

    // A rule that does not exist, or whose receiving side runs tasks, refuses the stream.
    let open = SetFrame::Open { set, rule: "nope".into(), hold: false, files: 1, pattern: "*".into() };
    let refused = set_stream(&conn, open, vec![]).await;
    assert!(matches!(&refused[..], [SetFrame::Refused { code: ErrorCode::UnknownRule, .. }]), "{refused:?}");
    // A set larger than any set may be is refused, and not recorded (a
    // start-up must never walk four billion members).
    let huge = RequestId::generate();
    let open =
        SetFrame::Open { set: huge.clone(), rule: "default".into(), hold: true, files: u32::MAX, pattern: "*".into() };
    let refused = set_stream(&conn, open, vec![]).await;
    assert!(matches!(&refused[..], [SetFrame::Refused { code: ErrorCode::Protocol, .. }]), "{refused:?}");
    assert!(b.handle().store().get(&huge).expect("read").is_none(), "nothing recorded");
    b.shutdown().await;
}

/// A file sent twice on one set stream is refused the second time: its
/// first copy's bytes are what is delivered and recorded, never bytes
/// written over them after their check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_stream_refuses_a_file_sent_twice_on_it() {
    use ferry::protocol::set_stream::{FileOutcome, SetFrame};
    use ferry::store::member_id;
    let (layout, b, conn, set) = b_and_mallory().await;
    let (first, second) = (b"the bytes checked first\n".to_vec(), b"other bytes, sent after\n".to_vec());
    let copy = |data: &[u8]| member_file(&set, 0, "twice.txt", data);
    let open = SetFrame::Open { set: set.clone(), rule: "default".into(), hold: false, files: 1, pattern: "*".into() };
    let answers = set_stream(&conn, open, vec![copy(&first), copy(&second)]).await;
    assert_eq!(answers.last(), Some(&SetFrame::Closed), "{answers:?}");
    let outcomes: Vec<FileOutcome> = answers
        .iter()
        .filter_map(|a| match a {
            SetFrame::Filed(v) => Some(v.iter().map(|f| f.outcome.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        outcomes.iter().any(|o| matches!(o, FileOutcome::Delivered { hash, .. } if *hash == Digest::of(&first))),
        "the first copy is delivered: {outcomes:?}"
    );
    assert!(
        outcomes.iter().any(
            |o| matches!(o, FileOutcome::Failed { code: ErrorCode::Protocol, message } if message.contains("twice"))
        ),
        "the second is refused: {outcomes:?}"
    );
    assert_eq!(std::fs::read(layout.in_dir("b").join("twice.txt")).expect("delivered"), first);
    let rec = b.handle().store().get(&member_id(&set, 0)).expect("read").expect("recorded");
    assert_eq!((rec.status, rec.hash), (Status::Done, Some(Digest::of(&first))));
    assert!(work_files(&layout.in_dir("b")).is_empty(), "no work file left");
    b.shutdown().await;
}

/// A `Release` must name its set whole: one that names fewer files than
/// the set this partner streamed is refused, and nothing is released or
/// ordered; the whole set's release then delivers every file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_names_part_of_a_set_is_refused() {
    use ferry::protocol::set_stream::{FileOutcome, SetFrame};
    use ferry::store::Step;
    let (layout, b, conn, set) = b_and_mallory().await;
    let frames = (0..3u32)
        .map(|i| member_file(&set, i, &format!("held-{i}.txt"), format!("file {i} of the set\n").as_bytes()))
        .collect();
    let open = SetFrame::Open { set: set.clone(), rule: "default".into(), hold: true, files: 3, pattern: "*".into() };
    let answers = set_stream(&conn, open, frames).await;
    let held = answers
        .iter()
        .filter_map(|a| match a {
            SetFrame::Filed(v) => Some(v.iter().filter(|f| matches!(f.outcome, FileOutcome::Held { .. })).count()),
            _ => None,
        })
        .sum::<usize>();
    assert_eq!(held, 3, "{answers:?}");
    let release = |files: u32| {
        let ask = Ask::Release { set: set.clone(), files, pattern: "*".into() };
        let conn = conn.clone();
        async move { transport::control::ask(&conn, &ask, WITHIN).await.expect("answered") }
    };
    match release(1).await {
        Answer::Refused { code: ErrorCode::Protocol, message } => assert!(message.contains("names 1"), "{message}"),
        other => panic!("a release of 1 of 3 files: {other:?}"),
    }
    let rec = b.handle().store().get(&set).expect("read").expect("the set's record");
    assert_eq!((rec.status, rec.step), (Status::Running, Step::Transfer), "its release is not ordered");
    assert!(!layout.in_dir("b").join("held-0.txt").exists(), "nothing released");
    match release(3).await {
        Answer::Released { delivered } => assert_eq!(delivered, 3),
        other => panic!("the whole set's release: {other:?}"),
    }
    for i in 0..3 {
        assert!(layout.in_dir("b").join(format!("held-{i}.txt")).exists(), "file {i} delivered");
    }
    b.shutdown().await;
}

/// A partner cannot cancel a request this node made to it: a channel that
/// opens on the id of b's own push to m and says only `Cancel` leaves b's
/// record as it was (only b's operators cancel b's requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_cancel_a_request_this_node_made_to_it() {
    let layout = Layout::new(&["b", "m"]);
    let b = layout.start("b").await;
    write_random(&layout.out_dir("b").join("mine.bin"), 1000);
    // m never answers as a node: b's push to it waits.
    let rec = b.handle().submit(submit(Direction::Push, "m", "mine.bin")).await.expect("submitted");
    let conn = connect(&endpoint_of(&layout.dir.path().join("certs"), "m"), layout.config("b").listen, "b").await;
    let (mut w, mut r) = channel(&conn).await;
    for m in [
        Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: rec.id.clone() }),
        Message::Authent(Authent { host_id: "m".into(), capabilities: Capabilities::default() }),
        Message::Cancel(Cancel { reason: "not yours to keep".into() }),
    ] {
        w.send(&m).await.expect("send");
    }
    w.finish();
    // b answers the handshake, then ends the channel.
    for _ in 0..4 {
        match tokio::time::timeout(WITHIN, r.next()).await.expect("in time") {
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    let after = b.handle().store().get(&rec.id).expect("read").expect("b's record");
    assert_ne!(after.status, Status::Cancelled, "{:?}", after.error);
    assert_eq!((after.role, after.partner.as_str()), (ferry::store::Role::Requester, "m"));
    b.shutdown().await;
}
