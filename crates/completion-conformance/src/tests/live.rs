//! The subscription is live when subscribe returns, streams are independent, bounded and release what they hold.

use super::*;

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

/// `close` ends every stream (plain and resumable yield `None`), refuses new subscriptions
/// with `Closed`, releases the subscription side's server resources once the ended streams
/// are dropped, and leaves the write side working.
pub async fn close_ends_streams_and_writes_keep_working(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("close");
    let mut plain = subscribe(&b).await;
    let mut resumable = subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await;
    let before = done(&b, &ns, &Tags::new()).await;
    assert_eq!(next_in(&mut plain, &ns).await.execution_id(), &before, "delivered before close");
    b.hooks.close().await.unwrap_or_else(|e| panic!("close hook failed: {e}"));
    // Items queued before the close may still come (the server may be shared); then the end.
    let ended = tokio::time::timeout(EVENT_DEADLINE, async {
        while resumable.next().await.is_some() {}
        while plain.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "both streams end after close");
    let refused = b.completions.subscribe_completions().await.err();
    assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
    let refused = b.completions.subscribe_from(StartFrom::Earliest, &ScannerFilter::new()).await.err();
    assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
    drop((plain, resumable));
    wait_until("the subscription side released after close", || async { resources(&b).await == 0 }).await;
    let after = done(&b, &ns, &Tags::new()).await;
    let info = b.engine.describe(&after).await.expect("describe after close");
    assert_eq!(info.state, ExecutionState::Terminal(Outcome::Succeeded));
}
