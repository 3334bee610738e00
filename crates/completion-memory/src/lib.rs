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
use completion_core::hub::{Feed, Hub, HubConfig, LogEvent, LogReader, ReadBatch};
use completion_core::{
    CompletionBackend, CompletionPayload, CompletionStream, CounterSnapshot, Counters, Cursor, EngineBackend,
    EngineError, ExecutionId, ExecutionInfo, ExecutionState, NewExecution, Outcome, Reason, ResumableStream, Retention,
    ScannerFilter, StartFrom, WriteOp,
};

use crate::log::{CompletionLog, MemoryPosition};

const BACKEND: &str = "memory";

/// Settings of a [`MemoryBackend`].
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(default))]
#[non_exhaustive]
pub struct MemoryConfig {
    /// How much of the completion log to keep. Default: the last 100 000 events.
    pub retention: Retention,
    /// Events buffered per stream before it falls back to reading the log. Default 1024.
    pub buffer: Option<usize>,
}

impl MemoryConfig {
    /// Sets the retention.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the per-stream buffer.
    pub fn with_buffer(mut self, buffer: usize) -> Self {
        self.buffer = Some(buffer);
        self
    }
}

/// The in-process backend. Cheap to clone: clones share executions, log and subscribers.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    hub: Hub<MemoryPosition>,
    reader: Arc<StateReader>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.hub.close();
    }
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

    /// A backend with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        let state = Arc::new(Mutex::new(State {
            executions: HashMap::new(),
            log: CompletionLog::new(config.retention.clone()),
        }));
        let hub_config = config.buffer.map(HubConfig::with_buffer).unwrap_or_default();
        let hub = Hub::new(BACKEND, hub_config, Arc::new(Counters::labelled(BACKEND, &[])));
        let reader = Arc::new(StateReader(state.clone()));
        Self { shared: Arc::new(Shared { hub, reader }) }
    }

    /// Trims the log to its retention now (it is also trimmed on every append; this matters
    /// for an age limit when nothing is written).
    pub fn enforce_retention(&self) {
        self.shared.reader.lock().log.trim(now_ms());
    }

    /// How many streams are open (the memory backend's only "server-side" resource).
    pub fn open_streams(&self) -> usize {
        self.shared.hub.stream_count()
    }

    fn terminal(&self, id: &ExecutionId, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        let span = completion_core::terminal_write_span(BACKEND, id, outcome);
        let _span = span.enter();
        let _timer = self.shared.hub.counters().time_write(WriteOp::terminal(outcome));
        let mut state = self.shared.reader.lock();
        let info = state.executions.get_mut(id).ok_or_else(|| EngineError::NotFound(id.clone()))?;
        if let ExecutionState::Terminal(first) = info.state {
            return Err(EngineError::AlreadyTerminal { execution_id: id.clone(), outcome: first });
        }
        let now = now_ms();
        info.state = ExecutionState::Terminal(outcome);
        info.reason = reason.cloned();
        info.completed_at_ms = Some(now);
        let payload = CompletionPayload::new(
            id.clone(),
            info.flow_id.clone(),
            info.namespace.clone(),
            outcome,
            info.tags.clone(),
            now,
            Cursor::new(BACKEND, 0),
        );
        let seq = state.log.append(payload.clone(), now);
        span.record("position", tracing::field::debug(&seq));
        // Published under the state lock, so the hub sees events in log order.
        self.shared.hub.publish([LogEvent { position: seq, payload }]);
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
    fn decode_cursor(&self, cursor: &Cursor) -> Result<MemoryPosition, EngineError> {
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

#[async_trait]
impl CompletionBackend for MemoryBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn subscribe_completions(&self) -> Result<CompletionStream, EngineError> {
        self.subscribe_completions_filtered(&ScannerFilter::new()).await
    }

    async fn subscribe_completions_filtered(&self, filter: &ScannerFilter) -> Result<CompletionStream, EngineError> {
        let reader = self.shared.reader.clone();
        self.shared.hub.subscribe(&*self.shared.reader, reader, filter).await
    }

    async fn subscribe_from(&self, from: StartFrom, filter: &ScannerFilter) -> Result<ResumableStream, EngineError> {
        let reader = self.shared.reader.clone();
        self.shared.hub.subscribe_from(&*self.shared.reader, reader, from, filter).await
    }

    fn counters(&self) -> CounterSnapshot {
        self.shared.hub.snapshot()
    }
}

#[async_trait]
impl EngineBackend for MemoryBackend {
    async fn create_execution(&self, execution: NewExecution) -> Result<(), EngineError> {
        let _span = tracing::debug_span!("create_execution", backend = BACKEND, execution_id = %execution.id).entered();
        let _timer = self.shared.hub.counters().time_write(WriteOp::Create);
        let mut state = self.shared.reader.lock();
        if state.executions.contains_key(&execution.id) {
            return Err(EngineError::AlreadyExists(execution.id));
        }
        let info = ExecutionInfo::new(
            execution.id.clone(),
            execution.namespace,
            execution.flow_id,
            execution.tags,
            ExecutionState::Active,
            None,
            now_ms(),
            None,
        );
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
