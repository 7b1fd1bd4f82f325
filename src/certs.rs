//! Cluster certificate tooling: the cluster CA and the per-node certificates
//! that nodes use for mutual TLS over QUIC.
//!
//! This module owns the on-disk layout of a certificate directory:
//!
//! * `ca.pem` / `ca.key` — the cluster CA certificate and its private key;
//! * `NODE.pem` / `NODE.key` — one node's certificate chain and private key.
//!
//! Invariants:
//!
//! * A CA is never overwritten, and neither is an existing node's cert or key:
//!   every file is created with `create_new`, so a race loses with an error
//!   instead of silently replacing key material.
//! * Private keys are created with mode 0600 from the start (never widened
//!   and later narrowed), certificates with 0644.
//! * A node id is a single lowercase DNS label (see [`validate_node_id`]). It is
//!   the certificate's only DNS subjectAltName and its CN, so the TLS layer can
//!   use it directly as the server name when dialing and as the authenticated
//!   identity of an accepted peer.
//! * Every node certificate carries both the ServerAuth and the ClientAuth
//!   extended key usage, because one UDP socket both accepts and dials.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::transport::tls;

/// File name of the cluster CA certificate inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key inside a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Maximum length of a node id: the DNS limit for one label.
pub const MAX_NODE_ID_LEN: usize = 63;

/// Prefix of the CA's common name; the rest is a fingerprint of the CA key
/// (see [`ca_params`]). `add` cannot parse the CA certificate (rcgen needs
/// `x509-parser` for that), so it rebuilds the issuer name from this prefix and
/// `ca.key`. Changing it would make `add` issue certificates whose issuer name
/// no longer matches existing CAs; the post-issue chain check would catch it.
const CA_COMMON_NAME_PREFIX: &str = "ferry cluster CA";

/// The CA's validity: ten years, counting two leap days.
const CA_VALIDITY: Duration = Duration::from_secs((10 * 365 + 2) * 24 * 60 * 60);

/// A node certificate's validity unless told otherwise: one year.
pub const DEFAULT_NODE_VALIDITY_DAYS: u32 = 365;

/// How node certificates are issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueOptions {
    /// Days from now until the certificate expires.
    pub validity_days: u32,
    /// IP addresses the node's REST API is reached at, written as IP
    /// subjectAltNames so an HTTPS client can verify `https://IP:port`.
    /// (The node id stays the certificate's only DNS name.)
    pub ips: Vec<std::net::IpAddr>,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions { validity_days: DEFAULT_NODE_VALIDITY_DAYS, ips: vec![] }
    }
}

impl IssueOptions {
    /// The options for a cluster on this machine: the API on loopback.
    pub fn loopback() -> IssueOptions {
        IssueOptions {
            ips: vec![std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()],
            ..Default::default()
        }
    }
}

/// Nodes' clocks are not perfectly in sync; a certificate that is "not yet
/// valid" on a peer a few seconds behind would fail the handshake right after
/// `init`.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// Modes for files written here. Keys are secret; certs are public.
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Errors from certificate generation and loading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The node id is not a valid single lowercase DNS label.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The rejected id.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The same node id was given more than once to `init`.
    #[error("node id {0:?} given more than once")]
    DuplicateNodeId(String),

    /// A CA already exists in the directory; it is never overwritten.
    #[error("a cluster CA already exists at {} (refusing to overwrite it)", path.display())]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },

    /// The CA needed by `add` is missing.
    #[error("no cluster CA found at {} (run init first)", path.display())]
    CaMissing {
        /// The missing CA file.
        path: PathBuf,
    },

    /// The CA files could not be used to issue certificates.
    #[error("cluster CA in {} is unusable: {reason}", dir.display())]
    CaUnusable {
        /// The certificate directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A node's certificate or key already exists; it is never overwritten.
    #[error("certificate material for node {node:?} already exists at {}", path.display())]
    NodeExists {
        /// The node id.
        node: String,
        /// The existing file.
        path: PathBuf,
    },

    /// `renew` was asked for a node that has no certificate in the folder.
    #[error("node {node:?} has no certificate at {} to renew (issue one with `ferry certs add`)", path.display())]
    NodeMissing {
        /// The node id.
        node: String,
        /// Where its certificate was looked for.
        path: PathBuf,
    },

    /// Filesystem error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where one node's TLS material lives inside a certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertPaths {
    /// The node's certificate chain (`NODE.pem`).
    pub cert: PathBuf,
    /// The node's private key (`NODE.key`).
    pub key: PathBuf,
    /// The cluster CA certificate (`ca.pem`).
    pub ca: PathBuf,
}

