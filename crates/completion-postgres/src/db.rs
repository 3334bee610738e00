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
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use completion_core::hub::Counters;
use completion_core::hub::{LogEvent, ReadBatch, TrimmedGap};
use completion_core::{
    CompletionPayload, EngineError, ExecutionId, ExecutionInfo, ExecutionState, FlowId, Namespace, NewExecution,
    Outcome, Reason, Retention, ScannerFilter, Tags,
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

/// Opens the transaction a log read runs in: READ COMMITTED whatever the server's default,
/// so that each statement takes a snapshot of its own (the read's after the final ticket's).
const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Attempts of one operation whose connection failed.
const MAX_ATTEMPTS: u32 = 4;

/// Error codes raised by the stored functions (see the migration).
const NOT_FOUND: &str = "CM001";
pub(crate) const ALREADY_TERMINAL: &str = "CM002";
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
    // Last in, first out: a call made one at a time gets the connection used last, whose
    // server process is awake; first in, first out hands it the one idle longest, and a
    // server process that slept is slow to wake on a busy machine (the bench measured our
    // write call 1.3-1.4x slower with 8 connections in FIFO order than with one).
    let mut builder = Pool::builder(manager)
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
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
    /// The read saw committed events above the final ticket, which it held back: the final
    /// ticket it read up to. They become deliverable once the final ticket passes it.
    pub held_back_above: Option<i64>,
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
    /// The largest final ticket this instance has seen (see [`Db::raise_final`]).
    max_final: AtomicI64,
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
        Self {
            pool,
            sql: Sql::new(&schema),
            schema,
            timeout,
            connect_timeout,
            stats,
            counters,
            coalesce,
            max_final: AtomicI64::new(0),
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Every statement of the instance.
    pub fn sql(&self) -> &Sql {
        &self.sql
    }

    /// Whether terminal writes coalesce their NOTIFYs.
    pub fn coalesce(&self) -> bool {
        self.coalesce
    }

    /// The floor of the final ticket for a read about to be sent: the largest final ticket
    /// this instance learned *before* the read (pass it to [`Db::raise_final`] with the
    /// read's own answer). `final_ticket()` can answer less than an earlier answer (a writer
    /// that read its bound before that answer registered after it; the feed's position also
    /// passes it when it delivers from a notification), but a ticket that was final stays
    /// final, and a snapshot taken after it was learned sees it. Reading up to a smaller one
    /// would hold back events the hub has already published: a stream catching up would take
    /// them for held back, stop catching up, and never receive them (found by review). Only
    /// what was learned before the read was sent is safe: a final ticket learned by another
    /// read meanwhile may cover commits this read's snapshot does not see.
    pub fn final_floor(&self) -> i64 {
        self.max_final.load(Ordering::Acquire)
    }

    /// Records `answered` (a read's `final_ticket()`, or a ticket known final) and answers
    /// the final ticket the read may go up to: the larger of it and `floor` (from
    /// [`Db::final_floor`] before the read was sent).
    pub fn raise_final(&self, floor: i64, answered: i64) -> i64 {
        self.max_final.fetch_max(answered, Ordering::AcqRel);
        answered.max(floor)
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
                    if let Some((at, limit)) = deadline
                        && Instant::now() + pause >= at
                    {
                        return Err(Failure::Timeout(limit));
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
        Ok(ExecutionInfo::new(id.clone(), namespace, state)
            .with_flow(flow_id)
            .with_tags(tags)
            .with_reason(reason)
            .with_created_at_ms(created.max(0) as u64)
            .with_completed_at_ms(completed.map(|c| c.max(0) as u64)))
    }

    /// Up to `limit` events after `after` matching `filter`, up to the final ticket.
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
        let limit_param = limit.max(1) as i64;
        let namespace = filter.namespace.as_ref().map(Namespace::as_str);
        let tag = filter.tag.as_ref().map(|(k, v)| {
            let mut one = BTreeMap::new();
            one.insert(k.as_str(), v.as_str());
            serde_json::to_string(&one).unwrap_or_default()
        });
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after.ticket, &limit_param];
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
        let sql = &self.sql;
        let (read_sql, params) = (&sql.read[shape], &params);
        let floor = self.final_floor();
        let (in_flight, final_ticket, rows) = self
            .run(OP, |client| async move {
                // tokio-postgres sends requests (and the server runs them) in the order the
                // futures are first polled, and `try_join!` polls them in order: the in-flight
                // check, then the final ticket, then the read, whose snapshot is so taken after
                // both (migrations/V3, V4), all in one round trip. One READ COMMITTED
                // transaction (each statement its own snapshot) keeps them on one server
                // connection behind a transaction-mode pooler.
                let (check, fin, read) = tokio::try_join!(
                    async { if check { client.prepare_cached(&sql.in_flight).await.map(Some) } else { Ok(None) } },
                    client.prepare_cached(&sql.final_ticket),
                    client.prepare_cached(read_sql)
                )?;
                let result = tokio::try_join!(
                    client.batch_execute(BEGIN_READ),
                    async {
                        match &check {
                            Some(check) => client.query_one(check, &[]).await.map(Some),
                            None => Ok(None),
                        }
                    },
                    client.query_one(&fin, &[]),
                    client.query(&read, params),
                    client.batch_execute("COMMIT")
                );
                match result {
                    Ok(((), in_flight, fin, rows, ())) => {
                        let in_flight = match in_flight {
                            Some(row) => row.try_get::<_, bool>(0)?,
                            None => false,
                        };
                        Ok((in_flight, fin.try_get::<_, i64>(0)?, rows))
                    }
                    Err(e) => {
                        // The check takes session locks; an error inside it releases them,
                        // but a second cancel could cut that short (migrations/V3), and the
                        // transaction may be left open. Such a connection must not go back
                        // to the pool: closing it ends its session, and its locks with it.
                        drop(Object::take(client));
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|f| f.into_engine(OP))?;
        let header = rows.first().ok_or_else(|| EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("the schema {} has no retention watermark row", self.schema.name()),
        })?;
        let watermark = PgPosition::at(column(header, 0)?);
        let final_ticket = self.raise_final(floor, final_ticket);

        let mut events = Vec::with_capacity(rows.len());
        let (mut last_final, mut held) = (None, 0u64);
        for row in &rows {
            let Some(ticket) = column::<Option<i64>>(row, 1)? else { continue };
            if ticket > final_ticket {
                // Committed, but a writer that registered before it is still in flight.
                held += 1;
                continue;
            }
            let position = PgPosition::at(ticket);
            last_final = Some(position);
            match event_payload(row, position) {
                Ok(payload) => events.push(LogEvent { position, payload }),
                Err(error) => {
                    Counters::bump(&self.counters.malformed_messages);
                    tracing::warn!(backend = BACKEND, %position, %error, "skipping a malformed log row");
                }
            }
        }
        self.stats.held_back_events.store(held, Ordering::Relaxed);
        if held > 0 {
            Stats::bump(&self.stats.held_back_reads);
        }
        // The read stopped at its limit inside the final part of the log: more may follow.
        let more = held == 0 && last_final.is_some() && rows.len() >= limit.max(1);
        let scanned_to = match last_final {
            Some(last) if more => last,
            _ => (*after).max(PgPosition::at(final_ticket)),
        };
        let gap = (*after != PgPosition::ORIGIN && *after < watermark)
            .then_some(TrimmedGap { resumed_at: watermark, missed: None });
        let notes = ReadNotes { in_flight, held_back_above: (held > 0).then_some(final_ticket) };
        Ok((ReadBatch { events, scanned_to, gap, more }, notes))
    }

    /// The final ticket: every event at or below it is final (migrations/V4).
    pub async fn final_ticket(&self) -> Result<i64, EngineError> {
        let floor = self.final_floor();
        Ok(self.raise_final(floor, self.ticket("final ticket", &self.sql.final_ticket).await?))
    }

    /// The last ticket handed out: no event has a larger one.
    pub async fn last_ticket(&self) -> Result<i64, EngineError> {
        self.ticket("last ticket", &self.sql.last_ticket).await
    }

    /// The one ticket `sql` answers.
    async fn ticket(&self, op: &'static str, sql: &str) -> Result<i64, EngineError> {
        let rows = self.query(op, sql, &[]).await.map_err(|f| f.into_engine(op))?;
        let row =
            rows.first().ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: format!("no {op}") })?;
        column(row, 0)
    }

    /// The final ticket, then (in a statement after it, same round trip) `second` with
    /// `params`: its one row.
    async fn after_final_ticket(
        &self,
        op: &'static str,
        second: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(i64, Row), EngineError> {
        let final_sql = &self.sql.final_ticket;
        let floor = self.final_floor();
        self.run(op, |client| async move {
            let (fin, then) = tokio::try_join!(client.prepare_cached(final_sql), client.prepare_cached(second))?;
            // As in a log read: in this order, one round trip, one READ COMMITTED transaction.
            let result = tokio::try_join!(
                client.batch_execute(BEGIN_READ),
                client.query_one(&fin, &[]),
                client.query_one(&then, params),
                client.batch_execute("COMMIT")
            );
            match result {
                Ok(((), fin, row, ())) => Ok((self.raise_final(floor, fin.try_get::<_, i64>(0)?), row)),
                Err(e) => {
                    // Possibly inside the transaction still: not for the pool.
                    drop(Object::take(client));
                    Err(e)
                }
            }
        })
        .await
        .map_err(|f| f.into_engine(op))
    }

    /// Where a stream resuming from a cursor of schema version 3 or older (everything at or
    /// before `(xid, id)` in (xid, id) order delivered) starts in ticket order: just below
    /// the first final ticket whose event lies after `(xid, id)` (or at the final ticket when
    /// there is none). Every ticket up to it was delivered by the stream that made the
    /// cursor; a few after it may have been too (at-least-once across restarts, as for any
    /// cursor), none is skipped. Events appended after the cursor was made have larger xids
    /// (all smaller ones had ended: versions 1-3 read below the horizon, the oldest running
    /// transaction), so they lie after it.
    /// A cursor older than what retention pruned maps to ticket 1, below the ticket
    /// watermark, so the stream reports the gap.
    pub async fn legacy_ticket(&self, xid: u64, id: i64) -> Result<PgPosition, EngineError> {
        const OP: &str = "map a version 3 cursor";
        let xid_text = xid.to_string();
        let (final_ticket, row) = self.after_final_ticket(OP, &self.sql.legacy, &[&xid_text, &id]).await?;
        let first_after: Option<i64> = column(&row, 0)?;
        let pruned = (parse_xid(&column::<String>(&row, 1)?, "watermark xid")?, column::<i64>(&row, 2)?);
        let ticket_watermark: i64 = column(&row, 3)?;
        let next_xid = parse_xid(&column::<String>(&row, 4)?, "next xid")?;
        if xid >= next_xid {
            return Err(EngineError::invalid(
                "cursor",
                format!("postgres:{xid}.{id}"),
                format!("points past the end of this backend's log (next transaction id {next_xid})"),
            ));
        }
        if ticket_watermark > 1 && (xid, id) < pruned {
            return Ok(PgPosition::at(1));
        }
        Ok(PgPosition::at(first_after.map_or(final_ticket, |t| (t - 1).min(final_ticket))))
    }

    /// The first completion of `id` the log retains: its outcome and completion time.
    pub async fn completion_of(&self, id: &ExecutionId) -> Result<Option<(Outcome, u64)>, EngineError> {
        const OP: &str = "completion lookup";
        let rows = self.query(OP, &self.sql.completion_of, &[&id.as_str()]).await.map_err(|f| f.into_engine(OP))?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let outcome: Outcome = column::<String>(row, 0)?.parse()?;
                Ok(Some((outcome, column::<i64>(row, 1)?.max(0) as u64)))
            }
        }
    }

    /// The log head for a feed that just went live: the final ticket, once it has passed every
    /// event visible now (waiting up to `settle` for writers still in flight below the newest
    /// event). Without that wait, events committed before the call but above the final ticket
    /// would be delivered to a stream that asked only for later ones. If `settle` passes, the
    /// head stays at the final ticket: no event is lost, but a few committed before the call
    /// may be delivered.
    pub async fn head(&self, settle: Duration) -> Result<PgPosition, EngineError> {
        const OP: &str = "log head";
        let deadline = Instant::now() + settle;
        let mut pause = Duration::from_millis(1);
        loop {
            let (final_ticket, row) = self.after_final_ticket(OP, &self.sql.newest, &[]).await?;
            let newest: Option<i64> = column(&row, 0)?;
            match newest {
                Some(newest) if newest > final_ticket => {
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            backend = BACKEND,
                            final_ticket,
                            newest,
                            "a writer older than the newest completion is still in flight; \
                             events committed just before this subscription may be delivered to it"
                        );
                        return Ok(PgPosition::at(final_ticket));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                _ => return Ok(PgPosition::at(final_ticket)),
            }
        }
    }

    pub async fn prune(&self, retention: &Retention, settle: Duration) -> Result<PruneReport, EngineError> {
        const OP: &str = "prune";
        if retention.max_events.is_none() && retention.max_age_secs.is_none() {
            return Ok(PruneReport { deleted: 0, watermark: None });
        }
        // Events above the final ticket cannot be pruned yet; wait (bounded) for the writers
        // that hold it back, so a prune right after writes trims exactly.
        self.head(settle).await?;
        let max_events = retention.max_events.map(|n| n.min(i64::MAX as u64) as i64);
        let max_age_ms = retention.max_age_secs.map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
        let rows = self.query(OP, &self.sql.prune, &[&max_events, &max_age_ms]).await.map_err(|f| f.into_engine(OP))?;
        let row = rows
            .first()
            .ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "prune returned nothing".into() })?;
        let deleted: i64 = column(row, 0)?;
        let watermark = column::<Option<i64>>(row, 1)?.map(PgPosition::at);
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
    /// Events in the log, events committed but held back above the final ticket (capped at
    /// 1000), the log table's size on disk, and events pruned so far.
    pub async fn log_size(&self) -> Result<crate::LogSize, EngineError> {
        const OP: &str = "log size";
        let s = self.schema.quoted();
        // The held-back count walks the ticket index down and stops at the final ticket:
        // never a scan of the whole log.
        let sql = format!(
            "SELECT (SELECT count(*) FROM {s}.completion_log),
                    (SELECT count(*) FROM (SELECT 1 FROM {s}.completion_log h
                                           WHERE h.ticket > {s}.final_ticket()
                                           ORDER BY h.ticket DESC LIMIT 1000) held),
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

impl Db {
    /// The oldest and newest tickets in the log, the final ticket, and the oldest event's
    /// commit time (ms). Index lookups only.
    pub async fn log_extent(&self) -> Result<(Option<i64>, Option<i64>, Option<i64>, Option<i64>), EngineError> {
        const OP: &str = "log extent";
        let s = self.schema.quoted();
        let sql = format!(
            "SELECT (SELECT min(ticket) FROM {s}.completion_log),
                    (SELECT max(ticket) FROM {s}.completion_log),
                    {s}.final_ticket(),
                    (SELECT completed_at_ms FROM {s}.completion_log ORDER BY ticket LIMIT 1)"
        );
        let rows = self.query(OP, &sql, &[]).await.map_err(|f| f.into_engine(OP))?;
        let row = rows
            .first()
            .ok_or_else(|| EngineError::Incompatible { backend: BACKEND, reason: "no log extent".into() })?;
        Ok((column(row, 0)?, column(row, 1)?, column(row, 2)?, column(row, 3)?))
    }

    /// The sessions of this database whose latest statement is `LISTEN "<channel>"` (what a
    /// LISTEN connection of this backend runs, and all it runs), from `pg_stat_activity`.
    pub async fn listeners(&self, channel: &str) -> Result<Vec<crate::PgListener>, EngineError> {
        const OP: &str = "listeners";
        let sql = "SELECT coalesce(application_name, ''), pid, usename::text, client_addr::text,
                          (extract(epoch FROM backend_start) * 1000)::bigint
                   FROM pg_stat_activity
                   WHERE datname = current_database() AND query = $1
                   ORDER BY application_name, pid";
        let listen = format!("LISTEN \"{channel}\"");
        let rows = self.query(OP, sql, &[&listen]).await.map_err(|f| f.into_engine(OP))?;
        rows.iter()
            .map(|row| {
                Ok(crate::PgListener {
                    application_name: column(row, 0)?,
                    pid: column(row, 1)?,
                    user: column(row, 2)?,
                    client_addr: column(row, 3)?,
                    connected_at_ms: column::<Option<i64>>(row, 4)?.map(|ms| ms.max(0) as u64),
                })
            })
            .collect()
    }
}

pub(crate) fn tags_json(tags: &Tags) -> String {
    let map: BTreeMap<&str, &str> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // A map of strings always serializes.
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

fn parse_tags(json: &str) -> Result<Tags, EngineError> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| EngineError::invalid("tags", json, e.to_string()))?;
    Tags::from_pairs(map)
}

/// The payload of one log row (columns from 2 on; see `schema::LOG_COLUMNS`).
fn event_payload(row: &Row, position: PgPosition) -> Result<CompletionPayload, EngineError> {
    use completion_core::hub::Position;

    let execution_id = ExecutionId::new(column::<String>(row, 2)?)?;
    let flow_id = column::<Option<String>>(row, 3)?.map(FlowId::new).transpose()?;
    let namespace = Namespace::new(column::<String>(row, 4)?)?;
    let outcome: Outcome = column::<String>(row, 5)?.parse()?;
    let tags = parse_tags(&column::<String>(row, 6)?)?;
    let completed_at: i64 = column(row, 7)?;
    Ok(CompletionPayload::new(execution_id, namespace, outcome)
        .with_flow(flow_id)
        .with_tags(tags)
        .with_completed_at_ms(completed_at.max(0) as u64)
        .with_cursor(position.to_cursor()))
}
