//! What can go wrong in a command, and the exit code each kind of failure gets.
//!
//! Every failure ends the process with ONE line on stderr (`completions: ...`) and a
//! non-zero code that tells a script what kind of failure it was:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (also: `tail` stopped by Ctrl-C / SIGTERM, or by a closed stdout or stderr) |
//! | 1 | the server refused or failed an operation, a stream ended, or the output could not be written |
//! | 2 | usage: bad arguments, bad URL, bad cursor, bad namespace or tag |
//! | 3 | the server could not be reached (refused, unresolvable, timed out) |
//! | 4 | the server holds a schema or function library this build cannot use |
//! | 5, 6 | `wait`: an execution failed (5), or was cancelled and none failed (6) |
//! | 7 | `wait`: an execution does not exist |
//! | 124 | `wait`: the timeout passed first (as `timeout(1)` exits) |

use std::fmt;
use std::process::ExitCode;

use completions::EngineError;

/// The kind of a failure; it picks the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The server refused or failed an operation (exit 1).
    Failed,
    /// Bad arguments (exit 2, as clap's own usage errors).
    Usage,
    /// The server could not be reached (exit 3).
    Connect,
    /// Incompatible server state (exit 4).
    Incompatible,
    /// `wait`: an execution does not exist (exit 7).
    NotFound,
    /// `wait`: the timeout passed first (exit 124, as `timeout(1)`).
    TimedOut,
}

impl Kind {
    /// The process exit code of this kind.
    pub fn code(self) -> u8 {
        match self {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::Connect => 3,
            Kind::Incompatible => 4,
            Kind::NotFound => crate::wait::exit::NOT_FOUND,
            Kind::TimedOut => crate::wait::exit::TIMED_OUT,
        }
    }
}

/// A failed command: its kind and a one-line message.
#[derive(Debug)]
pub struct CliError {
    /// What kind of failure.
    pub kind: Kind,
    message: String,
}

impl CliError {
    /// A failure of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    /// The same failure with `context` before its message (`context: message`).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The exit code of this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.code())
    }

    /// The message as one line, with `secret` (a password from the URL) blanked out, in
    /// case a client library echoed it.
    pub fn line(&self, secret: Option<&str>) -> String {
        let mut line = self.message.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            line = line.replace(secret, "***");
        }
        line
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        let kind = match &e {
            EngineError::InvalidInput { .. } => Kind::Usage,
            EngineError::Transport { .. } | EngineError::Timeout { .. } => Kind::Connect,
            EngineError::Incompatible { .. } => Kind::Incompatible,
            _ => Kind::Failed,
        };
        // The source chain holds the useful part of a transport error ("Connection refused").
        let message = completions::error_chain(&e);
        Self::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_exit_codes() {
        let usage: CliError = EngineError::invalid("cursor", "x", "bad").into();
        assert_eq!(usage.kind, Kind::Usage);
        let connect: CliError = EngineError::transport("valkey", "connect", "Connection refused").into();
        assert_eq!(connect.kind, Kind::Connect);
        assert!(connect.to_string().contains("Connection refused"), "{connect}");
        let incompatible: CliError = EngineError::Incompatible { backend: "postgres", reason: "old".into() }.into();
        assert_eq!(incompatible.kind.code(), 4);
        let closed: CliError = EngineError::Closed { backend: "memory" }.into();
        assert_eq!(closed.kind.code(), 1);
    }

    #[test]
    fn the_line_is_one_line_without_the_secret() {
        let e = CliError::new(Kind::Failed, "auth failed\nfor u:hunter2@h");
        assert_eq!(e.line(Some("hunter2")), "auth failed for u:***@h");
    }
}
