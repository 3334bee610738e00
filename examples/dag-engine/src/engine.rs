//! A small workflow engine built only on the public API: [`CompletionBackend`] to learn of
//! completions, a [`TaskStore`] to start tasks and write their outcomes (the backend's own
//! executions through [`EngineBackend`](completions::EngineBackend), or a task table of
//! the engine's own that emits each completion in the same atomic step).
//!
//! How it runs a [`Dag`]:
//! - It subscribes first (`subscribe_from(StartFrom::Now)`, live on return), so no
//!   completion of the run can be missed, and keeps the cursor of the last completion it
//!   handled (what a real engine persists to resume after its own restart).
//! - It promotes the roots, then every task the moment the completion of its last parent
//!   arrives, by handing it to a worker (one tokio task each; the loop itself never waits
//!   on the server). The worker starts the task in the store; if all parents succeeded it sleeps
//!   for the task's work time and writes its planned outcome, else it cancels it, which is
//!   itself a completion that propagates downstream. Every write is retried while it fails with a transient error
//!   ([`EngineError::is_transient`]); a retry that finds its own earlier attempt committed
//!   (`AlreadyExists`, or `AlreadyTerminal` with the same outcome) counts as done.
//! - At the given fractions of finished tasks it runs the [`Fault`]s (kill the backend's
//!   connections, restart the server) in the background, while the engine goes on.
//! - At the end it checks, and reports as [`RunReport::problems`]: every task promoted
//!   exactly once, every completion seen exactly once, no gap, every execution terminal
//!   with the outcome the DAG implies (in the store), and a namespace-filtered stream that
//!   saw exactly its namespace's completions and nothing else.
//!
//! Limits: one engine process, whole DAG in memory; a stall (no completion for
//! [`EngineOptions::stall`]) ends the run with an error rather than waiting forever.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use completions::backoff::{Backoff, Retry};
use completions::{
    CompletionBackend, CounterSnapshot, Cursor, EngineError, ExecutionState, Namespace, NewExecution, Outcome, Reason,
    ScannerFilter, StartFrom, StreamItem,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::dag::{Dag, Plan};
use crate::store::TaskStore;

/// How long a write keeps being retried while it fails with transient errors: longer than
/// any restart of the demo's servers takes.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// First pause between retries; it doubles up to [`RETRY_MAX_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const RETRY_MAX_PAUSE: Duration = Duration::from_millis(500);

/// A future a fault returns: a line saying what it did, or why it could not.
pub type FaultFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Something done to the backend's server while the engine runs.
pub struct Fault {
    /// When: after this fraction of the tasks finished (0.0 to 1.0).
    pub at: f64,
    /// What it does.
    pub action: Box<dyn FnOnce() -> FaultFuture + Send>,
}

/// What the engine tells about its progress (a progress bar, plain lines, or nothing).
pub trait Progress: Send + Sync {
    /// `finished` of the tasks have their completion.
    fn advance(&self, finished: usize);
    /// Something worth a line of its own happened (a fault, a reconnect).
    fn note(&self, line: &str);
}

/// How the engine runs.
pub struct EngineOptions {
    /// Faults to inject, in the order of their `at`.
    pub faults: Vec<Fault>,
    /// Give up when no completion arrives for this long. Default 20 s.
    pub stall: Duration,
    /// The namespace a second, filtered stream watches (it must see exactly that
    /// namespace's completions). Default `search`.
    pub watch: Namespace,
}

impl EngineOptions {
    /// No faults, the defaults above.
    pub fn new() -> Result<Self, EngineError> {
        Ok(Self { faults: Vec::new(), stall: Duration::from_secs(20), watch: Namespace::new("search")? })
    }
}

/// What happened in one run, for the summary.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Tasks in the DAG.
    pub tasks: usize,
    /// Completions the engine's stream delivered (duplicates included).
    pub completions: usize,
    /// Tasks per final outcome: succeeded, failed, cancelled.
    pub outcomes: [usize; 3],
    /// Per promotion: from the start of the terminal write of the parent that made the
    /// task ready (its last attempt) to the task's start (`create_execution`, or its own insert) returning.
    pub hops: Vec<Duration>,
    /// Per terminal write: how long its call (last attempt) took to return.
    pub writes: Vec<Duration>,
    /// Per completion: from the start of its terminal write (last attempt) to its arrival
    /// on the engine's stream.
    pub deliveries: Vec<Duration>,
    /// Writes that failed with a transient error and were tried again.
    pub write_retries: u64,
    /// Gap items the engine's stream yielded.
    pub gap_items: u64,
    /// The backend's counters after the run.
    pub counters: CounterSnapshot,
    /// One line per fault that ran.
    pub faults: Vec<String>,
    /// The cursor of the last completion handled.
    pub last_cursor: Option<Cursor>,
    /// Completions of the watched namespace the filtered stream saw, and of other namespaces.
    pub filtered: (usize, usize),
    /// Everything that contradicts "every task promoted exactly once, nothing lost".
    pub problems: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// What a worker writes.
enum Action {
    Run(Plan, Duration),
    Cancel(Reason),
}

/// State shared with the workers.
struct Shared {
    store: Arc<dyn TaskStore>,
    /// When each task's terminal write (its latest attempt) started.
    write_started: Mutex<Vec<Option<Instant>>>,
    /// Hop latencies, pushed by the workers.
    hops: Mutex<Vec<Duration>>,
    /// Terminal write latencies (last attempt), pushed by the workers.
    writes: Mutex<Vec<Duration>>,
    retries: AtomicU64,
}

/// Runs `dag` to the end on one backend: `completions` delivers the completions that
/// `store`'s writes make (the same backend, or a store that emits through it).
pub async fn run(
    completions: Arc<dyn CompletionBackend>,
    store: Arc<dyn TaskStore>,
    dag: &Dag,
    mut options: EngineOptions,
    progress: &dyn Progress,
) -> Result<RunReport, String> {
    let started = Instant::now();
    let n = dag.tasks.len();
    let name = completions.backend_name();
    let index: HashMap<_, _> = dag.tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();

    // Subscribe before the first write: both calls return only once live.
    let mut stream = completions
        .subscribe_from(StartFrom::Now, &ScannerFilter::new())
        .await
        .map_err(|e| format!("{name}: subscribing failed: {e}"))?;
    let watched = dag.tasks.iter().filter(|t| t.namespace == options.watch).count();
    let filter = ScannerFilter::new().with_namespace(options.watch.clone());
    let filtered = completions
        .subscribe_completions_filtered(&filter)
        .await
        .map_err(|e| format!("{name}: subscribing to namespace {} failed: {e}", options.watch))?;
    let watcher = tokio::spawn(watch(filtered, options.watch.clone(), watched, options.stall));

    let shared = Arc::new(Shared {
        store,
        write_started: Mutex::new(vec![None; n]),
        hops: Mutex::new(Vec::with_capacity(n)),
        writes: Mutex::new(Vec::with_capacity(n)),
        retries: AtomicU64::new(0),
    });
    let (worker_errors, mut worker_failed) = mpsc::unbounded_channel::<String>();
    let mut report = RunReport { tasks: n, ..RunReport::default() };
    let mut seen = vec![0u32; n];
    let mut promoted = vec![0u32; n];
    let mut waiting: Vec<usize> = dag.tasks.iter().map(|t| t.parents.len()).collect();
    let mut blocked_by: Vec<Option<(usize, Outcome)>> = vec![None; n];
    let mut outcome_of: Vec<Option<Outcome>> = vec![None; n];
    let mut finished = 0usize;

    for root in (0..n).filter(|&i| dag.tasks[i].parents.is_empty()) {
        promote(&shared, dag, root, None, &worker_errors, &mut promoted)?;
    }

    options.faults.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut faults = options.faults.into_iter().peekable();
    let mut running_fault: Option<tokio::task::JoinHandle<Result<String, String>>> = None;

    while finished < n {
        let item = tokio::select! {
            item = tokio::time::timeout(options.stall, stream.next()) => item,
            Some(error) = worker_failed.recv() => return Err(error),
        };
        let item = match item {
            Ok(Some(item)) => item,
            Ok(None) => return Err(format!("{name}: the completion stream ended after {finished} of {n} tasks")),
            Err(_) => {
                return Err(format!(
                    "{name}: no completion for {:?}; {finished} of {n} tasks finished (the rest is lost or stuck)",
                    options.stall
                ));
            }
        };
        let done = match item {
            StreamItem::Completion(done) => done,
            StreamItem::Gap(gap) => {
                report.gap_items += 1;
                report.problems.push(format!("the stream reported a gap: {gap:?}"));
                continue;
            }
            other => {
                report.problems.push(format!("unexpected stream item {other:?}"));
                continue;
            }
        };
        let arrived = Instant::now();
        report.completions += 1;
        let Some(&task) = index.get(done.execution_id()) else {
            report.problems.push(format!("completion of {}, which is not a task of this run", done.execution_id()));
            continue;
        };
        report.last_cursor = Some(done.cursor().clone());
        seen[task] += 1;
        if seen[task] > 1 {
            report.problems.push(format!("completion of {} delivered {} times", done.execution_id(), seen[task]));
            continue;
        }
        finished += 1;
        outcome_of[task] = Some(done.outcome());
        if let Some(at) = shared.write_started.lock().unwrap_or_else(|e| e.into_inner())[task] {
            report.deliveries.push(arrived.saturating_duration_since(at));
        }
        for &child in &dag.children[task] {
            if done.outcome() != Outcome::Succeeded && blocked_by[child].is_none() {
                blocked_by[child] = Some((task, done.outcome()));
            }
            waiting[child] -= 1;
            if waiting[child] == 0 {
                promote(&shared, dag, child, Some((task, blocked_by[child])), &worker_errors, &mut promoted)?;
            }
        }
        progress.advance(finished);

        if let Some(handle) = running_fault.take_if(|h| h.is_finished()) {
            report.faults.push(fault_result(name, handle, progress).await?);
        }
        if running_fault.is_none() && faults.peek().is_some_and(|f| finished as f64 >= f.at * n as f64) {
            let fault = faults.next().expect("peeked");
            running_fault = Some(tokio::spawn((fault.action)()));
        }
    }
    if let Some(handle) = running_fault.take() {
        report.faults.push(fault_result(name, handle, progress).await?);
    }
    report.write_retries = shared.retries.load(Ordering::Relaxed);
    report.hops = std::mem::take(&mut *shared.hops.lock().unwrap_or_else(|e| e.into_inner()));
    report.writes = std::mem::take(&mut *shared.writes.lock().unwrap_or_else(|e| e.into_inner()));

    // A duplicate would arrive after the last first delivery: give it a moment to show up.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        report.problems.push(format!("an extra stream item after every task finished: {item:?}"));
    }
    drop(stream);
    report.filtered = watcher.await.map_err(|e| format!("{name}: the filtered watcher panicked: {e}"))?;
    report.counters = completions.counters();
    report.elapsed = started.elapsed();
    check(dag, &shared, &seen, &promoted, &outcome_of, watched, &mut report).await;
    Ok(report)
}

