//! The binary against a throwaway PostgreSQL server (or `$DATABASE_URL`): tail, filters,
//! Ctrl-C and resume, migrate, stats. One shared server; each test works in a schema of its
//! own.

mod common;

use std::sync::OnceLock;

use common::{run, runtime, unique};
use completion_postgres::{PostgresBackend, PostgresConfig};
use completion_testserver::{PostgresOptions, PostgresServer};

fn server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        PostgresServer::from_env_or_start(PostgresOptions::default())
            .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"))
    })
}

/// The URL and `--schema` of a fresh (migrated) schema, and a library backend writing to it.
fn fresh() -> (Vec<String>, PostgresBackend) {
    let schema = unique("cli");
    let config = PostgresConfig::from_url(server().url()).with_schema(&schema).with_prune_interval(None);
    let writer = runtime().block_on(PostgresBackend::connect(config)).expect("writer connects");
    (vec![server().url(), "--schema".into(), schema], writer)
}

common::shared_scenarios!("postgres");

#[test]
fn migrate_creates_the_schema_once_then_is_a_no_op() {
    let url = server().url();
    let schema = unique("migrate");
    let first = run(&["migrate", &url, "--schema", &schema]);
    assert_eq!(first.status.code(), Some(0), "{first:#?}");
    assert_eq!(
        first.stdout,
        [format!(
            "postgres schema \"{schema}\": none -> version 4 (applied V1 completions, V2 coalesced_notify, V3 in_flight_check_without_pg_locks, V4 tickets)"
        )],
        "{first:#?}"
    );
    let second = run(&["migrate", &url, "--schema", &schema]);
    assert_eq!(second.status.code(), Some(0), "{second:#?}");
    assert_eq!(second.stdout, [format!("postgres schema \"{schema}\": already at version 4, nothing to do")]);
}

#[test]
fn tail_on_an_unmigrated_schema_says_to_migrate() {
    let done = run(&["tail", &server().url(), "--schema", &unique("bare")]);
    let line = done.assert_one_line_failure(4);
    assert!(line.contains("completions migrate"), "{line}");
}

#[test]
fn stats_reports_the_log_and_the_notification_queue() {
    let (target, writer) = fresh();
    common::complete(&writer, "counted-1", "stats", &[]);
    common::complete(&writer, "counted-2", "stats", &[]);
    let mut args = vec!["stats", "--json"];
    args.extend(target.iter().map(String::as_str));
    let done = run(&args);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    let stats: serde_json::Value = serde_json::from_str(&done.stdout[0]).expect("one JSON object");
    let server = &stats["server"];
    assert_eq!(server["backend"], "postgres");
    assert_eq!(server["schema"], target[2].as_str());
    assert_eq!(server["schema_version"], completion_postgres::SCHEMA_VERSION);
    assert_eq!(server["log_events"], 2, "{stats}");
    assert_eq!(server["log_held_back_events"], 0, "{stats}");
    assert!(server["log_bytes"].as_u64().is_some_and(|b| b > 0), "{stats}");
    let usage = server["notification_queue_usage"].as_f64().expect("a number");
    assert!((0.0..=1.0).contains(&usage), "{stats}");

    let human = run(&["stats", &target[0], "--schema", &target[2]]);
    assert_eq!(human.status.code(), Some(0), "{human:#?}");
    assert!(human.stdout.iter().any(|l| l.trim_start().starts_with("log_events") && l.trim_end().ends_with(" 2")));
}

#[test]
fn resuming_from_a_pruned_cursor_prints_a_gap_line_first() {
    let schema = unique("gap");
    let config = PostgresConfig::from_url(server().url())
        .with_schema(&schema)
        .with_prune_interval(None)
        .with_retention(completion_core::Retention::events(1));
    let writer = runtime().block_on(PostgresBackend::connect(config)).expect("writer connects");
    let target = [server().url(), "--schema".to_string(), schema];
    let mut args: Vec<&str> = target.iter().map(String::as_str).collect();
    args.push("--json");

    let mut tail = common::Running::tail(&args);
    common::complete(&writer, "seen", "gap", &[]);
    assert_eq!(tail.next_json()["execution_id"], "seen");
    tail.interrupt();
    let cursor = common::last_cursor(&tail.finish().stderr);

    for id in ["trimmed-1", "trimmed-2", "kept"] {
        common::complete(&writer, id, "gap", &[]);
    }
    let pruned = runtime().block_on(writer.prune()).expect("prune");
    assert_eq!(pruned.deleted, 3, "retention keeps only the newest event");

    args.extend(["--from", &cursor]);
    let mut tail = common::Running::tail(&args);
    let gap = tail.next_json();
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["after"].as_str(), Some(cursor.as_str()), "{gap}");
    assert!(gap["resumed_at"].as_str().is_some_and(|c| c.starts_with("postgres:")), "{gap}");
    let kept = tail.next_json();
    assert_eq!((kept["type"].as_str(), kept["execution_id"].as_str()), (Some("completion"), Some("kept")));
    tail.interrupt();
    let done = tail.finish();
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert_eq!(common::last_cursor(&done.stderr), kept["cursor"].as_str().unwrap_or_default());
}
