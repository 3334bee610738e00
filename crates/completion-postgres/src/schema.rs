//! The schema name, and every SQL statement the backend runs, built once per instance.
//!
//! The schema name is the only text ever spliced into SQL: it is validated here against a
//! strict identifier pattern and always written quoted. Every value (ids, namespaces, tags,
//! reasons, positions) travels as a bind parameter.

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

/// Columns of one log row, in the order [`Sql::read`] returns them after its three header
/// columns.
pub(crate) const LOG_COLUMNS: &str =
    "e.xid::text, e.id, e.execution_id, e.flow_id, e.namespace, e.outcome, e.tags::text, e.completed_at_ms";

/// Every statement of one instance, qualified with its schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub create: String,
    pub finish: String,
    /// Whether a terminal write is in flight (schema version 2).
    pub in_flight: String,
    pub describe: String,
    /// Log reads by filter shape: none, namespace, tag, namespace and tag.
    pub read: [String; 4],
    pub head: String,
    pub horizon: String,
    pub next_xid: String,
    pub prune: String,
    pub version: String,
}

impl Sql {
    pub fn new(schema: &Schema) -> Self {
        let s = schema.quoted();
        let read = |filter: &str| {
            // The held-back count must walk the position index down from the top and stop at
            // the horizon, never scan the log: a sequential scan on every read made latency
            // grow with the log (0.5 ms -> 7 ms p50 at 20 000 events, found by `cargo xtask
            // bench`). The ORDER BY alone did not ensure it: the planner cannot know the
            // horizon's value, assumes a one-sided `xid >= horizon` keeps a third of the log,
            // and then preferred a sequential scan plus sort (seen with EXPLAIN at 6 000 rows,
            // generic and custom plans alike). The upper bound `xid < xmax` excludes nothing
            // (no visible row has an xid at or above the snapshot's xmax) but makes the
            // condition a range, which the planner estimates at 0.5% of the log: the index wins.
            // `LIMIT 1` on the singleton watermark row: pruned_to is never analyzed (it never
            // changes size), so the planner guessed ~1 300 rows for it and multiplied every
            // cost above it; past `jit_above_cost` each read was JIT-compiled (~10 ms, seen
            // with EXPLAIN ANALYZE on the custom plans a connection's first reads use).
            // The held-back count is a lateral join on the header, not a subquery in the select
            // list: there it was run once per returned event (1 024 index walks for a full
            // batch, 11 ms instead of 2 ms: catch-up speed), seen with EXPLAIN ANALYZE.
            // Header (horizon, watermark, events held back above the horizon) joined with
            // up to $3 events after ($1, $2) and below the horizon. Rows below the horizon
            // are final: their transactions have all ended.
            format!(
                "WITH meta AS (
                    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon,
                           pg_snapshot_xmax(pg_current_snapshot()) AS xmax, w.xid AS wxid, w.id AS wid
                    FROM {s}.pruned_to w
                    LIMIT 1 -- the singleton row (see the comment above)
                 )
                 SELECT m.horizon::text, m.wxid::text, m.wid, h.held,
                        {LOG_COLUMNS}
                 FROM meta m
                 CROSS JOIN LATERAL (
                    SELECT count(*) AS held FROM (SELECT 1 FROM {s}.completion_log h
                                                  WHERE h.xid >= m.horizon AND h.xid < m.xmax
                                                  ORDER BY h.xid DESC, h.id DESC LIMIT 1000) b
                 ) h
                 LEFT JOIN LATERAL (
                    SELECT l.* FROM {s}.completion_log l
                    WHERE (l.xid, l.id) > ($1::text::xid8, $2::int8) AND l.xid < m.horizon {filter}
                    ORDER BY l.xid, l.id
                    LIMIT $3
                 ) e ON true
                 ORDER BY e.xid, e.id"
            )
        };
        Self {
            create: format!("SELECT {s}.create_execution($1, $2, $3, $4::text::jsonb, $5)"),
            finish: format!("SELECT {s}.finish_execution($1, $2, $3, $4, $5)"),
            in_flight: format!("SELECT {s}.writers_in_flight()"),
            describe: format!(
                "SELECT id, namespace, flow_id, tags::text, state, reason, created_at_ms, completed_at_ms
                 FROM {s}.executions WHERE id = $1"
            ),
            read: [
                read(""),
                read("AND l.namespace = $4"),
                read("AND l.tags @> $4::text::jsonb"),
                read("AND l.namespace = $4 AND l.tags @> $5::text::jsonb"),
            ],
            head: format!(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text,
                        (SELECT l.xid::text FROM {s}.completion_log l ORDER BY l.xid DESC, l.id DESC LIMIT 1)"
            ),
            horizon: "SELECT pg_snapshot_xmin(pg_current_snapshot())::text".into(),
            next_xid: "SELECT pg_snapshot_xmax(pg_current_snapshot())::text".into(),
            prune: format!("SELECT deleted, watermark_xid::text, watermark_id FROM {s}.prune($1, $2)"),
            version: format!("SELECT max(version) FROM {s}.schema_migrations"),
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
