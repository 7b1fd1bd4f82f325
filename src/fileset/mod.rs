//! File sets: what a pattern names below a rule's send folder.
//!
//! A request may name a pattern instead of one file. The sender resolves it
//! ([`resolve`]) into a sorted list of [`Entry`]s (relative path, kind,
//! size, modification time) that is persisted before the first byte is
//! sent, so a restarted set sends exactly what it resolved. This module
//! only reads the file system; it never writes.
//!
//! Patterns:
//! - a glob relative to the folder (`*.csv`, `2026-11-??/*.xml`,
//!   `daily/**`): `*` and `?` stay within one path component, `**` spans
//!   any number, `[abc]` and `{a,b}` as usual (globset);
//! - a name without glob characters: that file, or that folder's whole tree.
//!
//! Paths keep their place below the folder (`daily/x/y.csv` arrives as
//! `daily/x/y.csv`), and every folder of a tree is listed, so empty
//! folders arrive too.
//!
//! The path rule ([`check_pattern`], and
//! [`check_relative_path`](crate::protocol::names::check_relative_path) for
//! every path a partner sends): relative, components joined by `/`, none
//! empty, `.`, `..`, starting with `.ferry` (the node's work folders), or
//! holding a backslash or NUL. The node's own `.ferry*` folders are never
//! listed.
//!
//! Symbolic links are never followed, as for one file (a send folder's link
//! is refused for a push and a pull alike): a link among the entries, to a
//! file or a folder, inside the folder or out of it, makes the whole set
//! fail with [`ResolveError::Link`] naming the link and where it leads, and
//! nothing is sent. Following links inside the folder would make what is
//! sent depend on links that can change between resolution and sending, and
//! a link to a folder would list a tree twice or loop.

pub mod progress;

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::GlobBuilder;

use crate::protocol::names::{check_file_name, RESERVED_PREFIX};

/// Most entries one set may hold unless told otherwise.
pub const MAX_ENTRIES: usize = 1_000_000;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    File,
    Folder,
}

/// One file or folder of a set, as resolved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Below the rule's folder, components joined by `/`.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes (0 for a folder).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 if unknown).
    pub modified_ns: u128,
}

/// Why a pattern could not be resolved. Nothing is sent when it fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The pattern breaks the path rule or is not a valid glob.
    #[error("pattern {pattern:?}: {why}")]
    BadPattern { pattern: String, why: String },
    /// A symbolic link among the entries (links are never followed).
    #[error("symbolic link {path:?} {why}; the set is refused")]
    Link { path: String, why: String },
    /// A name below the folder is not UTF-8 or breaks the path rule.
    #[error("{path:?} cannot be sent: {why}")]
    BadName { path: String, why: String },
    /// More entries than the limit.
    #[error("the pattern matches more than {limit} files and folders")]
    TooMany { limit: usize },
    /// The patterns together walk more entries than [`MAX_VISITS`] (many
    /// patterns over the same tree).
    #[error("the patterns together walk more than {limit} files and folders; name fewer patterns")]
    TooMuchWalking { limit: usize },
    /// The folder or a file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a set sends of its resolved entries, in path order: every file,
