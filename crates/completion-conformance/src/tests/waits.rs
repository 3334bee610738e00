//! Awaiting results with a Waiter.

use super::*;

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
