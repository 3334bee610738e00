//! Opening the backend a URL names: [`open`], its [`OpenOptions`] and the [`Backend`] it
//! returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use completion_core::{CompletionBackend, EngineBackend, EngineError, Retention};

use crate::url::parse_url;

/// How [`open`] sets up a backend. `None` (and the defaults of the two flags) leave the
/// backend library's own default in place; a setting that does not apply to the URL's
/// backend is ignored, so one `OpenOptions` serves any URL.
///
/// | setting | applies to | default |
/// |---|---|---|
/// | [`key_prefix`](Self::key_prefix) | Valkey | `completions` |
/// | [`partitions`](Self::partitions) | Valkey | 16 (a prefix keeps the count it was created with) |
/// | [`schema`](Self::schema) | PostgreSQL | `completions` |
/// | [`application_name`](Self::application_name) | PostgreSQL | `completions` |
/// | [`pool_size`](Self::pool_size) | PostgreSQL | 8 |
/// | [`migrate`](Self::migrate) | PostgreSQL | `true`: pending migrations are applied on open |
/// | [`connect_timeout`](Self::connect_timeout) | Valkey, PostgreSQL | 5 s |
/// | [`reconnect_max_delay`](Self::reconnect_max_delay) | Valkey, PostgreSQL | 2 s |
/// | [`retention`](Self::retention) | every backend | the last 100 000 events |
/// | [`background_retention`](Self::background_retention) | Valkey, PostgreSQL | `true`: the log is trimmed every 60 s |
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Valkey: the key prefix every key of the backend starts with.
    pub key_prefix: Option<String>,
    /// Valkey: the partition count of a new key prefix (1 to 256).
    pub partitions: Option<u16>,
    /// PostgreSQL: the schema of the backend's tables and functions.
    pub schema: Option<String>,
    /// PostgreSQL: the `application_name` the backend's sessions start with.
    pub application_name: Option<String>,
    /// PostgreSQL: connections in the backend's pool.
    pub pool_size: Option<usize>,
    /// PostgreSQL: apply pending migrations on open. Off, a missing or older schema fails
    /// the open with [`EngineError::Incompatible`]. (Valkey loads its function library on
    /// every connect when the server has none or an older one.)
    pub migrate: bool,
    /// Limit on connecting to the server.
    pub connect_timeout: Option<Duration>,
    /// The longest pause between reconnect attempts after a lost connection.
    pub reconnect_max_delay: Option<Duration>,
    /// How much of the completion log to keep.
    pub retention: Option<Retention>,
    /// Trim the log to its retention in the background, at the backend's default
    /// `retention_interval` (60 s). Off, the backend's `retention_interval` is `None`:
    /// nothing this instance runs trims the log behind its owner's back (the in-process
    /// backend trims on every write either way).
    pub background_retention: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            key_prefix: None,
            partitions: None,
            schema: None,
            application_name: None,
            pool_size: None,
            migrate: true,
            connect_timeout: None,
            reconnect_max_delay: None,
            retention: None,
            background_retention: true,
        }
    }
}

