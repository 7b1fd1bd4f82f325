//! Keeps a running node's TLS identity current: a renewed certificate and
//! key (`ferry certs renew`), a new revocation list (`ferry certs revoke`)
//! or CA file is picked up without a restart, on SIGHUP or when the files
//! change, while the connections already up carry on.
//!
//! How a change is noticed: every [`POLL`] the watcher reads the length,
//! modification time and inode of each file (a rename over the file, as
//! `ferry certs` writes them, changes the inode). It loads the files once
//! they changed since the last load *and* stayed unchanged for one poll,
//! so a certificate and key written one after the other are read as a
//! pair. SIGHUP loads at once.
//!
//! What a load does: the files are checked exactly as at start
//! ([`NodeIdentity::load`], then the revocation list, which must not list
//! the node itself). Only if every check passes does the node switch: the
//! QUIC endpoint presents the new certificate in every later handshake
//! (accepted and dialed), the API serves it on every later connection,
//! and partners are checked against the new list. A load that fails
//! changes nothing; the error is logged and shown by `GET /api/v1/node`,
//! and the files are read again when they change again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::endpoint::{set_identity, DialConfig, TransportError, TransportTuning};
use super::tls::{self, CertificateInfo, NodeIdentity, TlsError};

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// The files a node's identity is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    pub node_id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: Option<PathBuf>,
}

impl IdentityFiles {
    /// Loads and checks the identity, as a node does at start.
    pub fn load(&self) -> Result<NodeIdentity, TlsError> {
        let identity = NodeIdentity::load(&self.node_id, &self.cert, &self.key, &self.ca)?;
        match &self.crl {
            Some(crl) => identity.with_crl(crl),
            None => Ok(identity),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key, &self.ca].into_iter().chain(self.crl.as_ref())
    }

    /// What the files look like now (see the module doc).
    pub fn stamps(&self) -> Stamps {
        use std::os::unix::fs::MetadataExt;
        Stamps(
            self.paths()
                .map(|p| std::fs::metadata(p).ok().map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino())))
                .collect(),
        )
    }
}

/// Length, modification time and inode of each file (`None`: missing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamps(Vec<Option<(u64, i64, i64, u64)>>);

/// Whether to load the files: they differ from what was last loaded (or
/// last tried) and have not changed since the previous poll.
pub fn settled_change(last_loaded: &Stamps, previous_poll: &Stamps, now: &Stamps) -> bool {
    now != last_loaded && now == previous_poll
}

/// The identity in use and the outcome of the last load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityStatus {
    pub certificate: CertificateInfo,
    /// Why the last load was refused (the node kept the identity it had).
    pub last_error: Option<String>,
    /// How many loads switched the identity since start.
    pub reloads: u64,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Applies new identities to the node's endpoint and API.
pub struct IdentityWatch {
    files: IdentityFiles,
    endpoint: quinn::Endpoint,
    dial: DialConfig,
    tuning: TransportTuning,
    api: Option<watch::Sender<Arc<rustls::ServerConfig>>>,
    status: watch::Sender<IdentityStatus>,
    /// The stamps of the files last loaded or tried.
    loaded: Mutex<Stamps>,
    /// Told each identity switched to (to recheck connections already up).
    on_reload: Option<Box<dyn Fn(Arc<NodeIdentity>) + Send + Sync>>,
}

impl IdentityWatch {
    /// A watch over `files`, whose current identity `identity` the node
    /// started with; `api` receives the API's TLS settings at each reload.
    pub fn new(
        files: IdentityFiles,
        identity: &NodeIdentity,
        endpoint: quinn::Endpoint,
        dial: DialConfig,
        tuning: TransportTuning,
        api: Option<watch::Sender<Arc<rustls::ServerConfig>>>,
    ) -> Result<IdentityWatch, TlsError> {
        let stamps = files.stamps();
        let certificate = CertificateInfo::of(&identity.cert_chain[0])?;
        let (status, _) = watch::channel(IdentityStatus { certificate, last_error: None, reloads: 0 });
        Ok(IdentityWatch { files, endpoint, dial, tuning, api, status, loaded: Mutex::new(stamps), on_reload: None })
    }

