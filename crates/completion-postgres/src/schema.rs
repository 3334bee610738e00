//! The schema name, and every SQL statement the backend runs: no other module of this crate
//! holds SQL text. The statements of one instance ([`Sql`]) are built once, qualified with its
//! schema; those that name no schema object are constants.
//!
//! The schema name is the only text ever spliced into SQL (with the NOTIFY channel derived
//! from it): it is validated here against a strict identifier pattern and always written
//! quoted. Every value (ids, namespaces, tags, reasons, positions) travels as a bind
//! parameter.

use completion_core::EngineError;

/// A validated schema name: `[a-z_][a-z0-9_]*`, 1 to [`Schema::MAX_LEN`] bytes, not a
/// system schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schema(String);

impl Schema {
    /// Longest accepted name: leaves room for the `_completions` channel suffix within
    /// PostgreSQL's 63-byte identifier limit.
    pub const MAX_LEN: usize = 41;

    pub fn new(name: &str) -> Result<Self, EngineError> {
        let bad = |reason: &str| EngineError::invalid("schema", name, reason);
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(bad(&format!("must be 1 to {} bytes long", Self::MAX_LEN)));
        }
        let first_ok = bytes[0].is_ascii_lowercase() || bytes[0] == b'_';
        if !first_ok || !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_') {
            return Err(bad("must match [a-z_][a-z0-9_]* (lower-case letters, digits, underscores)"));
        }
        if name.starts_with("pg_") || name == "information_schema" {
            return Err(bad("is reserved for PostgreSQL's system schemas"));
        }
        Ok(Self(name.to_string()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name as a quoted identifier (the pattern excludes `"`, so nothing to escape).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The NOTIFY channel; the SQL function `notify_channel()` computes the same name.
    pub fn channel(&self) -> String {
        format!("{}_completions", self.0)
    }
}

/// Columns of one log row, in the order [`Sql::read`] returns them after its header column.
pub(crate) const LOG_COLUMNS: &str =
    "e.ticket, e.execution_id, e.flow_id, e.namespace, e.outcome, e.tags::text, e.completed_at_ms";

/// Checks that a connection can be made and used.
pub(crate) const PING: &str = "SELECT 1";

/// Opens the transaction a log read runs in: READ COMMITTED whatever the server's default,
/// so that each statement takes a snapshot of its own (the read's after the final ticket's).
pub(crate) const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Ends the transaction of [`BEGIN_READ`].
pub(crate) const COMMIT: &str = "COMMIT";

/// Run on each pool connection as it opens when `PostgresConfig::generic_plans` is on.
pub(crate) const GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan";

/// The share of the server's NOTIFY queue in use (all channels).
pub(crate) const NOTIFICATION_QUEUE_USAGE: &str = "SELECT pg_notification_queue_usage()";

/// The sessions of this database whose latest statement is `$1` (a [`Sql::listen`]), from
/// `pg_stat_activity`: name, pid, role, client address, start (ms since the epoch).
pub(crate) const LISTENERS: &str = "SELECT coalesce(application_name, ''), pid, usename::text, client_addr::text,
                                           (extract(epoch FROM backend_start) * 1000)::bigint
                                    FROM pg_stat_activity
                                    WHERE datname = current_database() AND query = $1
                                    ORDER BY application_name, pid";

/// `LISTEN` on `channel`, quoted so that it is taken as is (LISTEN would silently truncate a
/// name longer than 63 bytes, which the schema validation rules out for the channel of a
/// [`Schema`]).
pub(crate) fn listen(channel: &str) -> String {
    format!("LISTEN \"{channel}\"")
}

/// The statements of a migration run (`migrate.rs`), on its dedicated connection.
pub(crate) mod migration {
    use super::Schema;

    /// How long a migration run queues behind another process migrating the same schema.
    pub(crate) const LOCK_TIMEOUT: &str = "SET lock_timeout = '60s'";

    /// Takes the advisory lock of `$1` (the schema's lock key), for the session.
    pub(crate) const LOCK: &str = "SELECT pg_advisory_lock(hashtextextended($1, 0))";

    /// Releases the lock of [`LOCK`].
    pub(crate) const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

    /// The advisory lock key of migrations of `schema`.
    pub(crate) fn lock_key(schema: &Schema) -> String {
        format!("completion-postgres migrate {}", schema.name())
    }

    /// Creates the schema if needed and makes it the session's `search_path`, so that the
    /// migrations and their history table land in it.
    pub(crate) fn enter_schema(schema: &Schema) -> String {
        let quoted = schema.quoted();
        format!("CREATE SCHEMA IF NOT EXISTS {quoted}; SET search_path TO {quoted}")
    }
}

/// Every statement of one instance, qualified with its schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub create: String,
    pub finish: String,
    /// `emit_completion`, run on the caller's own transaction (`PostgresBackend::emit_in`).
    pub emit: String,
    /// Whether a terminal write is in flight (schema version 2).
    pub in_flight: String,
    /// The final ticket: every ticket at or below it is final (schema version 4). Sent in a
    /// statement of its own, before the statement that reads up to it.
    pub final_ticket: String,
    /// The last ticket handed out.
    pub last_ticket: String,
    pub describe: String,
    /// Log reads by filter shape: none, namespace, tag, namespace and tag.
    pub read: [String; 4],
    /// The newest ticket in the log.
    pub newest: String,
    /// The first completion of an execution the log retains (outcome, completed_at_ms).
    pub completion_of: String,
    /// What a cursor of schema version 3 or older maps to (see `Log::legacy_ticket`).
    pub legacy: String,
    pub prune: String,
    pub version: String,
    /// [`listen`] on the schema's channel.
    pub listen: String,
    /// Events in the log, events held back above the final ticket (the ticket index walked
    /// down to the final ticket, at most 1000: never a scan of the whole log), the log
    /// table's size on disk with its indexes, and events pruned so far.
    pub log_size: String,
    /// The oldest and newest tickets, the final ticket, and the oldest event's commit time
    /// (ms). Index lookups only.
    pub log_extent: String,
}

