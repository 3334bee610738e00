//! Live heap bytes of this process, counted by `stats_alloc`'s wrapper around the system
//! allocator: the precise companion of the `/proc/self/statm` figure, which the allocator's
//! reuse of freed memory makes coarse (a delta of 0 when new streams fit in memory freed by
//! earlier figures).
//!
//! Cost: a few relaxed atomic adds per allocation and per free, for ours and the raw
//! baselines alike.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// The allocator of the whole binary.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, now.
///
/// `stats_alloc` (0.1) already adds a `realloc`'s growth to `bytes_allocated` and its
/// shrinking to `bytes_deallocated`; `bytes_reallocated` is the same net change again, so
/// adding it would count every grown buffer twice (it made strings built by appending, like
/// Valkey's cursors, look like ~850 bytes kept per event and stream).
pub fn live_bytes() -> usize {
    let s = GLOBAL.stats();
    (s.bytes_allocated as i128 - s.bytes_deallocated as i128).max(0) as usize
}
