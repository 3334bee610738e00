//! [`PostgresConfig`]: every setting of the backend, with its default, and its validation.
//!
//! Durations deserialize as [`completion_core::config::duration`] reads them: an integer
//! number of milliseconds, or text with units (`"250ms"`, `"2s"`, `"5m"`, `"1h"`); optional
//! ones also from `null`. The settings every backend shares are under `subscription`
//! ([`SubscriptionConfig`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use completion_core::config::{MIN_DURATION, check_duration, duration, option_duration};
use completion_core::{EngineError, SubscriptionConfig};
use serde::Deserialize;

use crate::schema::Schema;

/// Settings of a [`PostgresBackend`](crate::PostgresBackend).
///
/// Build it with [`PostgresConfig::from_url`] or [`PostgresConfig::from_pg_config`] and the
/// `with_*` setters, or deserialize it (every field but `url` has a default; `pg_config`
/// cannot be deserialized).
///
/// ```
/// use std::time::Duration;
/// use completion_postgres::PostgresConfig;
///
/// let config = PostgresConfig::from_url("postgres://app@db.internal/app")
///     .with_schema("completions")
///     .with_safety_interval(Duration::from_secs(1));
/// # let _ = config;
/// ```
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The server, as a `postgres://` URL or a libpq `key=value` string. Either this or
    /// [`pg_config`](Self::pg_config) is required. Default: none.
    pub url: Option<String>,
    /// The server, as a ready `tokio_postgres::Config`; wins over `url`. Default: none.
    #[serde(skip)]
    pub pg_config: Option<tokio_postgres::Config>,
    /// The schema holding the tables and functions: `[a-z_][a-z0-9_]*`, at most 41 bytes,
    /// not `pg_*` or `information_schema`. Default `completions`.
    pub schema: String,
    /// Connections in the pool used for writes and log reads. Default 8.
    pub pool_size: usize,
    /// The settings every backend shares: `retention` (how much of the completion log to
    /// keep; default the last 100 000 events), `buffer` (events buffered per stream before it
    /// falls back to reading the log; default 1024) and `safety_interval` (how often the feed
    /// reads the log even without a notification: a lost NOTIFY delays an event by at most
    /// this much; in poll-only mode it is the poll interval; default 2 s).
    pub subscription: SubscriptionConfig,
    /// Use a LISTEN connection for wake-ups. `false` is poll-only mode, for PgBouncer in
    /// transaction pooling mode and for read replicas. Default true.
    pub listen: bool,
    /// The most time establishing a connection may take, TCP and start-up included; also
    /// bounds [`PostgresBackend::connect`](crate::PostgresBackend::connect) as a whole
    /// (migrations excepted). Default 5 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// The most time one pooled operation (a write, a log read, `describe`) may take,
    /// waiting for a connection and retries included; enforced on the client side, so it
    /// also works behind PgBouncer. `None`: no limit. Default 30 s.
    #[serde(with = "option_duration")]
    pub command_timeout: Option<Duration>,
    /// Run [`enforce_retention`](crate::PostgresBackend::enforce_retention) this often in a
    /// background task. `None`: only when called. Default 60 s.
    #[serde(with = "option_duration")]
    pub retention_interval: Option<Duration>,
    /// Apply the migrations at connect. When false, connect checks that the schema is at
    /// the version this build needs and fails otherwise. Default true.
    pub migrate: bool,
    /// Prefix of the `application_name` of this instance's connections (at most 40
    /// printable ASCII bytes); a per-instance suffix and `-listen` / `-pool` are appended.
    /// Default `completions`.
    pub application_name: String,
    /// TCP keepalive idle time of every connection, so a dead peer is noticed in minutes,
    /// not the system's default two hours. Whole seconds, at least 1 s (the socket option
    /// counts seconds; a shorter value would become 0, which the system refuses, and no
    /// connection would open). Default 30 s.
    #[serde(with = "duration")]
    pub keepalive_idle: Duration,
    /// The longest pause between two attempts to re-open the LISTEN connection (the pauses
    /// start at 50 ms and double). Default 2 s.
    #[serde(with = "duration")]
    pub reconnect_max_delay: Duration,
    /// A PEM file of extra root certificates to trust (feature `tls`). Default: none.
    pub tls_ca_file: Option<PathBuf>,
    /// Run `SET plan_cache_mode = force_generic_plan` on each pool connection as it opens:
    /// the log reads are then planned once per connection, not on every call (planning cost
    /// more than running them; docs/benchmarks.md). Turn it off behind a pooler in
    /// transaction mode, where a session setting reaches other clients of the pooler.
    /// Default true.
    pub generic_plans: bool,
    /// Coalesce the NOTIFYs of this instance's terminal writes: a write NOTIFYs only when no
    /// other write in flight is about to (every feed re-reads while such writes are in flight;
    /// see docs/postgres.md, "Coalesced NOTIFYs"). Notifying commits run single file on the
    /// server's notify lock, so with several writers coalescing more than doubles the write
    /// throughput (docs/benchmarks.md, "PostgreSQL write throughput"). Turn it off if your own
    /// transactions stay open long after finishing an execution: such a transaction holds the
    /// notifier lock, and the others' events then wait for the feed's next re-check or
    /// safety read. Default true.
    pub coalesce_notify: bool,
    /// While coalescing terminal writes (of any instance) are in flight after a read of the
    /// feed, how long it waits before reading again: a write that skipped its NOTIFY is
    /// delivered about this much after its commit, up to 32 times this while the re-reads
    /// find nothing new (the pause doubles then, e.g. behind a transaction held open).
    /// Default 1 ms.
    #[serde(with = "duration")]
    pub in_flight_recheck: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            pg_config: None,
            schema: "completions".into(),
            pool_size: 8,
            subscription: SubscriptionConfig::default(),
            listen: true,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Some(Duration::from_secs(30)),
            retention_interval: Some(Duration::from_secs(60)),
            migrate: true,
            application_name: "completions".into(),
            keepalive_idle: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(2),
            tls_ca_file: None,
            generic_plans: true,
            coalesce_notify: true,
            in_flight_recheck: Duration::from_millis(1),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_deref().map(completion_core::redact_url))
            .field("pg_config", &self.pg_config) // tokio-postgres redacts the password itself
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("subscription", &self.subscription)
            .field("listen", &self.listen)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("retention_interval", &self.retention_interval)
            .field("migrate", &self.migrate)
            .field("application_name", &self.application_name)
            .field("keepalive_idle", &self.keepalive_idle)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("generic_plans", &self.generic_plans)
            .field("coalesce_notify", &self.coalesce_notify)
            .field("in_flight_recheck", &self.in_flight_recheck)
            .finish()
    }
}