/// and every folder with nothing below it (an empty folder), named with a
/// trailing `/` so the receiver makes a folder of it. A folder with
/// anything below it arrives with what is below.
pub fn entries_to_send(entries: Vec<Entry>) -> Vec<Entry> {
    let mut holding = std::collections::BTreeSet::new();
    for e in &entries {
        let mut path = e.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !holding.insert(parent.to_owned()) {
                break; // its ancestors are in already
            }
            path = parent;
        }
    }
    let mut out: Vec<Entry> = entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::File || !holding.contains(&e.path))
        .map(|e| match e.kind {
            EntryKind::File => e,
            EntryKind::Folder => Entry { path: format!("{}/", e.path), size: 0, modified_ns: 0, ..e },
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Resolves a set's patterns below `root`: the union of what each names,
/// a folder a glob matched taken as its whole tree (as a folder's name is),
/// then [`entries_to_send`]. At most [`MAX_ENTRIES`]; more is refused, not
/// cut short. What the sender of a set records (a push) or answers its
/// partner (a pull).
pub fn resolve_set(root: &Path, patterns: &[String]) -> Result<Vec<Entry>, ResolveError> {
    resolve_set_walking(root, patterns, MAX_VISITS)
}

/// [`resolve_set`], all its walks together visiting at most `visits`
/// entries: what one resolution costs does not grow with how many of its
/// patterns walk the same tree.
fn resolve_set_walking(root: &Path, patterns: &[String], visits: usize) -> Result<Vec<Entry>, ResolveError> {
    resolve_each(root, patterns, visits).map_err(|e| match e {
        ResolveError::TooMuchWalking { .. } => ResolveError::TooMuchWalking { limit: visits },
        other => other,
    })
}

fn resolve_each(root: &Path, patterns: &[String], mut visits: usize) -> Result<Vec<Entry>, ResolveError> {
    let mut all = std::collections::BTreeMap::new();
    for p in patterns {
        for e in resolve_within(root, p, MAX_ENTRIES, &mut visits)? {
            all.insert(e.path.clone(), e);
        }
    }
    // A glob that matched a folder (`2026-11-*`) means its tree, as a
    // folder's name does: what is below it is added, so it is not taken
    // for an empty folder.
    let folders: Vec<String> = all.values().filter(|e| e.kind == EntryKind::Folder).map(|e| e.path.clone()).collect();
    for folder in folders {
        let below = format!("{folder}/");
        if all.range(below.clone()..).next().is_some_and(|(k, _)| k.starts_with(&below)) {
            continue;
        }
        for e in resolve_within(root, &folder, MAX_ENTRIES, &mut visits)? {
            all.insert(e.path.clone(), e);
        }
        if all.len() > MAX_ENTRIES {
            return Err(ResolveError::TooMany { limit: MAX_ENTRIES });
        }
    }
    let out = entries_to_send(all.into_values().collect());
    if out.len() > MAX_ENTRIES {
        return Err(ResolveError::TooMany { limit: MAX_ENTRIES });
    }
    Ok(out)
}

/// Most bytes of a set's pattern (or list) that travel in a `Release`.
pub const SHOWN_PATTERN_BYTES: usize = 4096;

/// A set's pattern as it travels in a `Release` and names the set on the
/// partner: whole when short, else its first lines within
/// [`SHOWN_PATTERN_BYTES`] and how many more there were.
pub fn shown_pattern(pattern: &str) -> String {
    if pattern.len() <= SHOWN_PATTERN_BYTES {
        return pattern.to_owned();
    }
    let lines: Vec<&str> = pattern.lines().collect();
    let (mut out, mut taken) = (String::new(), 0);
    for line in &lines {
        if out.len() + line.len() + 1 > SHOWN_PATTERN_BYTES - 64 {
            break;
        }
        out.push_str(line);
        out.push('\n');
        taken += 1;
    }
    if taken == 0 {
        // One line longer than the limit: its start, cut on a character.
        out = format!("{}\n", crate::text::head(pattern, SHOWN_PATTERN_BYTES - 64));
        taken = 1;
    }
    out.push_str(&format!("… ({} more paths)", lines.len().saturating_sub(taken)));
    out
}

/// A digest of a resolved list (each entry's path, size and modification
/// time, in order): a partner that lists a set page by page checks that
/// every page came from the same resolution.
pub fn listing_digest(entries: &[Entry]) -> crate::protocol::Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry file set listing\0");
    for e in entries {
        h.update(e.path.as_bytes());
        h.update(&[0]);
        h.update(&e.size.to_be_bytes());
        h.update(&e.modified_ns.to_be_bytes());
    }
    crate::protocol::Digest(*h.finalize().as_bytes())
}

/// Whether `c` makes a component a glob rather than a plain name.
fn is_glob_char(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}')
}

