//! Pacing of retries: every loop of every backend that tries something again (catch-up
//! reads, reconnects, redirected commands, calls that lost their connection) takes its pauses
//! from a [`Backoff`]; [`Retry`] is the common loop around one.
//!
//! A [`Backoff`] is the sequence of pauses: `initial`, then multiplied by `factor` after
//! each one, never above `max`; [`reset`](Backoff::reset) starts it over after a success.
//! A [`Retry`] runs an operation until it succeeds, fails with an error its caller does not
//! retry, or runs out of attempts or time, pausing by its backoff in between. Loops that do
//! not fit it keep their own loop and take only their pauses from a [`Backoff`]: those that
//! wait on other events too (a feed that `select!`s between notifications, timers and its
//! reconnect), and those that need what [`Retry::run`] does not give, such as an attempt that
//! borrows the caller's closure or a deadline that answers an error of its own instead of the
//! last one (PostgreSQL's pooled calls).
//!
//! Limits: there is no jitter. Every retry here talks to one server on behalf of one
//! process, where synchronised retries from many clients are not the concern jitter
//! addresses.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A growing pause between attempts: `initial`, `initial × factor`, ..., capped at `max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: u32,
    next: Duration,
    /// Whether the first pause (after a start or a reset) is zero.
    immediate_first: bool,
    immediate_pending: bool,
}

impl Backoff {
    /// Pauses from `initial`, doubling up to `max` (a `max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            factor: 2,
            next: initial,
            immediate_first: false,
            immediate_pending: false,
        }
    }

    /// The same pauses, after a first one of zero: the first retry goes at once (a command a
    /// server redirected is worth sending again straight away).
    pub fn with_immediate_first(mut self) -> Self {
        self.immediate_first = true;
        self.immediate_pending = true;
        self
    }

    /// The same pauses, multiplied by `factor` (at least 1) after each instead of doubled.
    pub fn with_factor(mut self, factor: u32) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// The pause to take now; the following one grows by the factor.
    pub fn next_pause(&mut self) -> Duration {
        if std::mem::take(&mut self.immediate_pending) {
            return Duration::ZERO;
        }
        let pause = self.next;
        self.next = self.next.saturating_mul(self.factor).min(self.max);
        pause
    }

    /// The pause [`next_pause`](Self::next_pause) would return, without taking it.
    pub fn peek(&self) -> Duration {
        if self.immediate_pending { Duration::ZERO } else { self.next }
    }

    /// Starts over at `initial` (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
        self.immediate_pending = self.immediate_first;
    }

    /// Sleeps for the next pause.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

/// Runs an operation again while it fails with a retryable error, pausing by a [`Backoff`],
/// within an optional number of attempts and an optional deadline.
///
/// ```
/// use std::time::Duration;
/// use completion_core::backoff::{Backoff, Retry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut calls = 0;
/// let answer: Result<u32, &str> = Retry::new(Backoff::new(Duration::from_millis(1), Duration::from_millis(4)))
///     .with_attempts(5)
///     .run(|e| *e == "busy", |_attempt| {
///         calls += 1;
///         let reply = if calls < 3 { Err("busy") } else { Ok(calls) };
///         async move { reply }
///     })
///     .await;
/// assert_eq!(answer, Ok(3));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Retry {
    backoff: Backoff,
    attempts: Option<u32>,
    deadline: Option<Instant>,
}

impl Retry {
    /// Retries without limit, pausing by `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self { backoff, attempts: None, deadline: None }
    }

    /// At most `attempts` attempts in all (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// No attempt starts after `deadline`, and no pause would end after it.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// No attempt starts later than `within` from now (see [`with_deadline`](Self::with_deadline)).
    pub fn within(self, within: Duration) -> Self {
        self.with_deadline(Instant::now() + within)
    }

    /// Calls `op` with the attempt's number (1, 2, ...) until it succeeds, fails with an
    /// error `retryable` refuses, or the attempts or the time run out; returns the last
    /// answer. Each retry is logged at debug level.
    pub async fn run<T, E, F, Fut>(mut self, retryable: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut attempt = 1;
        loop {
            let error = match op(attempt).await {
                Err(error) if retryable(&error) => error,
                answer => return answer,
            };
            if self.attempts.is_some_and(|most| attempt >= most) {
                return Err(error);
            }
            let pause = self.backoff.next_pause();
            if self.deadline.is_some_and(|deadline| Instant::now() + pause >= deadline) {
                return Err(error);
            }
            tracing::debug!(attempt, ?pause, %error, "retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_by_the_factor_up_to_max_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        let pauses: Vec<u128> = (0..8).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 200, 200]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(5));
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_secs(1)).with_factor(5);
        assert_eq!((0..4).map(|_| b.next_pause().as_millis()).collect::<Vec<_>>(), [20, 100, 500, 1000]);
        let mut b = Backoff::new(Duration::from_millis(5), Duration::from_millis(20)).with_immediate_first();
        assert_eq!((0..4).map(|_| b.next_pause().as_millis()).collect::<Vec<_>>(), [0, 5, 10, 20]);
        b.reset();
        assert_eq!(
            (b.peek(), b.next_pause(), b.next_pause()),
            (Duration::ZERO, Duration::ZERO, Duration::from_millis(5))
        );
        // A max below initial is raised to it: the pause never shrinks.
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(1));
        assert_eq!((b.next_pause(), b.next_pause()), (Duration::from_millis(50), Duration::from_millis(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_at_a_refused_error_and_at_its_limits() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
        let seen = std::cell::Cell::new(0);
        let failing = |_| {
            seen.set(seen.get() + 1);
            async { Err::<(), _>("down") }
        };

        let answer = Retry::new(backoff.clone()).with_attempts(3).run(|_| true, failing).await;
        assert_eq!((answer, seen.get()), (Err("down"), 3));

        seen.set(0);
        let answer = Retry::new(backoff.clone()).run(|_| false, failing).await;
        assert_eq!((answer, seen.get()), (Err("down"), 1), "a refused error is not retried");

        seen.set(0);
        let started = Instant::now();
        let answer = Retry::new(backoff.clone()).within(Duration::from_millis(35)).run(|_| true, failing).await;
        assert_eq!(answer, Err("down"));
        assert_eq!(seen.get(), 4, "attempts at 0, 10, 20 and 30 ms; the next pause would end past 35 ms");
        assert!(started.elapsed() < Duration::from_millis(35));

        let answer =
            Retry::new(backoff).run(|_| true, |n| async move { if n < 4 { Err("down") } else { Ok(n) } }).await;
        assert_eq!(answer, Ok(4));
    }
}
