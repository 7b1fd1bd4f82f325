//! Small helpers on text shown to people (logs, audit lines, answers).

/// The longest start of `s` of at most `max` bytes that ends on a
/// character boundary (all of `s` when it is that short).
pub fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::head;

    #[test]
    fn a_head_is_cut_on_a_character_and_never_longer_than_asked() {
        assert_eq!(head("abc", 10), "abc");
        assert_eq!(head("abc", 2), "ab");
        assert_eq!(head("abc", 0), "");
        // "é" is two bytes: a cut in its middle leaves it out.
        assert_eq!(head("aé", 2), "a");
        assert_eq!(head("aé", 3), "aé");
        for max in 0..12 {
            let h = head("日本語のファイル", max);
            assert!(h.len() <= max && "日本語のファイル".starts_with(h), "{max}: {h:?}");
        }
    }
}
