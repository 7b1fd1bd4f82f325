//! What a new operator trips over, run as the `ferry` binary: each mistake
//! is refused with one message that names the cause (the key, the rule, the
//! path, the other node) and says what to do, and each cause is said once.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::procs::{run_ferry, two_nodes, NodeProc};

const WITHIN: Duration = Duration::from_secs(60);

async fn ferry(args: &[&str]) -> Output {
    run_ferry(args, WITHIN).await
}

/// `ferry node --config CONFIG`, which must fail; its stderr.
async fn node_fails(config: &Path) -> String {
    let out = ferry(&["node", "--config", &config.to_string_lossy()]).await;
    assert!(!out.status.success(), "the node started: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `error:` line of a failed command.
fn error_line(stderr: &str) -> &str {
    stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in {stderr}"))
}

#[tokio::test]
async fn a_typo_in_a_node_config_stops_the_node_naming_the_key() {
    let (_dir, _layout, configs) = two_nodes();
    let text = std::fs::read_to_string(&configs[0]).expect("config");
    std::fs::write(&configs[0], text.replacen("concurrency", "concurency", 1)).expect("write");
    let stderr = node_fails(&configs[0]).await;
    let line = error_line(&stderr);
    assert!(line.contains("unknown field `concurency`") && line.contains("at the top level"), "{stderr}");
    assert!(!stderr.contains("node started"), "{stderr}");
}

#[tokio::test]
async fn a_receive_folder_that_is_a_file_stops_the_node_naming_the_rule_and_path() {
    let (_dir, layout, configs) = two_nodes();
    let recv = layout.config("a").expect("a").rules[0].recv_dir.clone();
    std::fs::remove_dir_all(&recv).expect("remove the folder");
    std::fs::write(&recv, b"not a folder").expect("a file instead");
    let stderr = node_fails(&configs[0]).await;
    let line = error_line(&stderr);
    assert!(line.contains("rule \"default\"") && line.contains(&recv.display().to_string()), "{stderr}");
    assert!(line.contains("is not a folder"), "{stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_said_once() {
    let stderr = node_fails(Path::new("/nonexistent/ferry/a.toml")).await;
    let line = error_line(&stderr);
    assert!(line.contains("/nonexistent/ferry/a.toml"), "the path is named: {line}");
    assert_eq!(line.matches("No such file or directory").count(), 1, "the cause once: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_folder_names_the_first() {
    let (_dir, layout, configs) = two_nodes();
    let mut first = NodeProc::start(&layout, "a", &configs[0], 1);
    first.wait_ready().await;
    let log = std::fs::read_to_string(&first.log).expect("log");
    assert!(log.contains("rule default: sends from"), "the start-up log lists the rules: {log}");
    assert!(log.contains("partner b at"), "and the partners: {log}");
    // Another config on the same data folder (other ports).
    let mut cfg = layout.config("a").expect("a").clone();
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.api = ferry::cluster::free_tcp().expect("port");
    let second = configs[0].with_file_name("a-again.toml");
    std::fs::write(&second, cfg.to_toml()).expect("write");
    let stderr = node_fails(&second).await;
    let line = error_line(&stderr);
    assert!(line.contains("another ferry node"), "{stderr}");
    assert!(line.contains(&format!("pid {}", first.pid())), "{stderr}");
    assert!(!line.contains("could not acquire lock"), "{stderr}");
    assert_eq!(stderr.matches("another ferry node").count(), 1, "said once: {stderr}");
}

#[tokio::test]
async fn no_node_behind_the_api_is_not_called_a_refusal() {
    let port = ferry::cluster::free_tcp().expect("a free port").port().to_string();
    let certs = tempfile::tempdir().expect("tempdir");
    ferry::certs::init(certs.path(), &["a".to_string()]).expect("a CA");
    let ca = certs.path().join(ferry::certs::CA_CERT_FILE);
    let ca = ca.to_str().expect("UTF-8 path");
    for api in [port.clone(), format!("127.0.0.1:{port}")] {
        let out = ferry(&["send", "--api", &api, "--ca", ca, "b", "default", "f.bin"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = error_line(&stderr);
        assert!(!line.contains("refused the transfer"), "{line}");
        assert!(line.contains(&format!("cannot reach node API at https://127.0.0.1:{port}")), "{line}");
        assert!(line.contains("--api") && line.contains("FERRY_API"), "says how to choose: {line}");
    }
}

/// A request whose partner is down says why it waits, and until when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_says_why() {
    let mut layout = common::Layout::new(&["a", "b"]);
    layout.config_mut("a").connect_timeout_ms = 300;
    let a = layout.start("a").await;
    common::write_random(&layout.out_dir("a").join("f.bin"), 10);
    let rec = a.handle().submit(common::submit(ferry::protocol::Direction::Push, "b", "f.bin")).await.expect("queued");
    let deadline = tokio::time::Instant::now() + WITHIN;
    let waiting = loop {
        let now = a.handle().store().get(&rec.id).expect("store").expect("record");
        if let Some(w) = a.handle().view(&now).waiting {
            break w;
        }
        assert!(tokio::time::Instant::now() < deadline, "no waiting reason within {WITHIN:?}: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(waiting.starts_with("partner b is unavailable"), "{waiting}");
    assert!(waiting.contains("cluster.partner_wait_secs") && waiting.contains("3600 s"), "{waiting}");
    a.shutdown().await;
}

/// A node writes its pid into its data folder while it holds it, and takes
/// it away at a clean shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_lives_as_long_as_the_node() {
    let layout = common::Layout::new(&["a", "b"]);
    let pid_file = layout.config("a").data_dir.join(ferry::node::PID_FILE);
    let a = layout.start("a").await;
    let text = std::fs::read_to_string(&pid_file).expect("pid file while running");
    assert_eq!(text.trim(), std::process::id().to_string());
    a.shutdown().await;
    assert!(!pid_file.exists(), "removed at a clean shutdown");
}
