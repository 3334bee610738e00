//! The PostgreSQL completion backend: stored functions that write, log and NOTIFY in one
//! transaction, and gap-free LISTEN subscriptions on top of the shared
//! [`hub`](completion_core::hub).
//!
//! - **Write side** ([`EngineBackend`]): `create_execution` and the terminal transitions
//!   call stored functions (`create_execution`, `finish_execution`) through a deadpool pool.
//!   `finish_execution` checks, writes the state, appends the event to `completion_log`
//!   (namespace and tags copied in) and NOTIFYs — all in the caller's transaction. Rust
//!   never issues NOTIFY.
//! - **Subscribe side** ([`CompletionBackend`](completion_core::CompletionBackend)): one dedicated LISTEN connection per
//!   instance, shared by all its streams; each wake-up runs one log read that serves every
//!   stream. A notification carries its transaction's first event, delivered at once when
//!   it follows the feed's position; the log stays the source of truth, so a lost one
//!   (restart, killed connection) only delays events until the next wake-up (reconnect, or
//!   the safety timer).
//! - **Order**: the log is ordered by tickets, drawn at append time by registered writers,
//!   and read only up to the final ticket (below which every writer has ended), so a
//!   transaction that commits late is never skipped, and only transactions that appended
//!   hold the log back (see [`PgPosition`]).
//! - **Retention**: [`PostgresBackend::enforce_retention`], and a background task
//!   ([`PostgresConfig::retention_interval`]).
//! - **Poll-only mode** ([`PostgresConfig::listen`] = false) for PgBouncer in transaction
//!   pooling mode and for replicas.
//!
//! The schema, the functions, the NOTIFY protocol and the limits are described in
//! `docs/postgres.md` of the repository.
//!
//! ```no_run
//! use completion_core::{CompletionBackend, EngineBackend, ExecutionId, Namespace, NewExecution};
//! use completion_postgres::{PostgresBackend, PostgresConfig};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), completion_core::EngineError> {
//! let backend = PostgresBackend::connect(PostgresConfig::from_url("postgres://app@localhost/app")).await?;
//! let mut completions = backend.subscribe_completions().await?;
//! let id = ExecutionId::new("task-1")?;
//! backend.create_execution(NewExecution::new(id.clone(), Namespace::new("demo")?)).await?;
//! backend.complete(&id).await?;
//! let done = completions.next().await.expect("streams do not end while the backend lives");
//! assert_eq!(done.execution_id(), &id);
//! # Ok(()) }
//! ```

mod config;
mod conn;
mod feed;
mod log;
mod migrate;
mod position;
mod schema;
mod stats;
mod store;
mod url;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use completion_core::hub::{Counters, Hub, HubConfig, Periodic, Position, Subscriptions, WriteOp};
use completion_core::{
    Completion, EngineBackend, EngineError, ExecutionId, ExecutionInfo, NewExecution, Outcome, Reason, Retention,
    RetentionReport,
};
use tracing::Instrument;

pub use config::PostgresConfig;
pub use migrate::MigrationReport;
pub use position::PgPosition;
pub use stats::{LogSize, PgListener, PgServerView, PostgresStats};

/// The schema version this build needs and installs (its highest migration).
pub const SCHEMA_VERSION: i32 = migrate::LATEST;

use crate::conn::Conn;
use crate::conn::build::{self, Dedicated, Names};
use crate::feed::PgFeed;
use crate::log::{Log, PgReader};
use crate::stats::Stats;
use crate::store::{Repeat, Store};

/// The backend's name, as used in cursors.
pub(crate) const BACKEND: &str = PgPosition::BACKEND;

/// How long a trim waits for transactions older than the newest event to end, so that it
/// trims exactly what retention says.
const RETENTION_SETTLE: Duration = Duration::from_secs(5);

/// Applies the bundled migrations to the configured schema (creating it if needed), on a
/// dedicated connection, serialized with every other process migrating the same schema.
/// Idempotent. [`PostgresBackend::connect`] calls it unless
/// [`PostgresConfig::migrate`] is false.
pub async fn migrate(config: &PostgresConfig) -> Result<MigrationReport, EngineError> {
    let validated = config.validate()?;
    let tls = build::connector(config)?;
    let names = Names::new(&config.application_name);
    migrate::run(&names.dedicated(&validated.pg, "migrate", config, &tls), &validated.schema).await
}

/// A completion backend on PostgreSQL. Cheap to clone: clones share the pool, the LISTEN
/// connection and the streams. Dropping the last clone ends every stream and closes every
/// connection.
#[derive(Clone)]
pub struct PostgresBackend {
    shared: Arc<Shared>,
}

