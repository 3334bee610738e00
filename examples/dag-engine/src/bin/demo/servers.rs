//! The servers behind each backend of the demo: start (or find) them, connect a backend,
//! and the faults the demo injects (kill the backend's connections, restart the server).
//!
//! - Started servers are throwaway (`completion-testserver`): free loopback ports, temporary
//!   directories, stopped when the demo ends. Valkey/Redis run with persistence on (an
//!   fsync-always append-only file), so a restart keeps executions, the log and the
//!   function library; PostgreSQL restarts with a fast shutdown, which keeps its data.
//! - `VALKEY_URL` / `DATABASE_URL` select servers of your own instead. Those are never
//!   restarted: the demo kills its own connections twice instead, says so, and removes
//!   what it wrote (its key prefix, its schema) at the end.
//! - Every run uses a fresh key prefix / schema, so runs never see each other's data.
//! - [`State`] picks the engine's mode: the backend's built-in executions, or the engine's
//!   own task state (`dag_engine::postgres` / `dag_engine::valkey`) with its own connections,
//!   which the faults kill too (they are named like the backend's).
//!
//! Limits: killing connections needs `CLIENT LIST`/`CLIENT KILL` (Valkey) or
//! `pg_terminate_backend` (a superuser or a member of `pg_signal_backend`) on the server;
//! the PostgreSQL admin connection does not use TLS.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use completion_testserver::{
    PostgresOptions, PostgresServer, Reply, ServerError, ValkeyFlavor, ValkeyOptions, ValkeyServer,
};
use completions::valkey::ValkeyBackend;
use completions::{Backend, CompletionBackend, OpenOptions};

use dag_engine::engine::{Fault, FaultFuture};
use dag_engine::postgres::PostgresTasks;
use dag_engine::store::{Builtin, TaskStore};
use dag_engine::valkey::ValkeyTasks;

/// Where the demo kills connections, and where it restarts the server: fractions of the
/// tasks finished.
pub const KILL_AT: f64 = 0.40;
/// See [`KILL_AT`].
pub const RESTART_AT: f64 = 0.65;

/// A backend the demo can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// In-process: no server.
    Memory,
    /// Valkey or Redis.
    Valkey(ValkeyFlavor),
    /// PostgreSQL.
    Postgres,
}

impl Kind {
    /// The name printed in the summary and used in `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Valkey(ValkeyFlavor::Redis) => "redis",
            Kind::Valkey(_) => "valkey",
            Kind::Postgres => "postgres",
        }
    }
}

/// Where the engine keeps its task state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The backend's executions (`EngineBackend`).
    Builtin,
    /// A task table of the engine's own, emitting from its own atomic step.
    Own,
}

impl State {
    /// How the summary names it.
    pub fn name(self) -> &'static str {
        match self {
            State::Builtin => "built-in",
            State::Own => "own",
        }
    }
}

/// The name of a run in the output: the backend's, with `/own` in the own-state mode.
pub fn run_name(kind: Kind, state: State) -> &'static str {
    match (kind, state) {
        (_, State::Builtin) => kind.name(),
        (Kind::Memory, State::Own) => "memory/own",
        (Kind::Valkey(ValkeyFlavor::Redis), State::Own) => "redis/own",
        (Kind::Valkey(_), State::Own) => "valkey/own",
        (Kind::Postgres, State::Own) => "postgres/own",
    }
}

/// A server ready for a backend to connect to (none for the in-process backend).
pub enum Server {
    /// No server.
    Memory,
    /// A Valkey or Redis server.
    Valkey(Arc<ValkeyServer>),
    /// A PostgreSQL server.
    Postgres(Arc<PostgresServer>),
}

/// A connected backend and the engine's task store on it, and its faults.
pub struct Connected {
    /// The subscribe side.
    pub completions: Arc<dyn CompletionBackend>,
    /// The write side: the backend's executions, or the engine's own state emitting through
    /// the backend.
    pub store: Arc<dyn TaskStore>,
    /// What to do to the server midway.
    pub faults: Vec<Fault>,
    /// Removes what the run wrote, on servers that outlive the demo.
    pub cleanup: Option<FaultFuture>,
}

