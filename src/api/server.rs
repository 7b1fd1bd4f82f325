//! The HTTP side of the REST API: routes, handlers and the mapping of every
//! failure to a JSON error with a fitting status.
//!
//! Handlers only read the store and call [`NodeHandle`]'s `submit`, `stop`,
//! `cancel` and `restart`; they never change a record themselves. Store reads
//! are synchronous store calls, so the ones that may scan (lists, logs) run on
//! the blocking pool.

use std::future::Future;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::{Json, Router};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Denied, Right, TokenBook, TokenError};
use crate::model::view::{ErrorBody, ErrorView, LogLineView, SetFilesPage, TransferView};
use crate::model::{
    ClusterView, CommandError, CreatedToken, NewToken, NodeStats, PartnersView, RuleView, Submit, SubmitError,
    TokenView, TransferFilter,
};
use crate::node::NodeHandle;
use crate::protocol::RequestId;
use crate::store::{RequestRecord, Status, StoreError};

/// Why an API call failed. Each variant maps to an HTTP status and a
/// snake_case code (see [`ApiError::status`] and [`ApiError::code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The node refused the submission.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The node refused an operator command (stop, cancel, restart).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The path does not hold a well-formed request id.
    #[error("malformed request id {0:?}: expected 32 lowercase hex characters")]
    BadId(String),
    /// The `status` filter names no status.
    #[error("unknown status {:?}: expected one of {}", .0, status_names())]
    BadStatus(String),
    /// No request has this id on this node.
    #[error("no transfer {0} on this node")]
    NotFound(String),
    /// The body, query or path could not be read (malformed JSON, missing field,
    /// wrong content type...).
    #[error("{message}")]
    BadInput {
        /// The HTTP status the rejection calls for (400, 413 or 415).
        status: StatusCode,
        /// The snake_case code sent to the client.
        code: &'static str,
        message: String,
    },
    /// No route matches the path.
    #[error("no API route {0}")]
    NoRoute(String),
    /// The route exists but not for this method.
    #[error("method not allowed here")]
    MethodNotAllowed,
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request carries no valid token (missing, malformed, unknown, revoked).
    #[error("{0}")]
    Unauthenticated(TokenError),
    /// The token is valid but may not do this.
    #[error(transparent)]
    Forbidden(#[from] Denied),
    /// A token could not be made or revoked.
    #[error(transparent)]
    Token(TokenError),
    /// Anything else (a panicked blocking task, a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e.is_unauthenticated() {
            true => ApiError::Unauthenticated(e),
            false => ApiError::Token(e),
        }
    }
}

fn status_names() -> String {
    Status::ALL.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

impl ApiError {
    /// The HTTP status this error is answered with.
    ///
    /// Names in a submission that the node does not know (partner, rule, file)
    /// or may not combine are 422: the route exists, the body refers to
    /// something that does not. 404 is kept for URLs naming no resource.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Submit(e) => match e {
                SubmitError::UnknownPartner(_)
                | SubmitError::UnknownRule(_)
                | SubmitError::RuleNotAllowed { .. }
                | SubmitError::FileNotFound(_)
                | SubmitError::NoFiles(_) => StatusCode::UNPROCESSABLE_ENTITY,
                SubmitError::BadFileName(_) | SubmitError::BadBlockSize(_) | SubmitError::BadRequest(_) => {
                    StatusCode::BAD_REQUEST
                }
                SubmitError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                SubmitError::Unreachable(_) => StatusCode::BAD_GATEWAY,
                SubmitError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                SubmitError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                // A variant added later is a server-side failure until mapped here.
                #[allow(unreachable_patterns)]
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Command(e) => match e {
                CommandError::NotFound(_) => StatusCode::NOT_FOUND,
                // The request exists but this node cannot act on it (the
                // partner drives it) or not in its current state.
                CommandError::NotRequester { .. } | CommandError::InvalidState { .. } => StatusCode::CONFLICT,
                CommandError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                #[allow(unreachable_patterns)]
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::BadId(_) | ApiError::BadStatus(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::BadInput { status, .. } => *status,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Token(e) => match e {
                TokenError::BadName(_) => StatusCode::BAD_REQUEST,
                TokenError::Exists(_) => StatusCode::CONFLICT,
                TokenError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Submit(e) => e.code(),
            ApiError::Command(e) => e.code(),
            ApiError::BadId(_) => "bad_id",
            ApiError::BadStatus(_) => "bad_status",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadInput { code, .. } => code,
            ApiError::NoRoute(_) => "no_route",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Store(_) => "store",
            ApiError::Unauthenticated(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Token(TokenError::BadName(_)) => "bad_token_name",
            ApiError::Token(TokenError::Exists(_)) => "token_exists",
            ApiError::Token(TokenError::NotFound(_)) => "no_token",
            ApiError::Token(_) => "token",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body sent for this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorView { code: self.code().to_owned(), message: self.to_string() } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code(), "API request failed: {self}");
        } else {
            tracing::debug!(code = self.code(), %status, "API request refused: {self}");
        }
        let mut response = (status, Json(self.body())).into_response();
        response.extensions_mut().insert(ErrorCodeTag(self.code()));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::MissingJsonContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            // A misspelled field would otherwise be dropped silently and the
            // transfer run without what it asked for.
            JsonRejection::JsonDataError(e) if e.body_text().contains("unknown field") => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            _ => (StatusCode::BAD_REQUEST, "bad_json"),
        };
        ApiError::BadInput { status, code, message: r.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadInput { status: StatusCode::BAD_REQUEST, code: "bad_query", message: r.body_text() }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadInput { status: StatusCode::BAD_REQUEST, code: "bad_path", message: r.body_text() }
    }
}

/// Parses a request id from a URL segment.
pub(crate) fn parse_id(s: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(s).ok_or_else(|| ApiError::BadId(s.to_owned()))
}

/// Parses the optional `status` filter, case-insensitively.
pub(crate) fn parse_status(s: Option<&str>) -> Result<Option<Status>, ApiError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => Status::parse(s).map(Some).ok_or_else(|| ApiError::BadStatus(s.to_owned())),
    }
}

