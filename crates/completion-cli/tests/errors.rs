//! Bad input and unreachable servers: one line on stderr, a non-zero exit code that tells
//! the kind, no panic, no password. Needs no server.

mod common;

use common::{Stream, assert_no_panic, free_port, run, run_with_closed};

#[test]
fn unknown_schemes_and_garbage_are_usage_errors() {
    for url in ["http://127.0.0.1:1", "garbage", "redis://", "memory:x", "mysql://u:hunter2@h/db"] {
        for command in ["tail", "migrate", "stats"] {
            let done = run(&[command, url]);
            let line = done.assert_one_line_failure(2);
            assert!(!line.contains("hunter2"), "{line}");
        }
    }
    let line = run(&["tail", "http://h"]).assert_one_line_failure(2).to_string();
    assert!(line.contains("unknown scheme `http://`") && line.contains("postgres://"), "{line}");
}

#[test]
fn bad_tail_arguments_are_usage_errors_before_connecting() {
    // Port 1 on loopback: were it contacted, the error would be a connection error (3).
    for (args, says) in [
        (vec!["--from", "garbage"], "--from"),
        (vec!["--from", "postgres:1:1"], "`postgres` backend"),
        (vec!["--tag", "nokey"], "key=value"),
        (vec!["--namespace", ""], "--namespace"),
        (vec!["--schema", "s"], "--schema applies to PostgreSQL"),
    ] {
        let mut all = vec!["tail", "redis://127.0.0.1:1"];
        all.extend(args);
        let done = run(&all);
        let line = done.assert_one_line_failure(2);
        assert!(line.contains(says), "{line}");
    }
}

#[test]
fn unreachable_servers_fail_with_one_line_and_code_3_without_the_password() {
    let port = free_port();
    for url in [
        format!("redis://user:hunter2@127.0.0.1:{port}"),
        format!("valkey://127.0.0.1:{port}"),
        format!("postgres://user:hunter2@127.0.0.1:{port}/db"),
        format!("postgresql://127.0.0.1:{port}/db?password=hunter2"),
    ] {
        for command in ["tail", "migrate", "stats"] {
            let done = run(&[command, &url, "--connect-timeout", "2s"]);
            let line = done.assert_one_line_failure(3);
            assert!(line.contains("cannot reach") && line.contains(&port.to_string()), "{line}");
            assert!(!line.contains("hunter2"), "{line}");
        }
    }
}

#[test]
fn bad_flags_are_one_line_usage_errors() {
    for (args, says) in [
        (vec!["stats", "memory:", "--connect-timeout", "soon"], "'soon' for '--connect-timeout"),
        (vec!["tail", "memory:", "--nope"], "unexpected argument '--nope'"),
        (vec!["tail", "redis://127.0.0.1:1", "--partitions", "0"], "0 is not in 1..=256"),
        (vec!["tail", "redis://127.0.0.1:1", "--partitions", "many"], "'many' for '--partitions"),
        (vec!["tail"], "<URL>"),
        (vec!["bogus"], "unrecognized subcommand 'bogus'"),
    ] {
        let done = run(&args);
        let line = done.assert_one_line_failure(2);
        assert!(line.contains(says) && line.ends_with("see `completions --help`"), "{args:?}: {line}");
    }
    let done = run(&[]);
    assert_eq!(done.status.code(), Some(2), "{done:#?}");
    assert!(done.stderr.iter().any(|l| l.starts_with("Usage: completions")), "{done:#?}");
    let done = run(&["--version"]);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
}

#[test]
fn the_memory_backend_answers_migrate_and_stats() {
    let done = run(&["migrate", "memory:"]);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert!(done.stdout[0].contains("nothing to migrate"));
    let done = run(&["stats", "memory:", "--json"]);
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    let stats: serde_json::Value = serde_json::from_str(&done.stdout[0]).expect("JSON");
    assert_eq!(stats["server"]["backend"], "memory");
    assert_eq!(stats["counters"]["delivered"], 0);
}

#[test]
fn a_closed_stdout_fails_stats_and_migrate_in_one_line_with_code_1() {
    for args in [vec!["stats", "memory:"], vec!["stats", "memory:", "--json"], vec!["migrate", "memory:"]] {
        let done = run_with_closed(&args, Stream::Stdout);
        assert_no_panic(&done);
        let line = done.assert_one_line_failure(1);
        assert_eq!(line, "completions: cannot write the output: stdout was closed", "{args:?}");
    }
}

