//! The server-side function library: its source, its version, and loading it safely.
//!
//! On connect (and whenever a call finds the library gone, as after a restart of a server
//! without persistence) [`ensure`] makes the server, or every primary of a cluster (replicas
//! get it by replication, so a promoted replica holds it), hold this build's library:
//! - none loaded: `FUNCTION LOAD`; when another process won the race ("already exists"),
//!   look again;
//! - an older version: `FUNCTION LOAD REPLACE`;
//! - the same version: nothing;
//! - a newer version, or a foreign library of the same name: [`EngineError::Incompatible`].
//!
//! Limit: libraries are server-wide, shared by every key prefix. Two builds with different
//! newer versions upgrading at the same moment can leave the lower of the two loaded; the
//! higher one reloads it at its next "function not found".

use completion_core::EngineError;

use crate::conn::commands::{InstalledLibrary, Loaded};
use crate::conn::{Conn, Node};
use crate::position::BACKEND;

/// The library's name on the server.
pub(crate) const LIBRARY_NAME: &str = "completions";

/// The whole source of the function library `completions` this build loads: the line
/// `#!lua name=completions`, then [`EMIT_LUA`], then `lua/completions.lua` (the functions
/// and their registration). One copy of the emit step serves the library's terminal and
/// emit functions and every engine library that includes [`EMIT_LUA`].
pub const LIBRARY_SOURCE: &str =
    concat!("#!lua name=completions\n", include_str!("../lua/emit.lua"), include_str!("../lua/completions.lua"));

/// The emit step as a Lua snippet (`lua/emit.lua`) for an engine's own function library:
/// put it after the library's `#!lua name=...` line and before the engine's functions,
/// which then call `completions_emit_prepare(KEYS, ARGV, k, a)` (checks, writes nothing)
/// and `completions_emit_commit(emit)` (appends, announces) to emit a completion in the
/// same atomic call as their own state change. The keys and arguments it reads are those
/// of [`ValkeyBackend::emit_call`](crate::ValkeyBackend::emit_call); see `docs/valkey.md`,
/// "Emitting from your own function". Defines local functions only.
pub const EMIT_LUA: &str = include_str!("../lua/emit.lua");

/// The version of the library this build carries (`VERSION` in the Lua source, and
/// `COMPLETIONS_EMIT_VERSION` in [`EMIT_LUA`]).
pub const LIBRARY_VERSION: i64 = 5;

/// The library's function that returns its version.
pub(crate) const VERSION_FUNCTION: &str = "completions_version";

/// The names of the library's functions that the backend calls (`lua/completions.lua`
/// registers each; a unit test checks that it does).
pub(crate) mod function {
    /// Creates an execution hash (`create_execution`).
    pub(crate) const CREATE: &str = "completions_create";
    /// The terminal write: state change, log append, trim and announcement in one call.
    pub(crate) const TERMINAL: &str = "completions_terminal";
    /// A completion of an execution whose state the engine keeps itself.
    pub(crate) const EMIT: &str = "completions_emit";
    /// Reads a partition's log after an entry id, with its trimming record.
    pub(crate) const READ: &str = "completions_read";
    /// Trims a partition's log up to an entry id and records the trim.
    pub(crate) const TRIM: &str = "completions_trim";
    /// A page of a partition's entry ids before an entry id (read-only).
    pub(crate) const IDS: &str = "completions_ids";
    /// Every function above, for the test that the library registers each.
    #[cfg(test)]
    pub(crate) const ALL: [&str; 6] = [CREATE, TERMINAL, EMIT, READ, TRIM, IDS];
}

/// What connecting did to the server's function library (on a cluster: the first load or
/// upgrade it did on any primary), from [`ValkeyBackend::library_on_connect`](crate::ValkeyBackend::library_on_connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LibraryChange {
    /// The server already held this build's version: nothing done.
    Present,
    /// It held none: [`LIBRARY_VERSION`] loaded.
    Loaded,
    /// It held the older version given: replaced with [`LIBRARY_VERSION`].
    Upgraded(i64),
}

/// Makes the server, or every primary of a cluster, hold this build's library (see the
/// module docs). On a cluster, reports the first load or upgrade it did, else `Present`.
pub(crate) async fn ensure(conn: &Conn) -> Result<LibraryChange, EngineError> {
    let mut result = LibraryChange::Present;
    for node in conn.library_nodes() {
        let ensured = ensure_on(conn, node.as_ref()).await.map_err(|e| match (&node, e) {
            (Some(node), EngineError::Incompatible { backend, reason }) => {
                EngineError::Incompatible { backend, reason: format!("cluster node {node}: {reason}") }
            }
            (_, e) => e,
        })?;
        if result == LibraryChange::Present {
            result = ensured;
        }
    }
    Ok(result)
}

