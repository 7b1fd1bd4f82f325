//! Listing at scale: `GET /api/v1/transfers` pages through 100,000 records
//! in creation order, each exactly once, filtered by status, partner, rule,
//! external job id and time range from the store's indexes; the time a page
//! takes is printed (measured, not asserted).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use ferry::model::TransferFilter;
use ferry::protocol::{Direction, RequestId};
use ferry::store::{ListQuery, RequestRecord, Role, Status, Step, Store};

const RECORDS: u64 = 100_000;
const BASE_MS: u64 = 1_700_000_000_000;

/// Record `i`: created at BASE_MS + i; Done when i is a multiple of 3, else InError;
/// partner b or c alternately; rule "default", or "payroll" every 10th;
/// job id "job-N" every 1,000th.
fn record(i: u64) -> RequestRecord {
    RequestRecord {
        created_at: BASE_MS + i,
        status: if i.is_multiple_of(3) { Status::Done } else { Status::InError },
        step: Step::AllDone,
        external_job_id: (i.is_multiple_of(1_000)).then(|| format!("job-{i}")),
        ..RequestRecord::new(
            RequestId::generate(),
            Role::Requester,
            if i.is_multiple_of(2) { "b" } else { "c" },
            if i.is_multiple_of(10) { "payroll" } else { "default" },
            Direction::Push,
            &format!("f{i}"),
        )
    }
}

/// Every page of `filter`, `limit` at a time: the ids in order and the
/// slowest page.
async fn every_page(client: &ferry::api::ApiClient, filter: TransferFilter) -> (Vec<String>, Duration, usize) {
    let mut filter = TransferFilter { limit: Some(filter.limit.unwrap_or(1_000)), ..filter };
    let (mut ids, mut slowest, mut pages) = (Vec::new(), Duration::ZERO, 0);
    loop {
        let started = Instant::now();
        let (page, next) = client.list_page(&filter).await.expect("a page");
        slowest = slowest.max(started.elapsed());
        pages += 1;
        ids.extend(page.into_iter().map(|v| v.id));
        match next {
            Some(c) => filter.cursor = Some(c),
            None => return (ids, slowest, pages),
        }
        assert!(pages <= 2 * RECORDS as usize, "paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_over_100000_records_returns_each_exactly_once() {
    let layout = Layout::new(&["a", "b"]);
    let store_dir = layout.config("a").data_dir.join("store");
    let started = Instant::now();
    let mut expected = Vec::new();
    {
        let store = Store::open(&store_dir).expect("store");
        for i in 0..RECORDS {
            let rec = store.insert(record(i), "made by the test").expect("insert");
            expected.push(rec);
        }
        store.flush_blocking().expect("flush");
        // The store answers a page straight from its indexes.
        let page =
            store.page(&ListQuery { status: Some(Status::Done), limit: 10, ..Default::default() }).expect("page");
        assert_eq!(page.records.len(), 10);
        assert!(page.records.iter().all(|r| r.status == Status::Done));
    }
    println!("inserted {RECORDS} records in {:.1} s", started.elapsed().as_secs_f64());
    let a = layout.start("a").await;
    let client = api_client(&a);

    // Everything, 1,000 at a time: each once, in creation order.
    let (ids, slowest, pages) = every_page(&client, TransferFilter::default()).await;
    let want: Vec<String> = expected.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids.len(), RECORDS as usize);
    assert_eq!(ids, want, "every record once, oldest first");
    println!("{pages} pages of 1,000 over {RECORDS} records: slowest page {:.1} ms", slowest.as_secs_f64() * 1000.0);

    // Filters, alone and together, each from its index.
    let count = |f: &dyn Fn(u64) -> bool| (0..RECORDS).filter(|i| f(*i)).count();
    let cases: Vec<(TransferFilter, usize)> = vec![
        (TransferFilter { status: Some("done".into()), ..Default::default() }, count(&|i| i.is_multiple_of(3))),
        (TransferFilter { partner: Some("c".into()), ..Default::default() }, count(&|i| i % 2 == 1)),
        (
            TransferFilter { rule: Some("payroll".into()), status: Some("InError".into()), ..Default::default() },
            count(&|i| i.is_multiple_of(10) && !i.is_multiple_of(3)),
        ),
        (TransferFilter { job: Some("job-42000".into()), ..Default::default() }, 1),
        (
            TransferFilter {
                from: Some(BASE_MS + 500),
                to: Some(BASE_MS + 2_500),
                partner: Some("b".into()),
                ..Default::default()
            },
            count(&|i| (500..2_500).contains(&i) && i.is_multiple_of(2)),
        ),
    ];
    for (filter, want) in cases {
        let (ids, slowest, _) = every_page(&client, filter.clone()).await;
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!((ids.len(), unique.len()), (want, want), "{filter:?}");
        println!("{filter:?}: {want} records, slowest page {:.1} ms", slowest.as_secs_f64() * 1000.0);
    }
    // A bad cursor or limit is refused and says why.
    let bad = client.list_page(&TransferFilter { cursor: Some("yesterday".into()), ..Default::default() }).await;
    assert_eq!(bad.expect_err("refused").code(), Some("bad_cursor"));
    let bad = client.list_page(&TransferFilter { limit: Some(0), ..Default::default() }).await;
    assert_eq!(bad.expect_err("refused").code(), Some("bad_limit"));
    a.shutdown().await;
}
