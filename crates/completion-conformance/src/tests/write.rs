//! The write side: outcomes, flows, one completion per terminal transition, refusals, exact values, bad input.

use super::*;

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
