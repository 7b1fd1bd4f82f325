//! The REST API's inputs, and the answers the command-line client decodes.
//!
//! Server side (`src/api/server.rs`), what a caller controls:
//! - the JSON body of `POST /api/v1/transfers`: `ferry::model::Submit`, whose
//!   file name then goes to `check_file_name`;
//! - the `{id}` path segment: `RequestId::parse` (via `parse_id`), and a
//!   request id in JSON (`RequestId`'s `try_from = "String"`);
//! - the `?status=` query: `Status::parse` (via `parse_status`).
//!
//! Client side (`src/api/client.rs`, `decode_answer`): the answer bodies the
//! CLI decodes from a node: `TransferView`, `Vec<TransferView>`,
//! `Vec<LogLineView>`, `ErrorBody`, `NodeStats`, `PartnersView`,
//! `ClusterView`, `ClusterSubmitted`, `Vec<RuleView>`.
//!
//! Nothing may panic. A `Submit` that decodes must serialize and decode again
//! to the same JSON value.
#![no_main]

use ferry::model::{
    ClusterSubmitted, ClusterView, ErrorBody, LogLineView, NodeStats, PartnersView, RuleView, Submit, TransferView,
};
use ferry::protocol::RequestId;
use ferry::store::Status;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<Submit>(data) {
        let _ = ferry::protocol::names::check_file_name(&s.file);
        let value = serde_json::to_value(&s).expect("a decoded Submit serializes");
        let again: Submit = serde_json::from_value(value.clone()).expect("a serialized Submit decodes");
        assert_eq!(serde_json::to_value(&again).expect("serializes"), value, "Submit changed through JSON");
    }
    let _ = serde_json::from_slice::<RequestId>(data);

    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RequestId::parse(text);
        let _ = Status::parse(text);
        // `?status=a&status=b`-like queries: each value on its own.
        for part in text.split('&') {
            let value = part.strip_prefix("status=").unwrap_or(part);
            let _ = Status::parse(value);
        }
    }

    let _ = serde_json::from_slice::<TransferView>(data);
    let _ = serde_json::from_slice::<Vec<TransferView>>(data);
    let _ = serde_json::from_slice::<Vec<LogLineView>>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    let _ = serde_json::from_slice::<NodeStats>(data);
    let _ = serde_json::from_slice::<PartnersView>(data);
    let _ = serde_json::from_slice::<ClusterView>(data);
    let _ = serde_json::from_slice::<ClusterSubmitted>(data);
    let _ = serde_json::from_slice::<Vec<RuleView>>(data);
});
