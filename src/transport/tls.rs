//! rustls configuration for the cluster's mutual TLS, and node identities.
//!
//! This module owns:
//!
//! * [`NodeIdentity`]: a node's certificate chain, private key and the cluster
//!   CA, checked on load to belong together and to the claimed node id;
//! * the rustls server and client configs built from it;
//! * [`peer_node_id`]: the authenticated node id of the other end of a QUIC
//!   connection, read from its certificate's DNS subjectAltName.
//!
//! Invariants:
//!
//! * Only the cluster CA is trusted, on both sides, and client certificates are
//!   mandatory: every connection is authenticated in both directions.
//! * Every config uses an explicit *ring* provider and TLS 1.3 only, so nothing
//!   depends on a process-wide default `CryptoProvider` being installed.
//! * A node id is the single DNS SAN of its certificate (see `crate::certs`).
//!   The client dials with the partner's node id as the server name, so webpki
//!   checks the server's identity during the handshake; the server learns the
//!   client's identity from [`peer_node_id`] after the handshake.
//! * Names are read with `x509-parser`, only after webpki verified the chain;
//!   malformed input yields an error, never a panic.
//! * With a revocation list (`[tls] crl`, signed by the CA), webpki refuses a
//!   listed certificate at every handshake, in both directions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};

use crate::certs;

/// ALPN protocol id spoken by ferry nodes. A peer that does not offer it fails
/// the handshake, which keeps unrelated QUIC clients out early.
pub const ALPN: &[u8] = b"ferry/1";

/// Errors from loading identities, building TLS configs and reading peer
/// identities.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or decoded.
    #[error("cannot read {what} from {}: {source}", path.display())]
    Pem {
        /// Which item was being read ("certificate chain", "private key", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error (includes I/O errors).
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A certificate file contained no certificate.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A node id is not well-formed.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The rejected id.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The certificate names a different node than expected.
    #[error("certificate belongs to node {found:?}, expected {expected:?}")]
    NodeIdMismatch {
        /// The node id that was expected.
        expected: String,
        /// The node id the certificate carries.
        found: String,
    },

    /// The certificate does not verify against the cluster CA for the node id
    /// (wrong CA, wrong name, expired, missing key usage, ...).
    #[error("certificate for node {node_id:?} rejected: {source}")]
    CertificateRejected {
        /// The node id it was checked for.
        node_id: String,
        /// rustls/webpki's reason.
        #[source]
        source: rustls::Error,
    },

    /// The private key is unusable or does not match the certificate.
    #[error("private key in {} does not match the certificate or is unusable: {source}", path.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },

    /// Building a rustls config failed.
    #[error("TLS configuration error: {0}")]
    Config(#[from] rustls::Error),

    /// Building a certificate verifier failed.
    #[error("TLS verifier configuration error: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),

    /// The connection has no peer certificate (handshake incomplete, or the
    /// peer was not authenticated).
    #[error("connection has no authenticated peer certificate")]
    NoPeerCertificate,

    /// A certificate could not be parsed far enough to find its names.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),

    /// The certificate has no DNS subjectAltName to take a node id from.
    #[error("certificate has no DNS subjectAltName")]
    NoDnsName,

    /// The certificate has several DNS names, so its node id is ambiguous.
    #[error("certificate has {0} DNS subjectAltNames; a node certificate has exactly one")]
    MultipleDnsNames(usize),
}

/// A node's TLS identity: who it is, its certificate chain and key, and the
/// cluster CA it trusts.
pub struct NodeIdentity {
    /// The node id (the certificate's DNS SAN).
    pub node_id: String,
    /// The node's certificate chain, end-entity first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA certificate; the only trust anchor.
    pub ca: CertificateDer<'static>,
    /// Revocation lists signed by the CA: a certificate they list is
    /// refused at every handshake, both ways.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
            crls: self.crls.clone(),
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key must never end up in logs.
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"[elided]")
            .finish()
    }
}

