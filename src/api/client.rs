//! The client for a node's REST API, used by the command line, the cluster
//! commands and tests.
//!
//! Built on reqwest (rustls with ring, HTTP/1.1): HTTPS verified against the
//! cluster CA only (never the system's roots), a bearer token on every call,
//! per-call timeouts. It decodes the views of [`crate::model`]. A server-side
//! failure comes back as [`ClientError::Api`] with the server's code and
//! message; a node that does not answer at all as [`ClientError::Unreachable`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::model::view::{ErrorBody, LogLineView, TransferView};
use crate::model::{
    ClusterSubmitted, ClusterView, CreatedToken, NewToken, NodeStats, PartnersView, RuleView, Submit, TokenView,
    TransferFilter,
};
use crate::protocol::RequestId;
use crate::store::Status;

/// The address used when none is given.
pub const DEFAULT_API: &str = "https://127.0.0.1:8001";

/// How long one call may take, connection included, unless changed with
/// [`ApiClient::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base address is not a usable `https://host:port` or `http://host:port`.
    #[error("invalid node API address {base:?}: {reason}")]
    BadBase { base: String, reason: String },
    /// HTTPS was asked for without the cluster CA to verify the node by.
    #[error("{base} is HTTPS but no cluster CA was given to verify it: pass --ca FILE (or set FERRY_CA)")]
    NoCa { base: String },
    /// The cluster CA given does not hold a usable certificate.
    #[error("cannot use the cluster CA: {0}")]
    BadCa(String),
    /// The id is not a well-formed request id (checked before any call).
    #[error("malformed request id {0:?}: expected 32 lowercase hex characters")]
    BadId(String),
    /// The status filter names no status (checked before any call).
    #[error("unknown status {0:?}: expected one of ToSubmit, Running, Done, Interrupted, InError, Cancelled")]
    BadStatus(String),
    /// No connection could be made to the node (refused, unreachable, or
    /// its certificate did not verify against the cluster CA).
    #[error("cannot reach node API at {base}: {reason}")]
    Unreachable { base: String, reason: String },
    /// The node did not answer in time.
    #[error("node API at {base} did not answer within {}s", timeout.as_secs_f64())]
    Timeout { base: String, timeout: Duration },
    /// The connection failed after it was made (reset, closed mid-answer...).
    #[error("node API at {base}: {reason}")]
    Transport { base: String, reason: String },
    /// The node answered with an API error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's machine-readable code, e.g. `unknown_partner`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The node answered with an error that is not an API error body.
    #[error("node API answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// A successful answer did not decode.
    #[error("cannot decode the node API's answer: {0}")]
    Decode(String),
    /// The request could not be built or encoded.
    #[error("cannot build the API request: {0}")]
    Request(String),
}

