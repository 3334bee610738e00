//! Emitting a completion from the caller's own transaction (issue "bring your own state"):
//! for engines that keep their executions in tables of their own.
//!
//! [`PostgresBackend::emit_in`](crate::PostgresBackend::emit_in) runs `emit_completion` (schema
//! version 4) on the caller's transaction: it appends the event to the completion log and
//! notifies exactly as the built-in terminal write does, so the event commits or rolls back
//! with the caller's own state change, and subscribers see it in the same ordered log.
//! Nothing here uses the pool: the statement goes over the caller's connection.

use completion_core::{Completion, EngineError, Outcome};
use tokio_postgres::types::Type;

use crate::BACKEND;
use crate::db::{ALREADY_TERMINAL, Db, pg_error, tags_json};

/// Whether a second completion of the same execution is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Refused with `AlreadyTerminal` while the log retains a completion of the execution.
    Refuse,
    /// Appended all the same.
    Allow,
}

/// Runs `emit_completion` for `completion` on `tx`.
pub(crate) async fn emit(
    db: &Db,
    tx: &tokio_postgres::Transaction<'_>,
    completion: &Completion,
    repeat: Repeat,
) -> Result<(), EngineError> {
    const OP: &str = "emit_completion";
    let tags = tags_json(&completion.tags);
    let reason = completion.reason.as_ref().map(|r| r.as_str());
    let flow = completion.flow_id.as_ref().map(|f| f.as_str());
    let token: Option<&str> = None; // a lost reply cannot be retried in the same transaction
    let allow = repeat == Repeat::Allow;
    let coalesce = db.coalesce();
    let at = completion.completed_at_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::BOOL,
        Type::INT8,
    ];
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 10] = [
        (&completion.execution_id.as_str(), types[0].clone()),
        (&completion.namespace.as_str(), types[1].clone()),
        (&completion.outcome.as_str(), types[2].clone()),
        (&reason, types[3].clone()),
        (&flow, types[4].clone()),
        (&tags, types[5].clone()),
        (&token, types[6].clone()),
        (&allow, types[7].clone()),
        (&coalesce, types[8].clone()),
        (&at, types[9].clone()),
    ];
    // Typed parameters: no separate prepare round trip on the caller's connection.
    match tx.query_typed(&db.sql().emit, &params).await {
        Ok(_) => Ok(()),
        Err(e) if e.code().map(|c| c.code()) == Some(ALREADY_TERMINAL) => {
            let first = e.as_db_error().and_then(|db| db.detail()).unwrap_or_default();
            let outcome: Outcome = first.parse().map_err(|_| EngineError::Incompatible {
                backend: BACKEND,
                reason: format!("emit_completion reported the unknown outcome {first:?}"),
            })?;
            Err(EngineError::AlreadyTerminal { execution_id: completion.execution_id.clone(), outcome })
        }
        Err(e) => Err(pg_error(OP, e)),
    }
}
