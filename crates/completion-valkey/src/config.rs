//! Settings of a [`ValkeyBackend`](crate::ValkeyBackend), with their defaults, setters and
//! validation. The URL itself is read by [`crate::url`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use completion_core::config::{check_duration, duration, option_duration};
use completion_core::{EngineError, SubscriptionConfig, redact_url};
use serde::Deserialize;

/// Settings of a [`ValkeyBackend`](crate::ValkeyBackend).
///
/// Deserializes with serde (every field optional; unknown fields refused). Durations are
/// written as milliseconds (`2000`) or as text with units (`"500ms"`, `"2s"`, `"1m"`,
/// `"1h"`: [`completion_core::config::duration`]). The subscription settings shared by every
/// backend sit under `subscription`:
/// `{"subscription": {"buffer": 1024, "retention": {"max_events": 100000}, "safety_interval": "2s"}}`.
///
/// ```
/// use completion_valkey::ValkeyConfig;
///
/// let config = ValkeyConfig::new("valkey://127.0.0.1:6380").with_key_prefix("billing").with_partitions(8);
/// assert_eq!(config.partitions, 8);
/// ```
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ValkeyConfig {
    /// The server: `redis://`, `rediss://` (TLS, `tls` feature), `valkey://` (same as
    /// `redis://`) or `valkeys://` (same as `rediss://`), `[user[:password]@]host[:port][/db]`.
    /// A cluster: the same schemes with `-cluster` (`redis-cluster://`, `valkey-cluster://`,
    /// `rediss-cluster://`, `valkeys-cluster://`), `[user[:password]@]host:port` of one seed
    /// node and more seeds as `?node=host:port&node=host:port`. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Talk to a Valkey/Redis Cluster (the URL names seed nodes) rather than one server.
    /// A `-cluster` URL scheme turns it on as well. Default false.
    pub cluster: bool,
    /// ACL user name; overrides the URL's. Default: none (the URL's, else `default`).
    pub username: Option<String>,
    /// Password; overrides the URL's. Default: none (the URL's, if any).
    pub password: Option<String>,
    /// Database number; overrides the URL's path. Default: none (the URL's, else 0).
    pub database: Option<u8>,
    /// With TLS: a PEM file of CA certificates to trust besides the system's roots (`tls`
    /// feature). Default: none.
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key and of the channel. Different prefixes are fully isolated on one
    /// server. 1 to 64 visible ASCII characters, no braces. Default `completions`.
    pub key_prefix: String,
    /// How many partitions (log streams) the prefix has, 1 to 256. Fixed for the life of
    /// a prefix: connecting with another count fails. Default 16.
    pub partitions: u16,
    /// What every backend's subscriptions share: the log's retention, the per-stream
    /// buffer and the feed's safety read interval (see [`SubscriptionConfig`]).
    ///
    /// Retention here: the newest `max_events` completions over all partitions, none older
    /// than `max_age_secs`. Writes trim cheaply and approximately (each partition to about
    /// `max_events` entries, and by age), so the log can hold up to `partitions x
    /// max_events` entries between exact trims;
    /// [`enforce_retention`](crate::ValkeyBackend::enforce_retention) trims exactly, and
    /// runs every `retention_interval`. Default: 100 000 events, no age limit, a buffer of
    /// 1024 events, a safety read every 2 s.
    pub subscription: SubscriptionConfig,
    /// Limit on connecting (TCP, TLS, handshake) at [`connect`](crate::ValkeyBackend::connect)
    /// and on each reconnect. Default 5 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Limit on one command, including time spent waiting for a reconnect. Default 10 s.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Longest pause between reconnect attempts (they back off exponentially from 50 ms).
    /// Default 2 s.
    #[serde(with = "duration")]
    pub reconnect_max_delay: Duration,
    /// How often the backend trims the log to retention exactly, in the background
    /// (`None`: never; call [`enforce_retention`](crate::ValkeyBackend::enforce_retention)
    /// yourself). Default 60 s.
    #[serde(with = "option_duration")]
    pub retention_interval: Option<Duration>,
    /// Messages the subscriber connection may hold unread before the oldest are dropped
    /// (then the feed catches up from the log, so nothing is lost). Default 4 096.
    ///
    /// fred allocates its nine notification channels at this size, up front, when the
    /// subscriber connects and again when it quits, so each feed's memory grows with it
    /// (docs/server-facts.md, "fred 10.1"). A burst larger than this while the feed task is
    /// busy costs one log read, not an event: raise it if `lagged_messages` climbs under
    /// steady load.
    pub message_capacity: usize,
    /// How long an execution's emit marker lives after [`emit`](crate::ValkeyBackend::emit)
    /// (or an engine's own function) emitted its completion: while it lives, a second
    /// completion of the same execution id is refused with
    /// [`EngineError::AlreadyTerminal`] (unless emitted as a repeat); after, it is accepted
    /// as a first one. `None`: markers never expire (exactly once for ever, one small hash
    /// per emitted execution kept until deleted). Not tied to retention, which trims by
    /// count as well. Default 24 h.
    #[serde(with = "option_duration")]
    pub emit_marker_ttl: Option<Duration>,
}