    /// Calls `f` with each identity switched to, after the switch.
    pub fn on_reload(mut self, f: impl Fn(Arc<NodeIdentity>) + Send + Sync + 'static) -> IdentityWatch {
        self.on_reload = Some(Box::new(f));
        self
    }

    /// The identity in use and the last load's outcome.
    pub fn status(&self) -> IdentityStatus {
        self.status.borrow().clone()
    }

    /// Reads the files and, if they pass every check, switches to them.
    /// On error nothing changes and the error is kept in the status.
    pub fn reload(&self) -> Result<CertificateInfo, ReloadError> {
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = self.files.stamps();
        }
        let result = self.apply();
        self.status.send_modify(|s| match &result {
            Ok(info) => {
                s.certificate = info.clone();
                s.last_error = None;
                s.reloads += 1;
            }
            Err(e) => s.last_error = Some(e.to_string()),
        });
        result
    }

    fn apply(&self) -> Result<CertificateInfo, ReloadError> {
        let identity = self.files.load()?;
        let info = CertificateInfo::of(&identity.cert_chain[0])?;
        let https = match &self.api {
            Some(_) => Some(tls::https_server_config(&identity)?),
            None => None,
        };
        set_identity(&self.endpoint, &self.dial, &identity, &self.tuning)?;
        if let (Some(api), Some(https)) = (&self.api, https) {
            api.send_replace(https);
        }
        if let Some(f) = &self.on_reload {
            f(Arc::new(identity));
        }
        Ok(info)
    }

    /// Reloads on SIGHUP and when the files settle after a change, until
    /// `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificate files are still watched");
                None
            }
        };
        let mut previous = self.files.stamps();
        loop {
            let signalled = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(POLL) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            let now = self.files.stamps();
            let changed = self.loaded.lock().map(|loaded| settled_change(&loaded, &previous, &now)).unwrap_or(false);
            previous = now;
            if signalled || changed {
                self.reload_and_log(if signalled { "SIGHUP" } else { "the files changed" });
            }
        }
    }

    fn reload_and_log(&self, cause: &str) {
        let node = &self.files.node_id;
        match self.reload() {
            Ok(info) => {
                let now = unix_now();
                let days = tls::days_left(info.not_after, now);
                tracing::info!(node = %node, serial = %info.serial, days_left = days, cause,
                    "TLS identity reloaded: later handshakes use this certificate; connections up carry on");
                if let Some(warning) = tls::expiry_warning(node, info.not_after, now) {
                    tracing::warn!(node = %node, "{warning}");
                }
            }
            Err(e) => tracing::warn!(node = %node, cause, error = %e,
                "TLS files not reloaded, the node keeps its current certificate; they are read again when they change"),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps(v: &[u64]) -> Stamps {
        Stamps(v.iter().map(|&n| Some((n, 0, 0, 1))).collect())
    }

    #[test]
    fn a_change_is_loaded_once_it_settled() {
        let loaded = stamps(&[1, 1]);
        // Nothing changed.
        assert!(!settled_change(&loaded, &loaded, &loaded));
        // The key was just written; the certificate may follow: wait.
        let half = stamps(&[1, 2]);
        assert!(!settled_change(&loaded, &loaded, &half));
        // Both written, still moving.
        let both = stamps(&[2, 2]);
        assert!(!settled_change(&loaded, &half, &both));
        // Unchanged for one poll: load.
        assert!(settled_change(&loaded, &both, &both));
        // Once loaded (or tried), the same files are not read again.
        assert!(!settled_change(&both, &both, &both));
    }

    #[test]
    fn a_vanished_file_is_a_change() {
        let loaded = stamps(&[1, 1]);
        let gone = Stamps(vec![Some((1, 0, 0, 1)), None]);
        assert!(settled_change(&loaded, &gone, &gone));
    }
}
