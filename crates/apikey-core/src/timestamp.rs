//! RFC 3339 timestamps as nanoseconds since the Unix epoch.
//!
//! Key expiry is the only place the filter uses the wall clock. Parsing is
//! done once, at configuration time, into a plain integer so the request
//! path compares two `i64`s. Dates outside the range an `i64` of nanoseconds
//! can hold (1677–2262) saturate, which keeps their meaning: a date after
//! 2262 is still "not yet", one before 1677 is still "long ago".

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub type UnixNanos = i64;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Parses an RFC 3339 `date-time` (`2027-01-31T00:00:00Z`,
/// `2027-01-31t00:00:00.5+02:00`). Lower-case `t` and `z` are accepted, and
/// any offset.
pub fn parse_rfc3339(text: &str) -> Result<UnixNanos, &'static str> {
    const SHAPE: &str = "must be an RFC 3339 date-time such as 2027-01-31T00:00:00Z";
    let bytes = text.as_bytes();
    let mut cursor = Cursor { bytes, at: 0 };
    let year = cursor.digits(4).ok_or(SHAPE)?;
    cursor.expect(b'-').ok_or(SHAPE)?;
    let month = cursor.digits(2).ok_or(SHAPE)?;
    cursor.expect(b'-').ok_or(SHAPE)?;
    let day = cursor.digits(2).ok_or(SHAPE)?;
    match cursor.next() {
        Some(b'T' | b't') => {}
        _ => return Err(SHAPE),
    }
    let hour = cursor.digits(2).ok_or(SHAPE)?;
    cursor.expect(b':').ok_or(SHAPE)?;
    let minute = cursor.digits(2).ok_or(SHAPE)?;
    cursor.expect(b':').ok_or(SHAPE)?;
    let second = cursor.digits(2).ok_or(SHAPE)?;
    let mut nanos: i128 = 0;
    if cursor.peek() == Some(b'.') {
        cursor.at += 1;
        let start = cursor.at;
        let mut scale = NANOS_PER_SECOND;
        while let Some(digit @ b'0'..=b'9') = cursor.peek() {
            cursor.at += 1;
            // Digits past nanosecond precision are truncated, not refused.
            if scale > 1 {
                scale /= 10;
                nanos += i128::from(digit - b'0') * scale;
            }
        }
        if cursor.at == start {
            return Err(SHAPE);
        }
    }
    let offset_seconds: i128 = match cursor.next() {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = cursor.digits(2).ok_or(SHAPE)?;
            cursor.expect(b':').ok_or(SHAPE)?;
            let minutes = cursor.digits(2).ok_or(SHAPE)?;
            if hours > 23 || minutes > 59 {
                return Err("has an offset out of range");
            }
            let magnitude = i128::from(hours * 3600 + minutes * 60);
            if sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return Err(SHAPE),
    };
    if cursor.at != bytes.len() {
        return Err(SHAPE);
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err("names a day that does not exist");
    }
    // RFC 3339 allows a leap second (60); it is counted as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err("has a time of day out of range");
    }
    let days = i128::from(days_from_civil(year, month, day));
    let seconds = days * 86_400 + i128::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    let total = seconds * NANOS_PER_SECOND + nanos;
    Ok(i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX }))
}

/// Formats nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC,
/// whole seconds), the form the CLI writes.
pub fn format_rfc3339(nanos: UnixNanos) -> String {
    let seconds = nanos.div_euclid(1_000_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn digits(&mut self, count: usize) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..count {
            let digit = self.next()?;
            if !digit.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(digit - b'0');
        }
        Some(value)
    }
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
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
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn epoch_is_zero() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
    }

    #[test]
    fn known_instants_parse_to_their_unix_time() {
        let cases = [
            ("2027-01-31T00:00:00Z", 1_801_353_600 * SECOND),
            ("2000-02-29T12:00:00Z", 951_825_600 * SECOND),
            ("2027-01-31t00:00:00z", 1_801_353_600 * SECOND),
            ("2027-01-31T02:00:00+02:00", 1_801_353_600 * SECOND),
            ("2027-01-30T19:30:00-04:30", 1_801_353_600 * SECOND),
            ("1970-01-01T00:00:00.5Z", SECOND / 2),
            ("1970-01-01T00:00:00.123456789123Z", 123_456_789),
            ("1969-12-31T23:59:59Z", -SECOND),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rfc3339(text), Ok(expected), "parsing {text}");
        }
    }

    #[test]
    fn malformed_or_impossible_dates_are_refused() {
        for text in [
            "",
            "2027-01-31",
            "2027-01-31 00:00:00Z",
            "2027-01-31T00:00:00",
            "2027-02-29T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-00-01T00:00:00Z",
            "2027-01-32T00:00:00Z",
            "2027-01-31T24:00:00Z",
            "2027-01-31T00:60:00Z",
            "2027-01-31T00:00:00.Z",
            "2027-01-31T00:00:00+2400",
            "2027-01-31T00:00:00+24:00",
            "2027-01-31T00:00:00Zjunk",
            "２027-01-31T00:00:00Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn dates_beyond_the_nanosecond_range_saturate_in_the_right_direction() {
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Ok(i64::MAX));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Ok(i64::MIN));
    }

    #[test]
    fn formatting_round_trips_whole_seconds() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2027-01-31T00:00:00Z",
            "2000-02-29T23:59:59Z",
        ] {
            let nanos = parse_rfc3339(text).unwrap();
            assert_eq!(format_rfc3339(nanos), text);
        }
    }
}
