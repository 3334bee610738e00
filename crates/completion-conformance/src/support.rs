//! Small tools the behaviour tests share: unique names, deadlines on streams, writers.
//!
//! Every wait here has a deadline and panics with a message naming what it waited for, so
//! a broken backend fails a test instead of hanging it. Helpers that read an unfiltered
//! stream skip events of other namespaces: other tests may share the server.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use completion_core::backoff::{Backoff, Retry};
use completion_core::{
    CompletionPayload, CompletionStream, EngineBackend, EngineError, ExecutionId, FlowId, Namespace, NewExecution,
    Outcome, ResumableStream, StreamItem, Tags,
};
use futures_util::StreamExt;

/// How long a test waits for an event it expects before failing. Generous: machines are
/// shared and a restarted server takes seconds to come back.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(30);

/// How long a test waits to be sure an event it does not expect does not come.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// How often [`wait_until`] polls its probe.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long a writer retries a write that failed transiently (a killed connection, a
/// restarting server) before the test fails.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(60);

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

/// Polls `probe` every [`POLL_INTERVAL`] until it holds; panics naming `what` after
/// [`EVENT_DEADLINE`]. A readiness check, not a sleep: it returns as soon as the probe holds.
pub async fn wait_until<F, Fut>(what: &str, probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(what, POLL_INTERVAL, probe).await;
}

/// [`wait_until`] with a probe run every `interval`, for probes that cost a round trip or
/// more.
pub async fn poll_until<F, Fut>(what: &str, interval: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        if probe().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not reached within {EVENT_DEADLINE:?}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Creates and completes `n` executions in `ns` with `tags`, one after the other (so their
/// commit order is the order of the returned ids).
pub async fn complete_n(engine: &dyn EngineBackend, ns: &Namespace, tags: &Tags, n: usize) -> Vec<ExecutionId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(create_and_complete(engine, ns, tags).await);
    }
    ids
}

/// [`complete_n`] in a task of its own, for tests that write from several tenants at once.
pub fn spawn_writer(
    engine: Arc<dyn EngineBackend>,
    ns: Namespace,
    tags: Tags,
    n: usize,
) -> tokio::task::JoinHandle<Vec<ExecutionId>> {
    tokio::spawn(async move { complete_n(&*engine, &ns, &tags, n).await })
}

/// Waits for a writer task; panics (re-raising its panic message) if it failed.
pub async fn join_writer(writer: tokio::task::JoinHandle<Vec<ExecutionId>>) -> Vec<ExecutionId> {
    join(writer, "writer task").await
}

/// The execution ids of `completions`, in order.
pub fn ids_of(completions: &[CompletionPayload]) -> Vec<ExecutionId> {
    completions.iter().map(|c| c.execution_id().clone()).collect()
}

/// The execution ids of the completions among `items`, in order (gaps left out).
pub fn item_ids(items: &[StreamItem]) -> Vec<ExecutionId> {
    items.iter().filter_map(StreamItem::completion).map(|c| c.execution_id().clone()).collect()
}

/// Reads completions of `ns` (others skipped) up to and including the one of `marker`;
/// returns those before it. Panics if no event comes within [`EVENT_DEADLINE`].
///
/// Writing a marker after the events under test and reading up to it proves that nothing
/// else (a duplicate, a non-matching event) was delivered in between, without waiting out a
/// quiet period: the stream is in log order, so anything committed before the marker
/// arrives before it.
pub async fn until_marker(
    stream: &mut CompletionStream,
    ns: &Namespace,
    marker: &ExecutionId,
) -> Vec<CompletionPayload> {
    let mut out = Vec::new();
    loop {
        let c = next_in(stream, ns).await;
        if c.execution_id() == marker {
            return out;
        }
        out.push(c);
    }
}

/// The next item of a resumable stream that is a gap or a completion of `ns` (completions
/// of other namespaces are skipped). Panics after [`EVENT_DEADLINE`].
pub async fn next_item_in(stream: &mut ResumableStream, ns: &Namespace) -> StreamItem {
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(StreamItem::Completion(c))) if c.namespace() != ns => continue,
            Ok(Some(item)) => return item,
            Ok(None) => panic!("resumable stream ended while waiting for an item of {ns}"),
            Err(_) => panic!("no item of {ns} within {EVENT_DEADLINE:?}"),
        }
    }
}

/// [`until_marker`] for a resumable stream: the items (gaps included) before the marker.
pub async fn items_until_marker(stream: &mut ResumableStream, ns: &Namespace, marker: &ExecutionId) -> Vec<StreamItem> {
    let mut out = Vec::new();
    loop {
        let item = next_item_in(stream, ns).await;
        if item.completion().is_some_and(|c| c.execution_id() == marker) {
            return out;
        }
        out.push(item);
    }
}