impl Server {
    /// Starts the server of `kind` (or takes `VALKEY_URL` / `DATABASE_URL`). Blocking: it
    /// waits until the server accepts connections. `valkey_binary` overrides the lookup
    /// of `valkey-server` / `redis-server`.
    pub fn start(kind: Kind, valkey_binary: Option<std::path::PathBuf>) -> Result<Self, ServerError> {
        match kind {
            Kind::Memory => Ok(Server::Memory),
            Kind::Valkey(flavor) => {
                let mut options = ValkeyOptions::default().flavor(flavor).persistence(true);
                if let Some(binary) = valkey_binary {
                    options = options.binary(binary);
                }
                Ok(Server::Valkey(Arc::new(ValkeyServer::from_env_or_start(options)?)))
            }
            Kind::Postgres => {
                Ok(Server::Postgres(Arc::new(PostgresServer::from_env_or_start(PostgresOptions::default())?)))
            }
        }
    }

    /// Whether this is a server of the user's own (`VALKEY_URL` / `DATABASE_URL`).
    pub fn is_external(&self) -> bool {
        match self {
            Server::Memory => false,
            Server::Valkey(s) => s.is_external(),
            Server::Postgres(s) => s.is_external(),
        }
    }

    /// One line: what runs where.
    pub fn describe(&self) -> String {
        let version = |v: Result<String, ServerError>| v.unwrap_or_else(|e| format!("(version unknown: {e})"));
        match self {
            Server::Memory => "in-process, no server".to_string(),
            Server::Valkey(s) if s.is_external() => {
                format!("{} at $VALKEY_URL: kills connections, cannot restart it", version(s.version()))
            }
            Server::Valkey(s) => format!(
                "{} {} on 127.0.0.1:{} (throwaway, append-only file on)",
                s.flavor().binary_name(),
                version(s.version()),
                s.port()
            ),
            Server::Postgres(s) if s.is_external() => {
                format!("PostgreSQL {} at $DATABASE_URL: kills connections, cannot restart it", version(s.version()))
            }
            Server::Postgres(s) => format!("PostgreSQL {} on 127.0.0.1:{} (throwaway)", version(s.version()), s.port()),
        }
    }

