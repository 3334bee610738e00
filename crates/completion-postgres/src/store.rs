//! The write side of one instance and its lookups: creating executions, terminal writes,
//! emitting from the caller's own transaction, `describe`, the completion lookup, and
//! trimming the log to retention.
//!
//! Every write is one stored function (see the migrations): `finish_execution` checks,
//! writes the state, appends the event to the completion log and NOTIFYs, all in one
//! transaction; Rust never issues NOTIFY. A pooled write that lost its connection is retried
//! with the same token ([`Conn::run`]), so the function recognises its own earlier success.
//!
//! Emitting (`PostgresBackend::emit_in`) runs `emit_completion` on the caller's transaction,
//! not on the pool: the event is appended and notified exactly as a terminal write's, and
//! commits or rolls back with the caller's own state change.

use std::sync::Arc;
use std::time::Duration;

use completion_core::hub::Position;
use completion_core::{
    Completion, EngineError, ExecutionId, ExecutionInfo, ExecutionState, FlowId, Namespace, NewExecution, Outcome,
    Reason, Retention, RetentionReport,
};
use tokio_postgres::types::{ToSql, Type};

use crate::BACKEND;
use crate::conn::Conn;
use crate::conn::errors::{ALREADY_EXISTS, ALREADY_TERMINAL, NOT_FOUND, column, first_row, pg_error};
use crate::log::Log;
use crate::position::PgPosition;
use crate::stats::Stats;
use crate::wire::{parse_tags, tags_json};

/// Whether a second completion of the same execution is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Refused with `AlreadyTerminal` while the log retains a completion of the execution.
    Refuse,
    /// Appended all the same.
    Allow,
}

/// The writes and lookups of one instance.
pub(crate) struct Store {
    conn: Arc<Conn>,
    stats: Arc<Stats>,
    /// Whether terminal writes coalesce their NOTIFYs (`PostgresConfig::coalesce_notify`).
    coalesce: bool,
}

impl Store {
    pub fn new(conn: Arc<Conn>, stats: Arc<Stats>, coalesce: bool) -> Self {
        Self { conn, stats, coalesce }
    }

    pub async fn create(&self, execution: &NewExecution) -> Result<(), EngineError> {
        const OP: &str = "create_execution";
        let tags = tags_json(&execution.tags);
        let token = uuid::Uuid::new_v4().to_string();
        let flow = execution.flow_id.as_ref().map(FlowId::as_str);
        let params: [&(dyn ToSql + Sync); 5] =
            [&execution.id.as_str(), &execution.namespace.as_str(), &flow, &tags, &token];
        match self.conn.query(OP, &self.conn.sql().create, &params).await {
            Ok(_) => Ok(()),
            Err(f) if f.sqlstate() == Some(ALREADY_EXISTS) => Err(EngineError::AlreadyExists(execution.id.clone())),
            Err(f) => Err(f.into_engine(OP)),
        }
    }

    /// The terminal transition; returns its server-side time.
    pub async fn finish(
        &self,
        id: &ExecutionId,
        outcome: Outcome,
        reason: Option<&Reason>,
    ) -> Result<u64, EngineError> {
        const OP: &str = "terminal write";
        let token = uuid::Uuid::new_v4().to_string();
        let reason = reason.map(Reason::as_str);
        let params: [&(dyn ToSql + Sync); 5] = [&id.as_str(), &outcome.as_str(), &reason, &token, &self.coalesce];
        match self.conn.query(OP, &self.conn.sql().finish, &params).await {
            Ok(rows) => {
                let at: Option<i64> = match rows.first() {
                    Some(row) => column(row, 0)?,
                    None => None,
                };
                Ok(at.unwrap_or_default().max(0) as u64)
            }
            Err(f) if f.sqlstate() == Some(NOT_FOUND) => Err(EngineError::NotFound(id.clone())),
            Err(f) if f.sqlstate() == Some(ALREADY_TERMINAL) => {
                Err(already_terminal(id, f.detail().unwrap_or_default(), "finish_execution"))
            }
            Err(f) => Err(f.into_engine(OP)),
        }
    }

