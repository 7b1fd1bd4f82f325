//! The cluster in one process: three (or more) real nodes on loopback.
//! Partner availability and the partner list, aliases and groups, one
//! connection per pair under load in both directions, submit anywhere with
//! the cluster-wide view, and reverse connect when one side's address is
//! unreachable (the in-process stand-in for a firewall; the namespace tests
//! under `cluster/` use real nftables rules).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ferry::actors::availability::PartnerState;
use ferry::config::Group;
use ferry::model::Submit;
use ferry::node::{Node, NodeHandle};
use ferry::protocol::{Direction, ErrorCode, RequestId};
use ferry::store::{Role, Status};

const WITHIN: Duration = Duration::from_secs(60);

/// Short timers so waits and probes happen within a test's patience.
fn quick(layout: &mut Layout) {
    for c in &mut layout.configs {
        c.connect_timeout_ms = 800;
        c.cluster.heartbeat_ms = 200;
        c.cluster.heartbeat_timeout_ms = 1_000;
        c.cluster.probe_interval_ms = 300;
        c.cluster.reverse_connect_timeout_ms = 3_000;
        c.retry.initial_delay_ms = 100;
        c.retry.max_delay_ms = 500;
    }
}

/// A UDP address nothing answers on: bound, then released.
fn black_hole() -> SocketAddr {
    ferry::cluster::free_udp().expect("free port")
}

/// `from` gets an address for `to` that nothing answers on (a firewall
/// dropping everything `from` sends to `to`).
fn blind(layout: &mut Layout, from: &str, to: &str) {
    layout.config_mut(from).partners.iter_mut().find(|p| p.id == to).expect("partner").address = black_hole();
}

async fn wait_until<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn done_on_both(a: &NodeHandle, b: &NodeHandle, id: &RequestId) {
    let ra = wait_final(a, id, WITHIN).await;
    assert_eq!(ra.status, Status::Done, "{:?}", ra.error);
    wait_record(b, id, Status::Done, WITHIN).await;
}