/// Runs a store read on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
}

/// What every handler reaches: the node and its tokens.
#[derive(Clone)]
pub struct ApiState {
    pub node: NodeHandle,
    pub tokens: TokenBook,
    pub audit: crate::audit::AuditLog,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub events: std::sync::Arc<crate::events::EventBus>,
    pub unauthenticated: std::sync::Arc<Unauthenticated>,
}

/// How many changing calls without a valid token the audit trail records
/// one by one: at most [`Unauthenticated::PER_MINUTE`] a minute; the rest
/// are counted and the next line recorded says how many were left out
/// (`held_back`). Without it, anyone who can reach the port could fill the
/// trail's files with refused calls and rotate its history away.
#[derive(Debug, Default)]
pub struct Unauthenticated(std::sync::Mutex<UnauthenticatedWindow>);

#[derive(Debug, Default)]
struct UnauthenticatedWindow {
    started_ms: u64,
    recorded: u32,
    held_back: u64,
}

impl Unauthenticated {
    pub const PER_MINUTE: u32 = 60;

    /// Whether to record this call; if so, how many were left out before it.
    fn admit(&self, now_ms: u64) -> Option<Option<u64>> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms.saturating_sub(w.started_ms) >= 60_000 {
            (w.started_ms, w.recorded) = (now_ms, 0);
        }
        if w.recorded >= Self::PER_MINUTE {
            w.held_back += 1;
            return None;
        }
        w.recorded += 1;
        Some(std::mem::take(&mut w.held_back)).map(|n| (n > 0).then_some(n))
    }
}

/// Longest path the audit trail keeps of one call.
const AUDIT_PATH_BYTES: usize = 256;

/// `path` cut to [`AUDIT_PATH_BYTES`] (on a character boundary), saying so.
fn audit_path(path: &str) -> String {
    if path.len() <= AUDIT_PATH_BYTES {
        return path.to_owned();
    }
    format!("{}... ({} bytes)", crate::text::head(path, AUDIT_PATH_BYTES), path.len())
}

/// The API's routes: `/healthz` and `/readyz` open to all, everything else
/// behind a bearer token (see [`crate::auth`]).
pub fn router(state: ApiState) -> Router {
    let (open, guarded) = routes();
    let (guarded, _) = guarded.split_for_parts();
    let guarded = guarded
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let (open, _) = open.split_for_parts();
    open.merge(guarded).layer(axum::middleware::from_fn_with_state(state.clone(), count_request)).with_state(state)
}

/// Every route with its OpenAPI description, from one list: a route cannot
/// be served without being described (`utoipa_axum::routes!` takes the
/// handler and its `#[utoipa::path]` together). Open routes first, then the
/// guarded ones.
pub(super) fn routes() -> (OpenApiRouter<ApiState>, OpenApiRouter<ApiState>) {
    let open = OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz));
    let guarded = OpenApiRouter::new()
        .routes(routes!(list_transfers, submit))
        .routes(routes!(get_transfer))
        .routes(routes!(transfer_log))
        .routes(routes!(set_files))
        .routes(routes!(stop_transfer))
        .routes(routes!(cancel_transfer))
        .routes(routes!(restart_transfer))
        .routes(routes!(node_stats))
        .routes(routes!(partners))
        .routes(routes!(rules))
        .routes(routes!(cluster_transfer))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(super::events::events))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics));
    (open, guarded)
}

