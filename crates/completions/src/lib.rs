//! Tell a workflow or DAG engine the moment an execution reaches a terminal state
//! (succeeded, failed, cancelled), whatever store it runs on, without losing events on
//! reconnects: the one crate to depend on.
//!
//! - The contract, re-exported from `completion-core`: [`CompletionBackend`] (live,
//!   filtered, resumable subscriptions), [`EngineBackend`] (create, complete, fail, cancel,
//!   describe), [`Waiter`], the validated values, [`EngineError`] and [`hub`] for backend
//!   authors. The delivery contract and the tests that prove it: `docs/delivery.md` of the
//!   repository.
//! - Each backend behind a cargo feature, as a module: `memory` (feature `memory`, on by
//!   default), `valkey` (feature `valkey`: Valkey 7.2+ / Redis 7.0+, standalone or cluster)
//!   and `postgres` (feature `postgres`). `tls` adds TLS to the server backends, `metrics`
//!   exports counters and latencies through the `metrics` facade, `serde` derives serde on
//!   the value types.
//! - [`open`]: the backend a URL names ([`parse_url`] lists the schemes), as a [`Backend`]
//!   that hands out the two trait objects.
//! - `conformance` (feature `conformance`): the behaviour suite, for authors of backends of
//!   their own.
//!
//! ```toml
//! [dependencies]
//! completions = { version = "0.1", features = ["postgres"] }
//! ```
//!
//! # Example
//!
//! ```
//! use completions::{ExecutionId, Namespace, NewExecution, OpenOptions};
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), completions::EngineError> {
//! // Or `redis://...`, `postgres://...` with the `valkey` / `postgres` features.
//! let backend = completions::open("memory:", &OpenOptions::default()).await?;
//! let (completions, engine) = (backend.completions(), backend.engine());
//!
//! let mut stream = completions.subscribe_completions().await?;
//! let id = ExecutionId::new("task-1")?;
//! engine.create_execution(NewExecution::new(id.clone(), Namespace::new("demo")?)).await?;
//! engine.complete(&id).await?;
//! let done = stream.next().await.expect("the stream stays open");
//! assert_eq!(done.execution_id(), &id);
//! # Ok(()) }
//! ```
//!
//! A runnable, URL-driven version: `examples/subscribe` of the repository
//! (`cargo run -p subscribe -- URL --demo`); `examples/README.md` lists every example.

mod open;
mod url;

pub use completion_core::*;

pub use crate::open::{Backend, OpenOptions, open};
pub use crate::url::{Scheme, parse_url};

/// The in-process backend: the embedded default and the reference model of the contract.
#[cfg(feature = "memory")]
pub use completion_memory as memory;

/// The PostgreSQL backend.
#[cfg(feature = "postgres")]
pub use completion_postgres as postgres;

/// The Valkey/Redis backend.
#[cfg(feature = "valkey")]
pub use completion_valkey as valkey;

/// The conformance suite every backend runs, for authors of backends of their own; not a
/// stable API (see the module's docs).
#[cfg(feature = "conformance")]
pub use completion_conformance as conformance;
