//! The in-process completion backend: the embedded default, and the reference model of the
//! delivery contract (see `completion_core`) that every other backend is measured against.
//!
//! Everything lives in this process: executions, the retained completion log and the
//! subscriptions. A terminal write changes the execution, appends to the log and hands the
//! event to the subscription hub under one lock, so it is as atomic as the server-side
//! writes of the other backends. Nothing survives the process; there is no server to lose
//! a connection to.
//!
//! ```
//! use completion_core::{CompletionBackend, EngineBackend, ExecutionId, Namespace, NewExecution};
//! use completion_memory::MemoryBackend;
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), completion_core::EngineError> {
//! let backend = MemoryBackend::new();
//! let mut completions = backend.subscribe_completions().await?;
//! let id = ExecutionId::new("task-1")?;
//! backend.create_execution(NewExecution::new(id.clone(), Namespace::new("demo")?)).await?;
//! backend.complete(&id).await?;
//! let done = completions.next().await.unwrap();
//! assert_eq!(done.execution_id(), &id);
//! # Ok(()) }
//! ```

mod log;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use completion_core::hub::{
    Counters, Feed, Hub, HubConfig, LogEvent, LogReader, Position, ReadBatch, Subscriptions, WriteOp,
};
use completion_core::{
    CompletionPayload, Cursor, EngineBackend, EngineError, ExecutionId, ExecutionInfo, ExecutionState, NewExecution,
    Outcome, Reason, RetentionReport, ScannerFilter, SubscriptionConfig,
};

use crate::log::{CompletionLog, MemoryPosition};

const BACKEND: &str = MemoryPosition::BACKEND;

/// Settings of a [`MemoryBackend`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Retention and per-stream buffer (the same knobs on every backend; the memory
    /// backend has no feed to lose announcements, so it ignores `safety_interval`).
    /// Default: the last 100 000 events, 1024 events per stream.
    pub subscription: SubscriptionConfig,
}

impl MemoryConfig {
    completion_core::subscription_setters!();

    /// Checks every value, as [`MemoryBackend::try_with_config`] does first.
    pub fn check(&self) -> Result<(), EngineError> {
        self.subscription.validate()
    }
}

/// The in-process backend. Cheap to clone: clones share executions, log and subscribers.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    subscriptions: Subscriptions<MemoryPosition>,
    reader: Arc<StateReader>,
}

struct State {
    executions: HashMap<ExecutionId, ExecutionInfo>,
    log: CompletionLog,
}

/// Reads the log for catching-up streams; shares the state, not the hub.
struct StateReader(Arc<Mutex<State>>);

impl StateReader {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is a single step: a poisoned lock holds consistent data.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A backend with the default [`MemoryConfig`].
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A backend with `config`; a value [`MemoryConfig::check`] refuses is replaced by the
    /// nearest allowed one (a buffer of 0 by 1). Use [`try_with_config`](Self::try_with_config)
    /// to be told instead.
    pub fn with_config(config: MemoryConfig) -> Self {
        let state = Arc::new(Mutex::new(State {
            executions: HashMap::new(),
            log: CompletionLog::new(config.subscription.retention.clone()),
        }));
        let hub =
            Hub::new(HubConfig::with_buffer(config.subscription.buffer), Arc::new(Counters::labelled(BACKEND, &[])));
        let reader = Arc::new(StateReader(state.clone()));
        let subscriptions = Subscriptions::new(hub, reader.clone(), reader.clone());
        Self { shared: Arc::new(Shared { subscriptions, reader }) }
    }

    /// A backend with `config`, after [`MemoryConfig::check`].
    pub fn try_with_config(config: MemoryConfig) -> Result<Self, EngineError> {
        config.check()?;
        Ok(Self::with_config(config))
    }

    fn hub(&self) -> &Hub<MemoryPosition> {
        self.shared.subscriptions.hub()
    }

    /// Trims the log to its retention now (it is also trimmed on every append; this matters
    /// for an age limit when nothing is written). The watermark is the newest event trimmed
    /// so far (`memory:0`: none).
    pub fn enforce_retention(&self) -> RetentionReport {
        let mut state = self.shared.reader.lock();
        let removed = state.log.trim(now_ms());
        RetentionReport::removed(removed).with_watermark(state.log.trimmed_to().to_cursor())
    }

    /// How many streams are open (the memory backend's only "server-side" resource).
    pub fn open_streams(&self) -> usize {
        self.hub().stream_count()
    }

    /// Ends every stream (they yield `None`) and refuses new subscriptions
    /// ([`EngineError::Closed`]), as the server backends' `close` does. Writes, `describe` and
    /// [`enforce_retention`](Self::enforce_retention) keep working.
    pub fn close(&self) {
        self.hub().close();
    }

