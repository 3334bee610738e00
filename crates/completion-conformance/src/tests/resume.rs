//! Resumable streams: from a cursor, filtered, from the earliest event.

use super::*;

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
