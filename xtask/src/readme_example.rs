//! The examples shown in README.md, compiled and run here so the README cannot drift from
//! the API: a test checks that the README's two `rust` blocks and its first `rust,ignore`
//! block are the texts between the markers below, verbatim and in order.

#[rustfmt::skip] // the text between the markers is README.md's, verbatim
mod waiting {
// README example 1: begin
use std::sync::Arc;
use std::time::Duration;

use completions::{CompletionBackend, EngineBackend, ExecutionId, Namespace, NewExecution, Outcome, Waiter};

/// Starts a report and waits for its outcome, however soon it finishes: the waiter subscribes
/// first, then looks the execution up, so even one that finished before the wait is answered.
pub async fn wait_for_report(
    completions: Arc<dyn CompletionBackend>,
    engine: Arc<dyn EngineBackend>,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let waiter = Waiter::new(completions, engine.clone()).await?; // one subscription, many waits
    let report = ExecutionId::new("report-2024-06")?;
    engine.create_execution(NewExecution::new(report.clone(), Namespace::new("billing")?)).await?;
    engine.complete(&report).await?; // a worker's job: here it finishes before the wait begins
    let done = waiter.wait(&report, Duration::from_secs(30)).await?; // or wait_all(&[a, b, c], ..)
    Ok(done.outcome)
}
// README example 1: end
}
pub use waiting::wait_for_report;

// README example 2: begin
use completions::{CompletionBackend, EngineBackend, ExecutionId, FlowId, Namespace, NewExecution, Outcome};
use completions::{Reason, ScannerFilter};
use futures_util::StreamExt;

/// Runs the flow `extract → transform → load` of namespace `billing`: each step starts the
/// moment the step before it succeeded, and is cancelled if that step failed or was cancelled.
pub async fn run_flow(
    completions: &dyn CompletionBackend,
    engine: &dyn EngineBackend,
) -> Result<(), Box<dyn std::error::Error>> {
    let billing = Namespace::new("billing")?;
    let flow = FlowId::new("invoices-2024-06")?;
    let edges = [("extract", "transform"), ("transform", "load")];
    let id = |step: &str| ExecutionId::new(format!("{flow}/{step}"));

    // 1. Subscribe first: once this returns, every later completion in `billing` is delivered.
    let filter = ScannerFilter::new().with_namespace(billing.clone());
    let mut stream = completions.subscribe_completions_filtered(&filter).await?;

    // 2. Start the root. A worker runs it and reports complete/fail; done inline here.
    engine.create_execution(NewExecution::new(id("extract")?, billing.clone()).with_flow(flow.clone())).await?;
    engine.complete(&id("extract")?).await?;

    // 3. Promote dependents as their parents reach a terminal state.
    let mut finished = 0;
    while let Some(done) = stream.next().await {
        println!("{} {} (cursor {})", done.execution_id(), done.outcome(), done.cursor());
        // Persist done.cursor() to resume after a restart, losing nothing:
        // completions.subscribe_from(StartFrom::After(cursor), &filter)
        for (parent, child) in edges {
            if done.execution_id() != &id(parent)? {
                continue;
            }
            let child = id(child)?;
            engine.create_execution(NewExecution::new(child.clone(), billing.clone()).with_flow(flow.clone())).await?;
            match done.outcome() {
                Outcome::Succeeded => engine.complete(&child).await?, // really: hand it to a worker
                _ => engine.cancel(&child, &Reason::new(format!("{parent} did not succeed"))?).await?,
            }
        }
        finished += 1;
        if finished == 3 {
            break;
        }
    }
    Ok(())
}
// README example 2: end

/// README.md's third block, verbatim between the markers: both examples on the backend a
/// URL opens (here the in-process one).
#[rustfmt::skip] // the text between the markers is README.md's, verbatim
pub async fn run_both() -> Result<Outcome, Box<dyn std::error::Error>> {
// README example 3: begin
use completions::OpenOptions;

// "memory:" runs in-process; or "valkey://127.0.0.1:6379", "postgres://app@db/app", ...
let backend = completions::open("memory:", &OpenOptions::default()).await?;
run_flow(backend.completions().as_ref(), backend.engine().as_ref()).await?;
let outcome = wait_for_report(backend.completions(), backend.engine()).await?;
// README example 3: end
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use completions::{OpenOptions, StartFrom};

    use super::*;

    /// The in-process backend, opened by URL as README.md's third block does.
    async fn open_memory() -> completions::Backend {
        completions::open("memory:", &OpenOptions::default()).await.expect("memory: opens")
    }

    #[tokio::test]
    async fn the_flow_runs_in_order() {
        let backend = open_memory().await;
        let (completions, engine) = (backend.completions(), backend.engine());
        let run = run_flow(completions.as_ref(), engine.as_ref());
        tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("the example finishes")
            .expect("the example succeeds");
        let mut log = completions.subscribe_from(StartFrom::Earliest, &ScannerFilter::new()).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..3 {
            let item = log.next().await.unwrap();
            let done = item.completion().expect("no gap");
            order.push((done.execution_id().to_string(), done.outcome()));
        }
        let steps = ["extract", "transform", "load"].map(|s| (format!("invoices-2024-06/{s}"), Outcome::Succeeded));
        assert_eq!(order, steps);
    }

    #[tokio::test]
    async fn the_wait_answers_a_report_that_finished_first() {
        let backend = open_memory().await;
        let wait = wait_for_report(backend.completions(), backend.engine());
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .expect("the example finishes")
            .expect("the example succeeds");
        assert_eq!(outcome, Outcome::Succeeded);
    }

    #[tokio::test]
    async fn the_third_block_runs_both() {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), run_both())
            .await
            .expect("the example finishes")
            .expect("the example succeeds");
        assert_eq!(outcome, Outcome::Succeeded);
    }

    #[test]
    fn the_readme_shows_this_code() {
        let source = include_str!("readme_example.rs");
        let readme = include_str!("../../README.md");
        // The first two blocks compile as they are; the third is a function body (`ignore`).
        for (n, fence, nth) in [(1, "```rust\n", 1), (2, "```rust\n", 2), (3, "```rust,ignore\n", 1)] {
            let marker = format!("// README example {n}: begin\n");
            let begin = source.find(&marker).expect("begin marker") + marker.len();
            let end = source.find(&format!("// README example {n}: end")).expect("end marker");
            let block = readme.split(fence).nth(nth).and_then(|b| b.split("```").next()).expect("a rust block");
            assert_eq!(block, &source[begin..end], "README.md's example {n} must match xtask/src/readme_example.rs");
        }
    }
}