impl ClientError {
    /// The server's error code, when the server answered with an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What a client presents and trusts: its bearer token and the cluster CA.
#[derive(Clone, Default)]
pub struct Access {
    /// The bearer token sent with every call.
    pub token: Option<String>,
    /// The cluster CA (PEM) that an HTTPS node's certificate must chain to.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl Access {
    /// The token and CA of a node started from `config`, as a local test or
    /// tool on the node's machine finds them: the first admin token in its
    /// data folder (none until the node has made it) and the CA named by its
    /// config.
    pub fn of_local_node(config: &crate::config::NodeConfig) -> std::io::Result<Access> {
        let token = match crate::auth::read_token_file(&config.data_dir.join(crate::auth::ADMIN_TOKEN_FILE)) {
            Ok(token) => Some(token),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let ca_pem = std::fs::read(&config.tls.ca)?;
        Ok(Access { token, ca_pem: Some(ca_pem) })
    }
}

/// The base address of a node's API served from `config` on `addr`:
/// `https://addr`, or `http://addr` for a node serving plain HTTP.
pub fn base_of(config: &crate::config::NodeConfig, addr: std::net::SocketAddr) -> String {
    match config.api_plain_http {
        true => format!("http://{addr}"),
        false => format!("https://{addr}"),
    }
}

/// A client for one node's REST API. Cheap to clone; clones share the connection pool.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<Arc<str>>,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the node at `base` (`https://host:port`,
    /// `http://host:port`, `host:port` meaning HTTPS, or a bare port on
    /// 127.0.0.1) presenting and trusting `access`.
    pub fn new(base: &str, access: &Access) -> Result<ApiClient, ClientError> {
        let base = normalise_base(base)?;
        let roots = match (&access.ca_pem, base.starts_with("https://")) {
            (Some(pem), _) => ca_roots(pem)?,
            (None, true) => return Err(ClientError::NoCa { base }),
            (None, false) => rustls::RootCertStore::empty(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Request(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Request(error_chain(&e)))?;
        Ok(ApiClient { base, http, token: access.token.as_deref().map(Arc::from), timeout: DEFAULT_TIMEOUT })
    }

    /// A client for a node on this machine started from `config`, its API
    /// bound at `addr`, with the node's first admin token (see
    /// [`Access::of_local_node`]).
    pub fn for_local_node(
        config: &crate::config::NodeConfig,
        addr: std::net::SocketAddr,
    ) -> Result<ApiClient, ClientError> {
        let access = Access::of_local_node(config).map_err(|e| {
            ClientError::Request(format!(
                "cannot read node {}'s CA {} or its token in {}: {e}",
                config.node_id,
                config.tls.ca.display(),
                config.data_dir.display()
            ))
        })?;
        ApiClient::new(&base_of(config, addr), &access)
    }

    /// The same client with another per-call time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The normalised base address, e.g. `https://127.0.0.1:8001`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Submits a transfer; returns it as the node stored it (status `ToSubmit`).
    pub async fn submit(&self, s: &Submit) -> Result<TransferView, ClientError> {
        let body = serde_json::to_vec(s).map_err(|e| ClientError::Request(e.to_string()))?;
        self.call(Method::POST, "/api/v1/transfers", Some(body)).await
    }

    /// One transfer.
    pub async fn get(&self, id: &str) -> Result<TransferView, ClientError> {
        let id = check_id(id)?;
        self.call(Method::GET, &format!("/api/v1/transfers/{id}"), None).await
    }

    /// Every transfer on the node, oldest first, optionally only those with
    /// `status` (any case, e.g. `"done"`), page after page.
    pub async fn list(&self, status: Option<&str>) -> Result<Vec<TransferView>, ClientError> {
        let mut filter = TransferFilter { status: status.map(str::to_owned), ..TransferFilter::default() };
        let mut all = Vec::new();
        loop {
            let (page, next) = self.list_page(&filter).await?;
            all.extend(page);
            match next {
                Some(cursor) => filter.cursor = Some(cursor),
                None => return Ok(all),
            }
        }
    }

    /// One page of transfers, oldest first, and the cursor of the next
    /// page if there is one.
    pub async fn list_page(&self, filter: &TransferFilter) -> Result<(Vec<TransferView>, Option<String>), ClientError> {
        if let Some(s) = &filter.status {
            Status::parse(s).ok_or_else(|| ClientError::BadStatus(s.clone()))?;
        }
        let mut req = self
            .http
            .get(format!("{}/api/v1/transfers?{}", self.base, filter.to_query()))
            .header(ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| self.error(e))?;
        let status = resp.status();
        let next = resp.headers().get("x-next-cursor").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.error(e))?;
        Ok((decode_answer(status, &bytes)?, next))
    }

    /// A transfer's job log, oldest first.
    pub async fn log(&self, id: &str) -> Result<Vec<LogLineView>, ClientError> {
        let id = check_id(id)?;
        self.call(Method::GET, &format!("/api/v1/transfers/{id}/log"), None).await
    }

    /// One page of a file set's files, in path order, from index `cursor`.
    pub async fn set_files(
        &self,
        id: &str,
        cursor: u32,
        limit: usize,
    ) -> Result<crate::model::SetFilesPage, ClientError> {
        let id = check_id(id)?;
        self.call(Method::GET, &format!("/api/v1/transfers/{id}/files?cursor={cursor}&limit={limit}"), None).await
    }

    /// Stops (pauses) a request this node drives: it becomes `Interrupted`
    /// with the code `Stopped`, keeps its partial file and restart point, and
    /// is not retried until [`Self::restart`]. A `Running` request is only
    /// asked to stop, so the answer may still say `Running`.
    pub async fn stop(&self, id: &str) -> Result<TransferView, ClientError> {
        self.command(id, "stop").await
    }

    /// Cancels a request this node drives: `Cancelled` on both nodes, its
    /// partial file removed. A `Running` request is only asked to cancel, so
    /// the answer may still say `Running`.
    pub async fn cancel(&self, id: &str) -> Result<TransferView, ClientError> {
        self.command(id, "cancel").await
    }

    /// Puts an `InError` or `Interrupted` request this node drives back in
    /// the queue (`ToSubmit`, attempts reset); it resumes from its restart
    /// point.
    pub async fn restart(&self, id: &str) -> Result<TransferView, ClientError> {
        self.command(id, "restart").await
    }

    async fn command(&self, id: &str, what: &str) -> Result<TransferView, ClientError> {
        let id = check_id(id)?;
        self.call(Method::POST, &format!("/api/v1/transfers/{id}/{what}"), None).await
    }

    /// The node's connection and load figures.
    pub async fn node(&self) -> Result<NodeStats, ClientError> {
        self.call(Method::GET, "/api/v1/node", None).await
    }

    /// The node's partners with their availability, and its groups.
    pub async fn partners(&self) -> Result<PartnersView, ClientError> {
        self.call(Method::GET, "/api/v1/partners", None).await
    }

    /// The node's rules, with their folders, target mode and tasks.
    pub async fn rules(&self) -> Result<Vec<RuleView>, ClientError> {
        self.call(Method::GET, "/api/v1/rules", None).await
    }

    /// Submits a transfer anywhere in the cluster (`source` and/or `target`
    /// set); the answer names the node that holds it.
    pub async fn submit_anywhere(&self, s: &Submit) -> Result<ClusterSubmitted, ClientError> {
        let body = serde_json::to_vec(s).map_err(|e| ClientError::Request(e.to_string()))?;
        self.call(Method::POST, "/api/v1/transfers", Some(body)).await
    }

    /// The request as its two nodes know it (asked through this node).
    pub async fn cluster_view(&self, id: &str) -> Result<ClusterView, ClientError> {
        let id = check_id(id)?;
        self.call(Method::GET, &format!("/api/v1/cluster/transfers/{id}"), None).await
    }

    /// Makes a token (admin only); the answer carries the token, shown once.
    pub async fn create_token(&self, t: &NewToken) -> Result<CreatedToken, ClientError> {
        let body = serde_json::to_vec(t).map_err(|e| ClientError::Request(e.to_string()))?;
        self.call(Method::POST, "/api/v1/tokens", Some(body)).await
    }

    /// Every token of the node, revoked ones included (admin only).
    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.call(Method::GET, "/api/v1/tokens", None).await
    }