    /// Connects a fresh backend instance (its own key prefix or schema) and prepares the
    /// faults: kill its connections at [`KILL_AT`], restart the server at [`RESTART_AT`]
    /// (an external server: kill again instead). The engine keeps its task state as `state`
    /// says; the in-process backend has no own-state mode (no emit API).
    pub async fn connect(&self, state: State) -> Result<Connected, String> {
        let run = run_tag();
        match self {
            Server::Memory if state == State::Own => {
                Err("the in-process backend has no own-state mode: completion-memory has no emit API".to_string())
            }
            Server::Memory => {
                let backend = open("the in-process backend", "memory:", OpenOptions::default()).await?;
                let store = Arc::new(Builtin::new(backend.engine()));
                Ok(Connected { completions: backend.completions(), store, faults: Vec::new(), cleanup: None })
            }
            Server::Valkey(server) => {
                let prefix = format!("demo-{run}");
                let options = OpenOptions::default().with_key_prefix(prefix.clone());
                let backend = match open("Valkey", &server.url(), options).await? {
                    Backend::Valkey(backend) => backend,
                    other => return Err(format!("the Valkey URL opened the {} backend", other.name())),
                };
                let (store, own, library): (Arc<dyn TaskStore>, _, _) = match state {
                    State::Builtin => (Arc::new(Builtin::new(Arc::new(backend.clone()))), Vec::new(), None),
                    State::Own => {
                        let library = format!("demo_{run}");
                        let tasks =
                            ValkeyTasks::connect(backend.clone(), &server.url(), &format!("{prefix}-tasks"), &library)
                                .await
                                .map_err(|e| format!("connecting the engine's own Valkey client failed: {e}"))?;
                        let own = vec![tasks.client_name()];
                        (Arc::new(tasks), own, Some(library))
                    }
                };
                let faults = vec![
                    Fault { at: KILL_AT, action: valkey_kill(server.clone(), backend.clone(), own.clone()) },
                    Fault {
                        at: RESTART_AT,
                        action: if server.is_external() {
                            valkey_kill(server.clone(), backend.clone(), own)
                        } else {
                            restart(server.flavor().binary_name(), {
                                let server = server.clone();
                                move || server.restart()
                            })
                        },
                    },
                ];
                let cleanup = server.is_external().then(|| valkey_cleanup(server.clone(), prefix, library));
                Ok(Connected { completions: Arc::new(backend), store, faults, cleanup })
            }
            Server::Postgres(server) => {
                let schema = format!("demo_{run}");
                let backend = match open(
                    "PostgreSQL",
                    &server.url(),
                    OpenOptions::default().with_schema(schema.clone()),
                )
                .await?
                {
                    Backend::Postgres(backend) => Arc::new(backend),
                    other => return Err(format!("the PostgreSQL URL opened the {} backend", other.name())),
                };
                let mut names = vec![backend.listener_application_name(), backend.pool_application_name()];
                let mut schemas = vec![schema.clone()];
                let store: Arc<dyn TaskStore> = match state {
                    State::Builtin => Arc::new(Builtin::new(backend.clone())),
                    State::Own => {
                        let tasks_schema = format!("{schema}_tasks");
                        let tasks = PostgresTasks::connect(
                            backend.clone(),
                            &server.url(),
                            &tasks_schema,
                            &format!("completions-demo-engine-{run}"),
                        )
                        .await
                        .map_err(|e| format!("setting up the engine's own tasks table failed: {e}"))?;
                        names.push(tasks.application_name().to_string());
                        schemas.push(tasks_schema);
                        Arc::new(tasks)
                    }
                };
                let whose = if state == State::Own { "the backend and the engine" } else { "the backend" };
                let faults = vec![
                    Fault { at: KILL_AT, action: postgres_kill(server.url(), names.clone(), whose) },
                    Fault {
                        at: RESTART_AT,
                        action: if server.is_external() {
                            postgres_kill(server.url(), names, whose)
                        } else {
                            restart("postgres", {
                                let server = server.clone();
                                move || server.restart()
                            })
                        },
                    },
                ];
                let cleanup = server.is_external().then(|| postgres_cleanup(server.url(), schemas));
                Ok(Connected { completions: backend, store, faults, cleanup })
            }
        }
    }
}

/// Opens the backend `url` names (`what`, for the error), reconnecting quickly after the
/// demo's faults (at most 500 ms between attempts).
async fn open(what: &str, url: &str, options: OpenOptions) -> Result<Backend, String> {
    let options = options.with_reconnect_max_delay(Duration::from_millis(500));
    completions::open(url, &options).await.map_err(|e| format!("connecting to {what} failed: {e}"))
}

/// Unique per process and moment, so runs on one external server never share data.
fn run_tag() -> String {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("{:x}{:x}", std::process::id(), micros)
}

/// Kills every connection of `backend` (commands and subscriber) and the engine's own
/// (`own`: client names) with `CLIENT KILL ID`.
fn valkey_kill(
    server: Arc<ValkeyServer>,
    backend: ValkeyBackend,
    own: Vec<String>,
) -> Box<dyn FnOnce() -> FaultFuture + Send> {
    Box::new(move || {
        Box::pin(async move {
            let names = backend.client_names();
            let whose = if own.is_empty() { "the backend" } else { "the backend and the engine" };
            let names: Vec<String> = std::iter::once(names.commands).chain(names.subscriber).chain(own).collect();
            let killed = tokio::task::spawn_blocking(move || server.kill_clients_named(&names))
                .await
                .map_err(|e| format!("killing connections panicked: {e}"))?
                .map_err(|e| format!("CLIENT LIST / CLIENT KILL failed: {e}"))?;
            Ok(format!("killed {killed} connections of {whose} (CLIENT KILL)"))
        })
    })
}

