//! How the command line finds the token and the cluster CA for a node's API.
//!
//! Token: `--token-file FILE`, else `$FERRY_TOKEN`, else the access file
//! of that API address. CA: `--ca FILE`, else `$FERRY_CA`, else the access
//! file. Access files are written by `ferry cluster up` (one per node) to
//! `.ferry/access/` under the current folder, or to `$FERRY_ACCESS_DIR`:
//!
//! ```toml
//! api = "https://127.0.0.1:8301"
//! ca = "/home/me/ferry/.ferry/local-3/certs/ca.pem"
//! token_file = "/home/me/ferry/.ferry/local-3/a/data/admin.token"
//! ```
//!
//! They name files; they hold no secret themselves.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry::api::Access;
use serde::{Deserialize, Serialize};

/// The folder of access files, relative to the current folder.
pub const ACCESS_DIR: &str = ".ferry/access";

/// One node's access file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    pub api: String,
    pub ca: PathBuf,
    pub token_file: PathBuf,
}

fn access_dir() -> PathBuf {
    match std::env::var_os("FERRY_ACCESS_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(ACCESS_DIR),
    }
}

/// The access file's path for a normalised base (`https://127.0.0.1:8301`
/// → `127.0.0.1_8301.toml`).
pub fn access_path(base: &str) -> PathBuf {
    let authority = base.split_once("://").map_or(base, |(_, a)| a);
    let name: String = authority.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    access_dir().join(format!("{name}.toml"))
}

/// Writes the access file for `file.api`.
pub fn write(file: &AccessFile) -> anyhow::Result<PathBuf> {
    let path = access_path(&file.api);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(file).context("access file")?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn read_file(base: &str) -> anyhow::Result<Option<AccessFile>> {
    let path = access_path(base);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(toml::from_str(&text).with_context(|| format!("access file {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_token(path: &Path, from: &str) -> anyhow::Result<String> {
    let token = ferry::auth::read_token_file(path)
        .with_context(|| format!("cannot read the API token file {} ({from})", path.display()))?;
    anyhow::ensure!(!token.is_empty(), "the API token file {} ({from}) is empty", path.display());
    Ok(token)
}

/// The token and CA for the API at `base` (normalised).
pub fn resolve(base: &str, token_file: Option<&Path>, ca: Option<&Path>) -> anyhow::Result<Access> {
    let file = read_file(base)?;
    let token = match (token_file, env("FERRY_TOKEN"), &file) {
        (Some(path), _, _) => Some(read_token(path, "--token-file")?),
        (None, Some(token), _) => Some(token.trim().to_owned()),
        (None, None, Some(f)) => Some(read_token(&f.token_file, &format!("from {}", access_path(base).display()))?),
        (None, None, None) => None,
    };
    let ca_path = match (ca, env("FERRY_CA"), &file) {
        (Some(path), _, _) => Some((path.to_path_buf(), "--ca")),
        (None, Some(path), _) => Some((PathBuf::from(path), "FERRY_CA")),
        (None, None, Some(f)) => Some((f.ca.clone(), "the access file")),
        (None, None, None) => None,
    };
    let ca_pem = match ca_path {
        Some((path, from)) => Some(
            std::fs::read(&path).with_context(|| format!("cannot read the cluster CA {} ({from})", path.display()))?,
        ),
        None => None,
    };
    Ok(Access { token, ca_pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_files_are_named_by_host_and_port() {
        std::env::remove_var("FERRY_ACCESS_DIR");
        assert_eq!(access_path("https://127.0.0.1:8301"), PathBuf::from(".ferry/access/127.0.0.1_8301.toml"));
        assert_eq!(access_path("https://[::1]:8301"), PathBuf::from(".ferry/access/___1__8301.toml"));
    }
}
