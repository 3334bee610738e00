//! The write side's inputs and outputs.

use crate::{ExecutionId, FlowId, Namespace, Outcome, Reason, Tags};

/// An execution to create.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewExecution {
    /// Its id, chosen by the engine.
    pub id: ExecutionId,
    /// Its namespace.
    pub namespace: Namespace,
    /// The flow it belongs to, if any.
    pub flow_id: Option<FlowId>,
    /// Its instance tags, copied into its completion.
    pub tags: Tags,
}

impl NewExecution {
    /// An execution without flow and tags.
    pub fn new(id: ExecutionId, namespace: Namespace) -> Self {
        Self { id, namespace, flow_id: None, tags: Tags::new() }
    }

    /// Puts it in `flow`.
    pub fn with_flow(mut self, flow: FlowId) -> Self {
        self.flow_id = Some(flow);
        self
    }

    /// Gives it `tags`.
    pub fn with_tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }
}

/// A completion an engine emits for an execution whose state it keeps itself (the
/// "bring your own state" path: `PostgresBackend::emit_in`, `ValkeyBackend::emit`): what the
/// built-in terminal write would have taken from the execution's stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completion {
    /// The execution that reached a terminal state.
    pub execution_id: ExecutionId,
    /// Its namespace (what namespace filters match).
    pub namespace: Namespace,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed or was cancelled, if the engine says.
    pub reason: Option<Reason>,
    /// The flow it belongs to, if any.
    pub flow_id: Option<FlowId>,
    /// Its instance tags (what tag filters match).
    pub tags: Tags,
    /// When it reached its terminal state, ms since the Unix epoch, as the engine recorded it
    /// (what the delivered payload's `completed_at_ms` says). `None`: the server's clock at
    /// the emit.
    pub completed_at_ms: Option<u64>,
}

impl Completion {
    /// A completion without reason, flow and tags, timed by the server at the emit.
    pub fn new(execution_id: ExecutionId, namespace: Namespace, outcome: Outcome) -> Self {
        Self { execution_id, namespace, outcome, reason: None, flow_id: None, tags: Tags::new(), completed_at_ms: None }
    }

    /// Says when it reached its terminal state (ms since the Unix epoch).
    pub fn with_completed_at_ms(mut self, at: u64) -> Self {
        self.completed_at_ms = Some(at);
        self
    }

    /// Gives it a reason.
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Puts it in `flow`.
    pub fn with_flow(mut self, flow: FlowId) -> Self {
        self.flow_id = Some(flow);
        self
    }

    /// Gives it `tags`.
    pub fn with_tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }
}

/// Where an execution stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutionState {
    /// Created, not terminal yet.
    Active,
    /// Reached a terminal state.
    Terminal(Outcome),
}

/// What [`EngineBackend::describe`](crate::EngineBackend::describe) returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutionInfo {
    /// The execution.
    pub id: ExecutionId,
    /// Its namespace.
    pub namespace: Namespace,
    /// Its flow.
    pub flow_id: Option<FlowId>,
    /// Its tags.
    pub tags: Tags,
    /// Where it stands.
    pub state: ExecutionState,
    /// The reason given to fail or cancel.
    pub reason: Option<Reason>,
    /// Server-side creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Server-side time of the terminal transition.
    pub completed_at_ms: Option<u64>,
}

impl ExecutionInfo {
    /// An info without flow, tags and reason, created at time 0 and never finished. Meant for
    /// backends: chain the `with_*` setters for the rest.
    pub fn new(id: ExecutionId, namespace: Namespace, state: ExecutionState) -> Self {
        Self {
            id,
            namespace,
            flow_id: None,
            tags: Tags::new(),
            state,
            reason: None,
            created_at_ms: 0,
            completed_at_ms: None,
        }
    }

    /// Sets the flow (`None`: none).
    pub fn with_flow(mut self, flow_id: impl Into<Option<FlowId>>) -> Self {
        self.flow_id = flow_id.into();
        self
    }

    /// Sets the tags.
    pub fn with_tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }

    /// Sets the reason given to fail or cancel (`None`: none).
    pub fn with_reason(mut self, reason: impl Into<Option<Reason>>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Sets the creation time, ms since the Unix epoch.
    pub fn with_created_at_ms(mut self, at: u64) -> Self {
        self.created_at_ms = at;
        self
    }

    /// Sets the time of the terminal transition (`None`: not terminal).
    pub fn with_completed_at_ms(mut self, at: impl Into<Option<u64>>) -> Self {
        self.completed_at_ms = at.into();
        self
    }
}
