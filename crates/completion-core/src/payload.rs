//! What a subscription yields.

use crate::{Cursor, ExecutionId, FlowId, Namespace, Outcome, Tags};

/// One execution reached a terminal state.
///
/// Read it through its methods. Backends build one with [`new`](Self::new) and the `with_*`
/// setters; the hub stamps each stream's [`cursor`](Self::cursor) at delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct CompletionPayload {
    execution_id: ExecutionId,
    flow_id: Option<FlowId>,
    namespace: Namespace,
    outcome: Outcome,
    tags: Tags,
    completed_at_ms: u64,
    pub(crate) cursor: Cursor,
}

impl CompletionPayload {
    /// A payload without flow and tags, at time 0, with a placeholder cursor.
    /// Meant for backends and tests: chain the `with_*` setters for the rest.
    pub fn new(execution_id: ExecutionId, namespace: Namespace, outcome: Outcome) -> Self {
        Self {
            execution_id,
            flow_id: None,
            namespace,
            outcome,
            tags: Tags::new(),
            completed_at_ms: 0,
            cursor: Cursor::new("", 0),
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

    /// Sets the server-side time of the transition, ms since the Unix epoch.
    pub fn with_completed_at_ms(mut self, completed_at_ms: u64) -> Self {
        self.completed_at_ms = completed_at_ms;
        self
    }

    /// Sets the cursor (the hub replaces it per stream at delivery).
    pub fn with_cursor(mut self, cursor: Cursor) -> Self {
        self.cursor = cursor;
        self
    }

    /// The execution.
    pub fn execution_id(&self) -> &ExecutionId {
        &self.execution_id
    }
    /// Its flow, if it belongs to one.
    pub fn flow_id(&self) -> Option<&FlowId> {
        self.flow_id.as_ref()
    }
    /// Its namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }
    /// How it ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
    /// Its tags as of the terminal transition.
    pub fn tags(&self) -> &Tags {
        &self.tags
    }
    /// Server-side time of the transition, in milliseconds since the Unix epoch.
    pub fn completed_at_ms(&self) -> u64 {
        self.completed_at_ms
    }
    /// Where this event sits in the backend's log: persist it to resume after this event.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }
}

/// Where a resumable subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// With the first completion committed after the subscribe call returns.
    Now,
    /// With the oldest completion the log still retains.
    Earliest,
    /// With the first completion after this cursor.
    After(Cursor),
}

/// Completions were lost to retention: the requested position is older than the oldest
/// retained event. The stream goes on with the oldest retained event after it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gap {
    /// The position the stream stood at (the cursor it resumed from, or its last delivered
    /// event), if it had one.
    pub after: Option<Cursor>,
    /// Where the stream continues: the events after this cursor are delivered next.
    pub resumed_at: Cursor,
    /// How many events were trimmed away unseen, when the backend can tell.
    pub missed: Option<u64>,
}

/// One item of a resumable stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamItem {
    /// A completion, in log order.
    Completion(CompletionPayload),
    /// Events were trimmed before this stream could read them: reconcile, then go on.
    Gap(Gap),
}

impl StreamItem {
    /// The completion, if this item is one.
    pub fn completion(&self) -> Option<&CompletionPayload> {
        match self {
            StreamItem::Completion(c) => Some(c),
            StreamItem::Gap(_) => None,
        }
    }
}
