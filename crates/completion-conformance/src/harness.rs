//! What a backend gives the suite: fresh backend instances and fault hooks.

use std::sync::Arc;

use async_trait::async_trait;
use completion_core::{BoxError, CompletionBackend, EngineBackend, Retention};

/// How a test wants its backend instance.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendOptions {
    /// The log's retention. Default: 100 000 events.
    pub retention: Retention,
    /// Events buffered per stream. Default 1024.
    pub buffer: usize,
    /// The instance needs a server of its own, because the test kills its connections or
    /// restarts it. Default false: instances share one server, isolated by key prefix or
    /// schema.
    pub dedicated_server: bool,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self { retention: Retention::default(), buffer: 1024, dedicated_server: false }
    }
}

impl BackendOptions {
    /// Sets the retention.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }
    /// Sets the per-stream buffer.
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer;
        self
    }
    /// Asks for a server of the instance's own.
    pub fn dedicated_server(mut self) -> Self {
        self.dedicated_server = true;
        self
    }
}

/// One backend instance under test: both traits (usually the same object) and its hooks.
#[non_exhaustive]
pub struct TestBackend {
    /// The write side.
    pub engine: Arc<dyn EngineBackend>,
    /// The subscribe side.
    pub completions: Arc<dyn CompletionBackend>,
    /// Fault and inspection hooks.
    pub hooks: Arc<dyn BackendHooks>,
}

impl TestBackend {
    /// Bundles an instance.
    pub fn new(
        engine: Arc<dyn EngineBackend>,
        completions: Arc<dyn CompletionBackend>,
        hooks: Arc<dyn BackendHooks>,
    ) -> Self {
        Self { engine, completions, hooks }
    }
}

/// Faults the suite injects, and what it inspects, for one backend instance.
///
/// A hook the backend does not support returns an error; the suite calls the fault hooks
/// only when [`Capabilities`] say they are supported.
#[async_trait]
pub trait BackendHooks: Send + Sync + 'static {
    /// Kills every server connection of this instance (subscriber and writers), from the
    /// server side, while the test goes on.
    async fn kill_connections(&self) -> Result<(), BoxError>;

    /// Stops the instance's (dedicated) server and starts it again on the same address with
    /// its data kept.
    async fn restart_server(&self) -> Result<(), BoxError>;

    /// How many server-side resources the instance's subscription side holds right now
    /// (subscriber connections, channel subscriptions, LISTENs, open streams for the
    /// memory backend). Must reach 0 once every stream is dropped.
    async fn subscription_resources(&self) -> Result<usize, BoxError>;

    /// Trims the log to the configured retention right now, exactly.
    async fn enforce_retention(&self) -> Result<(), BoxError>;

    /// Calls the backend's own `close`: every stream ends and new subscriptions are refused,
    /// while writes keep working.
    async fn close(&self) -> Result<(), BoxError>;
}

/// Which fault hooks a backend supports.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`BackendHooks::kill_connections`] works.
    pub kill_connections: bool,
    /// [`BackendHooks::restart_server`] works.
    pub restart_server: bool,
}

impl Capabilities {
    /// No fault hooks (the memory backend).
    pub fn none() -> Self {
        Self::default()
    }
    /// Both fault hooks.
    pub fn all() -> Self {
        Self { kill_connections: true, restart_server: true }
    }
}

/// Makes backend instances for the suite. One harness per test binary is typical, holding
/// the throwaway server(s) the instances share.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Which fault hooks work.
    fn capabilities(&self) -> Capabilities;

    /// A fresh, isolated backend instance: no events or executions of other instances are
    /// visible to it.
    async fn backend(&self, options: BackendOptions) -> Result<TestBackend, BoxError>;
}
