//! File names received from a partner.
//!
//! A partner names a file inside a rule's folder; it never names a path. A
//! name that could resolve outside the folder (a separator, `..`, an absolute
//! path, a NUL) is refused, so nothing lands outside the rule's folder and
//! nothing outside the send folder can be read. Names starting with `.ferry`
//! are reserved for the node's own work files.

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
}
