//! The behaviour suite every completion backend runs unchanged. It is the contract: a
//! behaviour that is not tested here is not promised.
//!
//! Shaped like `object_store`'s `integration.rs`: each test is a plain public async
//! function in [`tests`] taking a [`Harness`]; a backend crate's `tests/conformance.rs`
//! registers all of them as `#[tokio::test]`s with one [`suite!`] call:
//!
//! ```ignore
//! async fn harness() -> std::sync::Arc<dyn completion_conformance::Harness> { /* ... */ }
//!
//! completion_conformance::suite!(mod memory, harness,
//!     kill: [#[ignore = "the memory backend has no server connections"]],
//!     restart: [#[ignore = "the memory backend has no server"]]);
//! ```
//!
//! The `kill` and `restart` attribute lists are put on the tests that need
//! [`BackendHooks::kill_connections`] and [`BackendHooks::restart_server`]; pass
//! `#[ignore = "why"]` (or a `cfg_attr` of one) where a backend cannot offer them, so a
//! skipped test is reported as ignored with its reason, never as passed.
//!
//! # For authors of other backends
//!
//! The suite is published so that a backend outside this repository can prove it keeps the
//! same contract: depend on it (or on `completions` with its `conformance` feature, as
//! `completions::conformance`) as a dev-dependency, with `tokio` (features `macros` and
//! `rt-multi-thread`, which the `#[tokio::test]`s that [`suite!`] writes need), implement
//! [`Harness`] and [`BackendHooks`] for your backend, and call [`suite!`] once.
//!
//! **The suite is not a stable API.** As `object_store`'s `integration` tests, it changes
//! with the contract it checks: tests are added, tightened and renamed in any release, and
//! the [`Harness`] traits may gain methods. Pin the version you run and read the changelog
//! before moving on.

mod harness;
pub mod support;
pub mod tests;

pub use harness::{BackendHooks, BackendOptions, Capabilities, Harness, TestBackend};

/// Registers every conformance test as a `#[tokio::test]` in a module named `$module`.
///
/// `$harness` is the path of an `async fn() -> Arc<dyn Harness>`.
#[macro_export]
macro_rules! suite {
    (mod $module:ident, $harness:path $(, kill: [$(#[$kill:meta])*])? $(, restart: [$(#[$restart:meta])*])? $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::suite!(@tests $harness; [];
                ready_on_return concurrent_subscribes_are_ready each_outcome with_and_without_flow
                racing_terminal_writes_publish_once already_terminal_publishes_nothing
                create_twice_is_rejected describe_reports_state values_round_trip_exactly
                two_independent_subscribers drop_then_resubscribe
                filter_by_namespace filter_by_tag filter_by_namespace_and_tag filters_leak_nothing_under_load
                resume_after_cursor resume_filtered_after_cursor resume_from_earliest resume_from_a_cursor_of_an_earliest_stream
                resume_from_trimmed_position_yields_gap retention_by_age_trims_old_events plain_stream_counts_gap
                stalled_resumable_stream_yields_gap trimming_racing_a_reader_loses_nothing_silently
                slow_consumer_stays_bounded_and_loses_nothing drop_releases_server_resources
                close_ends_streams_and_writes_keep_working
                invalid_input_is_rejected
                waits_answer_before_and_during waits_time_out_refuse_unknown_ids_and_free_their_entries
            );
            $crate::suite!(@tests $harness; [$($(#[$kill])*)?]; connections_killed_mid_stream_lose_nothing waits_survive_killed_connections);
            $crate::suite!(@tests $harness; [$($(#[$restart])*)?]; server_restarted_mid_stream_loses_nothing);
        }
    };
    (@tests $harness:path; $attrs:tt; ) => {};
    (@tests $harness:path; $attrs:tt; $name:ident $($rest:ident)*) => {
        $crate::suite!(@test $harness; $attrs; $name);
        $crate::suite!(@tests $harness; $attrs; $($rest)*);
    };
    (@test $harness:path; [$(#[$attr:meta])*]; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $name() {
            let harness = $harness().await;
            $crate::tests::$name(&*harness).await;
        }
    };
}