/// Promotes `task`: hands it to a worker that creates its execution and then runs it, or
/// cancels it when `trigger` says an upstream task did not succeed. The engine loop never
/// waits on the server here, so one slow write cannot hold up other promotions.
fn promote(
    shared: &Arc<Shared>,
    dag: &Dag,
    task: usize,
    trigger: Option<(usize, Option<(usize, Outcome)>)>,
    errors: &mpsc::UnboundedSender<String>,
    promoted: &mut [u32],
) -> Result<(), String> {
    let t = &dag.tasks[task];
    promoted[task] += 1;
    let action = match trigger.and_then(|(_, blocked)| blocked) {
        None => Action::Run(t.plan, t.work),
        Some((parent, outcome)) => Action::Cancel(
            Reason::new(format!("upstream task {} {outcome}", dag.tasks[parent].id))
                .map_err(|e| format!("building the cancel reason of {}: {e}", t.id))?,
        ),
    };
    let new = NewExecution::new(t.id.clone(), t.namespace.clone()).with_flow(t.flow.clone());
    let parent = trigger.map(|(parent, _)| parent);
    let (shared, errors) = (shared.clone(), errors.clone());
    tokio::spawn(async move {
        let id = new.id.clone();
        if let Err(e) = work(&shared, task, parent, new, action).await {
            let _ = errors.send(format!("the worker of {id} gave up: {e}"));
        }
    });
    Ok(())
}

