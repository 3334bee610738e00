//! Awaiting an execution's outcome without races: [`Waiter`].
//!
//! A stream alone cannot answer "tell me when X is terminal": an execution that finished
//! before the subscription began is never on it. A [`Waiter`] closes that gap, built only on
//! the two traits:
//!
//! 1. it subscribes first ([`CompletionBackend::subscribe_from`] from
//!    [`StartFrom::Now`]: live once the call returns, and resumable from its own cursor, so a
//!    reconnect or a server restart costs latency, never a wake-up);
//! 2. a wait registers its id in the waiter's table, *then* looks the execution up
//!    ([`CompletionLookup`]: [`EngineBackend::describe`] for the built-in write side);
//! 3. whichever answers first, the lookup or the stream, resolves it.
//!
//! No completion can slip between the two: one committed before the registration is found
//! by the lookup that follows it; one committed after the subscription went live reaches
//! the stream, which finds the registration (it is made before the lookup, and the stream
//! only ever delivers what committed after it went live). A [`StreamItem::Gap`] (the waiter
//! fell behind retention) makes it look every pending id up again.
//!
//! One subscription serves every wait of a waiter: a table from execution id to its waiters,
//! not one stream per wait. A wait that is dropped (its future dropped, a `select!` that went
//! elsewhere) removes its entry. Memory: one table entry per id waited on, plus one channel
//! receiver per wait.
//!
//! An id that does not exist: with the built-in lookup ([`EngineBackend::describe`]) the
//! wait fails at once with [`WaitError::NotFound`] (it does not hang until its deadline).
//! With a lookup that only knows completions (a log lookup for engines that keep their own
//! state), an id without a completion is pending, and the wait ends at its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::{Backoff, Retry};
use crate::{
    CompletionBackend, EngineBackend, EngineError, ExecutionId, ExecutionState, Outcome, ScannerFilter, StartFrom,
    StreamItem,
};

/// How an execution ended, as a [`Waiter`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finished {
    /// The execution.
    pub execution_id: ExecutionId,
    /// How it ended.
    pub outcome: Outcome,
    /// When, ms since the Unix epoch, as the backend recorded it.
    pub completed_at_ms: u64,
}

impl Finished {
    /// Builds one. Meant for [`CompletionLookup`] implementations.
    pub fn new(execution_id: ExecutionId, outcome: Outcome, completed_at_ms: u64) -> Self {
        Self { execution_id, outcome, completed_at_ms }
    }
}

/// What a [`CompletionLookup`] knows of one execution.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Looked {
    /// It is terminal.
    Finished(Finished),
    /// It exists (or may still appear) and is not terminal yet.
    Pending,
    /// It does not exist: a wait for it fails with [`WaitError::NotFound`].
    Unknown,
}

/// Looks one execution up, for a [`Waiter`]. Implemented for every [`EngineBackend`]
/// through [`Describe`]; engines that keep their own state look their completions up
/// (`PostgresBackend` implements it over its log).
#[async_trait]
pub trait CompletionLookup: Send + Sync + 'static {
    /// Where `id` stands now.
    async fn look_up(&self, id: &ExecutionId) -> Result<Looked, EngineError>;
}

/// [`CompletionLookup`] through [`EngineBackend::describe`].
pub struct Describe(pub Arc<dyn EngineBackend>);

#[async_trait]
impl CompletionLookup for Describe {
    async fn look_up(&self, id: &ExecutionId) -> Result<Looked, EngineError> {
        match self.0.describe(id).await {
            Ok(info) => Ok(match info.state {
                ExecutionState::Terminal(outcome) => {
                    Looked::Finished(Finished::new(id.clone(), outcome, info.completed_at_ms.unwrap_or_default()))
                }
                _ => Looked::Pending,
            }),
            Err(EngineError::NotFound(_)) => Ok(Looked::Unknown),
            Err(e) => Err(e),
        }
    }
}

/// Why a wait ended without an outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The deadline passed first. `pending` lists the executions that had not finished
    /// (for [`Waiter::wait_all`]; one id for [`Waiter::wait`]).
    #[error("timed out after {after:?} waiting for {}", names(pending))]
    TimedOut {
        /// How long the wait waited.
        after: Duration,
        /// The executions still not terminal.
        pending: Vec<ExecutionId>,
    },
    /// The execution does not exist (see the [module docs](self)).
    #[error("execution {0} does not exist")]
    NotFound(ExecutionId),
    /// The backend failed: the lookup, or the waiter's subscription ended.
    #[error(transparent)]
    Backend(#[from] EngineError),
}

