//! `completions stats`: what the server reports about the completion log and its live
//! channel, and the backend's counters.
//!
//! - PostgreSQL (`PostgresBackend::server_view`): schema version, `pg_notification_queue_usage()`
//!   (near 1.0 every terminal write starts failing), events in the log, events held back
//!   behind a long-running transaction, the log's size on disk, events pruned so far, the
//!   oldest and newest tickets and the final ticket, and every LISTEN connection on the
//!   schema's channel (`pg_stat_activity`: one per live instance with streams open).
//! - Valkey/Redis (`ValkeyBackend::server_view`): function library version, key prefix and
//!   partitions, each partition log's length and first/last ids, and the subscriber
//!   connections on the prefix's channel(s) (`PUBSUB NUMSUB` / `SHARDNUMSUB`).
//! - Every backend: the counters of the instance this command opened (`reconnects`,
//!   `gaps`, ...). They count this process's own activity, which for a one-shot command is
//!   mostly zero; an engine reports the counters of its own long-lived instance.
//!
//! Not reported: the Valkey subscribers' output buffers (`CLIENT LIST` shows them).

use completions::Backend;
use serde_json::{Map, Value, json};

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
        Backend::Postgres(pg) => {
            let view = pg.server_view().await?;
            server.insert("schema".into(), json!(pg.schema()));
            server.insert("schema_version".into(), json!(view.schema_version));
            server.insert("notify_channel".into(), json!(pg.channel()));
            server.insert("notification_queue_usage".into(), json!(view.notification_queue_usage));
            server.insert("log_events".into(), json!(view.log.events));
            server.insert("log_held_back_events".into(), json!(view.log.held_back));
            server.insert("log_bytes".into(), json!(view.log.bytes));
            server.insert("log_pruned_events".into(), json!(view.log.pruned));
            server.insert("log_oldest_ticket".into(), json!(view.oldest_ticket));
            server.insert("log_oldest_completed_at".into(), json!(view.oldest_completed_at_ms.map(output::timestamp)));
            server.insert("log_newest_ticket".into(), json!(view.newest_ticket));
            server.insert("final_ticket".into(), json!(view.final_ticket));
            // This command's own instance never subscribes, so every listener is another one.
            server.insert("listen_connections".into(), json!(view.listeners.len()));
            let listeners: Vec<Value> = view
                .listeners
                .iter()
                .map(|l| {
                    json!({
                        "application_name": l.application_name,
                        "pid": l.pid,
                        "user": l.user,
                        "client_addr": l.client_addr,
                        "connected_at": l.connected_at_ms.map(output::timestamp),
                    })
                })
                .collect();
            server.insert("listeners".into(), Value::Array(listeners));
        }
        Backend::Valkey(valkey) => {
            let config = valkey.config();
            let view = valkey.server_view().await?;
            server.insert("key_prefix".into(), json!(config.key_prefix));
            server.insert("partitions".into(), json!(config.partitions));
            server.insert("library_version".into(), json!(view.library_version));
            server.insert("log_entries".into(), json!(view.log_entries()));
            // This command's own instance never subscribes, so every subscriber is another one.
            server.insert("subscribers".into(), json!(view.subscribers()));
            let logs: Vec<Value> = view
                .partitions
                .iter()
                .map(|p| json!({"partition": p.partition, "key": p.key, "length": p.length, "first_id": p.first_id, "last_id": p.last_id}))
                .collect();
            server.insert("partition_logs".into(), Value::Array(logs));
            let channels: Vec<Value> =
                view.channels.iter().map(|c| json!({"partition": c.partition, "subscribers": c.subscribers})).collect();
            server.insert("channels".into(), Value::Array(channels));
        }
        // The in-process backend has no server.
        _ => {}
    }
    let counters = match serde_json::to_value(completions.counters()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut sections = vec![("server", server), ("counters", counters)];
    match backend {
        Backend::Postgres(pg) => {
            let fields = pg.stats().fields();
            sections.push(("postgres_counters", fields.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()));
        }
        Backend::Valkey(valkey) => {
            let fields = valkey.stats().fields();
            sections.push(("valkey_counters", fields.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()));
        }
        _ => {}
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
                if let Value::Array(items) = value {
                    lines.push(format!("  {key:<width$}  {}", items.len()));
                    for item in items {
                        lines.push(format!("    - {}", item_line(item)));
                    }
                    continue;
                }
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

/// One element of a list as `name=value name=value` (its fields in order; none as `none`).
fn item_line(item: &Value) -> String {
    match item {
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                Value::Null => format!("{k}=none"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}
