//! The node's REST API: JSON over HTTPS (HTTP/1.1) on the `api` address of the config, every route but the health routes behind a bearer token ([`crate::auth`]).
//!
//! This module owns the HTTP surface of a node and nothing else: it reads
//! requests from the store and hands submissions and operator commands to
//! [`NodeHandle`] (`submit`, `stop`, `cancel`, `restart`), but never changes
//! a record itself.
//!
//! - [`server`]: the axum router ([`router`]) and [`serve`], and the mapping of
//!   every failure to `{"error": {"code", "message"}}` with a fitting status;
//! - the JSON shapes ([`TransferView`], [`LogLineView`] and the rest) live in
//!   [`crate::model`], shared by both sides and the node;
//! - [`client`]: [`ApiClient`], used by the command line and tests.
//!
//! Routes (all JSON):
//!
//! | method | path                          | answer                                   |
//! |--------|-------------------------------|------------------------------------------|
//! | POST   | `/api/v1/transfers`           | 201 + [`TransferView`] (body: `Submit`)  |
//! | GET    | `/api/v1/transfers[?status=]` | `[TransferView]`, oldest first           |
//! | GET    | `/api/v1/transfers/{id}`      | [`TransferView`]                         |
//! | GET    | `/api/v1/transfers/{id}/log`  | `[LogLineView]`, oldest first            |
//! | POST   | `/api/v1/transfers/{id}/stop` | [`TransferView`] after the command       |
//! | POST   | `/api/v1/transfers/{id}/cancel` | [`TransferView`] after the command     |
//! | POST   | `/api/v1/transfers/{id}/restart` | [`TransferView`] after the command    |
//! | GET    | `/api/v1/node`                | `NodeStats`                              |
//! | GET    | `/api/v1/partners`            | `PartnersView`                           |
//! | GET    | `/api/v1/rules`               | `[RuleView]`: folders, target mode, tasks |
//! | GET    | `/api/v1/tokens`              | `[TokenView]` (admin)                    |
//! | POST   | `/api/v1/tokens`              | 201 + `CreatedToken` (admin; body: `NewToken`) |
//! | DELETE | `/api/v1/tokens/{name}`       | `TokenView` after the revocation (admin) |
//! | GET    | `/api/v1/events`              | Server-Sent Events: `TransferEvent`s (`?transfer=&rule=&partner=&after=`) |
//! | GET    | `/api/v1/openapi.json`        | this API's OpenAPI 3.1 document (any valid token) |
//! | GET    | `/metrics`                    | OpenMetrics text (metrics or admin, unscoped) |
//! | GET    | `/healthz`, `/readyz`         | plain text; no token needed              |
//!
//! Error statuses: 401 without a valid token, 403 for a token whose role or
//! scope does not allow the call, 400 for malformed input (bad JSON, bad id, bad status
//! filter, bad file name or block size), 404 for an unknown transfer or route,
//! 409 for an operator command this node cannot carry out (`not_requester`:
//! the partner drives the request; `invalid_state`: not in a state the
//! command accepts), 422 for a submission naming an unknown partner, rule or
//! file or a rule the partner may not use, 503 while the node shuts down, 500
//! for store failures.
//!
//! [`NodeHandle`]: crate::node::NodeHandle

pub mod client;
mod closing;
pub mod doc;
mod events;
pub mod server;
pub mod tls;

pub use crate::model::view::{ErrorBody, ErrorView, LogLineView, TransferView};
pub use client::{Access, ApiClient, ClientError, EventQuery, EventStream, StreamItem};
pub use server::{router, serve, ApiError, ApiState};
