//! The shapes the REST API speaks, shared by the server ([`crate::api::server`]),
//! the client ([`crate::api::client`]) and the node that answers them.
//!
//! Plain data and the errors a submission or an operator command can meet;
//! no I/O. The node and the actors produce these; the API only moves them.

pub mod token;
pub mod view;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use token::{CreatedToken, NewToken, TokenView};
pub use view::{ErrorBody, ErrorView, LogLineView, MemberView, RuleView, SetFilesPage, SetView, TransferView};

use crate::protocol::control::RequestState;
use crate::protocol::{Compression, Direction, ErrorCode, RequestId, TargetMode};
use crate::store::StoreError;

/// A partner's reachability as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PartnerState {
    Unknown,
    Available,
    Unavailable,
}

pub use crate::protocol::names::{MAX_EXTERNAL_JOB_ID, MAX_TRANSFER_INFO};

/// A transfer to submit.
///
/// Submitted to the node that takes part in it, `partner` names the other
/// node (id, alias or group). Submitted anywhere in the cluster, `source`
/// and `target` name the node that has the file and the node that gets it
/// (see [`NodeHandle::submit_anywhere`](crate::node::NodeHandle::submit_anywhere)).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Partner id, alias or group.
    #[serde(default)]
    pub partner: String,
    pub rule: String,
    pub direction: Direction,
    /// A plain file name in the rule's send folder (of this node for a push,
    /// of the partner for a pull). A push naming a folder sends its tree as
    /// a file set. Exactly one of `file`, `pattern` and `files` is given.
    #[serde(default)]
    pub file: String,
    /// Push a file set: a glob relative to the rule's send folder
    /// (`*.csv`, `2026-11-??/*.xml`, `daily/**`), resolved by this node
    /// when the request is submitted. See docs/FILESETS.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Push a file set: relative paths below the rule's send folder (a
    /// folder sends its tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    /// File sets: what an empty match means, overriding the rule's
    /// `on_empty` (`fail`: refused with `no_files`; `succeed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_empty: Option<crate::fileset::progress::OnEmpty>,
    /// File sets: what one failed file means, overriding the rule's
    /// `on_failure` (`stop` or `continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<crate::fileset::progress::OnFailure>,
    /// File sets: when the receiver puts files under their final names,
    /// overriding the rule's `delivery` (`each` or `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::fileset::progress::Delivery>,
    #[serde(default)]
    pub external_job_id: Option<String>,
    #[serde(default)]
    pub transfer_info: String,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub compression: Compression,
    /// Submit anywhere: the node that sends the file.
    #[serde(default)]
    pub source: Option<String>,
    /// Submit anywhere: the node that receives the file.
    #[serde(default)]
    pub target: Option<String>,
    /// How the receiver treats an existing target file (`create`,
    /// `replace`, `append`, `backup`), overriding the rule's `target`.
    #[serde(default)]
    pub target_mode: Option<TargetMode>,
}

impl Submit {
    /// A transfer of one named file under `rule`, everything else left to
    /// the rule and the node's defaults.
    pub fn file(partner: &str, rule: &str, direction: Direction, file: &str) -> Submit {
        Submit {
            partner: partner.into(),
            rule: rule.into(),
            direction,
            file: file.into(),
            pattern: None,
            files: None,
            on_empty: None,
            on_failure: None,
            delivery: None,
            external_job_id: None,
            transfer_info: String::new(),
            block_size: None,
            compression: Compression::None,
            source: None,
            target: None,
            target_mode: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("unknown partner {0:?}")]
    UnknownPartner(String),
    #[error("unknown rule {0:?}")]
    UnknownRule(String),
    #[error("partner {partner:?} may not use rule {rule:?}")]
    RuleNotAllowed { rule: String, partner: String },
    #[error("bad file name: {0}")]
    BadFileName(String),
    #[error("{0}")]
    FileNotFound(String),
    /// A file set's pattern matched no file and the policy says that is
    /// an error.
    #[error("{0}")]
    NoFiles(String),
    #[error("bad block size: {0}")]
    BadBlockSize(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("node {node} refused the transfer: {message}")]
    Refused { node: String, code: ErrorCode, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubmitError {
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::UnknownPartner(_) => "unknown_partner",
            SubmitError::UnknownRule(_) => "unknown_rule",
            SubmitError::RuleNotAllowed { .. } => "rule_not_allowed",
            SubmitError::BadFileName(_) => "bad_file_name",
            SubmitError::FileNotFound(_) => "file_not_found",
            SubmitError::NoFiles(_) => "no_files",
            SubmitError::BadBlockSize(_) => "bad_block_size",
            SubmitError::ShuttingDown => "shutting_down",
            SubmitError::BadRequest(_) => "bad_request",
            SubmitError::Unreachable(_) => "unreachable",
            SubmitError::Refused { .. } => "refused",
            SubmitError::Store(_) => "store",
        }
    }

    /// The protocol error code a refused handover carries back.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            SubmitError::UnknownPartner(_) => ErrorCode::UnknownPartner,
            SubmitError::UnknownRule(_) => ErrorCode::UnknownRule,
            SubmitError::RuleNotAllowed { .. } => ErrorCode::RuleNotAllowed,
            SubmitError::BadFileName(_) => ErrorCode::BadFileName,
            SubmitError::FileNotFound(_) => ErrorCode::FileNotFound,
            SubmitError::NoFiles(_) => ErrorCode::NoFiles,
            SubmitError::BadBlockSize(_) => ErrorCode::CapabilityMismatch,
            SubmitError::ShuttingDown => ErrorCode::Shutdown,
            SubmitError::BadRequest(_) => ErrorCode::Protocol,
            SubmitError::Unreachable(_) => ErrorCode::Connection,
            SubmitError::Refused { code, .. } => *code,
            SubmitError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// Why an operator command was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("no request {0}")]
    NotFound(RequestId),
    #[error("request {id} is driven by node {partner}{}; send the command to that node's API", .at.as_ref().map(|a| format!(" (at {a})")).unwrap_or_default())]
    NotRequester { id: RequestId, partner: String, at: Option<String> },
    #[error("cannot {action} request {id}: it is {state}")]
    InvalidState { id: RequestId, action: &'static str, state: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandError {
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NotFound(_) => "not_found",
            CommandError::NotRequester { .. } => "not_requester",
            CommandError::InvalidState { .. } => "invalid_state",
            CommandError::Store(_) => "store",
        }
    }
}

