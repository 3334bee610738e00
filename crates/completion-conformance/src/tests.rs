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

/// Every subscribe call (plain, filtered, resumable from now) returns only once live: the
/// completion committed right after it returns is delivered, every time, also while the
/// backend stops or restarts its feed (each round drops the previous round's stream).
pub async fn ready_on_return(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("ready");
    for round in 0..21 {
        let what = format!("round {round}: the first completion after subscribe returned");
        match round % 3 {
            0 => {
                let mut stream = subscribe(&b).await;
                let id = done(&b, &ns, &Tags::new()).await;
                assert_eq!(next_in(&mut stream, &ns).await.execution_id(), &id, "{what} (plain)");
            }
            1 => {
                let mut stream = subscribe_filtered(&b, &ns_filter(&ns)).await;
                let id = done(&b, &ns, &Tags::new()).await;
                assert_eq!(next_completion(&mut stream, &what).await.execution_id(), &id, "{what} (filtered)");
            }
            _ => {
                let mut stream = subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await;
                let id = done(&b, &ns, &Tags::new()).await;
                let item = next_item_in(&mut stream, &ns).await;
                assert_eq!(item.completion().map(|c| c.execution_id()), Some(&id), "{what} (resumable): {item:?}");
            }
        }
    }
}

/// Subscribe calls racing each other (and the start of the backend's feed) are each live
/// on return: every stream gets the completion its own task commits after subscribing.
pub async fn concurrent_subscribes_are_ready(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("concurrent-sub");
    for round in 0..3 {
        wait_until("every stream of the previous round released", || async { resources(&b).await == 0 }).await;
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let (completions, engine, ns) = (b.completions.clone(), b.engine.clone(), ns.clone());
                tokio::spawn(async move {
                    let what = format!("round {round}, task {task}: its own completion");
                    if task % 2 == 0 {
                        let mut stream = completions.subscribe_completions().await.expect("subscribe_completions");
                        let id = create_and_complete(&*engine, &ns, &Tags::new()).await;
                        while next_in(&mut stream, &ns).await.execution_id() != &id {}
                    } else {
                        let mut stream =
                            completions.subscribe_from(StartFrom::Now, &ns_filter(&ns)).await.expect("subscribe_from");
                        let id = create_and_complete(&*engine, &ns, &Tags::new()).await;
                        while next_item(&mut stream, &what).await.completion().map(|c| c.execution_id()) != Some(&id) {}
                    }
                })
            })
            .collect();
        for task in tasks {
            join(task, "subscribing task").await;
        }
    }
}

/// Complete, fail and cancel each publish one completion with the right outcome, and the
/// payload carries the execution's namespace, flow and tags.
pub async fn each_outcome(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("outcome");
    let tags = tags([("team", "billing"), ("tier", "gold")]);
    let mut stream = subscribe(&b).await;
    let why = reason("because");
    let mut expected = Vec::new();
    for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled] {
        let id = create(&*b.engine, &ns, None, &tags).await;
        terminate(&*b.engine, &id, outcome, &why).await.unwrap_or_else(|e| panic!("{outcome} of {id}: {e}"));
        expected.push((id, outcome));
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = until_marker(&mut stream, &ns, &marker).await;
    let pairs: Vec<_> = got.iter().map(|c| (c.execution_id().clone(), c.outcome())).collect();
    assert_eq!(pairs, expected, "one completion per terminal write, in commit order, nothing more");
    for c in &got {
        assert_eq!(c.namespace(), &ns, "{c:?}");
        assert_eq!(c.tags(), &tags, "tags as of the terminal write: {c:?}");
        assert_eq!(c.flow_id(), None, "{c:?}");
        assert!(c.completed_at_ms() > 0, "a server time: {c:?}");
        assert_eq!(c.cursor().backend(), b.completions.backend_name(), "cursor names its backend: {c:?}");
    }
    let cursors: HashSet<_> = got.iter().map(|c| c.cursor().clone()).collect();
    assert_eq!(cursors.len(), 3, "every completion has its own cursor: {got:?}");
}

/// Executions inside a flow and solo executions both publish exactly one completion; the
/// flow id is carried, or `None`.
pub async fn with_and_without_flow(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("flow");
    let flow = flow_id("flow");
    let mut plain = subscribe(&b).await;
    let mut filtered = subscribe_filtered(&b, &ns_filter(&ns)).await;
    let in_flow = create(&*b.engine, &ns, Some(&flow), &Tags::new()).await;
    b.engine.complete(&in_flow).await.expect("complete the flow member");
    let solo = create(&*b.engine, &ns, None, &Tags::new()).await;
    b.engine.complete(&solo).await.expect("complete the solo execution");
    let failed_in_flow = create(&*b.engine, &ns, Some(&flow), &Tags::new()).await;
    b.engine.fail(&failed_in_flow, &reason("boom")).await.expect("fail the second flow member");
    let marker = done(&b, &ns, &Tags::new()).await;
    let expected = vec![(in_flow, Some(flow.clone())), (solo, None), (failed_in_flow, Some(flow))];
    let summary = |got: Vec<CompletionPayload>| -> Vec<(ExecutionId, Option<FlowId>)> {
        got.into_iter().map(|c| (c.execution_id().clone(), c.flow_id().cloned())).collect()
    };
    assert_eq!(summary(until_marker(&mut plain, &ns, &marker).await), expected, "plain stream");
    assert_eq!(summary(strictly_until(&mut filtered, &marker, "filtered stream").await), expected, "filtered stream");
}

