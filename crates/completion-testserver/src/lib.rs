//! Throwaway Valkey/Redis and PostgreSQL servers for tests, benchmarks and demos.
//!
//! [`ValkeyServer::start`] and [`PostgresServer::start`] launch a server from a
//! binary installed on this machine, on a free port of `127.0.0.1`, with its
//! files in a fresh temporary directory; they return once the server accepts
//! connections. Dropping the handle stops the server synchronously (the port is
//! free and the directory gone when `drop` returns), and a server also dies when
//! the process that started it exits in any way, so handles kept in statics
//! (`OnceLock`) do not leak processes or directories.
//!
//! `from_env_or_start` uses an external server instead when `VALKEY_URL` /
//! `DATABASE_URL` is set; such handles never start, restart or stop anything.
//!
//! [`ValkeyCluster::start`] forms a throwaway cluster of such servers (3 primaries by
//! default, optionally with replicas) and offers slot migration, failover and restarts.
//!
//! Faults: [`ValkeyServer::kill_clients_named`] and [`ValkeyCluster::kill_clients_named`]
//! cut the connections a backend named, [`terminate_sessions`] ends a PostgreSQL backend's
//! sessions by `application_name` (the one async function of the crate).
//!
//! Limits:
//! - Linux only (`/bin/sh`, `/proc`); the API is blocking (but [`terminate_sessions`]) —
//!   call it from async code through `spawn_blocking`.
//! - Started servers listen on `127.0.0.1` only, never on the standard ports
//!   (6379, 5432), and the crate only ever connects to them or to the URL the
//!   caller provided through the environment.
//! - When run as root, PostgreSQL runs as the unprivileged `postgres` (or
//!   `nobody`) user, because it refuses to run as root.
//!
//! ```no_run
//! use completion_testserver::{PostgresOptions, PostgresServer, ValkeyOptions, ValkeyServer};
//!
//! let valkey = ValkeyServer::start(ValkeyOptions::default())?;
//! assert_eq!(valkey.command(&["PING"])?, "PONG");
//! valkey.restart()?; // same port, same directory: data kept (persistence is on by default)
//!
//! let pg = PostgresServer::start(PostgresOptions::default())?;
//! println!("{} {}", pg.url(), pg.version()?);
//! # Ok::<(), completion_testserver::ServerError>(())
//! ```

mod cluster;
mod error;
mod pgwire;
mod postgres;
mod process;
mod resp;
mod sessions;
mod url;
mod valkey;

pub use cluster::{CLUSTER_SLOTS, ValkeyCluster, ValkeyClusterOptions};
pub use error::ServerError;
pub use postgres::{PostgresBinaries, PostgresOptions, PostgresServer};
pub use resp::Reply;
pub use sessions::terminate_sessions;
pub use valkey::{ValkeyFlavor, ValkeyOptions, ValkeyServer};
