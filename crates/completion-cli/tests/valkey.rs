//! The binary against a throwaway Valkey server (or `$VALKEY_URL`): tail, filters, Ctrl-C
//! and resume, migrate, stats. One shared server; each test works in a key prefix of its own.

mod common;

use std::sync::OnceLock;

use common::{Running, Stream, assert_no_panic, complete, run, runtime, unique};
use completion_testserver::{ValkeyOptions, ValkeyServer};
use completions::valkey::{LIBRARY_VERSION, ValkeyBackend, ValkeyConfig};

fn server() -> &'static ValkeyServer {
    static SERVER: OnceLock<ValkeyServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ValkeyServer::from_env_or_start(ValkeyOptions::default().persistence(false))
            .unwrap_or_else(|e| panic!("could not start valkey-server: {e}"))
    })
}

/// The URL and `--prefix` of a fresh prefix, and a library backend writing to it.
fn fresh() -> (Vec<String>, ValkeyBackend) {
    let prefix = unique("cli");
    let config = ValkeyConfig::new(server().url()).with_key_prefix(&prefix);
    let writer = runtime().block_on(ValkeyBackend::connect(config)).expect("writer connects");
    (vec![server().url(), "--prefix".into(), prefix], writer)
}

common::shared_scenarios!("valkey");

#[test]
fn the_valkey_scheme_alias_reaches_the_same_server() {
    let (mut target, writer) = fresh();
    target[0] = target[0].replacen("redis://", "valkey://", 1);
    assert!(target[0].starts_with("valkey://"), "{target:?}");
    common::interrupt_then_resume(&target, &writer);
}

#[test]
fn migrate_loads_the_library_once_then_is_a_no_op() {
    // A server of its own: the library is server-wide, and the shared server has it.
    let own = ValkeyServer::start(ValkeyOptions::default().persistence(false)).expect("a dedicated server");
    let url = own.url();
    let prefix = unique("migrate");
    let first = run(&["migrate", &url, "--prefix", &prefix]);
    assert_eq!(first.status.code(), Some(0), "{first:#?}");
    let loaded = &first.stdout[0];
    assert_eq!(loaded, &format!("valkey function library \"completions\": none -> version {LIBRARY_VERSION}"));
    assert_eq!(first.stdout[1], format!("valkey key prefix \"{prefix}\": 16 partitions"));
    let second = run(&["migrate", &url, "--prefix", &prefix]);
    assert_eq!(second.status.code(), Some(0), "{second:#?}");
    assert_eq!(
        second.stdout[0],
        format!("valkey function library \"completions\": already at version {LIBRARY_VERSION}, nothing to do")
    );
}

#[test]
fn migrate_names_the_older_library_it_upgrades() {
    let own = ValkeyServer::start(ValkeyOptions::default().persistence(false)).expect("a dedicated server");
    // An older build's library: same name, only its version function.
    let old = LIBRARY_VERSION - 1;
    let source = format!(
        "#!lua name=completions\nlocal VERSION = {old}\nredis.register_function{{function_name='completions_version', \
         callback=function() return VERSION end, flags={{'no-writes'}}}}\n"
    );
    own.command(&["FUNCTION", "LOAD", &source]).expect("the older library loads");
    let out = run(&["migrate", &own.url(), "--prefix", &unique("upgrade")]);
    assert_eq!(out.status.code(), Some(0), "{out:#?}");
    assert_eq!(
        out.stdout[0],
        format!("valkey function library \"completions\": version {old} -> version {LIBRARY_VERSION}")
    );
}

#[test]
fn stats_reports_the_library_and_counters_as_json() {
    let (target, _writer) = fresh();
    let mut args = vec!["stats", "--json"];
    args.extend(target.iter().map(String::as_str));
    let done = run(&args);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    let stats: serde_json::Value = serde_json::from_str(&done.stdout[0]).expect("one JSON object");
    assert_eq!(stats["server"]["backend"], "valkey");
    assert_eq!(stats["server"]["library_version"], LIBRARY_VERSION);
    assert_eq!(stats["server"]["key_prefix"], target[2].as_str());
    assert_eq!(stats["counters"]["gaps"], 0);
    assert!(stats["valkey_counters"]["library_loads"].is_u64(), "{stats}");
}

/// `stats` reports what the server knows about every live instance: another instance with
/// a stream open counts as a subscriber, and each partition's log shows its length and ids.
#[test]
fn stats_shows_the_subscriber_of_another_live_instance_and_each_partition_log() {
    use completions::CompletionBackend;

    let (target, writer) = fresh();
    let stats = |json: bool| {
        let mut args = vec!["stats"];
        args.extend(target.iter().map(String::as_str));
        if json {
            args.push("--json");
        }
        run(&args)
    };
    let before = stats(true);
    assert_eq!(before.status.code(), Some(0), "{before:#?}");
    let before: serde_json::Value = serde_json::from_str(&before.stdout[0]).expect("one JSON object");
    assert_eq!(before["server"]["subscribers"], 0, "nothing subscribed yet: {before}");

    let stream = runtime().block_on(writer.subscribe_completions()).expect("subscribe");
    for id in ["one", "two", "three"] {
        complete(&writer, id, "view", &[]);
    }
    let done = stats(true);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    let all: serde_json::Value = serde_json::from_str(&done.stdout[0]).expect("one JSON object");
    let server = &all["server"];
    assert_eq!(server["subscribers"], 1, "the writer's subscriber connection: {all}");
    assert_eq!(server["channels"][0]["subscribers"], 1, "{all}");
    assert_eq!(server["log_entries"], 3, "{all}");
    let logs = server["partition_logs"].as_array().expect("a list");
    assert_eq!(logs.len(), 16, "{all}");
    for log in logs {
        let length = log["length"].as_u64().expect("a length");
        assert!(log["key"].as_str().is_some_and(|k| k.starts_with(target[2].as_str()) && k.ends_with(":log")), "{log}");
        if length == 0 {
            assert!(log["first_id"].is_null() && log["last_id"].is_null(), "{log}");
        } else {
            assert!(log["first_id"].is_string() && log["last_id"].is_string(), "{log}");
            assert_eq!(length == 1, log["first_id"] == log["last_id"], "{log}");
        }
    }
    let human = stats(false);
    assert_eq!(human.status.code(), Some(0), "{human:#?}");
    assert!(human.stdout.iter().any(|l| l.trim_start().starts_with("subscribers") && l.trim_end().ends_with(" 1")));
    drop(stream);
    let after = stats(true);
    let after: serde_json::Value = serde_json::from_str(&after.stdout[0]).expect("one JSON object");
    assert!(after["server"]["subscribers"].as_u64() <= Some(1), "{after}");
}