fn names(ids: &[ExecutionId]) -> String {
    let shown: Vec<&str> = ids.iter().take(5).map(ExecutionId::as_str).collect();
    let more = ids.len().saturating_sub(shown.len());
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// What a wait's channel carries.
#[derive(Clone, Debug)]
enum Slot {
    Waiting,
    Done(Finished),
    /// The waiter's subscription ended: no answer will come.
    Failed(String),
}

/// The waiters of one id.
struct Entry {
    tx: watch::Sender<Slot>,
    waits: usize,
}

#[derive(Default)]
struct Table {
    entries: HashMap<ExecutionId, Entry>,
    /// Set when the subscription ended: later waits fail at once.
    failed: Option<String>,
}

struct Shared {
    table: Mutex<Table>,
    lookup: Arc<dyn CompletionLookup>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table usable: every update is one step.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn resolve(&self, finished: Finished) {
        if let Some(entry) = self.table().entries.get(&finished.execution_id) {
            entry.tx.send_replace(Slot::Done(finished));
        }
    }

    /// Fails the waits of `id` that have no answer yet.
    fn fail(&self, id: &ExecutionId, why: String) {
        if let Some(entry) = self.table().entries.get(id) {
            entry.tx.send_if_modified(|slot| match slot {
                Slot::Done(_) => false,
                _ => {
                    *slot = Slot::Failed(why);
                    true
                }
            });
        }
    }

    fn pending_ids(&self) -> Vec<ExecutionId> {
        self.table().entries.keys().cloned().collect()
    }
}

/// Awaits executions' outcomes over one shared subscription (see the [module docs](self)).
///
/// ```no_run
/// # async fn demo(
/// #     completions: std::sync::Arc<dyn completion_core::CompletionBackend>,
/// #     engine: std::sync::Arc<dyn completion_core::EngineBackend>,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use completion_core::{ExecutionId, Waiter};
///
/// let waiter = Waiter::new(completions, engine).await?;
/// let done = waiter.wait(&ExecutionId::new("job-1")?, Duration::from_secs(30)).await?;
/// println!("{} {}", done.execution_id, done.outcome);
/// # Ok(())
/// # }
/// ```
pub struct Waiter {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Waiter {
    /// A waiter that looks executions up with [`EngineBackend::describe`]. Returns once its
    /// subscription is live. Spawns its stream task on the current Tokio runtime.
    pub async fn new(
        completions: Arc<dyn CompletionBackend>,
        engine: Arc<dyn EngineBackend>,
    ) -> Result<Self, EngineError> {
        Self::with_lookup(completions, Arc::new(Describe(engine))).await
    }

    /// A waiter with a lookup of its own (an engine that keeps its own state).
    pub async fn with_lookup(
        completions: Arc<dyn CompletionBackend>,
        lookup: Arc<dyn CompletionLookup>,
    ) -> Result<Self, EngineError> {
        let mut stream = completions.subscribe_from(StartFrom::Now, &ScannerFilter::new()).await?;
        let shared = Arc::new(Shared { table: Mutex::default(), lookup });
        let state = shared.clone();
        let task = tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(StreamItem::Completion(c)) => {
                        state.resolve(Finished::new(c.execution_id().clone(), c.outcome(), c.completed_at_ms()))
                    }
                    Some(StreamItem::Gap(gap)) => {
                        // Completions were trimmed before this stream read them: whichever of
                        // them were waited on, the lookup tells.
                        tracing::debug!(?gap, "the waiter's stream fell behind retention; looking pending ids up");
                        for id in state.pending_ids() {
                            match look_up(&*state.lookup, &id).await {
                                Ok(Looked::Finished(finished)) => state.resolve(finished),
                                Ok(_) => {}
                                Err(e) => {
                                    // Its completion may be among the trimmed ones: no answer
                                    // would come, so its waits fail now instead of at their deadline.
                                    tracing::warn!(%id, error = %e, "looking a pending id up after a gap failed");
                                    state.fail(
                                        &id,
                                        format!("looking {id} up after the waiter fell behind retention failed: {e}"),
                                    );
                                }
                            }
                        }
                    }
                    None => break "the waiter's subscription ended (its backend closed)".to_string(),
                }
            };
            let mut table = state.table();
            for entry in table.entries.values() {
                // An answer already given stays given.
                entry.tx.send_if_modified(|slot| match slot {
                    Slot::Done(_) => false,
                    _ => {
                        *slot = Slot::Failed(why.clone());
                        true
                    }
                });
            }
            table.failed = Some(why);
        });
        Ok(Self { shared, task })
    }

    /// How many ids have at least one wait pending.
    pub fn pending(&self) -> usize {
        self.shared.table().entries.len()
    }

    /// Waits until `id` is terminal, for at most `timeout` (`Duration::MAX`: no deadline).
    pub async fn wait(&self, id: &ExecutionId, timeout: Duration) -> Result<Finished, WaitError> {
        let deadline = deadline_after(timeout);
        let mut registered = self.register(id)?;
        match tokio::time::timeout_at(deadline, registered.resolve(&*self.shared.lookup)).await {
            Ok(result) => result,
            Err(_) => Err(WaitError::TimedOut { after: timeout, pending: vec![id.clone()] }),
        }
    }

    /// Waits until every one of `ids` is terminal, for at most `timeout` in all; answers in
    /// the order of `ids` (an id given twice is answered twice). On timeout the error lists
    /// the ids still pending.
    pub async fn wait_all(&self, ids: &[ExecutionId], timeout: Duration) -> Result<Vec<Finished>, WaitError> {
        let deadline = deadline_after(timeout);
        let mut waits = ids.iter().map(|id| self.register(id)).collect::<Result<Vec<_>, _>>()?;
        let lookup = &*self.shared.lookup;
        let all = futures_util::future::try_join_all(waits.iter_mut().map(|w| w.resolve(lookup)));
        match tokio::time::timeout_at(deadline, all).await {
            Ok(result) => result,
            Err(_) => {
                let pending = waits.iter().filter(|w| !w.is_done()).map(|w| w.id.clone()).collect();
                Err(WaitError::TimedOut { after: timeout, pending })
            }
        }
    }

    /// Adds a wait for `id` to the table (before any lookup: see the module docs).
    fn register(&self, id: &ExecutionId) -> Result<Registration, WaitError> {
        let mut table = self.shared.table();
        if let Some(why) = &table.failed {
            return Err(WaitError::Backend(EngineError::unavailable("wait", why.clone())));
        }
        let entry = table
            .entries
            .entry(id.clone())
            .or_insert_with(|| Entry { tx: watch::Sender::new(Slot::Waiting), waits: 0 });
        entry.waits += 1;
        let rx = entry.tx.subscribe();
        Ok(Registration { id: id.clone(), rx, shared: self.shared.clone(), done: false })
    }
}