/// A worker: creates the execution (the task has started: the hop from `parent`'s write
/// ends here), works, then writes the task's outcome; every write retries transient failures.
async fn work(
    shared: &Shared,
    task: usize,
    parent: Option<usize>,
    new: NewExecution,
    action: Action,
) -> Result<(), EngineError> {
    retry(&shared.retries, None, || shared.store.start(&new)).await?;
    if let Some(parent) = parent {
        let at = shared.write_started.lock().unwrap_or_else(|e| e.into_inner())[parent];
        if let Some(at) = at {
            shared.hops.lock().unwrap_or_else(|e| e.into_inner()).push(at.elapsed());
        }
    }
    let (outcome, reason) = match action {
        Action::Run(plan, time) => {
            tokio::time::sleep(time).await;
            let reason = match plan {
                Plan::Succeed => None,
                Plan::Fail => Some(Reason::new("worker exited with code 137")?),
                Plan::Cancel => Some(Reason::new("cancelled by an operator")?),
            };
            (plan.outcome(), reason)
        }
        Action::Cancel(reason) => (Outcome::Cancelled, Some(reason)),
    };
    let mut last_attempt = Instant::now();
    retry(&shared.retries, Some(outcome), || {
        last_attempt = Instant::now();
        shared.write_started.lock().unwrap_or_else(|e| e.into_inner())[task] = Some(last_attempt);
        shared.store.finish(&new, outcome, reason.as_ref())
    })
    .await?;
    shared.writes.lock().unwrap_or_else(|e| e.into_inner()).push(last_attempt.elapsed());
    Ok(())
}

