//! The connections to the server, and the only modules that drive tokio-postgres and
//! deadpool: the pool every statement runs on ([`Conn`]), the dedicated LISTEN connection
//! ([`listener`]), how both are built ([`build`]) and how their errors map to
//! [`EngineError`] ([`errors`]).
//!
//! Contract of the pool: every pooled operation runs through [`Conn::run`], within
//! `command_timeout` (waiting for a connection and retries included; enforced on the
//! client side, so it also holds behind PgBouncer). An operation is retried (up to
//! [`MAX_ATTEMPTS`] times) only when its connection was closed or terminated
//! ([`Failure::retryable`]). A terminal write or a create that is retried after its reply was
//! lost carries the same random token as the first attempt, so the stored function
//! recognises its own earlier success instead of reporting `AlreadyTerminal` /
//! `AlreadyExists`. Any other error is returned at once.

pub(crate) mod build;
pub(crate) mod errors;
pub(crate) mod listener;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use completion_core::EngineError;
use completion_core::backoff::Backoff;
use deadpool_postgres::{Object, Pool, PoolError};
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use self::errors::Failure;
use crate::BACKEND;
use crate::schema::{PING, Schema, Sql};
use crate::stats::Stats;

/// Attempts of one operation whose connection failed.
const MAX_ATTEMPTS: u32 = 4;

/// The pauses before retrying an operation whose connection was lost: 20 ms, then five times
/// longer each time (100 ms, 500 ms), so that a server restart has time to finish.
fn lost_connection_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).with_factor(5)
}

/// The pool of one instance, its statements, and the one way they run.
pub(crate) struct Conn {
    pool: Pool,
    sql: Sql,
    schema: Schema,
    /// `command_timeout`.
    timeout: Option<Duration>,
    connect_timeout: Duration,
    stats: Arc<Stats>,
}

impl Conn {
    pub fn new(
        pool: Pool,
        schema: Schema,
        timeout: Option<Duration>,
        connect_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Self { pool, sql: Sql::new(&schema), schema, timeout, connect_timeout, stats }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Every statement of the instance.
    pub fn sql(&self) -> &Sql {
        &self.sql
    }

    /// Closes the pool: idle connections go now, busy ones when returned.
    pub fn close(&self) {
        self.pool.close();
    }

    /// The answer of a pipelined read transaction (`BEGIN` … `COMMIT` sent in one round
    /// trip) on `client`. A failed one may have left its transaction open, or session locks
    /// held (the in-flight check, migrations/V3): its connection must not go back to the pool,
    /// so it is taken out and closed, which ends its session and everything the session held.
    pub(crate) fn after_transaction<T>(
        client: Object,
        answer: Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        if answer.is_err() {
            drop(Object::take(client));
        }
        answer
    }

    /// Runs `attempt` on a pooled connection, retrying on lost connections, within the
    /// `command_timeout`. A loop of its own rather than `Retry`: each attempt's future
    /// borrows `attempt`, and a deadline that cuts the retries short answers `Timeout`.
    pub async fn run<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut(Object) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        let mut pauses = lost_connection_backoff();
        let mut tries = 0;
        loop {
            tries += 1;
            let once = async {
                let client = self.pool.get().await.map_err(|e| match e {
                    // Connecting (or checking a connection) took longer than connect_timeout.
                    PoolError::Timeout(_) => Failure::Timeout(self.connect_timeout),
                    other => Failure::Pool(other),
                })?;
                attempt(client).await.map_err(Failure::Pg)
            };
            let result = match deadline {
                Some((at, limit)) => tokio::time::timeout_at(at, once).await.unwrap_or(Err(Failure::Timeout(limit))),
                None => once.await,
            };
            match result {
                Err(failure) if tries < MAX_ATTEMPTS && failure.retryable() => {
                    let pause = pauses.next_pause();
                    if let Some((at, limit)) = deadline
                        && Instant::now() + pause >= at
                    {
                        return Err(Failure::Timeout(limit));
                    }
                    self.stats.retries.bump();
                    tracing::debug!(backend = BACKEND, op, attempt = tries, error = ?failure, ?pause, "connection lost; retrying");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// One statement (prepared once per connection) returning its rows.
    pub async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Failure> {
        self.run(op, |client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await
    }

    /// [`query`](Self::query), its failure mapped to an [`EngineError`] naming `op`.
    pub async fn rows(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, EngineError> {
        self.query(op, sql, params).await.map_err(|f| f.into_engine(op))
    }

    /// Checks that a connection can be made and used.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.rows("connect", PING, &[]).await.map(drop)
    }
}
