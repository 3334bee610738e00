//! A small workflow (DAG) engine built only on the public completions API: the reference
//! for engine authors, and what `cargo xtask demo` runs on every backend through killed
//! connections and a server restart.
//!
//! - [`dag`]: the workload, a seeded random DAG of tasks over flows and namespaces.
//! - [`engine`]: the engine: subscribes, promotes each task the moment its last parent's
//!   completion arrives, hands it to a worker, retries transient failures, and checks at the
//!   end that every task was promoted exactly once and every completion arrived once.
//!
//! See the crate's README for how to run it and what each mode shows.

pub mod dag;
pub mod engine;