/// Runs `op` until it succeeds, fails with a non-transient error, or [`RETRY_FOR`] passed
/// (core's [`Retry`], on tokio's clock, so that tests can pause it).
/// After a transient failure the earlier attempt may have committed with its reply lost:
/// `AlreadyExists`, or `AlreadyTerminal` with the `outcome` we were writing, then means done.
async fn retry<F, Fut>(retries: &AtomicU64, outcome: Option<Outcome>, mut op: F) -> Result<(), EngineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), EngineError>>,
{
    Retry::new(Backoff::new(RETRY_PAUSE, RETRY_MAX_PAUSE))
        .within(RETRY_FOR)
        .run(EngineError::is_transient, |attempt| {
            let retried = attempt > 1;
            if retried {
                retries.fetch_add(1, Ordering::Relaxed);
            }
            let answer = op();
            async move {
                match answer.await {
                    Err(EngineError::AlreadyExists(_)) if retried && outcome.is_none() => Ok(()),
                    Err(EngineError::AlreadyTerminal { outcome: first, .. }) if retried && Some(first) == outcome => {
                        Ok(())
                    }
                    answer => answer,
                }
            }
        })
        .await
}

/// Counts what a namespace-filtered stream yields until it has `expected` events of that
/// namespace (or nothing comes for `stall`): (of the namespace, of others).
async fn watch(
    mut stream: completions::CompletionStream,
    namespace: Namespace,
    expected: usize,
    stall: Duration,
) -> (usize, usize) {
    let (mut own, mut foreign) = (0, 0);
    while own < expected {
        match tokio::time::timeout(stall, stream.next()).await {
            Ok(Some(done)) if done.namespace() == &namespace => own += 1,
            Ok(Some(_)) => foreign += 1,
            _ => break,
        }
    }
    (own, foreign)
}

async fn fault_result(
    name: &str,
    handle: tokio::task::JoinHandle<Result<String, String>>,
    progress: &dyn Progress,
) -> Result<String, String> {
    let line = handle.await.map_err(|e| format!("{name}: a fault panicked: {e}"))??;
    progress.note(&line);
    Ok(line)
}