impl NodeIdentity {
    /// Load a node identity from PEM files and check it is coherent: the
    /// certificate's DNS name is `node_id`, it chains to `ca` and is valid for
    /// both server and client authentication now, and `key` matches it.
    pub fn load(node_id: &str, cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        check_node_id(node_id)?;
        let cert_chain = CertificateDer::pem_file_iter(cert)
            .map_err(|source| pem_error("certificate chain", cert, source))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| pem_error("certificate chain", cert, source))?;
        let end_entity = cert_chain.first().ok_or_else(|| TlsError::NoCertificate { path: cert.to_owned() })?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| pem_error("private key", key, source))?;
        let ca_der = CertificateDer::from_pem_file(ca).map_err(|source| pem_error("CA certificate", ca, source))?;

        // Checked before the chain so that handing node A's files to node B
        // gives a "wrong node" error instead of a generic name mismatch.
        let found = node_id_from_cert(end_entity)?;
        if found != node_id {
            return Err(TlsError::NodeIdMismatch { expected: node_id.to_owned(), found });
        }
        verify_node_certificate(&ca_der, &cert_chain, node_id)?;
        rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key_der.clone_key(), &provider())
            .map_err(|source| TlsError::KeyMismatch { path: key.to_owned(), source })?;

        Ok(Self { node_id: node_id.to_owned(), cert_chain, key: key_der, ca: ca_der, crls: Vec::new() })
    }

    /// The same identity checking partners against the revocation list at
    /// `crl`; refused if the list is unreadable or revokes this node itself.
    pub fn with_crl(mut self, crl: &Path) -> Result<Self, TlsError> {
        let list = CertificateRevocationListDer::from_pem_file(crl)
            .map_err(|source| pem_error("revocation list", crl, source))?;
        self.crls = vec![list];
        let rejected = |source| TlsError::CertificateRejected { node_id: self.node_id.clone(), source };
        client_verifier(&self)?
            .verify_client_cert(&self.cert_chain[0], &self.cert_chain[1..], UnixTime::now())
            .map_err(rejected)?;
        Ok(self)
    }
}

fn pem_error(what: &'static str, path: &Path, source: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem { what, path: path.to_owned(), source }
}

fn check_node_id(id: &str) -> Result<(), TlsError> {
    match certs::node_id_problem(id) {
        None => Ok(()),
        Some(reason) => Err(TlsError::InvalidNodeId { id: id.to_owned(), reason }),
    }
}

/// The crypto provider for every config: explicit so no process-default
/// provider has to be installed (and a different one installed elsewhere in
/// the process cannot change ours).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// Verify that `chain` (end-entity first) is a valid node certificate for
/// `node_id` issued by `ca`, usable now both as a TLS server and a TLS client.
pub fn verify_node_certificate(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    node_id: &str,
) -> Result<(), TlsError> {
    let rejected = |source| TlsError::CertificateRejected { node_id: node_id.to_owned(), source };
    let (end_entity, intermediates) = chain.split_first().ok_or(TlsError::NoPeerCertificate)?;
    let roots = ca_roots(ca)?;
    let name = ServerName::try_from(node_id)
        .map_err(|_| TlsError::InvalidNodeId { id: node_id.to_owned(), reason: "not a valid DNS name" })?;
    let now = UnixTime::now();

    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()?
        .verify_server_cert(end_entity, intermediates, &name, &[], now)
        .map_err(rejected)?;
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()?
        .verify_client_cert(end_entity, intermediates, now)
        .map_err(rejected)?;
    Ok(())
}

/// rustls server config: presents this node's certificate, requires a client
/// certificate issued by the cluster CA, TLS 1.3 only, ALPN [`ALPN`].
pub fn server_config(id: &NodeIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = client_verifier(id)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.cert_chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The verifier of partners' client certificates: the cluster CA, and the
/// revocation lists when there are some.
fn client_verifier(id: &NodeIdentity) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(ca_roots(&id.ca)?, provider());
    if !id.crls.is_empty() {
        builder = builder.with_crls(id.crls.clone()).only_check_end_entity_revocation();
    }
    Ok(builder.build()?)
}

