//! [`Periodic`]: a backend's background chore (trimming the log to retention), run on a
//! timer until the backend is dropped.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// A task that runs a chore every `every` (first after one period, missed ticks delayed,
/// never two at once), in `span`, until this is dropped.
#[must_use = "the chore stops when this is dropped"]
#[derive(Debug)]
pub struct Periodic(JoinHandle<()>);

impl Periodic {
    /// Spawns the task on the current tokio runtime.
    pub fn spawn<F, Fut>(every: Duration, span: tracing::Span, mut chore: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                chore().await;
            }
        };
        Self(tokio::spawn(task.instrument(span)))
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_every_period_until_dropped() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let chore = Periodic::spawn(Duration::from_secs(1), tracing::Span::none(), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "at 1, 2 and 3 s");
        drop(chore);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no run after the drop");
    }
}
