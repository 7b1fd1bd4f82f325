//! Availability: what this node knows of each partner's reachability.
//!
//! A partner is `Unknown` until this node first reached it or failed to,
//! `Available` while a connection to it is up and answers heartbeats, and
//! `Unavailable` from the moment a dial failed, its last connection closed
//! or a heartbeat went unanswered. Connections updates the table; the
//! Commander reads it to keep requests for an unavailable partner queued
//! instead of spending their retries, and the API lists it.
//!
//! The table lives in memory only: after a restart every partner is
//! `Unknown` again and is learnt afresh by the first dial.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::now_ms;

pub use crate::model::PartnerState;

/// One partner's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartnerHealth {
    pub state: PartnerState,
    /// Unix milliseconds when the state last changed (`None` while unknown).
    pub since_ms: Option<u64>,
    /// Round-trip time of the last answered heartbeat, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why the partner is unavailable (or was, last time).
    pub last_error: Option<String>,
    /// End of validity (Unix seconds) of the certificate it presented on
    /// its latest connection.
    pub certificate_not_after: Option<i64>,
}

impl Default for PartnerHealth {
    fn default() -> Self {
        PartnerHealth {
            state: PartnerState::Unknown,
            since_ms: None,
            rtt_ms: None,
            last_error: None,
            certificate_not_after: None,
        }
    }
}

/// The table, shared by the node's parts.
#[derive(Default)]
pub struct Availability {
    partners: Mutex<BTreeMap<String, PartnerHealth>>,
}

impl Availability {
    /// The partner answered (a connection came up or a heartbeat returned).
    /// Returns whether it just became available.
    pub fn up(&self, partner: &str, rtt_ms: Option<f64>) -> bool {
        let Ok(mut t) = self.partners.lock() else { return false };
        let h = t.entry(partner.to_owned()).or_default();
        let changed = h.state != PartnerState::Available;
        if changed {
            h.state = PartnerState::Available;
            h.since_ms = Some(now_ms());
        }
        if rtt_ms.is_some() {
            h.rtt_ms = rtt_ms;
        }
        changed
    }

    /// The partner presented a certificate valid until `not_after` (Unix
    /// seconds) on a new connection.
    pub fn presented(&self, partner: &str, not_after: i64) {
        if let Ok(mut t) = self.partners.lock() {
            t.entry(partner.to_owned()).or_default().certificate_not_after = Some(not_after);
        }
    }

    /// The partner could not be reached or stopped answering. Returns
    /// whether it just became unavailable.
    pub fn down(&self, partner: &str, reason: &str) -> bool {
        let Ok(mut t) = self.partners.lock() else { return false };
        let h = t.entry(partner.to_owned()).or_default();
        h.last_error = Some(reason.to_owned());
        let changed = h.state != PartnerState::Unavailable;
        if changed {
            h.state = PartnerState::Unavailable;
            h.since_ms = Some(now_ms());
        }
        changed
    }

    pub fn get(&self, partner: &str) -> PartnerHealth {
        self.partners.lock().ok().and_then(|t| t.get(partner).cloned()).unwrap_or_default()
    }

    pub fn is_unavailable(&self, partner: &str) -> bool {
        self.get(partner).state == PartnerState::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_change_once_and_keep_the_last_cause() {
        let a = Availability::default();
        assert_eq!(a.get("b").state, PartnerState::Unknown);
        assert!(!a.is_unavailable("b"), "unknown partners are tried");
        assert!(a.down("b", "dial timed out"));
        assert!(!a.down("b", "dial timed out again"), "already unavailable");
        let h = a.get("b");
        assert_eq!(h.state, PartnerState::Unavailable);
        assert_eq!(h.last_error.as_deref(), Some("dial timed out again"));
        assert!(a.up("b", Some(0.5)));
        assert!(!a.up("b", Some(0.7)));
        let h = a.get("b");
        assert_eq!((h.state, h.rtt_ms), (PartnerState::Available, Some(0.7)));
        assert_eq!(h.last_error.as_deref(), Some("dial timed out again"), "the last cause stays for operators");
    }
}