/// Paths of `node`'s certificate, key and the cluster CA inside `dir`.
///
/// Does not validate `node`; callers that take ids from outside should call
/// [`validate_node_id`] first so a hostile id cannot name a path like `../x`.
pub fn paths(dir: &Path, node: &str) -> NodeCertPaths {
    NodeCertPaths {
        cert: dir.join(format!("{node}.pem")),
        key: dir.join(format!("{node}.key")),
        ca: dir.join(CA_CERT_FILE),
    }
}

/// Why `id` is not an acceptable node id, or `None` if it is.
pub(crate) fn node_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("must not be empty");
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Some("must be at most 63 characters (one DNS label)");
    }
    if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("only lowercase ASCII letters, digits and '-' are allowed");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Some("must not start or end with '-'");
    }
    // `ca.pem`/`ca.key` are the CA's files, `crl.pem` the revocation list;
    // a node of either name would collide with them.
    if id == "ca" {
        return Some("\"ca\" is reserved for the cluster CA files");
    }
    if id == "crl" {
        return Some("\"crl\" is reserved for the revocation list (crl.pem)");
    }
    None
}

/// Check that `id` is a valid node id: a non-empty lowercase DNS label of at
/// most 63 characters (`a-z`, `0-9`, `-`, not starting or ending with `-`),
/// other than the reserved `ca` and `crl`.
pub fn validate_node_id(id: &str) -> Result<(), CertError> {
    match node_id_problem(id) {
        None => Ok(()),
        Some(reason) => Err(CertError::InvalidNodeId { id: id.to_owned(), reason }),
    }
}

/// Create a new cluster CA in `dir` (created if needed) and issue a
/// certificate and key for each of `nodes`.
///
/// Refuses, before writing anything, if a CA already exists in `dir`, if any
/// node id is invalid or repeated, or if any node's files already exist.
pub fn init(dir: &Path, nodes: &[String]) -> Result<(), CertError> {
    init_with(dir, nodes, &IssueOptions::default())
}

/// [`init`] with the node certificates issued per `options`.
pub fn init_with(dir: &Path, nodes: &[String], options: &IssueOptions) -> Result<(), CertError> {
    let mut seen = HashSet::new();
    for node in nodes {
        validate_node_id(node)?;
        if !seen.insert(node.as_str()) {
            return Err(CertError::DuplicateNodeId(node.clone()));
        }
    }
    for path in [dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE)] {
        if exists(&path)? {
            return Err(CertError::CaExists { path });
        }
    }
    for node in nodes {
        ensure_node_absent(dir, node)?;
    }

    fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_owned(), source })?;

    let ca_key = KeyPair::generate()?;
    let ca = CertifiedIssuer::self_signed(ca_params(&ca_key), ca_key)?;
    // Key first: if the cert write then fails, the leftover key still blocks a
    // second `init` from silently minting a different CA over it.
    write_new(&dir.join(CA_KEY_FILE), ca.key().serialize_pem(), KEY_MODE)?;
    write_new(&dir.join(CA_CERT_FILE), ca.pem(), CERT_MODE)?;

    for node in nodes {
        issue_node(dir, node, &ca, options)?;
    }
    Ok(())
}

