//! Text formatting for the command line: times, sizes, rates, tables, and
//! writing to stdout without panicking on a closed pipe.

use std::io::Write;

use unicode_width::UnicodeWidthStr;

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn iso_time(ms: u64) -> String {
    let millis = ms % 1000;
    let ((y, m, d), (h, min, sec)) = ferry::calendar::utc(ms / 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{sec:02}.{millis:03}Z")
}

/// A byte count in binary units: `512 B`, `4.0 KiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// A rate in decimal megabytes per second.
pub fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "- MB/s".to_owned();
    }
    format!("{:.1} MB/s", bytes as f64 / 1e6 / secs)
}

/// Left-aligned columns separated by two spaces, with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let cells: Vec<Vec<String>> =
        std::iter::once(&header).chain(rows).map(|row| row.iter().map(|c| printable(c)).collect()).collect();
    let mut widths: Vec<usize> = vec![0; header.len()];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.width())));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A cell as a terminal shows it on one line: control characters (a
/// newline in a file name, an escape sequence) are written escaped, so they
/// neither break the row nor act on the terminal.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().collect::<String>() } else { c.to_string() }).collect()
}

/// Writes `text` to stdout. A closed pipe (`ferry status | head`) is not an error.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Writes `value` to stdout as pretty JSON, as the API answers it (`--json`).
pub fn out_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso_8601_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_time(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(iso_time(1_709_251_199_000), "2024-02-29T23:59:59.000Z");
    }

    #[test]
    fn sizes_and_rates_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
        assert_eq!(rate(10_000_000, 2.0), "5.0 MB/s");
        assert_eq!(rate(1, 0.0), "- MB/s");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["ID", "STATUS"], &[vec!["a".into(), "Done".into()], vec!["bbbb".into(), "InError".into()]]);
        assert_eq!(t, "ID    STATUS\na     Done\nbbbb  InError\n");
    }

    #[test]
    fn control_characters_and_wide_characters_keep_the_table_aligned() {
        let rows = [
            vec!["two\nlines.txt".to_owned(), "Done".to_owned()],
            vec!["\u{1b}[31mred".to_owned(), "Done".to_owned()],
            vec!["日本語.txt".to_owned(), "Done".to_owned()],
            vec!["plain.txt".to_owned(), "Done".to_owned()],
        ];
        let t = table(&["FILE", "STATUS"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "one line a row: {t}");
        assert!(lines[1].starts_with("two\\nlines.txt"), "{t}");
        assert!(!t.contains('\u{1b}'), "no escape sequence reaches the terminal: {t:?}");
        let status_at: Vec<usize> =
            lines.iter().map(|l| l[..l.find("Done").unwrap_or(l.find("STATUS").unwrap_or(0))].width()).collect();
        assert!(status_at.windows(2).all(|w| w[0] == w[1]), "the STATUS column starts at one display column: {t}");
    }
}