impl OpenOptions {
    /// Sets the Valkey key prefix.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Sets the Valkey partition count of a new key prefix.
    pub fn with_partitions(mut self, partitions: u16) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Sets the PostgreSQL schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets the PostgreSQL `application_name`.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Sets the PostgreSQL pool size.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// Sets whether PostgreSQL migrations are applied on open.
    pub fn with_migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Sets the limit on connecting.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets the longest pause between reconnect attempts.
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = Some(delay);
        self
    }

    /// Sets the retention of the completion log.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Sets whether the log is trimmed in the background.
    pub fn with_background_retention(mut self, on: bool) -> Self {
        self.background_retention = on;
        self
    }

    /// The in-process backend's config these options give.
    #[cfg(feature = "memory")]
    pub fn memory_config(&self) -> completion_memory::MemoryConfig {
        let mut config = completion_memory::MemoryConfig::default();
        if let Some(retention) = &self.retention {
            config = config.with_retention(retention.clone());
        }
        config
    }

    /// The Valkey config [`open`] uses for `url`: to adjust a setting these options do not
    /// carry and connect with `completions::valkey::ValkeyBackend::connect`.
    #[cfg(feature = "valkey")]
    pub fn valkey_config(&self, url: &str) -> completion_valkey::ValkeyConfig {
        let mut config = completion_valkey::ValkeyConfig::new(url);
        if let Some(prefix) = &self.key_prefix {
            config = config.with_key_prefix(prefix);
        }
        if let Some(partitions) = self.partitions {
            config = config.with_partitions(partitions);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.with_connect_timeout(timeout);
        }
        if let Some(delay) = self.reconnect_max_delay {
            config = config.with_reconnect_max_delay(delay);
        }
        if let Some(retention) = &self.retention {
            config = config.with_retention(retention.clone());
        }
        if !self.background_retention {
            config = config.with_retention_interval(None);
        }
        config
    }

    /// The PostgreSQL config [`open`] uses for `url`: to adjust a setting these options do
    /// not carry and connect with `completions::postgres::PostgresBackend::connect`, or to
    /// run `completions::postgres::migrate` with it.
    #[cfg(feature = "postgres")]
    pub fn postgres_config(&self, url: &str) -> completion_postgres::PostgresConfig {
        let mut config = completion_postgres::PostgresConfig::from_url(url).with_migrate(self.migrate);
        if let Some(schema) = &self.schema {
            config = config.with_schema(schema);
        }
        if let Some(name) = &self.application_name {
            config = config.with_application_name(name);
        }
        if let Some(size) = self.pool_size {
            config = config.with_pool_size(size);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.with_connect_timeout(timeout);
        }
        if let Some(delay) = self.reconnect_max_delay {
            config = config.with_reconnect_max_delay(delay);
        }
        if let Some(retention) = &self.retention {
            config = config.with_retention(retention.clone());
        }
        if !self.background_retention {
            config = config.with_retention_interval(None);
        }
        config
    }
}

/// An open backend: one of the backends this build includes. Cheap to clone (clones share
/// the connections and subscriptions).
///
/// Most code needs only the two traits ([`completions`](Self::completions),
/// [`engine`](Self::engine)); match on the variant for what one backend alone offers
/// (server stats, schema versions).
#[derive(Clone)]
#[non_exhaustive]
pub enum Backend {
    /// The in-process backend.
    #[cfg(feature = "memory")]
    Memory(completion_memory::MemoryBackend),
    /// Valkey / Redis.
    #[cfg(feature = "valkey")]
    Valkey(completion_valkey::ValkeyBackend),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(completion_postgres::PostgresBackend),
}

/// `$body` with `$b` bound to the backend inside `$backend`, whichever it is.
macro_rules! each {
    ($backend:expr, $b:ident => $body:expr) => {
        match $backend {
            #[cfg(feature = "memory")]
            Backend::Memory($b) => $body,
            #[cfg(feature = "valkey")]
            Backend::Valkey($b) => $body,
            #[cfg(feature = "postgres")]
            Backend::Postgres($b) => $body,
            // A build without any backend has no `Backend` value to match.
            #[cfg(not(any(feature = "memory", feature = "valkey", feature = "postgres")))]
            _ => match *$backend {},
        }
    };
}

impl Backend {
    /// The subscribe side, shared.
    pub fn completions(&self) -> Arc<dyn CompletionBackend> {
        each!(self, b => Arc::new(b.clone()))
    }

    /// The write side (create, complete, fail, cancel, describe), shared.
    pub fn engine(&self) -> Arc<dyn EngineBackend> {
        each!(self, b => Arc::new(b.clone()))
    }

    /// Ends every stream (they yield `None`) and refuses new subscriptions
    /// ([`EngineError::Closed`]); the server connection that fed them closes once they are
    /// gone. Writes keep working until the backend is dropped.
    pub fn close(&self) {
        each!(self, b => b.close())
    }

    /// The backend's name, as in cursors (`memory`, `valkey`, `postgres`).
    pub fn name(&self) -> &'static str {
        each!(self, b => CompletionBackend::backend_name(b))
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Backend").field(&self.name()).finish()
    }
}