/// The REST API's TLS settings: the node's own certificate (issued by the
/// cluster CA), TLS 1.2 or 1.3, HTTP/1.1, no client certificate (callers
/// authenticate with a bearer token).
pub fn https_server_config(id: &NodeIdentity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(id.cert_chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// rustls client config: trusts only the cluster CA, authenticates with this
/// node's certificate, TLS 1.3 only, ALPN [`ALPN`]. The server name given when
/// connecting must be the partner's node id.
pub fn client_config(id: &NodeIdentity) -> Result<rustls::ClientConfig, TlsError> {
    let mut verifier = WebPkiServerVerifier::builder_with_provider(ca_roots(&id.ca)?, provider());
    if !id.crls.is_empty() {
        verifier = verifier.with_crls(id.crls.clone()).only_check_end_entity_revocation();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier.build()?)
        .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks the certificate the peer of `conn` presented against `id`'s trust
/// as it is now (its CA and revocation lists, the time): after a reload, a
/// connection whose partner the new list revokes fails this.
pub fn recheck_peer(id: &NodeIdentity, conn: &quinn::Connection) -> Result<(), TlsError> {
    let chain = peer_chain(conn)?;
    let (end_entity, intermediates) = chain.split_first().ok_or(TlsError::NoPeerCertificate)?;
    let node_id = node_id_from_cert(end_entity)?;
    client_verifier(id)?
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map_err(|source| TlsError::CertificateRejected { node_id, source })?;
    Ok(())
}

/// The authenticated node id of the peer of `conn`: the single DNS SAN of the
/// end-entity certificate it presented during the (verified) handshake.
pub fn peer_node_id(conn: &quinn::Connection) -> Result<String, TlsError> {
    let chain = peer_chain(conn)?;
    let end_entity = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    node_id_from_cert(end_entity)
}

/// The certificate chain the peer of `conn` presented (end-entity first).
fn peer_chain(conn: &quinn::Connection) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    // quinn's rustls session stores the peer chain as exactly this type.
    identity.downcast::<Vec<CertificateDer<'static>>>().map(|chain| *chain).map_err(|_| TlsError::NoPeerCertificate)
}

/// The node id carried by a node certificate: its only DNS SAN, which must be
/// a well-formed node id.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let mut names = certificate_dns_names(cert)?;
    let name = match names.len() {
        0 => return Err(TlsError::NoDnsName),
        1 => names.swap_remove(0),
        n => return Err(TlsError::MultipleDnsNames(n)),
    };
    check_node_id(&name)?;
    Ok(name)
}

/// All dNSName entries of the certificate's subjectAltName extension, in
/// order (empty if it has no such extension). Read with `x509-parser`; a
/// certificate that does not parse, or repeats the extension, is refused.
pub fn certificate_dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let malformed = |e: String| TlsError::MalformedCertificate(e);
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the certificate".into()));
    }
    // RFC 5280 forbids repeating an extension; two SANs could disagree about
    // who the certificate names (x509-parser reports a duplicate as an error).
    let san = parsed.subject_alternative_name().map_err(|e| malformed(format!("subjectAltName: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Days from `now` (Unix seconds) before a certificate ending at
/// `not_after` expires, rounded down (negative once expired).
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(24 * 60 * 60)
}

/// From this many days before expiry, a node warns in its log at start.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The warning a node logs about its own certificate, if it is due.
pub fn expiry_warning(node_id: &str, not_after: i64, now: i64) -> Option<String> {
    let days = days_left(not_after, now);
    (days < EXPIRY_WARNING_DAYS).then(|| {
        format!("the certificate of node {node_id} expires in {days} day(s): renew it with `ferry certs renew` before partners refuse it (the node picks the new files up without a restart)")
    })
}

/// What an operator needs to know of a certificate in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number, lowercase hex (as `revoked.txt` lists it).
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertificateInfo {
    pub fn of(cert: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
        let (serial, not_after) = certificate_serial_and_expiry(cert)?;
        Ok(CertificateInfo { serial: serial.iter().map(|b| format!("{b:02x}")).collect(), not_after })
    }
}

/// The IP addresses among the certificate's subjectAltNames (a renewed
/// certificate keeps them unless told otherwise).
pub fn certificate_ip_addresses(cert: &CertificateDer<'_>) -> Result<Vec<std::net::IpAddr>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let malformed = |e: String| TlsError::MalformedCertificate(e);
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| malformed(e.to_string()))?;
    let san = parsed.subject_alternative_name().map_err(|e| malformed(format!("subjectAltName: {e}")))?;
    let mut ips = Vec::new();
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::IPAddress(bytes) = name {
            match bytes.len() {
                4 => ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("length checked"))),
                16 => ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("length checked"))),
                n => return Err(malformed(format!("an IP subjectAltName of {n} bytes"))),
            }
        }
    }
    Ok(ips)
}

/// The end of validity (Unix seconds) of the certificate the peer of
/// `conn` presented, if it can be read.
pub fn peer_certificate_expiry(conn: &quinn::Connection) -> Option<i64> {
    let chain = peer_chain(conn).ok()?;
    certificate_serial_and_expiry(chain.first()?).ok().map(|(_, not_after)| not_after)
}