/// Many tasks race complete / fail / cancel on the same executions: exactly one call per
/// execution succeeds, every other gets `AlreadyTerminal` naming the winner's outcome, and
/// exactly one completion per execution is published.
pub async fn racing_terminal_writes_publish_once(harness: &dyn Harness) {
    const EXECUTIONS: usize = 6;
    const RACERS: usize = 16;
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("race");
    let mut stream = subscribe(&b).await;
    let mut ids = Vec::new();
    for _ in 0..EXECUTIONS {
        ids.push(create(&*b.engine, &ns, None, &Tags::new()).await);
    }
    // All racers of all executions start together.
    let start = Arc::new(tokio::sync::Barrier::new(EXECUTIONS * RACERS));
    let mut racers = Vec::new();
    for id in &ids {
        for racer in 0..RACERS {
            let (engine, id, start) = (b.engine.clone(), id.clone(), start.clone());
            let outcome = [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled][racer % 3];
            racers.push(tokio::spawn(async move {
                start.wait().await;
                let result = terminate(&*engine, &id, outcome, &Reason::new(format!("racer {racer}")).unwrap()).await;
                (id, outcome, result)
            }));
        }
    }
    let mut winners: HashMap<ExecutionId, Outcome> = HashMap::new();
    let mut losers: Vec<(ExecutionId, Outcome)> = Vec::new();
    for racer in racers {
        let (id, attempted, result) = join(racer, "racer").await;
        match result {
            Ok(()) => {
                if let Some(first) = winners.insert(id.clone(), attempted) {
                    panic!("two terminal writes of {id} succeeded: {first} and {attempted}");
                }
            }
            Err(EngineError::AlreadyTerminal { execution_id, outcome }) => {
                assert_eq!(execution_id, id, "AlreadyTerminal names the execution");
                losers.push((id, outcome));
            }
            Err(e) => panic!("racing {attempted} of {id}: expected Ok or AlreadyTerminal, got {e}"),
        }
    }
    assert_eq!(winners.len(), EXECUTIONS, "exactly one terminal write per execution succeeded");
    assert_eq!(losers.len(), EXECUTIONS * (RACERS - 1));
    for (id, outcome) in &losers {
        assert_eq!(Some(outcome), winners.get(id), "AlreadyTerminal of {id} reports the winning outcome");
    }
    for id in &ids {
        let info = b.engine.describe(id).await.expect("describe");
        assert_eq!(Some(&info.state), winners.get(id).map(|o| ExecutionState::Terminal(*o)).as_ref(), "{id}");
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = until_marker(&mut stream, &ns, &marker).await;
    let mut seen = HashSet::new();
    for c in &got {
        assert!(seen.insert(c.execution_id().clone()), "a second completion of {}", c.execution_id());
        assert_eq!(Some(&c.outcome()), winners.get(c.execution_id()), "the published outcome is the winner's: {c:?}");
    }
    assert_eq!(seen.len(), EXECUTIONS, "one completion per execution: {got:?}");
}

/// A second terminal write fails with `AlreadyTerminal` carrying the first outcome, changes
/// nothing and publishes nothing; writes to an unknown id fail with `NotFound`.
pub async fn already_terminal_publishes_nothing(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("already");
    let mut stream = subscribe(&b).await;
    let (first_reason, second_reason) = (reason("first"), reason("second"));
    let mut expected = Vec::new();
    for first in [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled] {
        let id = create(&*b.engine, &ns, None, &Tags::new()).await;
        terminate(&*b.engine, &id, first, &first_reason).await.unwrap_or_else(|e| panic!("{first} of {id}: {e}"));
        for again in [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled] {
            match terminate(&*b.engine, &id, again, &second_reason).await {
                Err(EngineError::AlreadyTerminal { execution_id, outcome }) => {
                    assert_eq!((&execution_id, outcome), (&id, first), "{again} after {first}");
                }
                other => panic!("{again} after {first} of {id}: expected AlreadyTerminal, got {other:?}"),
            }
        }
        let info = b.engine.describe(&id).await.expect("describe");
        assert_eq!(info.state, ExecutionState::Terminal(first), "the first outcome stays");
        let kept = (first != Outcome::Succeeded).then(|| first_reason.clone());
        assert_eq!(info.reason, kept, "the first reason stays");
        expected.push((id, first));
    }
    let unknown = execution_id("missing");
    for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled] {
        match terminate(&*b.engine, &unknown, outcome, &first_reason).await {
            Err(EngineError::NotFound(id)) => assert_eq!(id, unknown),
            other => panic!("{outcome} of an unknown id: expected NotFound, got {other:?}"),
        }
    }
    match b.engine.describe(&unknown).await {
        Err(EngineError::NotFound(id)) => assert_eq!(id, unknown),
        other => panic!("describe of an unknown id: expected NotFound, got {other:?}"),
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = until_marker(&mut stream, &ns, &marker).await;
    let got: Vec<_> = got.iter().map(|c| (c.execution_id().clone(), c.outcome())).collect();
    assert_eq!(got, expected, "only the first terminal write of each execution published");
}

/// Creating an id that exists fails with `AlreadyExists` and changes nothing: the execution
/// keeps its first namespace and tags, and publishes with them.
pub async fn create_twice_is_rejected(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let (ns, other_ns) = (namespace("twice"), namespace("twice-other"));
    let first_tags = tags([("v", "1")]);
    let mut stream = subscribe(&b).await;
    let id = create(&*b.engine, &ns, None, &first_tags).await;
    let again = NewExecution::new(id.clone(), other_ns.clone()).with_tags(tags([("v", "2")]));
    match b.engine.create_execution(again).await {
        Err(EngineError::AlreadyExists(existing)) => assert_eq!(existing, id),
        other => panic!("second create of {id}: expected AlreadyExists, got {other:?}"),
    }
    b.engine.complete(&id).await.expect("complete");
    match b.engine.create_execution(NewExecution::new(id.clone(), ns.clone())).await {
        Err(EngineError::AlreadyExists(existing)) => assert_eq!(existing, id),
        other => panic!("create of the terminal {id}: expected AlreadyExists, got {other:?}"),
    }
    let info = b.engine.describe(&id).await.expect("describe");
    assert_eq!(
        (&info.namespace, &info.tags, info.state),
        (&ns, &first_tags, ExecutionState::Terminal(Outcome::Succeeded))
    );
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = until_marker(&mut stream, &ns, &marker).await;
    assert_eq!(ids_of(&got), [id], "one completion");
    assert_eq!(got[0].tags(), &first_tags);
}

/// `describe` reports `Active`, then `Terminal(outcome)` with the reason, the completion
/// time of the published event, and the namespace, flow and tags unchanged.
pub async fn describe_reports_state(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("describe");
    let flow = flow_id("flow");
    let tags = tags([("team", "billing"), ("tier", "gold")]);
    let mut stream = subscribe(&b).await;
    let mut expected = Vec::new();
    for outcome in [Outcome::Failed, Outcome::Cancelled, Outcome::Succeeded] {
        let id = create(&*b.engine, &ns, Some(&flow), &tags).await;
        let before = b.engine.describe(&id).await.expect("describe an active execution");
        assert_eq!(
            (&before.id, &before.namespace, before.flow_id.as_ref(), &before.tags),
            (&id, &ns, Some(&flow), &tags),
            "as created"
        );
        assert_eq!(before.state, ExecutionState::Active);
        assert_eq!((before.reason.as_ref(), before.completed_at_ms), (None, None), "not terminal yet");
        assert!(before.created_at_ms > 0, "a server time: {before:?}");
        let why = reason(&format!("{outcome}: disk full\n\tretry later"));
        terminate(&*b.engine, &id, outcome, &why).await.unwrap_or_else(|e| panic!("{outcome}: {e}"));
        let after = b.engine.describe(&id).await.expect("describe a terminal execution");
        assert_eq!(after.state, ExecutionState::Terminal(outcome));
        assert_eq!(
            after.reason,
            (outcome != Outcome::Succeeded).then_some(why),
            "the reason is kept (none to complete)"
        );
        assert_eq!(
            (&after.id, &after.namespace, after.flow_id.as_ref(), &after.tags, after.created_at_ms),
            (&id, &ns, Some(&flow), &tags, before.created_at_ms),
            "unchanged by the terminal write"
        );
        let completed = after.completed_at_ms.unwrap_or_else(|| panic!("completed_at_ms of a terminal execution"));
        assert!(completed >= before.created_at_ms, "completed {completed} before created {}", before.created_at_ms);
        expected.push((id, completed));
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = until_marker(&mut stream, &ns, &marker).await;
    let got: Vec<_> = got.iter().map(|c| (c.execution_id().clone(), c.completed_at_ms())).collect();
    assert_eq!(got, expected, "the published completion time is the one describe reports");
}

/// Values at their limits and full of characters that quoting, escaping, pattern matching
/// or JSON could mangle arrive exactly as written, in the payload and in `describe`, and
/// filters match them exactly.
pub async fn values_round_trip_exactly(harness: &dyn Harness) {
    const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`|~";
    /// `base`, filled up with `fill` to exactly `len` bytes (cut at a character boundary,
    /// then padded with ASCII).
    fn exactly(base: String, len: usize, fill: &str) -> String {
        let mut text = base;
        while text.len() < len {
            text.push_str(fill);
        }
        while text.len() > len {
            text.pop();
        }
        while text.len() < len {
            text.push('z');
        }
        text
    }
    let b = backend(harness, BackendOptions::default()).await;
    let ns = Namespace::new(exactly(format!("{}{PUNCTUATION}", unique("rt")), Namespace::MAX_LEN, "z")).unwrap();
    let id = ExecutionId::new(exactly(format!("{}{PUNCTUATION}", unique("id")), ExecutionId::MAX_LEN, "%_*")).unwrap();
    let flow = FlowId::new(exactly(format!("{}{PUNCTUATION}", unique("fl")), FlowId::MAX_LEN, "'\\")).unwrap();
    let odd_values = [
        "naïve 日本語 🚀 text".to_string(),
        " leading and trailing spaces ".to_string(),
        "quotes ' \" ` and backslashes \\ \\\\".to_string(),
        "null".to_string(),
        "nil".to_string(),
        "0".to_string(),
        "%_*.?[a-z]$^".to_string(),
        "a=b=c, key:value; x\u{a0}y".to_string(),
        "日".repeat(85),
        exactly(String::new(), TagValue::MAX_LEN, "é-"),
    ];
    let mut pairs: Vec<(String, String)> = Vec::new();
    for i in 0..Tags::MAX_TAGS {
        let key = if i == 0 {
            exactly(format!("k{i}{PUNCTUATION}").replace('=', ""), TagKey::MAX_LEN, "K")
        } else {
            format!("k{i}.{PUNCTUATION}").replace('=', "")
        };
        let value = odd_values.get(i).cloned().unwrap_or_else(|| exactly(format!("v{i}-"), TagValue::MAX_LEN, "x"));
        pairs.push((key, value));
    }
    let tags = Tags::from_pairs(pairs.clone()).unwrap();
    let mut why = String::from("line one\nline two\ttabbed 日本語 ");
    while why.len() + '語'.len_utf8() <= Reason::MAX_LEN {
        why.push('語');
    }
    while why.len() < Reason::MAX_LEN {
        why.push('.');
    }
    let why = Reason::new(why).unwrap();

    let mut plain = subscribe(&b).await;
    let mut by_ns = subscribe_filtered(&b, &ns_filter(&ns)).await;
    let mut by_unicode_tag = subscribe_filtered(&b, &tag_filter(&pairs[0].0, &pairs[0].1)).await;
    let mut by_long_tag = subscribe_filtered(&b, &tag_filter(&pairs[9].0, &pairs[9].1)).await;
    let new = NewExecution::new(id.clone(), ns.clone()).with_flow(flow.clone()).with_tags(tags.clone());
    b.engine.create_execution(new).await.expect("create with values at their limits");
    b.engine.fail(&id, &why).await.expect("fail with a reason at its limit");

    let check = |c: &CompletionPayload, what: &str| {
        assert_eq!(c.execution_id(), &id, "{what}");
        assert_eq!(c.namespace(), &ns, "{what}");
        assert_eq!(c.flow_id(), Some(&flow), "{what}");
        assert_eq!(c.outcome(), Outcome::Failed, "{what}");
        assert_eq!(c.tags(), &tags, "{what}");
    };
    check(&next_in(&mut plain, &ns).await, "plain stream");
    check(&next_completion(&mut by_ns, "the odd namespace").await, "namespace filter");
    check(&next_completion(&mut by_unicode_tag, "the unicode tag").await, "unicode tag filter");
    check(&next_completion(&mut by_long_tag, "the longest tag").await, "longest tag filter");
    let info = b.engine.describe(&id).await.expect("describe");
    assert_eq!((&info.id, &info.namespace, info.flow_id.as_ref(), &info.tags), (&id, &ns, Some(&flow), &tags));
    assert_eq!(info.reason.as_ref(), Some(&why), "the reason round-trips");
}

/// Two streams of one backend each get every event, in the same order, also with several
/// writers at once; dropping one does not disturb the other.
pub async fn two_independent_subscribers(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("two");
    let mut first = subscribe(&b).await;
    let mut second = subscribe(&b).await;
    let writers: Vec<_> = (0..3).map(|_| spawn_writer(b.engine.clone(), ns.clone(), Tags::new(), 20)).collect();
    let mut written = Vec::new();
    for writer in writers {
        written.push(join_writer(writer).await);
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let a = ids_of(&until_marker(&mut first, &ns, &marker).await);
    let c = ids_of(&until_marker(&mut second, &ns, &marker).await);
    let refs: Vec<&[ExecutionId]> = written.iter().map(Vec::as_slice).collect();
    assert_merge_of(&a, &refs, "first stream");
    assert_sequence(&c, &a, "both streams yield the same events in the same (log) order");
    drop(first);
    let later = complete_n(&*b.engine, &ns, &Tags::new(), 10).await;
    let marker = done(&b, &ns, &Tags::new()).await;
    assert_eq!(ids_of(&until_marker(&mut second, &ns, &marker).await), later, "the remaining stream goes on");
}

/// A dropped stream can be replaced by a new one, also once the backend released
/// everything (so the new one restarts the feed); the new stream gets what is committed
/// after it returns and nothing committed while no stream was open.
pub async fn drop_then_resubscribe(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("resub");
    for round in 0..3 {
        let mut stream = subscribe(&b).await;
        let id = done(&b, &ns, &Tags::new()).await;
        assert_eq!(next_in(&mut stream, &ns).await.execution_id(), &id, "round {round}");
        drop(stream);
        wait_until("the dropped stream's resources released", || async { resources(&b).await == 0 }).await;
        let unseen = done(&b, &ns, &Tags::new()).await;
        let mut stream = subscribe(&b).await;
        let id = done(&b, &ns, &Tags::new()).await;
        let got = next_in(&mut stream, &ns).await;
        assert_ne!(got.execution_id(), &unseen, "round {round}: committed before subscribing: not delivered");
        assert_eq!(got.execution_id(), &id, "round {round}: the first completion after the new subscribe");
    }
}

/// A namespace filter yields exactly the events of its namespace (not of one whose name
/// merely starts the same), in order.
pub async fn filter_by_namespace(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("filter-ns");
    let longer = Namespace::new(format!("{ns}x")).unwrap();
    let other = namespace("filter-ns-other");
    let mut stream = subscribe_filtered(&b, &ns_filter(&ns)).await;
    let mut expected = Vec::new();
    for round in 0..3 {
        expected.push(done(&b, &ns, &Tags::new()).await);
        done(&b, &longer, &Tags::new()).await;
        done(&b, &other, &tags([("round", "x")])).await;
        if round == 1 {
            expected.push(done(&b, &ns, &tags([("any", "tag")])).await);
        }
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = strictly_until(&mut stream, &marker, "namespace-filtered stream").await;
    assert_eq!(ids_of(&got), expected, "only {ns}, all of it, in order: {got:?}");
}

/// A tag filter yields exactly the events whose tags hold the key with exactly the value,
/// in any namespace; a missing key, another key with that value, a prefix, a case variant
/// or a pattern-like match never matches.
pub async fn filter_by_tag(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let (ns, other) = (namespace("filter-tag"), namespace("filter-tag-other"));
    let base = unique("team");
    // `_`, `%`, `.`, `*` are wildcards in SQL LIKE, Lua patterns and regular expressions.
    let value = format!("{base}_%.*");
    let mut stream = subscribe_filtered(&b, &tag_filter("team", &value)).await;
    let mut expected = Vec::new();
    expected.push(done(&b, &ns, &tags([("team", &value)])).await);
    done(&b, &ns, &tags([("team", &format!("{value}x"))])).await;
    done(&b, &ns, &tags([("team", &format!("{base}Xyz-anything"))])).await;
    done(&b, &ns, &tags([("team", &value.to_uppercase())])).await;
    done(&b, &ns, &Tags::new()).await;
    done(&b, &ns, &tags([("owner", &value)])).await;
    done(&b, &ns, &tags([("Team", &value)])).await;
    done(&b, &ns, &tags([("teams", &value)])).await;
    expected.push(done(&b, &ns, &tags([("aaa", "first"), ("team", &value), ("zzz", "last")])).await);
    expected.push(done(&b, &other, &tags([("team", &value)])).await);
    let marker = done(&b, &ns, &tags([("team", &value)])).await;
    let got = strictly_until(&mut stream, &marker, "tag-filtered stream").await;
    assert_eq!(ids_of(&got), expected, "exactly team={value:?}, all of it, in order: {got:?}");
}

/// A filter on namespace and tag yields only events matching both.
pub async fn filter_by_namespace_and_tag(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let (ns, other) = (namespace("filter-both"), namespace("filter-both-other"));
    let value = unique("team");
    let filter = ns_filter(&ns).with_tag(TagKey::new("team").unwrap(), TagValue::new(value.as_str()).unwrap());
    let mut stream = subscribe_filtered(&b, &filter).await;
    let mut expected = Vec::new();
    expected.push(done(&b, &ns, &tags([("team", &value)])).await);
    done(&b, &other, &tags([("team", &value)])).await;
    done(&b, &ns, &tags([("team", &format!("{value}x"))])).await;
    done(&b, &ns, &Tags::new()).await;
    done(&b, &ns, &tags([("owner", &value)])).await;
    expected.push(done(&b, &ns, &tags([("team", &value), ("tier", "gold")])).await);
    let marker = done(&b, &ns, &tags([("team", &value)])).await;
    let got = strictly_until(&mut stream, &marker, "namespace-and-tag-filtered stream").await;
    assert_eq!(ids_of(&got), expected, "only {ns} with team={value}: {got:?}");
}

/// While writers of other tenants (other namespaces, other tag values) write concurrently,
/// filtered streams (plain and resumable) yield only their matching events, all of them,
/// each writer's in commit order.
pub async fn filters_leak_nothing_under_load(harness: &dyn Harness) {
    const EACH: usize = 40;
    let b = backend(harness, BackendOptions::default()).await;
    let (a, other) = (namespace("load-a"), namespace("load-b"));
    let (mine, theirs) = (unique("mine"), unique("theirs"));
    let mine_tags = tags([("team", &mine)]);
    let by_ns = ns_filter(&a);
    let by_tag = tag_filter("team", &mine);
    let by_both = ns_filter(&a).with_tag(TagKey::new("team").unwrap(), TagValue::new(mine.as_str()).unwrap());
    let mut ns_stream = subscribe_filtered(&b, &by_ns).await;
    let mut tag_stream = subscribe_filtered(&b, &by_tag).await;
    let mut both_stream = subscribe_filtered(&b, &by_both).await;
    let mut resumable = subscribe_from(&b, StartFrom::Now, &by_both).await;
    let writers = [
        spawn_writer(b.engine.clone(), a.clone(), mine_tags.clone(), EACH),
        spawn_writer(b.engine.clone(), a.clone(), tags([("team", &theirs)]), EACH),
        spawn_writer(b.engine.clone(), other.clone(), mine_tags.clone(), EACH),
        spawn_writer(b.engine.clone(), other.clone(), Tags::new(), EACH),
        spawn_writer(b.engine.clone(), namespace("load-c"), tags([("team", &theirs)]), EACH),
    ];
    let mut written = Vec::new();
    for writer in writers {
        written.push(join_writer(writer).await);
    }
    let marker = done(&b, &a, &mine_tags).await;
    let got = ids_of(&strictly_until(&mut ns_stream, &marker, "namespace filter under load").await);
    assert_merge_of(&got, &[&written[0], &written[1]], "namespace filter under load");
    let got = ids_of(&strictly_until(&mut tag_stream, &marker, "tag filter under load").await);
    assert_merge_of(&got, &[&written[0], &written[2]], "tag filter under load");
    let got = ids_of(&strictly_until(&mut both_stream, &marker, "namespace and tag filter under load").await);
    assert_sequence(&got, &written[0], "namespace and tag filter under load");
    let mut items = Vec::new();
    loop {
        let item = next_item(&mut resumable, "the resumable filtered stream under load").await;
        if item.completion().is_some_and(|c| c.execution_id() == &marker) {
            break;
        }
        items.push(item);
    }
    assert_sequence(&item_ids(&items), &written[0], "resumable filtered stream under load");
    assert_no_gap(&items, "resumable filtered stream under load");
}

/// A resumable stream after a cursor yields exactly the events after it, in the order the
/// cursor's stream had them (also with concurrent writers), then live events; a cursor
/// round-trips through its text; `StartFrom::Now` yields only later events.
pub async fn resume_after_cursor(harness: &dyn Harness) {
    const PER_WRITER: usize = 12;
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("resume");
    let mut live = subscribe(&b).await;
    let writers = [
        spawn_writer(b.engine.clone(), ns.clone(), Tags::new(), PER_WRITER),
        spawn_writer(b.engine.clone(), ns.clone(), Tags::new(), PER_WRITER),
    ];
    let mut written = Vec::new();
    for writer in writers {
        written.push(join_writer(writer).await);
    }
    let mut seen = collect_in(&mut live, &ns, 2 * PER_WRITER).await;
    assert_merge_of(&ids_of(&seen), &[&written[0], &written[1]], "the live stream");

    // `seen` grows by the live events of each round: a later round resumes past them too.
    for k in [1, 10, 2 * PER_WRITER - 1] {
        let text = seen[k - 1].cursor().to_string();
        let cursor: Cursor = text.parse().unwrap_or_else(|e| panic!("the cursor text {text:?} parses back: {e}"));
        assert_eq!(&cursor, seen[k - 1].cursor(), "the cursor round-trips through its text");
        let mut resumed = subscribe_from(&b, StartFrom::After(cursor), &ScannerFilter::new()).await;
        // Committed after subscribing but before the first read: the stream meets these both
        // in its catch-up read of the log and live; it must yield them once.
        let overlapping = complete_n(&*b.engine, &ns, &Tags::new(), 2).await;
        let mut expected = ids_of(&seen[k..]);
        expected.extend(overlapping.iter().cloned());
        let mut items = Vec::new();
        while items.len() < expected.len() {
            items.push(next_item_in(&mut resumed, &ns).await);
        }
        assert_sequence(
            &item_ids(&items),
            &expected,
            &format!("after the cursor of event {k}: exactly the events after it, once"),
        );
        assert_no_gap(&items, "resumed after a retained cursor");
        let later = complete_n(&*b.engine, &ns, &Tags::new(), 2).await;
        let next: Vec<_> = [next_item_in(&mut resumed, &ns).await, next_item_in(&mut resumed, &ns).await].into();
        assert_eq!(item_ids(&next), later, "after catching up, live events follow");
        let more = collect_in(&mut live, &ns, 4).await;
        assert_eq!(ids_of(&more), [overlapping, later.clone()].concat());
        seen.extend(more);
        if k == 10 {
            // A cursor handed out by a resumable stream resumes too.
            let own = items[4].completion().unwrap().cursor().clone();
            let mut again = subscribe_from(&b, StartFrom::After(own), &ScannerFilter::new()).await;
            let mut expected = item_ids(&items[5..]);
            expected.extend(later.iter().cloned());
            let mut rest = Vec::new();
            while rest.len() < expected.len() {
                rest.push(next_item_in(&mut again, &ns).await);
            }
            assert_sequence(&item_ids(&rest), &expected, "resumed after a resumable stream's own cursor");
        }
    }

    let mut now = subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await;
    let later = complete_n(&*b.engine, &ns, &Tags::new(), 2).await;
    let next: Vec<_> = [next_item_in(&mut now, &ns).await, next_item_in(&mut now, &ns).await].into();
    assert_eq!(item_ids(&next), later, "StartFrom::Now: only events committed after subscribing");
}

/// A filtered resumable stream after a cursor (taken from a filtered or an unfiltered
/// stream) yields exactly the matching events after it.
pub async fn resume_filtered_after_cursor(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let (a, other) = (namespace("resume-f"), namespace("resume-f-other"));
    let mut filtered = subscribe_filtered(&b, &ns_filter(&a)).await;
    let mut plain = subscribe(&b).await;
    let mut mine = Vec::new();
    let mut all = Vec::new();
    for _ in 0..6 {
        let id = done(&b, &a, &Tags::new()).await;
        mine.push(id.clone());
        all.push(id);
        all.push(done(&b, &other, &Tags::new()).await);
    }
    let from_filtered = collect_in(&mut filtered, &a, 6).await;
    assert_eq!(ids_of(&from_filtered), mine);
    let mut from_plain = Vec::new();
    while from_plain.len() < all.len() {
        let c = next_completion(&mut plain, "the plain stream").await;
        if all.contains(c.execution_id()) {
            from_plain.push(c);
        }
    }
    assert_eq!(ids_of(&from_plain), all);
    let marker = done(&b, &a, &Tags::new()).await;
    for (cursor, what) in [
        (from_filtered[2].cursor().clone(), "a filtered stream's cursor"),
        // The 6th event overall is the other namespace's, right after `mine[2]`.
        (from_plain[5].cursor().clone(), "an unfiltered stream's cursor"),
    ] {
        let mut resumed = subscribe_from(&b, StartFrom::After(cursor), &ns_filter(&a)).await;
        let mut items = Vec::new();
        loop {
            let item = next_item(&mut resumed, what).await;
            if item.completion().is_some_and(|c| c.execution_id() == &marker) {
                break;
            }
            items.push(item);
        }
        assert_eq!(item_ids(&items), mine[3..], "{what}: exactly the matching events after it");
        assert_eq!(items.len(), 3, "{what}: no gap item: {items:?}");
    }
}

/// `StartFrom::Earliest` starts at the oldest retained event, without a gap item, even
/// though retention trimmed older ones.
pub async fn resume_from_earliest(harness: &dyn Harness) {
    const RETAINED: usize = 10;
    let b = backend(harness, BackendOptions::default().retention(Retention::events(RETAINED as u64))).await;
    let ns = namespace("earliest");
    let mut written = complete_n(&*b.engine, &ns, &Tags::new(), 25).await;
    for filter in [ScannerFilter::new(), ns_filter(&ns)] {
        enforce_retention(&b).await;
        let mut stream = subscribe_from(&b, StartFrom::Earliest, &filter).await;
        let mut items = Vec::new();
        for _ in 0..RETAINED {
            items.push(next_item_in(&mut stream, &ns).await);
        }
        assert!(items.iter().all(|i| i.completion().is_some()), "Earliest yields no gap: {items:?}");
        assert_eq!(item_ids(&items), written[written.len() - RETAINED..], "the retained events, oldest first");
        let later = done(&b, &ns, &Tags::new()).await;
        let item = next_item_in(&mut stream, &ns).await;
        assert_eq!(item.completion().map(|c| c.execution_id()), Some(&later), "then live events: {item:?}");
        written.push(later);
    }
}

/// The cursor of every event of a `StartFrom::Earliest` stream resumes, the first one
/// included: on a fresh instance, taken while most partitions (or shards) of the log hold no
/// event yet, with a plain and with a filtered stream. Resuming yields exactly the events
/// after it, then live events.
pub async fn resume_from_a_cursor_of_an_earliest_stream(harness: &dyn Harness) {
    const WRITTEN: usize = 3;
    for filtered in [false, true] {
        let b = backend(harness, BackendOptions::default()).await;
        let ns = namespace("earliest-cursor");
        let filter = if filtered { ns_filter(&ns) } else { ScannerFilter::new() };
        let what = if filtered { "filtered" } else { "plain" };
        let written = complete_n(&*b.engine, &ns, &Tags::new(), WRITTEN).await;
        let mut earliest = subscribe_from(&b, StartFrom::Earliest, &filter).await;
        let mut items = Vec::new();
        for _ in 0..WRITTEN {
            items.push(next_item_in(&mut earliest, &ns).await);
        }
        assert_eq!(item_ids(&items), written, "{what}: the Earliest stream yields the log");
        assert_no_gap(&items, "an Earliest stream");
        let mut later = Vec::new();
        for (k, item) in items.iter().enumerate() {
            let text = item.completion().expect("no gap items here").cursor().to_string();
            let cursor: Cursor =
                text.parse().unwrap_or_else(|e| panic!("{what}: the cursor {text:?} parses back: {e}"));
            let mut resumed = match b.completions.subscribe_from(StartFrom::After(cursor), &filter).await {
                Ok(stream) => stream,
                Err(e) => {
                    panic!("{what}: resuming after the cursor of event {} of an Earliest stream ({text}): {e}", k + 1)
                }
            };
            later.push(done(&b, &ns, &Tags::new()).await);
            let mut expected = written[k + 1..].to_vec();
            expected.extend(later.iter().cloned());
            let mut got = Vec::new();
            while got.len() < expected.len() {
                got.push(next_item_in(&mut resumed, &ns).await);
            }
            assert_sequence(&item_ids(&got), &expected, &format!("{what}: after the cursor of event {}", k + 1));
            assert_no_gap(&got, "resumed after an Earliest stream's cursor");
        }
    }
}

/// Resuming after a position that retention trimmed yields a gap item first (naming the
/// position asked for and where the stream resumes), then the retained events, nothing at
/// or before the resumed position; resuming from the gap's position yields no gap.
pub async fn resume_from_trimmed_position_yields_gap(harness: &dyn Harness) {
    const RETAINED: usize = 10;
    const WRITTEN: usize = 40;
    let b = backend(harness, BackendOptions::default().retention(Retention::events(RETAINED as u64))).await;
    let ns = namespace("trimmed");
    let mut live = subscribe(&b).await;
    let written = complete_n(&*b.engine, &ns, &Tags::new(), WRITTEN).await;
    let seen = collect_in(&mut live, &ns, WRITTEN).await;
    assert_eq!(ids_of(&seen), written);
    enforce_retention(&b).await;
    let first = seen[0].cursor().clone();
    let retained = &written[WRITTEN - RETAINED..];

    let mut resumed = subscribe_from(&b, StartFrom::After(first.clone()), &ScannerFilter::new()).await;
    let gap = match next_item_in(&mut resumed, &ns).await {
        StreamItem::Gap(gap) => gap,
        other => panic!("resuming after a trimmed position: expected a gap first, got {other:?}"),
    };
    assert_eq!(gap.after.as_ref(), Some(&first), "the gap names the position asked for");
    assert_eq!(gap.resumed_at.backend(), b.completions.backend_name(), "{gap:?}");
    if let Some(missed) = gap.missed {
        assert_eq!(missed as usize, WRITTEN - RETAINED - 1, "events trimmed after the cursor: {gap:?}");
    }
    let mut items = Vec::new();
    for _ in 0..RETAINED {
        items.push(next_item_in(&mut resumed, &ns).await);
    }
    assert_eq!(item_ids(&items), retained, "after the gap: the retained events in order, only them: {items:?}");

    let mut from_gap = subscribe_from(&b, StartFrom::After(gap.resumed_at.clone()), &ScannerFilter::new()).await;
    let mut again = Vec::new();
    for _ in 0..RETAINED {
        again.push(next_item_in(&mut from_gap, &ns).await);
    }
    assert_eq!(item_ids(&again), retained, "after the gap's resumed position: the same events, no gap: {again:?}");

    let later = done(&b, &ns, &Tags::new()).await;
    for stream in [&mut resumed, &mut from_gap] {
        let item = next_item_in(stream, &ns).await;
        assert_eq!(item.completion().map(|c| c.execution_id()), Some(&later), "then live events: {item:?}");
    }
}

/// An age limit trims events older than it (when retention is enforced, even with nothing
/// written since): resuming after a trimmed event then yields a gap, followed by what is
/// left and by new events.
pub async fn retention_by_age_trims_old_events(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default().retention(Retention::age(Duration::from_secs(1)))).await;
    let ns = namespace("age");
    let mut live = subscribe(&b).await;
    let written = complete_n(&*b.engine, &ns, &Tags::new(), 3).await;
    let seen = collect_in(&mut live, &ns, 3).await;
    assert_eq!(ids_of(&seen), written);
    let first = seen[0].cursor().clone();
    // Readiness probe: the first event is trimmed once resuming after it starts with a gap.
    let trimmed = || async {
        enforce_retention(&b).await;
        let mut resumed = subscribe_from(&b, StartFrom::After(first.clone()), &ns_filter(&ns)).await;
        // Until the first event is trimmed, the second one comes at once; after, the gap must.
        match tokio::time::timeout(EVENT_DEADLINE, resumed.next()).await {
            Ok(Some(item)) => matches!(item, StreamItem::Gap(_)),
            Ok(None) => panic!("the resumable stream ended"),
            Err(_) => panic!("resuming after an event the age limit trimmed yielded neither a gap nor an event"),
        }
    };
    poll_until("events older than the age limit trimmed", Duration::from_millis(50), trimmed).await;
    let mut resumed = subscribe_from(&b, StartFrom::After(first.clone()), &ScannerFilter::new()).await;
    let later = done(&b, &ns, &Tags::new()).await;
    match next_item_in(&mut resumed, &ns).await {
        StreamItem::Gap(gap) => assert_eq!(gap.after.as_ref(), Some(&first), "{gap:?}"),
        other => panic!("resuming after a trimmed event: expected a gap first, got {other:?}"),
    }
    let mut rest = Vec::new();
    loop {
        let item = next_item_in(&mut resumed, &ns).await;
        let id = item.completion().map(|c| c.execution_id().clone());
        assert!(id.is_some(), "one gap only: {item:?}");
        if id.as_ref() == Some(&later) {
            break;
        }
        rest.extend(id);
    }
    assert!(written[1..].ends_with(&rest), "after the gap: what the age limit left, in order: {rest:?}");
}

/// A plain stream whose consumer stalled past retention counts the gap
/// ([`completion_core::CounterSnapshot::gaps`]) and goes on with the retained and later
/// events, in order.
pub async fn plain_stream_counts_gap(harness: &dyn Harness) {
    const RETAINED: usize = 10;
    let b = backend(harness, BackendOptions::default().buffer(4).retention(Retention::events(RETAINED as u64))).await;
    let ns = namespace("plain-gap");
    // Subscribed on an empty log: its position is the log's head, not "the earliest".
    let mut stream = subscribe(&b).await;
    let gaps_before = b.completions.counters().gaps;
    let written = complete_n(&*b.engine, &ns, &Tags::new(), 100).await;
    // Once the buffer overflowed, the stream can only get these events from the log, which
    // is about to lose most of them: a gap is then certain, whatever the feed's timing.
    wait_until("the stalled stream's buffer overflowed", || async { b.completions.counters().buffer_overflows > 0 })
        .await;
    enforce_retention(&b).await;
    let got = collect_in(&mut stream, &ns, RETAINED).await;
    assert_eq!(ids_of(&got), written[written.len() - RETAINED..], "the retained events, in order: {got:?}");
    let gaps = b.completions.counters().gaps;
    assert!(gaps > gaps_before, "the gap is counted (gaps {gaps_before} -> {gaps})");
    let later = complete_n(&*b.engine, &ns, &Tags::new(), 3).await;
    assert_eq!(ids_of(&collect_in(&mut stream, &ns, 3).await), later, "the stream goes on with later events");
}

/// A live resumable stream whose consumer stalled past retention yields a gap item (not
/// only a stream resumed from an old cursor), then the retained and later events, in order.
pub async fn stalled_resumable_stream_yields_gap(harness: &dyn Harness) {
    const RETAINED: usize = 10;
    let b = backend(harness, BackendOptions::default().buffer(4).retention(Retention::events(RETAINED as u64))).await;
    let ns = namespace("stalled-gap");
    let mut stream = subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await;
    let written = complete_n(&*b.engine, &ns, &Tags::new(), 60).await;
    wait_until("the stalled stream's buffer overflowed", || async { b.completions.counters().buffer_overflows > 0 })
        .await;
    enforce_retention(&b).await;
    let gap = match next_item_in(&mut stream, &ns).await {
        StreamItem::Gap(gap) => gap,
        other => panic!("a stream stalled past retention: expected a gap first, got {other:?}"),
    };
    assert_eq!(gap.resumed_at.backend(), b.completions.backend_name(), "{gap:?}");
    let mut items = Vec::new();
    for _ in 0..RETAINED {
        items.push(next_item_in(&mut stream, &ns).await);
    }
    assert_eq!(item_ids(&items), written[written.len() - RETAINED..], "then the retained events: {items:?}");
    let later = complete_n(&*b.engine, &ns, &Tags::new(), 3).await;
    let mut next = Vec::new();
    for _ in 0..3 {
        next.push(next_item_in(&mut stream, &ns).await);
    }
    assert_eq!(item_ids(&next), later, "then later events, no second gap: {next:?}");
}

/// Trimming that races a stream reading at the retention edge loses nothing silently: while
/// one writer completes executions one after the other (so their commit order is known) and
/// the log is trimmed to a few events after every few writes, a slow resumable stream
/// delivers completions in that order, each at most once, and wherever it skips one there is
/// a gap item between; it ends on the last one written.
pub async fn trimming_racing_a_reader_loses_nothing_silently(harness: &dyn Harness) {
    const RETAINED: u64 = 16;
    const WRITTEN: usize = 400;
    let b = backend(harness, BackendOptions::default().buffer(4).retention(Retention::events(RETAINED))).await;
    let ns = namespace("trim-race");
    let origin = done(&b, &ns, &Tags::new()).await;
    let mut stream = subscribe_from(&b, StartFrom::Earliest, &ns_filter(&ns)).await;
    assert_eq!(next_item_in(&mut stream, &ns).await.completion().map(|c| c.execution_id()), Some(&origin));
    let mut writer = {
        let (engine, hooks, ns) = (b.engine.clone(), b.hooks.clone(), ns.clone());
        tokio::spawn(async move {
            let mut written = Vec::with_capacity(WRITTEN);
            for i in 0..WRITTEN {
                written.push(create_and_complete(&*engine, &ns, &Tags::new()).await);
                if i % 5 == 4 {
                    hooks.enforce_retention().await.unwrap_or_else(|e| panic!("enforce_retention hook failed: {e}"));
                }
            }
            written
        })
    };
    let mut items = Vec::new();
    // Slow while the writer runs, so that the stream falls behind into the trimmed region.
    // (Waiting for an item must not outlast the writer: the stream may have had them all.)
    let written = loop {
        tokio::select! {
            biased;
            written = &mut writer => break written.expect("writer task"),
            item = next_item_in(&mut stream, &ns) => {
                items.push(item);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let last = written.last().expect("written").clone();
    while items.last().and_then(StreamItem::completion).map(|c| c.execution_id()) != Some(&last) {
        items.push(next_item_in(&mut stream, &ns).await);
    }
    let order: HashMap<&ExecutionId, usize> = written.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let (mut expected_next, mut gap_seen, mut gaps) = (0usize, false, 0usize);
    for item in &items {
        match item {
            StreamItem::Gap(_) => {
                gap_seen = true;
                gaps += 1;
            }
            StreamItem::Completion(c) => {
                let at = *order.get(c.execution_id()).unwrap_or_else(|| panic!("an unknown completion: {c:?}"));
                assert!(
                    at >= expected_next,
                    "completion #{at} out of order or repeated (expected #{expected_next} or later)"
                );
                assert!(
                    at == expected_next || gap_seen,
                    "completions #{expected_next}..#{at} were skipped without a gap item in between"
                );
                expected_next = at + 1;
                gap_seen = false;
            }
            other => panic!("unexpected item {other:?}"),
        }
    }
    // Not asserted: how many gaps (that depends on the machine's speed), only that none was
    // silent. Printed for `--nocapture` runs.
    println!("trimming_racing_a_reader_loses_nothing_silently: {gaps} gap item(s) in {} items", items.len());
}

/// A consumer far behind costs at most `buffer` events of memory, and still gets every
/// event exactly once, in order: the buffer overflows and the stream catches up from the
/// log (no gap: retention is large).
pub async fn slow_consumer_stays_bounded_and_loses_nothing(harness: &dyn Harness) {
    const BUFFER: usize = 16;
    const HALF: usize = 250;
    let b = backend(harness, BackendOptions::default().buffer(BUFFER)).await;
    let ns = namespace("slow");
    let mut plain = subscribe(&b).await;
    let mut resumable = subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await;
    let mut written = complete_n(&*b.engine, &ns, &Tags::new(), HALF).await;
    wait_until("the unread streams' buffers overflowed", || async { b.completions.counters().buffer_overflows > 0 })
        .await;
    let writer = spawn_writer(b.engine.clone(), ns.clone(), Tags::new(), HALF);
    // Read while the second half is written, yielding after every event: slower than the
    // writer, so the buffer keeps overflowing.
    let mut got = Vec::new();
    while got.len() < HALF {
        got.push(next_in(&mut plain, &ns).await);
        tokio::task::yield_now().await;
    }
    written.extend(join_writer(writer).await);
    let marker = done(&b, &ns, &Tags::new()).await;
    got.extend(until_marker(&mut plain, &ns, &marker).await);
    assert_sequence(&ids_of(&got), &written, "plain stream: every event once, in order");
    let items = items_until_marker(&mut resumable, &ns, &marker).await;
    assert_sequence(&item_ids(&items), &written, "resumable stream: every event once, in order");
    assert_no_gap(&items, "slow resumable stream, retention not passed");
    let counters = b.completions.counters();
    assert!(counters.buffer_high_water <= BUFFER as u64, "a buffer held more than {BUFFER} events: {counters:?}");
    assert!(counters.buffer_overflows > 0, "the buffer bound was never reached, so not tested: {counters:?}");
    assert_eq!(counters.gaps, 0, "no gap without trimming: {counters:?}");
}

/// Dropping streams (plain, filtered, resumable, also one that lags behind with a full
/// buffer) releases every server-side resource they held.
pub async fn drop_releases_server_resources(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default().buffer(4)).await;
    let ns = namespace("release");
    wait_until("a fresh instance holds no subscription resources", || async { resources(&b).await == 0 }).await;
    let plain = subscribe(&b).await;
    let filtered = subscribe_filtered(&b, &ns_filter(&ns)).await;
    let mut resumable = subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await;
    let first = done(&b, &ns, &Tags::new()).await;
    let item = next_item_in(&mut resumable, &ns).await;
    assert_eq!(item.completion().map(|c| c.execution_id()), Some(&first));
    let lagging =
        subscribe_from(&b, StartFrom::After(item.completion().unwrap().cursor().clone()), &ns_filter(&ns)).await;
    complete_n(&*b.engine, &ns, &Tags::new(), 20).await;
    assert!(resources(&b).await > 0, "open streams hold subscription resources");
    assert_eq!(b.completions.counters().active_streams, 4, "four streams open");
    drop((plain, filtered, resumable, lagging));
    wait_until("every resource released after the streams were dropped", || async { resources(&b).await == 0 }).await;
    assert_eq!(b.completions.counters().active_streams, 0);
}

/// Invalid values are refused by their constructors with `InvalidInput` naming the value;
/// cursors of another backend, garbage positions and positions past the log's head are
/// refused by `subscribe_from` with `InvalidInput`, never a panic, holding nothing.
pub async fn invalid_input_is_rejected(harness: &dyn Harness) {
    fn refused<T: std::fmt::Debug>(result: Result<T, EngineError>, what: &str, shown: &str) {
        match result {
            Err(e @ EngineError::InvalidInput { .. }) => {
                let message = e.to_string();
                assert!(message.contains(shown), "{what}: the message {message:?} names the value {shown:?}");
            }
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    let long = |n: usize| "x".repeat(n);
    for (value, shown) in [("", ""), ("a{b", "a{b"), ("a}b", "a}b"), ("a b", "a b"), ("tab\there", "tab"), ("é", "é")]
    {
        refused(ExecutionId::new(value), "execution id", shown);
        refused(FlowId::new(value), "flow id", shown);
        refused(Namespace::new(value), "namespace", shown);
        refused(TagKey::new(value), "tag key", shown);
    }
    refused(ExecutionId::new(long(129)), "129-byte execution id", "129");
    refused(FlowId::new(long(129)), "129-byte flow id", "129");
    refused(Namespace::new(long(65)), "65-byte namespace", "65");
    refused(TagKey::new(long(65)), "65-byte tag key", "65");
    refused(TagKey::new("a=b"), "tag key with =", "a=b");
    refused(TagValue::new(""), "empty tag value", "empty");
    refused(TagValue::new(long(257)), "257-byte tag value", "257");
    refused(TagValue::new("bell\u{7}"), "tag value with a control character", "bell");
    refused(TagValue::new("{brace}"), "tag value with braces", "{brace}");
    refused(Reason::new(long(1025)), "1025-byte reason", "1025");
    refused(Reason::new("nul\0"), "reason with NUL", "nul");
    let seventeen: Vec<_> = (0..17).map(|i| (format!("k{i}"), "v".to_string())).collect();
    refused(Tags::from_pairs(seventeen), "17 tags", "16");
    refused(Tags::from_pairs([("k", "1"), ("k", "2")]), "a repeated tag key", "k");
    for text in ["garbage", ":1", "Memory:1", "memory:\n", &format!("memory:{}", long(Cursor::MAX_LEN))] {
        refused(Cursor::parse(text), "cursor text", &text[..text.len().min(6)]);
    }

    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("invalid");
    done(&b, &ns, &Tags::new()).await;
    let name = b.completions.backend_name();
    let other = if name == "memory" { "other" } else { "memory" };
    let cursors = [
        (Cursor::new(other, 1), "1"),
        (Cursor::new(name, "not-a-position"), "not-a-position"),
        (Cursor::new(name, ""), name),
        (Cursor::new(name, "-1"), "-1"),
        (Cursor::new(name, "999999999999999"), "999999999999999"),
        (Cursor::new(name, "99999999999999999999999999999"), "99999999999999999999999999999"),
    ];
    for (cursor, shown) in cursors {
        for filter in [ScannerFilter::new(), ns_filter(&ns)] {
            let result = b.completions.subscribe_from(StartFrom::After(cursor.clone()), &filter).await;
            refused(result.map(|_| ()), &format!("subscribe_from after {cursor:?}"), shown);
        }
    }
    wait_until("refused subscriptions hold nothing", || async { resources(&b).await == 0 }).await;
    assert_eq!(b.completions.counters().active_streams, 0);
}

/// What goes wrong with the server while a test writes.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillConnections,
    RestartServer,
}

/// Writes `total` completions one at a time while `fault` strikes when the count reaches
/// each of `at`; three streams opened before (plain, filtered, resumable) must each get
/// every committed completion exactly once, in order, with no gap.
async fn lose_nothing_through_faults(harness: &dyn Harness, fault: Fault, total: usize, at: &[usize]) {
    let capabilities = harness.capabilities();
    let supported = match fault {
        Fault::KillConnections => capabilities.kill_connections,
        Fault::RestartServer => capabilities.restart_server,
    };
    assert!(supported, "the harness does not support {fault:?}: mark this test ignored for this backend instead");
    let b = backend(harness, BackendOptions::default().dedicated_server()).await;
    let ns = namespace("faults");
    let marker = execution_id("marker");
    let plain = spawn_reader(subscribe(&b).await, ns.clone(), marker.clone());
    let filtered = spawn_reader(subscribe_filtered(&b, &ns_filter(&ns)).await, ns.clone(), marker.clone());
    let resumable =
        spawn_item_reader(subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await, ns.clone(), marker.clone());
    // Kept open to the end: the feed must live until it has seen its reconnect (asserted
    // below), which can come after every event already arrived by another path.
    let keep_alive = subscribe(&b).await;
    let mut committed = Vec::with_capacity(total);
    let mut striking: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    for i in 0..total {
        if at.contains(&i) {
            if let Some(previous) = striking.take() {
                join(previous, "fault").await.unwrap_or_else(|e| panic!("{fault:?} hook failed: {e}"));
            }
            let hooks = b.hooks.clone();
            // The fault runs alongside the writes: some are in flight when it strikes.
            striking = Some(tokio::spawn(async move {
                match fault {
                    Fault::KillConnections => hooks.kill_connections().await,
                    Fault::RestartServer => hooks.restart_server().await,
                }
                .map_err(|e| e.to_string())
            }));
        }
        let id = execution_id("exec");
        commit_through_faults(&*b.engine, &ns, &id).await;
        committed.push(id);
    }
    if let Some(last) = striking.take() {
        join(last, "fault").await.unwrap_or_else(|e| panic!("{fault:?} hook failed: {e}"));
    }
    commit_through_faults(&*b.engine, &ns, &marker).await;
    assert_sequence(&join(plain, "plain reader").await, &committed, &format!("plain stream through {fault:?}"));
    assert_sequence(
        &join(filtered, "filtered reader").await,
        &committed,
        &format!("filtered stream through {fault:?}"),
    );
    let items = join(resumable, "resumable reader").await;
    assert_sequence(&item_ids(&items), &committed, &format!("resumable stream through {fault:?}"));
    assert_no_gap(&items, &format!("resumable stream through {fault:?}"));
    // The fault must have hit the subscription side: it reconnects (the count may come after
    // the last event, which catch-up reads or other nodes can deliver first).
    poll_until(&format!("the subscription side to reconnect after {fault:?}"), Duration::from_millis(10), || async {
        b.completions.counters().reconnects > 0
    })
    .await;
    drop(keep_alive);
}

/// The instance's server connections are killed three times while a writer commits
/// completions: every committed completion reaches every stream exactly once, in order.
pub async fn connections_killed_mid_stream_lose_nothing(harness: &dyn Harness) {
    lose_nothing_through_faults(harness, Fault::KillConnections, 300, &[75, 150, 225]).await;
}

/// The instance's server is restarted twice while a writer commits completions: every
/// committed completion reaches every stream (a resumable one included) exactly once, in
/// order.
pub async fn server_restarted_mid_stream_loses_nothing(harness: &dyn Harness) {
    lose_nothing_through_faults(harness, Fault::RestartServer, 200, &[50, 130]).await;
}

async fn waiter(b: &TestBackend) -> Waiter {
    Waiter::new(b.completions.clone(), b.engine.clone()).await.unwrap_or_else(|e| panic!("Waiter::new: {e}"))
}

/// Awaiting outcomes with a [`Waiter`]: an execution that finished before the wait began is
/// answered (no race with the subscription: the classic hang of waiting on a stream alone),
/// one that finishes during the wait too, with its outcome; `wait_all` answers a set in the
/// order asked; many concurrent waits on one id all get it; a finished wait leaves no entry.
pub async fn waits_answer_before_and_during(harness: &dyn Harness) {
    const SAME_ID: usize = 20;
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("wait");
    let waiter = waiter(&b).await;
    let before = create_and_complete(&*b.engine, &ns, &Tags::new()).await;
    let got = waiter.wait(&before, EVENT_DEADLINE).await.unwrap_or_else(|e| panic!("wait for {before}: {e}"));
    assert_eq!((&got.execution_id, got.outcome), (&before, Outcome::Succeeded), "finished before the wait");

    let during = create(&*b.engine, &ns, None, &Tags::new()).await;
    let later = create(&*b.engine, &ns, None, &Tags::new()).await;
    let waiting = {
        let ids = [during.clone(), later.clone(), before.clone()];
        let waiter = &waiter;
        async move { waiter.wait_all(&ids, EVENT_DEADLINE).await }
    };
    let many: Vec<_> = (0..SAME_ID).map(|_| waiter.wait(&during, EVENT_DEADLINE)).collect();
    let finishing = async {
        // Writes once the waits have registered: those whose lookup found them active learn
        // the outcome from the stream.
        poll_until("the waits to register", Duration::from_millis(5), || async { waiter.pending() == 3 }).await;
        b.engine.fail(&during, &reason("boom")).await.expect("fail");
        b.engine.cancel(&later, &reason("no longer needed")).await.expect("cancel");
    };
    let (all, many, ()) = tokio::join!(waiting, futures_util::future::join_all(many), finishing);
    let all = all.unwrap_or_else(|e| panic!("wait_all: {e}"));
    let outcomes: Vec<_> = all.iter().map(|f| (f.execution_id.clone(), f.outcome)).collect();
    assert_eq!(
        outcomes,
        [(during.clone(), Outcome::Failed), (later, Outcome::Cancelled), (before, Outcome::Succeeded)],
        "wait_all answers in the order asked"
    );
    for got in many {
        let got = got.unwrap_or_else(|e| panic!("one of {SAME_ID} waits on {during}: {e}"));
        assert_eq!((got.execution_id, got.outcome), (during.clone(), Outcome::Failed));
    }
    assert_eq!(waiter.pending(), 0, "finished waits leave no entry");
}

/// A wait for an execution that never finishes ends at its deadline with a timeout error
/// naming it (distinct from every other error); a wait for an id that does not exist fails
/// at once with `NotFound` (documented in `completion_core::waiter`); a dropped wait frees
/// its entry.
pub async fn waits_time_out_refuse_unknown_ids_and_free_their_entries(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("wait-edge");
    let waiter = waiter(&b).await;
    let never = create(&*b.engine, &ns, None, &Tags::new()).await;
    // The outer timeout only bounds a hang; nothing here measures time.
    let result = tokio::time::timeout(EVENT_DEADLINE, waiter.wait(&never, Duration::from_millis(200)))
        .await
        .expect("a wait ends at its deadline");
    match result {
        Err(WaitError::TimedOut { pending, .. }) => assert_eq!(pending, std::slice::from_ref(&never)),
        other => panic!("expected a timeout naming {never}, got {other:?}"),
    }
    let unknown = execution_id("never-created");
    match tokio::time::timeout(EVENT_DEADLINE, waiter.wait(&unknown, EVENT_DEADLINE)).await.expect("answers at once") {
        Err(WaitError::NotFound(id)) => assert_eq!(id, unknown),
        other => panic!("expected NotFound for {unknown}, got {other:?}"),
    }
    {
        let dropped = waiter.wait(&never, EVENT_DEADLINE);
        let mut dropped = Box::pin(dropped);
        // Polled until it registered, then dropped.
        poll_until("the wait to register", Duration::from_millis(5), || {
            let _ = futures_util::FutureExt::now_or_never(dropped.as_mut());
            async { waiter.pending() == 1 }
        })
        .await;
    }
    assert_eq!(waiter.pending(), 0, "a dropped wait frees its entry");
    b.engine.complete(&never).await.expect("complete");
    let got = waiter.wait(&never, EVENT_DEADLINE).await.unwrap_or_else(|e| panic!("wait after it finished: {e}"));
    assert_eq!(got.outcome, Outcome::Succeeded);
}

/// A wait stays answered through killed server connections: the instance's connections are
/// killed while a wait is pending, then the execution finishes (the write retried through the
/// fault), and the wait gets it: the waiter's subscription resumes from its own cursor.
pub async fn waits_survive_killed_connections(harness: &dyn Harness) {
    assert!(harness.capabilities().kill_connections, "mark this test ignored for this backend instead");
    let b = backend(harness, BackendOptions::default().dedicated_server()).await;
    let ns = namespace("wait-kill");
    let waiter = waiter(&b).await;
    for round in 0..3 {
        let id = create(&*b.engine, &ns, None, &Tags::new()).await;
        let finishing = async {
            poll_until("the wait to register", Duration::from_millis(5), || async { waiter.pending() == 1 }).await;
            b.hooks.kill_connections().await.unwrap_or_else(|e| panic!("kill_connections: {e}"));
            match retry_transient("complete", || b.engine.complete(&id)).await {
                (Ok(()), _) | (Err(EngineError::AlreadyTerminal { outcome: Outcome::Succeeded, .. }), true) => {}
                (Err(e), _) => panic!("complete({id}) through the fault: {e}"),
            }
        };
        let (got, ()) = tokio::join!(waiter.wait(&id, EVENT_DEADLINE), finishing);
        let got = got.unwrap_or_else(|e| panic!("round {round}: wait through killed connections: {e}"));
        assert_eq!((&got.execution_id, got.outcome), (&id, Outcome::Succeeded), "round {round}");
    }
}