struct Shared {
    subscriptions: Subscriptions<PgPosition>,
    conn: Arc<Conn>,
    store: Arc<Store>,
    log: Arc<Log>,
    channel: String,
    retention: Retention,
    stats: Arc<Stats>,
    names: Names,
    /// For [`PostgresBackend::migrate`]: the dedicated migration connection.
    migrate_with: Dedicated,
    /// The background trim (`retention_interval`); stops when dropped.
    _retention: Option<Periodic>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The streams end when the subscriptions drop (which stops the feed and its LISTEN
        // connection), the background trim when its task drops.
        self.conn.close();
    }
}

impl PostgresBackend {
    /// Connects (within [`PostgresConfig::connect_timeout`]), applies the migrations unless
    /// disabled (else checks the schema version), and starts the background trim to retention
    /// if configured ([`PostgresConfig::retention_interval`]). No LISTEN connection is opened until the first subscription.
    pub async fn connect(config: PostgresConfig) -> Result<Self, EngineError> {
        let validated = config.validate()?;
        let schema = validated.schema;
        let span = tracing::info_span!("postgres_connect", backend = BACKEND, schema = schema.name());
        let tls = build::connector(&config)?;
        let names = Names::new(&config.application_name);
        let counters = Arc::new(Counters::labelled(BACKEND, &[("schema", schema.name().to_string())]));
        let stats = Arc::new(Stats::default());
        let pool_pg = names.connection(&validated.pg, "pool", &config);
        let pool =
            build::pool(&pool_pg, build::share(&tls), config.pool_size, config.connect_timeout, config.generic_plans)?;
        let conn = Arc::new(Conn::new(pool, schema, config.command_timeout, config.connect_timeout, stats.clone()));

        let server = url::server_name(&validated.pg);
        match tokio::time::timeout(config.connect_timeout, conn.ping()).instrument(span.clone()).await {
            Ok(Ok(())) => {}
            Ok(Err(EngineError::Transport { source, .. })) => {
                // With the causes: tokio-postgres says "error connecting to server", its
                // source says why ("Connection refused (os error 111)").
                let why = completion_core::error_chain(&*source);
                return Err(EngineError::transport(
                    BACKEND,
                    "connect",
                    format!("connecting to {server} failed: {why}"),
                ));
            }
            Ok(Err(EngineError::Timeout { .. })) | Err(_) => {
                return Err(EngineError::Timeout { backend: BACKEND, op: "connect", after: config.connect_timeout });
            }
            Ok(Err(other)) => return Err(other),
        }

        let migrate_with = names.dedicated(&validated.pg, "migrate", &config, &tls);
        if config.migrate {
            migrate::run(&migrate_with, conn.schema()).instrument(span.clone()).await?;
        } else {
            migrate::check_version(&conn).await?;
        }

        let log = Arc::new(Log::new(conn.clone(), stats.clone(), counters.clone()));
        let store = Arc::new(Store::new(conn.clone(), stats.clone(), config.coalesce_notify));
        let reader = Arc::new(PgReader::new(log.clone(), false));
        let channel = conn.schema().channel();
        let feed = Arc::new(PgFeed {
            log: log.clone(),
            // The feed checks for writes in flight whatever this instance's own writes do:
            // other instances' (or programs') writes may coalesce.
            reader: Arc::new(PgReader::new(log.clone(), true)),
            listen: config.listen.then(|| names.dedicated(&validated.pg, "listen", &config, &tls)),
            channel: channel.clone(),
            safety_interval: config.subscription.safety_interval,
            in_flight_recheck: config.in_flight_recheck,
            reconnect_max_delay: config.reconnect_max_delay,
            stats: stats.clone(),
        });
        let hub = Hub::new(HubConfig::with_buffer(config.subscription.buffer), counters);
        let subscriptions = Subscriptions::new(hub, Arc::new(feed), reader);
        let retention = config.subscription.retention;
        let background = config.retention_interval.map(|every| {
            let (store, log, retention) = (store.clone(), log.clone(), retention.clone());
            Periodic::spawn(every, span.clone(), move || {
                let (store, log, retention) = (store.clone(), log.clone(), retention.clone());
                async move {
                    match store.enforce_retention(&log, &retention, RETENTION_SETTLE).await {
                        Ok(report) => tracing::debug!(backend = BACKEND, removed = report.removed, "periodic trim"),
                        Err(error) => tracing::warn!(backend = BACKEND, %error, "periodic trim failed"),
                    }
                }
            })
        });
        tracing::info!(parent: &span, server, listen = config.listen, "connected");
        Ok(Self {
            shared: Arc::new(Shared {
                subscriptions,
                conn,
                store,
                log,
                channel,
                retention,
                stats,
                names,
                migrate_with,
                _retention: background,
            }),
        })
    }