/// Issue a certificate and key for one more node, signed by the CA in `dir`.
///
/// Refuses if the node id is invalid, if the node's files already exist, or if
/// the CA in `dir` is missing or was not made by [`init`].
pub fn add(dir: &Path, node: &str) -> Result<(), CertError> {
    add_with(dir, node, &IssueOptions::default())
}

/// [`add`] with the certificate issued per `options`.
pub fn add_with(dir: &Path, node: &str, options: &IssueOptions) -> Result<(), CertError> {
    validate_node_id(node)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    for path in [&ca_cert_path, &ca_key_path] {
        if !exists(path)? {
            return Err(CertError::CaMissing { path: path.to_path_buf() });
        }
    }
    ensure_node_absent(dir, node)?;

    let unusable = |reason: String| CertError::CaUnusable { dir: dir.to_owned(), reason };
    let ca_key_pem =
        fs::read_to_string(&ca_key_path).map_err(|source| CertError::Io { path: ca_key_path.clone(), source })?;
    let ca_key =
        KeyPair::from_pem(&ca_key_pem).map_err(|e| unusable(format!("cannot parse {}: {e}", ca_key_path.display())))?;
    let ca_cert = CertificateDer::from_pem_file(&ca_cert_path)
        .map_err(|e| unusable(format!("cannot parse {}: {e}", ca_cert_path.display())))?;
    let issuer = Issuer::new(ca_params(&ca_key), ca_key);

    // The issuer was rebuilt rather than parsed from ca.pem, so prove the
    // result chains to the real ca.pem before writing anything: this catches a
    // ca.key that does not belong to ca.pem, or a CA not made by `init`.
    let (cert_pem, key_pem, cert_der) = make_node_cert(node, &issuer, options)?;
    tls::verify_node_certificate(&ca_cert, &[cert_der], node)
        .map_err(|e| unusable(format!("a certificate issued with ca.key does not verify against ca.pem ({e})")))?;

    write_node(dir, node, &cert_pem, &key_pem)
}

/// What [`renew`] replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The serial number of the certificate replaced (lowercase hex).
    pub old_serial: String,
    /// The new certificate.
    pub new: tls::CertificateInfo,
    /// The IP subjectAltNames of the new certificate.
    pub ips: Vec<std::net::IpAddr>,
}

/// Issues `node` a new key and certificate with the CA in `dir`, valid for
/// `options.validity_days` from now, and puts them in place of the old ones.
/// Without `options.ips` the old certificate's IP addresses are kept.
///
/// The old certificate is not revoked: it stays valid until it expires
/// (revoke it with [`revoke`] if its key may be compromised). A running
/// node whose config names these files switches to them without a restart
/// (see `transport::reload`).
///
/// Order: both new files are written and fsynced under temporary names,
/// then the key and the certificate are renamed over the old ones and the
/// folder is fsynced. A crash between the two renames leaves the new key
/// beside the old certificate, which a node refuses to load ("does not
/// match"); running `renew` again repairs it.
pub fn renew(dir: &Path, node: &str, options: &IssueOptions) -> Result<Renewed, CertError> {
    validate_node_id(node)?;
    let p = paths(dir, node);
    if !exists(&p.cert)? {
        return Err(CertError::NodeMissing { node: node.to_owned(), path: p.cert });
    }
    let unusable = |reason: String| CertError::CaUnusable { dir: dir.to_owned(), reason };
    let old = CertificateDer::from_pem_file(&p.cert)
        .map_err(|e| unusable(format!("cannot read {}: {e}", p.cert.display())))?;
    let old_serial = tls::CertificateInfo::of(&old).map_err(|e| unusable(e.to_string()))?.serial;
    let mut options = options.clone();
    if options.ips.is_empty() {
        options.ips = tls::certificate_ip_addresses(&old).map_err(|e| unusable(e.to_string()))?;
    }
    let issuer = load_issuer(dir)?;
    let ca_cert =
        CertificateDer::from_pem_file(&p.ca).map_err(|e| unusable(format!("cannot parse {}: {e}", p.ca.display())))?;
    let (cert_pem, key_pem, cert_der) = make_node_cert(node, &issuer, &options)?;
    tls::verify_node_certificate(&ca_cert, std::slice::from_ref(&cert_der), node)
        .map_err(|e| unusable(format!("a certificate issued with ca.key does not verify against ca.pem ({e})")))?;
    let new = tls::CertificateInfo::of(&cert_der).map_err(|e| unusable(e.to_string()))?;

    let key_tmp = temporary(&p.key);
    let cert_tmp = temporary(&p.cert);
    for tmp in [&key_tmp, &cert_tmp] {
        let _ = fs::remove_file(tmp);
    }
    write_new(&key_tmp, key_pem, KEY_MODE)?;
    write_new(&cert_tmp, cert_pem, CERT_MODE)?;
    fs::rename(&key_tmp, &p.key).map_err(|source| CertError::Io { path: p.key.clone(), source })?;
    fs::rename(&cert_tmp, &p.cert).map_err(|source| CertError::Io { path: p.cert.clone(), source })?;
    sync_dir(dir)?;
    Ok(Renewed { old_serial, new, ips: options.ips })
}

