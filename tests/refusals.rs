//! Refusals between real nodes: each ends with a clear error on the side
//! that asked, and no file is written on the other.
//!
//! Where the misbehaviour cannot come from a well-behaved node (a lying
//! Authent, an escaping file name, an oversized frame), the test plays the
//! peer by hand with a real certificate over a real QUIC connection.

mod common;

use std::time::Duration;

use common::peer::{channel, connect, endpoint_of, next};
use common::*;
use ferry::protocol::codec::MAX_FRAME_BODY;
use ferry::protocol::*;
use ferry::store::Status;
use ferry::transport::{FrameReader, FrameWriter};

const WITHIN: Duration = Duration::from_secs(30);

/// A hand-driven peer: node `who`'s certificate, a real connection to `to`.
async fn raw_peer(layout: &Layout, who: &str, to: &str) -> (quinn::Endpoint, quinn::Connection) {
    let ep = endpoint_of(&layout.dir.path().join("certs"), who);
    let conn = connect(&ep, layout.config(to).listen, to).await;
    (ep, conn)
}

/// Startup and Authent (as `claim`), returning the request id used.
async fn handshake(w: &mut FrameWriter, r: &mut FrameReader, claim: &str) -> RequestId {
    let id = RequestId::generate();
    w.send(&Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id.clone() })).await.expect("send");
    assert!(matches!(next(r).await, Message::Startup(_)));
    w.send(&Message::Authent(Authent { host_id: claim.into(), capabilities: Capabilities::default() }))
        .await
        .expect("send");
    id
}