/// Terminates every session of the backend (LISTEN connection and pool), and the engine's
/// own in the own-state mode, by `application_name`.
fn postgres_kill(url: String, names: Vec<String>, whose: &'static str) -> Box<dyn FnOnce() -> FaultFuture + Send> {
    Box::new(move || {
        Box::pin(async move {
            let killed = completion_testserver::terminate_sessions(&url, &names)
                .await
                .map_err(|e| format!("pg_terminate_backend failed: {e}"))?;
            Ok(format!("killed {killed} sessions of {whose} (pg_terminate_backend)"))
        })
    })
}

/// Restarts a throwaway server (blocking call, run off the runtime).
fn restart(
    what: &'static str,
    call: impl FnOnce() -> Result<(), ServerError> + Send + 'static,
) -> Box<dyn FnOnce() -> FaultFuture + Send> {
    Box::new(move || {
        Box::pin(async move {
            let started = Instant::now();
            tokio::task::spawn_blocking(call)
                .await
                .map_err(|e| format!("restarting {what} panicked: {e}"))?
                .map_err(|e| format!("restarting {what} failed: {e}"))?;
            Ok(format!("restarted {what} (stopped and started again in {} ms)", started.elapsed().as_millis()))
        })
    })
}

/// An admin session that does not count as one of the backend's.
async fn admin(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("the PostgreSQL URL: {e}"))?;
    config.application_name("completions-demo-admin");
    let (client, connection) =
        config.connect(tokio_postgres::NoTls).await.map_err(|e| format!("admin connection failed: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

fn postgres_cleanup(url: String, schemas: Vec<String>) -> FaultFuture {
    Box::pin(async move {
        let admin = admin(&url).await?;
        for schema in &schemas {
            admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
                .map_err(|e| format!("dropping schema {schema} failed: {e}"))?;
        }
        Ok(format!("dropped schema {}", schemas.join(", ")))
    })
}

/// Removes the run's keys (the backend's under `prefix`, the engine's own under
/// `prefix-tasks`) and the engine's function library, if any.
fn valkey_cleanup(server: Arc<ValkeyServer>, prefix: String, library: Option<String>) -> FaultFuture {
    Box::pin(async move {
        tokio::task::spawn_blocking(move || {
            let mut removed = 0usize;
            for pattern in [format!("{prefix}:*"), format!("{prefix}-tasks:*")] {
                removed += unlink_matching(&server, &pattern)?;
            }
            let mut line = format!("removed the run's {removed} keys (prefix {prefix})");
            if let Some(library) = library {
                server
                    .command(&["FUNCTION", "DELETE", &library])
                    .map_err(|e| format!("FUNCTION DELETE failed: {e}"))?;
                line.push_str(&format!(" and the engine's library {library}"));
            }
            Ok(line)
        })
        .await
        .map_err(|e| format!("removing the run's keys panicked: {e}"))?
    })
}

/// UNLINKs every key matching `pattern`; returns how many.
fn unlink_matching(server: &ValkeyServer, pattern: &str) -> Result<usize, String> {
    let (mut cursor, mut removed) = ("0".to_string(), 0usize);
    loop {
        let reply = server
            .command_reply(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
            .map_err(|e| format!("SCAN failed: {e}"))?;
        let Reply::Array(parts) = reply else { return Err(format!("SCAN replied {reply:?}")) };
        let [next, Reply::Array(keys)] = parts.as_slice() else {
            return Err(format!("SCAN replied {parts:?}"));
        };
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        if !keys.is_empty() {
            let mut args = vec!["UNLINK"];
            args.extend(keys.iter().map(String::as_str));
            server.command(&args).map_err(|e| format!("UNLINK failed: {e}"))?;
            removed += keys.len();
        }
        cursor = next.to_string();
        if cursor == "0" {
            return Ok(removed);
        }
    }
}
