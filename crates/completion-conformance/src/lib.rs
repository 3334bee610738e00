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
                ready_on_return each_outcome
            );
            $crate::suite!(@tests $harness; [$($(#[$kill])*)?]; );
            $crate::suite!(@tests $harness; [$($(#[$restart])*)?]; );
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