/// File name of the certificate revocation list (PEM, signed by the CA).
pub const CRL_FILE: &str = "crl.pem";
/// The revoked certificates, one per line: `SERIAL_HEX UNIX_SECS NODE`;
/// `crl.pem` is rebuilt from it at each revocation.
pub const REVOKED_FILE: &str = "revoked.txt";

/// Revokes `node`'s current certificate: adds it to `revoked.txt` and
/// writes a new `crl.pem` signed by the CA (written to a temporary name,
/// then renamed, so a node never reads half a list). Nodes whose config
/// names the list (`[tls] crl`) refuse that certificate at every handshake
/// once they read the list again: at start, on SIGHUP, or about a second
/// after the file changes (see `transport::reload`). Returns the list's path.
pub fn revoke(dir: &Path, node: &str) -> Result<PathBuf, CertError> {
    validate_node_id(node)?;
    let issuer = load_issuer(dir)?;
    let cert_path = paths(dir, node).cert;
    let unusable = |reason: String| CertError::CaUnusable { dir: dir.to_owned(), reason };
    let cert = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| unusable(format!("cannot read {}: {e}", cert_path.display())))?;
    let (serial, _) = tls::certificate_serial_and_expiry(&cert).map_err(|e| unusable(e.to_string()))?;
    let serial_hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let revoked_path = dir.join(REVOKED_FILE);
    let mut listed = match fs::read_to_string(&revoked_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CertError::Io { path: revoked_path, source }),
    };
    if !listed.lines().any(|l| l.split_whitespace().next() == Some(serial_hex.as_str())) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        listed.push_str(&format!("{serial_hex} {now} {node}\n"));
    }
    let mut revoked = Vec::new();
    for line in listed.lines() {
        let mut parts = line.split_whitespace();
        let (Some(hex), Some(at)) = (parts.next(), parts.next()) else { continue };
        let bytes: Option<Vec<u8>> =
            (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
        let at: u64 = at.parse().map_err(|_| unusable(format!("{}: bad line {line:?}", revoked_path.display())))?;
        let bytes = bytes.ok_or_else(|| unusable(format!("{}: bad line {line:?}", revoked_path.display())))?;
        revoked.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&bytes),
            revocation_time: (SystemTime::UNIX_EPOCH + Duration::from_secs(at)).into(),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let now = SystemTime::now();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now.checked_sub(BACKDATE).unwrap_or(now).into(),
        next_update: (now + CA_VALIDITY).into(),
        crl_number: rcgen::SerialNumber::from(now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)?;
    let crl_path = dir.join(CRL_FILE);
    replace_file(&crl_path, crl.pem()?.as_bytes(), CERT_MODE)?;
    replace_file(&revoked_path, listed.as_bytes(), CERT_MODE)?;
    Ok(crl_path)
}

