//! `completions wait URL ID... [--timeout DURATION] [--json]`: waits until every execution is
//! terminal, printing each outcome as it arrives, and exits with a code that says how they
//! ended (see [`exit`]).
//!
//! Built on [`Waiter`]: it subscribes before it looks the executions up, so an execution
//! that finished before the command started is answered too (never a hang), and a
//! reconnect during the wait loses no wake-up.

use std::time::Duration;

use completions::{Backend, ExecutionId, Finished, Outcome, WaitError, Waiter};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;

use crate::error::{CliError, Kind};
use crate::stdio;

/// The exit codes of `wait` (besides the common ones of [`crate::error`]).
pub mod exit {
    /// Every execution succeeded.
    pub const SUCCEEDED: u8 = 0;
    /// At least one failed.
    pub const FAILED: u8 = 5;
    /// At least one was cancelled, none failed.
    pub const CANCELLED: u8 = 6;
    /// An execution does not exist.
    pub const NOT_FOUND: u8 = 7;
    /// The timeout passed first (as `timeout(1)` exits).
    pub const TIMED_OUT: u8 = 124;
}

/// Parses the ids; a bad one is a usage error naming it.
pub fn ids(texts: &[String]) -> Result<Vec<ExecutionId>, CliError> {
    texts.iter().map(|t| ExecutionId::new(t.as_str()).map_err(CliError::from)).collect()
}

/// Waits for `ids` on `backend` (at `shown`, the URL without its password) for at most
/// `timeout` (none: no limit); returns the exit code.
pub async fn run(
    backend: &Backend,
    shown: &str,
    ids: &[ExecutionId],
    timeout: Option<Duration>,
    json: bool,
) -> Result<u8, CliError> {
    let waiter = Waiter::new(backend.completions(), backend.engine()).await?;
    // The readiness line: subscribed, so from here on no outcome can be missed.
    let plural = if ids.len() == 1 { "" } else { "s" };
    stdio::status(&format!("completions: waiting for {} execution{plural} on {shown}", ids.len()));
    let timeout = timeout.unwrap_or(Duration::MAX);
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let mut waits: FuturesUnordered<_> = ids
        .iter()
        .map(|id| {
            let waiter = &waiter;
            async move {
                let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(tokio::time::Instant::now()));
                (id, waiter.wait(id, left).await)
            }
        })
        .collect();
    let (mut failed, mut cancelled) = (false, false);
    let mut timed_out = Vec::new();
    while let Some((id, result)) = waits.next().await {
        match result {
            Ok(finished) => {
                failed |= finished.outcome == Outcome::Failed;
                cancelled |= finished.outcome == Outcome::Cancelled;
                print(&finished, json)?;
            }
            Err(WaitError::TimedOut { .. }) => timed_out.push(id.clone()),
            Err(WaitError::NotFound(id)) => {
                return Err(CliError::new(Kind::NotFound, format!("execution {id} does not exist")));
            }
            Err(WaitError::Backend(e)) => return Err(CliError::from(e).context(format!("waiting for {id}"))),
            Err(other) => return Err(CliError::new(Kind::Failed, other.to_string())),
        }
    }
    if !timed_out.is_empty() {
        let names: Vec<&str> = timed_out.iter().map(ExecutionId::as_str).collect();
        let after = humantime::format_duration(timeout);
        return Err(CliError::new(Kind::TimedOut, format!("timed out after {after} waiting for {}", names.join(", "))));
    }
    Ok(if failed {
        exit::FAILED
    } else if cancelled {
        exit::CANCELLED
    } else {
        exit::SUCCEEDED
    })
}

fn print(finished: &Finished, json: bool) -> Result<(), CliError> {
    let line = if json {
        json!({
            "execution_id": finished.execution_id.as_str(),
            "outcome": finished.outcome.as_str(),
            "completed_at_ms": finished.completed_at_ms,
        })
        .to_string()
    } else {
        format!("{} {}", finished.execution_id, finished.outcome)
    };
    stdio::out(&line).map_err(|e| {
        let why = if stdio::is_closed(&e) { "stdout was closed".to_string() } else { e.to_string() };
        CliError::new(Kind::Failed, format!("cannot write the output: {why}"))
    })
}