fn job_log_text(node: &NodeHandle, id: &RequestId) -> String {
    node.store().job_log(id).expect("log").iter().map(|l| l.message.clone()).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_transfer_between_every_pair_and_list_their_partners() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    quick(&mut layout);
    let nodes = [layout.start("a").await, layout.start("b").await, layout.start("c").await];
    let ids = ["a", "b", "c"];
    for (i, from) in ids.iter().enumerate() {
        for (j, to) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let name = format!("{from}-to-{to}");
            let digest = write_random(&layout.out_dir(from).join(&name), 300_000);
            let rec = nodes[i].handle().submit(submit(Direction::Push, to, &name)).await.expect("submit");
            done_on_both(&nodes[i].handle(), &nodes[j].handle(), &rec.id).await;
            assert_eq!(file_digest(&layout.in_dir(to).join(&name)), digest, "{name}");
        }
    }
    // Every node knows both partners as available, with a round-trip time
    // from a heartbeat.
    for n in &nodes {
        let h = n.handle();
        let view = wait_until("heartbeats answered", WITHIN, async || {
            let v = h.partners().await;
            v.partners.iter().all(|p| p.state == PartnerState::Available && p.rtt_ms.is_some()).then_some(v)
        })
        .await;
        assert_eq!(view.partners.len(), 2, "{view:?}");
        assert!(view.partners.iter().all(|p| p.connections == 1 && p.since_ms.is_some()), "{view:?}");
    }
    // A partner that stops is seen unavailable, with the cause.
    let [a, b, c] = nodes;
    c.shutdown().await;
    let ha = a.handle();
    let p = wait_until("c seen unavailable", WITHIN, async || {
        let v = ha.partners().await;
        v.partners.into_iter().find(|p| p.id == "c" && p.state == PartnerState::Unavailable)
    })
    .await;
    assert!(p.last_error.is_some(), "{p:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_an_unavailable_partner_wait_without_spending_attempts() {
    let mut layout = Layout::new(&["a", "b"]);
    quick(&mut layout);
    layout.config_mut("a").retry.attempts = 2;
    let a = layout.start("a").await;
    let digest = write_random(&layout.out_dir("a").join("waits"), 100_000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "waits")).await.expect("submit");
    let ha = a.handle();
    // The first attempt finds b down; then the request waits, queued.
    wait_until("b unavailable", WITHIN, async || ha.availability_of("b").eq(&PartnerState::Unavailable).then_some(()))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // ten probe intervals
    let r = a.handle().store().get(&rec.id).expect("store").expect("record");
    assert!(matches!(r.status, Status::ToSubmit | Status::Interrupted), "{r:?}");
    assert_eq!(r.attempts, 1, "no attempt is spent while b is unavailable");
    assert!(job_log_text(&a.handle(), &rec.id).contains("waiting: partner b is unavailable"));
    // b comes back: the probe finds it and the request runs.
    let b = layout.start("b").await;
    done_on_both(&a.handle(), &b.handle(), &rec.id).await;
    assert_eq!(file_digest(&layout.in_dir("b").join("waits")), digest);
    let r = a.handle().store().get(&rec.id).expect("store").expect("record");
    assert_eq!(r.attempts, 2, "one failed attempt, one that ran");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_only_as_long_as_its_partner_wait_allows() {
    let mut layout = Layout::new(&["a", "b"]);
    quick(&mut layout);
    layout.config_mut("a").cluster.partner_wait_secs = 2;
    let a = layout.start("a").await;
    write_random(&layout.out_dir("a").join("never"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "never")).await.expect("submit");
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::InError);
    let e = r.error.expect("cause");
    assert_eq!(e.code, ErrorCode::PartnerUnavailable);
    assert!(e.message.contains("partner b stayed unavailable") && e.message.contains("last cause"), "{}", e.message);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_groups_resolve_to_members_and_fail_over_before_data_moved() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    quick(&mut layout);
    {
        let a = layout.config_mut("a");
        a.partners.iter_mut().find(|p| p.id == "b").expect("b").aliases = vec!["bravo".into()];
        a.groups = vec![Group { name: "backends".into(), members: vec!["b".into(), "c".into()] }];
        a.rules[0].partners = vec!["backends".into()];
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    // An alias names the partner itself.
    write_random(&layout.out_dir("a").join("by-alias"), 10_000);
    let rec = a.handle().submit(submit(Direction::Push, "bravo", "by-alias")).await.expect("submit");
    assert_eq!((rec.partner.as_str(), rec.group.as_deref()), ("b", None));
    done_on_both(&a.handle(), &b.handle(), &rec.id).await;
    // A group goes to an available member, and the choice is recorded.
    write_random(&layout.out_dir("a").join("to-group"), 10_000);
    let rec = a.handle().submit(submit(Direction::Push, "backends", "to-group")).await.expect("submit");
    assert_eq!(rec.group.as_deref(), Some("backends"));
    assert!(["b", "c"].contains(&rec.partner.as_str()), "{rec:?}");
    let first = rec.partner.clone();
    let member = if first == "b" { &b } else { &c };
    done_on_both(&a.handle(), &member.handle(), &rec.id).await;
    assert!(job_log_text(&a.handle(), &rec.id).contains("of group backends chosen"));
    // With b gone, a group request goes to c: at once if b is known to be
    // down, or moved there before any data went to b.
    b.shutdown().await;
    let ha = a.handle();
    wait_until("b unavailable", WITHIN, async || ha.availability_of("b").eq(&PartnerState::Unavailable).then_some(()))
        .await;
    let digest = write_random(&layout.out_dir("a").join("fail-over"), 10_000);
    let rec = a.handle().submit(submit(Direction::Push, "backends", "fail-over")).await.expect("submit");
    assert_eq!(rec.partner, "c", "an unavailable member is not chosen");
    done_on_both(&a.handle(), &c.handle(), &rec.id).await;
    assert_eq!(file_digest(&layout.in_dir("c").join("fail-over")), digest);
    // A name that is neither a partner, an alias nor a group is refused.
    let err = a.handle().submit(submit(Direction::Push, "unknown-group", "x")).await.expect_err("unknown");
    assert_eq!(err.code(), "unknown_partner");
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_request_with_data_at_its_member_stays_with_it() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    quick(&mut layout);
    for c in &mut layout.configs {
        c.restart_interval_bytes = 1 << 20;
    }
    layout.config_mut("a").groups = vec![Group { name: "backends".into(), members: vec!["b".into(), "c".into()] }];
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    // Only b is known available when the request is submitted (a learns
    // of b through a transfer; c stays unknown to a).
    write_random(&layout.out_dir("a").join("warm"), 1000);
    let warm = a.handle().submit(submit(Direction::Push, "b", "warm")).await.expect("submit");
    done_on_both(&a.handle(), &b.handle(), &warm.id).await;
    let digest = write_random(&layout.out_dir("a").join("big"), 256 << 20);
    let rec = a.handle().submit(submit(Direction::Push, "backends", "big")).await.expect("submit");
    assert_eq!(rec.partner, "b", "the available member is chosen over one not yet known");
    // Pause the request as soon as b holds a durable part of the file,
    // then take b away.
    let (ha, hb) = (a.handle(), b.handle());
    wait_until("a restart point at b", WITHIN, async || hb.store().get(&rec.id).ok()??.restart_point).await;
    a.handle().stop(&rec.id).await.expect("stop");
    let r = wait_until("stopped", WITHIN, async || {
        let r = ha.store().get(&rec.id).ok()??;
        (r.status != Status::Running).then_some(r)
    })
    .await;
    assert_eq!(r.status, Status::Interrupted, "stopped before it finished: {r:?}");
    drop(hb); // the store closes with b's last handle, so b can start again
    b.shutdown().await;
    wait_until("b unavailable", WITHIN, async || ha.availability_of("b").eq(&PartnerState::Unavailable).then_some(()))
        .await;
    a.handle().restart(&rec.id).await.expect("restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = a.handle().store().get(&rec.id).expect("store").expect("record");
    assert_eq!(r.partner, "b", "the member holding the partial file keeps the request: {r:?}");
    assert!(!r.status.is_final(), "{r:?}");
    assert!(job_log_text(&a.handle(), &rec.id).contains("waiting: partner b is unavailable"));
    let b = layout.start("b").await;
    done_on_both(&a.handle(), &b.handle(), &rec.id).await;
    assert_eq!(file_digest(&layout.in_dir("b").join("big")), digest);
    assert!(!layout.in_dir("c").join("big").exists());
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_in_both_directions_share_one_connection() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let (ha, hb) = (a.handle(), b.handle());
    let mut runs = Vec::new();
    for i in 0..50 {
        write_random(&layout.out_dir("a").join(format!("ab{i}")), 50_000 + i * 100);
        write_random(&layout.out_dir("b").join(format!("ba{i}")), 50_000 + i * 100);
    }
    // Both nodes submit at the same moment, so both may dial at once.
    let (ra, rb) = tokio::join!(
        async {
            let mut v = Vec::new();
            for i in 0..50 {
                v.push(ha.submit(submit(Direction::Push, "b", &format!("ab{i}"))).await.expect("submit").id);
            }
            v
        },
        async {
            let mut v = Vec::new();
            for i in 0..50 {
                v.push(hb.submit(submit(Direction::Push, "a", &format!("ba{i}"))).await.expect("submit").id);
            }
            v
        }
    );
    let mut peak = 0;
    for id in &ra {
        peak = peak.max(ha.stats().await.connections);
        runs.push(wait_final(&ha, id, WITHIN).await);
    }
    for id in &rb {
        runs.push(wait_final(&hb, id, WITHIN).await);
    }
    assert!(runs.iter().all(|r| r.status == Status::Done), "{:?}", runs.iter().find(|r| r.status != Status::Done));
    assert!(peak <= 2, "at most the two crossing dials exist at once: {peak}");
    // Duplicates close once idle: one connection per pair remains, and
    // both nodes see the same one.
    wait_until("one connection per pair", WITHIN, async || {
        let (sa, sb) = (ha.stats().await, hb.stats().await);
        (sa.connections_by_partner.get("b") == Some(&1) && sb.connections_by_partner.get("a") == Some(&1)).then_some(())
    })
    .await;
    let sa = ha.stats().await;
    assert_eq!((sa.connections, sa.open_channels), (1, 0), "{sa:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_submitted_anywhere_runs_on_its_source_and_every_node_reports_it() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    quick(&mut layout);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    let digest = write_random(&layout.out_dir("b").join("b-to-c"), 2 << 20);
    let s = Submit { source: Some("b".into()), target: Some("c".into()), ..submit(Direction::Push, "", "b-to-c") };
    let placed = a.handle().submit_anywhere(s).await.expect("handed over");
    assert_eq!(placed.holder, "b");
    done_on_both(&b.handle(), &c.handle(), &placed.id).await;
    assert_eq!(file_digest(&layout.in_dir("c").join("b-to-c")), digest);
    let rec = b.handle().store().get(&placed.id).expect("store").expect("record");
    assert_eq!((rec.role, rec.direction, rec.partner.as_str()), (Role::Requester, Direction::Push, "c"));
    assert_eq!(rec.submitted_on.as_deref(), Some("a"));
    assert!(a.handle().store().get(&placed.id).expect("store").is_none(), "a only took the submission");
    for n in [&a, &b, &c] {
        let v = n.handle().cluster_view(&placed.id).await;
        assert_eq!(v.holder.as_deref(), Some("b"), "{v:?}");
        assert_eq!(v.status.as_deref(), Some("Done"), "{v:?}");
        assert!(v.agreed, "{v:?}");
        let nodes: Vec<&str> = v.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(nodes, ["b", "c"]);
    }
    // The target may be the node asked: it pulls from the source.
    write_random(&layout.out_dir("b").join("b-to-a"), 1000);
    let s = Submit { source: Some("b".into()), target: Some("a".into()), ..submit(Direction::Push, "", "b-to-a") };
    let placed = a.handle().submit_anywhere(s).await.expect("pull");
    assert_eq!(placed.holder, "a");
    done_on_both(&a.handle(), &b.handle(), &placed.id).await;
    // A source that does not have the file refuses, and says why.
    let s = Submit { source: Some("c".into()), target: Some("b".into()), ..submit(Direction::Push, "", "missing") };
    let err = a.handle().submit_anywhere(s).await.expect_err("no such file on c");
    assert!(err.to_string().contains("node c refused"), "{err}");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// a cannot reach b at the address it has for b, but b can reach a, and c
/// reaches both: a's requests to b run on a connection b dials back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_connect_through_a_relay_carries_pushes_and_pulls() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    quick(&mut layout);
    blind(&mut layout, "a", "b");
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    // a is not connected to c yet: reverse connect dials the relay itself.
    let digest = write_random(&layout.out_dir("a").join("pushed"), 1 << 20);
    let started = Instant::now();
    let push = a.handle().submit(submit(Direction::Push, "b", "pushed")).await.expect("submit");
    done_on_both(&a.handle(), &b.handle(), &push.id).await;
    let took = started.elapsed();
    assert_eq!(file_digest(&layout.in_dir("b").join("pushed")), digest);
    let log = job_log_text(&a.handle(), &push.id);
    assert!(log.contains("reverse connect via c"), "{log}");
    assert_eq!(wait_final(&a.handle(), &push.id, WITHIN).await.attempts, 1, "no attempt lost to the failed dial");
    eprintln!("push through reverse connect took {took:?} (direct dial limit 800 ms)");
    let digest = write_random(&layout.out_dir("b").join("pulled"), 1 << 20);
    let pull = a.handle().submit(submit(Direction::Pull, "b", "pulled")).await.expect("submit");
    done_on_both(&a.handle(), &b.handle(), &pull.id).await;
    assert_eq!(file_digest(&layout.in_dir("a").join("pulled")), digest);
    assert!(job_log_text(&a.handle(), &pull.id).contains("reverse connect"));
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_neither_direction_works_the_request_fails_naming_both() {
    let mut layout = Layout::new(&["a", "b", "c"]);
    quick(&mut layout);
    blind(&mut layout, "a", "b");
    blind(&mut layout, "b", "a");
    layout.config_mut("a").cluster.partner_wait_secs = 3;
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let c = layout.start("c").await;
    write_random(&layout.out_dir("a").join("stuck"), 1000);
    let started = Instant::now();
    let rec = a.handle().submit(submit(Direction::Push, "b", "stuck")).await.expect("submit");
    let r = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(r.status, Status::InError);
    let e = r.error.expect("cause");
    assert_eq!(e.code, ErrorCode::PartnerUnavailable);
    assert!(e.message.contains("direct dial to b"), "{}", e.message);
    assert!(e.message.contains("reverse connect failed") && e.message.contains("could not dial back"), "{}", e.message);
    eprintln!("failed after {:?}: {}", started.elapsed(), e.message);
    assert!(b.handle().store().get(&rec.id).expect("store").is_none(), "b never saw the request");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// A node behind a firewall keeps an outbound connection to a partner, so
/// that partner reaches it directly, without reverse connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_makes_a_firewalled_node_reachable() {
    let mut layout = Layout::new(&["a", "b"]);
    quick(&mut layout);
    blind(&mut layout, "a", "b");
    layout.config_mut("b").partners[0].keep_connected = true;
    let a = layout.start("a").await;
    let b: Node = layout.start("b").await;
    let ha = a.handle();
    wait_until("b's kept connection", WITHIN, async || {
        (ha.availability_of("b") == PartnerState::Available).then_some(())
    })
    .await;
    write_random(&layout.out_dir("a").join("kept"), 1000);
    let rec = a.handle().submit(submit(Direction::Push, "b", "kept")).await.expect("submit");
    done_on_both(&a.handle(), &b.handle(), &rec.id).await;
    assert!(job_log_text(&a.handle(), &rec.id).contains("connection dialed by b"));
    a.shutdown().await;
    b.shutdown().await;
}

/// A request cancelled while its partner is down reaches the partner when
/// it is back: its record becomes Cancelled and its partial file goes (the
/// simulation operator_commands, seed 3, found the partner keeping both for
/// good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_partner_that_was_down() {
    let mut layout = Layout::new(&["a", "b"]);
    quick(&mut layout);
    for c in &mut layout.configs {
        c.restart_interval_bytes = 1 << 20;
    }
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    write_random(&layout.out_dir("a").join("big"), 256 << 20);
    let rec = a.handle().submit(submit(Direction::Push, "b", "big")).await.expect("submit");
    let (ha, hb) = (a.handle(), b.handle());
    wait_until("a restart point at b", WITHIN, async || hb.store().get(&rec.id).ok()??.restart_point).await;
    let work = layout.in_dir("b").join(".ferry-work").join(format!("{}.part", rec.id));
    assert!(work.exists(), "b holds a partial file");
    // b goes away mid-transfer; a's request is interrupted and waits.
    drop(hb);
    b.shutdown().await;
    wait_until("a's request stopped running", WITHIN, async || {
        let r = ha.store().get(&rec.id).ok()??;
        (r.status != Status::Running).then_some(())
    })
    .await;
    let cancelled = ha.cancel(&rec.id).await.expect("cancel");
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(
        ha.store().notices_owed().expect("store"),
        vec![(rec.id.clone(), ferry::store::Notice::Cancel)],
        "b is owed a notice"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(work.exists(), "b is down: nothing can have told it yet");
    let b = layout.start("b").await;
    let hb = b.handle();
    let r = wait_until("b learns of the cancel", WITHIN, async || {
        let r = hb.store().get(&rec.id).ok()??;
        (r.status == Status::Cancelled).then_some(r)
    })
    .await;
    assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::Cancelled));
    wait_until("b removes the partial file", WITHIN, async || (!work.exists()).then_some(())).await;
    wait_until("the notice is no longer owed", WITHIN, async || {
        ha.store().notices_owed().ok()?.is_empty().then_some(())
    })
    .await;
    assert!(job_log_text(&ha, &rec.id).contains("partner b told of the cancellation"));
    assert!(!layout.in_dir("b").join("big").exists());
    drop(hb);
    a.shutdown().await;
    b.shutdown().await;
}

/// Requests queued in thousands for a partner that is down start soon
/// after it comes back: every submission wakes the Commander, and those
/// wakes must not pile up ahead of the one that says the partner is back
/// (with 10,000 queued, nothing moved for about 145 s). Prints how long
/// the first start and the last end took; the bound only catches a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_queued_for_a_returning_partner_start_without_a_stall() {
    const QUEUED: usize = 10_000;
    let mut layout = Layout::new(&["a", "b"]);
    quick(&mut layout);
    let a = layout.start("a").await;
    std::fs::write(layout.out_dir("a").join("small"), b"small").expect("source");
    let mut ids = Vec::new();
    for _ in 0..QUEUED {
        ids.push(a.handle().submit(submit(Direction::Push, "b", "small")).await.expect("submit").id);
    }
    let ha = a.handle();
    wait_until("b unavailable", WITHIN, async || ha.availability_of("b").eq(&PartnerState::Unavailable).then_some(()))
        .await;
    let back = Instant::now();
    let b = layout.start("b").await;
    let first = wait_until("a first request starts", WITHIN, async || {
        let q = ferry::store::ListQuery { status: Some(Status::Done), limit: 1, ..Default::default() };
        let page = ha.store().page(&q).expect("page");
        (!page.records.is_empty()).then(|| back.elapsed())
    })
    .await;
    for id in &ids {
        let r = wait_final(&a.handle(), id, Duration::from_secs(300)).await;
        assert_eq!(r.status, Status::Done, "{:?}", r.error);
    }
    println!(
        "{QUEUED} queued: the first was done {:.1} s after b came back, all {:.1} s after",
        first.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    a.shutdown().await;
    b.shutdown().await;
}
