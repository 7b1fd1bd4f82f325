//! `GET /metrics` after known transfers: the transfer counts, the bytes
//! each node sent and received, the files delivered and the API requests
//! add up to what was done, the scrape parses as OpenMetrics text, and only
//! a `metrics` (or `admin`) token without a scope may read it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ferry::model::NewToken;
use ferry::node::Node;
use ferry::protocol::Direction;
use ferry::store::{Status, TokenRole};

const WITHIN: Duration = Duration::from_secs(60);

/// Every sample of an OpenMetrics scrape, `name{labels}` → value; panics
/// on a line that is neither a comment nor `name value`, or without `# EOF`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "a scrape ends with # EOF:\n{text}");
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not `name value`: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(samples.insert(name.to_owned(), value).is_none(), "sample repeated: {line:?}");
    }
    samples
}

async fn scrape(node: &Node, token: Option<&str>) -> (u16, String, String) {
    let header = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
    raw_exchange(node.handle().config(), node.api_addr(), "GET", "/metrics", &headers, None).await
}

async fn token(node: &Node, name: &str, role: TokenRole, rules: &[&str]) -> String {
    let t =
        NewToken { name: name.into(), role, rules: rules.iter().map(|s| s.to_string()).collect(), partners: vec![] };
    api_client(node).create_token(&t).await.expect("token made").token
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_bytes_add_up_after_known_transfers() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;

    // Three pushes a -> b, one pull b -> a, one pull of a missing file.
    let pushed = [1_000usize, 20_000, 300_000];
    let mut ids = Vec::new();
    for (i, size) in pushed.iter().enumerate() {
        write_random(&layout.out_dir("a").join(format!("p{i}.bin")), *size);
        ids.push(a.handle().submit(submit(Direction::Push, "b", &format!("p{i}.bin"))).await.expect("submitted").id);
    }
    write_random(&layout.out_dir("b").join("pulled.bin"), 5_000);
    ids.push(a.handle().submit(submit(Direction::Pull, "b", "pulled.bin")).await.expect("submitted").id);
    let missing = a.handle().submit(submit(Direction::Pull, "b", "missing.bin")).await.expect("submitted").id;
    for id in &ids {
        assert_eq!(wait_final(&a.handle(), id, WITHIN).await.status, Status::Done);
        assert_eq!(wait_final(&b.handle(), id, WITHIN).await.status, Status::Done);
    }
    assert_eq!(wait_final(&a.handle(), &missing, WITHIN).await.status, Status::InError);

    let scraper = token(&a, "prometheus", TokenRole::Metrics, &[]).await;
    let (status, head, text) = scrape(&a, Some(&scraper)).await;
    assert_eq!(status, 200, "{text}");
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    let on_a = parse(&text);
    let sent: usize = pushed.iter().sum();
    assert_eq!(value(&on_a, r#"ferry_transfers{status="Done",rule="default",partner="b"}"#), 4.0);
    assert_eq!(value(&on_a, r#"ferry_transfers{status="InError",rule="default",partner="b"}"#), 1.0);
    assert_eq!(value(&on_a, r#"ferry_transfers_finished_total{status="Done",rule="default",partner="b"}"#), 4.0);
    assert_eq!(value(&on_a, r#"ferry_transfers_finished_total{status="InError",rule="default",partner="b"}"#), 1.0);
    assert_eq!(value(&on_a, r#"ferry_transfer_bytes_total{direction="sent",partner="b"}"#), sent as f64);
    assert_eq!(value(&on_a, r#"ferry_transfer_bytes_total{direction="received",partner="b"}"#), 5_000.0);
    assert_eq!(value(&on_a, r#"ferry_files_delivered_total{rule="default",partner="b"}"#), 1.0, "the pull landed on a");
    assert_eq!(value(&on_a, r#"ferry_transfer_duration_seconds_count{rule="default",status="Done"}"#), 4.0);
    assert_eq!(value(&on_a, r#"ferry_partner_available{partner="b"}"#), 1.0);
    assert_eq!(value(&on_a, r#"ferry_connections{partner="b"}"#), 1.0);
    assert!((364.0..=365.0).contains(&value(&on_a, "ferry_certificate_days_left")));
    assert!((364.0..=365.0).contains(&value(&on_a, r#"ferry_partner_certificate_days_left{partner="b"}"#)));
    assert!(value(&on_a, "ferry_store_flush_seconds_count") > 0.0);

    // b, the other side of the same transfers.
    let on_b = parse(&scrape(&b, Some(&token(&b, "prometheus", TokenRole::Metrics, &[]).await)).await.2);
    assert_eq!(value(&on_b, r#"ferry_transfers{status="Done",rule="default",partner="a"}"#), 4.0);
    assert_eq!(value(&on_b, r#"ferry_transfer_bytes_total{direction="received",partner="a"}"#), sent as f64);
    assert_eq!(value(&on_b, r#"ferry_transfer_bytes_total{direction="sent",partner="a"}"#), 5_000.0);
    assert_eq!(value(&on_b, r#"ferry_files_delivered_total{rule="default",partner="a"}"#), 3.0);

    // Who may scrape: no token 401, a viewer or a scoped metrics token 403;
    // the metrics token reads nothing else. Each answer is counted by route.
    assert_eq!(scrape(&a, None).await.0, 401);
    assert_eq!(scrape(&a, Some(&token(&a, "viewer", TokenRole::Viewer, &[]).await)).await.0, 403);
    assert_eq!(scrape(&a, Some(&token(&a, "scoped", TokenRole::Metrics, &["default"]).await)).await.0, 403);
    let headers = [("authorization", format!("Bearer {scraper}"))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, _) =
        raw_exchange(a.handle().config(), a.api_addr(), "GET", "/api/v1/transfers", &headers, None).await;
    assert_eq!(status, 403, "a metrics token reads no transfers");
    let again = parse(&scrape(&a, Some(&scraper)).await.2);
    assert_eq!(value(&again, r#"ferry_api_requests_total{method="GET",route="/metrics",status="200"}"#), 1.0);
    assert_eq!(value(&again, r#"ferry_api_requests_total{method="GET",route="/metrics",status="401"}"#), 1.0);
    assert_eq!(value(&again, r#"ferry_api_requests_total{method="GET",route="/metrics",status="403"}"#), 2.0);
    assert_eq!(value(&again, r#"ferry_api_requests_total{method="GET",route="/api/v1/transfers",status="403"}"#), 1.0);
    assert_eq!(value(&again, r#"ferry_api_requests_total{method="POST",route="/api/v1/tokens",status="201"}"#), 3.0);

    // A restarted node counts the records it holds.
    a.shutdown().await;
    let a = layout.start("a").await;
    let restarted = parse(&scrape(&a, Some(&scraper)).await.2);
    assert_eq!(value(&restarted, r#"ferry_transfers{status="Done",rule="default",partner="b"}"#), 4.0);
    assert_eq!(value(&restarted, r#"ferry_transfers{status="InError",rule="default",partner="b"}"#), 1.0);
    for n in [a, b] {
        n.shutdown().await;
    }
}
