//! `completions migrate`: installs or upgrades what the server needs, and says which
//! version it found and which it left.
//!
//! - PostgreSQL: applies the pending migrations to the schema (creating it), with
//!   `completions::postgres::migrate` (serialized across processes by an advisory lock).
//! - Valkey/Redis: loads or upgrades the function library (what every connect does), and
//!   records the key prefix's partition count when the prefix is new.
//! - memory: nothing to do.
//!
//! Idempotent: a second run changes nothing and says "already at version N".

use completions::Scheme;
use completions::postgres::PostgresBackend;
use completions::valkey::{LibraryChange, ValkeyBackend};

use crate::connect::{self, Options};
use crate::error::{CliError, Kind};

/// Runs the migration for `url` (of `scheme`'s backend); returns the lines to print.
pub async fn run(url: &str, scheme: Scheme, options: &Options) -> Result<Vec<String>, CliError> {
    match scheme {
        Scheme::Postgres => postgres(url, options).await,
        Scheme::Valkey => valkey(url, options).await,
        _ => Ok(vec![format!("{}: nothing to migrate (the in-process backend keeps no schema)", scheme.name())]),
    }
}

async fn postgres(url: &str, options: &Options) -> Result<Vec<String>, CliError> {
    let config = options.open_options().postgres_config(url);
    let report = connect::guarded(options, url, completions::postgres::migrate(&config)).await?;
    let schema = &report.schema;
    let line = match (report.applied.first(), report.applied.last()) {
        (Some((first, _)), Some((last, _))) => {
            let before = if *first <= 1 { "none".to_string() } else { format!("version {}", first - 1) };
            let names: Vec<String> = report.applied.iter().map(|(v, name)| format!("V{v} {name}")).collect();
            format!("postgres schema \"{schema}\": {before} -> version {last} (applied {})", names.join(", "))
        }
        _ => {
            // Nothing applied: read the version the schema is at (it may be newer than this
            // build's, which the library accepts with a warning).
            let backend = connect::guarded(options, url, PostgresBackend::connect(config)).await?;
            let version = backend.schema_version().await.map_err(CliError::from)?;
            let version = version.ok_or_else(|| {
                CliError::new(Kind::Failed, format!("schema \"{schema}\" holds no migration history after migrating"))
            })?;
            format!("postgres schema \"{schema}\": already at version {version}, nothing to do")
        }
    };
    Ok(vec![line])
}

async fn valkey(url: &str, options: &Options) -> Result<Vec<String>, CliError> {
    let config = options.open_options().valkey_config(url);
    let (prefix, partitions) = (config.key_prefix.clone(), config.partitions);
    let backend = connect::guarded(options, url, ValkeyBackend::connect(config)).await?;
    let version = backend.library_version().await.map_err(CliError::from)?;
    let version =
        version.ok_or_else(|| CliError::new(Kind::Failed, "the function library is missing after loading it"))?;
    let library = match backend.library_on_connect() {
        LibraryChange::Present => {
            format!("valkey function library \"completions\": already at version {version}, nothing to do")
        }
        LibraryChange::Loaded => format!("valkey function library \"completions\": none -> version {version}"),
        LibraryChange::Upgraded(old) => {
            format!("valkey function library \"completions\": version {old} -> version {version}")
        }
        other => format!("valkey function library \"completions\": {other:?}, now at version {version}"),
    };
    Ok(vec![library, format!("valkey key prefix \"{prefix}\": {partitions} partitions")])
}
