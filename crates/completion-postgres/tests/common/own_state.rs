//! An engine that keeps its executions in a table of its own, in a schema of its own, and
//! emits completions with `PostgresBackend::emit_in` from the transaction that changes them:
//! the "bring your own state" path, as an `EngineBackend` the conformance suite can run.

use std::collections::BTreeMap;

use async_trait::async_trait;
use completion_core::{
    Completion, EngineBackend, EngineError, ExecutionId, ExecutionInfo, ExecutionState, FlowId, Namespace,
    NewExecution, Outcome, Reason, Tags,
};
use completion_postgres::PostgresBackend;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

/// The engine: a `jobs` table in `schema`, and the completion backend it emits through.
pub struct OwnStateEngine {
    pool: Pool,
    table: String,
    backend: PostgresBackend,
}

/// A test engine's error: connection trouble is transient (the suite retries it), the rest
/// a server error.
fn pg(op: &'static str, e: tokio_postgres::Error) -> EngineError {
    if e.as_db_error().is_none() || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
    {
        EngineError::transport("own-state engine", op, e)
    } else {
        EngineError::server("own-state engine", op, e.to_string())
    }
}

fn pool_error(op: &'static str, e: deadpool_postgres::PoolError) -> EngineError {
    EngineError::transport("own-state engine", op, e.to_string())
}

impl OwnStateEngine {
    /// Creates `schema.jobs` on the server of `url`; connections are named `application_name`.
    pub async fn create(url: &str, schema: &str, application_name: &str, backend: PostgresBackend) -> Self {
        let mut pg: tokio_postgres::Config = url.parse().expect("a postgres url");
        pg.application_name(application_name);
        let manager =
            Manager::from_config(pg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(8).build().expect("pool");
        let table = format!("\"{schema}\".jobs");
        let client = pool.get().await.expect("a connection");
        client
            .batch_execute(&format!(
                "CREATE SCHEMA \"{schema}\";
                 CREATE TABLE {table} (
                     id text PRIMARY KEY, namespace text NOT NULL, flow_id text, tags jsonb NOT NULL,
                     state text NOT NULL DEFAULT 'running', reason text,
                     created_at_ms bigint NOT NULL DEFAULT floor(extract(epoch FROM clock_timestamp()) * 1000),
                     completed_at_ms bigint)"
            ))
            .await
            .expect("create the engine's own table");
        Self { pool, table, backend }
    }

    async fn finish(&self, id: &ExecutionId, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        const OP: &str = "finish";
        let mut client = self.pool.get().await.map_err(|e| pool_error(OP, e))?;
        let tx = client.transaction().await.map_err(|e| pg(OP, e))?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE {} SET state = $2, reason = $3,
                         completed_at_ms = floor(extract(epoch FROM clock_timestamp()) * 1000)
                     WHERE id = $1 AND state = 'running' RETURNING namespace, flow_id, tags::text, completed_at_ms",
                    self.table
                ),
                &[&id.as_str(), &outcome.as_str(), &reason.map(Reason::as_str)],
            )
            .await
            .map_err(|e| pg(OP, e))?;
        let Some(row) = row else {
            let state = tx
                .query_opt(&format!("SELECT state FROM {} WHERE id = $1", self.table), &[&id.as_str()])
                .await
                .map_err(|e| pg(OP, e))?;
            return Err(match state {
                None => EngineError::NotFound(id.clone()),
                Some(row) => EngineError::AlreadyTerminal {
                    execution_id: id.clone(),
                    outcome: row.get::<_, String>(0).parse().expect("a stored outcome"),
                },
            });
        };
        let tags: BTreeMap<String, String> = serde_json::from_str(&row.get::<_, String>(2)).expect("stored tags");
        let mut completion = Completion::new(id.clone(), Namespace::new(row.get::<_, String>(0))?, outcome)
            .with_tags(Tags::from_pairs(tags)?)
            .with_completed_at_ms(row.get::<_, i64>(3) as u64);
        if let Some(flow) = row.get::<_, Option<String>>(1) {
            completion = completion.with_flow(FlowId::new(flow)?);
        }
        if let Some(reason) = reason {
            completion = completion.with_reason(reason.clone());
        }
        self.backend.emit_in(&tx, &completion).await?;
        tx.commit().await.map_err(|e| pg(OP, e))
    }
}

#[async_trait]
impl EngineBackend for OwnStateEngine {
    async fn create_execution(&self, execution: NewExecution) -> Result<(), EngineError> {
        const OP: &str = "create";
        let client = self.pool.get().await.map_err(|e| pool_error(OP, e))?;
        let tags: BTreeMap<&str, &str> = execution.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let tags = serde_json::to_string(&tags).expect("tags serialize");
        let inserted = client
            .execute(
                &format!(
                    "INSERT INTO {} (id, namespace, flow_id, tags) VALUES ($1, $2, $3, $4::text::jsonb)
                     ON CONFLICT (id) DO NOTHING",
                    self.table
                ),
                &[
                    &execution.id.as_str(),
                    &execution.namespace.as_str(),
                    &execution.flow_id.as_ref().map(FlowId::as_str),
                    &tags,
                ],
            )
            .await
            .map_err(|e| pg(OP, e))?;
        if inserted == 0 {
            return Err(EngineError::AlreadyExists(execution.id));
        }
        Ok(())
    }

    async fn complete(&self, id: &ExecutionId) -> Result<(), EngineError> {
        self.finish(id, Outcome::Succeeded, None).await
    }

    async fn fail(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.finish(id, Outcome::Failed, Some(reason)).await
    }

    async fn cancel(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.finish(id, Outcome::Cancelled, Some(reason)).await
    }

    async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        const OP: &str = "describe";
        let client = self.pool.get().await.map_err(|e| pool_error(OP, e))?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT namespace, flow_id, tags::text, state, reason, created_at_ms, completed_at_ms FROM {} WHERE id = $1",
                    self.table
                ),
                &[&id.as_str()],
            )
            .await
            .map_err(|e| pg(OP, e))?
            .ok_or_else(|| EngineError::NotFound(id.clone()))?;
        let tags: BTreeMap<String, String> = serde_json::from_str(&row.get::<_, String>(2)).expect("stored tags");
        let state: String = row.get(3);
        let state = match state.as_str() {
            "running" => ExecutionState::Active,
            other => ExecutionState::Terminal(other.parse()?),
        };
        Ok(ExecutionInfo::new(id.clone(), Namespace::new(row.get::<_, String>(0))?, state)
            .with_flow(row.get::<_, Option<String>>(1).map(FlowId::new).transpose()?)
            .with_tags(Tags::from_pairs(tags)?)
            .with_reason(row.get::<_, Option<String>>(4).map(Reason::new).transpose()?)
            .with_created_at_ms(row.get::<_, i64>(5) as u64)
            .with_completed_at_ms(row.get::<_, Option<i64>>(6).map(|t| t as u64)))
    }
}
