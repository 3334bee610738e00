//! What an instance and its server can tell about themselves: the counters specific to the
//! PostgreSQL backend ([`PostgresStats`], next to the shared
//! [`CounterSnapshot`](completion_core::CounterSnapshot) of the hub), and the server's view of
//! one schema over every instance that uses it ([`PgServerView`], [`LogSize`]).
//!
//! The server view is a few short queries, meant for operators (`completions stats`), not
//! for a hot path.

use completion_core::EngineError;

use crate::conn::Conn;
use crate::conn::errors::{column, first_row};
use crate::schema::{LISTENERS, NOTIFICATION_QUEUE_USAGE};

completion_core::counter_set! {
    /// Live counters of one instance.
    pub(crate) struct Stats;
    /// PostgreSQL-specific counters of one backend instance, from
    /// [`PostgresBackend::stats`](crate::PostgresBackend::stats).
    pub struct PostgresStats {
        /// Notifications received on the LISTEN connection (before coalescing).
        notifications,
        /// LISTEN connections lost, and attempts to re-open one that failed.
        listener_failures,
        /// Pooled operations retried because their connection was closed or terminated.
        retries,
        /// Committed events the last log read saw above the final ticket, waiting for a writer
        /// that appended before them and is still in flight (up to the read's limit). Non-zero
        /// for long means a long writing transaction delays delivery.
        held_back_events,
        /// Log reads that found events held back above the final ticket.
        held_back_reads,
        /// Retention trims ([`enforce_retention`](crate::PostgresBackend::enforce_retention), called
        /// or in the background) that completed.
        prune_runs,
        /// Events deleted by the retention trims of this instance.
        pruned_events,
        /// Feed reads that found terminal writes in flight (with coalesced NOTIFYs) and so
        /// scheduled another read `in_flight_recheck` later.
        in_flight_rechecks,
        /// Final-ticket checks the feed made while a read held committed events back (on a
        /// backoff from `in_flight_recheck` to 32 times that), to read again as soon as the
        /// writer holding them back ended.
        held_back_checks,
        /// Events the feed delivered straight from a notification's payload, before its log
        /// read (schema version 4); the log reads are `CounterSnapshot::catch_up_reads`.
        delivered_from_notification,
    }
}

/// The completion log's size, from [`PostgresBackend::log_size`](crate::PostgresBackend::log_size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSize {
    /// Events the log holds now.
    pub events: u64,
    /// Committed events above the final ticket, waiting for a writer that registered before
    /// them and is still in flight (capped at 1000); not yet deliverable.
    pub held_back: u64,
    /// The log table's size on disk with its indexes, in bytes.
    pub bytes: u64,
    /// Events pruned from the log so far, by every instance.
    pub pruned: u64,
}

/// What the server holds for one schema, over every instance that uses it, from
/// [`PostgresBackend::server_view`](crate::PostgresBackend::server_view).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct PgServerView {
    /// The schema's applied migration version (`None`: not migrated).
    pub schema_version: Option<i32>,
    /// `pg_notification_queue_usage()`: the share of the server's NOTIFY queue in use (all
    /// channels). Near 1.0 every NOTIFYing commit fails.
    pub notification_queue_usage: f64,
    /// The log's size, held-back events and events pruned
    /// ([`PostgresBackend::log_size`](crate::PostgresBackend::log_size)).
    pub log: LogSize,
    /// The oldest retained event's ticket: a cursor `postgres:<t>` with `t` below it minus one
    /// resumes with a gap. `None`: the log is empty.
    pub oldest_ticket: Option<i64>,
    /// The oldest retained event's commit time, ms since the Unix epoch.
    pub oldest_completed_at_ms: Option<u64>,
    /// The newest event's ticket (it may be held back).
    pub newest_ticket: Option<i64>,
    /// The final ticket: events up to it are deliverable; those above wait for a writer in
    /// flight (`log.held_back`).
    pub final_ticket: Option<i64>,
    /// The sessions LISTENing on the schema's channel now: one per live instance with open
    /// streams (and `listen = true`), named `<application_name>-<instance>-listen`.
    pub listeners: Vec<PgListener>,
}

/// One LISTEN session on the schema's channel, from `pg_stat_activity`. Sessions of other
/// roles show only to a superuser or a member of `pg_read_all_stats` (otherwise their query
/// text is hidden and they are not found).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgListener {
    /// Its `application_name` (this backend's: `<application_name>-<instance>-listen`).
    pub application_name: String,
    /// The server process id (for `pg_terminate_backend`).
    pub pid: i32,
    /// The role it connected as.
    pub user: Option<String>,
    /// The client's address (`None` over a Unix socket).
    pub client_addr: Option<String>,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: Option<u64>,
}

/// A count or size column: `NULL` and negatives are 0.
fn count(row: &tokio_postgres::Row, index: usize) -> Result<u64, EngineError> {
    Ok(column::<Option<i64>>(row, index)?.unwrap_or(0).max(0) as u64)
}

/// Events in the log, events committed but held back above the final ticket (capped at
/// 1000), the log table's size on disk, and events pruned so far.
pub(crate) async fn log_size(conn: &Conn) -> Result<LogSize, EngineError> {
    const OP: &str = "log size";
    let rows = conn.rows(OP, &conn.sql().log_size, &[]).await?;
    let row = first_row(&rows, OP)?;
    Ok(LogSize { events: count(row, 0)?, held_back: count(row, 1)?, bytes: count(row, 2)?, pruned: count(row, 3)? })
}

/// `pg_notification_queue_usage()`.
pub(crate) async fn notification_queue_usage(conn: &Conn) -> Result<f64, EngineError> {
    const OP: &str = "notification queue usage";
    let rows = conn.rows(OP, NOTIFICATION_QUEUE_USAGE, &[]).await?;
    match rows.first() {
        Some(row) => column(row, 0),
        None => Ok(0.0),
    }
}

/// The server's view of the schema (see [`PgServerView`]).
pub(crate) async fn server_view(conn: &Conn) -> Result<PgServerView, EngineError> {
    const OP: &str = "log extent";
    let rows = conn.rows(OP, &conn.sql().log_extent, &[]).await?;
    let extent = first_row(&rows, OP)?;
    Ok(PgServerView {
        schema_version: crate::migrate::schema_version(conn).await?,
        notification_queue_usage: notification_queue_usage(conn).await?,
        log: log_size(conn).await?,
        oldest_ticket: column(extent, 0)?,
        oldest_completed_at_ms: column::<Option<i64>>(extent, 3)?.map(|ms| ms.max(0) as u64),
        newest_ticket: column(extent, 1)?,
        final_ticket: column(extent, 2)?,
        listeners: listeners(conn).await?,
    })
}

/// The sessions of this database whose latest statement is this schema's `LISTEN` (what a
/// LISTEN connection of this backend runs, and all it runs), from `pg_stat_activity`.
async fn listeners(conn: &Conn) -> Result<Vec<PgListener>, EngineError> {
    const OP: &str = "listeners";
    let rows = conn.rows(OP, LISTENERS, &[&conn.sql().listen]).await?;
    rows.iter()
        .map(|row| {
            Ok(PgListener {
                application_name: column(row, 0)?,
                pid: column(row, 1)?,
                user: column(row, 2)?,
                client_addr: column(row, 3)?,
                connected_at_ms: column::<Option<i64>>(row, 4)?.map(|ms| ms.max(0) as u64),
            })
        })
        .collect()
}