    /// Revokes a token by name (admin only).
    pub async fn revoke_token(&self, name: &str) -> Result<TokenView, ClientError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(ClientError::Request(format!("invalid token name {name:?}")));
        }
        self.call(Method::DELETE, &format!("/api/v1/tokens/{name}"), None).await
    }

    /// GET `path` (under the base) decoded as `T`; `Ok(None)` when the
    /// node has no such route (404), as an older node answers.
    pub async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        match self.call(Method::GET, path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.http_status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the node answers `/readyz` with 200 (no token needed).
    pub async fn ready(&self) -> Result<bool, ClientError> {
        let resp = self
            .http
            .get(format!("{}/readyz", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Polls a transfer every `poll` until its status is final (`Done`,
    /// `InError` or `Cancelled`) and returns that last view. `on_progress`
    /// sees every view fetched, the last one included. A failed poll ends the
    /// wait with its error.
    pub async fn wait(
        &self,
        id: &str,
        poll: Duration,
        on_progress: impl FnMut(&TransferView),
    ) -> Result<TransferView, ClientError> {
        self.wait_until(id, poll, on_progress, TransferView::is_final).await
    }

    /// Polls a transfer every `poll` until `done` holds for its view and
    /// returns that view. `on_progress` sees every view fetched, the last one
    /// included. A failed poll ends the wait with its error.
    pub async fn wait_until(
        &self,
        id: &str,
        poll: Duration,
        mut on_progress: impl FnMut(&TransferView),
        done: impl Fn(&TransferView) -> bool,
    ) -> Result<TransferView, ClientError> {
        loop {
            let view = self.get(id).await?;
            on_progress(&view);
            if done(&view) {
                return Ok(view);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Opens the node's event stream (`GET /api/v1/events`) with `query`'s
    /// filters, resuming after `query.after` if given. The stream has no
    /// overall time limit; it fails if the node sends nothing, not even a
    /// keep-alive, for [`EVENTS_IDLE_LIMIT`].
    pub async fn events(&self, query: &EventQuery) -> Result<EventStream, ClientError> {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/events", self.base))
            .map_err(|e| ClientError::BadBase { base: self.base.clone(), reason: e.to_string() })?;
        for (name, value) in
            [("transfer", &query.transfer), ("rule", &query.rule), ("partner", &query.partner), ("after", &query.after)]
        {
            if let Some(v) = value {
                url.query_pairs_mut().append_pair(name, v);
            }
        }
        let mut req = self.http.get(url).header(ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| ClientError::Timeout { base: self.base.clone(), timeout: self.timeout })?
            .map_err(|e| self.error(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(|e| self.error(e))?;
            return Err(decode_answer::<serde_json::Value>(status, &bytes).err().unwrap_or(ClientError::Http {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }));
        }
        let seen = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let mark = seen.clone();
        let bytes = resp.bytes_stream().inspect(move |_| {
            if let Ok(mut t) = mark.lock() {
                *t = std::time::Instant::now();
            }
        });
        Ok(EventStream { base: self.base.clone(), inner: Box::pin(bytes.eventsource()), seen })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| self.error(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.error(e))?;
        decode_answer(status, &bytes)
    }

    fn error(&self, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout { base: self.base.clone(), timeout: self.timeout }
        } else if e.is_connect() {
            ClientError::Unreachable { base: self.base.clone(), reason: connect_reason(&e) }
        } else {
            ClientError::Transport { base: self.base.clone(), reason: error_chain(&e) }
        }
    }
}

/// How long an event stream may stay silent (the node sends a keep-alive
/// every 15 s) before [`EventStream::next`] calls it lost.
pub const EVENTS_IDLE_LIMIT: Duration = Duration::from_secs(45);

/// The filters and resume position of an event stream.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub transfer: Option<String>,
    pub rule: Option<String>,
    pub partner: Option<String>,
    /// The position of the last event seen.
    pub after: Option<String>,
}

/// One item of an event stream.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StreamItem {
    /// A transfer changed.
    Transfer(Box<crate::model::TransferEvent>),
    /// Events after the asked position are no longer kept.
    Gap(crate::events::Gap),
}

type SseStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
            > + Send,
    >,
>;

/// A node's event stream (see [`ApiClient::events`]).
pub struct EventStream {
    base: String,
    inner: SseStream,
    /// When the node last sent anything (keep-alives included).
    seen: Arc<std::sync::Mutex<std::time::Instant>>,
}

impl EventStream {
    /// The next item; `None` when the node ended the stream (it shuts down).
    pub async fn next(&mut self) -> Option<Result<StreamItem, ClientError>> {
        use futures_util::StreamExt;
        loop {
            let item = tokio::select! {
                item = self.inner.next() => item,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let idle = self.seen.lock().map(|t| t.elapsed()).unwrap_or_default();
                    if idle > EVENTS_IDLE_LIMIT {
                        return Some(Err(ClientError::Timeout { base: self.base.clone(), timeout: EVENTS_IDLE_LIMIT }));
                    }
                    continue;
                }
            };
            let event = match item? {
                Ok(event) => event,
                Err(e) => {
                    return Some(Err(ClientError::Transport {
                        base: self.base.clone(),
                        reason: format!("event stream: {e}"),
                    }))
                }
            };
            let decoded = match event.event.as_str() {
                "transfer" => serde_json::from_str(&event.data).map(|e| StreamItem::Transfer(Box::new(e))),
                "gap" => serde_json::from_str(&event.data).map(StreamItem::Gap),
                _ => continue, // a kind this client does not know
            };
            return Some(decoded.map_err(|e| ClientError::Decode(format!("event {:?}: {e}", event.event))));
        }
    }
}

/// The cluster CA's certificates as the only roots to trust.
fn ca_roots(pem: &[u8]) -> Result<rustls::RootCertStore, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| ClientError::BadCa(e.to_string()))?;
        roots.add(cert).map_err(|e| ClientError::BadCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ClientError::BadCa("the file holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// Turns an answer into the expected value or the error it carries.
fn decode_answer<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()));
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(ErrorBody { error }) => {
            Err(ClientError::Api { status: status.as_u16(), code: error.code, message: error.message })
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            let body = match text.char_indices().nth(200) {
                Some((i, _)) => format!("{}...", &text[..i]),
                None if text.is_empty() => status.canonical_reason().unwrap_or("no body").to_owned(),
                None => text.to_owned(),
            };
            Err(ClientError::Http { status: status.as_u16(), body })
        }
    }
}

fn check_id(id: &str) -> Result<RequestId, ClientError> {
    RequestId::parse(id).ok_or_else(|| ClientError::BadId(id.to_owned()))
}

/// `host:port` (HTTPS), a bare port (HTTPS on 127.0.0.1), or
/// `http[s]://host:port[/]` → `scheme://host:port`.
pub fn normalise_base(base: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::BadBase { base: base.to_owned(), reason: reason.to_owned() };
    let trimmed = base.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    // A bare port means this host: `8001` is `127.0.0.1:8001`, not a host
    // named "8001".
    let full = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = trimmed.parse().map_err(|_| bad("a bare port must be 1..=65535"))?;
        format!("https://127.0.0.1:{port}")
    } else if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let uri: axum::http::Uri = full.parse().map_err(|e| bad(&format!("{e}")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err(bad("only https:// and http:// are supported")),
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("it names no host"));
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(bad("it must not contain a path or query (the API lives under /api/v1)"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// The innermost cause of a failed connection, in plain words
/// ("connection refused", "timed out", or the resolver's message).
fn connect_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io: Option<&std::io::Error> = None;
    let mut last = e;
    while let Some(err) = cur {
        if let Some(i) = err.downcast_ref::<std::io::Error>() {
            io = Some(i);
        }
        last = err;
        cur = err.source();
    }
    match io {
        Some(i) => {
            use std::io::ErrorKind as K;
            match i.kind() {
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::TimedOut
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::PermissionDenied => i.kind().to_string(),
                _ => i.to_string(),
            }
        }
        None => last.to_string(),
    }
}

/// An error and its causes, joined with ": ".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_normalised_and_checked() {
        assert_eq!(normalise_base("127.0.0.1:8001").expect("bare"), "https://127.0.0.1:8001");
        assert_eq!(normalise_base("http://localhost:8001/").expect("slash"), "http://localhost:8001");
        assert_eq!(normalise_base("https://localhost:8001/").expect("slash"), "https://localhost:8001");
        assert_eq!(normalise_base(" http://[::1]:8001 ").expect("v6"), "http://[::1]:8001");
        assert_eq!(normalise_base("8001").expect("a bare port"), "https://127.0.0.1:8001");
        for bad in
            ["", " ", "99999", "https://h:1/x", "http://h:1/api", "http://h:1?x=1", "http://", "http:///", "ftp://h"]
        {
            assert!(matches!(normalise_base(bad), Err(ClientError::BadBase { .. })), "{bad}");
        }
    }

    #[test]
    fn https_needs_the_cluster_ca() {
        let err = ApiClient::new("127.0.0.1:8001", &Access::default()).expect_err("no CA");
        assert!(err.to_string().contains("--ca"), "{err}");
        let bad = Access { token: None, ca_pem: Some(b"not a certificate".to_vec()) };
        assert!(matches!(ApiClient::new("127.0.0.1:8001", &bad), Err(ClientError::BadCa(_))));
        let secret = Access { token: Some("ferry_secret".into()), ca_pem: None };
        assert!(!format!("{secret:?}").contains("ferry_secret"), "the token never reaches a log");
    }

    #[test]
    fn error_bodies_carry_the_servers_code_and_message() {
        let body = br#"{"error":{"code":"unknown_partner","message":"no partner zed"}}"#;
        let err = decode_answer::<TransferView>(StatusCode::UNPROCESSABLE_ENTITY, body).expect_err("error");
        assert_eq!(err.code(), Some("unknown_partner"));
        assert_eq!(err.http_status(), Some(422));
        assert!(err.to_string().contains("no partner zed"), "{err}");

        let err = decode_answer::<TransferView>(StatusCode::BAD_GATEWAY, b"").expect_err("error");
        assert!(matches!(err, ClientError::Http { status: 502, .. }), "{err}");
        assert!(err.to_string().contains("Bad Gateway"), "{err}");

        let err = decode_answer::<TransferView>(StatusCode::OK, b"[]").expect_err("wrong shape");
        assert!(matches!(err, ClientError::Decode(_)), "{err}");
    }

    #[test]
    fn inputs_are_checked_before_calling() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let c = ApiClient::new("http://127.0.0.1:1", &Access::default()).expect("client");
            assert!(matches!(c.get("../node").await, Err(ClientError::BadId(_))));
            assert!(matches!(c.log("nope").await, Err(ClientError::BadId(_))));
            assert!(matches!(c.list(Some("finished")).await, Err(ClientError::BadStatus(_))));
            assert!(matches!(c.stop("x").await, Err(ClientError::BadId(_))));
            assert!(matches!(c.cancel("../../node").await, Err(ClientError::BadId(_))));
            assert!(matches!(c.restart("0123456789ABCDEF0123456789ABCDEF").await, Err(ClientError::BadId(_))));
        });
    }

    #[tokio::test]
    async fn an_absent_node_is_reported_as_unreachable() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let c = ApiClient::new(&format!("http://127.0.0.1:{port}"), &Access::default()).expect("client");
        let err = c.node().await.expect_err("nobody listens");
        assert_eq!(err.to_string(), format!("cannot reach node API at http://127.0.0.1:{port}: connection refused"));
    }

    #[tokio::test]
    async fn a_non_api_server_gives_an_http_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot here\n")
                    .await;
            }
        });
        let c = ApiClient::new(&format!("http://{addr}"), &Access::default()).expect("client");
        let err = c.node().await.expect_err("404");
        assert!(matches!(&err, ClientError::Http { status: 404, body } if body == "not here"), "{err}");
    }
}
