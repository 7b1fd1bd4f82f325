//! Writes the committed seed corpus (`fuzz/corpus/<target>/seed-*`): one
//! valid input per message variant, control ask and answer, config shape
//! and API body, so the fuzzers start from inputs that get past the
//! decoders' first checks.
//!
//! Run from `fuzz/`: `cargo run --example make_seeds` (plain build, no
//! fuzzing instrumentation). It overwrites the `seed-*` files only; inputs
//! kept from crashes (`crash-*`) and the fuzzers' own finds are left alone.

use std::path::Path;

use ferry::config::NodeConfig;
use ferry::protocol::codec::{encode, encode_control};
use ferry::protocol::control::{Answer, Ask, Handover, RequestState};
use ferry::protocol::*;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn id(n: u8) -> RequestId {
    RequestId::parse(&format!("{n:02x}").repeat(16)).expect("hex id")
}

fn state() -> RequestState {
    RequestState {
        node: "a".into(),
        role: "Requester".into(),
        partner: "b".into(),
        direction: Direction::Push,
        rule: "default".into(),
        file: "x.bin".into(),
        status: "Running".into(),
        step: "Transfer".into(),
        size: 1 << 20,
        transferred: 4096,
        error: Some("Connection: lost".into()),
        updated_at: 1_700_000_000_000,
    }
}

fn frames() {
    let payload = b"hello ferry, one small block".to_vec();
    let messages = [
        ("startup", Message::Startup(Startup { version: PROTOCOL_VERSION, request_id: id(0xab) })),
        ("authent", Message::Authent(Authent { host_id: "a".into(), capabilities: Capabilities::default() })),
        (
            "request-push",
            Message::Request(Request {
                request_id: id(0x01),
                rule: "default".into(),
                direction: Direction::Push,
                file_name: "x.bin".into(),
                size: 123_456,
                block_size: DEFAULT_BLOCK_SIZE,
                restart_offset: u64::MAX,
                prefix_hash: None,
                delivered: None,
                options: TransferOptions {
                    compression: Compression::Lz4,
                    target_mode: None,
                    hold: false,
                    as_resolved: Some(ferry::protocol::AsResolved { size: 4096, modified_ns: 1_700_000_000_000_000_000 }),
                },
                external_job_id: Some("job-7".into()),
                transfer_info: "nightly".into(),
            }),
        ),
        (
            "request-pull",
            Message::Request(Request {
                request_id: id(0x02),
                rule: "default".into(),
                direction: Direction::Pull,
                file_name: "report.csv".into(),
                size: 0,
                block_size: MIN_BLOCK_SIZE,
                restart_offset: 8192,
                prefix_hash: Some(Digest::of(b"prefix")),
                delivered: Some(EndTransfer { bytes: 8192, hash: Digest::of(b"whole") }),
                options: TransferOptions::default(),
                external_job_id: None,
                transfer_info: String::new(),
            }),
        ),
        (
            "valid",
            Message::Valid(Valid {
                size: 123_456,
                block_size: DEFAULT_BLOCK_SIZE,
                restart_offset: 4096,
                prefix_hash: Some(Digest::of(b"prefix")),
                compression: Compression::Lz4,
            }),
        ),
        ("refused", Message::Refused(Refused { code: ErrorCode::UnknownRule, message: "no rule \"x\"".into() })),
        (
            "data",
            Message::Data(Data {
                offset: 4096,
                raw_len: payload.len() as u32,
                hash: Digest::of(&payload),
                payload: payload.clone().into(),
                compressed: false,
            }),
        ),
        (
            "data-compressed",
            Message::Data(Data {
                offset: 0,
                raw_len: 1000,
                payload: vec![0x1f, 0x61, 0x01, 0x00, 0xff, 0xff, 0xff, 0xd8, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61].into(),
                compressed: true,
                hash: Digest::of(&[b'a'; 1000]),
            }),
        ),
        ("end-transfer", Message::EndTransfer(EndTransfer { bytes: 123_456, hash: Digest::of(b"whole") })),
        ("end-request", Message::EndRequest(EndRequest {})),
        ("error", Message::Error(ErrorReport { code: ErrorCode::BlockHashMismatch, message: "block 3".into() })),
        ("cancel", Message::Cancel(Cancel { reason: "operator".into() })),
        ("resume", Message::Resume(Resume { offset: 65536 })),
        ("complete", Message::Complete(EndTransfer { bytes: 42, hash: Digest::of(b"done") })),
    ];
    let mut stream = Vec::new();
    for (name, msg) in &messages {
        let frame = encode(msg).expect("encodes");
        // The target reads the input both as a frame and as a bare body.
        write("frame", name, &frame);
        write("frame", &format!("{name}-body"), &frame[codec::HEADER_LEN..]);
        if matches!(name, &"startup" | &"authent" | &"request-push" | &"valid") {
            stream.extend_from_slice(&frame);
        }
    }
    write("frame", "stream-handshake", &stream);
}