/// The final checks; each failure becomes a line of `report.problems`.
async fn check(
    dag: &Dag,
    shared: &Shared,
    seen: &[u32],
    promoted: &[u32],
    outcome_of: &[Option<Outcome>],
    watched: usize,
    report: &mut RunReport,
) {
    let expected = dag.expected_outcomes();
    let mut bad = Vec::new();
    for (i, task) in dag.tasks.iter().enumerate() {
        if promoted[i] != 1 {
            bad.push(format!("{} promoted {} times", task.id, promoted[i]));
        }
        if seen[i] != 1 {
            bad.push(format!("completion of {} seen {} times", task.id, seen[i]));
        }
        if let Some(outcome) = outcome_of[i] {
            report.outcomes[match outcome {
                Outcome::Succeeded => 0,
                Outcome::Failed => 1,
                _ => 2,
            }] += 1;
            if outcome != expected[i] {
                bad.push(format!("{} ended {outcome}, the DAG implies {}", task.id, expected[i]));
            }
        }
        match shared.store.state(&task.id).await {
            Ok(state) if state == ExecutionState::Terminal(expected[i]) => {}
            Ok(state) => bad.push(format!("{} is {state:?} in the store, expected {}", task.id, expected[i])),
            Err(e) => bad.push(format!("looking up {}: {e}", task.id)),
        }
    }
    if report.counters.gaps > 0 {
        bad.push(format!("the backend counted {} gaps", report.counters.gaps));
    }
    let (own, foreign) = report.filtered;
    if own != watched || foreign != 0 {
        bad.push(format!(
            "the stream filtered to one namespace saw {own} of its {watched} completions and {foreign} of others"
        ));
    }
    report.problems.extend(bad);
}

#[cfg(test)]
mod tests {
    use super::*;
    use completions::ExecutionId;

    fn transient() -> EngineError {
        EngineError::transport("test", "complete", "connection reset")
    }

    fn already(outcome: Outcome) -> EngineError {
        EngineError::AlreadyTerminal { execution_id: ExecutionId::new("t").unwrap(), outcome }
    }

    /// Runs `retry` over `answers`, one per attempt; returns its result and the retries counted.
    async fn attempts(
        outcome: Option<Outcome>,
        answers: Vec<Result<(), EngineError>>,
    ) -> (Result<(), EngineError>, u64) {
        let retries = AtomicU64::new(0);
        let answers = Mutex::new(answers.into_iter());
        let result = retry(&retries, outcome, || {
            let next = answers.lock().unwrap().next().expect("more attempts than answers");
            async move { next }
        })
        .await;
        (result, retries.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let (result, retries) =
            attempts(Some(Outcome::Succeeded), vec![Err(transient()), Err(transient()), Ok(())]).await;
        assert!(result.is_ok());
        assert_eq!(retries, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_finds_its_own_write_is_done() {
        let (result, _) = attempts(Some(Outcome::Failed), vec![Err(transient()), Err(already(Outcome::Failed))]).await;
        assert!(result.is_ok(), "{result:?}");
        let (result, _) =
            attempts(None, vec![Err(transient()), Err(EngineError::AlreadyExists(ExecutionId::new("t").unwrap()))])
                .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_retried_nor_hidden() {
        // Terminal already on the first attempt: someone else wrote it.
        let (result, retries) = attempts(Some(Outcome::Failed), vec![Err(already(Outcome::Failed))]).await;
        assert!(matches!(result, Err(EngineError::AlreadyTerminal { .. })), "{result:?}");
        assert_eq!(retries, 0);
        // After a retry, another outcome than ours is still an error.
        let (result, _) =
            attempts(Some(Outcome::Failed), vec![Err(transient()), Err(already(Outcome::Cancelled))]).await;
        assert!(matches!(result, Err(EngineError::AlreadyTerminal { .. })), "{result:?}");
        let bad = EngineError::invalid("namespace", "", "must not be empty");
        let (result, retries) = attempts(None, vec![Err(bad)]).await;
        assert!(matches!(result, Err(EngineError::InvalidInput { .. })), "{result:?}");
        assert_eq!(retries, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_give_up_after_the_retry_window() {
        let answers = (0..1000).map(|_| Err(transient())).collect();
        let (result, retries) = attempts(Some(Outcome::Succeeded), answers).await;
        assert!(matches!(result, Err(EngineError::Transport { .. })), "{result:?}");
        assert!(retries > 10, "{retries}");
    }
}