fn push_request(id: RequestId, file: &str) -> Request {
    Request {
        request_id: id,
        rule: "default".into(),
        direction: Direction::Push,
        file_name: file.into(),
        size: 5,
        block_size: DEFAULT_BLOCK_SIZE,
        restart_offset: u64::MAX,
        prefix_hash: None,
        delivered: None,
        options: TransferOptions::default(),
        external_job_id: None,
        transfer_info: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_partner_is_refused() {
    let mut layout = Layout::new(&["a", "b"]);
    layout.config_mut("b").partners.clear();
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("f"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "f")).await.expect("a knows b");
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::InError);
    let err = r.error.expect("error recorded");
    assert_eq!(err.code, ErrorCode::UnknownPartner, "{}", err.message);
    assert!(err.message.contains("does not know partner a"), "{}", err.message);
    assert!(delivered(&layout.in_dir("b")).is_empty());
    assert!(b.handle().store().get(&rec.id).expect("store").is_none(), "b never recorded it");
    // And a's own API refuses a partner it does not know.
    let e = a.handle().submit(submit(Direction::Push, "zed", "f")).await.expect_err("unknown to a");
    assert_eq!(e.code(), "unknown_partner");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let mut layout = Layout::new(&["a", "b"]);
    let foreign = layout.dir.path().join("foreign-certs");
    ferry::certs::init(&foreign, &["a".to_string()]).expect("foreign ca");
    let p = ferry::certs::paths(&foreign, "a");
    // Node a comes from another cluster: its certificate and CA are foreign to b.
    let tls = &mut layout.config_mut("a").tls;
    (tls.cert, tls.key, tls.ca) = (p.cert, p.key, p.ca);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("f"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "f")).await.expect("submitted");
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::InError);
    let err = r.error.expect("error recorded");
    assert_eq!(err.code, ErrorCode::Handshake, "{}", err.message);
    assert!(err.message.contains("handshake") || err.message.contains("certificate"), "{}", err.message);
    assert!(delivered(&layout.in_dir("b")).is_empty());
    assert_eq!(b.handle().stats().await.connections, 0, "b kept no connection from the foreign node");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authent_that_differs_from_the_certificate_is_refused() {
    let layout = Layout::new(&["a", "b", "c"]);
    let b = layout.start("b").await;
    let (_ep, conn) = raw_peer(&layout, "a", "b").await;
    let (mut w, mut r) = channel(&conn).await;
    let id = handshake(&mut w, &mut r, "c").await;
    match next(&mut r).await {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::AuthentMismatch);
            assert!(e.message.contains("\"c\"") && e.message.contains("\"a\""), "{}", e.message);
        }
        other => panic!("expected an Error, got {other:?}"),
    }
    assert!(b.handle().store().get(&id).expect("store").is_none());
    assert!(delivered(&layout.in_dir("b")).is_empty());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_that_escapes_the_rule_folder_is_refused() {
    let layout = Layout::new(&["a", "b"]);
    let b = layout.start("b").await;
    let (_ep, conn) = raw_peer(&layout, "a", "b").await;
    // A relative path below the folder is a file set's member; these climb,
    // start at the root, enter a work folder or are not names at all, and
    // a folder entry (`dir/`) that announces data is refused too.
    for name in ["../escape", "/tmp/escape", "sub/../../escape", "sub//escape", ".ferry-work/x", "..", "a\0b", "dir/"] {
        let (mut w, mut r) = channel(&conn).await;
        let id = handshake(&mut w, &mut r, "a").await;
        assert!(matches!(next(&mut r).await, Message::Authent(_)));
        w.send(&Message::Request(push_request(id.clone(), name))).await.expect("send");
        match next(&mut r).await {
            Message::Refused(f) => assert_eq!(f.code, ErrorCode::BadFileName, "{name:?}: {}", f.message),
            other => panic!("{name:?}: expected Refused, got {other:?}"),
        }
        assert!(b.handle().store().get(&id).expect("store").is_none());
    }
    assert!(delivered(&layout.in_dir("b")).is_empty());
    assert!(!layout.dir.path().join("b").join("escape").exists());
    // A pull may name a path below the send folder (a pulled file set's
    // file), never through a link, and a set's file must still be what the
    // set resolved (size and modification time).
    std::fs::create_dir_all(layout.out_dir("b").join("sub")).expect("mkdir");
    std::fs::write(layout.out_dir("b").join("sub/real.csv"), b"real").expect("write");
    std::os::unix::fs::symlink("/etc", layout.out_dir("b").join("esc")).expect("symlink");
    let mtime = std::fs::metadata(layout.out_dir("b").join("sub/real.csv")).expect("stat").modified().expect("mtime");
    let ns = mtime.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() as u64;
    let as_resolved = |size, modified_ns| Some(ferry::protocol::AsResolved { size, modified_ns });
    for (name, resolved, refused) in [
        ("esc/passwd", None, Some((ErrorCode::FileNotFound, "symbolic link"))),
        ("esc/", None, Some((ErrorCode::FileNotFound, "symbolic link"))),
        ("sub/real.csv", as_resolved(3, ns), Some((ErrorCode::SourceChanged, "size went from 3 to 4"))),
        ("sub/real.csv", as_resolved(4, ns + 1), Some((ErrorCode::SourceChanged, "modification time"))),
        ("sub/real.csv", as_resolved(4, ns), None),
        ("sub/real.csv", None, None),
        ("sub/", None, None),
    ] {
        let (mut w, mut r) = channel(&conn).await;
        let id = handshake(&mut w, &mut r, "a").await;
        assert!(matches!(next(&mut r).await, Message::Authent(_)));
        let mut pull =
            Request { direction: Direction::Pull, size: 0, restart_offset: 0, ..push_request(id.clone(), name) };
        pull.options.as_resolved = resolved;
        w.send(&Message::Request(pull)).await.expect("send");
        match (next(&mut r).await, refused) {
            (Message::Refused(f), Some((code, why))) => {
                assert_eq!(f.code, code, "{name:?}: {}", f.message);
                assert!(f.message.contains(why), "{name:?}: {}", f.message);
            }
            (Message::Valid(v), None) => assert_eq!(v.size, if name.ends_with('/') { 0 } else { 4 }, "{name:?}"),
            (other, want) => panic!("pull of {name:?}: expected {want:?}, got {other:?}"),
        }
    }
    // The node's own API refuses such names too, before anything is queued.
    let a = layout.start("a").await;
    let e = a.handle().submit(submit(Direction::Push, "b", "../x")).await.expect_err("refused");
    assert_eq!(e.code(), "bad_file_name");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_the_partner_may_not_use_is_refused() {
    let mut layout = Layout::new(&["a", "b"]);
    for (node, allowed) in [("a", "*"), ("b", "c")] {
        let mut rule = layout.config(node).rules[0].clone();
        rule.name = "restricted".into();
        rule.partners = vec![allowed.into()];
        layout.config_mut(node).rules.push(rule);
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("f"), 1000);
    let mut s = submit(Direction::Push, "b", "f");
    s.rule = "restricted".into();
    let rec = a.handle().submit(s).await.expect("a allows it");
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::InError);
    let err = r.error.expect("error");
    assert_eq!(err.code, ErrorCode::RuleNotAllowed, "{}", err.message);
    assert!(err.message.contains("partner a may not use rule \"restricted\""), "{}", err.message);
    assert!(delivered(&layout.in_dir("b")).is_empty());
    assert!(work_files(&layout.in_dir("b")).is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_ends_only_its_channel() {
    let layout = Layout::new(&["a", "b"]);
    let b = layout.start("b").await;
    let (_ep, conn) = raw_peer(&layout, "a", "b").await;
    let (mut w, mut r) = channel(&conn).await;
    let too_big = (MAX_FRAME_BODY as u32 + 1).to_be_bytes();
    w.send_raw(&too_big).await.expect("send header");
    match next(&mut r).await {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadFrame);
            assert!(e.message.contains("exceeds"), "{}", e.message);
        }
        other => panic!("expected an Error, got {other:?}"),
    }
    // A garbage frame of legal size is refused the same way.
    let (mut w2, mut r2) = channel(&conn).await;
    w2.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.expect("send garbage");
    assert!(matches!(next(&mut r2).await, Message::Error(e) if e.code == ErrorCode::BadFrame));
    // The connection, and other channels on it, still work.
    let (mut w3, mut r3) = channel(&conn).await;
    handshake(&mut w3, &mut r3, "a").await;
    assert!(matches!(next(&mut r3).await, Message::Authent(a) if a.host_id == "b"));
    assert!(conn.close_reason().is_none());
    assert!(delivered(&layout.in_dir("b")).is_empty());
    b.shutdown().await;
}

