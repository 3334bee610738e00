//! How failures of tokio-postgres and deadpool become [`EngineError`]s, and which of them
//! mean that the connection is gone (the only ones a pooled operation retries).
//!
//! A server error keeps its SQLSTATE as the error's [`code`](EngineError::code); connection
//! trouble (`57P01`/`57P02`/`57P03`, class `08`, an I/O error, a closed connection) is
//! `Transport`. The stored functions raise codes of their own (`CM001`-`CM003`, see the
//! migrations), which the callers turn into `NotFound`, `AlreadyTerminal` and `AlreadyExists`.

use std::fmt;
use std::time::Duration;

use completion_core::EngineError;
use deadpool_postgres::PoolError;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::BACKEND;

/// Raised by `finish_execution` for an unknown execution.
pub(crate) const NOT_FOUND: &str = "CM001";
/// Raised by `finish_execution` and `emit_completion` when the execution already completed;
/// the detail holds the first outcome.
pub(crate) const ALREADY_TERMINAL: &str = "CM002";
/// Raised by `create_execution` for an id in use.
pub(crate) const ALREADY_EXISTS: &str = "CM003";
/// The schema's tables (`42P01`, undefined table) or the schema itself (`3F000`) do not exist.
pub(crate) const NOT_MIGRATED: [&str; 2] = ["42P01", "3F000"];

/// Why one attempt of a pooled operation failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Pg(e) => write!(f, "{}", completion_core::error_chain(e)),
            Failure::Pool(e) => write!(f, "{e}"),
            Failure::Timeout(after) => write!(f, "timed out after {after:?}"),
        }
    }
}

impl Failure {
    /// Whether the attempt failed because its connection went away (so the statement did
    /// not commit, or committed with a token that makes the retry recognise it).
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Pg(e) | Failure::Pool(PoolError::Backend(e)) => connection_lost(e),
            _ => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Failure::Pg(e) => e.code().map(SqlState::code),
            _ => None,
        }
    }

    /// The server error's detail (the first outcome, with [`ALREADY_TERMINAL`]).
    pub fn detail(&self) -> Option<&str> {
        match self {
            Failure::Pg(e) => e.as_db_error().and_then(|db| db.detail()),
            _ => None,
        }
    }

    pub fn into_engine(self, op: &'static str) -> EngineError {
        match self {
            Failure::Timeout(after) => EngineError::Timeout { backend: BACKEND, op, after },
            Failure::Pool(PoolError::Backend(e)) | Failure::Pg(e) => pg_error(op, e),
            Failure::Pool(PoolError::Timeout(kind)) => {
                EngineError::transport(BACKEND, op, format!("timed out getting a pooled connection ({kind:?})"))
            }
            Failure::Pool(PoolError::Closed) => EngineError::Closed { backend: BACKEND },
            Failure::Pool(other) => EngineError::transport(BACKEND, op, other.to_string()),
        }
    }
}

/// Whether `e` means the connection is gone (as opposed to the statement being refused).
pub(crate) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("57P") || code.starts_with("08")
        }
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
        }
    }
}

/// Maps a tokio-postgres error: connection trouble is `Transport`, a server error `Server`.
/// A server error keeps its own message and its SQLSTATE as the error's
/// [`code`](EngineError::code) (tokio-postgres displays only "db error").
pub(crate) fn pg_error(op: &'static str, e: tokio_postgres::Error) -> EngineError {
    match e.as_db_error() {
        Some(db) => {
            if connection_lost(&e) {
                EngineError::transport(BACKEND, op, format!("{} (SQLSTATE {})", db.message(), db.code().code()))
            } else {
                EngineError::server_code(BACKEND, op, db.code().code(), db.message())
            }
        }
        None => EngineError::transport(BACKEND, op, e),
    }
}

/// A row value that does not decode is a schema this build does not understand.
pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, EngineError> {
    row.try_get(index).map_err(|e| EngineError::Incompatible {
        backend: BACKEND,
        reason: format!("unexpected value in result column {index}: {e}"),
    })
}

/// The first row of a statement that always answers one.
pub(crate) fn first_row<'a>(rows: &'a [Row], what: &str) -> Result<&'a Row, EngineError> {
    rows.first().ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: format!("no {what}") })
}