/// The certificate's serial number (big-endian bytes) and its end of
/// validity (Unix seconds).
pub fn certificate_serial_and_expiry(cert: &CertificateDer<'_>) -> Result<(Vec<u8>, i64), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::MalformedCertificate(e.to_string()))?;
    Ok((parsed.raw_serial().to_vec(), parsed.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn self_signed(sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().expect("ia5"))
    }

    #[test]
    fn reads_single_dns_name() {
        let cert = self_signed(vec![dns("alpha")]);
        assert_eq!(certificate_dns_names(&cert).expect("parse"), vec!["alpha"]);
        assert_eq!(node_id_from_cert(&cert).expect("id"), "alpha");
    }

    #[test]
    fn reads_dns_names_among_other_san_types() {
        let cert = self_signed(vec![
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            dns("one"),
            SanType::URI("https://x.example/".try_into().expect("ia5")),
            dns("two"),
        ]);
        assert_eq!(certificate_dns_names(&cert).expect("parse"), vec!["one", "two"]);
        assert!(matches!(node_id_from_cert(&cert), Err(TlsError::MultipleDnsNames(2))));
    }

    #[test]
    fn no_san_and_bad_node_id() {
        let cert = self_signed(vec![]);
        assert!(certificate_dns_names(&cert).expect("parse").is_empty());
        assert!(matches!(node_id_from_cert(&cert), Err(TlsError::NoDnsName)));

        let cert = self_signed(vec![dns("Not.A.Node")]);
        assert!(matches!(node_id_from_cert(&cert), Err(TlsError::InvalidNodeId { .. })));
    }

    #[test]
    fn truncated_certificates_error_without_panicking() {
        let cert = self_signed(vec![dns("alpha")]);
        let bytes = cert.as_ref();
        for len in 0..bytes.len() {
            let cut = CertificateDer::from(&bytes[..len]);
            assert!(certificate_dns_names(&cut).is_err(), "prefix {len} parsed");
        }
        let mut extended = bytes.to_vec();
        extended.push(0);
        assert!(certificate_dns_names(&CertificateDer::from(extended)).is_err());
    }

    #[test]
    fn garbled_certificates_never_panic() {
        let cert = self_signed(vec![dns("alpha"), dns("beta")]);
        let bytes = cert.as_ref();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut garbled = bytes.to_vec();
                garbled[i] ^= x;
                // Ok or Err are both acceptable; reaching here means no panic.
                let _ = certificate_dns_names(&CertificateDer::from(garbled));
            }
        }
    }

    #[test]
    fn expiry_is_warned_from_thirty_days() {
        let day = 24 * 60 * 60;
        assert_eq!(days_left(100 * day, 0), 100);
        assert_eq!(days_left(day - 1, 0), 0);
        assert_eq!(days_left(0, 1), -1);
        assert!(expiry_warning("a", 31 * day, 0).is_none());
        let w = expiry_warning("a", 29 * day + 5, 0).expect("due");
        assert!(w.contains("node a expires in 29 day(s)"), "{w}");
    }

    #[test]
    fn hand_made_malformed_inputs() {
        let inputs: &[&[u8]] = &[
            &[],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],                         // indefinite length
            &[0x30, 0x85, 1, 0, 0, 0, 0],                      // 5 length octets
            &[0x30, 0x81, 0x05, 0, 0, 0, 0, 0],                // non-minimal length
            &[0x30, 0x82, 0xff, 0xff, 0x30],                   // length beyond input
            &[0x1f, 0x01, 0x00],                               // high tag number
            &[0x04, 0x00],                                     // not a SEQUENCE
            &[0x30, 0x02, 0x04, 0x00],                         // TBS not a SEQUENCE
            &[0x30, 0x04, 0x30, 0x02, 0xa3, 0x00],             // empty [3]
            &[0x30, 0x06, 0x30, 0x04, 0xa3, 0x02, 0x04, 0x00], // Extensions not SEQUENCE
        ];
        for &input in inputs {
            assert!(certificate_dns_names(&CertificateDer::from(input)).is_err(), "{input:02x?} parsed");
        }
    }

    #[test]
    fn load_checks_identity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        certs::init(tmp.path(), &["alpha".into(), "beta".into()]).expect("init");
        certs::init(other.path(), &["alpha".into()]).expect("init other");
        let a = certs::paths(tmp.path(), "alpha");
        let b = certs::paths(tmp.path(), "beta");
        let foreign = certs::paths(other.path(), "alpha");

        let id = NodeIdentity::load("alpha", &a.cert, &a.key, &a.ca).expect("load");
        assert_eq!(id.node_id, "alpha");
        assert_eq!(id.cert_chain.len(), 1);
        assert!(!format!("{id:?}").contains("PRIVATE"));

        assert!(matches!(NodeIdentity::load("beta", &a.cert, &a.key, &a.ca), Err(TlsError::NodeIdMismatch { .. })));
        assert!(matches!(NodeIdentity::load("alpha", &a.cert, &b.key, &a.ca), Err(TlsError::KeyMismatch { .. })));
        assert!(matches!(
            NodeIdentity::load("alpha", &foreign.cert, &foreign.key, &a.ca),
            Err(TlsError::CertificateRejected { .. })
        ));
        assert!(matches!(
            NodeIdentity::load("alpha", &tmp.path().join("nope.pem"), &a.key, &a.ca),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(NodeIdentity::load("Alpha", &a.cert, &a.key, &a.ca), Err(TlsError::InvalidNodeId { .. })));

        server_config(&id).expect("server config");
        client_config(&id).expect("client config");
    }
}
