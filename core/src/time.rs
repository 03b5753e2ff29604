//! The contract's datetime formats, to and from milliseconds since the epoch.
//!
//! Hand-written rather than pulled from a date crate: the formats are fixed
//! and narrow (UTC only, years 0000-9999), parsing sits on the hot path of
//! every request, and strictness is the point: anything else is bad input.

use thiserror::Error;

pub const MS_PER_MINUTE: i64 = 60_000;

/// Precision of a datetime in a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Seconds,
    Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("expected a UTC datetime like {expected}")]
pub struct TimeError {
    expected: &'static str,
}

/// Parses a tag's `time`: `2022-03-01T00:00:00.649Z` or `2022-03-01T00:00:01Z`.
pub fn parse_tag_time(s: &str) -> Result<i64, TimeError> {
    const EXPECTED: TimeError = TimeError {
        expected: "2022-03-01T00:00:00.000Z",
    };
    let body = s.strip_suffix('Z').ok_or(EXPECTED)?;
    parse_naive(body).map(|(ms, _)| ms).ok_or(EXPECTED)
}

/// Parses a query-string datetime, which has no `Z`: `2022-03-22T12:15:00.000`
/// or `2022-03-22T12:15:00`. Returns the precision it was written in.
pub fn parse_query_time(s: &str) -> Result<(i64, Precision), TimeError> {
    parse_naive(s).ok_or(TimeError {
        expected: "2022-03-22T12:15:00.000",
    })
}

/// Formats a tag time in millisecond form: `2022-03-01T00:00:00.649Z`.
pub fn format_tag_time(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    push_datetime(&mut out, ms);
    out.push('.');
    push_digits(&mut out, ms.rem_euclid(1000) as u32, 3);
    out.push('Z');
    out
}

/// Formats the start of a minute bucket with second precision:
/// `2022-03-01T00:05:00`.
pub fn format_bucket(minute: i64) -> String {
    let mut out = String::with_capacity(19);
    push_datetime(&mut out, minute * MS_PER_MINUTE);
    out
}

/// Parses `YYYY-MM-DDTHH:MM:SS` with an optional `.mmm`.
fn parse_naive(s: &str) -> Option<(i64, Precision)> {
    let b = s.as_bytes();
    let precision = match b.len() {
        19 => Precision::Seconds,
        23 if b[19] == b'.' => Precision::Millis,
        _ => return None,
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let millis = match precision {
        Precision::Millis => digits(&b[20..23])?,
        Precision::Seconds => 0,
    };
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some((secs * 1000 + i64::from(millis), precision))
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push_datetime(out: &mut String, ms: i64) {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    push_digits(out, year.clamp(0, 9999) as u32, 4);
    out.push('-');
    push_digits(out, month, 2);
    out.push('-');
    push_digits(out, day, 2);
    out.push('T');
    push_digits(out, sod / 3600, 2);
    out.push(':');
    push_digits(out, sod / 60 % 60, 2);
    out.push(':');
    push_digits(out, sod % 60, 2);
}

fn push_digits(out: &mut String, value: u32, width: u32) {
    for i in (0..width).rev() {
        let digit = value / 10u32.pow(i) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// First and last millisecond that the formats can express: years 0000-9999.
pub const MIN_MS: i64 = -62_167_219_200_000;
pub const MAX_MS: i64 = 253_402_300_799_999;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_tag_precisions() {
        assert_eq!(parse_tag_time("1970-01-01T00:00:00.000Z"), Ok(0));
        assert_eq!(
            parse_tag_time("2022-03-01T00:00:00.649Z"),
            Ok(1_646_092_800_649)
        );
        assert_eq!(
            parse_tag_time("2022-03-01T00:00:01Z"),
            Ok(1_646_092_801_000)
        );
    }

    #[test]
    fn rejects_malformed_times() {
        for bad in [
            "",
            "2022-03-01T00:00:00.000",
            "2022-03-01 00:00:00.000Z",
            "2022-03-01T00:00:00.00Z",
            "2022-03-01T00:00:00.0000Z",
            "2022-02-29T00:00:00Z",
            "2022-13-01T00:00:00Z",
            "2022-03-01T24:00:00Z",
            "2022-03-01T00:60:00Z",
            "2022-03-01T00:00:60Z",
            "+022-03-01T00:00:00Z",
            "2022-03-01T00:00:00+01:00",
        ] {
            assert!(parse_tag_time(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_tag_time("2024-02-29T00:00:00Z").is_ok());
    }

    #[test]
    fn query_times_carry_their_precision() {
        assert_eq!(
            parse_query_time("2022-03-22T12:15:00"),
            Ok((1_647_951_300_000, Precision::Seconds))
        );
        assert_eq!(
            parse_query_time("2022-03-22T12:15:00.001"),
            Ok((1_647_951_300_001, Precision::Millis))
        );
        assert!(parse_query_time("2022-03-22T12:15:00Z").is_err());
    }

    #[test]
    fn formats_match_the_contract() {
        assert_eq!(
            format_tag_time(1_646_092_800_649),
            "2022-03-01T00:00:00.649Z"
        );
        assert_eq!(
            format_tag_time(1_646_092_801_000),
            "2022-03-01T00:00:01.000Z"
        );
        assert_eq!(
            format_bucket(1_646_093_100_000 / MS_PER_MINUTE),
            "2022-03-01T00:05:00"
        );
        assert_eq!(format_tag_time(MIN_MS), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_tag_time(MAX_MS), "9999-12-31T23:59:59.999Z");
    }

    proptest! {
        // Parsers of client input: cheap cases, so many of them (next to
        // the cargo-fuzz targets in fuzz/).
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn tag_time_round_trips(ms in MIN_MS..=MAX_MS) {
            let text = format_tag_time(ms);
            prop_assert_eq!(parse_tag_time(&text), Ok(ms));
            // The form without the fraction parses to the whole second.
            let whole = format!("{}Z", &text[..19]);
            prop_assert_eq!(parse_tag_time(&whole), Ok(ms - ms.rem_euclid(1000)));
        }

        #[test]
        fn query_time_round_trips(ms in MIN_MS..=MAX_MS) {
            let text = format_tag_time(ms);
            prop_assert_eq!(parse_query_time(&text[..23]), Ok((ms, Precision::Millis)));
            prop_assert_eq!(
                parse_query_time(&text[..19]),
                Ok((ms - ms.rem_euclid(1000), Precision::Seconds))
            );
        }

        #[test]
        fn bucket_round_trips(minute in (MIN_MS / MS_PER_MINUTE)..=(MAX_MS / MS_PER_MINUTE)) {
            let text = format_bucket(minute);
            prop_assert_eq!(parse_query_time(&text), Ok((minute * MS_PER_MINUTE, Precision::Seconds)));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,30}") {
            let _ = parse_tag_time(&s);
            let _ = parse_query_time(&s);
        }
    }
}
