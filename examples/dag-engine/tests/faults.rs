//! The engine on the in-process backend, behind a double of its stream that loses or
//! repeats the completion of one execution: the engine must notice either, loudly. (The runs
//! on real servers, with killed connections and restarts, are xtask's demo tests.)

use std::time::Duration;

use completions::{
    CompletionBackend, CompletionStream, EngineBackend, EngineError, ExecutionId, ExecutionInfo, NewExecution, Reason,
    ResumableStream, ScannerFilter, StartFrom,
};
use dag_engine::dag::Dag;
use dag_engine::engine::{self, EngineOptions, Progress, RunReport};
use dag_engine::store::Builtin;

/// Ignores what the engine reports.
struct Quiet;

impl Progress for Quiet {
    fn advance(&self, _finished: usize) {}
    fn note(&self, _line: &str) {}
}

/// The in-process backend, with its resumable stream losing or repeating the completion of
/// one execution: the engine must notice either.
struct Faulty {
    inner: completions::memory::MemoryBackend,
    victim: ExecutionId,
    repeat: bool,
}

#[async_trait::async_trait]
impl CompletionBackend for Faulty {
    fn backend_name(&self) -> &'static str {
        "faulty"
    }

    async fn subscribe_completions(&self) -> Result<CompletionStream, EngineError> {
        self.inner.subscribe_completions().await
    }

    async fn subscribe_completions_filtered(&self, filter: &ScannerFilter) -> Result<CompletionStream, EngineError> {
        self.inner.subscribe_completions_filtered(filter).await
    }

    async fn subscribe_from(&self, from: StartFrom, filter: &ScannerFilter) -> Result<ResumableStream, EngineError> {
        use futures_util::StreamExt;
        let (victim, repeat) = (self.victim.clone(), self.repeat);
        let stream = self.inner.subscribe_from(from, filter).await?.flat_map(move |item| {
            let hit = item.completion().is_some_and(|c| c.execution_id() == &victim);
            let copies = if !hit {
                1
            } else if repeat {
                2
            } else {
                0
            };
            futures_util::stream::iter(std::iter::repeat_n(item, copies))
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait::async_trait]
impl EngineBackend for Faulty {
    async fn create_execution(&self, e: NewExecution) -> Result<(), EngineError> {
        self.inner.create_execution(e).await
    }
    async fn complete(&self, id: &ExecutionId) -> Result<(), EngineError> {
        self.inner.complete(id).await
    }
    async fn fail(&self, id: &ExecutionId, r: &Reason) -> Result<(), EngineError> {
        self.inner.fail(id, r).await
    }
    async fn cancel(&self, id: &ExecutionId, r: &Reason) -> Result<(), EngineError> {
        self.inner.cancel(id, r).await
    }
    async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        self.inner.describe(id).await
    }
}

async fn run_faulty(repeat: bool) -> Result<RunReport, String> {
    let dag = Dag::generate(60, 21).unwrap();
    // A task with children, so that losing or repeating it matters to the promotion loop.
    let victim = dag.children.iter().position(|c| !c.is_empty()).expect("a task with children");
    let backend = std::sync::Arc::new(Faulty {
        inner: completions::memory::MemoryBackend::new(),
        victim: dag.tasks[victim].id.clone(),
        repeat,
    });
    let mut options = EngineOptions::new().unwrap();
    options.stall = Duration::from_secs(1);
    engine::run(backend.clone(), std::sync::Arc::new(Builtin::new(backend)), &dag, options, &Quiet).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_completion_fails_the_run_loudly() {
    let error = run_faulty(false).await.expect_err("a run that lost a completion passed");
    assert!(error.contains("no completion for") && error.contains("lost or stuck"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_completion_is_reported_as_a_problem() {
    let report = run_faulty(true).await.expect("the run itself finishes");
    assert!(report.problems.iter().any(|p| p.contains("delivered 2 times")), "{:?}", report.problems);
}