#[test]
fn a_prefix_with_another_partition_count_is_refused_in_one_line() {
    let (target, _writer) = fresh();
    let done = run(&["stats", &target[0], "--prefix", &target[2], "--partitions", "4"]);
    let line = done.assert_one_line_failure(4);
    assert!(line.contains("partitions"), "{line}");
}

/// A closed stdout or stderr (docs/cli.md, "`tail`"): `tail --from earliest 2>&1 | head -3`
/// must end with exit 0 once `head` is gone, not abort writing to the closed pipe.
#[test]
fn tail_into_head_stops_when_the_pipe_closes() {
    let (target, writer) = fresh();
    for n in 0..5 {
        complete(&writer, &format!("piped-{n}"), "pipes", &[]);
    }
    let script = r#""$0" tail "$1" --prefix "$2" --from earliest 2>&1 | head -3; echo "tail exited ${PIPESTATUS[0]}""#;
    let output = std::process::Command::new("bash")
        .args(["-c", script, common::binary(), &target[0], &target[2]])
        .env_remove("RUST_LOG")
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("completions: tailing "), "{stdout}");
    assert!(lines[1].contains("piped-0") && lines[2].contains("piped-1"), "{stdout}");
    assert_eq!(lines[3], "tail exited 0", "{stdout}");
    assert!(!stdout.contains("panicked"), "{stdout}");
}

#[test]
fn tail_stops_like_on_ctrl_c_when_its_stdout_closes() {
    let (target, writer) = fresh();
    complete(&writer, "first", "pipes", &[]);
    let mut args = vec!["tail", "--from", "earliest"];
    args.extend(target.iter().map(String::as_str));
    // The reader closes stdout after the first line; nothing more is written after that.
    let mut tail = Running::start_closing(&args, Some((Stream::Stdout, 1)));
    tail.stderr_line(|line| line.starts_with("completions: tailing "));
    let done = tail.finish();
    assert_no_panic(&done);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert!(done.stdout[0].contains("first"), "{done:#?}");
    assert!(done.stderr.iter().any(|l| l == "completions: stopped: stdout was closed"), "{done:#?}");
    common::last_cursor(&done.stderr);
}

#[test]
fn tail_stops_like_on_ctrl_c_when_its_stderr_closes() {
    let (target, _writer) = fresh();
    let mut args = vec!["tail"];
    args.extend(target.iter().map(String::as_str));
    // The reader closes stderr after the readiness line; tail has nothing to print, and
    // must notice by itself.
    let tail = Running::start_closing(&args, Some((Stream::Stderr, 1)));
    let done = tail.finish();
    assert_no_panic(&done);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert!(done.stderr[0].starts_with("completions: tailing "), "{done:#?}");
    assert!(done.stdout.is_empty(), "{done:#?}");
}

#[test]
fn tail_with_stderr_closed_from_the_start_still_prints_and_stops() {
    let (target, writer) = fresh();
    complete(&writer, "seen", "pipes", &[]);
    let mut args = vec!["tail", "--from", "earliest", "--json"];
    args.extend(target.iter().map(String::as_str));
    // stderr closed before the start: the readiness line fails, tail stops at once, exit 0.
    let done = common::run_with_closed(&args, Stream::Stderr);
    assert_no_panic(&done);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
}

#[test]
fn a_malformed_valkey_cursor_is_a_one_line_usage_error() {
    let (target, _writer) = fresh();
    for cursor in ["valkey:16:zz", "valkey:16:1-0,1-0", "valkey:x:1-0"] {
        let mut args = vec!["tail", "--from", cursor];
        args.extend(target.iter().map(String::as_str));
        let done = run(&args);
        assert_no_panic(&done);
        let line = done.assert_one_line_failure(2);
        assert!(line.contains("cursor"), "{cursor}: {line}");
    }
}

#[test]
fn a_database_the_server_lacks_is_named_in_one_line() {
    // The throwaway server has the default 16 databases: 0 to 15.
    let (target, _writer) = fresh();
    let url = format!("{}/200", target[0].trim_end_matches('/'));
    let done = run(&["stats", &url, "--prefix", &target[2]]);
    assert_no_panic(&done);
    let line = done.assert_one_line_failure(2);
    assert!(line.contains("invalid database \"200\": the server has no such database"), "{line}");
}
