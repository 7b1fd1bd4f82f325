//! The REST API of real in-process nodes, driven over HTTP on loopback:
//! submissions, lookups, lists, job logs and node figures through
//! [`ApiClient`], and the JSON errors every kind of bad input gets.
//!
//! Where [`ApiClient`] checks an input itself before calling (malformed ids,
//! unknown status filters) or cannot send it at all (malformed JSON), the
//! test sends the HTTP request by hand so the server's answer is what is
//! checked.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry::api::{ApiClient, ClientError, TransferView};
use ferry::protocol::{Direction, RequestId};
use ferry::store::{Role, Status, Step};

const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn client(node: &ferry::node::Node) -> ApiClient {
    api_client(node)
}

/// Polls `api` (bounded) until transfer `id` has `status`.
async fn wait_status(api: &ApiClient, id: &str, status: Status) -> TransferView {
    let deadline = Instant::now() + WITHIN;
    loop {
        match api.get(id).await {
            Ok(v) if v.status == status => return v,
            Ok(v) if v.is_final() => {
                panic!("transfer {id} ended {:?} on {}, not {status:?}: {:?}", v.status, v.node, v.error)
            }
            Ok(_) | Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => panic!("GET transfer {id} on {}: {e}", api.base()),
        }
        assert!(Instant::now() < deadline, "transfer {id} not {status:?} on {} within {WITHIN:?}", api.base());
        tokio::time::sleep(POLL).await;
    }
}

/// An HTTP/1.1 exchange sent by hand: returns the status and the JSON body.
async fn raw(node: &ferry::node::Node, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let config = node.handle().config().clone();
    let bearer = format!("Bearer {}", admin_token(&config));
    let (status, head, body) =
        raw_exchange(&config, node.api_addr(), method, path, &[("authorization", &bearer)], body).await;
    assert!(head.contains("content-type: application/json"), "{method} {path}: not JSON: {head}");
    assert!(!head.contains("transfer-encoding: chunked"), "{method} {path}: chunked body not expected: {head}");
    let json =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: body {body:?} is not JSON: {e}"));
    (status, json)
}

/// Checks an error body `{"error": {"code", "message"}}`.
fn assert_error_body(json: &serde_json::Value, code: &str, what: &str) {
    assert_eq!(json["error"]["code"], code, "{what}: {json}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: empty message: {json}");
}

