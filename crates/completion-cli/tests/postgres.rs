//! The binary against a throwaway PostgreSQL server (or `$DATABASE_URL`): tail, filters,
//! Ctrl-C and resume, migrate, stats. One shared server; each test works in a schema of its
//! own.

mod common;

use std::sync::OnceLock;

use common::{run, runtime, unique};
use completion_testserver::{PostgresOptions, PostgresServer};
use completions::postgres::{PostgresBackend, PostgresConfig};

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
    let config = PostgresConfig::from_url(server().url()).with_schema(&schema).with_retention_interval(None);
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
    assert_eq!(server["schema_version"], completions::postgres::SCHEMA_VERSION);
    assert_eq!(server["log_events"], 2, "{stats}");
    assert_eq!(server["log_held_back_events"], 0, "{stats}");
    assert!(server["log_bytes"].as_u64().is_some_and(|b| b > 0), "{stats}");
    let usage = server["notification_queue_usage"].as_f64().expect("a number");
    assert!((0.0..=1.0).contains(&usage), "{stats}");

    let human = run(&["stats", &target[0], "--schema", &target[2]]);
    assert_eq!(human.status.code(), Some(0), "{human:#?}");
    assert!(human.stdout.iter().any(|l| l.trim_start().starts_with("log_events") && l.trim_end().ends_with(" 2")));
}

/// `stats` reports what the server knows about every live instance: another instance with
/// a stream open shows as a LISTEN connection under its application_name, and the log's
/// oldest and newest tickets bound what it holds.
#[test]
fn stats_shows_the_listen_connection_of_another_live_instance() {
    use completions::CompletionBackend;

    let (target, writer) = fresh();
    let args = |json: bool| {
        let mut args = vec!["stats"];
        args.extend(target.iter().map(String::as_str));
        if json {
            args.push("--json");
        }
        run(&args)
    };
    let before = args(true);
    assert_eq!(before.status.code(), Some(0), "{before:#?}");
    let before: serde_json::Value = serde_json::from_str(&before.stdout[0]).expect("one JSON object");
    assert_eq!(before["server"]["listen_connections"], 0, "nothing subscribed yet: {before}");
    assert_eq!(before["server"]["log_oldest_ticket"], serde_json::Value::Null, "an empty log: {before}");

    let stream = runtime().block_on(writer.subscribe_completions()).expect("subscribe");
    common::complete(&writer, "first", "view", &[]);
    common::complete(&writer, "second", "view", &[]);
    let done = args(true);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    let stats: serde_json::Value = serde_json::from_str(&done.stdout[0]).expect("one JSON object");
    let server = &stats["server"];
    assert_eq!(server["listen_connections"], 1, "{stats}");
    let listener = &server["listeners"][0];
    assert_eq!(listener["application_name"], writer.listener_application_name().as_str(), "{stats}");
    assert!(listener["pid"].as_i64().is_some_and(|p| p > 0), "{stats}");
    let (oldest, newest) = (server["log_oldest_ticket"].as_i64(), server["log_newest_ticket"].as_i64());
    assert!(oldest.is_some_and(|o| newest.is_some_and(|n| o < n)), "two events, oldest first: {stats}");
    assert!(server["final_ticket"].as_i64() >= newest, "nothing held back: {stats}");
    assert!(server["log_oldest_completed_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{stats}");

    let human = args(false);
    assert_eq!(human.status.code(), Some(0), "{human:#?}");
    let name = writer.listener_application_name();
    assert!(
        human
            .stdout
            .iter()
            .any(|l| l.trim_start().starts_with("- ") && l.contains(&format!("application_name={name}"))),
        "{human:#?}"
    );
    drop(stream);
}

#[test]
fn resuming_from_a_pruned_cursor_prints_a_gap_line_first() {
    let schema = unique("gap");
    let config = PostgresConfig::from_url(server().url())
        .with_schema(&schema)
        .with_retention_interval(None)
        .with_retention(completions::Retention::events(1));
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
    let trimmed = runtime().block_on(writer.enforce_retention()).expect("enforce retention");
    assert_eq!(trimmed.removed, 3, "retention keeps only the newest event");

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
