//! `GET /api/v1/events`: the node's transfer events ([`crate::events`]) as
//! Server-Sent Events.
//!
//! Query: `transfer=ID`, `rule=R`, `partner=P` (an id, alias or group)
//! narrow the stream; `after=POSITION`, or the `Last-Event-ID` header an
//! SSE client sends when it reconnects, resumes after that event. Each
//! event is `event: transfer`, `id: POSITION`, `data: TransferEvent`; a
//! resume whose events are no longer kept starts with `event: gap`. A
//! comment line every [`KEEP_ALIVE`] keeps proxies from closing an idle
//! stream. A scoped token sees only the transfers in its scope. The stream
//! ends when the node shuts down, and within [`RECHECK`] of its token
//! being revoked.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use super::server::{partner_names, ApiError, ApiState};
use crate::auth::{Caller, Right};
use crate::events::{EventBus, Gap, Kept};

/// How often an idle stream sends a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only this transfer's events.
    transfer: Option<String>,
    /// Only transfers of this rule.
    rule: Option<String>,
    /// Only transfers with this partner (an id, alias or group).
    partner: Option<String>,
    /// Resume after this position (as `Last-Event-ID`).
    after: Option<String>,
}

/// Which events a stream passes: the query's filters and the caller's scope.
struct Filter {
    transfer: Option<String>,
    rule: Option<String>,
    partner: Option<String>,
    caller: Caller,
    /// Every name each configured partner goes by (id, aliases, groups).
    names: BTreeMap<String, Vec<String>>,
}

impl Filter {
    fn passes(&self, e: &Kept) -> bool {
        let names = self.names.get(&e.partner).map(Vec::as_slice).unwrap_or_default();
        let named = |n: &str| e.partner == n || names.iter().any(|m| m == n);
        self.transfer.as_deref().is_none_or(|t| e.id.as_str() == t)
            && self.rule.as_deref().is_none_or(|r| e.rule == r)
            && self.partner.as_deref().is_none_or(named)
            && self.caller.covers(&e.rule, std::iter::once(e.partner.as_str()).chain(names.iter().map(String::as_str)))
    }
}

/// A stream's state between two events.
struct Stream {
    bus: Arc<EventBus>,
    filter: Filter,
    gap: Option<Gap>,
    pending: VecDeque<Arc<Kept>>,
    live: broadcast::Receiver<Arc<Kept>>,
    /// The last event taken (sent or filtered out).
    last_seq: u64,
    shutdown: watch::Receiver<bool>,
    /// Asked every [`RECHECK`] whether the caller's token was revoked.
    tokens: crate::auth::TokenBook,
    recheck: tokio::time::Interval,
}

/// How often an open stream checks that its token was not revoked.
const RECHECK: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/api/v1/events", tag = "transfers",
    params(EventsQuery, ("last-event-id" = Option<String>, Header, description = "Resume after this position (SSE clients send it when they reconnect)")),
    responses(
        (status = 200, description = "Server-Sent Events: `transfer` events (data: TransferEvent), a `gap` event (data: Gap) first when a resume position is no longer kept, comments as keep-alives",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed query", body = crate::api::doc::Error),
        (status = 401, description = "No valid token", body = crate::api::doc::Error),
        (status = 403, description = "The token may not read", body = crate::api::doc::Error),
    ))]
pub(super) async fn events(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Right::Read)?;
    let Query(q) = query?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or(q.after);
    let config = state.node.config();
    let names = config.partners.iter().map(|p| (p.id.clone(), partner_names(&state.node, &p.id))).collect();
    let filter = Filter { transfer: q.transfer, rule: q.rule, partner: q.partner, caller, names };
    let sub = state.events.subscribe(resume.as_deref());
    let stream = Stream {
        bus: state.events.clone(),
        filter,
        gap: sub.gap,
        pending: sub.backlog.into(),
        live: sub.live,
        last_seq: sub.after_seq,
        shutdown: state.node.shutdown_watch(),
        tokens: state.tokens.clone(),
        recheck: tokio::time::interval(RECHECK),
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        let event = s.next().await?;
        Some((Ok(event), s))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

impl Stream {
    /// The next SSE event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(gap) = self.gap.take() {
                return Some(Event::default().event("gap").json_data(gap).unwrap_or_default());
            }
            let kept = match self.pending.pop_front() {
                Some(kept) => kept,
                None => {
                    let received = tokio::select! {
                        _ = self.shutdown.wait_for(|s| *s) => return None,
                        _ = self.recheck.tick() => {
                            if !self.tokens.still_valid(&self.filter.caller) {
                                return None; // revoked: the stream ends
                            }
                            continue;
                        }
                        received = self.live.recv() => received,
                    };
                    match received {
                        Ok(kept) => kept,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            self.catch_up();
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            };
            if kept.seq <= self.last_seq {
                continue; // already taken from the ring after a lag
            }
            self.last_seq = kept.seq;
            if self.filter.passes(&kept) {
                return Some(Event::default().event("transfer").id(self.bus.position(kept.seq)).data(kept.json()));
            }
        }
    }

    /// The client fell behind the live buffer: serve it from the ring, or
    /// tell it what it lost.
    fn catch_up(&mut self) {
        match self.bus.catch_up(self.last_seq) {
            Some(backlog) => self.pending.extend(backlog),
            None => {
                let sub = self.bus.subscribe(Some(&self.bus.position(self.last_seq)));
                self.gap = sub.gap;
                self.pending.extend(sub.backlog);
                self.live = sub.live;
                self.last_seq = sub.after_seq;
            }
        }
    }
}