    fn terminal(&self, id: &ExecutionId, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        let span = completion_core::hub::terminal_write_span(BACKEND, id, outcome);
        let _span = span.enter();
        let _timer = self.hub().counters().time_write(WriteOp::terminal(outcome));
        let mut state = self.shared.reader.lock();
        let info = state.executions.get_mut(id).ok_or_else(|| EngineError::NotFound(id.clone()))?;
        if let ExecutionState::Terminal(first) = info.state {
            return Err(EngineError::AlreadyTerminal { execution_id: id.clone(), outcome: first });
        }
        let now = now_ms();
        info.state = ExecutionState::Terminal(outcome);
        info.reason = reason.cloned();
        info.completed_at_ms = Some(now);
        let payload = CompletionPayload::new(id.clone(), info.namespace.clone(), outcome)
            .with_flow(info.flow_id.clone())
            .with_tags(info.tags.clone())
            .with_completed_at_ms(now);
        let seq = state.log.append(payload.clone(), now);
        span.record("position", tracing::field::debug(&seq));
        // Published under the state lock, so the hub sees events in log order.
        self.hub().publish([LogEvent { position: seq, payload }]);
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl Feed<MemoryPosition> for StateReader {
    async fn start(&self, hub: &Hub<MemoryPosition>) -> Result<Option<tokio::task::JoinHandle<()>>, EngineError> {
        // Writes publish to the hub directly; starting only pins the hub to the log's head.
        hub.advance_to(&self.lock().log.head());
        Ok(None)
    }
}

#[async_trait]
impl LogReader<MemoryPosition> for StateReader {
    async fn decode_cursor(&self, cursor: &Cursor) -> Result<MemoryPosition, EngineError> {
        MemoryPosition::decode(cursor, self.lock().log.head())
    }

    async fn read_after(
        &self,
        after: &MemoryPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<ReadBatch<MemoryPosition>, EngineError> {
        let span = tracing::debug_span!("read_log", backend = BACKEND, position = ?after, limit);
        let _span = span.enter();
        let batch = self.lock().log.read_after(*after, filter, limit);
        tracing::trace!(events = batch.events.len(), scanned_to = ?batch.scanned_to, "read");
        Ok(batch)
    }
}

completion_core::delegate_completion_backend!(MemoryBackend, |this| &this.shared.subscriptions);

#[async_trait]
impl EngineBackend for MemoryBackend {
    async fn create_execution(&self, execution: NewExecution) -> Result<(), EngineError> {
        let _span = tracing::debug_span!("create_execution", backend = BACKEND, execution_id = %execution.id).entered();
        let _timer = self.hub().counters().time_write(WriteOp::Create);
        let mut state = self.shared.reader.lock();
        if state.executions.contains_key(&execution.id) {
            return Err(EngineError::AlreadyExists(execution.id));
        }
        let info = ExecutionInfo::new(execution.id.clone(), execution.namespace, ExecutionState::Active)
            .with_flow(execution.flow_id)
            .with_tags(execution.tags)
            .with_created_at_ms(now_ms());
        state.executions.insert(execution.id, info);
        Ok(())
    }

    async fn complete(&self, id: &ExecutionId) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Succeeded, None)
    }

    async fn fail(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Failed, Some(reason))
    }

    async fn cancel(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Cancelled, Some(reason))
    }

    async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        self.shared.reader.lock().executions.get(id).cloned().ok_or_else(|| EngineError::NotFound(id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use completion_core::{CompletionBackend, Cursor, Retention, ScannerFilter, StartFrom};

    use super::*;

    async fn complete(backend: &MemoryBackend, n: usize) {
        for i in 0..n {
            let id = ExecutionId::new(format!("e{i}")).unwrap();
            backend
                .create_execution(NewExecution::new(id.clone(), completion_core::Namespace::new("n").unwrap()))
                .await
                .unwrap();
            backend.complete(&id).await.unwrap();
        }
    }

    #[tokio::test]
    async fn enforce_retention_reports_what_it_removed_and_where_the_log_starts() {
        let backend = MemoryBackend::with_config(
            MemoryConfig::default().with_retention(Retention::age(std::time::Duration::from_secs(3600))),
        );
        complete(&backend, 3).await;
        let report = backend.enforce_retention();
        assert_eq!((report.removed, report.watermark), (0, Some(Cursor::new("memory", 0))), "nothing is old yet");

        // Appends trim by count as they go; the report then says where the log starts.
        let backend = MemoryBackend::with_config(MemoryConfig::default().with_retention(Retention::events(2)));
        complete(&backend, 5).await;
        let report = backend.enforce_retention();
        assert_eq!((report.removed, report.watermark), (0, Some(Cursor::new("memory", 3))));
    }

    #[tokio::test]
    async fn close_ends_every_stream_and_writes_keep_working() {
        use futures_util::StreamExt;

        let backend = MemoryBackend::new();
        let mut plain = backend.subscribe_completions().await.unwrap();
        let mut resumable = backend.subscribe_from(StartFrom::Now, &ScannerFilter::new()).await.unwrap();
        assert_eq!(backend.open_streams(), 2);
        backend.close();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            (plain.next().await.is_none(), resumable.next().await.is_none())
        })
        .await;
        assert_eq!(ended.ok(), Some((true, true)), "both streams end after close");
        let refused = backend.subscribe_completions().await.err();
        assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
        let refused = backend.subscribe_from(StartFrom::Earliest, &ScannerFilter::new()).await.err();
        assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
        complete(&backend, 1).await;
        let info = backend.describe(&ExecutionId::new("e0").unwrap()).await.unwrap();
        assert_eq!(info.state, completion_core::ExecutionState::Terminal(Outcome::Succeeded));
        drop((plain, resumable));
        assert_eq!(backend.open_streams(), 0);
    }

    #[test]
    fn try_with_config_refuses_what_check_refuses_naming_the_field() {
        let zero = MemoryConfig::default().with_retention(Retention::events(0));
        let error = MemoryBackend::try_with_config(zero).err().expect("max_events 0 is refused").to_string();
        assert!(error.contains("retention.max_events"), "{error}");
        let error = MemoryBackend::try_with_config(MemoryConfig::default().with_buffer(0)).err().unwrap().to_string();
        assert!(error.contains("subscription.buffer"), "{error}");
        assert!(MemoryBackend::try_with_config(MemoryConfig::default()).is_ok());
    }
}
