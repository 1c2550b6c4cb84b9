//! The two bearer tokens: the admin token (the management API) and the
//! feed token (gateways, contract §8.3).
//!
//! Each is read from a file and trimmed. Only its SHA-256 is kept, and a
//! presented token is hashed and compared with `subtle`'s constant-time
//! equality over the fixed 32 bytes, so neither the comparison's time nor
//! a length check tells an attacker how much of a guess was right. Token
//! values appear in no log, no error and no `Debug` output.

use core::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted: 16 characters (a random token of 16
/// base62 characters holds about 95 bits).
pub const MIN_TOKEN_LEN: usize = 16;

/// Who a request's `Authorization` says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: may manage keys and settings.
    Admin,
    /// The feed token: a gateway (may read the feed, §8.3; nothing else).
    Feed,
    /// No bearer token, or one that is neither.
    Unknown,
}

/// The digests of the two tokens.
#[derive(Clone)]
pub struct Tokens {
    admin: [u8; 32],
    feed: [u8; 32],
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

impl Tokens {
    /// Reads the two token files.
    pub fn load(admin_file: &Path, feed_file: &Path) -> Result<Self, String> {
        let admin = read_token(admin_file, "--admin-token-file")?;
        let feed = read_token(feed_file, "--feed-token-file")?;
        Self::new(&admin, &feed)
    }

    /// Checks and keeps two tokens: each at least [`MIN_TOKEN_LEN`]
    /// visible ASCII characters, and different (a gateway holding the
    /// feed token must not be able to manage keys).
    pub fn new(admin: &str, feed: &str) -> Result<Self, String> {
        check_token(admin, "the admin token")?;
        check_token(feed, "the feed token")?;
        let (admin, feed) = (digest(admin.as_bytes()), digest(feed.as_bytes()));
        if bool::from(admin.ct_eq(&feed)) {
            return Err(
                "the admin token and the feed token are the same: give gateways a token of their own"
                    .to_owned(),
            );
        }
        Ok(Self { admin, feed })
    }

    /// Who presents this `Authorization` header value.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Caller {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Caller::Unknown;
        };
        let presented = digest(token);
        if bool::from(presented.ct_eq(&self.admin)) {
            Caller::Admin
        } else if bool::from(presented.ct_eq(&self.feed)) {
            Caller::Feed
        } else {
            Caller::Unknown
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn read_token(path: &Path, flag: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("{flag} {}: {error}", path.display()))?;
    Ok(text.trim().to_owned())
}

fn check_token(token: &str, what: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{what} is shorter than {MIN_TOKEN_LEN} characters (make one with: head -c 32 /dev/urandom | base64)"
        ));
    }
    if !token.bytes().all(|byte| (0x21..=0x7e).contains(&byte)) {
        return Err(format!(
            "{what} holds a character other than visible ASCII (it must fit an Authorization header)"
        ));
    }
    Ok(())
}

/// The token of `Bearer <token>` (scheme case-insensitive, spaces or tabs
/// around the token); `None` for any other scheme.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer")
        || !rest.first().is_some_and(|b| *b == b' ' || *b == b'\t')
    {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";
    const FEED: &str = "feed-token-0123456789";

    #[test]
    fn each_token_is_told_apart_and_anything_else_is_unknown() {
        let tokens = Tokens::new(ADMIN, FEED).unwrap();
        let who = |header: &str| tokens.identify(Some(header.as_bytes()));
        assert_eq!(who(&format!("Bearer {ADMIN}")), Caller::Admin);
        assert_eq!(who(&format!("bearer \t{ADMIN} ")), Caller::Admin);
        assert_eq!(who(&format!("Bearer {FEED}")), Caller::Feed);
        for other in [
            String::new(),
            "Bearer".to_owned(),
            format!("Bearer{ADMIN}"),
            format!("Basic {ADMIN}"),
            format!("Bearer {ADMIN}x"),
            format!("Bearer {}", &ADMIN[..ADMIN.len() - 1]),
        ] {
            assert_eq!(who(&other), Caller::Unknown, "{other:?}");
        }
        assert_eq!(tokens.identify(None), Caller::Unknown);
    }

    #[test]
    fn short_equal_or_unprintable_tokens_are_refused() {
        assert!(Tokens::new("short", FEED).is_err());
        assert!(Tokens::new(ADMIN, ADMIN).is_err());
        assert!(Tokens::new("admin token with spaces", FEED).is_err());
    }

    #[test]
    fn debug_shows_no_token() {
        let tokens = Tokens::new(ADMIN, FEED).unwrap();
        assert_eq!(format!("{tokens:?}"), "Tokens(<redacted>)");
    }
}