    /// Applies pending migrations now (see [`migrate()`]).
    pub async fn migrate(&self) -> Result<MigrationReport, EngineError> {
        migrate::run(&self.shared.migrate_with, self.shared.conn.schema()).await
    }

    /// Trims the log to the configured retention now. Deletes only events of finished
    /// transactions; waits (up to 5 s) for transactions older than the newest event to end
    /// first, so that a trim right after writes is exact. The report's watermark is the
    /// cursor (`postgres:<ticket>`) of the newest event ever trimmed: a stream resuming at or
    /// before it gets a gap. `None` when nothing was ever trimmed.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, EngineError> {
        let shared = &self.shared;
        let report = shared.store.enforce_retention(&shared.log, &shared.retention, RETENTION_SETTLE).await?;
        tracing::debug!(backend = BACKEND, removed = report.removed, watermark = ?report.watermark, "trimmed");
        Ok(report)
    }

    /// `pg_notification_queue_usage()`: the fraction (0 to 1) of the server's notification
    /// queue in use. Near 1, every NOTIFYing commit (every terminal write) starts failing:
    /// look for a listener that stopped reading.
    pub async fn notification_queue_usage(&self) -> Result<f64, EngineError> {
        stats::notification_queue_usage(&self.shared.conn).await
    }

    /// The schema's applied migration version (`None`: not migrated), to compare with
    /// [`SCHEMA_VERSION`].
    pub async fn schema_version(&self) -> Result<Option<i32>, EngineError> {
        migrate::schema_version(&self.shared.conn).await
    }

    /// Emits `completion` inside the caller's transaction `tx`, for an engine that keeps its
    /// executions in tables of its own: the event is appended to this schema's completion log
    /// and notified exactly as a terminal write of [`EngineBackend`] is, and commits or rolls
    /// back with `tx` (subscribers see it once `tx` commits, in the same ordered log as every
    /// other completion). `tx` must be a connection to this instance's database, and a
    /// transaction of READ COMMITTED isolation (the default) for the duplicate check below.
    ///
    /// Fails with [`EngineError::AlreadyTerminal`] (the first outcome) when the log already
    /// holds a completion of the execution (while retention keeps it); use
    /// [`emit_repeat_in`](Self::emit_repeat_in) to append one anyway. Any error leaves `tx`
    /// aborted, as every failed statement does in PostgreSQL: roll it back (or emit inside a
    /// savepoint of your own).
    ///
    /// With a `deadpool_postgres::Transaction`, pass `&tx` as is (it dereferences to
    /// `tokio_postgres::Transaction`).
    ///
    /// ```no_run
    /// use completion_core::{Completion, ExecutionId, Namespace, Outcome};
    /// use completion_postgres::PostgresBackend;
    ///
    /// # async fn demo(backend: &PostgresBackend, client: &mut tokio_postgres::Client)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// let id = ExecutionId::new("job-42")?;
    /// let tx = client.transaction().await?;
    /// // The engine's own state change...
    /// let row = tx
    ///     .query_opt("UPDATE jobs SET state = 'done' WHERE id = $1 AND state = 'running' RETURNING namespace", &[&id.as_str()])
    ///     .await?;
    /// if let Some(row) = row {
    ///     // ...and its completion, in the same transaction.
    ///     let namespace = Namespace::new(row.get::<_, String>(0))?;
    ///     backend.emit_in(&tx, &Completion::new(id, namespace, Outcome::Succeeded)).await?;
    /// }
    /// tx.commit().await?; // the completion is delivered now, or never if this rolls back
    /// # Ok(())
    /// # }
    /// ```
    pub async fn emit_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        completion: &Completion,
    ) -> Result<(), EngineError> {
        self.emit_with(tx, completion, Repeat::Refuse).await
    }

    /// [`emit_in`](Self::emit_in), also when the log already holds a completion of the
    /// execution (an engine that retries executions and reports each attempt, say).
    pub async fn emit_repeat_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        completion: &Completion,
    ) -> Result<(), EngineError> {
        self.emit_with(tx, completion, Repeat::Allow).await
    }

    async fn emit_with(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        completion: &Completion,
        repeat: Repeat,
    ) -> Result<(), EngineError> {
        let span = tracing::debug_span!("emit", backend = BACKEND, execution_id = %completion.execution_id);
        let _timer = self.hub().counters().time_write(WriteOp::Emit);
        self.shared.store.emit(tx, completion, repeat).instrument(span).await
    }

    /// The first completion of `id` that the log retains, if any: a lookup by execution id
    /// (indexed), for engines that keep their own state (a [`Waiter`](completion_core::Waiter)
    /// built with [`Waiter::with_lookup`](completion_core::Waiter::with_lookup) and this
    /// backend uses it). Bounded by retention: a pruned completion is not found.
    pub async fn completion_of(&self, id: &ExecutionId) -> Result<Option<completion_core::Finished>, EngineError> {
        Ok(self
            .shared
            .store
            .completion_of(id)
            .await?
            .map(|(outcome, at)| completion_core::Finished::new(id.clone(), outcome, at)))
    }

    /// How big the completion log is now, and how much of it is held back (one query).
    pub async fn log_size(&self) -> Result<LogSize, EngineError> {
        stats::log_size(&self.shared.conn).await
    }

    /// What the server holds for this schema, over every instance that uses it: schema
    /// version, NOTIFY queue usage, the log's size and held-back events, its oldest and
    /// newest tickets, and the LISTEN sessions on its channel (`pg_stat_activity`). Four
    /// short queries; meant for operators (`completions stats`), not for a hot path.
    pub async fn server_view(&self) -> Result<PgServerView, EngineError> {
        stats::server_view(&self.shared.conn).await
    }

    /// PostgreSQL-specific counters (the shared ones are in
    /// [`counters`](completion_core::CompletionBackend::counters)).
    pub fn stats(&self) -> PostgresStats {
        self.shared.stats.snapshot()
    }

    /// The schema this instance uses.
    pub fn schema(&self) -> &str {
        self.shared.conn.schema().name()
    }

    /// The NOTIFY channel of the schema (`<schema>_completions`).
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The `application_name` of this instance's LISTEN connection (find it in
    /// `pg_stat_activity`).
    pub fn listener_application_name(&self) -> String {
        self.shared.names.of("listen")
    }

    /// The `application_name` of this instance's pooled connections.
    pub fn pool_application_name(&self) -> String {
        self.shared.names.of("pool")
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.hub().stream_count()
    }

    /// Ends every stream and refuses new subscriptions; the LISTEN connection closes once
    /// the streams are gone. Writes keep working until the backend is dropped.
    pub fn close(&self) {
        self.hub().close();
    }

    fn hub(&self) -> &Hub<PgPosition> {
        self.shared.subscriptions.hub()
    }

    async fn terminal(&self, id: &ExecutionId, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        // The ticket is drawn inside the stored function and not returned: the span carries
        // the commit time instead (the ticket is in the delivered cursor).
        let span = completion_core::hub::terminal_write_span(BACKEND, id, outcome);
        let _timer = self.hub().counters().time_write(WriteOp::terminal(outcome));
        let at = self.shared.store.finish(id, outcome, reason).instrument(span.clone()).await?;
        span.record("completed_at_ms", at);
        Ok(())
    }
}

