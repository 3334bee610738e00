//! How much of the completion log a backend keeps.

use std::time::Duration;

/// How long completions stay in the log, for consumers that resume or fall behind.
///
/// An event is trimmed once either limit is passed; `None` disables a limit. A consumer that
/// resumes from a trimmed position gets a [`Gap`](crate::Gap).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default))]
#[non_exhaustive]
pub struct Retention {
    /// Keep at most this many events. Default 100 000. A backend may hold more between two
    /// trims (Valkey trims each partition to this count on write and the whole log exactly
    /// on its retention timer); it never trims below it.
    pub max_events: Option<u64>,
    /// Keep events at most this old, in seconds. Default: no age limit.
    pub max_age_secs: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_events: Some(100_000), max_age_secs: None }
    }
}

impl Retention {
    /// Keep the last `n` events, with no age limit.
    pub fn events(n: u64) -> Self {
        Self { max_events: Some(n), max_age_secs: None }
    }

    /// Keep events for `age`, with no count limit.
    pub fn age(age: Duration) -> Self {
        Self { max_events: None, max_age_secs: Some(age.as_secs().max(1)) }
    }

    /// Refuses a limit of zero, which would trim every event as soon as it is written
    /// (disable a limit with `None` instead); the error names the field.
    pub fn validate(&self) -> Result<(), crate::EngineError> {
        if self.max_events == Some(0) {
            return Err(crate::EngineError::invalid("retention.max_events", "0", "must be at least 1 (or none)"));
        }
        if self.max_age_secs == Some(0) {
            return Err(crate::EngineError::invalid("retention.max_age_secs", "0", "must be at least 1 (or none)"));
        }
        Ok(())
    }

    /// The age limit as a duration.
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age_secs.map(Duration::from_secs)
    }
}

/// What one exact trim of the log to its [`Retention`] did (every backend's
/// `enforce_retention`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Events removed by this trim.
    pub removed: u64,
    /// Where the retained log starts after the trim: every event at or before this cursor is
    /// gone, and a stream resuming at or before it gets a [`Gap`](crate::Gap). `None` when
    /// the backend does not track it or nothing was ever trimmed.
    pub watermark: Option<crate::Cursor>,
}

impl RetentionReport {
    /// A report of `removed` events, without a watermark.
    pub fn removed(removed: u64) -> Self {
        Self { removed, watermark: None }
    }

    /// Sets the watermark.
    pub fn with_watermark(mut self, watermark: crate::Cursor) -> Self {
        self.watermark = Some(watermark);
        self
    }
}
