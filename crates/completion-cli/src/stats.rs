//! `completions stats`: what the server reports about the completion log and its live
//! channel, and the backend's counters.
//!
//! - PostgreSQL: schema version, `pg_notification_queue_usage()` (near 1.0 every terminal
//!   write starts failing), events in the log, events held back behind a long-running
//!   transaction, the log's size on disk, events pruned so far.
//! - Valkey/Redis: function library version, key prefix and partitions.
//! - Every backend: the counters of the instance this command opened (`reconnects`,
//!   `gaps`, ...). They count this process's own activity, which for a one-shot command is
//!   mostly zero; an engine reports the counters of its own long-lived instance.
//!
//! Not reported (yet): the Valkey log's length and the subscriber's output buffer, which
//! completion-valkey does not expose.

use serde_json::{Map, Value, json};

use crate::connect::Backend;
use crate::error::CliError;
use crate::output;

/// The stats as sections of named values, in print order.
pub struct Stats {
    sections: Vec<(&'static str, Map<String, Value>)>,
}

/// Gathers the stats of `backend`, reached at `shown_url` (redacted).
pub async fn gather(backend: &Backend, shown_url: &str) -> Result<Stats, CliError> {
    let completions = backend.completions();
    let mut server = Map::new();
    server.insert("backend".into(), json!(completions.backend_name()));
    server.insert("url".into(), json!(shown_url));
    match backend {
        Backend::Memory(_) => {}
        Backend::Postgres(pg) => {
            let log = pg.log_size().await?;
            server.insert("schema".into(), json!(pg.schema()));
            server.insert("schema_version".into(), json!(pg.schema_version().await?));
            server.insert("notify_channel".into(), json!(pg.channel()));
            server.insert("notification_queue_usage".into(), json!(pg.notification_queue_usage().await?));
            server.insert("log_events".into(), json!(log.events));
            server.insert("log_held_back_events".into(), json!(log.held_back));
            server.insert("log_bytes".into(), json!(log.bytes));
            server.insert("log_pruned_events".into(), json!(log.pruned));
        }
        Backend::Valkey(valkey) => {
            let config = valkey.config();
            server.insert("key_prefix".into(), json!(config.key_prefix));
            server.insert("partitions".into(), json!(config.partitions));
            server.insert("library_version".into(), json!(valkey.library_version().await?));
        }
    }
    let counters = match serde_json::to_value(completions.counters()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut sections = vec![("server", server), ("counters", counters)];
    match backend {
        Backend::Memory(_) => {}
        Backend::Postgres(pg) => {
            let s = pg.stats();
            let fields = [
                ("notifications", s.notifications),
                ("listener_failures", s.listener_failures),
                ("retries", s.retries),
                ("held_back_events", s.held_back_events),
                ("held_back_reads", s.held_back_reads),
                ("prune_runs", s.prune_runs),
                ("pruned_events", s.pruned_events),
                ("in_flight_rechecks", s.in_flight_rechecks),
                ("held_back_checks", s.held_back_checks),
                ("delivered_from_notification", s.delivered_from_notification),
            ];
            sections.push(("postgres_counters", fields.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()));
        }
        Backend::Valkey(valkey) => {
            let s = valkey.stats();
            let fields = [
                ("library_loads", s.library_loads),
                ("lagged_messages", s.lagged_messages),
                ("message_holes", s.message_holes),
                ("resubscribes", s.resubscribes),
                ("feeds_started", s.feeds_started),
                ("safety_reads", s.safety_reads),
            ];
            sections.push(("valkey_counters", fields.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()));
        }
    }
    Ok(Stats { sections })
}

impl Stats {
    /// One JSON object: `{"at": ..., "server": {...}, "counters": {...}, ...}`.
    pub fn to_json(&self) -> String {
        let mut all = Map::new();
        all.insert("at".into(), json!(output::now()));
        for (name, values) in &self.sections {
            all.insert((*name).to_string(), Value::Object(values.clone()));
        }
        output::json(&Value::Object(all))
    }

    /// Readable lines: a header per section, then `  name  value`.
    pub fn to_lines(&self) -> Vec<String> {
        let width = self.sections.iter().flat_map(|(_, v)| v.keys()).map(String::len).max().unwrap_or(0);
        let mut lines = Vec::new();
        for (name, values) in &self.sections {
            lines.push(format!("{name}:"));
            for (key, value) in values {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => "none".to_string(),
                    Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
                    other => other.to_string(),
                };
                lines.push(format!("  {key:<width$}  {value}"));
            }
        }
        lines
    }
}
