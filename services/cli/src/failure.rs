//! How a command fails: an exit code a script can branch on, a message
//! that says what went wrong, and a hint that says what to do next.
//! `main` prints it as `error: …` / `hint: …` on stderr and exits with the
//! code; nothing else in the crate calls `process::exit`.

use std::fmt;

/// The exit codes, documented in `pushmesh --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The server refused the request, or anything else went wrong.
    Failed = 1,
    /// A flag or argument is missing or malformed.
    Usage = 2,
    /// pushmesh could not be reached (not running, not ready, no hub).
    Unreachable = 3,
    /// `listen --timeout` passed before `--count` messages arrived.
    Timeout = 4,
    /// The gateway closed the connection.
    Closed = 5,
}

#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into(), hint: None }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unreachable, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn code(&self) -> u8 {
        self.exit as u8
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Anything unexpected (I/O on stdout, a bug) is a plain failure.
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::failed(format!("{e:#}"))
    }
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;
