//! Config pieces every backend shares: the subscription settings ([`SubscriptionConfig`],
//! embedded in each backend's config under `subscription`) and, with the `serde` feature,
//! one way to read durations (`duration`, `option_duration`).
//!
//! One knob has one name and one rule in every backend: a backend config validates its
//! `subscription` with [`SubscriptionConfig::validate`], whose errors name the field, and
//! each of its own durations with [`check_duration`].

use std::time::Duration;

use crate::{EngineError, Retention};

/// How a backend's subscriptions keep and pace what they deliver: the same knobs on every
/// backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct SubscriptionConfig {
    /// How much of the completion log to keep, for streams that resume or fall behind.
    /// Default: the newest 100 000 events, no age limit.
    pub retention: Retention,
    /// Events buffered per stream before it falls back to reading the log (and the most one
    /// catch-up read returns), at least 1. Default 1024.
    pub buffer: usize,
    /// How often a server backend's feed re-reads the log even when nothing seems lost: the
    /// longest a completion whose announcement was lost waits. Longer than zero. The memory
    /// backend has no announcements to lose and ignores it. Default 2 s.
    #[cfg_attr(feature = "serde", serde(with = "duration"))]
    pub safety_interval: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self { retention: Retention::default(), buffer: 1024, safety_interval: Duration::from_secs(2) }
    }
}

impl SubscriptionConfig {
    /// Sets the retention.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the per-stream buffer.
    pub fn with_buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer;
        self
    }

    /// Sets the safety read interval.
    pub fn with_safety_interval(mut self, interval: Duration) -> Self {
        self.safety_interval = interval;
        self
    }

    /// Checks every value; [`EngineError::InvalidInput`] names the field
    /// (`subscription.buffer`, ...) and the value.
    pub fn validate(&self) -> Result<(), EngineError> {
        self.retention.validate()?;
        if self.buffer == 0 {
            return Err(EngineError::invalid("subscription.buffer", "0", "must be at least 1"));
        }
        check_duration("subscription.safety_interval", self.safety_interval, MIN_DURATION)
    }
}

/// Writes, inside a backend config's `impl` block, the setters of its `subscription` field (a
/// [`SubscriptionConfig`]): `with_subscription`, `with_retention`, `with_buffer` and
/// `with_safety_interval`, so that the same knob has the same setter on every backend.
///
/// ```
/// use completion_core::{Retention, SubscriptionConfig};
///
/// #[derive(Default)]
/// struct MyConfig {
///     subscription: SubscriptionConfig,
/// }
///
/// impl MyConfig {
///     completion_core::subscription_setters!();
/// }
///
/// let config = MyConfig::default().with_retention(Retention::events(10)).with_buffer(64);
/// assert_eq!((config.subscription.retention, config.subscription.buffer), (Retention::events(10), 64));
/// ```
#[macro_export]
macro_rules! subscription_setters {
    () => {
        /// Sets the subscription settings (retention, buffer, safety read interval).
        pub fn with_subscription(mut self, subscription: $crate::SubscriptionConfig) -> Self {
            self.subscription = subscription;
            self
        }

        /// Sets the retention (`subscription.retention`).
        pub fn with_retention(mut self, retention: $crate::Retention) -> Self {
            self.subscription.retention = retention;
            self
        }

        /// Sets the per-stream buffer (`subscription.buffer`).
        pub fn with_buffer(mut self, buffer: usize) -> Self {
            self.subscription.buffer = buffer;
            self
        }

        /// Sets the safety read interval (`subscription.safety_interval`).
        pub fn with_safety_interval(mut self, interval: ::std::time::Duration) -> Self {
            self.subscription.safety_interval = interval;
            self
        }
    };
}

/// The shortest duration a setting takes unless its backend needs more: longer than zero.
pub const MIN_DURATION: Duration = Duration::from_nanos(1);

/// The rule every backend config applies to a duration setting: at least `min`, refused
/// otherwise with an [`EngineError::InvalidInput`] naming the setting (`what`) and the value.
/// `min` is [`MIN_DURATION`], or the backend's resolution where its client library counts in
/// coarser units (Valkey: 1 ms, since fred reads a timeout of 0 ms as none).
pub fn check_duration(what: &'static str, value: Duration, min: Duration) -> Result<(), EngineError> {
    if value >= min {
        return Ok(());
    }
    let rule =
        if min <= MIN_DURATION { "must be longer than zero".to_string() } else { format!("must be at least {min:?}") };
    Err(EngineError::invalid(what, format!("{value:?}"), rule))
}

