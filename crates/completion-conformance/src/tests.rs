//! The behaviour tests. Each is a public async function taking the backend's [`Harness`];
//! each builds its own backend instance, so tests can run concurrently on shared servers.
//! Every wait has a deadline: a test fails, it never hangs.

use std::collections::HashSet;

use completion_core::{Outcome, Reason, Tags};

use crate::support::*;
use crate::{BackendOptions, Harness, TestBackend};

async fn backend(harness: &dyn Harness, options: BackendOptions) -> TestBackend {
    harness.backend(options).await.unwrap_or_else(|e| panic!("the harness could not make a backend: {e}"))
}

/// A completion committed right after subscribe returns is delivered, every time.
pub async fn ready_on_return(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("ready");
    for round in 0..20 {
        let mut stream = b.completions.subscribe_completions().await.expect("subscribe");
        let id = create_and_complete(&*b.engine, &ns, &Tags::new()).await;
        let got = next_in(&mut stream, &ns).await;
        assert_eq!(got.execution_id(), &id, "round {round}: the first completion after subscribe returned");
    }
}

/// Complete, fail and cancel each publish one completion with the right outcome, and the
/// payload carries the execution's namespace, flow and tags.
pub async fn each_outcome(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("outcome");
    let tags = Tags::from_pairs([("team", "billing"), ("tier", "gold")]).unwrap();
    let mut stream = b.completions.subscribe_completions().await.expect("subscribe");
    let reason = Reason::new("because").unwrap();
    let mut expected = Vec::new();
    for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled] {
        let id = create(&*b.engine, &ns, None, &tags).await;
        match outcome {
            Outcome::Succeeded => b.engine.complete(&id).await,
            Outcome::Failed => b.engine.fail(&id, &reason).await,
            _ => b.engine.cancel(&id, &reason).await,
        }
        .unwrap_or_else(|e| panic!("{outcome} of {id}: {e}"));
        expected.push((id, outcome));
    }
    let got = collect_in(&mut stream, &ns, 3).await;
    let got: Vec<_> = got.iter().map(|c| (c.execution_id().clone(), c.outcome())).collect();
    assert_eq!(got, expected, "one completion per terminal write, in commit order");
    let cursors: HashSet<_> = collect_cursors(&got);
    assert_eq!(cursors.len(), 3);
}

fn collect_cursors<T: Clone + std::hash::Hash + Eq>(items: &[T]) -> HashSet<T> {
    items.iter().cloned().collect()
}