/// The CA as an issuer, rebuilt from `ca.key` (see [`ca_params`]).
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let ca_key_path = dir.join(CA_KEY_FILE);
    if !exists(&ca_key_path)? {
        return Err(CertError::CaMissing { path: ca_key_path });
    }
    let ca_key_pem =
        fs::read_to_string(&ca_key_path).map_err(|source| CertError::Io { path: ca_key_path.clone(), source })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| CertError::CaUnusable {
        dir: dir.to_owned(),
        reason: format!("cannot parse {}: {e}", ca_key_path.display()),
    })?;
    Ok(Issuer::new(ca_params(&ca_key), ca_key))
}

/// Writes `contents` to `path` through a temporary file, a rename and an
/// fsync of the folder.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = temporary(path);
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| CertError::Io { path: path.to_owned(), source })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The temporary name `path` is written under before it is renamed.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| CertError::Io { path: dir.to_owned(), source })
}

/// CA parameters for `key`. `add` depends on these being reproducible from
/// the key alone; only the validity window may vary between calls because it
/// is not part of the issuer identity.
///
/// The CN embeds a fingerprint of the CA public key so that CAs of different
/// clusters have different names: a certificate from a foreign cluster then
/// fails as "unknown issuer" instead of as a confusing bad signature, and a
/// `ca.key` that does not belong to `ca.pem` is detected by name alone.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let fingerprint = blake3::hash(key.public_key_raw());
    let short: String = fingerprint.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{CA_COMMON_NAME_PREFIX} {short}"));
    params.distinguished_name = dn;
    // Path length 0: the CA signs node certs directly, never sub-CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY);
    params
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = (now + validity).into();
}

/// Generate a node key and a certificate for it signed by `issuer`.
/// Returns (cert PEM, key PEM, cert DER).
fn make_node_cert(
    node: &str,
    issuer: &Issuer<'_, KeyPair>,
    options: &IssueOptions,
) -> Result<(String, String, CertificateDer<'static>), CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    // Built explicitly rather than via `CertificateParams::new`, which would
    // turn anything that parses as an IP address into an IP SAN.
    params.subject_alt_names = vec![SanType::DnsName(node.try_into()?)];
    params.subject_alt_names.extend(options.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, Duration::from_secs(u64::from(options.validity_days.max(1)) * 24 * 60 * 60));

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().clone()))
}

fn issue_node(dir: &Path, node: &str, issuer: &Issuer<'_, KeyPair>, options: &IssueOptions) -> Result<(), CertError> {
    let (cert_pem, key_pem, _) = make_node_cert(node, issuer, options)?;
    write_node(dir, node, &cert_pem, &key_pem)
}

fn write_node(dir: &Path, node: &str, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
    let p = paths(dir, node);
    write_new(&p.key, key_pem, KEY_MODE)?;
    write_new(&p.cert, cert_pem, CERT_MODE)
}

fn ensure_node_absent(dir: &Path, node: &str) -> Result<(), CertError> {
    let p = paths(dir, node);
    for path in [p.cert, p.key] {
        if exists(&path)? {
            return Err(CertError::NodeExists { node: node.to_owned(), path });
        }
    }
    Ok(())
}

/// Like `Path::exists`, but a permission error is reported instead of being
/// mistaken for "absent".
fn exists(path: &Path) -> Result<bool, CertError> {
    path.try_exists().map_err(|source| CertError::Io { path: path.to_owned(), source })
}

