//! The single error type of the crate.

use std::io;
use std::time::Duration;

/// Why starting, stopping or talking to a throwaway server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A server binary could not be found; the message says what to install.
    #[error("{what} not found: {hint}")]
    MissingBinary {
        /// The binary (and, when relevant, where it was looked for).
        what: String,
        /// How to install it or point the crate at it.
        hint: String,
    },
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The server process exited before it accepted connections.
    #[error("{server} on 127.0.0.1:{port} exited before accepting connections; log tail:\n{log}")]
    Exited {
        /// The server binary name.
        server: String,
        /// The port it was given.
        port: u16,
        /// The last lines it logged.
        log: String,
    },
    /// The server did not accept connections in time.
    #[error("{server} did not accept connections on 127.0.0.1:{port} within {timeout:?}; log tail:\n{log}")]
    Timeout {
        /// The server binary name.
        server: String,
        /// The port it was given.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// The last lines it logged.
        log: String,
    },
    /// A preparation step (initdb, copying a data directory, finding a user) failed.
    #[error("{what} failed: {detail}")]
    Setup {
        /// The step.
        what: String,
        /// What went wrong, including the tool's output.
        detail: String,
    },
    /// The operation needs a server started by this crate, not an external one.
    #[error("{operation} is not possible on an external server (given by {env_var})")]
    External {
        /// The refused operation, e.g. `restart`.
        operation: &'static str,
        /// The environment variable that named the external server.
        env_var: &'static str,
    },
    /// The server answered with an error reply.
    #[error("server replied with an error: {0}")]
    Reply(String),
    /// The server's answer could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A server URL could not be parsed (the URL itself is not repeated: it may hold a password).
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
}

impl ServerError {
    /// An [`ServerError::Io`] with its context.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
