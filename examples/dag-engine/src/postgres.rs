//! The own-state mode on PostgreSQL: [`PostgresTasks`] keeps the engine's tasks in a table
//! of its own (`<schema>.tasks`, in a schema of the engine's own) and emits each completion
//! from the transaction that ends the task, with [`PostgresBackend::emit_in`]:
//!
//! ```sql
//! BEGIN;
//! UPDATE <schema>.tasks SET state = $outcome ... WHERE id = $1 AND state = 'running';
//! -- one row updated: emit_in(&tx, &Completion { id, namespace, outcome, flow, reason })
//! COMMIT; -- the task's end and its completion, together or not at all
//! ```
//!
//! The `WHERE state = 'running'` guard is the once-only check: a retried finish (its first
//! attempt committed, the reply lost to a killed connection) updates no row and answers
//! [`EngineError::AlreadyTerminal`] with the outcome the table holds. The connections are the
//! engine's own (a small pool), to the backend's database, with their own
//! `application_name` ([`PostgresTasks::application_name`]) so that a fault injector can
//! find and kill them too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use completions::postgres::PostgresBackend;
use completions::{Completion, EngineError, ExecutionId, ExecutionState, NewExecution, Outcome, Reason};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::store::TaskStore;

const OP: &str = "tasks table";

/// The engine's own task table on PostgreSQL, emitting through `backend`.
pub struct PostgresTasks {
    backend: Arc<PostgresBackend>,
    pool: Pool,
    schema: String,
    application_name: String,
}

impl PostgresTasks {
    /// Connects to `url` (the backend's database), creates `schema` and its `tasks` table if
    /// missing, and emits through `backend`. `schema` is an unquoted lowercase identifier
    /// (letters, digits, `_`). The connections carry `application_name`.
    pub async fn connect(
        backend: Arc<PostgresBackend>,
        url: &str,
        schema: &str,
        application_name: &str,
    ) -> Result<Self, EngineError> {
        if schema.is_empty()
            || schema.len() > 63
            || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(EngineError::invalid("schema", schema, "use lowercase letters, digits and _ (63 at most)"));
        }
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| EngineError::invalid("PostgreSQL URL", "(hidden)", format!("{e}")))?;
        config.application_name(application_name);
        config.connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| EngineError::invalid("pool", "8", e.to_string()))?;
        let tasks = Self { backend, pool, schema: schema.to_string(), application_name: application_name.to_string() };
        let client = tasks.client().await?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.tasks (
                     id          text PRIMARY KEY,
                     namespace   text NOT NULL,
                     flow        text,
                     state       text NOT NULL DEFAULT 'running'
                                 CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
                     reason      text,
                     started_at  timestamptz NOT NULL DEFAULT now(),
                     finished_at timestamptz
                 );"
            ))
            .await
            .map_err(pg_error)?;
        Ok(tasks)
    }

    /// The schema of the engine's table.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The `application_name` of the engine's own connections (in `pg_stat_activity`).
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    async fn client(&self) -> Result<Object, EngineError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => pg_error(e),
            other => EngineError::transport("postgres", OP, other.to_string()),
        })
    }
}

#[async_trait]
impl TaskStore for PostgresTasks {
    fn describe(&self) -> String {
        format!("own table {}.tasks, completions from its transactions (emit_in)", self.schema)
    }

    async fn start(&self, task: &NewExecution) -> Result<(), EngineError> {
        let client = self.client().await?;
        let flow = task.flow_id.as_ref().map(|f| f.as_str());
        let inserted = client
            .execute(
                &format!("INSERT INTO {}.tasks (id, namespace, flow) VALUES ($1, $2, $3)", self.schema),
                &[&task.id.as_str(), &task.namespace.as_str(), &flow],
            )
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(EngineError::AlreadyExists(task.id.clone())),
            Err(e) => Err(pg_error(e)),
        }
    }

    async fn finish(&self, task: &NewExecution, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE {}.tasks SET state = $2, reason = $3, finished_at = now()
                     WHERE id = $1 AND state = 'running' RETURNING namespace, flow",
                    self.schema
                ),
                &[&task.id.as_str(), &outcome.as_str(), &reason.map(Reason::as_str)],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            // Not running: ended before (by an earlier attempt of ours), or never started.
            let state: Option<String> = tx
                .query_opt(&format!("SELECT state FROM {}.tasks WHERE id = $1", self.schema), &[&task.id.as_str()])
                .await
                .map_err(pg_error)?
                .map(|row| row.get(0));
            return Err(match state.as_deref().map(str::parse::<Outcome>) {
                None => EngineError::NotFound(task.id.clone()),
                Some(Ok(first)) => EngineError::AlreadyTerminal { execution_id: task.id.clone(), outcome: first },
                Some(Err(_)) => EngineError::server(
                    "postgres",
                    OP,
                    format!("task {} is {state:?} after an update of running tasks", task.id),
                ),
            });
        };
        // The completion from the engine's own row: what the subscribers will see.
        let namespace = completions::Namespace::new(row.get::<_, String>(0))?;
        let mut completion = Completion::new(task.id.clone(), namespace, outcome);
        if let Some(flow) = row.get::<_, Option<String>>(1) {
            completion = completion.with_flow(completions::FlowId::new(flow)?);
        }
        if let Some(reason) = reason {
            completion = completion.with_reason(reason.clone());
        }
        self.backend.emit_in(&tx, &completion).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, EngineError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT state FROM {}.tasks WHERE id = $1", self.schema), &[&id.as_str()])
            .await
            .map_err(pg_error)?
            .ok_or_else(|| EngineError::NotFound(id.clone()))?;
        let state: String = row.get(0);
        match state.as_str() {
            "running" => Ok(ExecutionState::Active),
            other => Ok(ExecutionState::Terminal(other.parse()?)),
        }
    }
}

/// Connection trouble (connection exceptions, the server shutting down or starting up, a
/// closed or broken socket) is transient; any other server error is not.
fn pg_error(e: tokio_postgres::Error) -> EngineError {
    let lost = match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => true, // no server verdict: I/O, closed connection
    };
    match e.as_db_error() {
        Some(db) if !lost => EngineError::server_code("postgres", OP, db.code().code(), db.message()),
        _ => EngineError::transport("postgres", OP, e),
    }
}