/// Checks a pattern against the path rule (glob characters allowed).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty".into());
    }
    if pattern.starts_with('/') {
        return Err("an absolute path; patterns are relative to the rule's folder".into());
    }
    if pattern.contains('\\') {
        return Err("contains a backslash".into());
    }
    for component in pattern.split('/') {
        if component.is_empty() {
            return Err("has an empty component (`//` or a trailing `/`)".into());
        }
        if component.chars().any(is_glob_char) {
            // Still never `..`-like: globs cannot climb (`..` has no glob character).
            if component.contains('\0') {
                return Err("contains a NUL byte".into());
            }
            continue;
        }
        check_file_name(component)?;
    }
    Ok(())
}

/// The leading components of `pattern` without glob characters: the folder
/// the walk can start in.
fn literal_prefix(pattern: &str) -> (String, bool) {
    let components: Vec<&str> = pattern.split('/').collect();
    let literal = components.iter().take_while(|c| !c.chars().any(is_glob_char)).count();
    (components[..literal].join("/"), literal == components.len())
}

/// Most entries one resolution of a set walks, over all its patterns: a
/// set matches at most [`MAX_ENTRIES`], and a glob may walk past more that
/// it does not take.
pub const MAX_VISITS: usize = 4 * MAX_ENTRIES;

/// Resolves `pattern` below `root` into its entries, sorted by path, with
/// at most `limit` of them.
pub fn resolve(root: &Path, pattern: &str, limit: usize) -> Result<Vec<Entry>, ResolveError> {
    let mut visits = MAX_VISITS;
    resolve_within(root, pattern, limit, &mut visits)
}

/// [`resolve`], walking at most `visits` entries (less what it walked).
fn resolve_within(root: &Path, pattern: &str, limit: usize, visits: &mut usize) -> Result<Vec<Entry>, ResolveError> {
    check_pattern(pattern).map_err(|why| ResolveError::BadPattern { pattern: pattern.to_owned(), why })?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ResolveError::Io { path, source }
    };
    let root = root.canonicalize().map_err(io(root))?;
    let (prefix, all_literal) = literal_prefix(pattern);
    let start = root.join(&prefix);
    // The folders the walk starts below are checked one by one: a link
    // among them would lead the walk elsewhere.
    let mut folder = root.clone();
    let depth = if all_literal { prefix.split('/').count().saturating_sub(1) } else { usize::MAX };
    for (i, component) in prefix.split('/').filter(|c| !c.is_empty()).enumerate().take(depth) {
        folder.push(component);
        match std::fs::symlink_metadata(&folder) {
            Ok(m) if m.file_type().is_symlink() => {
                let rel = prefix.split('/').take(i + 1).collect::<Vec<_>>().join("/");
                return Err(link_refused(rel, &folder));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&folder)(e)),
        }
    }
    let mut found = Walk { root: &root, limit, entries: Vec::new(), visits };
    if all_literal {
        // A file, or a folder's whole tree; nothing when it does not exist.
        match std::fs::symlink_metadata(&start) {
            Ok(_) => found.add_tree(&start)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&start)(e)),
        }
    } else {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(false)
            .build()
            .map_err(|e| ResolveError::BadPattern { pattern: pattern.to_owned(), why: e.kind().to_string() })?
            .compile_matcher();
        // Below the literal folders, how deep the pattern reaches (`**`: any depth).
        let reach = match pattern.contains("**") {
            true => usize::MAX,
            false => pattern.split('/').count() - prefix.split('/').filter(|c| !c.is_empty()).count(),
        };
        match std::fs::symlink_metadata(&start) {
            Ok(m) if m.is_dir() => found.add_matching(&start, reach, |rel| glob.is_match(rel))?,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&start)(e)),
        }
    }
    let mut entries = found.entries;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    Ok(entries)
}

