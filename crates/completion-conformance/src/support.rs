//! Small tools the behaviour tests share: unique names, deadlines on streams, writers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use completion_core::{
    CompletionPayload, CompletionStream, EngineBackend, ExecutionId, FlowId, Namespace, NewExecution, ResumableStream,
    StreamItem, Tags,
};
use futures_util::StreamExt;

/// How long a test waits for an event it expects before failing. Generous: machines are
/// shared and a restarted server takes seconds to come back.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(30);

/// How long a test waits to be sure an event it does not expect does not come.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A name unique in this process and across runs against one external server.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    format!("{prefix}-{run:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A fresh namespace.
pub fn namespace(prefix: &str) -> Namespace {
    Namespace::new(unique(prefix)).expect("generated namespaces are valid")
}

/// A fresh execution id.
pub fn execution_id(prefix: &str) -> ExecutionId {
    ExecutionId::new(unique(prefix)).expect("generated ids are valid")
}

/// A fresh flow id.
pub fn flow_id(prefix: &str) -> FlowId {
    FlowId::new(unique(prefix)).expect("generated ids are valid")
}

/// Creates an execution in `ns` with `tags` and an optional flow; returns its id.
pub async fn create(engine: &dyn EngineBackend, ns: &Namespace, flow: Option<&FlowId>, tags: &Tags) -> ExecutionId {
    let id = execution_id("exec");
    let mut new = NewExecution::new(id.clone(), ns.clone()).with_tags(tags.clone());
    if let Some(flow) = flow {
        new = new.with_flow(flow.clone());
    }
    engine.create_execution(new).await.unwrap_or_else(|e| panic!("create_execution({id}) failed: {e}"));
    id
}

/// Creates and completes an execution; returns its id.
pub async fn create_and_complete(engine: &dyn EngineBackend, ns: &Namespace, tags: &Tags) -> ExecutionId {
    let id = create(engine, ns, None, tags).await;
    engine.complete(&id).await.unwrap_or_else(|e| panic!("complete({id}) failed: {e}"));
    id
}

/// The next completion, or a panic naming `what` after [`EVENT_DEADLINE`].
pub async fn next_completion(stream: &mut CompletionStream, what: &str) -> CompletionPayload {
    match tokio::time::timeout(EVENT_DEADLINE, stream.next()).await {
        Ok(Some(c)) => c,
        Ok(None) => panic!("stream ended while waiting for {what}"),
        Err(_) => panic!("no completion within {EVENT_DEADLINE:?} while waiting for {what}"),
    }
}

/// The next item of a resumable stream, or a panic after [`EVENT_DEADLINE`].
pub async fn next_item(stream: &mut ResumableStream, what: &str) -> StreamItem {
    match tokio::time::timeout(EVENT_DEADLINE, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("stream ended while waiting for {what}"),
        Err(_) => panic!("no item within {EVENT_DEADLINE:?} while waiting for {what}"),
    }
}

/// Reads completions until one of `ns` arrives, skipping other namespaces (other tests
/// may share the backend). Panics after [`EVENT_DEADLINE`].
pub async fn next_in(stream: &mut CompletionStream, ns: &Namespace) -> CompletionPayload {
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(c)) if c.namespace() == ns => return c,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended while waiting for an event of {ns}"),
            Err(_) => panic!("no completion of {ns} within {EVENT_DEADLINE:?}"),
        }
    }
}

/// Collects the next `n` completions of `ns` (others skipped).
pub async fn collect_in(stream: &mut CompletionStream, ns: &Namespace, n: usize) -> Vec<CompletionPayload> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_in(stream, ns).await);
    }
    out
}

/// Asserts that `stream` yields nothing of `ns` for [`QUIET_PERIOD`].
pub async fn assert_quiet(stream: &mut CompletionStream, ns: &Namespace, why: &str) {
    let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(c)) if c.namespace() == ns => panic!("unexpected completion {c:?}: {why}"),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}
