//! Fixed windows: which window an instant falls in, the Redis key that
//! counts it, and how long that key must live.
//!
//! A limit of `n` per unit admits `n` requests in each window
//! `[k * unit, (k + 1) * unit)` of Unix time. Every server computes the
//! same window from its own clock, so the servers of one fleet must keep
//! their clocks in step (NTP): a server `d` ms behind moves its window
//! edges by `d` ms. Like every fixed-window counter, a burst that straddles
//! an edge can reach twice the limit in one unit of time.

use std::fmt::Write as _;

use crate::proto::RateLimitUnit;

/// `envoy.type.v3.RateLimitUnit`, the units this server counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `SECOND` (1).
    Second,
    /// `MINUTE` (2).
    Minute,
    /// `HOUR` (3).
    Hour,
    /// `DAY` (4).
    Day,
}

impl Unit {
    /// The unit numbered `value` in `envoy.type.v3.RateLimitUnit`; `None`
    /// for `UNKNOWN`, for the calendar units (`MONTH`, `YEAR`), which have
    /// no fixed length here, and for numbers the enum does not have.
    pub fn from_proto(value: i32) -> Option<Self> {
        match RateLimitUnit::try_from(value).ok()? {
            RateLimitUnit::Second => Some(Self::Second),
            RateLimitUnit::Minute => Some(Self::Minute),
            RateLimitUnit::Hour => Some(Self::Hour),
            RateLimitUnit::Day => Some(Self::Day),
            RateLimitUnit::Unknown | RateLimitUnit::Month | RateLimitUnit::Year => None,
        }
    }

    /// The protobuf number of this unit.
    pub fn as_proto(self) -> i32 {
        let unit = match self {
            Self::Second => RateLimitUnit::Second,
            Self::Minute => RateLimitUnit::Minute,
            Self::Hour => RateLimitUnit::Hour,
            Self::Day => RateLimitUnit::Day,
        };
        unit as i32
    }

    /// The unit's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    fn millis(self) -> u64 {
        self.seconds() * 1_000
    }
}

/// The window an instant falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Its first instant, in ms of Unix time.
    pub start_ms: u64,
    /// The instant after its last, in ms of Unix time.
    pub end_ms: u64,
}

impl Window {
    /// The window of `unit` holding `now_ms` (ms of Unix time).
    pub fn at(unit: Unit, now_ms: u64) -> Self {
        let start_ms = now_ms - now_ms % unit.millis();
        Self {
            start_ms,
            end_ms: start_ms.saturating_add(unit.millis()),
        }
    }

    /// Milliseconds from `now_ms` to the window's end, at least 1: what the
    /// window's counter lives for, and the time until it resets.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.end_ms.saturating_sub(now_ms).max(1)
    }
}

/// The Redis key counting one descriptor in one window:
/// `apikey:<domain>:<key>=<value>:…:<unit seconds>:<window start seconds>`,
/// for the filter's descriptors
/// `apikey:apikey:key_id=key_1:scope=leads%3Aread:60:1767225600`.
///
/// `%`, `:` and `=` inside the domain and entries are percent-encoded so
/// two different descriptors never share a key (a scope holds `:`); the
/// unit is part of the key so a limit moved from per minute to per hour
/// does not inherit the old window's count.
pub fn counter_key<'a>(
    domain: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    unit: Unit,
    window: &Window,
) -> String {
    let mut key = String::with_capacity(96);
    key.push_str("apikey:");
    escape_into(&mut key, domain);
    for (name, value) in entries {
        key.push(':');
        escape_into(&mut key, name);
        key.push('=');
        escape_into(&mut key, value);
    }
    // Writing to a String cannot fail.
    let _ = write!(key, ":{}:{}", unit.seconds(), window.start_ms / 1_000);
    key
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-01-01T00:00:00Z
    const MIDNIGHT_MS: u64 = 1_767_225_600_000;

    #[test]
    fn units_map_to_the_protobuf_numbers_and_lengths() {
        for (number, unit, seconds) in [
            (1, Unit::Second, 1),
            (2, Unit::Minute, 60),
            (3, Unit::Hour, 3_600),
            (4, Unit::Day, 86_400),
        ] {
            assert_eq!(Unit::from_proto(number), Some(unit), "number {number}");
            assert_eq!(unit.as_proto(), number, "{unit:?}");
            assert_eq!(unit.seconds(), seconds, "{unit:?}");
        }
        for calendar_or_unknown in [0, 5, 6, 7, -1, 99] {
            assert_eq!(Unit::from_proto(calendar_or_unknown), None);
        }
    }

    #[test]
    fn a_window_starts_on_a_multiple_of_its_unit_and_holds_now() {
        let now = MIDNIGHT_MS + 61_250; // 00:01:01.250
        assert_eq!(
            Window::at(Unit::Second, now),
            Window {
                start_ms: MIDNIGHT_MS + 61_000,
                end_ms: MIDNIGHT_MS + 62_000
            }
        );
        assert_eq!(
            Window::at(Unit::Minute, now),
            Window {
                start_ms: MIDNIGHT_MS + 60_000,
                end_ms: MIDNIGHT_MS + 120_000
            }
        );
        assert_eq!(Window::at(Unit::Hour, now).start_ms, MIDNIGHT_MS);
        assert_eq!(Window::at(Unit::Day, now).end_ms, MIDNIGHT_MS + 86_400_000);
    }

    #[test]
    fn the_first_instant_of_a_window_belongs_to_it_and_the_last_to_the_one_before() {
        let edge = MIDNIGHT_MS + 120_000;
        assert_eq!(Window::at(Unit::Minute, edge).start_ms, edge);
        assert_eq!(Window::at(Unit::Minute, edge - 1).end_ms, edge);
    }

    #[test]
    fn remaining_time_runs_to_the_end_and_is_never_zero() {
        let window = Window::at(Unit::Minute, MIDNIGHT_MS + 15_000);
        assert_eq!(window.remaining_ms(MIDNIGHT_MS + 15_000), 45_000);
        assert_eq!(window.remaining_ms(MIDNIGHT_MS + 59_999), 1);
        assert_eq!(window.remaining_ms(MIDNIGHT_MS + 60_000), 1);
    }

    #[test]
    fn the_key_names_domain_entries_unit_and_window() {
        let window = Window::at(Unit::Minute, MIDNIGHT_MS + 5_000);
        let key = counter_key(
            "apikey",
            [("key_id", "key_1"), ("scope", "leads:read")],
            Unit::Minute,
            &window,
        );
        assert_eq!(
            key,
            "apikey:apikey:key_id=key_1:scope=leads%3Aread:60:1767225600"
        );
    }

    #[test]
    fn descriptors_that_differ_never_share_a_key() {
        let window = Window::at(Unit::Hour, MIDNIGHT_MS);
        let key = |entries: &[(&str, &str)], unit| {
            counter_key("d", entries.iter().copied(), unit, &window)
        };
        let pairs = [
            // A `:` moved between key_id and scope.
            (
                key(&[("key_id", "a:scope=b"), ("scope", "c")], Unit::Hour),
                key(&[("key_id", "a"), ("scope", "b:scope=c")], Unit::Hour),
            ),
            // The same entries under another unit.
            (
                key(&[("key_id", "a")], Unit::Hour),
                key(&[("key_id", "a")], Unit::Day),
            ),
            // An escape written out literally.
            (
                key(&[("key_id", "a%3Ab")], Unit::Hour),
                key(&[("key_id", "a:b")], Unit::Hour),
            ),
        ];
        for (a, b) in pairs {
            assert_ne!(a, b);
        }
    }
}