/// The refusal of the link at `link` (`rel` below the folder), naming
/// where it leads.
fn link_refused(rel: String, link: &Path) -> ResolveError {
    let target = std::fs::read_link(link).map_or_else(|e| e.to_string(), |t| t.display().to_string());
    ResolveError::Link { path: rel, why: format!("(to {target}) is not followed: file sets never follow links") }
}

struct Walk<'a> {
    root: &'a Path,
    limit: usize,
    entries: Vec<Entry>,
    /// Entries this walk may still visit, taken or not.
    visits: &'a mut usize,
}

impl Walk<'_> {
    /// `start` (a file, a link or a folder) and, for a folder, everything below it.
    fn add_tree(&mut self, start: &Path) -> Result<(), ResolveError> {
        self.walk(start, true, usize::MAX, &mut |_| true)
    }

    /// Everything below `start`, at most `reach` levels down, whose path
    /// relative to the root `matches`.
    fn add_matching(
        &mut self,
        start: &Path,
        reach: usize,
        matches: impl Fn(&Path) -> bool,
    ) -> Result<(), ResolveError> {
        self.walk(start, false, reach, &mut |rel| matches(rel))
    }

    fn walk(
        &mut self,
        start: &Path,
        include_start: bool,
        reach: usize,
        take: &mut dyn FnMut(&Path) -> bool,
    ) -> Result<(), ResolveError> {
        let walker = walkdir::WalkDir::new(start)
            .follow_links(false)
            .follow_root_links(false)
            .max_depth(reach)
            .min_depth(if include_start { 0 } else { 1 })
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !e.file_name().to_string_lossy().starts_with(RESERVED_PREFIX));
        for item in walker {
            let item = match item {
                Ok(item) => item,
                // Gone since it was listed: it is not part of the set.
                Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
                Err(e) => {
                    let path = e.path().map(Path::to_owned).unwrap_or_else(|| start.to_owned());
                    let source = e.into_io_error().unwrap_or_else(|| std::io::Error::other("file system loop"));
                    return Err(ResolveError::Io { path, source });
                }
            };
            if *self.visits == 0 {
                return Err(ResolveError::TooMuchWalking { limit: MAX_VISITS });
            }
            *self.visits -= 1;
            // Matched first, checked after: a name the pattern does not
            // take cannot fail the set.
            if !take(item.path().strip_prefix(self.root).unwrap_or(item.path())) {
                continue;
            }
            let rel = self.relative(item.path())?;
            let file_type = item.file_type();
            if file_type.is_symlink() {
                return Err(link_refused(rel, item.path()));
            }
            let meta = match item.metadata() {
                Ok(m) => m,
                Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
                Err(e) => {
                    let source = e.into_io_error().unwrap_or_else(|| std::io::Error::other("metadata"));
                    return Err(ResolveError::Io { path: item.path().to_owned(), source });
                }
            };
            let kind = if meta.is_dir() { EntryKind::Folder } else { EntryKind::File };
            if kind == EntryKind::File && !meta.is_file() {
                // A socket, a FIFO, a device: not a file to send.
                return Err(ResolveError::BadName { path: rel, why: "not a regular file".into() });
            }
            if self.entries.len() == self.limit {
                return Err(ResolveError::TooMany { limit: self.limit });
            }
            let modified_ns =
                meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            let size = if kind == EntryKind::File { meta.len() } else { 0 };
            self.entries.push(Entry { path: rel, kind, size, modified_ns });
        }
        Ok(())
    }

    /// `path` relative to the root, `/`-joined, checked against the path rule.
    fn relative(&self, path: &Path) -> Result<String, ResolveError> {
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        let text = rel.to_str().ok_or_else(|| ResolveError::BadName {
            path: rel.to_string_lossy().into_owned(),
            why: "the name is not UTF-8".into(),
        })?;
        crate::protocol::names::check_relative_path(text)
            .map_err(|why| ResolveError::BadName { path: text.to_owned(), why })?;
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests;