/// [`ensure`] on one server or cluster node.
async fn ensure_on(conn: &Conn, node: Option<&Node>) -> Result<LibraryChange, EngineError> {
    // A few rounds: each lost race ("already exists") means another process just loaded
    // something, which the next round looks at.
    for _ in 0..5 {
        match conn.installed_library(node, LIBRARY_NAME, VERSION_FUNCTION).await? {
            InstalledLibrary::Version(v) if v == LIBRARY_VERSION => return Ok(LibraryChange::Present),
            InstalledLibrary::Version(v) if v > LIBRARY_VERSION => {
                return Err(EngineError::Incompatible {
                    backend: BACKEND,
                    reason: format!(
                        "the server holds function library `{LIBRARY_NAME}` version {v}, newer than this build's \
                         {LIBRARY_VERSION}: upgrade completion-valkey"
                    ),
                });
            }
            InstalledLibrary::Version(old) => {
                conn.function_load(node, LIBRARY_SOURCE, true).await?;
                tracing::info!(backend = BACKEND, from = old, to = LIBRARY_VERSION, "upgraded the function library");
                return Ok(LibraryChange::Upgraded(old));
            }
            InstalledLibrary::Foreign(why) => {
                return Err(EngineError::Incompatible {
                    backend: BACKEND,
                    reason: format!(
                        "the server holds a function library named `{LIBRARY_NAME}` that is not ours: {why}"
                    ),
                });
            }
            InstalledLibrary::Missing => {
                if conn.function_load(node, LIBRARY_SOURCE, false).await? == Loaded::Done {
                    tracing::info!(backend = BACKEND, version = LIBRARY_VERSION, "loaded the function library");
                    return Ok(LibraryChange::Loaded);
                }
            }
        }
    }
    Err(EngineError::server(
        BACKEND,
        "FUNCTION LOAD",
        format!("the function library `{LIBRARY_NAME}` kept changing while loading it; try again"),
    ))
}

/// The version of the library the server (on a cluster: the first primary, as every primary
/// gets the same at connect) holds now; `None`: none loaded. A foreign library of our name
/// is [`EngineError::Incompatible`].
pub(crate) async fn installed_version(conn: &Conn) -> Result<Option<i64>, EngineError> {
    let node = conn.library_nodes().into_iter().next().flatten();
    match conn.installed_library(node.as_ref(), LIBRARY_NAME, VERSION_FUNCTION).await? {
        InstalledLibrary::Missing => Ok(None),
        InstalledLibrary::Version(v) => Ok(Some(v)),
        InstalledLibrary::Foreign(why) => Err(EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("the function library `{LIBRARY_NAME}` is not ours: {why}"),
        }),
    }
}

/// Whether `error` says a library function is missing (the server lost its functions).
pub(crate) fn is_missing_function(error: &EngineError) -> bool {
    matches!(error, EngineError::Server { message, .. } if crate::conn::errors::says_function_missing(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_carries_the_version_and_name_of_this_build() {
        assert!(LIBRARY_SOURCE.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        assert!(LIBRARY_SOURCE.contains(&format!("\nlocal VERSION = {LIBRARY_VERSION}\n")));
        assert!(LIBRARY_SOURCE.contains(&format!("'{VERSION_FUNCTION}'")));
        for name in function::ALL {
            assert!(LIBRARY_SOURCE.contains(&format!("'{name}'")), "the library registers no {name}");
        }
        assert!(EMIT_LUA.contains(&format!("\nlocal COMPLETIONS_EMIT_VERSION = {LIBRARY_VERSION}\n")));
    }

    #[test]
    fn the_library_holds_the_emit_step_once_and_registers_every_function() {
        assert!(LIBRARY_SOURCE.contains(EMIT_LUA));
        assert_eq!(LIBRARY_SOURCE.matches("local function completions_append(").count(), 1);
        assert!(!EMIT_LUA.lines().any(|l| l.starts_with("#!")), "the snippet goes after an engine's own #!lua line");
        assert!(!EMIT_LUA.contains("redis.register_function"), "the snippet registers nothing");
        for function in ["version", "create", "terminal", "emit", "read", "trim", "ids"] {
            assert!(LIBRARY_SOURCE.contains(&format!("'completions_{function}'")), "{function}");
        }
    }
}
