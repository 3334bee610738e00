//! The example engine shown in README.md, compiled and run here so the README cannot drift
//! from the API: a test checks that the README's first `rust` block is the text between the
//! markers below, verbatim.

// README example: begin
use completion_core::{CompletionBackend, EngineBackend, ExecutionId, FlowId, Namespace, NewExecution, Outcome};
use completion_core::{Reason, ScannerFilter};
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
// README example: end

#[cfg(test)]
mod tests {
    use completion_core::StartFrom;
    use completion_memory::MemoryBackend;

    use super::*;

    #[tokio::test]
    async fn the_flow_runs_in_order() {
        let backend = MemoryBackend::new();
        tokio::time::timeout(std::time::Duration::from_secs(30), run_flow(&backend, &backend))
            .await
            .expect("the example finishes")
            .expect("the example succeeds");
        let mut log = backend.subscribe_from(StartFrom::Earliest, &ScannerFilter::new()).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..3 {
            let item = log.next().await.unwrap();
            let done = item.completion().expect("no gap");
            order.push((done.execution_id().to_string(), done.outcome()));
        }
        let steps = ["extract", "transform", "load"].map(|s| (format!("invoices-2024-06/{s}"), Outcome::Succeeded));
        assert_eq!(order, steps);
    }

    #[test]
    fn the_readme_shows_this_code() {
        let source = include_str!("readme_example.rs");
        let marker = "// README example: begin\n";
        let begin = source.find(marker).expect("begin marker") + marker.len();
        let end = source.find("// README example: end").expect("end marker");
        let readme = include_str!("../../README.md");
        let block = readme.split("```rust\n").nth(1).and_then(|b| b.split("```").next()).expect("a rust block");
        assert_eq!(block, &source[begin..end], "README.md's example must match xtask/src/readme_example.rs");
    }
}