fn control() {
    let asks = [
        ("ask-ping", Ask::Ping),
        (
            "ask-handover",
            Ask::Handover(Handover {
                id: id(0x0c),
                partner: "c".into(),
                direction: Direction::Pull,
                rule: "default".into(),
                file: "x.bin".into(),
                external_job_id: Some("job-1".into()),
                transfer_info: "info".into(),
                block_size: Some(65536),
                compression: Compression::Lz4,
                submitted_on: "b".into(),
                target_mode: Some(ferry::protocol::TargetMode::Append),
            }),
        ),
        ("ask-query", Ask::Query(id(0x0d))),
        ("ask-relay-dial-back", Ask::RelayDialBack { target: "c".into() }),
        ("ask-dial-me", Ask::DialMe { node: "a".into() }),
        ("ask-release", Ask::Release { set: id(0x0e), files: 12, pattern: "night/**".into() }),
        ("ask-list", Ask::List { rule: "default".into(), patterns: vec!["night/**".into()], start: 300 }),
    ];
    for (name, ask) in &asks {
        let frame = encode_control(ask).expect("encodes");
        write("control", name, &frame);
        write("control", &format!("{name}-body"), &frame[codec::HEADER_LEN..]);
    }
    let answers = [
        ("answer-pong", Answer::Pong),
        ("answer-accepted", Answer::Accepted(state())),
        ("answer-state", Answer::State(Some(state()))),
        ("answer-state-none", Answer::State(None)),
        ("answer-dialed", Answer::Dialed),
        ("answer-refused", Answer::Refused { code: ErrorCode::UnknownPartner, message: "who is z?".into() }),
        ("answer-released", Answer::Released { delivered: 12 }),
        (
            "answer-listed",
            Answer::Listed {
                entries: vec![
                    ferry::protocol::control::ListedEntry { path: "night/a.csv".into(), size: 12, modified_ns: 1 },
                    ferry::protocol::control::ListedEntry { path: "night/empty/".into(), size: 0, modified_ns: 0 },
                ],
                total: 2,
                digest: ferry::protocol::Digest([9; 32]),
            },
        ),
    ];
    for (name, answer) in &answers {
        let frame = encode_control(answer).expect("encodes");
        write("control", name, &frame);
        write("control", &format!("{name}-body"), &frame[codec::HEADER_LEN..]);
    }
}

const NODE_SAMPLE: &str = r#"node_id = "a"
listen = "127.0.0.1:7001"
api = "127.0.0.1:8001"
data_dir = "data"
[tls]
cert = "certs/a.pem"
key = "certs/a.key"
ca = "certs/ca.pem"
[[partners]]
id = "b"
address = "127.0.0.1:7002"
aliases = ["bravo"]
[[rules]]
name = "default"
send_dir = "out"
recv_dir = "/abs/in"
partners = ["b"]
"#;

const NODE_FULL: &str = r#"node_id = "b"
listen = "[::1]:7002"
api = "127.0.0.1:8002"
data_dir = "/var/lib/ferry"
concurrency = 8
block_size = 65536
restart_interval_bytes = 1048576
restart_interval_secs = 0
connect_timeout_ms = 2000

[retry]
attempts = 3
initial_delay_ms = 100
max_delay_ms = 1000

[tls]
cert = "../certs/b.pem"
key = "../certs/b.key"
ca = "../certs/ca.pem"

[cluster]
heartbeat_ms = 500
heartbeat_timeout_ms = 2000
probe_interval_ms = 1000
partner_wait_secs = 60
reverse_connect_timeout_ms = 3000
relays = ["c"]

[[partners]]
id = "a"
address = "127.0.0.1:7001"
keep_connected = true

[[partners]]
id = "c"
address = "127.0.0.1:7003"
aliases = ["charlie", "c2"]

[[groups]]
name = "backends"
members = ["a", "c"]

[[rules]]
name = "default"
send_dir = "out"
recv_dir = "in"
partners = ["*"]
on_resume_mismatch = "fail"

[rules.retry]
attempts = 5
initial_delay_ms = 200
max_delay_ms = 5000
"#;