/// `timeout` from now; a timeout too large for the clock (`Duration::MAX`: no deadline) is
/// about thirty years.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// One wait's place in the table; removes it when dropped.
struct Registration {
    id: ExecutionId,
    rx: watch::Receiver<Slot>,
    shared: Arc<Shared>,
    done: bool,
}

impl Registration {
    fn is_done(&self) -> bool {
        self.done || matches!(&*self.rx.borrow(), Slot::Done(_))
    }

    /// Looks the id up, then waits for the stream if it is still pending.
    async fn resolve(&mut self, lookup: &dyn CompletionLookup) -> Result<Finished, WaitError> {
        match look_up(lookup, &self.id).await? {
            Looked::Finished(finished) => {
                self.done = true;
                return Ok(finished);
            }
            Looked::Unknown => {
                // Created and finished between the lookup and now? The stream may know.
                if let Slot::Done(finished) = &*self.rx.borrow() {
                    self.done = true;
                    return Ok(finished.clone());
                }
                return Err(WaitError::NotFound(self.id.clone()));
            }
            Looked::Pending => {}
        }
        loop {
            match &*self.rx.borrow_and_update() {
                Slot::Done(finished) => {
                    self.done = true;
                    return Ok(finished.clone());
                }
                Slot::Failed(why) => return Err(WaitError::Backend(EngineError::unavailable("wait", why.clone()))),
                Slot::Waiting => {}
            }
            if self.rx.changed().await.is_err() {
                return Err(WaitError::Backend(EngineError::unavailable("wait", "the waiter was dropped")));
            }
        }
    }
}

/// Looks `id` up, retrying transient errors (a dropped connection) with a growing pause:
/// the caller's deadline bounds it.
async fn look_up(lookup: &dyn CompletionLookup, id: &ExecutionId) -> Result<Looked, EngineError> {
    let pauses = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    Retry::new(pauses).run(EngineError::is_transient, |_| lookup.look_up(id)).await
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut table = self.shared.table();
        if let Some(entry) = table.entries.get_mut(&self.id) {
            entry.waits -= 1;
            if entry.waits == 0 {
                table.entries.remove(&self.id);
            }
        }
    }
}
