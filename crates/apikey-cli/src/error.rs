//! The two ways a command fails, and the exit code of each.
//!
//! Scripts tell a mistake in the command line (exit 2: fix the invocation)
//! from a refusal (exit 1: the state, the files or the request itself say
//! no). Either is one line on stderr; neither ever holds a raw key.

use core::fmt;

/// A failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The command line is wrong: unknown flag, missing value, bad duration.
    Usage(String),
    /// The operation was refused: invalid state, unknown id, limit reached,
    /// an I/O error.
    Refused(String),
}

impl CliError {
    /// Exit code: 2 for usage, 1 for a refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Refused(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => write!(f, "{message} (see apikey help)"),
            Self::Refused(message) => f.write_str(message),
        }
    }
}

/// Shorthand for a usage error.
pub fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Shorthand for a refusal.
pub fn refused(message: impl Into<String>) -> CliError {
    CliError::Refused(message.into())
}
