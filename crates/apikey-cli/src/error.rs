//! The two ways a command fails, the exit code of each, and the code a
//! script reads from `--json` errors.
//!
//! Scripts tell a mistake in the command line (exit 2: fix the invocation)
//! from a refusal (exit 1: the database, the service, the files or the
//! request itself say no). Either is one line on stderr, `apikey: <message>`, or with `--json`
//! the object `{"error": {"code": ..., "message": ...}}`, also on stderr,
//! so stdout only ever holds results. Neither ever holds a raw key.

use core::fmt;

/// Why a command was refused, as `--json` errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The file `import-state` reads is not a valid state file, or the
    /// configuration a database describes is invalid.
    InvalidState,
    /// There is no state file where `import-state` was pointed.
    NoState,
    /// There is no database where `--db` (or the default) points, for a
    /// command that reads or changes one.
    NoDatabase,
    /// `init` or `import-state` on a database that holds settings or keys.
    AlreadyExists,
    /// A file, the lock, the random source or an output stream failed.
    IoError,
    /// Any other refusal (an expiry in the past, a file of the wrong shape).
    Refused,
    /// A refusal of the key service (`--db` or `--server`), with the
    /// service's own code (`invalid_request`, `not_found`, `conflict`,
    /// `key_limit_reached`, ...), the same whichever way it was reached.
    Service(apikey_service::error::Kind),
}

impl Code {
    /// The code as `--json` errors spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidState => "invalid_state",
            Self::NoState => "no_state",
            Self::NoDatabase => "no_database",
            Self::AlreadyExists => "already_exists",
            Self::IoError => "io_error",
            Self::Refused => "refused",
            Self::Service(kind) => kind.code(),
        }
    }
}

/// A failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The command line is wrong: unknown flag, missing value, bad duration.
    Usage(String),
    /// The operation was refused: unknown id, limit reached, an invalid
    /// request, an I/O error.
    Refused(Code, String),
}

impl CliError {
    /// Exit code: 2 for usage, 1 for a refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Refused(..) => 1,
        }
    }

    /// `usage`, or the refusal's [`Code`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Refused(code, _) => code.as_str(),
        }
    }

    /// The message without the `apikey: ` a person sees before it.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The `--json` form: `{"error": {"code": ..., "message": ...}}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"error": {"code": self.code(), "message": self.message()}}).to_string()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Refused(_, message) => f.write_str(message),
        }
    }
}

/// Shorthand for a usage error; points at the help unless the message
/// already says where to look.
pub fn usage(message: impl Into<String>) -> CliError {
    let message = message.into();
    if message.contains("--help") || message.contains("apikey help") {
        CliError::Usage(message)
    } else {
        CliError::Usage(format!("{message} (see apikey help)"))
    }
}

impl From<apikey_service::error::ApiError> for CliError {
    fn from(error: apikey_service::error::ApiError) -> Self {
        Self::Refused(Code::Service(error.kind), error.message)
    }
}

/// Shorthand for a refusal without a more precise code.
pub fn refused(message: impl Into<String>) -> CliError {
    CliError::Refused(Code::Refused, message.into())
}

/// Shorthand for a refusal with its code.
pub fn refused_as(code: Code, message: impl Into<String>) -> CliError {
    CliError::Refused(code, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_carry_the_code_and_the_message_people_see() {
        let error = refused_as(Code::NoDatabase, "no database at keys.db");
        let value: serde_json::Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": {"code": "no_database", "message": "no database at keys.db"}})
        );
        assert_eq!(error.exit_code(), 1);
        let mistake = usage("--bogus is not an option");
        assert_eq!(mistake.code(), "usage");
        assert_eq!(mistake.exit_code(), 2);
        assert!(
            mistake.message().ends_with("(see apikey help)"),
            "{mistake}"
        );
    }
}