impl Sql {
    pub fn new(schema: &Schema) -> Self {
        let s = schema.quoted();
        let read = |filter: &str| {
            // Header (the retention watermark) joined with up to $2 events after ticket $1, in
            // ticket order. The read does not stop at the final ticket: it cannot take it as a
            // parameter (the final ticket is asked in the statement before, pipelined in the
            // same round trip, so that this statement's snapshot is taken after it), so the
            // caller drops the events above it and counts them as held back.
            // `LIMIT 1` on the singleton watermark row: pruned_to is never analyzed (it never
            // changes size), and without it the planner's row guess inflates every cost above
            // it enough to JIT-compile the read (docs/benchmarks.md, History, "PostgreSQL
            // catch-up and log reads").
            format!(
                "WITH meta AS (SELECT w.ticket AS wticket FROM {s}.pruned_to w LIMIT 1)
                 SELECT m.wticket, {LOG_COLUMNS}
                 FROM meta m
                 LEFT JOIN LATERAL (
                    SELECT l.* FROM {s}.completion_log l
                    WHERE l.ticket > $1::int8 {filter}
                    ORDER BY l.ticket
                    LIMIT $2
                 ) e ON true
                 ORDER BY e.ticket"
            )
        };
        Self {
            create: format!("SELECT {s}.create_execution($1, $2, $3, $4::text::jsonb, $5)"),
            finish: format!("SELECT {s}.finish_execution($1, $2, $3, $4, $5)"),
            emit: format!("SELECT {s}.emit_completion($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10)"),
            in_flight: format!("SELECT {s}.writers_in_flight()"),
            final_ticket: format!("SELECT {s}.final_ticket()"),
            last_ticket: format!("SELECT {s}.last_ticket()"),
            describe: format!(
                "SELECT id, namespace, flow_id, tags::text, state, reason, created_at_ms, completed_at_ms
                 FROM {s}.executions WHERE id = $1"
            ),
            read: [
                read(""),
                read("AND l.namespace = $3"),
                read("AND l.tags @> $3::text::jsonb"),
                read("AND l.namespace = $3 AND l.tags @> $4::text::jsonb"),
            ],
            completion_of: format!(
                "SELECT l.outcome, l.completed_at_ms FROM {s}.completion_log l WHERE l.execution_id = $1
                 ORDER BY l.ticket LIMIT 1"
            ),
            newest: format!("SELECT (SELECT l.ticket FROM {s}.completion_log l ORDER BY l.ticket DESC LIMIT 1)"),
            legacy: format!(
                "SELECT (SELECT min(l.ticket) FROM {s}.completion_log l
                          WHERE (l.xid, l.id) > ($1::text::xid8, $2::int8)),
                        w.xid::text, w.id, w.ticket, pg_snapshot_xmax(pg_current_snapshot())::text
                 FROM {s}.pruned_to w LIMIT 1"
            ),
            prune: format!("SELECT deleted, watermark FROM {s}.prune_tickets($1, $2)"),
            version: format!("SELECT max(version) FROM {s}.schema_migrations"),
            listen: listen(&schema.channel()),
            log_size: format!(
                "SELECT (SELECT count(*) FROM {s}.completion_log),
                        (SELECT count(*) FROM (SELECT 1 FROM {s}.completion_log h
                                               WHERE h.ticket > {s}.final_ticket()
                                               ORDER BY h.ticket DESC LIMIT 1000) held),
                        pg_total_relation_size('{s}.completion_log'::regclass),
                        (SELECT pruned FROM {s}.pruned_to LIMIT 1)"
            ),
            log_extent: format!(
                "SELECT (SELECT min(ticket) FROM {s}.completion_log),
                        (SELECT max(ticket) FROM {s}.completion_log),
                        {s}.final_ticket(),
                        (SELECT completed_at_ms FROM {s}.completion_log ORDER BY ticket LIMIT 1)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_strict_identifiers() {
        for good in ["completions", "_x", "t_1a2b", &"a".repeat(41)] {
            assert!(Schema::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Completions",
            "1abc",
            "a-b",
            "a b",
            "x\"; DROP SCHEMA public CASCADE; --",
            "pg_catalog",
            "information_schema",
            &"a".repeat(42),
            "café",
        ] {
            let err = Schema::new(bad).unwrap_err().to_string();
            assert!(err.contains("schema"), "{bad}: {err}");
        }
        let s = Schema::new(&"a".repeat(41)).unwrap();
        assert!(s.channel().len() <= 63);
        assert_eq!(Schema::new("x").unwrap().quoted(), "\"x\"");
    }
}
