//! The node's metrics, served at `GET /metrics` in the OpenMetrics text
//! format (which Prometheus scrapes), with `prometheus-client`.
//!
//! Where each figure comes from:
//!
//! * Transfers, bytes, files delivered, retries and durations come from
//!   the store's record writes ([`Store::observe`]): [`deltas`] decides,
//!   in pure code, what one write changed, and [`Metrics::record_change`]
//!   adds it. The transfer gauges are seeded from the store at start, so
//!   they count every record the node holds, not only those written since.
//! * Store flush latency comes from [`Store::observe_flush`]: the time a
//!   caller waited for its data to be on disk, queueing included.
//! * API requests are counted by the API's outermost layer, by route
//!   template (`/api/v1/transfers/{id}`, never the id itself), method and
//!   status, 401s included.
//! * Connections, channels, partner availability, heartbeat round trips
//!   and certificate lifetimes are read from the node when scraped
//!   ([`Metrics::set_node`]).
//!
//! Bytes count the progress each record write reports (`transferred`
//! growing), on this node's side: sent for a push this node requested or
//! a pull it served, received otherwise. A transfer that resumes below its
//! last count counts the bytes it moves again (they cross the link again).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::{NodeStats, PartnerState, PartnersView};
use crate::protocol::Direction;
use crate::store::{RecordChange, RequestRecord, Role, Status, Store, StoreError};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];
type FloatGauge = Gauge<f64, AtomicU64>;

/// Histogram buckets for transfer durations: 10 ms to about 23 hours.
#[derive(Clone, Copy)]
struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.01, 2.0, 24))
    }
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    transfers: Family<Labels3, Gauge>,
    finished: Family<Labels3, Counter>,
    bytes: Family<Labels2, Counter>,
    files_delivered: Family<Labels2, Counter>,
    retries: Family<Labels2, Counter>,
    durations: Family<Labels2, Histogram, DurationBuckets>,
    store_flush: Histogram,
    api_requests: Family<Labels3, Counter>,
    connections: Family<Labels1, Gauge>,
    channels: Gauge,
    running: Gauge,
    partner_up: Family<Labels1, Gauge>,
    partner_rtt: Family<Labels1, FloatGauge>,
    partner_cert_days: Family<Labels1, Gauge>,
    cert_days: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            registry: Registry::default(),
            transfers: Family::default(),
            finished: Family::default(),
            bytes: Family::default(),
            files_delivered: Family::default(),
            retries: Family::default(),
            durations: Family::new_with_constructor(DurationBuckets),
            store_flush: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            api_requests: Family::default(),
            connections: Family::default(),
            channels: Gauge::default(),
            running: Gauge::default(),
            partner_up: Family::default(),
            partner_rtt: Family::default(),
            partner_cert_days: Family::default(),
            cert_days: Gauge::default(),
        };
        registry.register("transfers", "Requests this node holds, by status, rule and partner", m.transfers.clone());
        registry.register(
            "transfers_finished",
            "Requests that ended (Done, InError, Cancelled), by status, rule and partner",
            m.finished.clone(),
        );
        registry.register(
            "transfer_bytes",
            "File bytes moved, by direction (sent, received) and partner",
            m.bytes.clone(),
        );
        registry.register(
            "files_delivered",
            "Files this node received and put under their final name, by rule and partner",
            m.files_delivered.clone(),
        );
        registry.register(
            "transfer_retries",
            "Attempts started beyond a request's first (automatic retries), by rule and partner",
            m.retries.clone(),
        );
        registry.register(
            "transfer_duration_seconds",
            "From a request's first start to its end, by rule and final status",
            m.durations.clone(),
        );
        registry.register(
            "store_flush_seconds",
            "How long a writer waited for the store's fsync",
            m.store_flush.clone(),
        );
        registry.register(
            "api_requests",
            "REST API requests, by method, route and HTTP status",
            m.api_requests.clone(),
        );
        registry.register("connections", "Live QUIC connections, by partner", m.connections.clone());
        registry.register(
            "channels_open",
            "Private channels (requests) running on this node, either side",
            m.channels.clone(),
        );
        registry.register("requests_running", "Requests this node's Commander is running", m.running.clone());
        registry.register(
            "partner_available",
            "1 while the partner answers, 0 when it does not, by partner",
            m.partner_up.clone(),
        );
        registry.register("partner_rtt_seconds", "Round trip of the partner's last heartbeat", m.partner_rtt.clone());
        registry.register(
            "partner_certificate_days_left",
            "Days before the certificate the partner last presented expires",
            m.partner_cert_days.clone(),
        );
        registry.register("certificate_days_left", "Days before this node's certificate expires", m.cert_days.clone());
        Metrics { registry, ..m }
    }

    /// Counts every record `store` holds now into the transfer gauges, and
    /// registers for every write and flush from now on. Called once, at start.
    pub fn attach(self: &std::sync::Arc<Self>, store: &Store) -> Result<(), StoreError> {
        // One record at a time: a store with a million requests is not
        // held in memory to be counted.
        store.for_each_head(|h| {
            let labels = [("status", format!("{:?}", h.status)), ("rule", h.rule), ("partner", h.partner)];
            self.transfers.get_or_create(&labels).inc();
        })?;
        let me = self.clone();
        store.observe(std::sync::Arc::new(move |change| me.record_change(change)));
        let me = self.clone();
        store.observe_flush(std::sync::Arc::new(move |waited| me.store_flush.observe(waited.as_secs_f64())));
        Ok(())
    }

    /// Adds what one record write changed.
    pub fn record_change(&self, change: &RecordChange<'_>) {
        let d = deltas(change.old, change.new);
        let rec = change.new;
        // The old record's labels: one write may move a request to another
        // group member as it starts.
        if let (Some(status), Some(old)) = (d.left, change.old) {
            self.transfers.get_or_create(&status_labels(status, old)).dec();
        }
        if let Some(new) = d.entered {
            self.transfers.get_or_create(&status_labels(new, rec)).inc();
        }
        let partner = || [("direction", String::new()), ("partner", rec.partner.clone())];
        if d.bytes_sent > 0 {
            let mut l = partner();
            l[0].1 = "sent".into();
            self.bytes.get_or_create(&l).inc_by(d.bytes_sent);
        }
        if d.bytes_received > 0 {
            let mut l = partner();
            l[0].1 = "received".into();
            self.bytes.get_or_create(&l).inc_by(d.bytes_received);
        }
        let rule_partner = [("rule", rec.rule.clone()), ("partner", rec.partner.clone())];
        if d.delivered {
            self.files_delivered.get_or_create(&rule_partner).inc();
        }
        if d.retries > 0 {
            self.retries.get_or_create(&rule_partner).inc_by(u64::from(d.retries));
        }
        if let Some((status, took)) = d.finished {
            self.finished.get_or_create(&status_labels(status, rec)).inc();
            if let Some(took) = took {
                let labels = [("rule", rec.rule.clone()), ("status", format!("{status:?}"))];
                self.durations.get_or_create(&labels).observe(took.as_secs_f64());
            }
        }
    }

    /// Counts one API request. Methods outside the usual few count as
    /// `other`, so no caller can add series at will.
    pub fn api_request(&self, method: &str, route: &str, status: u16) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "other",
        };
        let labels = [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
        self.api_requests.get_or_create(&labels).inc();
    }

    /// Sets the figures read from the node when scraped.
    pub fn set_node(&self, stats: &NodeStats, partners: &PartnersView) {
        self.channels.set(i64::try_from(stats.open_channels).unwrap_or(i64::MAX));
        self.running.set(i64::try_from(stats.running_requests).unwrap_or(i64::MAX));
        self.cert_days.set(stats.certificate.days_left);
        for p in &partners.partners {
            let l = [("partner", p.id.clone())];
            self.connections.get_or_create(&l).set(i64::try_from(p.connections).unwrap_or(i64::MAX));
            self.partner_up.get_or_create(&l).set(i64::from(p.state == PartnerState::Available));
            if let Some(rtt) = p.rtt_ms {
                self.partner_rtt.get_or_create(&l).set(rtt / 1000.0);
            }
            if let Some(days) = p.certificate_days_left {
                self.partner_cert_days.get_or_create(&l).set(days);
            }
        }
    }

    /// The scrape: every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