/// Streams whose first byte is not a known kind, and control asks that are
/// malformed or oversized, are refused one by one; the connection and
/// heartbeats on it keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_streams_and_bad_control_asks_are_refused_alone() {
    use ferry::protocol::control::{Answer, Ask};
    let layout = Layout::new(&["a", "b"]);
    let b = layout.start("b").await;
    let (_ep, conn) = raw_peer(&layout, "a", "b").await;
    let limit = Duration::from_secs(10);
    // An unknown kind byte: the stream is reset, nothing is read from it.
    let (mut s, mut r) = conn.open_bi().await.expect("open");
    s.write_all(b"Xjunk").await.expect("write");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(limit, r.read(&mut buf)).await.expect("answered in time");
    assert!(matches!(read, Err(quinn::ReadError::Reset(_))), "{read:?}");
    // A control frame announcing more than the control limit.
    let (mut s, mut r) = conn.open_bi().await.expect("open");
    let mut frame = vec![StreamKind::Control.byte()];
    frame.extend_from_slice(&(ferry::protocol::control::MAX_CONTROL_BODY as u32 + 1).to_be_bytes());
    s.write_all(&frame).await.expect("write");
    let answer = tokio::time::timeout(limit, r.read_to_end(4096)).await.expect("in time").expect("an answer");
    let answer: Answer = ferry::protocol::codec::decode_control(&answer[4..]).expect("decodes");
    assert!(
        matches!(&answer, Answer::Refused { code: ErrorCode::Protocol, message } if message.contains("exceeds")),
        "{answer:?}"
    );
    // The connection still answers heartbeats.
    let pong = ferry::transport::control::ask(&conn, &Ask::Ping, limit).await.expect("pong");
    assert_eq!(pong, Answer::Pong);
    // A relay request naming the asker itself is refused with a reason.
    let a = ferry::transport::control::ask(&conn, &Ask::RelayDialBack { target: "a".into() }, limit).await;
    assert!(matches!(a, Ok(Answer::Refused { .. })), "{a:?}");
    assert!(conn.close_reason().is_none());
    b.shutdown().await;
}