/// Runs `op` until it succeeds or fails with a non-transient error, retrying transient
/// errors ([`EngineError::is_transient`]) with a short backoff for up to
/// [`RETRY_DEADLINE`]. Returns the last result and whether any attempt was retried.
pub async fn retry_transient<T, F, Fut>(what: &str, mut op: F) -> (Result<T, EngineError>, bool)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, EngineError>>,
{
    let mut retried = false;
    let pauses = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    let result = Retry::new(pauses)
        .within(RETRY_DEADLINE)
        .run(EngineError::is_transient, |attempt| {
            if attempt > 1 {
                tracing::info!(what, attempt, "transient error; retrying");
                retried = true;
            }
            op()
        })
        .await;
    (result, retried)
}

/// Creates and completes the execution `id` through connection faults: transient errors
/// are retried, and an `AlreadyExists` / `AlreadyTerminal` answer to a *retried* call counts
/// as committed (the failed attempt did commit; only its answer was lost).
pub async fn commit_through_faults(engine: &dyn EngineBackend, ns: &Namespace, id: &ExecutionId) {
    let new = NewExecution::new(id.clone(), ns.clone());
    match retry_transient("create_execution", || engine.create_execution(new.clone())).await {
        (Ok(()), _) | (Err(EngineError::AlreadyExists(_)), true) => {}
        (Err(e), _) => panic!("create_execution({id}) failed: {e}"),
    }
    match retry_transient("complete", || engine.complete(id)).await {
        (Ok(()), _) | (Err(EngineError::AlreadyTerminal { outcome: Outcome::Succeeded, .. }), true) => {}
        (Err(e), _) => panic!("complete({id}) failed: {e}"),
    }
}

/// Reads `stream` (completions of `ns`, others skipped) up to `marker` in a task of its
/// own; the task returns the ids before the marker.
pub fn spawn_reader(
    mut stream: CompletionStream,
    ns: Namespace,
    marker: ExecutionId,
) -> tokio::task::JoinHandle<Vec<ExecutionId>> {
    tokio::spawn(async move { ids_of(&until_marker(&mut stream, &ns, &marker).await) })
}

/// [`spawn_reader`] for a resumable stream: the task returns the items before the marker.
pub fn spawn_item_reader(
    mut stream: ResumableStream,
    ns: Namespace,
    marker: ExecutionId,
) -> tokio::task::JoinHandle<Vec<StreamItem>> {
    tokio::spawn(async move { items_until_marker(&mut stream, &ns, &marker).await })
}

/// Waits for a task of the test; re-raises its panic.
pub async fn join<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(RETRY_DEADLINE * 2, task).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("{what} failed: {e}"),
        Err(_) => panic!("{what} did not finish within {:?}", RETRY_DEADLINE * 2),
    }
}

/// Asserts that `got` is exactly `expected` (same ids, same order). On a mismatch the
/// message names what differs (first divergence, missing, duplicated and foreign ids)
/// instead of printing two long lists.
#[track_caller]
pub fn assert_sequence(got: &[ExecutionId], expected: &[ExecutionId], what: &str) {
    if got == expected {
        return;
    }
    let first = got.iter().zip(expected).position(|(g, e)| g != e).unwrap_or(got.len().min(expected.len()));
    let wanted: std::collections::HashSet<_> = expected.iter().collect();
    let mut seen = std::collections::HashSet::new();
    let duplicated: Vec<_> = got.iter().filter(|id| !seen.insert(*id)).collect();
    let foreign: Vec<_> = got.iter().filter(|id| !wanted.contains(id)).collect();
    let missing: Vec<_> = expected.iter().filter(|id| !seen.contains(id)).collect();
    let index_in_expected = |id: &ExecutionId| expected.iter().position(|e| e == id);
    panic!(
        "{what}: got {} ids, expected {}; first difference at #{first} (got {:?} = expected #{:?}, expected {:?}); \
         missing {}: {missing:?}; duplicated {}: {duplicated:?}; not expected {}: {foreign:?}",
        got.len(),
        expected.len(),
        got.get(first),
        got.get(first).and_then(index_in_expected),
        expected.get(first),
        missing.len(),
        duplicated.len(),
        foreign.len(),
    );
}

/// Asserts that `items` hold no gap item.
#[track_caller]
pub fn assert_no_gap(items: &[StreamItem], what: &str) {
    let gaps: Vec<_> = items.iter().filter(|item| matches!(item, StreamItem::Gap(_))).collect();
    assert!(gaps.is_empty(), "{what}: unexpected gap items {gaps:?}");
}
