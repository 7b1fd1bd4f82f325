//! A revoked node: `certs::revoke` lists its certificate in a revocation
//! list signed by the cluster CA; a partner whose config names the list
//! refuses it at every handshake, both when the revoked node dials and when
//! it is dialled, with an error that says "revoked"; a revoked node itself
//! refuses to start with the list; the other partners carry on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry::node::{Node, NodeHandle};
use ferry::protocol::Direction;
use ferry::store::Status;

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
