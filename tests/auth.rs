//! Who may use the REST API: every route with no token, a malformed one, an
//! unknown one, a revoked one, a token of each role and a scoped token
//! outside its scope — answered 401 or 403 with the JSON error shape, and
//! nothing changed (the store's transfers and tokens checked). And HTTPS:
//! the node's certificate verifies against the cluster CA only, and plain
//! HTTP is refused anywhere but on loopback.

mod common;

use std::time::Duration;

use common::*;
use ferry::api::{Access, ApiClient, ClientError};
use ferry::model::NewToken;
use ferry::node::Node;
use ferry::protocol::Direction;
use ferry::store::TokenRole;

/// One exchange with `bearer` (or no Authorization header); answers the
/// status and the JSON body.
async fn call(
    node: &Node,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let config = node.handle().config().clone();
    let header = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
    let (status, head, body) = raw_exchange(&config, node.api_addr(), method, path, &headers, body).await;
    if status == 401 {
        assert!(head.contains("www-authenticate: bearer"), "{method} {path}: a 401 names the scheme: {head}");
    }
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// The audit file's lines, parsed.
fn audit_lines(node: &Node) -> Vec<serde_json::Value> {
    let path = node.handle().config().audit_path();
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
        .collect()
}

/// What the store (and the audit trail of transfers) holds that a refused
/// call could have changed.
fn snapshot(node: &Node) -> String {
    let transfer_events = audit_lines(node).iter().filter(|l| l["kind"] == "transfer").count();
    let store = node.handle().store().clone();
    let mut transfers: Vec<String> =
        store.list(None).expect("list").iter().map(|r| format!("{} {:?} {:?}", r.id, r.status, r.step)).collect();
    transfers.sort();
    let tokens: Vec<String> =
        store.tokens().expect("tokens").iter().map(|t| format!("{} {:?}", t.name, t.revoked_at)).collect();
    format!("{transfers:?} {tokens:?} transfer audit lines: {transfer_events}")
}

async fn make_token(admin: &ApiClient, name: &str, role: TokenRole, rules: &[&str]) -> String {
    let t =
        NewToken { name: name.into(), role, rules: rules.iter().map(|s| s.to_string()).collect(), partners: vec![] };
    admin.create_token(&t).await.expect("token made").token
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    /// Any valid token (an unknown route is then a 404).
    Any,
    Read,
    Operate,
    Tokens,
    Scrape,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_caller_without_the_right_and_changes_nothing() {
    let mut layout = Layout::new(&["a", "b"]);
    let mut payroll = layout.config("a").rules[0].clone();
    payroll.name = "payroll".into();
    layout.config_mut("a").rules.push(payroll);
    let a = layout.start("a").await;
    // b stays down: submitted transfers wait in a's queue.
    let admin = api_client(&a);
    std::fs::write(layout.out_dir("a").join("f.bin"), b"hello").expect("source");
    let queued = admin.submit(&submit(Direction::Push, "b", "f.bin")).await.expect("submitted").id;

    let operator = make_token(&admin, "ops", TokenRole::Operator, &[]).await;
    let viewer = make_token(&admin, "watch", TokenRole::Viewer, &[]).await;
    let metrics = make_token(&admin, "scrape", TokenRole::Metrics, &[]).await;
    let scoped = make_token(&admin, "sched", TokenRole::Operator, &["payroll"]).await;
    let revoked = make_token(&admin, "gone", TokenRole::Admin, &[]).await;
    admin.revoke_token("gone").await.expect("revoked");
    let admin_token = admin_token(layout.config("a"));
    let unknown = format!("ferry_000000000000_{}", "0".repeat(64));

    let submit_body = r#"{"partner":"b","rule":"default","direction":"push","file":"f.bin"}"#;
    let token_body = r#"{"name":"new","role":"viewer"}"#;
    let t = format!("/api/v1/transfers/{queued}");
    let routes: Vec<(&str, String, Option<&str>, Need)> = vec![
        ("GET", "/api/v1/transfers".into(), None, Need::Read),
        ("POST", "/api/v1/transfers".into(), Some(submit_body), Need::Operate),
        ("GET", t.clone(), None, Need::Read),
        ("GET", format!("{t}/log"), None, Need::Read),
        ("POST", format!("{t}/stop"), None, Need::Operate),
        ("POST", format!("{t}/cancel"), None, Need::Operate),
        ("POST", format!("{t}/restart"), None, Need::Operate),
        ("GET", "/api/v1/node".into(), None, Need::Read),
        ("GET", "/api/v1/partners".into(), None, Need::Read),
        ("GET", "/api/v1/rules".into(), None, Need::Read),
        ("GET", format!("/api/v1/cluster/transfers/{queued}"), None, Need::Read),
        ("GET", "/api/v1/tokens".into(), None, Need::Tokens),
        ("POST", "/api/v1/tokens".into(), Some(token_body), Need::Tokens),
        ("DELETE", "/api/v1/tokens/ops".into(), None, Need::Tokens),
        ("GET", "/metrics".into(), None, Need::Scrape),
        ("GET", "/api/v1/nothing-here".into(), None, Need::Any),
    ];

    // No token, a malformed one, an unknown one, a revoked one: 401.
    let before = snapshot(&a);
    let not_bearer = format!("Basic {admin_token}");
    for (method, path, body, _) in &routes {
        for (who, bearer) in [("none", None), ("unknown", Some(unknown.as_str())), ("revoked", Some(revoked.as_str()))]
        {
            let (status, json) = call(&a, method, path, bearer, *body).await;
            assert_eq!(status, 401, "{method} {path} with {who} token: {json}");
            assert_eq!(json["error"]["code"], "unauthorized", "{method} {path} ({who}): {json}");
            if who == "revoked" {
                assert!(json["error"]["message"].as_str().unwrap_or("").contains("revoked"), "{json}");
            }
        }
        let config = a.handle().config().clone();
        let (status, ..) =
            raw_exchange(&config, a.api_addr(), method, path, &[("authorization", not_bearer.as_str())], *body).await;
        assert_eq!(status, 401, "{method} {path} with a Basic header");
    }
    assert_eq!(snapshot(&a), before, "a refused caller changed nothing");

    // A role without the right: 403, nothing changed.
    for (method, path, body, need) in &routes {
        for (role, token) in [("operator", &operator), ("viewer", &viewer), ("metrics", &metrics)] {
            let allowed = match (role, need) {
                (_, Need::Any) => true,
                (_, Need::Tokens) => false,
                ("metrics", Need::Scrape) => true,
                (_, Need::Scrape) => false,
                ("operator", _) => true,
                ("viewer", Need::Read) => true,
                _ => false,
            };
            if allowed {
                continue;
            }
            let before = snapshot(&a);
            let (status, json) = call(&a, method, path, Some(token), *body).await;
            assert_eq!(status, 403, "{method} {path} as {role}: {json}");
            assert_eq!(json["error"]["code"], "forbidden", "{json}");
            assert!(json["error"]["message"].as_str().unwrap_or("").contains("may not"), "{json}");
            assert_eq!(snapshot(&a), before, "{method} {path} as {role} changed something");
        }
    }

    // A scoped token outside its scope: 403 for the transfer on `default`,
    // the cluster view and a submission on `default`; lists leave it out.
    let before = snapshot(&a);
    for (method, path, body) in [
        ("GET", t.clone(), None),
        ("GET", format!("{t}/log"), None),
        ("POST", format!("{t}/stop"), None),
        ("POST", format!("{t}/cancel"), None),
        ("POST", "/api/v1/transfers".to_string(), Some(submit_body)),
        ("GET", format!("/api/v1/cluster/transfers/{queued}"), None),
    ] {
        let (status, json) = call(&a, method, &path, Some(&scoped), body).await;
        assert_eq!(status, 403, "{method} {path} scoped to payroll: {json}");
        assert!(json["error"]["message"].as_str().unwrap_or("").contains("outside"), "{json}");
    }
    assert_eq!(snapshot(&a), before, "an out-of-scope caller changed nothing");
    // Refused calls that could have changed something are in the audit trail.
    let audit = audit_lines(&a);
    let refused = |token: Option<&str>, status: u64| {
        audit.iter().any(|l| {
            l["kind"] == "api"
                && l["http_status"] == status
                && l["token"].as_str() == token
                && l["path"].as_str().is_some_and(|p| p.ends_with("/stop"))
        })
    };
    assert!(refused(None, 401), "a 401 stop is audited without a token name");
    assert!(refused(Some("watch"), 403), "a viewer's 403 stop is audited with its name");
    assert!(refused(Some("sched"), 403), "an out-of-scope stop is audited");
    let submitted = audit.iter().find(|l| l["kind"] == "transfer" && l["event"] == "submitted").expect("submitted");
    assert_eq!(submitted["request_id"], queued.as_str(), "{submitted}");
    let made = audit.iter().find(|l| l["kind"] == "api" && l["path"] == "/api/v1/tokens" && l["http_status"] == 201);
    assert_eq!(made.expect("token made")["token"], "admin");
    let (status, list) = call(&a, "GET", "/api/v1/transfers", Some(&scoped), None).await;
    assert_eq!(
        (status, list.as_array().map(Vec::len)),
        (200, Some(0)),
        "the default-rule transfer is not listed: {list}"
    );
    let (_, rules) = call(&a, "GET", "/api/v1/rules", Some(&scoped), None).await;
    let names: Vec<&str> = rules.as_array().expect("rules").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["payroll"]);
    // Inside its scope it may submit.
    let payroll_body = r#"{"partner":"b","rule":"payroll","direction":"push","file":"f.bin"}"#;
    let (status, json) = call(&a, "POST", "/api/v1/transfers", Some(&scoped), Some(payroll_body)).await;
    assert_eq!(status, 201, "{json}");
    let (_, list) = call(&a, "GET", "/api/v1/transfers", Some(&scoped), None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "it sees its own: {list}");

    // Each role with the right gets through (the handler answers, not the guard).
    for (method, path, body, need) in &routes {
        let token = match need {
            Need::Read | Need::Any => &viewer,
            Need::Operate => &operator,
            Need::Tokens => &admin_token,
            Need::Scrape => &metrics,
        };
        let (status, json) = call(&a, method, path, Some(token), *body).await;
        assert!(status != 401 && status != 403, "{method} {path} with the right: {status} {json}");
    }
    // The health routes need no token.
    for path in ["/healthz", "/readyz"] {
        let config = a.handle().config().clone();
        let (status, _, body) = raw_exchange(&config, a.api_addr(), "GET", path, &[], None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    a.shutdown().await;
}

#[tokio::test]
async fn the_cli_client_verifies_the_node_against_the_cluster_ca_only() {
    let layout = Layout::new(&["a"]);
    let a = layout.start("a").await;
    let good = api_client(&a);
    assert_eq!(good.node().await.expect("verified against its CA").node_id, "a");
    // Another cluster's CA: the handshake fails and says why.
    let other = tempfile::tempdir().expect("tempdir");
    ferry::certs::init(other.path(), &["x".to_string()]).expect("other CA");
    let foreign = Access {
        token: Some(admin_token(layout.config("a"))),
        ca_pem: Some(std::fs::read(other.path().join(ferry::certs::CA_CERT_FILE)).expect("ca")),
    };
    let err = ApiClient::new(&format!("https://{}", a.api_addr()), &foreign)
        .expect("client")
        .with_timeout(Duration::from_secs(10))
        .node()
        .await
        .expect_err("a foreign CA does not verify the node");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // Plain HTTP to an HTTPS node gets no API answer.
    let plain = ApiClient::new(&format!("http://{}", a.api_addr()), &Access::default()).expect("client");
    assert!(plain.with_timeout(Duration::from_secs(10)).node().await.is_err(), "no plain HTTP on an HTTPS node");
    a.shutdown().await;
}

#[tokio::test]
async fn plain_http_is_served_on_loopback_only() {
    let mut layout = Layout::new(&["a"]);
    layout.config_mut("a").api_plain_http = true;
    let a = layout.start("a").await;
    let access = Access { token: Some(admin_token(layout.config("a"))), ca_pem: None };
    let plain = ApiClient::new(&format!("http://{}", a.api_addr()), &access).expect("client");
    assert_eq!(plain.node().await.expect("plain HTTP on loopback").node_id, "a");
    a.shutdown().await;

    let mut cfg = layout.config("a").clone();
    cfg.api = "0.0.0.0:0".parse().expect("addr");
    let err = Node::start(cfg).await.err().expect("refused to start");
    let text = err.to_string();
    assert!(text.contains("api_plain_http") && text.contains("not a loopback address"), "{text}");
}

/// A scoped token cannot reach past its scope by naming this node as the
/// source of a submission (its partner is then the target), and a scoped
/// admin cannot manage tokens (it could make one wider than its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_reaches_nothing_past_its_scope_through_a_source_or_a_new_token() {
    let layout = Layout::new(&["a", "b", "c"]);
    let a = layout.start("a").await;
    let admin = api_client(&a);
    std::fs::write(layout.out_dir("a").join("f.bin"), b"hello").expect("source");
    let to_b = NewToken { name: "to-b".into(), role: TokenRole::Operator, rules: vec![], partners: vec!["b".into()] };
    let to_b = admin.create_token(&to_b).await.expect("token made").token;
    let scoped_admin = make_token(&admin, "half-admin", TokenRole::Admin, &["default"]).await;
    // Transfers to c around one to b: a page of the scoped token holds b's
    // only, and its cursor never names one of c's.
    let mut to_c = Vec::new();
    for partner in ["c", "b", "c"] {
        let id = admin.submit(&submit(Direction::Push, partner, "f.bin")).await.expect("submitted").id;
        if partner == "c" {
            to_c.push(id.to_string());
        }
    }
    let config = a.handle().config().clone();
    let bearer = format!("Bearer {to_b}");
    let mut path = "/api/v1/transfers?limit=1".to_string();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let headers = [("authorization", bearer.as_str())];
        let (status, head, body) = raw_exchange(&config, a.api_addr(), "GET", &path, &headers, None).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        seen.extend(page.as_array().expect("a list").iter().map(|t| t["partner"].as_str().unwrap_or("").to_owned()));
        let cursor = head.lines().find_map(|l| l.strip_prefix("x-next-cursor: ")).map(str::trim).map(str::to_owned);
        let Some(cursor) = cursor else { break };
        assert!(!to_c.iter().any(|c| cursor.contains(c.as_str())), "the cursor {cursor} names a transfer to c");
        path = format!("/api/v1/transfers?limit=1&cursor={cursor}");
    }
    assert_eq!(seen, ["b"], "the scoped token sees b's transfer only");
    let before = snapshot(&a);
    for body in [
        r#"{"source":"a","partner":"c","rule":"default","direction":"push","file":"f.bin"}"#,
        r#"{"partner":"c","rule":"default","direction":"push","file":"f.bin"}"#,
    ] {
        let (status, json) = call(&a, "POST", "/api/v1/transfers", Some(&to_b), Some(body)).await;
        assert_eq!(status, 403, "{body}: {json}");
        assert!(json["error"]["message"].as_str().unwrap_or("").contains("outside"), "{json}");
    }
    for (method, path, body) in [
        ("POST", "/api/v1/tokens", Some(r#"{"name":"wide","role":"admin"}"#)),
        ("GET", "/api/v1/tokens", None),
        ("DELETE", "/api/v1/tokens/to-b", None),
    ] {
        let (status, json) = call(&a, method, path, Some(&scoped_admin), body).await;
        assert_eq!(status, 403, "{method} {path} by a scoped admin: {json}");
    }
    assert_eq!(snapshot(&a), before, "nothing was submitted, made or revoked");
    // Inside its scope the operator still submits.
    let body = r#"{"partner":"b","rule":"default","direction":"push","file":"f.bin"}"#;
    let (status, json) = call(&a, "POST", "/api/v1/transfers", Some(&to_b), Some(body)).await;
    assert_eq!(status, 201, "{json}");
    a.shutdown().await;
}
