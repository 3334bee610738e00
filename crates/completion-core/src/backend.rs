//! The two traits every backend implements: [`CompletionBackend`] (subscribe) and
//! [`EngineBackend`] (write executions, and so emit completions).

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::{
    CompletionPayload, CounterSnapshot, EngineError, ExecutionId, ExecutionInfo, NewExecution, Reason, ScannerFilter,
    StartFrom, StreamItem,
};

/// A live stream of completions. It never ends while its backend lives; dropping it
/// releases everything it held.
pub type CompletionStream = BoxStream<'static, CompletionPayload>;

/// A live stream that starts where asked and reports [gaps](crate::Gap) as items.
pub type ResumableStream = BoxStream<'static, StreamItem>;

/// The subscribe side. See the [crate docs](crate) for the delivery contract every
/// implementation keeps.
///
/// There is no publish method: a completion is published only by the backend's own atomic
/// terminal write ([`EngineBackend::complete`] and friends).
#[async_trait]
pub trait CompletionBackend: Send + Sync + 'static {
    /// The backend's short name (`memory`, `valkey`, `postgres`), as used in cursors.
    fn backend_name(&self) -> &'static str;

    /// Every completion committed after this call returns, in log order.
    async fn subscribe_completions(&self) -> Result<CompletionStream, EngineError>;

    /// Only the completions that match `filter`.
    ///
    /// The default delegates to [`subscribe_completions`](Self::subscribe_completions) when
    /// the filter is a no-op and otherwise fails with [`EngineError::Unavailable`]: a backend
    /// that cannot filter must never hand out a silently unfiltered stream.
    async fn subscribe_completions_filtered(&self, filter: &ScannerFilter) -> Result<CompletionStream, EngineError> {
        if filter.is_noop() {
            self.subscribe_completions().await
        } else {
            Err(EngineError::unavailable("subscribe_completions_filtered", "this backend cannot filter completions"))
        }
    }

    /// A resumable subscription: starts at `from`, yields completions matching `filter` in
    /// log order and a [`StreamItem::Gap`] when `from` (or the stream's own position after a
    /// long stall) is older than what the log retains.
    ///
    /// The default fails with [`EngineError::Unavailable`].
    async fn subscribe_from(&self, from: StartFrom, filter: &ScannerFilter) -> Result<ResumableStream, EngineError> {
        let _ = (from, filter);
        Err(EngineError::unavailable("subscribe_from", "this backend has no resumable subscriptions"))
    }

    /// The backend's counters. The default reports zeros.
    fn counters(&self) -> CounterSnapshot {
        CounterSnapshot::default()
    }
}

/// The write side that emits completions.
///
/// A terminal transition (complete, fail, cancel) happens at most once per execution: a
/// second attempt returns [`EngineError::AlreadyTerminal`] and publishes nothing. Every
/// terminal transition publishes exactly one completion, in the same atomic write that
/// changes the execution's state, whether or not the execution belongs to a flow.
#[async_trait]
pub trait EngineBackend: Send + Sync + 'static {
    /// Creates an execution. Fails with [`EngineError::AlreadyExists`] when the id is taken.
    async fn create_execution(&self, execution: NewExecution) -> Result<(), EngineError>;

    /// Marks the execution succeeded and publishes its completion.
    async fn complete(&self, id: &ExecutionId) -> Result<(), EngineError>;

    /// Marks the execution failed with `reason` and publishes its completion.
    async fn fail(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError>;

    /// Marks the execution cancelled with `reason` and publishes its completion.
    async fn cancel(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError>;

    /// The execution's current state.
    async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError>;
}

// Both traits must stay dyn-compatible: engines hold them as trait objects.
const _: () = {
    fn assert_dyn_compatible(_: &dyn CompletionBackend, _: &dyn EngineBackend) {}
    let _ = assert_dyn_compatible;
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Namespace, TagKey, TagValue};

    /// A backend that implements only the required methods, as a third-party one might.
    struct Minimal;

    #[async_trait]
    impl CompletionBackend for Minimal {
        fn backend_name(&self) -> &'static str {
            "minimal"
        }

        async fn subscribe_completions(&self) -> Result<CompletionStream, EngineError> {
            Ok(Box::pin(futures_util::stream::pending()))
        }
    }

    #[tokio::test]
    async fn the_defaults_fail_closed() {
        let backend = Minimal;
        let namespace = ScannerFilter::new().with_namespace(Namespace::new("billing").unwrap());
        let tag = ScannerFilter::new().with_tag(TagKey::new("team").unwrap(), TagValue::new("a").unwrap());
        for filter in [namespace, tag] {
            match backend.subscribe_completions_filtered(&filter).await {
                Err(EngineError::Unavailable { op: "subscribe_completions_filtered", .. }) => {}
                Err(other) => panic!("wrong error for {filter:?}: {other}"),
                Ok(_) => panic!("a backend that cannot filter handed out an unfiltered stream for {filter:?}"),
            }
        }
        assert!(
            backend.subscribe_completions_filtered(&ScannerFilter::new()).await.is_ok(),
            "a no-op filter delegates"
        );
        assert!(matches!(
            backend.subscribe_from(StartFrom::Earliest, &ScannerFilter::new()).await,
            Err(EngineError::Unavailable { op: "subscribe_from", .. })
        ));
        assert_eq!(backend.counters(), CounterSnapshot::default());
    }
}
