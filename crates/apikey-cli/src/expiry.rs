//! What `create`'s expiry options ask for, and the `expires_at` it becomes.
//!
//! `--expires-in` is relative to the moment the command runs, so it is
//! resolved here, against the clock the command read once, rather than by
//! the service: the instant sent is the instant the operator meant, and an
//! instant already past is refused before anything is sent (such a key
//! would never work).

use apikey_core::timestamp::{format_rfc3339, UnixNanos};

use crate::error::{refused, CliError};

/// What an expiry option asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// `--expires <RFC 3339>`: the text as given and its instant.
    At(String, UnixNanos),
    /// `--expires-in <duration>`: this long from now.
    In(i64),
    /// No expiry option.
    Never,
}

impl Expiry {
    /// The `expires_at` to store; refuses an instant already past, which
    /// would make a key that never works.
    pub fn resolve(&self, now: UnixNanos) -> Result<Option<String>, CliError> {
        let (text, at) = match self {
            Self::Never => return Ok(None),
            Self::At(text, at) => (text.clone(), *at),
            Self::In(nanos) => {
                let at = now
                    .checked_add(*nanos)
                    .ok_or_else(|| refused("the expiry is too far in the future (after 2262)"))?;
                (format_rfc3339(at), at)
            }
        };
        if at <= now {
            return Err(refused(format!(
                "expiry {text} is not in the future (now is {})",
                format_rfc3339(now)
            )));
        }
        Ok(Some(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixNanos = 1_800_000_000 * 1_000_000_000;

    #[test]
    fn an_expiry_in_a_duration_counts_from_now() {
        let hour = 3_600 * 1_000_000_000;
        assert_eq!(
            Expiry::In(hour).resolve(NOW).unwrap(),
            Some(format_rfc3339(NOW + hour))
        );
        assert_eq!(Expiry::Never.resolve(NOW).unwrap(), None);
    }

    #[test]
    fn an_expiry_not_in_the_future_is_refused() {
        let past = Expiry::At("2020-01-01T00:00:00Z".to_owned(), 1_577_836_800_000_000_000);
        let error = past.resolve(NOW).unwrap_err();
        assert!(
            error.message().contains("not in the future"),
            "the refusal does not say why: {error}"
        );
        assert!(
            Expiry::In(0).resolve(NOW).is_err(),
            "an expiry of now was accepted"
        );
    }
}
