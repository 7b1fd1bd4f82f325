//! The node's tokens: made, listed and revoked through the API, checked on
//! every API request.
//!
//! The records live in the store's `tokens` tree; the book keeps them in
//! memory by key id as well, so a check costs one map lookup and one BLAKE3
//! hash. A change is written and flushed before the book (and so any
//! request) sees it: a token revoked and acknowledged stays revoked after a
//! crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::rand::{SecureRandom, SystemRandom};

use super::Caller;
use crate::store::{now_ms, Store, StoreError, TokenRecord, TokenRole};

/// The file in the data folder where a node writes its first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

const PREFIX: &str = "ferry_";
const KEY_ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
/// The name of the token a node makes when its store holds none.
const FIRST_ADMIN: &str = "admin";

/// Why a token was refused, or a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("no API token: send `Authorization: Bearer <token>` (the CLI reads --token-file, then FERRY_TOKEN, then the access file `ferry cluster up` writes)")]
    Missing,
    #[error("the Authorization header is not `Bearer <ferry token>`")]
    Malformed,
    #[error("the API token is not known to this node")]
    Unknown,
    #[error("the API token {0:?} was revoked")]
    Revoked(String),
    #[error("invalid token name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("a token named {0:?} exists; revoke it first or choose another name")]
    Exists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error("the operating system's random source failed")]
    Random,
    #[error("cannot write the admin token file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// Whether this refuses the caller's credentials (HTTP 401).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, TokenError::Missing | TokenError::Malformed | TokenError::Unknown | TokenError::Revoked(_))
    }
}

/// The node's tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenBook {
    store: Store,
    by_key: Arc<RwLock<HashMap<String, Arc<TokenRecord>>>>,
}

impl std::fmt::Debug for TokenBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBook").finish_non_exhaustive()
    }
}

impl TokenBook {
    /// Loads every token the store holds.
    pub fn open(store: Store) -> Result<TokenBook, TokenError> {
        let by_key = store.tokens()?.into_iter().map(|t| (t.key_id.clone(), Arc::new(t))).collect();
        Ok(TokenBook { store, by_key: Arc::new(RwLock::new(by_key)) })
    }

    /// Makes the first admin token when the store holds no token at all,
    /// and writes it to `data_dir/admin.token` (mode 0600). Returns the
    /// file's path when it made one.
    ///
    /// Order: the file is written (to a temporary name, fsynced, renamed)
    /// before the record is stored and flushed. A crash in between leaves a
    /// file whose token the store does not know, and no token: the next
    /// start makes another and replaces the file.
    pub async fn bootstrap(&self, data_dir: &Path) -> Result<Option<PathBuf>, TokenError> {
        if !self.store.tokens()?.is_empty() {
            return Ok(None);
        }
        let (record, token) = new_token(FIRST_ADMIN, TokenRole::Admin, vec![], vec![])?;
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        write_secret_file(&path, &token)
            .map_err(|source| TokenError::File { path: path.display().to_string(), source })?;
        self.store_and_remember(record).await?;
        Ok(Some(path))
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, TokenError> {
        let header = header.ok_or(TokenError::Missing)?;
        let token = header.strip_prefix("Bearer ").ok_or(TokenError::Malformed)?.trim();
        let (key_id, secret) = split_token(token).ok_or(TokenError::Malformed)?;
        let found = self.by_key.read().expect("token map lock is never poisoned").get(key_id).cloned();
        let presented = blake3::hash(secret.as_bytes());
        // The comparison of blake3::Hash values runs in constant time; an
        // unknown key id is compared against zeros so it costs the same.
        let stored = blake3::Hash::from_bytes(found.as_ref().map_or([0; 32], |t| t.hash));
        let matches = presented == stored;
        match found {
            Some(t) if matches => match t.revoked_at {
                Some(_) => Err(TokenError::Revoked(t.name.clone())),
                None => Ok(Caller(t)),
            },
            _ => Err(TokenError::Unknown),
        }
    }

    /// Whether `caller`'s token is still valid (not revoked since the
    /// caller was let in): long answers, such as event streams, ask again.
    pub fn still_valid(&self, caller: &Caller) -> bool {
        let map = self.by_key.read().expect("token map lock is never poisoned");
        map.get(&caller.0.key_id).is_some_and(|t| t.revoked_at.is_none() && t.hash == caller.0.hash)
    }

    /// Makes a token; returns its record and the token itself, which is
    /// not kept anywhere and cannot be shown again.
    pub async fn create(
        &self,
        name: &str,
        role: TokenRole,
        rules: Vec<String>,
        partners: Vec<String>,
    ) -> Result<(TokenRecord, String), TokenError> {
        check_name(name)?;
        if self.store.tokens()?.iter().any(|t| t.name == name && t.revoked_at.is_none()) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        let (record, token) = new_token(name, role, rules, partners)?;
        self.store_and_remember(record.clone()).await?;
        Ok((record, token))
    }

    /// Every token, revoked ones included, by name.
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        Ok(self.store.tokens()?)
    }