#[test]
fn a_closed_stderr_keeps_the_exit_code_of_the_failure() {
    for (args, code) in [
        (vec!["tail", "garbage"], 2),
        (vec!["stats", "redis://127.0.0.1:1/999"], 2),
        (vec!["tail", "memory:", "--nope"], 2),
        (vec!["stats", "memory:"], 0),
    ] {
        let done = run_with_closed(&args, Stream::Stderr);
        assert_no_panic(&done);
        assert_eq!(done.status.code(), Some(code), "{args:?}: {done:#?}");
    }
    let port = free_port().to_string();
    let done =
        run_with_closed(&["stats", &format!("redis://127.0.0.1:{port}"), "--connect-timeout", "2s"], Stream::Stderr);
    assert_no_panic(&done);
    assert_eq!(done.status.code(), Some(3), "{done:#?}");
}

#[test]
fn bad_url_parts_are_named_in_one_line_with_code_2_before_connecting() {
    // Nothing listens on port 1: a connect attempt would fail with code 3, not 2.
    for (url, says) in [
        ("redis://127.0.0.1:notaport", "the port `notaport` is not a number from 1 to 65535"),
        ("redis://127.0.0.1:1?node=]]", "the query parameter `node` is for cluster URLs"),
        ("redis://127.0.0.1:1?tls=yes", "unknown query parameter `tls`"),
        ("redis://127.0.0.1:1/999", "the database `999` (the URL's path) must be a number from 0 to 255"),
        ("redis://127.0.0.1:1/0/1", "must be one database number"),
        ("redis-cluster://127.0.0.1:1?node=]]", "`node=]]` must be host:port"),
        ("redis-cluster://127.0.0.1:1/2", "a cluster has database 0 only"),
        ("redis://u:hunter2#x@127.0.0.1:1", "percent-encoded"),
        ("postgres://u@127.0.0.1:notaport/db", "`notaport` is not a port number from 1 to 65535"),
        ("postgres://u@127.0.0.1:1/db?foo=bar", "unknown query parameter `foo`; accepted: user, password, dbname"),
        ("postgres://u@127.0.0.1:1/db?sslmode=bogus", "`sslmode=bogus` must be one of disable, prefer, require"),
        ("postgres://u@127.0.0.1:1/db?password=hunter2&port=x", "`port=x` must be"),
    ] {
        for command in ["tail", "stats", "migrate"] {
            let done = run(&[command, url]);
            assert_no_panic(&done);
            let line = done.assert_one_line_failure(2);
            assert!(line.contains(says), "{command} {url}: {line}");
            assert!(!line.contains("hunter2") && !line.contains("Invalid") && !line.contains("Os {"), "{line}");
        }
    }
}

#[test]
fn bad_cursors_and_schemas_are_one_line_usage_errors() {
    for (args, says) in [
        (vec!["tail", "memory:", "--from", "memory:"], "invalid cursor \"memory:\""),
        (vec!["tail", "memory:", "--from", "memory:x"], "invalid cursor \"memory:x\""),
        (vec!["tail", "memory:", "--from", "valkey:1-0"], "`valkey` backend"),
        (vec!["tail", "postgres://127.0.0.1:1/db", "--from", "nocolon"], "--from"),
        (vec!["stats", "postgres://127.0.0.1:1/db", "--schema", "Bad-Name"], "invalid schema \"Bad-Name\""),
        (vec!["tail", "postgres://127.0.0.1:1/db", "--schema", "pg_catalog"], "schema"),
        (vec!["stats", "redis://127.0.0.1:1", "--prefix", "a{b}"], "key prefix"),
    ] {
        let done = run(&args);
        assert_no_panic(&done);
        let line = done.assert_one_line_failure(2);
        assert!(line.contains(says), "{args:?}: {line}");
    }
}

#[test]
fn unreachable_servers_are_named_in_plain_words() {
    let port = free_port();
    for url in [format!("redis://127.0.0.1:{port}"), format!("postgres://u@127.0.0.1:{port}/db")] {
        let line = run(&["stats", &url, "--connect-timeout", "2s"]).assert_one_line_failure(3).to_string();
        assert!(line.starts_with(&format!("completions: cannot reach {url}: ")), "{line}");
        assert!(line.contains("Connection refused") && !line.contains("Os {") && !line.contains("kind:"), "{line}");
    }
}
