//! Counts the audit trail's `delivered` events per request, so a second
//! delivery of the same request (a rename into place after the first) is
//! seen even when both copies are identical.
//!
//! One global subscriber serves every simulation thread; each thread that
//! runs a simulation collects its own events (all hosts of a run share the
//! thread). `SIM_LOG=filter` also prints the nodes' logs (e.g. `SIM_LOG=info`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

thread_local! {
    static DELIVERED: RefCell<Option<BTreeMap<String, u32>>> = const { RefCell::new(None) };
}

struct AuditCount;

#[derive(Default)]
struct Fields {
    event: Option<String>,
    request_id: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}").trim_matches('"').to_string();
        match field.name() {
            "event" => self.event = Some(text),
            "request_id" => self.request_id = Some(text),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for AuditCount {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ferry::actors::AUDIT {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (Some("delivered"), Some(id)) = (fields.event.as_deref(), fields.request_id) {
            DELIVERED.with(|d| {
                if let Some(map) = d.borrow_mut().as_mut() {
                    *map.entry(id).or_default() += 1;
                }
            });
        }
    }
}

fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let print = std::env::var("SIM_LOG").ok().map(|f| {
            tracing_subscriber::fmt::layer().with_test_writer().with_filter(tracing_subscriber::EnvFilter::new(f))
        });
        // Only the audit target reaches the counter: every other callsite
        // stays disabled (quinn's trace events would cost more than the run).
        let audit = tracing_subscriber::filter::Targets::new().with_target(ferry::actors::AUDIT, tracing::Level::INFO);
        let _ = tracing_subscriber::registry().with(AuditCount.with_filter(audit)).with(print).try_init();
    });
}

/// Starts counting on this thread (forgetting earlier counts).
pub fn start() {
    install();
    DELIVERED.with(|d| *d.borrow_mut() = Some(BTreeMap::new()));
}

/// The counts since [`start`]; counting stops.
pub fn take() -> BTreeMap<String, u32> {
    DELIVERED.with(|d| d.borrow_mut().take().unwrap_or_default())
}
