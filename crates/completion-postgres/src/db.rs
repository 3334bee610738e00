//! The pooled side: every statement the backend runs through deadpool, with retries,
//! time limits and the mapping of server errors to [`EngineError`].
//!
//! Retries: an operation is retried (up to [`MAX_ATTEMPTS`] times, within
//! `statement_timeout`) only when its connection was closed or terminated
//! (`57P01`/`57P02`/`57P03`, class `08`, or an I/O error). A terminal write or a create that
//! is retried after its reply was lost carries the same random token as the first attempt,
//! so the stored function recognises its own earlier success instead of reporting
//! `AlreadyTerminal` / `AlreadyExists`. Any other error is returned at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use completion_core::hub::{LogEvent, ReadBatch, TrimmedGap};
use completion_core::{
    CompletionPayload, Counters, EngineError, ExecutionId, ExecutionInfo, ExecutionState, FlowId, Namespace,
    NewExecution, Outcome, Reason, Retention, ScannerFilter, Tags,
};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::position::PgPosition;
use crate::schema::{Schema, Sql};
use crate::stats::Stats;
use crate::tls::Tls;
use crate::{BACKEND, PruneReport};

/// Attempts of one operation whose connection failed.
const MAX_ATTEMPTS: u32 = 4;

/// Error codes raised by the stored functions (see the migration).
const NOT_FOUND: &str = "CM001";
const ALREADY_TERMINAL: &str = "CM002";
const ALREADY_EXISTS: &str = "CM003";

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Timeout(Duration),
}

impl Failure {
    /// Whether the attempt failed because its connection went away (so the statement did
    /// not commit, or committed with a token that makes the retry recognise it).
    fn retryable(&self) -> bool {
        match self {
            Failure::Pg(e) | Failure::Pool(PoolError::Backend(e)) => connection_lost(e),
            _ => false,
        }
    }

    fn sqlstate(&self) -> Option<&str> {
        match self {
            Failure::Pg(e) => e.code().map(SqlState::code),
            _ => None,
        }
    }

    fn detail(&self) -> Option<&str> {
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
/// A server error's own message and SQLSTATE are kept (tokio-postgres displays only
/// "db error").
pub(crate) fn pg_error(op: &'static str, e: tokio_postgres::Error) -> EngineError {
    match e.as_db_error() {
        Some(db) => {
            let message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if connection_lost(&e) {
                EngineError::transport(BACKEND, op, message)
            } else {
                EngineError::Server { backend: BACKEND, op, message }
            }
        }
        None => EngineError::transport(BACKEND, op, e),
    }
}

/// A row value that does not decode is a schema this build does not understand.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, EngineError> {
    row.try_get(index).map_err(|e| EngineError::Incompatible {
        backend: BACKEND,
        reason: format!("unexpected value in result column {index}: {e}"),
    })
}

fn parse_xid(text: &str, what: &str) -> Result<u64, EngineError> {
    text.parse().map_err(|_| EngineError::Incompatible {
        backend: BACKEND,
        reason: format!("{what} {text:?} is not a 64-bit transaction id"),
    })
}

/// Builds the pool for `pg` (its application name, time limits and keepalives set here).
pub(crate) fn pool(
    pg: &tokio_postgres::Config,
    tls: Tls,
    size: usize,
    connect_timeout: Duration,
    generic_plans: bool,
) -> Result<Pool, EngineError> {
    let manager = Manager::from_config(pg.clone(), tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let mut builder = Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout));
    if generic_plans {
        // Generic plans for every statement of these connections. PostgreSQL re-planned the
        // log read on every call: its generic plan is estimated dearer than a custom one
        // (unknown LIMIT), so the plan cache kept choosing custom plans, each planned anew:
        // 0.25-0.5 ms of planning per read against 0.15 ms of execution (EXPLAIN ANALYZE on
        // a 170 000-event log; `cargo xtask bench`, docs/benchmarks.md). The generic plans of
        // our statements are the custom ones (same index walks; their parameters are a
        // cursor, a limit and ids). A session setting: behind a transaction-mode pooler it
        // would leak to other clients, hence `PostgresConfig::generic_plans`.
        builder = builder.post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                client.batch_execute("SET plan_cache_mode = force_generic_plan").await.map_err(HookError::Backend)
            })
        }));
    }
    builder.build().map_err(|e| EngineError::invalid("pool_size", size.to_string(), e.to_string()))
}