/// Opens the backend `url` names, set up as `options` say: `memory:` makes an empty
/// in-process backend, a server URL connects (within
/// [`connect_timeout`](OpenOptions::connect_timeout)) and prepares the server as the
/// backend's `connect` does.
///
/// A URL this build cannot open fails as [`parse_url`] says, before anything connects;
/// otherwise the backend's own errors come back unchanged ([`EngineError::Transport`] or
/// [`EngineError::Timeout`] for an unreachable server, [`EngineError::InvalidInput`] naming
/// the part of the URL at fault, [`EngineError::Incompatible`] for a schema that
/// [`migrate`](OpenOptions::migrate) off leaves missing or old).
pub async fn open(url: &str, options: &OpenOptions) -> Result<Backend, EngineError> {
    #[cfg(not(any(feature = "memory", feature = "valkey", feature = "postgres")))]
    let _ = options;
    match parse_url(url)? {
        #[cfg(feature = "memory")]
        crate::Scheme::Memory => {
            Ok(Backend::Memory(completion_memory::MemoryBackend::with_config(options.memory_config())))
        }
        #[cfg(feature = "valkey")]
        crate::Scheme::Valkey => {
            completion_valkey::ValkeyBackend::connect(options.valkey_config(url)).await.map(Backend::Valkey)
        }
        #[cfg(feature = "postgres")]
        crate::Scheme::Postgres => {
            completion_postgres::PostgresBackend::connect(options.postgres_config(url)).await.map(Backend::Postgres)
        }
        // `parse_url` refuses the schemes of the backends this build leaves out.
        #[allow(unreachable_patterns)]
        scheme => Err(EngineError::unavailable("open", format!("the {} backend is not in this build", scheme.name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_leave_the_libraries_defaults() {
        let options = OpenOptions::default();
        assert!(options.migrate && options.background_retention);
        assert_eq!(options.key_prefix, None);
        let options =
            options.with_key_prefix("p").with_partitions(4).with_migrate(false).with_background_retention(false);
        assert_eq!((options.key_prefix.as_deref(), options.partitions), (Some("p"), Some(4)));
        assert!(!options.migrate && !options.background_retention);
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_opens_an_empty_backend_with_the_retention_asked_for() {
        let options = OpenOptions::default().with_retention(Retention::events(3));
        assert_eq!(options.memory_config().subscription.retention, Retention::events(3));
        let backend = open("memory:", &options).await.unwrap();
        assert_eq!(backend.name(), "memory");
        assert_eq!(backend.completions().backend_name(), "memory");
        assert!(matches!(backend, Backend::Memory(_)));
        assert_eq!(format!("{backend:?}"), "Backend(\"memory\")");
        backend.close();
        let refused = backend.completions().subscribe_completions().await.err();
        assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
    }

    #[cfg(feature = "valkey")]
    #[test]
    fn the_valkey_config_carries_the_options() {
        let config = OpenOptions::default()
            .with_key_prefix("p")
            .with_partitions(4)
            .with_connect_timeout(Duration::from_millis(300))
            .with_background_retention(false)
            .valkey_config("redis://h:1");
        assert_eq!((config.key_prefix.as_str(), config.partitions), ("p", 4));
        assert_eq!((config.connect_timeout, config.retention_interval), (Duration::from_millis(300), None));
        let defaults = OpenOptions::default().valkey_config("redis://h:1");
        assert_eq!(defaults.key_prefix, completion_valkey::ValkeyConfig::default().key_prefix);
        assert!(defaults.retention_interval.is_some());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_postgres_config_carries_the_options() {
        let config = OpenOptions::default()
            .with_schema("s")
            .with_application_name("app")
            .with_pool_size(2)
            .with_migrate(false)
            .with_background_retention(false)
            .postgres_config("postgres://h/db");
        assert_eq!((config.schema.as_str(), config.application_name.as_str()), ("s", "app"));
        assert_eq!((config.pool_size, config.migrate, config.retention_interval), (2, false, None));
        let defaults = OpenOptions::default().postgres_config("postgres://h/db");
        assert!(defaults.migrate && defaults.retention_interval.is_some());
    }
}