    /// Runs `emit_completion` for `completion` on `tx`.
    pub async fn emit(
        &self,
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
        let at = completion.completed_at_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let params: [(&(dyn ToSql + Sync), Type); 10] = [
            (&completion.execution_id.as_str(), Type::TEXT),
            (&completion.namespace.as_str(), Type::TEXT),
            (&completion.outcome.as_str(), Type::TEXT),
            (&reason, Type::TEXT),
            (&flow, Type::TEXT),
            (&tags, Type::TEXT),
            (&token, Type::TEXT),
            (&allow, Type::BOOL),
            (&self.coalesce, Type::BOOL),
            (&at, Type::INT8),
        ];
        // Typed parameters: no separate prepare round trip on the caller's connection.
        match tx.query_typed(&self.conn.sql().emit, &params).await {
            Ok(_) => Ok(()),
            Err(e) if e.code().map(|c| c.code()) == Some(ALREADY_TERMINAL) => {
                let first = e.as_db_error().and_then(|db| db.detail()).unwrap_or_default();
                Err(already_terminal(&completion.execution_id, first, "emit_completion"))
            }
            Err(e) => Err(pg_error(OP, e)),
        }
    }

    pub async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        const OP: &str = "describe";
        let rows = self.conn.rows(OP, &self.conn.sql().describe, &[&id.as_str()]).await?;
        let row = rows.first().ok_or_else(|| EngineError::NotFound(id.clone()))?;
        let stored = |what: &'static str, e: EngineError| EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("stored {what} of execution {id} is invalid: {e}"),
        };
        let namespace = Namespace::new(column::<String>(row, 1)?).map_err(|e| stored("namespace", e))?;
        let flow_id =
            column::<Option<String>>(row, 2)?.map(FlowId::new).transpose().map_err(|e| stored("flow id", e))?;
        let tags = parse_tags(&column::<String>(row, 3)?).map_err(|e| stored("tags", e))?;
        let state: String = column(row, 4)?;
        let state = match state.as_str() {
            "active" => ExecutionState::Active,
            other => ExecutionState::Terminal(other.parse().map_err(|e| stored("state", e))?),
        };
        let reason = column::<Option<String>>(row, 5)?.map(Reason::new).transpose().map_err(|e| stored("reason", e))?;
        let created: i64 = column(row, 6)?;
        let completed: Option<i64> = column(row, 7)?;
        Ok(ExecutionInfo::new(id.clone(), namespace, state)
            .with_flow(flow_id)
            .with_tags(tags)
            .with_reason(reason)
            .with_created_at_ms(created.max(0) as u64)
            .with_completed_at_ms(completed.map(|c| c.max(0) as u64)))
    }

    /// The first completion of `id` the log retains: its outcome and completion time.
    pub async fn completion_of(&self, id: &ExecutionId) -> Result<Option<(Outcome, u64)>, EngineError> {
        const OP: &str = "completion lookup";
        let rows = self.conn.rows(OP, &self.conn.sql().completion_of, &[&id.as_str()]).await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let outcome: Outcome = column::<String>(row, 0)?.parse()?;
                Ok(Some((outcome, column::<i64>(row, 1)?.max(0) as u64)))
            }
        }
    }

    /// Trims the log to `retention` (`prune_tickets()`); the report's watermark is the
    /// cursor of the newest pruned ticket. Events above the final ticket cannot be pruned
    /// yet: it first waits (up to `settle`, with [`Log::head`]) for the writers that hold it
    /// back, so that a trim right after writes is exact.
    pub async fn enforce_retention(
        &self,
        log: &Log,
        retention: &Retention,
        settle: Duration,
    ) -> Result<RetentionReport, EngineError> {
        const OP: &str = "enforce retention";
        if retention.max_events.is_none() && retention.max_age_secs.is_none() {
            return Ok(RetentionReport::removed(0));
        }
        log.head(settle).await?;
        let max_events = retention.max_events.map(|n| n.min(i64::MAX as u64) as i64);
        let max_age_ms = retention.max_age_secs.map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
        let rows = self.conn.rows(OP, &self.conn.sql().prune, &[&max_events, &max_age_ms]).await?;
        let row = first_row(&rows, "prune result")?;
        let removed = column::<i64>(row, 0)?.max(0) as u64;
        let watermark = column::<Option<i64>>(row, 1)?.map(PgPosition::at).filter(|w| *w != PgPosition::ORIGIN);
        self.stats.prune_runs.bump();
        self.stats.pruned_events.add(removed);
        let report = RetentionReport::removed(removed);
        Ok(match watermark {
            Some(watermark) => report.with_watermark(watermark.to_cursor()),
            None => report,
        })
    }
}

/// `AlreadyTerminal` with the first outcome, as `function` reported it in its error's detail.
fn already_terminal(id: &ExecutionId, first: &str, function: &str) -> EngineError {
    match first.parse() {
        Ok(outcome) => EngineError::AlreadyTerminal { execution_id: id.clone(), outcome },
        Err(_) => EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("{function} reported the unknown terminal state {first:?}"),
        },
    }
}
