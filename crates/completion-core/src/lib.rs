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
//!   implemented once, and for backends: [`backoff`] (retry pacing), [`config`] (the
//!   subscription settings every backend config embeds, serde durations) and, with the
//!   feature `rustls`, `tls` (the TLS client configuration).
//!
//! # The delivery contract
//!
//! Every backend keeps one contract, proven on real servers by the `completion-conformance`
//! suite. A subscribe call returns only once the subscription is live. A stream yields
//! events in log order without duplicates and resumes by itself after dropped connections
//! and server restarts, losing nothing that retention kept. Its memory is bounded: a
//! consumer that falls behind is caught up from the log, and past retention it gets a
//! [`StreamItem::Gap`] (plain streams count [`CounterSnapshot::gaps`]). It never yields an
//! event its filter excludes, and dropping it releases every server-side resource. Across
//! restarts of the consumer, delivery is at-least-once.
//!
//! The full statement, its limits, and which conformance test proves each promise are in
//! `docs/delivery.md` of the repository, the one home of the contract.
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
pub mod ids;
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