/// Counts an operator (or a test) can watch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NodeStats {
    pub node_id: String,
    /// Live QUIC connections to partners.
    pub connections: usize,
    pub connections_by_partner: BTreeMap<String, usize>,
    /// Private channels (requests) running on this node, either side.
    pub open_channels: usize,
    /// Requests this node's Commander is running.
    pub running_requests: usize,
    /// The certificate this node presents now.
    pub certificate: CertificateView,
    /// Why the last reload of the TLS files was refused (the node kept
    /// the certificate above); `None` when it succeeded or none was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_reload_error: Option<String>,
}

/// The query of `GET /api/v1/transfers`: filters, a page size and where
/// the page starts. Every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransferFilter {
    /// `ToSubmit`, `Running`, `Done`, `Interrupted`, `InError` or `Cancelled`, any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The partner's node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The external job id given at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Created at or after, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Created before, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// Where the page starts: the previous page's next cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Transfers on the page, 1 to 10,000 (default 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl TransferFilter {
    /// The URL query string of this filter (without `?`).
    pub fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let texts = [("status", &self.status), ("partner", &self.partner), ("rule", &self.rule), ("job", &self.job)];
        for (name, value) in texts {
            if let Some(v) = value {
                q.append_pair(name, v);
            }
        }
        for (name, value) in [("from", self.from), ("to", self.to)] {
            if let Some(v) = value {
                q.append_pair(name, &v.to_string());
            }
        }
        if let Some(c) = &self.cursor {
            q.append_pair("cursor", c);
        }
        if let Some(l) = self.limit {
            q.append_pair("limit", &l.to_string());
        }
        q.finish()
    }
}

/// A page's size when the query gives none.
pub const DEFAULT_PAGE: usize = 1_000;

/// One change of a transfer, as `GET /api/v1/events` streams it (the SSE
/// event `transfer`; its SSE id is `position`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferEvent {
    /// Where this event is in the node's series: give it back (as
    /// `Last-Event-ID` or `?after=`) to resume after it.
    pub position: String,
    /// Unix milliseconds when the node recorded the change.
    pub at: u64,
    /// Bytes per second since the transfer's previous progress event.
    pub rate: Option<f64>,
    /// The transfer after the change.
    pub transfer: view::TransferView,
}

/// A certificate in use: the node's own, or a partner's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CertificateView {
    /// Serial number, lowercase hex (as `revoked.txt` lists it).
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whole days left before it expires (negative once expired).
    pub days_left: i64,
}

/// Where a request submitted anywhere went.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterSubmitted {
    pub id: RequestId,
    /// The node that runs the request (its requester).
    pub holder: String,
    pub state: RequestState,
}

/// A request as its two nodes know it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ClusterView {
    pub id: String,
    /// The node that runs the request (its requester), if found.
    pub holder: Option<String>,
    /// The status both nodes agree on, else the holder's.
    pub status: Option<String>,
    /// Both nodes answered and agree on the status.
    pub agreed: bool,
    /// Each node's record, by node id.
    pub nodes: Vec<RequestState>,
    /// Nodes that could not be asked, and why.
    pub unreachable: Vec<String>,
}

/// One partner as the API lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PartnerView {
    pub id: String,
    pub aliases: Vec<String>,
    pub address: String,
    pub state: PartnerState,
    /// Unix milliseconds of the last state change.
    pub since_ms: Option<u64>,
    /// Round-trip time of the last heartbeat, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Live QUIC connections to it.
    pub connections: usize,
    /// End of validity (Unix seconds) of the certificate it presented on
    /// its latest connection; `None` before the first one.
    #[serde(default)]
    pub certificate_not_after: Option<i64>,
    /// Whole days before that certificate expires.
    #[serde(default)]
    pub certificate_days_left: Option<i64>,
    pub last_error: Option<String>,
    pub keep_connected: bool,
}

/// `GET /api/v1/partners`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PartnersView {
    pub node_id: String,
    /// The certificate this node presents.
    #[serde(default)]
    pub certificate: Option<CertificateView>,
    pub partners: Vec<PartnerView>,
    pub groups: Vec<crate::config::Group>,
}

/// The query of `GET /api/v1/transfers/{id}/files`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SetFilesQuery {
    /// The index the page starts at (the previous page's `next`); 0 by default.
    #[serde(default)]
    pub cursor: Option<u32>,
    /// Files on the page: 1 to 10,000, 1,000 by default.
    #[serde(default)]
    pub limit: Option<usize>,
}
