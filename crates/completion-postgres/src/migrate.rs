//! Schema migrations: the versioned SQL files of `migrations/`, applied with refinery inside
//! the configured schema, serialized across processes by an advisory lock.
//!
//! refinery applies each pending migration in its own transaction together with its row in
//! the history table (`schema_migrations`), checks the checksums of applied ones, and works
//! on a tokio-postgres client. It does not lock and has no notion of a schema, so this
//! module wraps it on a dedicated connection (never a pooled one: it changes session state):
//!
//! 1. `pg_advisory_lock(hashtextextended('completion-postgres migrate <schema>', 0))` —
//!    concurrent starters queue here (bounded by `lock_timeout`, 60 s);
//! 2. `CREATE SCHEMA IF NOT EXISTS "<schema>"` and `SET search_path TO "<schema>"`, so the
//!    migrations and the history table land in the schema;
//! 3. refinery's runner; the lock is released when the connection closes.
//!
//! The functions the migrations create pin `search_path FROM CURRENT`, so they work
//! whatever the caller's search_path. Creating the schema needs the CREATE privilege on the
//! database (or an existing schema).

use completion_core::EngineError;
use refinery::{Migration, Runner};

use crate::BACKEND;
use crate::conn::Conn;
use crate::conn::build::Dedicated;
use crate::conn::errors::{NOT_MIGRATED, column, pg_error};
use crate::schema::{Schema, migration};

/// The migrations, in order. A test checks that every file of `migrations/` is listed.
const MIGRATIONS: &[(&str, &str)] = &[
    ("V1__completions", include_str!("../migrations/V1__completions.sql")),
    ("V2__coalesced_notify", include_str!("../migrations/V2__coalesced_notify.sql")),
    ("V3__in_flight_check_without_pg_locks", include_str!("../migrations/V3__in_flight_check_without_pg_locks.sql")),
    ("V4__tickets", include_str!("../migrations/V4__tickets.sql")),
];

/// The schema version this build needs (the highest migration).
pub(crate) const LATEST: i32 = 4;

/// What one [`migrate`](crate::migrate()) run applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The schema migrated.
    pub schema: String,
    /// `(version, name)` of each migration this run applied, in order; empty when the schema
    /// was already current.
    pub applied: Vec<(i32, String)>,
}

fn runner() -> Result<Runner, EngineError> {
    let migrations = MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Incompatible { backend: BACKEND, reason: format!("bundled migration: {e}") })?;
    let mut runner = Runner::new(&migrations).set_grouped(false).set_abort_divergent(true).set_abort_missing(true);
    runner.set_migration_table_name("schema_migrations");
    Ok(runner)
}

/// Applies the pending migrations to `schema` on a dedicated connection.
pub(crate) async fn run(dedicated: &Dedicated, schema: &Schema) -> Result<MigrationReport, EngineError> {
    const OP: &str = "migrate";
    let span = tracing::info_span!("postgres_migrate", backend = BACKEND, schema = schema.name());
    let after = dedicated.connect_timeout;
    let (mut client, connection) = tokio::time::timeout(after, dedicated.connect())
        .await
        .map_err(|_| EngineError::Timeout { backend: BACKEND, op: "connect (migrate)", after })?
        .map_err(|e| pg_error("connect (migrate)", e))?;
    // Nothing is listened to on this connection: driving it as a plain future is enough.
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "migration connection ended");
        }
    });
    let result = async {
        let lock_key = migration::lock_key(schema);
        client.batch_execute(migration::LOCK_TIMEOUT).await.map_err(|e| pg_error(OP, e))?;
        client.execute(migration::LOCK, &[&lock_key]).await.map_err(|e| pg_error("migrate (advisory lock)", e))?;
        client
            .batch_execute(&migration::enter_schema(schema))
            .await
            .map_err(|e| pg_error("migrate (create schema)", e))?;
        let report = runner()?.run_async(&mut client).await.map_err(|e| refinery_error(schema, e))?;
        let _ = client.execute(migration::UNLOCK, &[&lock_key]).await;
        let applied: Vec<(i32, String)> =
            report.applied_migrations().iter().map(|m| (m.version(), m.name().to_string())).collect();
        for (version, name) in &applied {
            tracing::info!(parent: &span, version, name, "applied migration");
        }
        Ok(MigrationReport { schema: schema.name().to_string(), applied })
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// The schema's applied migration version, `None` when it has none.
pub(crate) async fn schema_version(conn: &Conn) -> Result<Option<i32>, EngineError> {
    const OP: &str = "schema version";
    match conn.query(OP, &conn.sql().version, &[]).await {
        Ok(rows) => match rows.first() {
            Some(row) => column(row, 0),
            None => Ok(None),
        },
        Err(f) if f.sqlstate().is_some_and(|code| NOT_MIGRATED.contains(&code)) => Ok(None),
        Err(f) => Err(f.into_engine(OP)),
    }
}

/// Checks that the schema is at the version this build needs (for a connect without
/// migrating); a newer one is accepted with a warning.
pub(crate) async fn check_version(conn: &Conn) -> Result<(), EngineError> {
    let schema = conn.schema();
    match schema_version(conn).await? {
        Some(v) if v >= LATEST => {
            if v > LATEST {
                tracing::warn!(
                    backend = BACKEND,
                    schema = schema.name(),
                    found = v,
                    known = LATEST,
                    "the schema is newer than this build"
                );
            }
            Ok(())
        }
        found => Err(EngineError::Incompatible {
            backend: BACKEND,
            reason: format!(
                "schema {} is at migration version {}, this build needs {LATEST}: run completion_postgres::migrate \
                 or connect with `migrate` enabled",
                schema.name(),
                found.unwrap_or(0),
            ),
        }),
    }
}

fn refinery_error(schema: &Schema, e: refinery::Error) -> EngineError {
    use refinery::error::Kind;
    match e.kind() {
        Kind::DivergentVersion(..) | Kind::MissingVersion(..) => EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("schema {}: its migration history does not match this build: {e}", schema.name()),
        },
        _ => EngineError::server(BACKEND, "migrate", format!("schema {}: {e}", schema.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".sql").to_string())
            .collect();
        files.sort_by_key(|name| name[1..].split("__").next().unwrap().parse::<u32>().unwrap());
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(name, _)| *name).collect();
        assert_eq!(files, listed);
        let runner = runner().unwrap();
        assert_eq!(runner.get_migrations().last().unwrap().version(), LATEST);
    }
}