/// Create `path` (failing if it exists) with `mode` and write `contents`.
fn write_new(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<(), CertError> {
    let io_err = |source| CertError::Io { path: path.to_owned(), source };
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(source.kind(), "already exists (refusing to overwrite)"),
                }
            } else {
                io_err(source)
            }
        })?;
    file.write_all(contents.as_ref()).map_err(io_err)?;
    // Key material that vanishes on a crash right after `init` would strand
    // the certs already handed out.
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn nodes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn init_writes_files_with_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("certs");
        init(&dir, &nodes(&["alpha", "beta"])).expect("init");

        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        // Certs are requested as 0644; a restrictive umask can only narrow.
        assert_eq!(mode(&dir.join("ca.pem")) & !0o644, 0);
        for node in ["alpha", "beta"] {
            let p = paths(&dir, node);
            assert_eq!(mode(&p.key), 0o600, "{node} key mode");
            assert_eq!(mode(&p.cert) & !0o644, 0, "{node} cert mode");
            assert_eq!(p.ca, dir.join("ca.pem"));
        }
    }

    #[test]
    fn node_cert_dns_name_is_node_id_and_verifies() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &nodes(&["node-1"])).expect("init");
        let p = paths(tmp.path(), "node-1");
        let cert = CertificateDer::from_pem_file(&p.cert).expect("cert pem");
        let ca = CertificateDer::from_pem_file(&p.ca).expect("ca pem");

        assert_eq!(tls::certificate_dns_names(&cert).expect("parse"), vec!["node-1".to_string()]);
        tls::verify_node_certificate(&ca, std::slice::from_ref(&cert), "node-1").expect("chain");
        assert!(tls::verify_node_certificate(&ca, &[cert], "node-2").is_err());
    }

    #[test]
    fn add_issues_verifiable_cert() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &nodes(&["alpha"])).expect("init");
        add(tmp.path(), "gamma").expect("add");

        let p = paths(tmp.path(), "gamma");
        assert_eq!(mode(&p.key), 0o600);
        let cert = CertificateDer::from_pem_file(&p.cert).expect("cert pem");
        let ca = CertificateDer::from_pem_file(&p.ca).expect("ca pem");
        tls::verify_node_certificate(&ca, &[cert], "gamma").expect("chain");

        // The same node again must not overwrite its key.
        assert!(matches!(add(tmp.path(), "gamma"), Err(CertError::NodeExists { .. })));
        assert!(matches!(add(tmp.path(), "alpha"), Err(CertError::NodeExists { .. })));
    }

    #[test]
    fn add_without_ca_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(matches!(add(tmp.path(), "alpha"), Err(CertError::CaMissing { .. })));
    }

    #[test]
    fn add_with_mismatched_ca_key_refused() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        init(one.path(), &[]).expect("init one");
        init(two.path(), &[]).expect("init two");
        fs::copy(two.path().join("ca.key"), one.path().join("other.key")).expect("copy");
        fs::remove_file(one.path().join("ca.key")).expect("rm");
        fs::rename(one.path().join("other.key"), one.path().join("ca.key")).expect("mv");

        assert!(matches!(add(one.path(), "alpha"), Err(CertError::CaUnusable { .. })));
        assert!(!paths(one.path(), "alpha").key.exists());
    }

    #[test]
    fn bad_ids_refused() {
        let too_long = "a".repeat(64);
        for bad in ["", "-a", "a-", "Alpha", "a.b", "a_b", "a/b", "..", "é", "ca", "crl", too_long.as_str()] {
            assert!(matches!(validate_node_id(bad), Err(CertError::InvalidNodeId { .. })), "{bad:?} accepted");
        }
        for good in ["a", "0", "node-1", "a-b-c", &"a".repeat(63)] {
            validate_node_id(good).expect(good);
        }

        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(matches!(init(tmp.path(), &nodes(&["ok", "Not-Ok"])), Err(CertError::InvalidNodeId { .. })));
        // Nothing written when validation fails.
        assert!(!tmp.path().join("ca.pem").exists());
        assert!(matches!(init(tmp.path(), &nodes(&["x", "x"])), Err(CertError::DuplicateNodeId(_))));
        init(tmp.path(), &nodes(&["ok"])).expect("init");
        assert!(matches!(add(tmp.path(), "bad_id"), Err(CertError::InvalidNodeId { .. })));
    }

    #[test]
    fn an_expired_node_certificate_is_rejected_and_says_so() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &nodes(&["alpha"])).expect("init");
        let issuer = load_issuer(tmp.path()).expect("issuer");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName("alpha".try_into().expect("name"))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(10 * 86_400)).into();
        params.not_after = (now - Duration::from_secs(86_400)).into();
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        let ca = CertificateDer::from_pem_file(tmp.path().join(CA_CERT_FILE)).expect("ca");
        let err = tls::verify_node_certificate(&ca, &[cert.der().clone()], "alpha").expect_err("expired");
        assert!(err.to_string().contains("certificate expired"), "{err}");
        // x509-parser reads the same end of validity: negative days left.
        let (_, not_after) = tls::certificate_serial_and_expiry(cert.der()).expect("parsed");
        assert!(
            tls::days_left(not_after, now.duration_since(SystemTime::UNIX_EPOCH).expect("now").as_secs() as i64) < 0
        );
    }

    #[test]
    fn revoking_lists_each_certificate_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &nodes(&["alpha", "beta"])).expect("init");
        revoke(tmp.path(), "alpha").expect("revoke");
        revoke(tmp.path(), "alpha").expect("again");
        revoke(tmp.path(), "beta").expect("beta");
        let listed = fs::read_to_string(tmp.path().join(REVOKED_FILE)).expect("list");
        assert_eq!(listed.lines().count(), 2, "{listed}");
        assert!(fs::read_to_string(tmp.path().join(CRL_FILE)).expect("crl").contains("BEGIN X509 CRL"));
        assert!(matches!(revoke(tmp.path(), "gamma"), Err(CertError::CaUnusable { .. })), "no such node");
    }

    #[test]
    fn init_twice_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &nodes(&["alpha"])).expect("init");
        let before = fs::read(tmp.path().join("ca.key")).expect("read");
        assert!(matches!(init(tmp.path(), &nodes(&["beta"])), Err(CertError::CaExists { .. })));
        assert_eq!(fs::read(tmp.path().join("ca.key")).expect("read"), before);
        assert!(!paths(tmp.path(), "beta").cert.exists());
    }

    #[test]
    fn renew_replaces_key_and_certificate_and_keeps_the_addresses() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ip: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
        init_with(tmp.path(), &nodes(&["a"]), &IssueOptions { validity_days: 365, ips: vec![ip] }).expect("init");
        let p = paths(tmp.path(), "a");
        let (old_cert, old_key) = (fs::read(&p.cert).expect("cert"), fs::read(&p.key).expect("key"));

        let renewed = renew(tmp.path(), "a", &IssueOptions { validity_days: 30, ips: vec![] }).expect("renewed");
        assert_ne!(fs::read(&p.cert).expect("cert"), old_cert);
        assert_ne!(fs::read(&p.key).expect("key"), old_key, "a renewal rotates the key");
        assert_ne!(renewed.old_serial, renewed.new.serial);
        assert_eq!(renewed.ips, vec![ip], "the addresses are kept");
        let now = crate::transport::reload::unix_now();
        assert!((29..=30).contains(&tls::days_left(renewed.new.not_after, now)), "{renewed:?}");
        // The pair loads as a node identity: it chains to the CA and the key matches.
        let id = tls::NodeIdentity::load("a", &p.cert, &p.key, &p.ca).expect("renewed identity loads");
        assert_eq!(tls::certificate_ip_addresses(&id.cert_chain[0]).expect("ips"), vec![ip]);
        assert_eq!(mode(&p.key), 0o600);
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let other: std::net::IpAddr = "10.9.9.9".parse().expect("ip");
        let renewed = renew(tmp.path(), "a", &IssueOptions { validity_days: 30, ips: vec![other] }).expect("renewed");
        assert_eq!(renewed.ips, vec![other], "--ip replaces the addresses");

        let err = renew(tmp.path(), "b", &IssueOptions::default()).expect_err("no such node");
        assert!(matches!(err, CertError::NodeMissing { .. }), "{err}");
        assert!(err.to_string().contains("ferry certs add"), "{err}");
    }
}