/// What a checked log read learned besides its events.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReadNotes {
    /// A terminal write was in flight just before the read's snapshot.
    pub in_flight: bool,
    /// The read saw committed events above the horizon, which it held back: the horizon it
    /// read below. They become deliverable once the horizon passes it.
    pub held_back_below: Option<u64>,
}

/// The pooled operations of one instance.
pub(crate) struct Db {
    pool: Pool,
    sql: Sql,
    schema: Schema,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    stats: Arc<Stats>,
    counters: Arc<Counters>,
    /// Whether terminal writes coalesce their NOTIFYs (`PostgresConfig::coalesce_notify`).
    coalesce: bool,
}

impl Db {
    pub fn new(
        pool: Pool,
        schema: Schema,
        timeout: Option<Duration>,
        connect_timeout: Duration,
        stats: Arc<Stats>,
        counters: Arc<Counters>,
        coalesce: bool,
    ) -> Self {
        Self { pool, sql: Sql::new(&schema), schema, timeout, connect_timeout, stats, counters, coalesce }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Closes the pool: idle connections go now, busy ones when returned.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Runs `attempt` on a pooled connection, retrying on lost connections, within the
    /// statement timeout.
    async fn run<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut(Object) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        let mut pause = Duration::from_millis(20);
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
                    Stats::bump(&self.stats.retries);
                    tracing::debug!(backend = BACKEND, op, attempt = tries, error = ?failure, "connection lost; retrying");
                    if let Some((at, limit)) = deadline {
                        if Instant::now() + pause >= at {
                            return Err(Failure::Timeout(limit));
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 5;
                }
                other => return other,
            }
        }
    }

    /// One statement (prepared once per connection) returning its rows.
    async fn query(&self, op: &'static str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Failure> {
        self.run(op, |client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await
    }

    /// Checks that a connection can be made and used.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.query("connect", "SELECT 1", &[]).await.map(drop).map_err(|f| f.into_engine("connect"))
    }

    pub async fn create(&self, execution: &NewExecution) -> Result<(), EngineError> {
        const OP: &str = "create_execution";
        let tags = tags_json(&execution.tags);
        let token = uuid::Uuid::new_v4().to_string();
        let flow = execution.flow_id.as_ref().map(FlowId::as_str);
        let params: [&(dyn ToSql + Sync); 5] =
            [&execution.id.as_str(), &execution.namespace.as_str(), &flow, &tags, &token];
        match self.query(OP, &self.sql.create, &params).await {
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
        match self.query(OP, &self.sql.finish, &params).await {
            Ok(rows) => {
                let at: Option<i64> = match rows.first() {
                    Some(row) => column(row, 0)?,
                    None => None,
                };
                Ok(at.unwrap_or_default().max(0) as u64)
            }
            Err(f) if f.sqlstate() == Some(NOT_FOUND) => Err(EngineError::NotFound(id.clone())),
            Err(f) if f.sqlstate() == Some(ALREADY_TERMINAL) => {
                let first = f.detail().unwrap_or_default();
                let outcome = first.parse().map_err(|_| EngineError::Incompatible {
                    backend: BACKEND,
                    reason: format!("finish_execution reported the unknown terminal state {first:?}"),
                })?;
                Err(EngineError::AlreadyTerminal { execution_id: id.clone(), outcome })
            }
            Err(f) => Err(f.into_engine(OP)),
        }
    }

    pub async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        const OP: &str = "describe";
        let rows = self.query(OP, &self.sql.describe, &[&id.as_str()]).await.map_err(|f| f.into_engine(OP))?;
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
        Ok(ExecutionInfo::new(
            id.clone(),
            namespace,
            flow_id,
            tags,
            state,
            reason,
            created.max(0) as u64,
            completed.map(|c| c.max(0) as u64),
        ))
    }

    /// Up to `limit` events after `after` matching `filter`, below the horizon.
    pub async fn read(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<ReadBatch<PgPosition>, EngineError> {
        Ok(self.read_inner(after, filter, limit, false).await?.0)
    }

    /// [`read`](Self::read), preceded on the same connection by `writers_in_flight()` (see
    /// the V2 and V3 migrations): also says whether a terminal write was in flight just
    /// before the read's snapshot was taken. The two statements are sent together (one round
    /// trip) and run in that order, each in a transaction of its own.
    pub async fn read_checked(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<(ReadBatch<PgPosition>, ReadNotes), EngineError> {
        self.read_inner(after, filter, limit, true).await
    }

    async fn read_inner(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
        check: bool,
    ) -> Result<(ReadBatch<PgPosition>, ReadNotes), EngineError> {
        const OP: &str = "log read";
        let xid = after.xid.to_string();
        let limit_param = limit.max(1) as i64;
        let namespace = filter.namespace.as_ref().map(Namespace::as_str);
        let tag = filter.tag.as_ref().map(|(k, v)| {
            let mut one = BTreeMap::new();
            one.insert(k.as_str(), v.as_str());
            serde_json::to_string(&one).unwrap_or_default()
        });
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&xid, &after.id, &limit_param];
        let shape = match (&namespace, &tag) {
            (None, None) => 0,
            (Some(ns), None) => {
                params.push(ns);
                1
            }
            (None, Some(tag)) => {
                params.push(tag);
                2
            }
            (Some(ns), Some(tag)) => {
                params.push(ns);
                params.push(tag);
                3
            }
        };
        let (in_flight, rows) = if check {
            let (read_sql, check_sql, params) = (&self.sql.read[shape], &self.sql.in_flight, &params);
            self.run(OP, |client| async move {
                let (check, read) =
                    tokio::try_join!(client.prepare_cached(check_sql), client.prepare_cached(read_sql))?;
                // `try_join` polls its first future first, and tokio-postgres sends a request
                // (and the server runs it) in the order the futures are first polled: the
                // check runs before the read's snapshot is taken, in the same round trip.
                let result =
                    futures_util::future::try_join(client.query_one(&check, &[]), client.query(&read, params)).await;
                match result {
                    Ok((in_flight, rows)) => Ok((in_flight.try_get::<_, bool>(0)?, rows)),
                    Err(e) => {
                        // The check takes session locks; an error inside it releases them,
                        // but a second cancel could cut that short (migrations/V3). Such a
                        // connection must not go back to the pool: closing it ends its
                        // session, and its locks with it.
                        drop(Object::take(client));
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|f| f.into_engine(OP))?
        } else {
            (false, self.query(OP, &self.sql.read[shape], &params).await.map_err(|f| f.into_engine(OP))?)
        };
        let header = rows.first().ok_or_else(|| EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("the schema {} has no retention watermark row", self.schema.name()),
        })?;
        let horizon = parse_xid(&column::<String>(header, 0)?, "horizon")?;
        let watermark =
            PgPosition { xid: parse_xid(&column::<String>(header, 1)?, "watermark")?, id: column(header, 2)? };
        let held: i64 = column(header, 3)?;
        self.stats.held_back_events.store(held.max(0) as u64, Ordering::Relaxed);
        if held > 0 {
            Stats::bump(&self.stats.held_back_reads);
        }

        let mut events = Vec::with_capacity(rows.len());
        let mut last_row = None;
        for row in &rows {
            let Some(xid) = column::<Option<String>>(row, 4)? else { continue };
            let position = PgPosition { xid: parse_xid(&xid, "event xid")?, id: column(row, 5)? };
            last_row = Some(position);
            match event_payload(row, position) {
                Ok(payload) => events.push(LogEvent { position, payload }),
                Err(error) => {
                    Counters::bump(&self.counters.malformed_messages);
                    tracing::warn!(backend = BACKEND, %position, %error, "skipping a malformed log row");
                }
            }
        }
        let more = last_row.is_some() && rows.len() >= limit.max(1);
        let scanned_to = match last_row {
            Some(last) if more => last,
            _ => (*after).max(PgPosition::below(horizon)),
        };
        let gap = (*after != PgPosition::ORIGIN && *after < watermark)
            .then_some(TrimmedGap { resumed_at: watermark, missed: None });
        let notes = ReadNotes { in_flight, held_back_below: (held > 0).then_some(horizon) };
        Ok((ReadBatch { events, scanned_to, gap, more }, notes))
    }

    /// The oldest running transaction id, as seen by a fresh snapshot.
    pub async fn horizon(&self) -> Result<u64, EngineError> {
        const OP: &str = "horizon";
        let rows = self.query(OP, &self.sql.horizon, &[]).await.map_err(|f| f.into_engine(OP))?;
        let row =
            rows.first().ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "no horizon".into() })?;
        parse_xid(&column::<String>(row, 0)?, "horizon")
    }

    /// The next transaction id to be assigned: no event can sit at or above it.
    pub async fn next_xid(&self) -> Result<u64, EngineError> {
        const OP: &str = "next xid";
        let rows = self.query(OP, &self.sql.next_xid, &[]).await.map_err(|f| f.into_engine(OP))?;
        let row =
            rows.first().ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "no xmax".into() })?;
        parse_xid(&column::<String>(row, 0)?, "next xid")
    }

    /// The log head for a feed that just went live: everything below the horizon, once the
    /// horizon has passed every event visible now (waiting up to `settle` for transactions
    /// that started before the newest event and still run). Without that wait, events
    /// committed before the call but above the horizon would be delivered to a stream that
    /// asked only for later ones. If `settle` passes, the head stays at the horizon: no
    /// event is lost, but a few committed before the call may be delivered.
    pub async fn head(&self, settle: Duration) -> Result<PgPosition, EngineError> {
        const OP: &str = "log head";
        let rows = self.query(OP, &self.sql.head, &[]).await.map_err(|f| f.into_engine(OP))?;
        let row =
            rows.first().ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "no head".into() })?;
        let mut horizon = parse_xid(&column::<String>(row, 0)?, "horizon")?;
        let newest = match column::<Option<String>>(row, 1)? {
            Some(xid) => Some(parse_xid(&xid, "newest xid")?),
            None => None,
        };
        if let Some(newest) = newest {
            let deadline = Instant::now() + settle;
            let mut pause = Duration::from_millis(1);
            while horizon <= newest {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        backend = BACKEND,
                        horizon,
                        newest,
                        "a transaction older than the newest completion is still running; \
                         events committed just before this subscription may be delivered to it"
                    );
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
                horizon = self.horizon().await?;
            }
        }
        Ok(PgPosition::below(horizon))
    }

    pub async fn prune(&self, retention: &Retention, settle: Duration) -> Result<PruneReport, EngineError> {
        const OP: &str = "prune";
        if retention.max_events.is_none() && retention.max_age_secs.is_none() {
            return Ok(PruneReport { deleted: 0, watermark: None });
        }
        // Events above the horizon cannot be pruned yet; wait (bounded) for the transactions
        // that hold it back, so a prune right after writes trims exactly.
        self.head(settle).await?;
        let max_events = retention.max_events.map(|n| n.min(i64::MAX as u64) as i64);
        let max_age_ms = retention.max_age_secs.map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
        let rows = self.query(OP, &self.sql.prune, &[&max_events, &max_age_ms]).await.map_err(|f| f.into_engine(OP))?;
        let row = rows
            .first()
            .ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "prune returned nothing".into() })?;
        let deleted: i64 = column(row, 0)?;
        let xid: Option<String> = column(row, 1)?;
        let id: Option<i64> = column(row, 2)?;
        let watermark = match (xid, id) {
            (Some(xid), Some(id)) => Some(PgPosition { xid: parse_xid(&xid, "watermark")?, id }),
            _ => None,
        };
        Stats::bump(&self.stats.prune_runs);
        self.stats.pruned_events.fetch_add(deleted.max(0) as u64, Ordering::Relaxed);
        Ok(PruneReport { deleted: deleted.max(0) as u64, watermark: watermark.filter(|w| *w != PgPosition::ORIGIN) })
    }

    pub async fn notification_queue_usage(&self) -> Result<f64, EngineError> {
        const OP: &str = "notification queue usage";
        let rows = self.query(OP, "SELECT pg_notification_queue_usage()", &[]).await.map_err(|f| f.into_engine(OP))?;
        match rows.first() {
            Some(row) => column(row, 0),
            None => Ok(0.0),
        }
    }

    /// The schema's applied migration version, `None` when it has none.
    pub async fn schema_version(&self) -> Result<Option<i32>, EngineError> {
        const OP: &str = "schema version";
        match self.query(OP, &self.sql.version, &[]).await {
            Ok(rows) => match rows.first() {
                Some(row) => column(row, 0),
                None => Ok(None),
            },
            Err(f) if matches!(f.sqlstate(), Some("42P01" | "3F000")) => Ok(None), // no table / schema
            Err(f) => Err(f.into_engine(OP)),
        }
    }
}

