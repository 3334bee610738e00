//! Where the engine records its tasks: the [`TaskStore`] trait, and [`Builtin`], the store
//! on a backend's own executions ([`EngineBackend`]).
//!
//! The engine only starts tasks, ends them, and (for its final check) asks where a task
//! stands. Whether that state lives in the backend (the built-in mode: `create_execution`,
//! then `complete` / `fail` / `cancel`, each completion written by the backend's terminal
//! write) or in tables of the engine's own that emit the completion in the same atomic step
//! ([`PostgresTasks`](crate::postgres::PostgresTasks),
//! [`ValkeyTasks`](crate::valkey::ValkeyTasks)) is the store's business: the engine's loop,
//! its subscription and its checks are the same for every store.
//!
//! The error contract every store keeps, so that the engine's retries are safe:
//! transient trouble is an error with [`EngineError::is_transient`]; starting a task that was
//! started before is [`EngineError::AlreadyExists`]; ending a task that ended before is
//! [`EngineError::AlreadyTerminal`] with the outcome it ended with, and writes nothing and
//! emits nothing.

use std::sync::Arc;

use async_trait::async_trait;
use completions::{EngineBackend, EngineError, ExecutionId, ExecutionState, NewExecution, Outcome, Reason};

/// The engine's task state: start a task, end it (which emits its completion), look it up.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// One line for the demo's output: where the state lives and how completions are made.
    fn describe(&self) -> String;

    /// Records that `task` started (a worker picked it up). [`EngineError::AlreadyExists`]
    /// when it was started before.
    async fn start(&self, task: &NewExecution) -> Result<(), EngineError>;

    /// Records that `task` ended with `outcome` (`reason` for a failure or cancel) and emits
    /// its completion, in one atomic step. [`EngineError::AlreadyTerminal`] (the first
    /// outcome) when it ended before.
    async fn finish(&self, task: &NewExecution, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError>;

    /// Where `id` stands in this store.
    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, EngineError>;
}

/// The built-in mode: the backend keeps the executions ([`EngineBackend`]); its terminal
/// writes append the completions.
pub struct Builtin {
    engine: Arc<dyn EngineBackend>,
}

impl Builtin {
    /// The store on `engine`'s executions.
    pub fn new(engine: Arc<dyn EngineBackend>) -> Self {
        Self { engine }
    }
}

#[async_trait]
impl TaskStore for Builtin {
    fn describe(&self) -> String {
        "built-in executions (EngineBackend: create_execution, complete/fail/cancel)".to_string()
    }

    async fn start(&self, task: &NewExecution) -> Result<(), EngineError> {
        self.engine.create_execution(task.clone()).await
    }

    async fn finish(&self, task: &NewExecution, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        match (outcome, reason) {
            (Outcome::Succeeded, _) => self.engine.complete(&task.id).await,
            (Outcome::Failed, Some(reason)) => self.engine.fail(&task.id, reason).await,
            (Outcome::Cancelled, Some(reason)) => self.engine.cancel(&task.id, reason).await,
            _ => Err(EngineError::invalid("outcome", outcome.as_str(), "a failure or cancel needs a reason")),
        }
    }

    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, EngineError> {
        Ok(self.engine.describe(id).await?.state)
    }
}
