//! File names received from a partner.
//!
//! A partner names a file inside a rule's folder; it never names a path. A
//! name that could resolve outside the folder (a separator, `..`, an absolute
//! path, a NUL) is refused, so nothing lands outside the rule's folder and
//! nothing outside the send folder can be read. Names starting with `.ferry`
//! are reserved for the node's own work files.
//!
//! A file set (see `crate::fileset`) names files below a rule's folder by
//! relative path: `a/b/c.csv`, checked component by component with the same
//! rule ([`check_relative_path`]), so a path can only go down, never up,
//! never start at the root, and never into the node's work folders.

/// Longest accepted name, in bytes (the usual file-system limit).
pub const MAX_NAME_LEN: usize = 255;

/// Prefix of the node's work files and folders inside a receive folder.
pub const RESERVED_PREFIX: &str = ".ferry";

/// Checks that `name` is one plain file name; returns why not otherwise.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("file name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("file name is {} bytes long, over the {MAX_NAME_LEN}-byte limit", name.len()));
    }
    if name.contains('\0') {
        return Err("file name contains a NUL byte".into());
    }
    if name.starts_with('/') {
        return Err(format!("file name {name:?} is an absolute path"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(format!("file name {name:?} contains a path separator"));
    }
    if name == "." || name == ".." {
        return Err(format!("file name {name:?} names a folder"));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!("file name {name:?} uses the reserved prefix {RESERVED_PREFIX:?}"));
    }
    Ok(())
}

/// Longest `transfer_info` a request may carry, in bytes.
pub const MAX_TRANSFER_INFO: usize = 8 * 1024;
/// Longest `external_job_id` a request may carry, in bytes.
pub const MAX_EXTERNAL_JOB_ID: usize = 256;

/// Checks the free text a request carries (`transfer_info`, and
/// `external_job_id` if any): within its length and without NUL bytes. A
/// partner's text becomes tasks' variables and an `exec`'s environment,
/// where an overlong or NUL-bearing value would make every program fail to
/// start.
pub fn check_request_text(transfer_info: &str, external_job_id: Option<&str>) -> Result<(), String> {
    if transfer_info.len() > MAX_TRANSFER_INFO {
        return Err(format!("transfer_info is {} bytes; at most {MAX_TRANSFER_INFO} are allowed", transfer_info.len()));
    }
    if external_job_id.is_some_and(|j| j.len() > MAX_EXTERNAL_JOB_ID) {
        return Err(format!("external_job_id is longer than {MAX_EXTERNAL_JOB_ID} bytes"));
    }
    if transfer_info.contains('\0') || external_job_id.is_some_and(|j| j.contains('\0')) {
        return Err("transfer_info or external_job_id contains a NUL byte".into());
    }
    Ok(())
}

/// Longest accepted relative path, in bytes (the usual `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Checks that `path` is a relative path of plain names joined by `/`
/// (no empty component, no `.` or `..`, no backslash, no NUL, no
/// reserved name); returns why not otherwise.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path is {} bytes long, over the {MAX_PATH_LEN}-byte limit", path.len()));
    }
    if path.starts_with('/') {
        return Err(format!("path {path:?} is absolute"));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(format!("path {path:?} has an empty component (`//` or a trailing `/`)"));
        }
        check_file_name(component).map_err(|why| format!("path {path:?}: {why}"))?;
    }
    Ok(())
}

/// Checks a file set's entry: a relative path ([`check_relative_path`])
/// naming a file, or the same ending in one `/`, naming a folder (an empty
/// folder of the set, which the receiver makes).
pub fn check_entry_path(path: &str) -> Result<(), String> {
    check_relative_path(path.strip_suffix('/').unwrap_or(path))
}

/// Whether an entry path names a folder (it ends in `/`).
pub fn is_folder_entry(path: &str) -> bool {
    path.ends_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for n in ["a", "report.csv", "..hidden", "a..b", "x y", "été.txt"] {
            assert!(check_file_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn escaping_names_are_refused() {
        for n in ["", "/etc/passwd", "../x", "a/../../b", "..", ".", "a/b", "a\\b", "a\0b", ".ferry-work"] {
            assert!(check_file_name(n).is_err(), "{n:?} should be refused");
        }
        assert!(check_file_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn relative_paths_of_plain_names_pass() {
        for p in ["a", "daily/2026-11-29/report.csv", "x y/été.txt", "..hidden/a..b"] {
            assert!(check_relative_path(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn paths_that_climb_or_start_at_the_root_are_refused() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a/b\0c",
            ".ferry-work/x",
            "a/.ferry-work",
        ] {
            let why = check_relative_path(p).expect_err(p);
            assert!(!why.is_empty());
        }
        assert!(check_relative_path(&"a/".repeat(2100)).is_err());
    }

    #[test]
    fn an_entry_is_a_relative_path_or_one_ending_in_one_slash() {
        for p in ["a", "a/", "daily/empty/", "x y/"] {
            assert!(check_entry_path(p).is_ok(), "{p}");
        }
        assert!(is_folder_entry("a/b/") && !is_folder_entry("a/b"));
        for p in ["/", "a//", "../", "/etc/", ".ferry-work/", "a/../", ""] {
            assert!(check_entry_path(p).is_err(), "{p:?}");
        }
    }
}