impl Db {
    /// Events in the log, events committed but held back above the horizon (capped at
    /// 1000, as in log reads), the log table's size on disk, and events pruned so far.
    pub async fn log_size(&self) -> Result<crate::LogSize, EngineError> {
        const OP: &str = "log size";
        let s = self.schema.quoted();
        // The held-back count walks the position index down and stops at the horizon, like
        // the log read does (see `Sql::new`): never a scan of the whole log.
        let sql = format!(
            "SELECT (SELECT count(*) FROM {s}.completion_log),
                    (SELECT count(*) FROM (SELECT 1 FROM {s}.completion_log h
                                           WHERE h.xid >= pg_snapshot_xmin(pg_current_snapshot())
                                             AND h.xid < pg_snapshot_xmax(pg_current_snapshot())
                                           ORDER BY h.xid DESC, h.id DESC LIMIT 1000) held),
                    pg_total_relation_size('{s}.completion_log'::regclass),
                    (SELECT pruned FROM {s}.pruned_to LIMIT 1)"
        );
        let rows = self.query(OP, &sql, &[]).await.map_err(|f| f.into_engine(OP))?;
        let row =
            rows.first().ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "no log size".into() })?;
        let count =
            |i: usize| -> Result<u64, EngineError> { Ok(column::<Option<i64>>(row, i)?.unwrap_or(0).max(0) as u64) };
        Ok(crate::LogSize { events: count(0)?, held_back: count(1)?, bytes: count(2)?, pruned: count(3)? })
    }
}

fn tags_json(tags: &Tags) -> String {
    let map: BTreeMap<&str, &str> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // A map of strings always serializes.
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

fn parse_tags(json: &str) -> Result<Tags, EngineError> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| EngineError::invalid("tags", json, e.to_string()))?;
    Tags::from_pairs(map)
}

/// The payload of one log row (columns from 6 on; see `schema::LOG_COLUMNS`).
fn event_payload(row: &Row, position: PgPosition) -> Result<CompletionPayload, EngineError> {
    use completion_core::hub::Position;

    let execution_id = ExecutionId::new(column::<String>(row, 6)?)?;
    let flow_id = column::<Option<String>>(row, 7)?.map(FlowId::new).transpose()?;
    let namespace = Namespace::new(column::<String>(row, 8)?)?;
    let outcome: Outcome = column::<String>(row, 9)?.parse()?;
    let tags = parse_tags(&column::<String>(row, 10)?)?;
    let completed_at: i64 = column(row, 11)?;
    Ok(CompletionPayload::new(
        execution_id,
        flow_id,
        namespace,
        outcome,
        tags,
        completed_at.max(0) as u64,
        position.to_cursor(),
    ))
}
