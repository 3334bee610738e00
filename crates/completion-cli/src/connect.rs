//! Opening the backend a URL names, with the CLI's settings: nothing the CLI opens changes
//! or trims anyone's data behind the operator's back.
//!
//! - PostgreSQL is opened with `migrate` off (a missing or old schema is reported; only
//!   `completions migrate` changes it) and no periodic prune.
//! - Valkey is opened with no periodic retention trim. Connecting loads the function
//!   library when the server has none (the library does that on every connect; it is the
//!   same library every client of this build loads) and records the key prefix's partition
//!   count when the prefix is new.
//! - The whole connect is bounded: `connect_timeout` for the connection itself (the
//!   libraries enforce it), plus a guard around the set-up queries that follow.

use std::time::Duration;

use completion_core::CompletionBackend;
use completion_memory::MemoryBackend;
use completion_postgres::{PostgresBackend, PostgresConfig};
use completion_valkey::{ValkeyBackend, ValkeyConfig};

use crate::error::{CliError, Kind};
use crate::url::{Target, redact};

/// The default of `--connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings given on the command line; `None` means the library's default.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Valkey key prefix (library default `completions`).
    pub prefix: Option<String>,
    /// PostgreSQL schema (library default `completions`).
    pub schema: Option<String>,
    /// Valkey partition count of the prefix (library default 16).
    pub partitions: Option<u16>,
    /// Limit on connecting (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Option<Duration>,
}

impl Options {
    fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Refuses options that do not apply to `target`'s backend, naming the one that does.
    pub fn check_for(&self, target: &Target) -> Result<(), CliError> {
        let valkey = matches!(target, Target::Valkey { .. });
        let postgres = matches!(target, Target::Postgres { .. });
        if self.prefix.is_some() && !valkey {
            return Err(CliError::usage("--prefix applies to Valkey/Redis URLs only (PostgreSQL: --schema)"));
        }
        if self.partitions.is_some() && !valkey {
            return Err(CliError::usage("--partitions applies to Valkey/Redis URLs only"));
        }
        if self.schema.is_some() && !postgres {
            return Err(CliError::usage("--schema applies to PostgreSQL URLs only (Valkey/Redis: --prefix)"));
        }
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(CliError::usage("--connect-timeout must be longer than zero"));
        }
        Ok(())
    }
}

/// An open backend.
pub enum Backend {
    /// In-process.
    Memory(MemoryBackend),
    /// Valkey / Redis.
    Valkey(ValkeyBackend),
    /// PostgreSQL.
    Postgres(PostgresBackend),
}

impl Backend {
    /// The subscribe side, shared.
    pub fn completions_arc(&self) -> std::sync::Arc<dyn CompletionBackend> {
        match self {
            Backend::Memory(b) => std::sync::Arc::new(b.clone()),
            Backend::Valkey(b) => std::sync::Arc::new(b.clone()),
            Backend::Postgres(b) => std::sync::Arc::new(b.clone()),
        }
    }

    /// The write side (for `describe`), shared.
    pub fn engine_arc(&self) -> std::sync::Arc<dyn completion_core::EngineBackend> {
        match self {
            Backend::Memory(b) => std::sync::Arc::new(b.clone()),
            Backend::Valkey(b) => std::sync::Arc::new(b.clone()),
            Backend::Postgres(b) => std::sync::Arc::new(b.clone()),
        }
    }

    /// The subscribe side.
    pub fn completions(&self) -> &dyn CompletionBackend {
        match self {
            Backend::Memory(b) => b,
            Backend::Valkey(b) => b,
            Backend::Postgres(b) => b,
        }
    }
}

/// The Valkey config the CLI uses for `url`.
pub fn valkey_config(url: &str, options: &Options) -> ValkeyConfig {
    let mut config =
        ValkeyConfig::new(url).with_connect_timeout(options.connect_timeout()).with_retention_interval(None);
    if let Some(prefix) = &options.prefix {
        config = config.with_key_prefix(prefix);
    }
    if let Some(partitions) = options.partitions {
        config = config.with_partitions(partitions);
    }
    config
}

/// The PostgreSQL config the CLI uses for `url`.
pub fn postgres_config(url: &str, options: &Options) -> PostgresConfig {
    let mut config = PostgresConfig::from_url(url)
        .with_connect_timeout(options.connect_timeout())
        .with_prune_interval(None)
        .with_migrate(false)
        .with_application_name("completions-cli")
        .with_pool_size(2);
    if let Some(schema) = &options.schema {
        config = config.with_schema(schema);
    }
    config
}

/// Connects to `target`. Unreachable servers fail with [`Kind::Connect`], bad settings with
/// [`Kind::Usage`], an old or missing PostgreSQL schema with [`Kind::Incompatible`] and a
/// hint to run `completions migrate`.
pub async fn open(target: &Target, options: &Options) -> Result<Backend, CliError> {
    let opened = match target {
        Target::Memory => return Ok(Backend::Memory(MemoryBackend::new())),
        Target::Valkey { url } => {
            let config = valkey_config(url, options);
            guarded(options, url, async { ValkeyBackend::connect(config).await.map(Backend::Valkey) }).await
        }
        Target::Postgres { url } => {
            let config = postgres_config(url, options);
            guarded(options, url, async { PostgresBackend::connect(config).await.map(Backend::Postgres) }).await
        }
    };
    opened.map_err(|e| match e.kind {
        Kind::Incompatible if matches!(target, Target::Postgres { .. }) => {
            e.context("the schema is not ready (run `completions migrate URL` first)")
        }
        _ => e,
    })
}

/// Runs a connect (or any first contact with the server) within the connect timeout plus
/// room for the set-up queries, naming the server in a failure to reach it.
pub async fn guarded<T>(
    options: &Options,
    url: &str,
    connect: impl Future<Output = Result<T, completion_core::EngineError>>,
) -> Result<T, CliError> {
    let limit = options.connect_timeout();
    // The libraries bound the connection itself by `limit`; the guard only catches set-up
    // work after it that hangs (a server that accepts and then never answers).
    let guard = limit.saturating_mul(2) + Duration::from_secs(5);
    match tokio::time::timeout(guard, connect).await {
        Ok(Ok(backend)) => Ok(backend),
        Ok(Err(e)) => Err(unreachable(url, e)),
        Err(_) => Err(CliError::new(
            Kind::Connect,
            format!("cannot reach {}: no answer within {}", redact(url), humantime::format_duration(guard)),
        )),
    }
}

/// A failure of a first contact with the server at `url`: when it could not be reached,
/// `cannot reach URL: <the reason, as the system gave it>`, without the library's wrapping
/// (`valkey transport error during connect: could not connect to URL: ...`).
fn unreachable(url: &str, e: completion_core::EngineError) -> CliError {
    let shown = redact(url);
    let reason = match &e {
        completion_core::EngineError::Transport { source, .. } => Some(completion_core::error_chain(&**source)),
        _ => None,
    };
    let e = CliError::from(e);
    if e.kind != Kind::Connect {
        return e;
    }
    match reason {
        Some(reason) => {
            let reason = reason.strip_prefix(&format!("could not connect to {shown}: ")).unwrap_or(&reason);
            CliError::new(Kind::Connect, format!("cannot reach {shown}: {reason}"))
        }
        None => e.context(format!("cannot reach {shown}")),
    }
}
