//! The completion contract: how a workflow or DAG engine learns, the moment it happens,
//! that an execution reached a terminal state, whatever store it runs on.
//!
//! This crate holds no I/O. It defines:
//! - the subscribe side, [`CompletionBackend`], and the write side that emits completions,
//!   [`EngineBackend`];
//! - validated values ([`ExecutionId`], [`FlowId`], [`Namespace`], [`Tags`], [`Reason`],
//!   [`Outcome`]), the event ([`CompletionPayload`]), [`ScannerFilter`], [`Cursor`],
//!   [`StartFrom`], [`Gap`] and [`EngineError`];
//! - [`hub`], the delivery machinery every backend shares, so the contract below is
//!   implemented once.
//!
//! # The delivery contract
//!
//! Every backend keeps it, and the `completion-conformance` suite proves it on real servers:
//!
//! 1. A subscribe call returns only when the subscription is live: every completion
//!    committed after it returns is delivered.
//! 2. One stream yields events in log order, without duplicates.
//! 3. After a dropped connection or a restarted server, the stream resumes by itself and
//!    delivers every completion committed in between that is still retained. Retention is
//!    configurable (count and/or age).
//! 4. Memory per subscription is bounded (a configurable buffer). A consumer that falls
//!    behind is caught up from the log later, not by an ever-growing queue. Past retention,
//!    a resumable stream yields a [`StreamItem::Gap`]; a plain stream logs it and counts it
//!    ([`CounterSnapshot::gaps`]).
//! 5. A filtered stream never yields a non-matching event.
//! 6. Dropping a stream releases every server-side resource it held.
//!
//! # Limits
//!
//! - Delivery is at-least-once *across* streams and restarts of the consumer: a consumer
//!   that persists cursors resumes after the last one it persisted, so it may see again the
//!   events it handled but had not yet persisted. Within one stream there are no duplicates.
//! - "Log order" is the backend's commit order of terminal writes. A partitioned log (Valkey)
//!   orders by server time across partitions, so two writes committed within the same
//!   microsecond on different partitions may come in either order.
//! - What retention trimmed is gone: the gap item tells you, it cannot give the events back.
//! - Latency is not bounded by the contract: after a lost connection, events arrive once
//!   the backend reconnects or its periodic safety read runs.
//!
//! # Example: an engine promoting dependents
//!
//! ```no_run
//! use completion_core::{CompletionBackend, Namespace, ScannerFilter};
//! use futures_util::StreamExt;
//!
//! async fn promote(backend: &dyn CompletionBackend) -> Result<(), completion_core::EngineError> {
//!     let filter = ScannerFilter::new().with_namespace(Namespace::new("billing")?);
//!     let mut completions = backend.subscribe_completions_filtered(&filter).await?;
//!     while let Some(done) = completions.next().await {
//!         println!("{} {} (resume after {})", done.execution_id(), done.outcome(), done.cursor());
//!     }
//!     Ok(())
//! }
//! ```

mod backend;
pub mod backoff;
pub mod config;
mod cursor;
mod error;
mod execution;
mod filter;
pub mod hub;
mod ids;
mod outcome;
mod payload;
mod redact;
mod retention;
#[cfg(feature = "rustls")]
pub mod tls;
pub mod waiter;

pub use backend::{CompletionBackend, CompletionStream, EngineBackend, ResumableStream};
pub use config::SubscriptionConfig;
pub use cursor::Cursor;
pub use error::{BoxError, EngineError, error_chain};
pub use execution::{Completion, ExecutionInfo, ExecutionState, NewExecution};
pub use filter::ScannerFilter;
pub use hub::CounterSnapshot;
pub use ids::{ExecutionId, FlowId, Namespace, Reason, TagKey, TagValue, Tags};
pub use outcome::Outcome;
pub use payload::{CompletionPayload, Gap, StartFrom, StreamItem};
pub use redact::{redact_url, url_password};
pub use retention::{Retention, RetentionReport};
pub use waiter::{CompletionLookup, Finished, Looked, WaitError, Waiter};

/// What [`delegate_completion_backend!`] expands to needs; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
}