/// Checks a refusal through [`ApiClient`]: an API error with `status` and `code`.
fn assert_api_error<T: std::fmt::Debug>(r: Result<T, ClientError>, status: u16, code: &str, what: &str) -> String {
    let e = r.expect_err(what);
    assert!(matches!(e, ClientError::Api { .. }), "{what}: not an API error: {e:?}");
    assert_eq!(e.http_status(), Some(status), "{what}: {e}");
    assert_eq!(e.code(), Some(code), "{what}: {e}");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_submitted_over_http_is_found_listed_logged_and_counted() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let api = client(&a);
    let size = 300_000;
    let digest = write_random(&layout.out_dir("a").join("report.bin"), size);

    let before = api.node().await.expect("node figures");
    assert_eq!(before.node_id, "a");
    assert_eq!(before.connections, 0, "no connection before any transfer: {before:?}");

    let created = api.submit(&submit(Direction::Push, "b", "report.bin")).await.expect("submitted");
    assert!(RequestId::parse(&created.id).is_some(), "id {:?} is canonical", created.id);
    assert_eq!(created.node, "a");
    assert_eq!(created.role, Role::Requester);
    assert_eq!(created.partner, "b");
    assert_eq!(created.direction, Direction::Push);
    assert_eq!(created.file, "report.bin");
    assert_eq!(created.size, size as u64, "a push knows its size at submission");
    assert_eq!(created.status, Status::ToSubmit);

    let got = api.get(&created.id).await.expect("GET by id");
    assert_eq!(
        (got.id.as_str(), got.file.as_str(), got.created_at),
        (created.id.as_str(), "report.bin", created.created_at)
    );

    let done = tokio::time::timeout(WITHIN, api.wait(&created.id, POLL, |_| {}))
        .await
        .expect("Done in time")
        .expect("followed to the end");
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(done.step, Step::AllDone);
    assert_eq!(done.transferred, size as u64);
    assert_eq!(done.hash.as_deref(), Some(digest.to_hex().as_str()));
    assert!(done.error.is_none(), "{:?}", done.error);
    assert!(done.finished_at.is_some());
    assert_eq!(file_digest(&layout.in_dir("b").join("report.bin")), digest, "delivered file differs");

    let ids = |l: &[TransferView]| l.iter().map(|v| v.id.clone()).collect::<Vec<_>>();
    let just_it = vec![created.id.clone()];
    let all = api.list(None).await.expect("list");
    assert_eq!(ids(&all), just_it);
    let finished = api.list(Some("Done")).await.expect("list Done");
    assert_eq!(ids(&finished), just_it, "?status=Done lists it");
    assert_eq!(finished[0].status, Status::Done);
    let lower = api.list(Some("done")).await.expect("list done");
    assert_eq!(ids(&lower), just_it, "the client takes the filter in any case");
    let queued = api.list(Some("ToSubmit")).await.expect("list ToSubmit");
    assert!(queued.is_empty(), "?status=ToSubmit must not list a Done transfer: {queued:?}");
    assert!(api.list(Some("InError")).await.expect("list InError").is_empty());

    let log = api.log(&created.id).await.expect("job log");
    assert!(!log.is_empty());
    assert!(log[0].message.starts_with("submitted"), "the log starts with the submission: {log:?}");
    assert_eq!(log[0].status, Status::ToSubmit, "{log:?}");
    assert!(log.iter().any(|l| l.status == Status::Done && l.step == Step::AllDone), "a Done line: {log:?}");
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at), "oldest first: {log:?}");

    let after = api.node().await.expect("node figures");
    assert_eq!(after.node_id, "a");
    assert_eq!(after.connections, 1, "{after:?}");
    assert_eq!(after.connections_by_partner.get("b"), Some(&1), "{after:?}");
    let b_side = client(&b).node().await.expect("b's figures");
    assert_eq!(b_side.connections_by_partner.get("a"), Some(&1), "{b_side:?}");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_error_with_code_and_status() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let api = client(&a);
    write_random(&layout.out_dir("a").join("present"), 10);

    let mut s = submit(Direction::Push, "zed", "present");
    let msg = assert_api_error(api.submit(&s).await, 422, "unknown_partner", "unknown partner");
    assert!(msg.contains("zed"), "the message names the partner: {msg}");

    s = submit(Direction::Push, "b", "present");
    s.rule = "nightly".into();
    let msg = assert_api_error(api.submit(&s).await, 422, "unknown_rule", "unknown rule");
    assert!(msg.contains("nightly"), "the message names the rule: {msg}");

    let msg = assert_api_error(
        api.submit(&submit(Direction::Push, "b", "../x")).await,
        400,
        "bad_file_name",
        "file name ../x",
    );
    assert!(msg.contains("../x"), "{msg}");
    assert_api_error(api.submit(&submit(Direction::Pull, "b", "../x")).await, 400, "bad_file_name", "pull of ../x");

    let msg = assert_api_error(
        api.submit(&submit(Direction::Push, "b", "absent")).await,
        422,
        "file_not_found",
        "missing source file",
    );
    assert!(msg.contains("absent"), "the message names the file: {msg}");

    s = submit(Direction::Push, "b", "present");
    s.block_size = Some(1);
    assert_api_error(api.submit(&s).await, 400, "bad_block_size", "block size 1");

    let unknown = RequestId::generate();
    let msg = assert_api_error(api.get(unknown.as_str()).await, 404, "not_found", "unknown id");
    assert!(msg.contains(unknown.as_str()), "{msg}");
    assert_api_error(api.log(unknown.as_str()).await, 404, "not_found", "log of an unknown id");

    // The client refuses these itself; the server must too.
    assert!(matches!(api.get("xyz").await, Err(ClientError::BadId(_))));
    assert!(matches!(api.list(Some("finished")).await, Err(ClientError::BadStatus(_))));
    for path in ["/api/v1/transfers/xyz", "/api/v1/transfers/0123456789ABCDEF0123456789ABCDEF/log"] {
        let (status, json) = raw(&a, "GET", path, None).await;
        assert_eq!(status, 400, "GET {path}: {json}");
        assert_error_body(&json, "bad_id", path);
    }
    let (status, json) = raw(&a, "GET", "/api/v1/transfers?status=finished", None).await;
    assert_eq!(status, 400, "{json}");
    assert_error_body(&json, "bad_status", "status=finished");
    assert!(json["error"]["message"].as_str().is_some_and(|m| m.contains("finished")), "{json}");

    let (status, json) = raw(&a, "POST", "/api/v1/transfers", Some("{not json")).await;
    assert_eq!(status, 400, "malformed JSON: {json}");
    assert_error_body(&json, "bad_json", "malformed JSON");
    let (status, json) = raw(&a, "POST", "/api/v1/transfers", Some(r#"{"partner":"b"}"#)).await;
    assert_eq!(status, 400, "missing fields: {json}");
    assert_error_body(&json, "bad_json", "missing fields");

    let (status, json) = raw(&a, "GET", "/api/v1/nothing-here", None).await;
    assert_eq!(status, 404, "{json}");
    assert_error_body(&json, "no_route", "unknown route");
    let (status, json) = raw(&a, "DELETE", "/api/v1/node", None).await;
    assert_eq!(status, 405, "{json}");
    assert_error_body(&json, "method_not_allowed", "DELETE /api/v1/node");

    // The same raw path answers properly when the input is good.
    let (status, json) = raw(&a, "GET", "/api/v1/transfers?status=done", None).await;
    assert_eq!((status, json), (200, serde_json::json!([])), "no refused submission was recorded");
    assert!(a.handle().store().list(None).expect("store").is_empty(), "no refused submission was recorded");

    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_id_and_info_are_known_on_both_nodes() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let (api_a, api_b) = (client(&a), client(&b));
    write_random(&layout.out_dir("a").join("pushed"), 70_000);
    write_random(&layout.out_dir("b").join("pulled"), 80_000);

    for (direction, file, job) in [(Direction::Push, "pushed", "job-push-7"), (Direction::Pull, "pulled", "job-pull-8")]
    {
        let mut s = submit(direction, "b", file);
        s.external_job_id = Some(job.into());
        s.transfer_info = format!("nightly {file} batch, ünïcode ✓");
        let created = api_a.submit(&s).await.expect("submitted");
        assert_eq!(created.external_job_id.as_deref(), Some(job));
        assert_eq!(created.transfer_info, s.transfer_info);

        let on_a = wait_status(&api_a, &created.id, Status::Done).await;
        let on_b = wait_status(&api_b, &created.id, Status::Done).await;
        for (v, node, role, partner) in [(&on_a, "a", Role::Requester, "b"), (&on_b, "b", Role::Requested, "a")] {
            let what = format!("{direction:?} seen by {node}");
            assert_eq!(v.id, created.id, "{what}: one id on both nodes");
            assert_eq!(v.node, node, "{what}");
            assert_eq!(v.role, role, "{what}");
            assert_eq!(v.partner, partner, "{what}");
            assert_eq!(v.direction, direction, "{what}");
            assert_eq!(v.file, file, "{what}");
            assert_eq!(v.external_job_id.as_deref(), Some(job), "{what}");
            assert_eq!(v.transfer_info, s.transfer_info, "{what}");
        }
        assert_eq!(on_a.hash, on_b.hash, "{direction:?}: both sides record one digest");
        let listed = api_b.list(Some("Done")).await.expect("b lists");
        assert!(listed.iter().any(|v| v.id == created.id && v.external_job_id.as_deref() == Some(job)), "{listed:?}");
        let log_b = api_b.log(&created.id).await.expect("b's job log");
        assert!(log_b.first().is_some_and(|l| l.message.starts_with("accepted")), "{log_b:?}");
    }

    a.shutdown().await;
    b.shutdown().await;
}

/// Polls `api` (bounded) until transfer `id` satisfies `pred`.
async fn wait_view(api: &ApiClient, id: &str, what: &str, pred: impl Fn(&TransferView) -> bool) -> TransferView {
    let deadline = Instant::now() + WITHIN;
    loop {
        let v = api.get(id).await.unwrap_or_else(|e| panic!("GET transfer {id} on {}: {e}", api.base()));
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "transfer {id} on {}: not {what} within {WITHIN:?}: {v:?}", api.base());
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_refuse_what_they_cannot_do() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let (api_a, api_b) = (client(&a), client(&b));
    write_random(&layout.out_dir("a").join("done.bin"), 200_000);

    let created = api_a.submit(&submit(Direction::Push, "b", "done.bin")).await.expect("submitted");
    let done = wait_status(&api_a, &created.id, Status::Done).await;
    assert_eq!((done.attempts, done.retry_at), (1, None), "one attempt, no retry pending: {done:?}");
    let on_b = wait_status(&api_b, &created.id, Status::Done).await;
    assert!(on_b.delivered, "the push receiver records the delivery: {on_b:?}");
    assert_eq!(on_b.attempts, 0, "attempts are counted by the requester only: {on_b:?}");

    // A Done request takes no command.
    for (what, r) in [
        ("stop", api_a.stop(&created.id).await),
        ("cancel", api_a.cancel(&created.id).await),
        ("restart", api_a.restart(&created.id).await),
    ] {
        let msg = assert_api_error(r, 409, "invalid_state", &format!("{what} of a Done request"));
        assert!(msg.contains(what) && msg.contains("Done"), "{what}: {msg}");
    }
    assert_eq!(api_a.get(&created.id).await.expect("GET").status, Status::Done, "the refusals changed nothing");

    // The requested node's copy: the command belongs to the requester, which the message names.
    for (what, r) in [
        ("stop", api_b.stop(&created.id).await),
        ("cancel", api_b.cancel(&created.id).await),
        ("restart", api_b.restart(&created.id).await),
    ] {
        let msg = assert_api_error(r, 409, "not_requester", &format!("{what} on the requested node"));
        assert!(msg.contains("node a"), "{what}: the message names the driving node: {msg}");
    }

    // An id no node knows.
    let unknown = RequestId::generate();
    for (what, r) in [
        ("stop", api_a.stop(unknown.as_str()).await),
        ("cancel", api_a.cancel(unknown.as_str()).await),
        ("restart", api_a.restart(unknown.as_str()).await),
    ] {
        let msg = assert_api_error(r, 404, "not_found", &format!("{what} of an unknown id"));
        assert!(msg.contains(unknown.as_str()), "{what}: {msg}");
    }

    // What the client refuses itself, the server refuses too; and the routes take POST only.
    for what in ["stop", "cancel", "restart"] {
        let (status, json) = raw(&a, "POST", &format!("/api/v1/transfers/xyz/{what}"), None).await;
        assert_eq!(status, 400, "{what}: {json}");
        assert_error_body(&json, "bad_id", what);
        let (status, json) = raw(&a, "GET", &format!("/api/v1/transfers/{}/{what}", created.id), None).await;
        assert_eq!(status, 405, "GET {what}: {json}");
        assert_error_body(&json, "method_not_allowed", what);
    }

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_is_restarted_once_the_file_is_there() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let api = client(&a);

    let created = api.submit(&submit(Direction::Pull, "b", "later.bin")).await.expect("submitted");
    let failed = wait_status(&api, &created.id, Status::InError).await;
    assert_eq!(failed.error.as_ref().map(|e| e.code.as_str()), Some("FileNotFound"), "{failed:?}");
    assert_eq!((failed.attempts, failed.retry_at), (1, None), "a refusal is not retried: {failed:?}");
    let msg = assert_api_error(api.stop(&created.id).await, 409, "invalid_state", "stop of an InError request");
    assert!(msg.contains("InError"), "{msg}");

    let digest = write_random(&layout.out_dir("b").join("later.bin"), 500_000);
    let restarted = api.restart(&created.id).await.expect("restart");
    assert_eq!(restarted.id, created.id);
    assert_eq!(restarted.node, "a");
    assert_eq!(restarted.status, Status::ToSubmit, "{restarted:?}");
    assert_eq!(restarted.attempts, 0, "an operator restart resets the attempts: {restarted:?}");
    assert!(restarted.error.is_none() && restarted.finished_at.is_none(), "{restarted:?}");

    let done = wait_status(&api, &created.id, Status::Done).await;
    assert_eq!(done.attempts, 1, "{done:?}");
    assert!(done.delivered, "the pull receiver records the delivery: {done:?}");
    assert_eq!(done.hash.as_deref(), Some(digest.to_hex().as_str()));
    assert_eq!(file_digest(&layout.in_dir("a").join("later.bin")), digest, "delivered file differs");
    assert!(work_files(&layout.in_dir("a")).is_empty(), "no work file left");
    let log = api.log(&created.id).await.expect("job log");
    assert!(log.iter().any(|l| l.message.contains("restarted by an operator")), "{log:?}");

    assert_api_error(api.restart(&created.id).await, 409, "invalid_state", "restart of a Done request");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_failed_request_for_good() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let api = client(&a);

    let created = api.submit(&submit(Direction::Pull, "b", "absent.bin")).await.expect("submitted");
    wait_status(&api, &created.id, Status::InError).await;
    let cancelled = api.cancel(&created.id).await.expect("cancel");
    assert_eq!(cancelled.status, Status::Cancelled, "{cancelled:?}");
    let e = cancelled.error.as_ref().expect("the cause is recorded");
    assert_eq!(e.code, "Cancelled");
    assert!(e.message.contains("operator") && e.message.contains('a'), "{e:?}");
    assert!(cancelled.finished_at.is_some(), "{cancelled:?}");
    assert_eq!(api.get(&created.id).await.expect("GET").status, Status::Cancelled, "the answer is what is stored");

    assert_api_error(api.cancel(&created.id).await, 409, "invalid_state", "cancel of a Cancelled request");
    assert_api_error(api.restart(&created.id).await, 409, "invalid_state", "restart of a Cancelled request");
    assert_api_error(api.stop(&created.id).await, 409, "invalid_state", "stop of a Cancelled request");

    a.shutdown().await;
    b.shutdown().await;
}

/// With one runner slot held by a push to a partner that never answers (its
/// address is a UDP socket nobody reads, so the dial lasts until
/// `connect_timeout_ms`), later submissions stay `ToSubmit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_interrupted_requests_can_be_stopped_cancelled_and_restarted() {
    let mut layout = Layout::new(&["a", "b"]);
    {
        let cfg = layout.config_mut("a");
        cfg.concurrency = 1;
        cfg.rules[0].retry =
            Some(ferry::config::RetryPolicy { attempts: 5, initial_delay_ms: 120_000, max_delay_ms: 120_000 });
    }
    let b_addr = layout.config("a").partner("b").expect("partner b").address;
    let _black_hole = std::net::UdpSocket::bind(b_addr).expect("hold b's address");
    let a = layout.start("a").await;
    let api = client(&a);
    for f in ["slot.bin", "queued.bin", "paused.bin"] {
        write_random(&layout.out_dir("a").join(f), 10_000);
    }

    let slot = api.submit(&submit(Direction::Push, "b", "slot.bin")).await.expect("submitted");
    wait_view(&api, &slot.id, "Running", |v| v.status == Status::Running).await;

    // Queued behind the slot: cancel.
    let queued = api.submit(&submit(Direction::Push, "b", "queued.bin")).await.expect("submitted");
    let cancelled = api.cancel(&queued.id).await.expect("cancel of a queued request");
    assert_eq!(cancelled.status, Status::Cancelled, "{cancelled:?}");
    assert_eq!(cancelled.attempts, 0, "it never ran: {cancelled:?}");
    assert_eq!(cancelled.error.as_ref().map(|e| e.code.as_str()), Some("Cancelled"));

    // Queued behind the slot: stop, then restart, then cancel.
    let paused = api.submit(&submit(Direction::Push, "b", "paused.bin")).await.expect("submitted");
    let stopped = api.stop(&paused.id).await.expect("stop of a queued request");
    assert_eq!(stopped.status, Status::Interrupted, "{stopped:?}");
    assert!(stopped.is_stopped(), "{stopped:?}");
    assert_eq!(stopped.retry_at, None, "a stopped request is not retried: {stopped:?}");
    let msg = assert_api_error(api.stop(&paused.id).await, 409, "invalid_state", "stop of a stopped request");
    assert!(msg.contains("stopped already"), "{msg}");
    let requeued = api.restart(&paused.id).await.expect("restart of a stopped request");
    assert_eq!(requeued.status, Status::ToSubmit, "{requeued:?}");
    assert!(requeued.error.is_none(), "{requeued:?}");
    let cancelled = api.cancel(&paused.id).await.expect("cancel of a queued request");
    assert_eq!(cancelled.status, Status::Cancelled, "{cancelled:?}");

    // The slot's dial times out: Interrupted with a retry scheduled. Stop it;
    // the stop clears the retry. Then cancel it.
    let waiting = wait_view(&api, &slot.id, "Interrupted with a retry scheduled", |v| {
        v.status == Status::Interrupted && v.retry_at.is_some()
    })
    .await;
    assert_eq!(waiting.error.as_ref().map(|e| e.code.as_str()), Some("Connection"), "{waiting:?}");
    assert_eq!(waiting.attempts, 1, "{waiting:?}");
    assert!(!waiting.is_stopped());
    let stopped = api.stop(&slot.id).await.expect("stop of an interrupted request");
    assert!(stopped.is_stopped() && stopped.retry_at.is_none(), "{stopped:?}");
    let cancelled = api.cancel(&slot.id).await.expect("cancel of a stopped request");
    assert_eq!(cancelled.status, Status::Cancelled, "{cancelled:?}");

    let all = api.list(None).await.expect("list");
    assert!(all.iter().all(|v| v.status == Status::Cancelled), "{all:?}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_push_resumes_from_the_receivers_restart_point_when_restarted() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let (api_a, api_b) = (client(&a), client(&b));
    let size = 256 << 20;
    let digest = write_random(&layout.out_dir("a").join("big.bin"), size);

    let mut s = submit(Direction::Push, "b", "big.bin");
    s.block_size = Some(64 << 10);
    let created = api_a.submit(&s).await.expect("submitted");
    wait_view(&api_a, &created.id, "moving data", |v| v.step == Step::Transfer || v.is_final()).await;
    let stopped = match api_a.stop(&created.id).await {
        Ok(_) => wait_view(&api_a, &created.id, "stopped", |v| v.is_stopped() || v.is_final()).await,
        Err(e) if e.code() == Some("invalid_state") => api_a.get(&created.id).await.expect("GET"),
        Err(e) => panic!("stop of a running request: {e}"),
    };
    if stopped.status == Status::Done {
        // The machine outran the test: nothing was left to stop.
        eprintln!("the transfer finished before it could be stopped; skipping the resume checks");
        a.shutdown().await;
        b.shutdown().await;
        return;
    }
    assert!(stopped.is_stopped(), "{stopped:?}");
    assert!(stopped.retry_at.is_none(), "{stopped:?}");
    wait_view(&api_b, &created.id, "interrupted", |v| v.status == Status::Interrupted).await;
    // The receiver records its final restart point right after its status.
    let deadline = Instant::now() + WITHIN;
    while !api_b.log(&created.id).await.expect("b's job log").iter().any(|l| l.message.contains("restart point at")) {
        assert!(Instant::now() < deadline, "b recorded no final restart point within {WITHIN:?}");
        tokio::time::sleep(POLL).await;
    }
    let receiver = api_b.get(&created.id).await.expect("b's view");
    let point = receiver.restart_offset_durable.expect("a restart point");
    // Every written byte is the restart point; a stop that lands before the
    // first block is written leaves it at 0.
    assert!(point <= size as u64, "the written prefix is the restart point: {point} ({receiver:?})");
    if point == 0 {
        eprintln!("the stop landed before any block was written; the rerun starts from 0");
    }
    assert_eq!(work_files(&layout.in_dir("b")).len(), 1, "the partial file is kept");

    let requeued = api_a.restart(&created.id).await.expect("restart");
    assert_eq!(requeued.status, Status::ToSubmit, "{requeued:?}");
    let done = wait_status(&api_a, &created.id, Status::Done).await;
    assert_eq!(done.restart_offset, point, "resumed at the receiver's restart point: {done:?}");
    assert_eq!(done.hash.as_deref(), Some(digest.to_hex().as_str()));
    assert_eq!(file_digest(&layout.in_dir("b").join("big.bin")), digest, "delivered file differs");
    assert!(work_files(&layout.in_dir("b")).is_empty(), "no work file left");

    a.shutdown().await;
    b.shutdown().await;
}