/// Serde for a [`Duration`]: a whole number of milliseconds, or text with units as
/// [`humantime`](https://docs.rs/humantime) reads it (`250ms`, `2s`, `1m 30s`, `24h`).
/// Written as humantime text. Use with `#[serde(with = "completion_core::config::duration")]`.
#[cfg(feature = "serde")]
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }

    /// Reads a duration (see the [module docs](self)).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
                D::Error::custom(format!(
                    "invalid duration {text:?}: {e} (write e.g. \"250ms\", \"2s\", \"5m\" or \"1h\")"
                ))
            }),
        }
    }

    /// Writes a duration as humantime text (`2s`, `1m 30s`).
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }
}

/// Serde for an `Option<Duration>`: `null` (or absent, with `#[serde(default)]`) is `None`,
/// anything else reads as [`duration`] does.
#[cfg(feature = "serde")]
pub mod option_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    struct Wrapped(#[serde(with = "super::duration")] Duration);

    /// Reads an optional duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(d)| d))
    }

    /// Writes `None` as `null`, a duration as humantime text.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field_at_fault() {
        assert!(SubscriptionConfig::default().validate().is_ok());
        let refused = |c: SubscriptionConfig| c.validate().unwrap_err().to_string();
        assert!(refused(SubscriptionConfig::default().with_buffer(0)).contains("subscription.buffer"));
        assert!(
            refused(SubscriptionConfig::default().with_safety_interval(Duration::ZERO)).contains("safety_interval")
        );
        assert!(refused(SubscriptionConfig::default().with_retention(Retention::events(0))).contains("max_events"));
    }

    #[test]
    fn durations_are_checked_against_their_minimum() {
        assert!(check_duration("t", Duration::from_nanos(1), MIN_DURATION).is_ok());
        let zero = check_duration("connect_timeout", Duration::ZERO, MIN_DURATION).unwrap_err().to_string();
        assert!(zero.contains("connect_timeout") && zero.contains("longer than zero"), "{zero}");
        let ms = Duration::from_millis(1);
        assert!(check_duration("t", ms, ms).is_ok());
        let short = check_duration("command_timeout", Duration::from_micros(500), ms).unwrap_err().to_string();
        assert!(
            short.contains("command_timeout") && short.contains("500") && short.contains("at least 1ms"),
            "{short}"
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn durations_read_millis_and_units_and_refuse_nonsense() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct T {
            #[serde(with = "duration")]
            d: Duration,
            #[serde(with = "option_duration", default)]
            o: Option<Duration>,
        }
        let read = |json: &str| serde_json::from_str::<T>(json);
        assert_eq!(read(r#"{"d": 250}"#).unwrap(), T { d: Duration::from_millis(250), o: None });
        assert_eq!(read(r#"{"d": "2s", "o": "1h"}"#).unwrap().o, Some(Duration::from_secs(3600)));
        assert_eq!(read(r#"{"d": "1m 30s", "o": null}"#).unwrap().d, Duration::from_secs(90));
        let error = read(r#"{"d": "soon"}"#).unwrap_err().to_string();
        assert!(error.contains("invalid duration \"soon\""), "{error}");
        let written = serde_json::to_string(&T { d: Duration::from_millis(1500), o: None }).unwrap();
        assert_eq!(written, r#"{"d":"1s 500ms","o":null}"#);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn subscription_config_reads_partially_and_refuses_unknown_fields() {
        let c: SubscriptionConfig = serde_json::from_str(r#"{"buffer": 8, "safety_interval": "500ms"}"#).unwrap();
        assert_eq!((c.buffer, c.safety_interval, c.retention), (8, Duration::from_millis(500), Retention::default()));
        let error = serde_json::from_str::<SubscriptionConfig>(r#"{"bufer": 8}"#).unwrap_err().to_string();
        assert!(error.contains("bufer"), "{error}");
    }
}