    /// Revokes the token `name`: refused from the moment this returns.
    pub async fn revoke(&self, name: &str) -> Result<TokenRecord, TokenError> {
        let mut record = self
            .store
            .tokens()?
            .into_iter()
            .find(|t| t.name == name && t.revoked_at.is_none())
            .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
        record.revoked_at = Some(now_ms());
        self.store_and_remember(record.clone()).await?;
        Ok(record)
    }

    async fn store_and_remember(&self, record: TokenRecord) -> Result<(), TokenError> {
        self.store.put_token(&record)?;
        self.store.flush().await?;
        let mut map = self.by_key.write().expect("token map lock is never poisoned");
        // A name made again after a revocation: the old key stays, revoked.
        map.insert(record.key_id.clone(), Arc::new(record));
        Ok(())
    }
}

/// Reads a token from a file (surrounding whitespace ignored).
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match ok {
        true => Ok(()),
        false => Err(TokenError::BadName(name.to_owned())),
    }
}

fn new_token(
    name: &str,
    role: TokenRole,
    rules: Vec<String>,
    partners: Vec<String>,
) -> Result<(TokenRecord, String), TokenError> {
    let rng = SystemRandom::new();
    let mut key = [0u8; KEY_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut key).map_err(|_| TokenError::Random)?;
    rng.fill(&mut secret).map_err(|_| TokenError::Random)?;
    let key_id = hex(&key);
    let secret = hex(&secret);
    let record = TokenRecord {
        name: name.to_owned(),
        role,
        rules,
        partners,
        key_id: key_id.clone(),
        hash: *blake3::hash(secret.as_bytes()).as_bytes(),
        created_at: now_ms(),
        revoked_at: None,
    };
    Ok((record, format!("{PREFIX}{key_id}_{secret}")))
}

/// `ferry_<key id>_<secret>` → (key id, secret), when well formed.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(key_id, KEY_ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some((key_id, secret))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` readable by the owner only, replacing `path` atomically.
fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn book() -> (tempfile::TempDir, TokenBook) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        (dir, TokenBook::open(store).expect("book"))
    }

    #[tokio::test]
    async fn a_node_makes_its_first_admin_token_once() {
        let (dir, book) = book().await;
        let path = book.bootstrap(dir.path()).await.expect("bootstrap").expect("made one");
        let token = read_token_file(&path).expect("read");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let caller = book.authenticate(Some(&format!("Bearer {token}"))).expect("accepted");
        assert_eq!((caller.name(), caller.role()), ("admin", TokenRole::Admin));
        assert!(book.bootstrap(dir.path()).await.expect("again").is_none(), "only when there is none");
        let stored = book.list().expect("list");
        assert!(!stored.iter().any(|t| format!("{t:?}").contains(&token[19..])), "the secret is not stored");
    }

    #[tokio::test]
    async fn tokens_are_checked_and_revoked() {
        let (_dir, book) = book().await;
        let (_, token) = book.create("sched", TokenRole::Operator, vec!["payroll".into()], vec![]).await.expect("made");
        let header = format!("Bearer {token}");
        let caller = book.authenticate(Some(&header)).expect("accepted");
        assert_eq!(caller.0.rules, ["payroll"]);
        assert!(matches!(book.authenticate(None), Err(TokenError::Missing)));
        assert!(matches!(book.authenticate(Some(&token)), Err(TokenError::Malformed)), "no Bearer");
        let mut wrong = token.clone();
        let last = wrong.pop().expect("char");
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(book.authenticate(Some(&format!("Bearer {wrong}"))), Err(TokenError::Unknown)));
        assert!(matches!(book.create("sched", TokenRole::Viewer, vec![], vec![]).await, Err(TokenError::Exists(_))));
        assert!(matches!(
            book.create("bad name", TokenRole::Viewer, vec![], vec![]).await,
            Err(TokenError::BadName(_))
        ));
        book.revoke("sched").await.expect("revoked");
        assert!(matches!(book.authenticate(Some(&header)), Err(TokenError::Revoked(n)) if n == "sched"));
        assert!(matches!(book.revoke("sched").await, Err(TokenError::NotFound(_))));
        // The name can be used again; the old token stays refused.
        let (_, again) = book.create("sched", TokenRole::Viewer, vec![], vec![]).await.expect("made again");
        assert!(book.authenticate(Some(&format!("Bearer {again}"))).is_ok());
        assert!(book.authenticate(Some(&header)).is_err());
    }

    #[tokio::test]
    async fn a_revocation_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = {
            let book = TokenBook::open(Store::open(&dir.path().join("s")).expect("store")).expect("book");
            let (_, token) = book.create("x", TokenRole::Viewer, vec![], vec![]).await.expect("made");
            book.revoke("x").await.expect("revoked");
            token
        };
        let book = TokenBook::open(Store::open(&dir.path().join("s")).expect("store")).expect("book");
        assert!(matches!(book.authenticate(Some(&format!("Bearer {token}"))), Err(TokenError::Revoked(_))));
    }
}
