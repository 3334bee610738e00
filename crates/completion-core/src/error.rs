//! The one error type of every backend.

use std::time::Duration;

use crate::{ExecutionId, Outcome};

/// `error` and its sources as one line, `error: source: source of source`, leaving out a
/// source whose text the line already holds. For messages that must say why: a client's
/// error often names only what failed ("error connecting to server") and its source why
/// ("Connection refused (os error 111)").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = next.source();
    }
    line
}

/// A boxed error from a client library, kept as the `source` of [`EngineError::Transport`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong. Every message names the value or the operation at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The backend does not offer this operation (or this form of it).
    #[error("{op} is not available on this backend: {reason}")]
    Unavailable {
        /// The operation that was asked for.
        op: &'static str,
        /// Why it is not available.
        reason: String,
    },
    /// The server could not be reached or the connection failed during `op`.
    #[error("{backend} transport error during {op}: {source}")]
    Transport {
        /// The backend's name (`memory`, `valkey`, `postgres`).
        backend: &'static str,
        /// The operation that failed.
        op: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
    /// `op` did not finish within its configured time limit.
    #[error("{backend}: {op} timed out after {after:?}")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// The operation that timed out.
        op: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// A value given by the caller was refused.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        /// What kind of value (`namespace`, `cursor`, ...).
        what: &'static str,
        /// The value itself, cut to 200 characters.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// No execution has this id.
    #[error("execution {0} not found")]
    NotFound(ExecutionId),
    /// An execution with this id exists already.
    #[error("execution {0} already exists")]
    AlreadyExists(ExecutionId),
    /// The execution already reached a terminal state; nothing was written or published.
    #[error("execution {execution_id} is already terminal ({outcome})")]
    AlreadyTerminal {
        /// The execution.
        execution_id: ExecutionId,
        /// The outcome it reached first.
        outcome: Outcome,
    },
    /// The server holds a schema or function library this build cannot use.
    #[error("{backend}: incompatible server state: {reason}")]
    Incompatible {
        /// The backend's name.
        backend: &'static str,
        /// What does not match (versions found and expected).
        reason: String,
    },
    /// The server answered `op` with an error that is not one of the above.
    #[error("{backend}: {op} failed: {message}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Server {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        op: &'static str,
        /// The server's code for the error, when it gives one: the SQLSTATE on PostgreSQL
        /// (`57P01`, `CM005`, ...), the error reply's first word on Valkey (`ERR`,
        /// `NOSCRIPT`, `COMPLETIONS_NOT_FOUND`, ...). See [`EngineError::code`].
        code: Option<String>,
        /// The server's message, without the code.
        message: String,
    },
    /// The backend was shut down or dropped.
    #[error("{backend}: backend is closed")]
    Closed {
        /// The backend's name.
        backend: &'static str,
    },
}

impl EngineError {
    /// An [`EngineError::InvalidInput`], cutting `value` to 200 characters so that a huge
    /// input cannot flood a log line.
    pub fn invalid(what: &'static str, value: impl AsRef<str>, reason: impl Into<String>) -> Self {
        let value = value.as_ref();
        let value = match value.char_indices().nth(200) {
            Some((at, _)) => format!("{}...", &value[..at]),
            None => value.to_string(),
        };
        EngineError::InvalidInput { what, value, reason: reason.into() }
    }

    /// An [`EngineError::Transport`] wrapping a client error.
    pub fn transport(backend: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        EngineError::Transport { backend, op, source: source.into() }
    }

    /// An [`EngineError::Server`] without a code.
    pub fn server(backend: &'static str, op: &'static str, message: impl Into<String>) -> Self {
        EngineError::Server { backend, op, code: None, message: message.into() }
    }

    /// An [`EngineError::Server`] with the server's error code.
    pub fn server_code(
        backend: &'static str,
        op: &'static str,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        EngineError::Server { backend, op, code: Some(code.into()), message: message.into() }
    }

    /// The server's error code of an [`EngineError::Server`] (SQLSTATE on PostgreSQL, the
    /// error reply's first word on Valkey), to match on instead of the message.
    pub fn code(&self) -> Option<&str> {
        match self {
            EngineError::Server { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// An [`EngineError::Unavailable`].
    pub fn unavailable(op: &'static str, reason: impl Into<String>) -> Self {
        EngineError::Unavailable { op, reason: reason.into() }
    }

    /// Whether retrying the same call later may succeed (transport trouble, time-outs).
    pub fn is_transient(&self) -> bool {
        matches!(self, EngineError::Transport { .. } | EngineError::Timeout { .. })
    }
}
