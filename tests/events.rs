//! `GET /api/v1/events`: a client sees every status change of a transfer,
//! in order, with positions that only grow; one that reconnects after the
//! position it saw last gets exactly what it missed; a position the node
//! no longer keeps is a gap; a scoped token sees only its scope; a revoked
//! token's stream ends; the stream ends when the node shuts down, without
//! holding the node.

mod common;

use std::time::Duration;

use common::*;
use ferry::api::{EventQuery, EventStream, StreamItem};
use ferry::model::{NewToken, TransferEvent};
use ferry::protocol::Direction;
use ferry::store::{Status, TokenRole};

const WITHIN: Duration = Duration::from_secs(60);

/// The next transfer event (bounded); panics on a gap or an error.
async fn next_event(stream: &mut EventStream) -> TransferEvent {
    match tokio::time::timeout(WITHIN, stream.next()).await.expect("an event in time") {
        Some(Ok(StreamItem::Transfer(e))) => *e,
        other => panic!("expected a transfer event, got {other:?}"),
    }
}

/// Events of `id` until it is Done.
async fn until_done(stream: &mut EventStream, id: &str) -> Vec<TransferEvent> {
    let mut events = Vec::new();
    loop {
        let e = next_event(stream).await;
        if e.transfer.id != id {
            continue;
        }
        let done = e.transfer.status == Status::Done;
        events.push(e);
        if done {
            return events;
        }
    }
}

fn seq(position: &str) -> u64 {
    position.rsplit_once('-').and_then(|(_, s)| s.parse().ok()).expect("EPOCH-SEQ")
}

/// Consecutive distinct statuses.
fn statuses(list: impl IntoIterator<Item = Status>) -> Vec<Status> {
    let mut out: Vec<Status> = Vec::new();
    for s in list {
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_every_change_in_order_and_a_reconnect_misses_none() {
    let mut layout = Layout::new(&["a", "b"]);
    let mut payroll = layout.config("a").rules[0].clone();
    payroll.name = "payroll".into();
    layout.config_mut("a").rules.push(payroll.clone());
    layout.config_mut("b").rules.push(payroll);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let client = api_client(&a);

    // One stream that stays, one that will drop after two events.
    let mut whole = client.events(&EventQuery::default()).await.expect("stream");
    let mut broken =
        client.events(&EventQuery { rule: Some("default".into()), ..Default::default() }).await.expect("stream");
    write_random(&layout.out_dir("a").join("big.bin"), 8 << 20);
    let id = a.handle().submit(submit(Direction::Push, "b", "big.bin")).await.expect("submitted").id;
    let seen = until_done(&mut whole, id.as_str()).await;

    // In order: positions grow, statuses follow the job log's.
    assert!(seen.windows(2).all(|w| seq(&w[0].position) < seq(&w[1].position)), "positions grow");
    let log = client.log(id.as_str()).await.expect("job log");
    assert_eq!(statuses(seen.iter().map(|e| e.transfer.status)), statuses(log.iter().map(|l| l.status)));
    assert_eq!(seen.first().map(|e| e.transfer.status), Some(Status::ToSubmit));
    let last = &seen[seen.len() - 1].transfer;
    assert_eq!((last.status, last.transferred, last.size), (Status::Done, 8 << 20, 8 << 20));

    // The second stream read two events, then the client went away.
    let first_two = [next_event(&mut broken).await, next_event(&mut broken).await];
    drop(broken);
    let after = first_two[1].position.clone();
    let mut resumed = client
        .events(&EventQuery { rule: Some("default".into()), after: Some(after), ..Default::default() })
        .await
        .expect("resumed");
    let rest = until_done(&mut resumed, id.as_str()).await;
    let positions: Vec<&str> = first_two.iter().chain(&rest).map(|e| e.position.as_str()).collect();
    let expected: Vec<&str> = seen.iter().map(|e| e.position.as_str()).collect();
    assert_eq!(positions, expected, "nothing missed, nothing twice");

    // A position of another run, or garbage: a gap comes first.
    let mut stale =
        client.events(&EventQuery { after: Some("1-1".into()), ..Default::default() }).await.expect("stream");
    match tokio::time::timeout(WITHIN, stale.next()).await.expect("in time") {
        Some(Ok(StreamItem::Gap(gap))) => assert!(gap.message.contains("no longer kept"), "{gap:?}"),
        other => panic!("expected a gap, got {other:?}"),
    }

    // A token scoped to payroll: the default transfer is not shown to it.
    let scoped =
        NewToken { name: "sched".into(), role: TokenRole::Viewer, rules: vec!["payroll".into()], partners: vec![] };
    let token = client.create_token(&scoped).await.expect("token").token;
    let access =
        ferry::api::Access { token: Some(token), ca_pem: Some(std::fs::read(&layout.config("a").tls.ca).expect("ca")) };
    let scoped_client = ferry::api::ApiClient::new(client.base(), &access).expect("client");
    let mut narrow = scoped_client.events(&EventQuery::default()).await.expect("stream");
    std::fs::write(layout.out_dir("a").join("small.txt"), b"small").expect("source");
    let other = a.handle().submit(submit(Direction::Push, "b", "small.txt")).await.expect("submitted").id;
    let mut on_payroll = submit(Direction::Push, "b", "small.txt");
    on_payroll.rule = "payroll".into();
    let mine = a.handle().submit(on_payroll).await.expect("submitted").id;
    let first = next_event(&mut narrow).await;
    assert_eq!(first.transfer.id, mine.as_str(), "the default transfer {other} is out of scope");
    assert_eq!(first.transfer.rule, "payroll");

    // A revoked token's stream ends (checked every 2 s).
    client.revoke_token("sched").await.expect("revoked");
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match narrow.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a revoked token went on");

    // Shutdown ends the stream and nothing holds the node.
    let report = a.shutdown().await;
    assert_eq!(report.lingering, 0, "an open event stream held the node");
    let mut ended = false;
    for _ in 0..1000 {
        match tokio::time::timeout(WITHIN, whole.next()).await.expect("the stream ends in time") {
            None | Some(Err(_)) => {
                ended = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(ended, "the stream ended with the node");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_node_after_shutdown() {
    use tokio::io::AsyncWriteExt;
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let config = a.handle().config().clone();
    // A client that asks for the event stream and then never reads.
    let mut stalled = tls_connect(&config, a.api_addr(), Some(4096)).await;
    let token = admin_token(&config);
    let ask = format!("GET /api/v1/events HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {token}\r\n\r\n");
    stalled.write_all(ask.as_bytes()).await.expect("ask");
    // Enough events to fill every buffer between the node and the client.
    let store = a.handle().store().clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..20_000u64 {
            let rec = ferry::store::RequestRecord {
                status: Status::Done,
                ..ferry::store::RequestRecord::new(
                    ferry::protocol::RequestId::generate(),
                    ferry::store::Role::Requester,
                    "b",
                    "default",
                    Direction::Push,
                    &format!("f{i}"),
                )
            };
            store.insert(rec, "made by the test").expect("insert");
        }
    })
    .await
    .expect("inserted");
    let report = tokio::time::timeout(Duration::from_secs(60), a.shutdown()).await.expect("shutdown ends");
    assert_eq!(report.lingering, 0, "a stalled client held the node after shutdown");
    drop(stalled);
}
