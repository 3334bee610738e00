//! Building connections: the TLS connector, each connection's settings (its own
//! `application_name`, time limits, keepalives), the pool, and the dedicated connections
//! made outside it (LISTEN, migrations).
//!
//! TLS (feature `tls`) is rustls with the configuration every server backend shares
//! ([`completion_core::tls::client_config`]: the system's roots plus
//! [`tls_ca_file`](crate::PostgresConfig::tls_ca_file)); whether it is used follows the
//! server address's `sslmode` (`prefer` by default in tokio-postgres, `require` to insist).
//! Without the feature, `sslmode=require` fails at connect with tokio-postgres's "no TLS
//! implementation" error.

use std::time::Duration;

use completion_core::EngineError;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Client, Connection, Socket};

use crate::PostgresConfig;
use crate::schema::GENERIC_PLANS;

#[cfg(not(feature = "tls"))]
pub(crate) type Tls = tokio_postgres::NoTls;

#[cfg(feature = "tls")]
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// The stream type of a connection made with [`Tls`].
pub(crate) type TlsStream = <Tls as tokio_postgres::tls::MakeTlsConnect<Socket>>::Stream;

/// The TLS connector for `config` (plain connections without the feature `tls`).
#[cfg(not(feature = "tls"))]
pub(crate) fn connector(_config: &PostgresConfig) -> Result<Tls, EngineError> {
    Ok(tokio_postgres::NoTls)
}

/// The TLS connector for `config`: rustls trusting the system's roots and `tls_ca_file`.
#[cfg(feature = "tls")]
pub(crate) fn connector(config: &PostgresConfig) -> Result<Tls, EngineError> {
    let tls = completion_core::tls::client_config(config.tls_ca_file.as_deref())?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

/// Another handle on the connector (a copy of `NoTls`, a shared rustls configuration).
#[allow(clippy::clone_on_copy)] // `NoTls` is `Copy`, the rustls connector is not
pub(crate) fn share(tls: &Tls) -> Tls {
    tls.clone()
}

/// The `application_name`s of one instance's connections: `<prefix>-<instance>-<role>`, so
/// that operators and tests find each in `pg_stat_activity`.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    base: String,
}

impl Names {
    /// Names for a new instance (a random 8-hex-digit instance part).
    pub fn new(prefix: &str) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Self { base: format!("{prefix}-{}", &instance[..8]) }
    }

    /// The name of the connections of `role` (`pool`, `listen`, `migrate`).
    pub fn of(&self, role: &str) -> String {
        format!("{}-{role}", self.base)
    }

    /// `pg` with this instance's application name for `role`, time limits and keepalives.
    pub fn connection(
        &self,
        pg: &tokio_postgres::Config,
        role: &str,
        config: &PostgresConfig,
    ) -> tokio_postgres::Config {
        let mut pg = pg.clone();
        pg.application_name(self.of(role))
            .connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(config.keepalive_idle);
        pg
    }

    /// How to open a dedicated connection of `role`.
    pub fn dedicated(&self, pg: &tokio_postgres::Config, role: &str, config: &PostgresConfig, tls: &Tls) -> Dedicated {
        Dedicated { pg: self.connection(pg, role, config), tls: share(tls), connect_timeout: config.connect_timeout }
    }
}

/// How to open one connection outside the pool (the LISTEN connection, a migration run):
/// its settings, with its own application name, its TLS connector and the time connecting
/// may take.
pub(crate) struct Dedicated {
    pub pg: tokio_postgres::Config,
    pub tls: Tls,
    pub connect_timeout: Duration,
}

impl Dedicated {
    /// Connects (not bounded here: the callers bound connecting and what follows together).
    pub async fn connect(&self) -> Result<(Client, Connection<Socket, TlsStream>), tokio_postgres::Error> {
        self.pg.connect(share(&self.tls)).await
    }
}

/// Builds the pool for `pg` (made with [`Names::connection`]).
pub(crate) fn pool(
    pg: &tokio_postgres::Config,
    tls: Tls,
    size: usize,
    connect_timeout: Duration,
    generic_plans: bool,
) -> Result<Pool, EngineError> {
    let manager = Manager::from_config(pg.clone(), tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    // Last in, first out: a call made one at a time gets the connection used last, whose
    // server process is awake; first in, first out (deadpool's default) hands it the one idle
    // longest, and a server process that slept is slow to wake on a busy machine
    // (docs/server-facts.md, "tokio-postgres 0.7 and deadpool-postgres 0.14"; measured in
    // docs/benchmarks.md, History, "2026-12-04: floors, unrelated load, the pool").
    let mut builder = Pool::builder(manager)
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout));
    if generic_plans {
        // Generic plans for every statement of these connections: the log read's generic plan
        // is estimated dearer than a custom one (unknown LIMIT), so the plan cache would plan
        // every call anew, which costs more than running it (docs/server-facts.md, "The plan
        // cache can keep choosing custom plans"). The generic plans of these statements are
        // the custom ones (same index walks; their parameters are a cursor, a limit and ids).
        // A session setting: behind a transaction-mode pooler it would leak to other
        // clients, hence `PostgresConfig::generic_plans`.
        builder = builder.post_create(Hook::async_fn(|client, _| {
            Box::pin(async move { client.batch_execute(GENERIC_PLANS).await.map_err(HookError::Backend) })
        }));
    }
    builder.build().map_err(|e| EngineError::invalid("pool_size", size.to_string(), e.to_string()))
}
