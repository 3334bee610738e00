//! Bad input and unreachable servers: one line on stderr, a non-zero exit code that tells
//! the kind, no panic, no password. Needs no server.

mod common;

use common::{free_port, run};

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
fn a_bad_connect_timeout_is_a_usage_error() {
    let done = run(&["stats", "memory:", "--connect-timeout", "soon"]);
    assert_eq!(done.status.code(), Some(2), "{done:#?}");
    assert!(!format!("{done:?}").contains("panicked"));
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
