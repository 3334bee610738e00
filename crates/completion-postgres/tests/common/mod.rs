//! Test support shared by this crate's test binaries: one throwaway PostgreSQL server per
//! binary (or `$DATABASE_URL`), unique schemas, and an admin connection.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use completion_testserver::{PostgresOptions, PostgresServer};
use tokio_postgres::{Client, NoTls};

/// The server this test binary shares (started on first use; stopped when the process exits).
pub async fn shared_server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    if let Some(server) = SERVER.get() {
        return server;
    }
    let server = tokio::task::spawn_blocking(|| {
        SERVER.get_or_init(|| {
            PostgresServer::from_env_or_start(PostgresOptions::default())
                .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"))
        });
    });
    server.await.expect("starting the server panicked");
    SERVER.get().expect("initialised above")
}

/// A server of the caller's own (for tests that kill or restart it).
pub async fn dedicated_server() -> PostgresServer {
    tokio::task::spawn_blocking(|| PostgresServer::start(PostgresOptions::default()))
        .await
        .expect("starting the server panicked")
        .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"))
}

/// A schema name unique in this process and across runs on one external server.
pub fn unique_schema(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    format!("{prefix}_{micros:x}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A plain connection for inspecting and breaking things, driven by a spawned task.
pub async fn admin(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&format!("{url}?application_name=test-admin"), NoTls).await.expect("admin connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Connections of `application_name` right now.
pub async fn connections_named(url: &str, name: &str) -> usize {
    let client = admin(url).await;
    let row = client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&name])
        .await
        .expect("pg_stat_activity");
    row.get::<_, i64>(0) as usize
}

/// Terminates every connection whose application_name is one of `names`; returns how many.
pub async fn terminate_named(url: &str, names: &[String]) -> usize {
    completion_testserver::terminate_sessions(url, names).await.expect("pg_terminate_backend")
}
