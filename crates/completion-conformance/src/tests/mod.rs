//! The behaviour tests. Each is a public async function taking the backend's [`Harness`];
//! each builds its own backend instance, so tests can run concurrently on shared servers.
//! Every wait has a deadline: a test fails, it never hangs.
//!
//! How the tests stay exact on a shared server: every test writes into namespaces (and tag
//! values) of its own. Unfiltered streams skip other namespaces; filtered streams are read
//! strictly (a foreign event on them is a failure), because their filters are unique. To
//! prove that nothing *more* arrived (a duplicate, a leak), a test writes a marker event last
//! and reads up to it: streams are in log order, so anything committed before the marker
//! arrives before it. That replaces most waits for silence.
//!
//! Which test proves which promise of the delivery contract: the table "Which conformance
//! test proves what" of `docs/delivery.md`, the one copy of it (`tests/registered.rs` checks
//! that it names every test here).

mod faults;
mod filters;
mod live;
mod resume;
mod retention;
mod waits;
mod write;

pub use faults::*;
pub use filters::*;
pub use live::*;
pub use resume::*;
pub use retention::*;
pub use waits::*;
pub use write::*;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use completion_core::{
    CompletionPayload, CompletionStream, Cursor, EngineBackend, EngineError, ExecutionId, ExecutionState, FlowId,
    Namespace, NewExecution, Outcome, Reason, Retention, ScannerFilter, StartFrom, StreamItem, TagKey, TagValue, Tags,
    WaitError, Waiter,
};
use futures_util::StreamExt;

use crate::support::*;
use crate::{BackendOptions, Harness, TestBackend};

async fn backend(harness: &dyn Harness, options: BackendOptions) -> TestBackend {
    harness.backend(options).await.unwrap_or_else(|e| panic!("the harness could not make a backend: {e}"))
}

fn reason(text: &str) -> Reason {
    Reason::new(text).unwrap_or_else(|e| panic!("test reason {text:?}: {e}"))
}

fn tags<const N: usize>(pairs: [(&str, &str); N]) -> Tags {
    Tags::from_pairs(pairs).unwrap_or_else(|e| panic!("test tags: {e}"))
}

fn tag_filter(key: &str, value: &str) -> ScannerFilter {
    ScannerFilter::new()
        .with_tag(TagKey::new(key).expect("test tag key"), TagValue::new(value).expect("test tag value"))
}

fn ns_filter(ns: &Namespace) -> ScannerFilter {
    ScannerFilter::new().with_namespace(ns.clone())
}

/// The terminal write for `outcome`.
async fn terminate(
    engine: &dyn EngineBackend,
    id: &ExecutionId,
    outcome: Outcome,
    why: &Reason,
) -> Result<(), EngineError> {
    match outcome {
        Outcome::Succeeded => engine.complete(id).await,
        Outcome::Failed => engine.fail(id, why).await,
        _ => engine.cancel(id, why).await,
    }
}

async fn resources(b: &TestBackend) -> usize {
    b.hooks.subscription_resources().await.unwrap_or_else(|e| panic!("subscription_resources hook failed: {e}"))
}

async fn enforce_retention(b: &TestBackend) {
    b.hooks.enforce_retention().await.unwrap_or_else(|e| panic!("enforce_retention hook failed: {e}"));
}

async fn subscribe(b: &TestBackend) -> CompletionStream {
    b.completions.subscribe_completions().await.unwrap_or_else(|e| panic!("subscribe_completions: {e}"))
}

async fn subscribe_filtered(b: &TestBackend, filter: &ScannerFilter) -> CompletionStream {
    b.completions
        .subscribe_completions_filtered(filter)
        .await
        .unwrap_or_else(|e| panic!("subscribe_completions_filtered({filter:?}): {e}"))
}

async fn subscribe_from(b: &TestBackend, from: StartFrom, filter: &ScannerFilter) -> completion_core::ResumableStream {
    b.completions.subscribe_from(from.clone(), filter).await.unwrap_or_else(|e| panic!("subscribe_from({from:?}): {e}"))
}

/// Reads a *filtered* stream up to `marker` without skipping anything: every event it
/// yields counts, so an event its filter should have turned away fails the test.
async fn strictly_until(stream: &mut CompletionStream, marker: &ExecutionId, what: &str) -> Vec<CompletionPayload> {
    let mut out = Vec::new();
    loop {
        let c = next_completion(stream, what).await;
        if c.execution_id() == marker {
            return out;
        }
        out.push(c);
    }
}

/// Creates an execution with `tags` in `ns` and completes it.
async fn done(b: &TestBackend, ns: &Namespace, tags: &Tags) -> ExecutionId {
    create_and_complete(&*b.engine, ns, tags).await
}

/// Asserts that `got` holds every id of every writer exactly once, nothing else, and each
/// writer's ids in the order that writer committed them.
fn assert_merge_of(got: &[ExecutionId], writers: &[&[ExecutionId]], what: &str) {
    let mut origin: HashMap<&ExecutionId, (usize, usize)> = HashMap::new();
    for (w, ids) in writers.iter().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            origin.insert(id, (w, i));
        }
    }
    let mut next = vec![0; writers.len()];
    for id in got {
        let Some(&(w, i)) = origin.get(id) else { panic!("{what}: {id} was never written by these writers") };
        assert!(i >= next[w], "{what}: {id} arrived twice or out of its writer's commit order");
        assert_eq!(i, next[w], "{what}: writer {w}'s events {}..{i} are missing before {id}", next[w]);
        next[w] = i + 1;
    }
    for (w, ids) in writers.iter().enumerate() {
        assert_eq!(next[w], ids.len(), "{what}: writer {w}'s events from #{} on never arrived", next[w]);
    }
}