completion_core::delegate_completion_backend!(PostgresBackend, |this| &this.shared.subscriptions);

#[async_trait]
impl EngineBackend for PostgresBackend {
    async fn create_execution(&self, execution: NewExecution) -> Result<(), EngineError> {
        let span = tracing::debug_span!("create_execution", backend = BACKEND, execution_id = %execution.id);
        let _timer = self.hub().counters().time_write(WriteOp::Create);
        self.shared.store.create(&execution).instrument(span).await
    }

    async fn complete(&self, id: &ExecutionId) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Succeeded, None).await
    }

    async fn fail(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Failed, Some(reason)).await
    }

    async fn cancel(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Cancelled, Some(reason)).await
    }

    async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        let span = tracing::debug_span!("describe", backend = BACKEND, execution_id = %id);
        self.shared.store.describe(id).instrument(span).await
    }
}

/// Looks executions up in the completion log (not in `executions`): for a
/// [`Waiter`](completion_core::Waiter) of an engine that emits with
/// [`emit_in`](PostgresBackend::emit_in). An id without a retained completion is pending
/// (it may still finish), so such a wait ends at its deadline.
#[async_trait]
impl completion_core::CompletionLookup for PostgresBackend {
    async fn look_up(&self, id: &ExecutionId) -> Result<completion_core::Looked, EngineError> {
        Ok(match self.completion_of(id).await? {
            Some(finished) => completion_core::Looked::Finished(finished),
            None => completion_core::Looked::Pending,
        })
    }
}
