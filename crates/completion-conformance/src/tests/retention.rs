//! Retention: gaps are reported, never silent.

use super::*;

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
