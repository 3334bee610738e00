//! What a subscription yields.

use crate::{Cursor, ExecutionId, FlowId, Namespace, Outcome, Tags};

/// One execution reached a terminal state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct CompletionPayload {
    /// The execution.
    pub execution_id: ExecutionId,
    /// Its flow, if it belongs to one.
    pub flow_id: Option<FlowId>,
    /// Its namespace.
    pub namespace: Namespace,
    /// How it ended.
    pub outcome: Outcome,
    /// Its tags as of the terminal transition.
    pub tags: Tags,
    /// Server-side time of the transition, in milliseconds since the Unix epoch.
    pub completed_at_ms: u64,
    /// Where this event sits in the backend's log: persist it to resume after this event.
    pub cursor: Cursor,
}

impl CompletionPayload {
    /// Builds a payload. Meant for backends and tests.
    pub fn new(
        execution_id: ExecutionId,
        flow_id: Option<FlowId>,
        namespace: Namespace,
        outcome: Outcome,
        tags: Tags,
        completed_at_ms: u64,
        cursor: Cursor,
    ) -> Self {
        Self { execution_id, flow_id, namespace, outcome, tags, completed_at_ms, cursor }
    }

    /// The execution.
    pub fn execution_id(&self) -> &ExecutionId {
        &self.execution_id
    }
    /// Its flow, if any.
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
    /// Server-side time of the transition in ms since the Unix epoch.
    pub fn completed_at_ms(&self) -> u64 {
        self.completed_at_ms
    }
    /// The position of this event in the log, to persist and resume after.
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
