//! UTC calendar dates from Unix time, for task variables (`#DATE#`,
//! `#HOUR#`) and the command line's timestamps. No time zones: ferry
//! writes UTC everywhere.

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for non-negative days).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Seconds since the epoch → ((year, month, day), (hour, minute, second)), UTC.
pub fn utc(secs: u64) -> ((u64, u64, u64), (u64, u64, u64)) {
    let rem = secs % 86_400;
    (civil_from_days(secs / 86_400), (rem / 3600, rem % 3600 / 60, rem % 60))
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn dates_and_times_are_utc_civil_time() {
        assert_eq!(utc(0), ((1970, 1, 1), (0, 0, 0)));
        assert_eq!(utc(951_782_400), ((2000, 2, 29), (0, 0, 0)));
        assert_eq!(utc(1_795_955_696), ((2026, 11, 29), (12, 34, 56)));
    }
}
