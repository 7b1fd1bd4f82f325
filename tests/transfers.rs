//! Two real nodes on loopback in one process: pushes and pulls of files of
//! edge-case sizes, and many concurrent requests on one shared connection.

mod common;

use std::time::Duration;

use common::*;
use ferry::protocol::Direction;
use ferry::store::{Role, Status, Step};

const WITHIN: Duration = Duration::from_secs(120);

async fn transfer_and_check(
    layout: &Layout,
    a: &ferry::node::Node,
    b: &ferry::node::Node,
    direction: Direction,
    name: &str,
    size: usize,
) {
    let (src_dir, dst_dir) = match direction {
        Direction::Push => (layout.out_dir("a"), layout.in_dir("b")),
        Direction::Pull => (layout.out_dir("b"), layout.in_dir("a")),
    };
    let digest = write_random(&src_dir.join(name), size);
    let rec = a.handle().submit(submit(direction, "b", name)).await.expect("submitted");
    let done_a = wait_final(&a.handle(), &rec.id, WITHIN).await;
    assert_eq!(done_a.status, Status::Done, "{name}: {:?}", done_a.error);
    assert_eq!(done_a.step, Step::AllDone);
    assert_eq!(done_a.role, Role::Requester);
    let done_b = wait_record(&b.handle(), &rec.id, Status::Done, WITHIN).await;
    assert_eq!(done_b.id, done_a.id, "both nodes know the request under one id");
    assert_eq!(done_b.role, Role::Requested);
    assert_eq!(done_a.size, size as u64);
    assert_eq!(done_b.size, size as u64);
    let delivered_path = dst_dir.join(name);
    assert_eq!(file_digest(&delivered_path), digest, "{name}: delivered file differs from the source");
    assert_eq!(std::fs::metadata(&delivered_path).expect("delivered").len(), size as u64);
    let receiver = if direction == Direction::Push { &done_b } else { &done_a };
    assert_eq!(receiver.hash, Some(digest), "receiver recorded the verified BLAKE3");
    assert!(work_files(&dst_dir).is_empty(), "no work file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_files_of_edge_sizes_arrive_identical() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    for (name, size) in [("zero", 0), ("one", 1), ("mib-plus-one", (1 << 20) + 1), ("sixty-four-mib", 64 << 20)] {
        transfer_and_check(&layout, &a, &b, Direction::Push, &format!("push-{name}"), size).await;
        transfer_and_check(&layout, &a, &b, Direction::Pull, &format!("pull-{name}"), size).await;
    }
    let log =
        a.handle().store().job_log(&a.handle().store().list(Some(Status::Done)).expect("list")[0].id).expect("log");
    assert!(log.iter().any(|l| l.message.starts_with("submitted")), "job log starts with the submission: {log:?}");
    assert!(log.iter().any(|l| l.status == Status::Done), "job log records Done");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_share_one_connection() {
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let mut ids = Vec::new();
    let mut digests = Vec::new();
    for i in 0..50 {
        let name = format!("f{i:02}");
        digests.push((name.clone(), write_random(&layout.out_dir("a").join(&name), 200_000 + i * 1000)));
        let dir = if i % 2 == 0 { Direction::Push } else { Direction::Pull };
        if dir == Direction::Pull {
            std::fs::copy(layout.out_dir("a").join(&name), layout.out_dir("b").join(&name)).expect("copy");
        }
        ids.push((dir, name.clone(), a.handle().submit(submit(dir, "b", &name)).await.expect("submit").id));
    }
    // While they run, at most one connection joins the pair.
    let mut peak = 0;
    for (_, _, id) in &ids {
        peak = peak.max(a.handle().stats().await.connections);
        let r = wait_final(&a.handle(), id, WITHIN).await;
        assert_eq!(r.status, Status::Done, "{:?}", r.error);
    }
    for (dir, name, _) in &ids {
        let dst = if *dir == Direction::Push { layout.in_dir("b") } else { layout.in_dir("a") };
        let want = digests.iter().find(|(n, _)| n == name).expect("digest").1;
        assert_eq!(file_digest(&dst.join(name)), want, "{name}");
    }
    let sa = a.handle().stats().await;
    let sb = b.handle().stats().await;
    assert_eq!(sa.connections_by_partner.get("b"), Some(&1), "a: {sa:?}");
    assert_eq!(sb.connections_by_partner.get("a"), Some(&1), "b: {sb:?}");
    assert_eq!(sa.connections, 1);
    assert!(peak <= 1, "peak connections {peak}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A sparse source arrives sparse where the receiver's file system allows
/// it (blocks of zeros are not written), and is still verified whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_file_arrives_sparse_and_verified() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let layout = Layout::new(&["a", "b"]);
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let path = layout.out_dir("a").join("sparse.img");
    write_random(&path, 1 << 20);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    f.seek(SeekFrom::Start(31 << 20)).expect("seek");
    f.write_all(&[0x5a; 1 << 20]).expect("tail");
    drop(f);
    let source = file_digest(&path);
    let rec = a.handle().submit(submit(Direction::Push, "b", "sparse.img")).await.expect("submitted");
    let done = wait_final(&a.handle(), &rec.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let got = layout.in_dir("b").join("sparse.img");
    assert_eq!(file_digest(&got), source, "verified whole");
    let meta = std::fs::metadata(&got).expect("delivered");
    assert_eq!(meta.len(), 32 << 20);
    let allocated = meta.blocks() * 512;
    println!("32 MiB delivered, {} KiB allocated", allocated / 1024);
    assert!(allocated < 8 << 20, "the 30 MiB of zeros were not written: {allocated} bytes allocated");
    a.shutdown().await;
    b.shutdown().await;
}

/// With the node's send pool at its smallest (room for two frames of the
/// largest block), sixteen pushes of 16 MiB at once (256 blocks, while the
/// pool holds 32 and each transfer one of its own) wait for room instead
/// of reading ahead, and every file still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_through_the_smallest_send_pool_all_arrive() {
    let mut layout = Layout::new(&["a", "b"]);
    let smallest = 2 * (ferry::protocol::MAX_BLOCK_SIZE as usize + ferry::protocol::session::FRAME_FIELDS);
    layout.config_mut("a").transport.send_buffer_bytes = smallest;
    let a = layout.start("a").await;
    let b = layout.start("b").await;
    let mut sent = Vec::new();
    for i in 0..16 {
        let name = format!("p{i:02}");
        let digest = write_random(&layout.out_dir("a").join(&name), (16 << 20) + i * 4099);
        let id = a.handle().submit(submit(Direction::Push, "b", &name)).await.expect("submit").id;
        sent.push((name, digest, id));
    }
    for (name, digest, id) in &sent {
        let r = wait_final(&a.handle(), id, WITHIN).await;
        assert_eq!(r.status, Status::Done, "{name}: {:?}", r.error);
        assert_eq!(file_digest(&layout.in_dir("b").join(name)), *digest, "{name}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