fn configs() {
    NodeConfig::parse(NODE_SAMPLE, "sample", Path::new("/base")).expect("sample config is valid");
    NodeConfig::parse(NODE_FULL, "full", Path::new("/base")).expect("full config is valid");
    write("config", "node-sample.toml", NODE_SAMPLE.as_bytes());
    write("config", "node-full.toml", NODE_FULL.as_bytes());
    let cluster_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster");
    for name in ["local-3.toml", "local-5.toml"] {
        let text = std::fs::read_to_string(cluster_dir.join(name)).expect("cluster file");
        ferry::cluster::spec::ClusterSpec::parse(&text, name).expect("cluster file is valid");
        write("config", &format!("cluster-{name}"), text.as_bytes());
    }
    // A generated node.toml, as `ferry cluster up` writes it.
    let text = std::fs::read_to_string(cluster_dir.join("local-3.toml")).expect("cluster file");
    let spec = ferry::cluster::spec::ClusterSpec::parse(&text, "local-3").expect("valid");
    write("config", "node-generated.toml", spec.node_config(0).expect("node a").to_toml().as_bytes());
}

fn api() {
    let bodies: [(&str, &str); 8] = [
        ("submit-push.json", r#"{"partner":"b","rule":"default","direction":"push","file":"x.bin"}"#),
        ("submit-pull.json", r#"{"partner":"backends","rule":"default","direction":"pull","file":"report.csv","compression":"lz4","block_size":65536,"external_job_id":"job-9","transfer_info":"nightly"}"#),
        ("submit-anywhere.json", r#"{"rule":"default","direction":"push","file":"x.bin","source":"a","target":"c"}"#),
        ("error-body.json", r#"{"error":{"code":"bad_input","message":"missing field `rule`"}}"#),
        ("node-stats.json", r#"{"node_id":"a","connections":2,"connections_by_partner":{"b":1,"c":1},"open_channels":3,"running_requests":1}"#),
        ("cluster-view.json", r#"{"id":"0123456789abcdef0123456789abcdef","holder":"a","status":"Done","agreed":true,"nodes":[{"node":"a","role":"Requester","partner":"b","direction":"push","rule":"default","file":"x.bin","status":"Done","step":"AllDone","size":10,"transferred":10,"error":null,"updated_at":1}],"unreachable":["c: timed out"]}"#),
        ("status-query.txt", "status=InError"),
        ("request-id.txt", "0123456789abcdef0123456789abcdef"),
    ];
    for (name, body) in bodies {
        write("api_json", name, body.as_bytes());
    }
    let view = r#"{"id":"0123456789abcdef0123456789abcdef","role":"Requester","partner":"b","rule":"default","direction":"pull","file":"x.bin","block_size":1048576,"compression":"none","size":100,"transferred":50,"restart_offset":0,"restart_offset_durable":32,"delivered":false,"attempts":1,"retry_at":null,"status":"Running","step":"Transfer","hash":null,"external_job_id":null,"transfer_info":"","created_at":1,"updated_at":2,"started_at":1}"#;
    write("api_json", "transfer-view.json", view.as_bytes());
    write("api_json", "transfer-list.json", format!("[{view}]").as_bytes());
}

use ferry::protocol::codec;

fn set_stream() {
    use ferry::protocol::set_stream::{FileOutcome, Filed, SetFrame, StreamedFile};
    let data = b"one small file of a set\n".to_vec();
    let frames = [
        ("open", SetFrame::Open { set: id(0x10), rule: "default".into(), hold: true, files: 3, pattern: "*.csv".into() }),
        ("opened", SetFrame::Opened),
        ("refused", SetFrame::Refused { code: ErrorCode::CapabilityMismatch, message: "tasks".into() }),
        (
            "file",
            SetFrame::File(StreamedFile {
                index: 3,
                id: id(0x11),
                name: "daily/x/y.csv".into(),
                hash: ferry::protocol::Digest::of(&data),
                data,
            }),
        ),
        (
            "filed",
            SetFrame::Filed(vec![
                Filed { id: id(0x11), outcome: FileOutcome::Delivered { bytes: 24, hash: ferry::protocol::Digest([1; 32]) } },
                Filed { id: id(0x12), outcome: FileOutcome::Held { bytes: 0, hash: ferry::protocol::Digest([2; 32]) } },
                Filed { id: id(0x13), outcome: FileOutcome::Failed { code: ErrorCode::BadFileName, message: "..".into() } },
            ]),
        ),
        ("close", SetFrame::Close),
        ("closed", SetFrame::Closed),
    ];
    for (name, frame) in &frames {
        let bytes = codec::encode_set_frame(frame).expect("encodes");
        write("set_stream", name, &bytes);
        write("set_stream", &format!("{name}-body"), &bytes[codec::HEADER_LEN..]);
    }
}

fn main() {
    frames();
    control();
    set_stream();
    configs();
    api();
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
