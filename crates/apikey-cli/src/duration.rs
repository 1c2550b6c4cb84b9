//! Durations as operators type them: `30d`, `24h`, `90m`, `45s`, `2w`, and
//! sums such as `1h30m`.
//!
//! `create --expires-in` and `rotate --grace` take one. Every part needs a
//! unit, so `30` (seconds? days?) is refused rather than guessed, and sums
//! are checked so a huge number is an error, never a wrapped-around date.

/// Nanoseconds in one second.
pub const SECOND_NANOS: i64 = 1_000_000_000;

/// Parses a duration into nanoseconds.
///
/// ```text
/// 30d → 2_592_000 s    1h30m → 5_400 s    0s → 0
/// ```
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let shape = || {
        format!(
            "bad duration {text:?}: use a number and a unit (s, m, h, d, w), such as 30d or 1h30m"
        )
    };
    if text.is_empty() {
        return Err(shape());
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let unit_seconds: i64 = match character {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(shape()),
        };
        if digits.is_empty() {
            return Err(shape());
        }
        let too_long = || format!("duration {text:?} is too long");
        let count: i64 = digits.parse().map_err(|_| too_long())?;
        let part = count
            .checked_mul(unit_seconds)
            .and_then(|seconds| seconds.checked_mul(SECOND_NANOS))
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(shape());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_units_parse_to_their_length() {
        for (text, seconds) in [
            ("45s", 45),
            ("90m", 5_400),
            ("24h", 86_400),
            ("30d", 2_592_000),
            ("2w", 1_209_600),
            ("0s", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(seconds * SECOND_NANOS),
                "parsing {text}"
            );
        }
    }

    #[test]
    fn parts_add_up() {
        assert_eq!(parse_duration("1h30m"), Ok(5_400 * SECOND_NANOS));
        assert_eq!(parse_duration("1d12h"), Ok(129_600 * SECOND_NANOS));
    }

    #[test]
    fn a_number_without_a_unit_or_an_unknown_unit_is_refused() {
        for text in [
            "", "30", "d", "1h30", "3y", "1.5h", "-1h", " 1h", "1 h", "１h",
        ] {
            assert!(parse_duration(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn overflowing_durations_are_refused_not_wrapped() {
        for text in ["99999999999999999999s", "300000w", "9223372037s"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("too long"), "{text}: {error}");
        }
    }
}