/// Counts every request in the metrics by method, route template (never
/// the path itself, which holds ids) and status, refusals included.
async fn count_request(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.api_request(&method, &route, response.status().as_u16());
    response
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI document, for any valid token.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "node",
    responses((status = 200, description = "The OpenAPI 3.1 document (docs/openapi.json)", content_type = "application/json", body = Object),
        (status = 401, description = "No valid token", body = crate::api::doc::Error)))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::doc::openapi_json()).into_response()
}

/// `GET /metrics`: the node's metrics (see [`crate::metrics`]), for a
/// token with the `metrics` role (or `admin`) and no scope.
#[utoipa::path(get, path = "/metrics", tag = "node",
    responses(
        (status = 200, description = "The metrics, OpenMetrics text (a metrics or admin token without a scope)",
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
    ))]
async fn metrics(State(state): State<ApiState>, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Right::Scrape)?;
    caller.require_unscoped("the node's metrics")?;
    let (stats, partners) = (state.node.stats().await, state.node.partners().await);
    state.metrics.set_node(&stats, &partners);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.encode()).into_response())
}

/// Serves the API on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (for up to `closing::GRACE` after the node
/// began to shut down; then every connection ends): HTTPS with the settings `tls` holds at each
/// connection, plain HTTP without (which the config allows on a loopback
/// address only).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio::sync::watch::Receiver<std::sync::Arc<rustls::ServerConfig>>>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let ending = state.node.shutdown_watch();
    let app = router(state);
    match tls {
        Some(config) => {
            tracing::debug!(%addr, "REST API listening (HTTPS)");
            let listener = super::tls::TlsListener::new(listener, config)?;
            let listener = super::closing::ClosingListener::new(listener, ending);
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => {
            tracing::debug!(%addr, "REST API listening (plain HTTP, loopback)");
            let listener = super::closing::ClosingListener::new(listener, ending);
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    }
}

/// Lets a request through only with a valid token, which handlers then
/// find as an `Extension<Caller>`; writes the audit line of every call that
/// can change something (POST, DELETE), refused or not, before the answer
/// leaves.
async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let changes = method == axum::http::Method::POST || method == axum::http::Method::DELETE;
    let (caller, response) = match state.tokens.authenticate(header) {
        Ok(caller) => {
            request.extensions_mut().insert(caller.clone());
            (Some(caller), next.run(request).await)
        }
        Err(e) => (None, ApiError::from(e).into_response()),
    };
    let held_back = match (&caller, changes) {
        (None, true) => match state.unauthenticated.admit(crate::determinism::now_ms()) {
            Some(held_back) => held_back,
            None => return response,
        },
        _ => None,
    };
    if changes {
        let request_id =
            path.strip_prefix("/api/v1/transfers/").and_then(|rest| rest.split('/').next()).map(str::to_owned).or_else(
                || {
                    // A submission: the new request's id is in the Location.
                    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
                    let id = location
                        .strip_prefix("/api/v1/transfers/")
                        .or(location.strip_prefix("/api/v1/cluster/transfers/"))?;
                    Some(id.to_owned())
                },
            );
        state.audit.record(crate::audit::AuditEvent {
            kind: "api",
            event: "call",
            token: caller.as_ref().map(|c| c.name().to_owned()),
            role: caller.as_ref().map(|c| c.role().name().to_owned()),
            method: Some(method.to_string()),
            path: Some(audit_path(&path)),
            http_status: Some(response.status().as_u16()),
            code: response.extensions().get::<ErrorCodeTag>().map(|t| t.0.to_owned()),
            request_id: request_id.filter(|id| id.len() <= 64),
            held_back,
            ..Default::default()
        });
    }
    response
}

/// The API error code of an error response, for the audit line.
#[derive(Clone, Copy, Debug)]
struct ErrorCodeTag(&'static str);

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "The process answers", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the store answers and the node is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "The store answers and the node is not shutting down", content_type = "text/plain", body = String),
        (status = 503, description = "The store does not answer, or the node is shutting down", content_type = "text/plain", body = String),
    ))]
