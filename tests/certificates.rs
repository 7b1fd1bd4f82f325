//! The certificate lifecycle on running nodes.
//!
//! * A revoked node: `certs::revoke` lists its certificate in a revocation
//!   list signed by the cluster CA; a partner whose config names the list
//!   refuses it at every handshake, both when the revoked node dials and
//!   when it is dialled, with an error that says "revoked"; a revoked node
//!   itself refuses to start with the list; the other partners carry on.
//!   A list that changes while the node runs is picked up, and connections
//!   already up with the newly revoked node are closed.
//! * A renewed certificate (`certs::renew`) is used by the running node
//!   from its next handshake, while a transfer over a connection already up
//!   carries on; a pair of files that does not load changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry::certs::{self, IssueOptions};
use ferry::node::{Node, NodeHandle};
use ferry::protocol::Direction;
use ferry::store::Status;
use ferry::transport::reload::unix_now;
use ferry::transport::tls::days_left;

const WITHIN: Duration = Duration::from_secs(60);

/// Polls (bounded) until `node` reports a last error for `partner` that
/// mentions revocation; returns it.
async fn revoked_error(node: &NodeHandle, partner: &str) -> String {
    let deadline = Instant::now() + WITHIN;
    loop {
        let view = node.partners().await;
        let p = view.partners.iter().find(|p| p.id == partner).expect("partner listed");
        if let Some(e) = &p.last_error {
            if e.to_lowercase().contains("revoked") {
                return e.clone();
            }
        }
        assert!(Instant::now() < deadline, "{} never said {partner} is revoked: {p:?}", node.node_id());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_by_its_partners_and_the_others_carry_on() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    let certs = layout.config("a").tls.ca.parent().expect("certs folder").to_path_buf();
    let crl = ferry::certs::revoke(&certs, "c").expect("revoked c");
    assert!(std::fs::read_to_string(certs.join(ferry::certs::REVOKED_FILE)).expect("list").contains(" c"));
    for id in ["a", "b"] {
        layout.config_mut(id).tls.crl = Some(crl.clone());
    }
    // c itself, given the list, refuses to start and says why.
    let mut c_cfg = layout.config("c").clone();
    c_cfg.tls.crl = Some(crl.clone());
    let err = Node::start(c_cfg).await.err().expect("a revoked node does not start with the list");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");

    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await; // without the list: it still tries
    std::fs::write(layout.out_dir("a").join("to-c.bin"), b"for c").expect("source");
    std::fs::write(layout.out_dir("c").join("to-a.bin"), b"from c").expect("source");
    std::fs::write(layout.out_dir("a").join("to-b.bin"), b"for b").expect("source");

    // a dials c: a refuses c's certificate.
    let to_c = a.handle().submit(submit(Direction::Push, "c", "to-c.bin")).await.expect("submitted");
    let e = revoked_error(&a.handle(), "c").await;
    assert!(e.contains("c"), "{e}");
    // c dials a: a refuses c's client certificate, and c is told so.
    let from_c = c.handle().submit(submit(Direction::Push, "a", "to-a.bin")).await.expect("submitted");
    let e = revoked_error(&c.handle(), "a").await;
    assert!(!e.is_empty());
    // Nothing reached a from c, nor c from a.
    assert!(!layout.in_dir("a").join("to-a.bin").exists());
    assert!(!layout.in_dir("c").join("to-c.bin").exists());
    let rec = a.handle().store().get(&to_c.id).expect("store").expect("record");
    assert_ne!(rec.status, Status::Done);
    let rec = c.handle().store().get(&from_c.id).expect("store").expect("record");
    assert_ne!(rec.status, Status::Done);

    // a and b carry on.
    let to_b = a.handle().submit(submit(Direction::Push, "b", "to-b.bin")).await.expect("submitted");
    let done = wait_final(&a.handle(), &to_b.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{done:?}");
    assert_eq!(std::fs::read(layout.in_dir("b").join("to-b.bin")).expect("delivered"), b"for b");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

fn certs_dir(layout: &Layout) -> std::path::PathBuf {
    layout.config("a").tls.ca.parent().expect("certs folder").to_path_buf()
}

/// Days left of the certificate `node` saw `partner` present last.
async fn partner_days(node: &NodeHandle, partner: &str) -> Option<i64> {
    let view = node.partners().await;
    view.partners.iter().find(|p| p.id == partner).expect("partner listed").certificate_days_left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_from_the_next_handshake_while_a_transfer_runs() {
    let layout = Layout::new(&["a", "b", "c"]);
    let dir = certs_dir(&layout);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    assert!((364..=365).contains(&b.handle().stats().await.certificate.days_left));

    // A transfer big enough to be running while b's certificate changes.
    const SIZE: usize = 384 << 20;
    let digest = write_random(&layout.out_dir("a").join("big.bin"), SIZE);
    let big = a.handle().submit(submit(Direction::Push, "b", "big.bin")).await.expect("submitted");
    let deadline = Instant::now() + WITHIN;
    loop {
        let rec = a.handle().store().get(&big.id).expect("store").expect("record");
        if rec.transferred > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the transfer never started: {rec:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old_serial = b.handle().stats().await.certificate.serial;
    let renewed = certs::renew(&dir, "b", &IssueOptions { validity_days: 30, ips: vec![] }).expect("renewed");
    assert_eq!(renewed.old_serial, old_serial);
    let info = b.handle().reload_identity().expect("b reloads its renewed files");
    assert_eq!(info, renewed.new);
    let rec = a.handle().store().get(&big.id).expect("store").expect("record");
    assert!(rec.transferred < rec.size, "the transfer was still running when b switched: {rec:?}");

    // b now says which certificate it presents.
    let stats = b.handle().stats().await;
    assert_eq!(stats.certificate.serial, renewed.new.serial);
    assert!((29..=30).contains(&stats.certificate.days_left), "{stats:?}");
    assert_eq!(stats.certificate_reload_error, None);

    // The transfer over the connection that was up carries on: done in one
    // attempt, on the one connection.
    let done = wait_final(&a.handle(), &big.id, Duration::from_secs(300)).await;
    assert_eq!(done.status, Status::Done, "{done:?}");
    assert_eq!(done.attempts, 1, "the transfer was not interrupted: {done:?}");
    assert_eq!(file_digest(&layout.in_dir("b").join("big.bin")), digest);
    assert_eq!(a.handle().stats().await.connections_by_partner.get("b"), Some(&1));
    let a_sees = partner_days(&a.handle(), "b").await.expect("a saw b's certificate");
    assert!((364..=365).contains(&a_sees), "a's connection to b was made with the old certificate: {a_sees}");

    // A node that connects now gets the renewed certificate.
    let c = layout.start("c").await;
    std::fs::write(layout.out_dir("c").join("hello.txt"), b"hello").expect("source");
    let hello = c.handle().submit(submit(Direction::Push, "b", "hello.txt")).await.expect("submitted");
    let done = wait_final(&c.handle(), &hello.id, WITHIN).await;
    assert_eq!(done.status, Status::Done, "{done:?}");
    let c_sees = partner_days(&c.handle(), "b").await.expect("c saw b's certificate");
    assert!((29..=30).contains(&c_sees), "c's new connection shows the renewed certificate: {c_sees}");
    // b's API serves the renewed certificate too (checked against the cluster CA).
    let answer = api_client(&b).ready().await;
    assert!(answer.is_ok(), "{answer:?}");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_picked_up_without_a_signal_and_a_mismatched_pair_changes_nothing() {
    let layout = Layout::new(&["a", "b"]);
    let dir = certs_dir(&layout);
    let a = layout.start("a").await;
    let before = a.handle().stats().await.certificate;

    // b's key is not a's: the pair does not load, a keeps its certificate and says why.
    std::fs::copy(certs::paths(&dir, "b").key, certs::paths(&dir, "a").key).expect("wrong key");
    let deadline = Instant::now() + WITHIN;
    let error = loop {
        let stats = a.handle().stats().await;
        if let Some(e) = stats.certificate_reload_error {
            assert_eq!(
                (stats.certificate.serial, stats.certificate.not_after),
                (before.serial.clone(), before.not_after),
                "a kept its certificate"
            );
            break e;
        }
        assert!(Instant::now() < deadline, "a never noticed its key changed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("match"), "{error}");

    // Renewed (a new pair): picked up once the files settle.
    let renewed = certs::renew(&dir, "a", &IssueOptions { validity_days: 10, ips: vec![] }).expect("renewed");
    let deadline = Instant::now() + WITHIN;
    loop {
        let stats = a.handle().stats().await;
        if stats.certificate.serial == renewed.new.serial {
            assert_eq!(stats.certificate_reload_error, None);
            assert_eq!(stats.certificate.days_left, days_left(renewed.new.not_after, unix_now()));
            break;
        }
        assert!(Instant::now() < deadline, "a never picked up its renewed files: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it works: b accepts the renewed certificate.
    let b = layout.start("b").await;
    std::fs::write(layout.out_dir("a").join("x.txt"), b"x").expect("source");
    let x = a.handle().submit(submit(Direction::Push, "b", "x.txt")).await.expect("submitted");
    assert_eq!(wait_final(&a.handle(), &x.id, WITHIN).await.status, Status::Done);
    for n in [a, b] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_node_cuts_it_off_without_a_restart() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    let dir = certs_dir(&layout);
    // a runs with a list from the start (c is on it); b is revoked later.
    let crl = certs::revoke(&dir, "c").expect("revoked c");
    layout.config_mut("a").tls.crl = Some(crl.clone());
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    std::fs::write(layout.out_dir("b").join("one.txt"), b"one").expect("source");
    let one = b.handle().submit(submit(Direction::Push, "a", "one.txt")).await.expect("submitted");
    assert_eq!(wait_final(&b.handle(), &one.id, WITHIN).await.status, Status::Done);
    assert_eq!(a.handle().stats().await.connections_by_partner.get("b"), Some(&1));

    certs::revoke(&dir, "b").expect("revoked b");
    // a rereads the list on its own and closes the connection b had.
    let e = revoked_error(&a.handle(), "b").await;
    assert!(e.contains("reloaded"), "{e}");
    let deadline = Instant::now() + WITHIN;
    while a.handle().stats().await.connections_by_partner.get("b").copied().unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "a kept its connection with revoked b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // b cannot get anything through any more.
    std::fs::write(layout.out_dir("b").join("two.txt"), b"two").expect("source");
    let two = b.handle().submit(submit(Direction::Push, "a", "two.txt")).await.expect("submitted");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!layout.in_dir("a").join("two.txt").exists());
    let rec = b.handle().store().get(&two.id).expect("store").expect("record");
    assert_ne!(rec.status, Status::Done, "{rec:?}");
    for n in [a, b] {
        n.shutdown().await;
    }
}
