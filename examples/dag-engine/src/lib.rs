//! A small workflow (DAG) engine built only on the public completions API: the reference
//! for engine authors, and what `cargo xtask demo` runs on every backend through killed
//! connections and a server restart.
//!
//! - [`dag`]: the workload, a seeded random DAG of tasks over flows and namespaces.
//! - [`engine`]: the engine: subscribes, promotes each task the moment its last parent's
//!   completion arrives, hands it to a worker, retries transient failures, and checks at the
//!   end that every task was promoted exactly once and every completion arrived once.
//! - [`store`]: where the engine keeps its task state, [`TaskStore`](store::TaskStore):
//!   [`Builtin`](store::Builtin), the backend's own executions (`EngineBackend`), in either
//!   of the two own-state modes below.
//! - [`postgres`]: own-state mode on PostgreSQL, a `tasks` table of the engine's own, each
//!   completion emitted from the transaction that ends the task (`emit_in`).
//! - [`valkey`]: own-state mode on Valkey/Redis, task hashes of the engine's own, ended by a
//!   function of its own library that includes the emit step (one `FCALL`).
//!
//! The in-process backend (`completion-memory`) has no emit API, so on it the engine runs
//! in the built-in mode only.
//!
//! See the crate's README for how to run it and what each mode shows.

pub mod dag;
pub mod engine;
pub mod postgres;
pub mod store;
pub mod valkey;