async fn readyz(State(state): State<ApiState>) -> Response {
    let store = state.node.store().clone();
    let store_ok = tokio::task::spawn_blocking(move || store.is_readable()).await.unwrap_or(false);
    match (store_ok, state.node.is_shutting_down()) {
        (true, false) => (StatusCode::OK, "ready\n").into_response(),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "store not readable\n").into_response(),
        (true, true) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// The names a record's partner goes by for a scope: its id, its aliases,
/// and the groups it belongs to.
pub(super) fn partner_names(node: &NodeHandle, partner: &str) -> Vec<String> {
    let config = node.config();
    let mut names = vec![partner.to_owned()];
    if let Some(p) = config.partner(partner) {
        names.push(p.id.clone());
        names.extend(p.aliases.iter().cloned());
    }
    names.extend(config.groups.iter().filter(|g| g.members.iter().any(|m| m == partner)).map(|g| g.name.clone()));
    names
}

/// Refuses unless `caller` may use `right` on `rec`.
fn check_record(node: &NodeHandle, caller: &Caller, right: Right, rec: &RequestRecord) -> Result<(), ApiError> {
    let names = partner_names(node, &rec.partner);
    Ok(caller.require_on(right, &rec.rule, names.iter().map(String::as_str))?)
}

/// Refuses a submission the caller's role or scope does not allow.
fn check_submit(node: &NodeHandle, caller: &Caller, s: &Submit) -> Result<(), ApiError> {
    caller.require(Right::Operate)?;
    // The nodes other than this one the transfer involves, as
    // `submit_anywhere` picks them: the source (this node if none), and the
    // target, which is the partner when no target is named.
    let target = s.target.as_deref().unwrap_or(s.partner.as_str());
    let others: Vec<&str> =
        [s.source.as_deref(), Some(target)].into_iter().flatten().filter(|n| *n != node.node_id()).collect();
    for name in &others {
        let names = partner_names(node, name);
        caller.require_on(Right::Operate, &s.rule, names.iter().map(String::as_str))?;
    }
    // Naming only this node, the rule alone decides.
    if others.is_empty() && !caller.covers_rule(&s.rule) {
        caller.require_on(Right::Operate, &s.rule, [])?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/transfers", tag = "transfers",
    request_body = crate::model::Submit,
    responses(
        (status = 201, description = "Stored (flushed to disk) before this answer; `Location` names it", body = crate::api::doc::Submitted),
        (status = 400, description = "Malformed JSON, a missing or unknown field, or a bad value", body = crate::api::doc::Error),
        (status = 413, description = "The body is too large", body = crate::api::doc::Error),
        (status = 415, description = "The body is not application/json", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
        (status = 422, description = "Unknown partner, rule or file, or a rule the partner may not use", body = crate::api::doc::Error),
        (status = 502, description = "Submit anywhere: neither node could be asked", body = crate::api::doc::Error),
        (status = 503, description = "The node is shutting down", body = crate::api::doc::Error),
    ))]
async fn submit(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<Submit>, JsonRejection>,
) -> Result<Response, ApiError> {
    let node = state.node;
    // The role first: a caller who may not submit learns nothing from the body check.
    caller.require(Right::Operate)?;
    let Json(s) = body?;
    check_submit(&node, &caller, &s)?;
    if s.source.is_some() || s.target.is_some() {
        // Submit anywhere: the answer says which node holds the request.
        let placed = node.submit_anywhere(s).await?;
        let location = format!("/api/v1/cluster/transfers/{}", placed.id);
        return Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(placed)).into_response());
    }
    let rec = node.submit(s).await?;
    let view = node.view(&rec);
    let location = format!("/api/v1/transfers/{}", view.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)).into_response())
}

/// The record named by `id`, once `caller` may use `right` on it.
async fn record_for(
    node: &NodeHandle,
    caller: &Caller,
    right: Right,
    id: &RequestId,
) -> Result<RequestRecord, ApiError> {
    caller.require(right)?;
    let store = node.store().clone();
    let key = id.clone();
    let rec = blocking(move || store.get(&key)?.ok_or_else(|| ApiError::NotFound(key.to_string()))).await?;
    check_record(node, caller, right, &rec)?;
    Ok(rec)
}

#[utoipa::path(get, path = "/api/v1/transfers/{id}", tag = "transfers", params(("id" = String, Path, description = "The transfer id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The transfer as this node records it", body = TransferView), (status = 400, description = "Malformed transfer id", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn get_transfer(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    let Path(id) = id?;
    let id = parse_id(&id)?;
    let rec = record_for(&state.node, &caller, Right::Read, &id).await?;
    Ok(Json(state.node.view(&rec)))
}

/// The store query `f` asks for, or why it cannot be run.
fn list_query(f: &TransferFilter) -> Result<crate::store::ListQuery, ApiError> {
    let bad =
        |code: &'static str, message: String| ApiError::BadInput { status: StatusCode::BAD_REQUEST, code, message };
    let limit = f.limit.unwrap_or(crate::model::DEFAULT_PAGE);
    if !(1..=crate::store::listing::MAX_PAGE).contains(&limit) {
        return Err(bad(
            "bad_limit",
            format!("limit {limit}: a page holds 1 to {} transfers", crate::store::listing::MAX_PAGE),
        ));
    }
    let after = match f.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(crate::store::Cursor::parse(c).ok_or_else(|| {
            bad("bad_cursor", format!("cursor {c:?} is not one this API gave (CREATED-ID, from the previous page)"))
        })?),
    };
    Ok(crate::store::ListQuery {
        status: parse_status(f.status.as_deref())?,
        partner: f.partner.clone(),
        rule: f.rule.clone(),
        external_job_id: f.job.clone(),
        created_from: f.from,
        created_to: f.to,
        after,
        limit,
    })
}