impl PostgresConfig {
    /// The defaults, with the server given as a URL or `key=value` string.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self { url: Some(url.into()), ..Self::default() }
    }

    /// The defaults, with the server given as a `tokio_postgres::Config`.
    pub fn from_pg_config(config: tokio_postgres::Config) -> Self {
        Self { pg_config: Some(config), ..Self::default() }
    }

    /// Sets [`schema`](Self::schema).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`pool_size`](Self::pool_size).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    completion_core::subscription_setters!();

    /// Sets [`generic_plans`](Self::generic_plans).
    pub fn with_generic_plans(mut self, on: bool) -> Self {
        self.generic_plans = on;
        self
    }

    /// Sets [`coalesce_notify`](Self::coalesce_notify).
    pub fn with_coalesce_notify(mut self, on: bool) -> Self {
        self.coalesce_notify = on;
        self
    }

    /// Sets [`in_flight_recheck`](Self::in_flight_recheck).
    pub fn with_in_flight_recheck(mut self, pause: Duration) -> Self {
        self.in_flight_recheck = pause;
        self
    }

    /// Sets [`listen`](Self::listen) (false: poll-only mode).
    pub fn with_listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`command_timeout`](Self::command_timeout).
    pub fn with_command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets [`retention_interval`](Self::retention_interval).
    pub fn with_retention_interval(mut self, interval: Option<Duration>) -> Self {
        self.retention_interval = interval;
        self
    }

    /// Sets [`migrate`](Self::migrate).
    pub fn with_migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Sets [`application_name`](Self::application_name).
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Sets [`keepalive_idle`](Self::keepalive_idle).
    pub fn with_keepalive_idle(mut self, idle: Duration) -> Self {
        self.keepalive_idle = idle;
        self
    }

    /// Sets [`reconnect_max_delay`](Self::reconnect_max_delay).
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay;
        self
    }

    /// Sets [`tls_ca_file`](Self::tls_ca_file).
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Checks every setting without connecting, as
    /// [`connect`](crate::PostgresBackend::connect) does first: the URL part by part (unknown
    /// or malformed query parameters are refused by name), the schema name, the durations,
    /// the [`subscription`](Self::subscription) settings.
    /// The error ([`EngineError::InvalidInput`]) names the setting and the value.
    pub fn check(&self) -> Result<(), EngineError> {
        self.validate().map(|_| ())
    }

    /// Checks every setting and resolves the server address. Errors name the value.
    pub(crate) fn validate(&self) -> Result<Validated, EngineError> {
        let schema = Schema::new(&self.schema)?;
        let pg = match (&self.pg_config, &self.url) {
            (Some(pg), _) => pg.clone(),
            (None, Some(url)) => crate::url::parse(url)?,
            (None, None) => {
                return Err(EngineError::invalid("postgres config", "", "set `url` or `pg_config`"));
            }
        };
        if pg.get_hosts().is_empty() {
            return Err(EngineError::invalid(
                "postgres url",
                self.url.as_deref().map(completion_core::redact_url).unwrap_or_default(),
                "names no host",
            ));
        }
        if self.pool_size == 0 {
            return Err(EngineError::invalid("pool_size", "0", "must be at least 1"));
        }
        self.subscription.validate()?;
        check_duration("connect_timeout", self.connect_timeout, MIN_DURATION)?;
        // The socket option counts whole seconds: under 1 s it would be 0, refused at connect.
        check_duration("keepalive_idle", self.keepalive_idle, Duration::from_secs(1))?;
        check_duration("reconnect_max_delay", self.reconnect_max_delay, MIN_DURATION)?;
        // Zero would make the feed re-read the log without pause while writes are in flight.
        check_duration("in_flight_recheck", self.in_flight_recheck, MIN_DURATION)?;
        if let Some(t) = self.command_timeout {
            check_duration("command_timeout", t, MIN_DURATION)?;
        }
        if let Some(t) = self.retention_interval {
            check_duration("retention_interval", t, MIN_DURATION)?;
        }
        let name = &self.application_name;
        if name.is_empty() || name.len() > 40 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EngineError::invalid(
                "application_name",
                name,
                "must be 1 to 40 printable ASCII bytes without spaces",
            ));
        }
        if self.tls_ca_file.is_some() && !cfg!(feature = "tls") {
            return Err(EngineError::invalid(
                "tls_ca_file",
                self.tls_ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                "TLS needs the `tls` feature of completion-postgres",
            ));
        }
        Ok(Validated { pg, schema })
    }
}