impl Default for ValkeyConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_string(),
            cluster: false,
            username: None,
            password: None,
            database: None,
            tls_ca_file: None,
            key_prefix: "completions".to_string(),
            partitions: 16,
            subscription: SubscriptionConfig::default(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_secs(2),
            retention_interval: Some(Duration::from_secs(60)),
            message_capacity: 4_096,
            emit_marker_ttl: Some(Duration::from_secs(24 * 60 * 60)),
        }
    }
}

impl fmt::Debug for ValkeyConfig {
    /// Never prints the password, nor a password inside the URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyConfig")
            .field("url", &redact_url(&self.url))
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("partitions", &self.partitions)
            .field("subscription", &self.subscription)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("retention_interval", &self.retention_interval)
            .field("message_capacity", &self.message_capacity)
            .field("emit_marker_ttl", &self.emit_marker_ttl)
            .finish()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $field:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $field: $ty) -> Self {
            self.$field = $field;
            self
        }
    };
}

impl ValkeyConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Turns cluster mode on or off (a `-cluster` URL scheme turns it on regardless).
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// Sets the ACL user and password.
    pub fn with_credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the database number.
    pub fn with_database(mut self, database: u8) -> Self {
        self.database = Some(database);
        self
    }

    /// Trusts the CA certificates of this PEM file for TLS (`tls` feature).
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Sets the key prefix.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    setter!(
        /// Sets the partition count.
        with_partitions, partitions: u16);
    completion_core::subscription_setters!();

    setter!(
        /// Sets the connect timeout.
        with_connect_timeout, connect_timeout: Duration);
    setter!(
        /// Sets the command timeout.
        with_command_timeout, command_timeout: Duration);
    setter!(
        /// Sets the longest pause between reconnect attempts.
        with_reconnect_max_delay, reconnect_max_delay: Duration);
    setter!(
        /// Sets how often the log is trimmed exactly in the background (`None`: never).
        with_retention_interval, retention_interval: Option<Duration>);
    setter!(
        /// Sets how many unread messages the subscriber connection holds.
        with_message_capacity, message_capacity: usize);
    setter!(
        /// Sets how long an emit marker lives (`None`: for ever).
        with_emit_marker_ttl, emit_marker_ttl: Option<Duration>);

    /// Checks every value without connecting, as [`connect`](crate::ValkeyBackend::connect)
    /// does first: the URL part by part, the prefix, the partition count, the durations.
    /// The error ([`EngineError::InvalidInput`]) names the field and the value.
    pub fn check(&self) -> Result<(), EngineError> {
        self.validate()
    }

    /// Checks every value; the error names the field and the value.
    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        let prefix = &self.key_prefix;
        if prefix.is_empty() || prefix.len() > 64 {
            return Err(EngineError::invalid("key prefix", prefix, "must be 1 to 64 bytes long"));
        }
        if let Some(c) = prefix.chars().find(|c| !c.is_ascii_graphic() || *c == '{' || *c == '}') {
            return Err(EngineError::invalid(
                "key prefix",
                prefix,
                format!("character {c:?} is not allowed (visible ASCII without braces)"),
            ));
        }
        if !(1..=256).contains(&self.partitions) {
            return Err(EngineError::invalid("partitions", self.partitions.to_string(), "must be 1 to 256"));
        }
        self.subscription.validate()?;
        if self.message_capacity == 0 {
            return Err(EngineError::invalid("message_capacity", "0", "must be at least 1"));
        }
        // fred counts timeouts and delays in whole milliseconds, and reads 0 ms as "none".
        let ms = Duration::from_millis(1);
        check_duration("connect_timeout", self.connect_timeout, ms)?;
        check_duration("command_timeout", self.command_timeout, ms)?;
        check_duration("reconnect_max_delay", self.reconnect_max_delay, ms)?;
        if let Some(interval) = self.retention_interval {
            check_duration("retention_interval", interval, ms)?;
        }
        if let Some(ttl) = self.emit_marker_ttl {
            check_duration("emit_marker_ttl", ttl, ms)?;
        }
        if self.tls_ca_file.is_some() && !cfg!(feature = "tls") {
            return Err(EngineError::invalid(
                "tls_ca_file",
                self.tls_ca_file.iter().map(|p| p.display().to_string()).collect::<String>(),
                "TLS needs the `tls` cargo feature of completion-valkey",
            ));
        }
        let target = crate::url::target(&self.url, self.cluster)?;
        crate::conn::build::fred_config(&target, &self.url)?;
        if target.cluster && self.database.is_some_and(|db| db != 0) {
            return Err(EngineError::invalid(
                "database",
                self.database.unwrap_or_default().to_string(),
                "a cluster has database 0 only",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use completion_core::Retention;

    use super::*;

    #[test]
    fn a_cluster_has_database_0_only_and_the_cluster_field_reads() {
        let err = ValkeyConfig::new("redis-cluster://h:1").with_database(2).validate().unwrap_err().to_string();
        assert!(err.contains("database") && err.contains("cluster"), "{err}");
        let err = ValkeyConfig::new("http-cluster://h:1").validate().unwrap_err().to_string();
        assert!(err.contains("-cluster"), "{err}");
        let c: ValkeyConfig = serde_json::from_str(r#"{"url":"redis://h:1","cluster":true}"#).unwrap();
        assert!(crate::url::target(&c.url, c.cluster).unwrap().cluster);
    }

    #[test]
    fn validation_names_the_field() {
        let err = ValkeyConfig::default().with_key_prefix("a{b}").validate().unwrap_err().to_string();
        assert!(err.contains("key prefix") && err.contains("a{b}"), "{err}");
        assert!(ValkeyConfig::default().with_partitions(0).validate().is_err());
        assert!(ValkeyConfig::default().with_partitions(257).validate().is_err());
        let err = ValkeyConfig::default().with_buffer(0).validate().unwrap_err().to_string();
        assert!(err.contains("subscription.buffer"), "{err}");
        let err = ValkeyConfig::default().with_retention(Retention::events(0)).validate().unwrap_err().to_string();
        assert!(err.contains("retention.max_events"), "{err}");
        let err = ValkeyConfig::default().with_safety_interval(Duration::ZERO).validate().unwrap_err();
        assert!(err.to_string().contains("subscription.safety_interval"), "{err}");
        // fred counts whole milliseconds: a shorter timeout would become none.
        let err = ValkeyConfig::default().with_command_timeout(Duration::from_micros(500)).validate().unwrap_err();
        assert!(err.to_string().contains("command_timeout") && err.to_string().contains("at least 1ms"), "{err}");
        let err = ValkeyConfig::default().with_emit_marker_ttl(Some(Duration::ZERO)).validate().unwrap_err();
        assert!(err.to_string().contains("emit_marker_ttl"), "{err}");
        assert!(ValkeyConfig::default().with_emit_marker_ttl(None).validate().is_ok());
        assert!(ValkeyConfig::default().validate().is_ok());
    }

    #[test]
    fn deserializes_with_defaults_and_units() {
        let c: ValkeyConfig = serde_json::from_str(
            r#"{"url":"valkey://x","connect_timeout":1500,"reconnect_max_delay":"1m 30s",
                "subscription":{"safety_interval":"500ms","retention":{"max_age_secs":60}}}"#,
        )
        .unwrap();
        assert_eq!(c.subscription.safety_interval, Duration::from_millis(500));
        assert_eq!(c.subscription.buffer, 1024);
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.reconnect_max_delay, Duration::from_secs(90));
        assert_eq!(c.partitions, 16);
        assert_eq!(c.subscription.retention.max_age_secs, Some(60));
        let error = serde_json::from_str::<ValkeyConfig>(r#"{"command_timeout":"soon"}"#).unwrap_err().to_string();
        assert!(error.contains("invalid duration \"soon\""), "{error}");
        assert!(serde_json::from_str::<ValkeyConfig>(r#"{"nope":1}"#).is_err());
        let flat = serde_json::from_str::<ValkeyConfig>(r#"{"buffer":8}"#).unwrap_err().to_string();
        assert!(flat.contains("buffer"), "the subscription settings live under `subscription`: {flat}");
        let none: ValkeyConfig = serde_json::from_str(r#"{"retention_interval":null}"#).unwrap();
        assert_eq!(none.retention_interval, None);
        let some: ValkeyConfig = serde_json::from_str(r#"{"retention_interval":"1m"}"#).unwrap();
        assert_eq!(some.retention_interval, Some(Duration::from_secs(60)));
        let forever: ValkeyConfig = serde_json::from_str(r#"{"emit_marker_ttl":null}"#).unwrap();
        assert_eq!(forever.emit_marker_ttl, None);
        assert_eq!(ValkeyConfig::default().emit_marker_ttl, Some(Duration::from_secs(86_400)));
        let shown = format!("{:?}", ValkeyConfig::new("redis://u:hunter2@h").with_credentials("u", "pw"));
        assert!(!shown.contains("hunter2") && !shown.contains("\"pw\""), "{shown}");
    }
}