/// `GET /api/v1/transfers`: one page, oldest first. When more follow, the
/// answer's `Link` header (`rel="next"`) and `X-Next-Cursor` say where.
#[utoipa::path(get, path = "/api/v1/transfers", tag = "transfers",
    params(crate::model::TransferFilter),
    responses(
        (status = 200, description = "One page, oldest first", body = Vec<TransferView>,
            headers(("link" = String, description = "`<...>; rel=\"next\"` while more pages follow"),
                    ("x-next-cursor" = String, description = "The next page's cursor, while more follow"))),
        (status = 400, description = "A bad status, cursor, limit or number", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
    ))]
async fn list_transfers(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    query: Result<Query<TransferFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Right::Read)?;
    let node = state.node;
    let Query(filter) = query?;
    let q = list_query(&filter)?;
    let store = node.store().clone();
    // The scope is applied during the walk, so the page's cursor names only
    // a record the caller may see.
    let (in_scope, who) = (node.clone(), caller.clone());
    let page =
        blocking(move || Ok(store.page_where(&q, |r| check_record(&in_scope, &who, Right::Read, r).is_ok())?)).await?;
    let views: Vec<TransferView> = page.records.iter().map(|r| node.view(r)).collect();
    let mut response = Json(views).into_response();
    if let Some(next) = page.next {
        let next = next.to_string();
        let query = TransferFilter { cursor: Some(next.clone()), ..filter }.to_query();
        let link = format!("<{}?{query}>; rel=\"next\"", uri.path());
        for (name, value) in [("link", link), ("x-next-cursor", next)] {
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
    }
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/transfers/{id}/log", tag = "transfers", params(("id" = String, Path, description = "The transfer id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "Its job log, oldest first", body = Vec<LogLineView>), (status = 400, description = "Malformed transfer id", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn transfer_log(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<LogLineView>>, ApiError> {
    let Path(id) = id?;
    let id = parse_id(&id)?;
    record_for(&state.node, &caller, Right::Read, &id).await?;
    let store = state.node.store().clone();
    let lines = blocking(move || Ok(store.job_log(&id)?)).await?;
    Ok(Json(lines.iter().map(LogLineView::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/transfers/{id}/files", tag = "transfers",
    params(("id" = String, Path, description = "The file set's id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$"), crate::model::SetFilesQuery),
    responses((status = 200, description = "One page of the set's files, in path order, each with its state", body = SetFilesPage),
        (status = 400, description = "Malformed id or limit, or the transfer is not a file set", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn set_files(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<crate::model::SetFilesQuery>, QueryRejection>,
) -> Result<Json<SetFilesPage>, ApiError> {
    let Path(id) = id?;
    let id = parse_id(&id)?;
    let Query(q) = query?;
    let rec = record_for(&state.node, &caller, Right::Read, &id).await?;
    let bad =
        |code: &'static str, message: String| ApiError::BadInput { status: StatusCode::BAD_REQUEST, code, message };
    let Some(info) = rec.set.clone() else {
        return Err(bad("not_a_set", format!("transfer {id} is one file, not a file set")));
    };
    let limit = q.limit.unwrap_or(crate::model::DEFAULT_PAGE);
    if !(1..=crate::store::listing::MAX_PAGE).contains(&limit) {
        return Err(bad(
            "bad_limit",
            format!("limit {limit}: a page holds 1 to {} files", crate::store::listing::MAX_PAGE),
        ));
    }
    let from = q.cursor.unwrap_or(0).min(info.files);
    let to = from.saturating_add(u32::try_from(limit).unwrap_or(u32::MAX)).min(info.files);
    let store = state.node.store().clone();
    let set = id.clone();
    // A receiver's set lists the files it has received so far; on the
    // sender every member exists, and a missing one is damage.
    let receiving = rec.role == crate::store::Role::Requested;
    let records = blocking(move || {
        let mut out = Vec::new();
        for i in from..to {
            match store.get(&crate::store::member_id(&set, i)).map_err(ApiError::Store)? {
                Some(r) => out.push(r),
                None if receiving => {}
                None => {
                    return Err(ApiError::Store(crate::store::StoreError::NotFound(crate::store::member_id(&set, i))))
                }
            }
        }
        Ok(out)
    })
    .await?;
    let files = records.iter().map(|r| state.node.view(r)).collect();
    Ok(Json(SetFilesPage { files, next: (to < info.files).then_some(to) }))
}

/// An operator command on one request.
#[derive(Clone, Copy, Debug)]
enum Operation {
    Stop,
    Cancel,
    Restart,
}

/// Runs `op` on the request named in the path; answers the record as the
/// command left it. A stop or cancel of a `Running` request only asks its
/// runner, so the answer still says `Running`; the runner records
/// `Interrupted` or `Cancelled` shortly after.
async fn operate(
    state: ApiState,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    op: Operation,
) -> Result<Json<TransferView>, ApiError> {
    let node = state.node;
    let Path(id) = id?;
    let id = parse_id(&id)?;
    record_for(&node, &caller, Right::Operate, &id).await?;
    let rec = match op {
        Operation::Stop => node.stop(&id).await?,
        Operation::Cancel => node.cancel(&id).await?,
        Operation::Restart => node.restart(&id).await?,
    };
    tracing::info!(target: crate::actors::AUDIT, event = "operator", token = caller.name(), request_id = %id, command = ?op, status = ?rec.status);
    Ok(Json(node.view(&rec)))
}

#[utoipa::path(post, path = "/api/v1/transfers/{id}/stop", tag = "transfers", params(("id" = String, Path, description = "The transfer id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Stopped (paused); `restart` resumes it", body = TransferView),
        (status = 400, description = "Malformed transfer id", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
        (status = 409, description = "The partner drives this request, or it is not in a state the command accepts", body = crate::api::doc::Error),
    ))]
async fn stop_transfer(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    operate(state, caller, id, Operation::Stop).await
}

#[utoipa::path(post, path = "/api/v1/transfers/{id}/cancel", tag = "transfers", params(("id" = String, Path, description = "The transfer id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Cancelled on both nodes", body = TransferView),
        (status = 400, description = "Malformed transfer id", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
        (status = 409, description = "The partner drives this request, or it is not in a state the command accepts", body = crate::api::doc::Error),
    ))]
async fn cancel_transfer(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    operate(state, caller, id, Operation::Cancel).await
}

#[utoipa::path(post, path = "/api/v1/transfers/{id}/restart", tag = "transfers", params(("id" = String, Path, description = "The transfer id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Queued again; it resumes at its restart point", body = TransferView),
        (status = 400, description = "Malformed transfer id", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
        (status = 409, description = "The partner drives this request, or it is not in a state the command accepts", body = crate::api::doc::Error),
    ))]
async fn restart_transfer(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    operate(state, caller, id, Operation::Restart).await
}

#[utoipa::path(get, path = "/api/v1/node", tag = "node",
    responses((status = 200, description = "Counts and the certificate in use", body = NodeStats), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn node_stats(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<NodeStats>, ApiError> {
    caller.require(Right::Read)?;
    Ok(Json(state.node.stats().await))
}

#[utoipa::path(get, path = "/api/v1/partners", tag = "node",
    responses((status = 200, description = "Every partner with its availability, and the groups", body = PartnersView), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn partners(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PartnersView>, ApiError> {
    caller.require(Right::Read)?;
    let node = state.node;
    let mut view = node.partners().await;
    view.partners.retain(|p| {
        let names = partner_names(&node, &p.id);
        caller.covers_partner(names.iter().map(String::as_str))
    });
    view.groups.retain(|g| caller.covers_partner([g.name.as_str()]));
    Ok(Json(view))
}

#[utoipa::path(get, path = "/api/v1/rules", tag = "node",
    responses((status = 200, description = "Every rule with its folders, target mode and tasks", body = Vec<RuleView>), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn rules(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    caller.require(Right::Read)?;
    let mut rules = state.node.rules();
    rules.retain(|r| caller.covers_rule(&r.name));
    Ok(Json(rules))
}

/// The request as its two nodes know it, asked from whichever node serves
/// the API; 404 when no node answers for it.
#[utoipa::path(get, path = "/api/v1/cluster/transfers/{id}", tag = "transfers", params(("id" = String, Path, description = "The transfer id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The request as its two nodes record it", body = ClusterView), (status = 400, description = "Malformed transfer id", body = crate::api::doc::Error),
        (status = 404, description = "No such transfer on this node", body = crate::api::doc::Error), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn cluster_transfer(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ClusterView>, ApiError> {
    caller.require(Right::Read)?;
    caller.require_unscoped("the cluster view")?;
    let Path(id) = id?;
    let id = parse_id(&id)?;
    let view = state.node.cluster_view(&id).await;
    if view.nodes.is_empty() {
        let mut why = format!("{id} (no node of the cluster that answered knows it)");
        if !view.unreachable.is_empty() {
            why = format!("{why}; not asked: {}", view.unreachable.join("; "));
        }
        return Err(ApiError::NotFound(why));
    }
    Ok(Json(view))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, description = "Every token (admin only); never a secret", body = Vec<TokenView>), (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),))]
async fn list_tokens(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.require(Right::ManageTokens)?;
    // A scoped admin could otherwise make a token wider than its own.
    caller.require_unscoped("managing tokens")?;
    let tokens = state.tokens.clone();
    let list = blocking(move || Ok(tokens.list()?)).await?;
    Ok(Json(list.iter().map(TokenView::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses(
        (status = 201, description = "Made (admin only); `token` is shown this once", body = CreatedToken),
        (status = 400, description = "Malformed JSON, a missing or unknown field, or a bad value", body = crate::api::doc::Error),
        (status = 413, description = "The body is too large", body = crate::api::doc::Error),
        (status = 415, description = "The body is not application/json", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
        (status = 409, description = "A token of that name exists", body = crate::api::doc::Error),
    ))]
async fn create_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Right::ManageTokens)?;
    // A scoped admin could otherwise make a token wider than its own.
    caller.require_unscoped("managing tokens")?;
    let Json(t) = body?;
    let (record, token) = state.tokens.create(&t.name, t.role, t.rules, t.partners).await?;
    tracing::info!(target: crate::actors::AUDIT, event = "token_created", token = caller.name(), name = %record.name, role = record.role.name());
    let location = format!("/api/v1/tokens/{}", record.name);
    let body = CreatedToken { view: TokenView::from(&record), token };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "The token's name", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "Revoked (admin only): refused from now on", body = TokenView),
        (status = 400, description = "Not a token name", body = crate::api::doc::Error),
        (status = 401, description = "No valid token (missing, malformed, unknown or revoked)", body = crate::api::doc::Error),
        (status = 403, description = "The token's role or scope does not allow this", body = crate::api::doc::Error),
        (status = 404, description = "No valid token of that name", body = crate::api::doc::Error),
    ))]
async fn revoke_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<TokenView>, ApiError> {
    caller.require(Right::ManageTokens)?;
    // A scoped admin could otherwise make a token wider than its own.
    caller.require_unscoped("managing tokens")?;
    let Path(name) = name?;
    let record = state.tokens.revoke(&name).await?;
    tracing::info!(target: crate::actors::AUDIT, event = "token_revoked", token = caller.name(), name = %record.name);
    Ok(Json(TokenView::from(&record)))
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("json body"))
    }

    #[test]
    fn submit_errors_map_to_consistent_statuses() {
        let cases = [
            (SubmitError::UnknownPartner("z".into()), StatusCode::UNPROCESSABLE_ENTITY),
            (SubmitError::UnknownRule("r".into()), StatusCode::UNPROCESSABLE_ENTITY),
            (SubmitError::RuleNotAllowed { rule: "r".into(), partner: "z".into() }, StatusCode::UNPROCESSABLE_ENTITY),
            (SubmitError::FileNotFound("f".into()), StatusCode::UNPROCESSABLE_ENTITY),
            (SubmitError::BadFileName("../f".into()), StatusCode::BAD_REQUEST),
            (SubmitError::BadBlockSize("1".into()), StatusCode::BAD_REQUEST),
            (SubmitError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (SubmitError::Store(StoreError::Encode("x".into())), StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (e, status) in cases {
            let code = e.code();
            let api = ApiError::from(e);
            assert_eq!(api.status(), status, "{api}");
            assert_eq!(api.code(), code);
        }
    }

    #[test]
    fn command_errors_map_to_consistent_statuses() {
        let id = RequestId::generate();
        let cases = [
            (CommandError::NotFound(id.clone()), StatusCode::NOT_FOUND, "not_found"),
            (
                CommandError::NotRequester { id: id.clone(), partner: "b".into(), at: None },
                StatusCode::CONFLICT,
                "not_requester",
            ),
            (
                CommandError::InvalidState { id: id.clone(), action: "restart", state: "Done".into() },
                StatusCode::CONFLICT,
                "invalid_state",
            ),
            (CommandError::Store(StoreError::Encode("x".into())), StatusCode::INTERNAL_SERVER_ERROR, "store"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.code(), code);
            let api = ApiError::from(e);
            assert_eq!(api.status(), status, "{api}");
            assert_eq!(api.code(), code, "{api}");
        }
    }

    #[tokio::test]
    async fn command_refusals_say_why_in_the_body() {
        let id = RequestId::generate();
        let (status, json) =
            body_of(ApiError::from(CommandError::NotRequester { id: id.clone(), partner: "bravo".into(), at: None }))
                .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(json["error"]["code"], "not_requester");
        let msg = json["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("bravo") && msg.contains(id.as_str()), "names the driving node: {msg}");

        let (status, json) = body_of(ApiError::from(CommandError::InvalidState {
            id: id.clone(),
            action: "cancel",
            state: "Done".into(),
        }))
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(json["error"]["code"], "invalid_state");
        let msg = json["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("cancel") && msg.contains("Done"), "{msg}");

        let (status, json) = body_of(ApiError::from(CommandError::NotFound(id.clone()))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["error"]["code"], "not_found");
        assert!(json["error"]["message"].as_str().is_some_and(|m| m.contains(id.as_str())), "{json}");

        let (status, json) = body_of(ApiError::from(CommandError::Store(StoreError::Encode("disk".into())))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], "store");
    }

    #[tokio::test]
    async fn errors_answer_with_a_json_body() {
        let (status, json) = body_of(ApiError::Submit(SubmitError::UnknownPartner("zed".into()))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(json["error"]["code"], "unknown_partner");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");

        let (status, json) = body_of(ApiError::NotFound("ab".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["error"]["code"], "not_found");

        let (status, json) = body_of(ApiError::Store(StoreError::Encode("boom".into()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], "store");
        assert!(json["error"]["message"].as_str().is_some_and(|m| m.contains("boom")));
    }

    #[test]
    fn ids_must_be_canonical() {
        assert!(parse_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "xyz", "0123456789ABCDEF0123456789ABCDEF", "../../etc/passwd"] {
            let e = parse_id(bad).expect_err(bad);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.code(), "bad_id");
        }
    }

    #[test]
    fn status_filters_parse_case_insensitively() {
        assert_eq!(parse_status(None).expect("none"), None);
        assert_eq!(parse_status(Some("")).expect("empty"), None);
        assert_eq!(parse_status(Some("done")).expect("done"), Some(Status::Done));
        assert_eq!(parse_status(Some("INERROR")).expect("inerror"), Some(Status::InError));
        let e = parse_status(Some("finished")).expect_err("bad");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), "bad_status");
        assert!(e.to_string().contains("ToSubmit"), "{e}");
    }

    #[tokio::test]
    async fn malformed_json_bodies_become_json_errors() {
        use axum::extract::FromRequest;
        let req = |ct: Option<&str>, body: &'static str| {
            let mut b = axum::http::Request::builder().method("POST").uri("/api/v1/transfers");
            if let Some(ct) = ct {
                b = b.header(header::CONTENT_TYPE, ct);
            }
            b.body(axum::body::Body::from(body)).expect("request")
        };
        let cases = [
            (req(Some("application/json"), "{not json"), StatusCode::BAD_REQUEST, "bad_json"),
            (req(Some("application/json"), r#"{"partner":"b"}"#), StatusCode::BAD_REQUEST, "bad_json"),
            (
                req(Some("application/json"), r#"{"partner":"b","rule":"r","direction":"sideways","file":"f"}"#),
                StatusCode::BAD_REQUEST,
                "bad_json",
            ),
            (req(None, "{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            (
                req(
                    Some("application/json"),
                    r#"{"partner":"b","rule":"r","direction":"push","file":"f","compresion":"lz4"}"#,
                ),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ];
        for (r, status, code) in cases {
            let rejection = Json::<Submit>::from_request(r, &()).await.expect_err("rejected");
            let (got, json) = body_of(ApiError::from(rejection)).await;
            assert_eq!(got, status);
            assert_eq!(json["error"]["code"], code);
            if code == "bad_request" {
                let message = json["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("unknown field `compresion`"), "the field is named: {message}");
            }
        }
        let ok = Json::<Submit>::from_request(
            req(Some("application/json"), r#"{"partner":"b","rule":"r","direction":"pull","file":"f"}"#),
            &(),
        )
        .await
        .expect("minimal body decodes");
        assert_eq!(ok.0.transfer_info, "");
        assert_eq!(ok.0.block_size, None);
    }

    #[test]
    fn calls_without_a_token_are_recorded_up_to_a_rate_and_the_rest_counted() {
        let u = Unauthenticated::default();
        let t0 = 1_000_000;
        for _ in 0..Unauthenticated::PER_MINUTE {
            assert_eq!(u.admit(t0), Some(None), "recorded, nothing left out before");
        }
        for _ in 0..5 {
            assert_eq!(u.admit(t0 + 1_000), None, "over the rate: left out");
        }
        assert_eq!(u.admit(t0 + 60_000), Some(Some(5)), "the next minute's first line counts them");
        assert_eq!(u.admit(t0 + 60_001), Some(None));
    }

    #[test]
    fn an_audited_path_is_cut_to_its_bound_on_a_character_boundary() {
        assert_eq!(audit_path("/api/v1/transfers"), "/api/v1/transfers");
        let long = format!("/api/v1/{}", "é".repeat(40_000));
        let cut = audit_path(&long);
        assert!(cut.len() < AUDIT_PATH_BYTES + 32, "{}", cut.len());
        assert!(cut.ends_with(&format!("... ({} bytes)", long.len())), "{cut}");
    }
}