/// A checked configuration's derived values.
pub(crate) struct Validated {
    pub pg: tokio_postgres::Config,
    pub schema: Schema,
}

#[cfg(test)]
mod tests {
    use completion_core::Retention;

    use super::*;

    #[test]
    fn deserializes_with_defaults_and_units() {
        let config: PostgresConfig = serde_json::from_str(
            r#"{"url": "postgres://u:secret@h/db", "command_timeout": null, "retention_interval": 1500,
                "subscription": {"safety_interval": "250ms", "retention": {"max_events": 10}}}"#,
        )
        .unwrap();
        assert_eq!(config.subscription.safety_interval, Duration::from_millis(250));
        assert_eq!(config.subscription.buffer, 1024);
        assert_eq!(config.command_timeout, None);
        assert_eq!(config.retention_interval, Some(Duration::from_millis(1500)));
        assert_eq!(config.subscription.retention.max_events, Some(10));
        assert_eq!(config.reconnect_max_delay, Duration::from_secs(2));
        assert_eq!(config.schema, "completions");
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert!(config.listen && config.migrate && config.generic_plans);
        let off: PostgresConfig = serde_json::from_str(r#"{"generic_plans": false}"#).unwrap();
        assert!(!off.generic_plans);
        assert!(config.coalesce_notify && config.in_flight_recheck == Duration::from_millis(1));
        let off: PostgresConfig =
            serde_json::from_str(r#"{"coalesce_notify": false, "in_flight_recheck": "5ms"}"#).unwrap();
        assert!(!off.coalesce_notify && off.in_flight_recheck == Duration::from_millis(5));
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
        let hours: PostgresConfig = serde_json::from_str(r#"{"keepalive_idle": "1h"}"#).unwrap();
        assert_eq!(hours.keepalive_idle, Duration::from_secs(3600));
        let error = serde_json::from_str::<PostgresConfig>(r#"{"keepalive_idle": "2 fortnights"}"#).unwrap_err();
        assert!(error.to_string().contains("invalid duration"), "{error}");
        assert!(serde_json::from_str::<PostgresConfig>(r#"{"sceham": "x"}"#).is_err());
        // The shared settings live under `subscription` only.
        assert!(serde_json::from_str::<PostgresConfig>(r#"{"buffer": 8}"#).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(completion_core::redact_url("postgres://me:p%40ss@db:5432/app"), "postgres://me:***@db:5432/app");
        assert_eq!(completion_core::redact_url("postgres://me@db/app"), "postgres://me@db/app");
        assert_eq!(completion_core::redact_url("host=db password=hunter2 user=me"), "host=db password=*** user=me");
    }

    #[test]
    fn validation_names_the_value() {
        let err = PostgresConfig::from_url("postgres://h/db").with_pool_size(0).validate().err().unwrap();
        assert!(err.to_string().contains("pool_size"), "{err}");
        let err = PostgresConfig::default().validate().err().unwrap();
        assert!(err.to_string().contains("url"), "{err}");
        let err = PostgresConfig::from_url("postgres://u:topsecret@h:notaport/db").validate().err().unwrap();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        let err = PostgresConfig::from_url("postgres://h/db").with_application_name("has space").validate().err();
        assert!(err.unwrap().to_string().contains("application_name"));
        let err = PostgresConfig::from_url("postgres://h/db").with_buffer(0).validate().err().unwrap();
        assert!(err.to_string().contains("subscription.buffer"), "{err}");
        let err = PostgresConfig::from_url("postgres://h/db").with_retention(Retention::events(0)).check().unwrap_err();
        assert!(err.to_string().contains("retention.max_events"), "{err}");
        let err = PostgresConfig::from_url("postgres://h/db").with_retention_interval(Some(Duration::ZERO)).check();
        assert!(err.unwrap_err().to_string().contains("retention_interval"));
        let err = PostgresConfig::from_url("postgres://h/db").with_keepalive_idle(Duration::from_millis(500)).check();
        assert!(err.unwrap_err().to_string().contains("keepalive_idle"));
        let err = PostgresConfig::from_url("postgres://h/db").with_in_flight_recheck(Duration::ZERO).check();
        assert!(err.unwrap_err().to_string().contains("in_flight_recheck"));
        let err = PostgresConfig::from_url("postgres://h/db").with_command_timeout(Some(Duration::ZERO)).check();
        assert!(err.unwrap_err().to_string().contains("command_timeout"));
    }
}