fn status_labels(status: Status, rec: &RequestRecord) -> Labels3 {
    [("status", format!("{status:?}")), ("rule", rec.rule.clone()), ("partner", rec.partner.clone())]
}

/// What one record write changed, as the metrics count it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deltas {
    /// The status the record left (a status gauge goes down).
    pub left: Option<Status>,
    /// The status the record entered (a status gauge goes up).
    pub entered: Option<Status>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// This node put the file under its final name.
    pub delivered: bool,
    /// Attempts started beyond the first.
    pub retries: u32,
    /// The request ended: how, and how long since its first start.
    pub finished: Option<(Status, Option<Duration>)>,
}

/// Decides what the write from `old` to `new` adds to the metrics.
pub fn deltas(old: Option<&RequestRecord>, new: &RequestRecord) -> Deltas {
    let mut d = Deltas::default();
    let status_changed = old.is_none_or(|o| o.status != new.status);
    if status_changed {
        d.left = old.map(|o| o.status);
        d.entered = Some(new.status);
        if new.status.is_final() {
            let took = match (new.started_at, new.finished_at) {
                (Some(start), Some(end)) => Some(Duration::from_millis(end.saturating_sub(start))),
                _ => None,
            };
            d.finished = Some((new.status, took));
        }
    }
    // A resumed run starts its count at its restart point: those bytes
    // were moved by an earlier run.
    let before = old.map_or(0, |o| o.transferred).max(new.restart_offset);
    let moved = new.transferred.saturating_sub(before);
    let sending =
        matches!((new.role, new.direction), (Role::Requester, Direction::Push) | (Role::Requested, Direction::Pull));
    match sending {
        true => d.bytes_sent = moved,
        false => d.bytes_received = moved,
    }
    d.delivered = !sending && new.delivered && !old.is_some_and(|o| o.delivered);
    let before = old.map_or(0, |o| o.attempts).max(1);
    d.retries = new.attempts.saturating_sub(before);
    d
}

#[cfg(test)]
mod tests;
