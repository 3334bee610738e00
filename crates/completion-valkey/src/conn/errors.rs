//! fred's errors as [`EngineError`]s, and which of them a command may be retried after.
//!
//! Contract: transport trouble (I/O, a connection that died under a command, routing, TLS)
//! becomes `Transport`, a time-out `Timeout` (with the limit that passed, [`with_limit`]),
//! a configuration fred refuses `InvalidInput`, and every error reply `Server`, its first
//! word as the code when it is one ([`server_reply`]). [`is_redirection`] and [`is_in_flux`]
//! tell the errors after which the command connection tries a command again
//! ([`Conn`](super::Conn)).
//!
//! Limit: fred reports server replies and a few of its own failures with one kind
//! (`Unknown`), so those are told apart by their text (docs/server-facts.md, "fred 10.1").
//! Replies are told apart by their code; the few that only the generic `ERR` code carries are
//! told apart by their text, and every such text is matched here, in one predicate each
//! ([`says_function_missing`], [`says_library_exists`], [`says_no_such_database`]).

use std::time::Duration;

use completion_core::EngineError;
use fred::error::{Error, ErrorKind};

use crate::position::BACKEND;

/// Maps a fred error to the engine error of `op`.
pub(crate) fn map_error(op: &'static str, error: Error) -> EngineError {
    match error.kind() {
        ErrorKind::Timeout => EngineError::Timeout { backend: BACKEND, op, after: Duration::ZERO },
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Protocol | ErrorKind::Routing | ErrorKind::Backpressure => {
            EngineError::transport(BACKEND, op, error)
        }
        ErrorKind::Unknown if is_channel_closed(&error) => EngineError::transport(BACKEND, op, error),
        #[cfg(feature = "tls")]
        ErrorKind::Tls => EngineError::transport(BACKEND, op, error),
        ErrorKind::Config | ErrorKind::Url => {
            EngineError::invalid("valkey client configuration", error.details(), "refused by the client library")
        }
        _ => server_reply(op, error.details()),
    }
}

/// An error reply as [`EngineError::Server`]: its first word is the code when it is one
/// (upper-case letters, digits and `_`, as `ERR`, `NOSCRIPT` or the library's
/// `COMPLETIONS_NOT_FOUND`), the rest the message.
pub(crate) fn server_reply(op: &'static str, reply: &str) -> EngineError {
    let reply = reply.trim();
    match reply_code(reply) {
        Some((code, rest)) => EngineError::server_code(BACKEND, op, code, rest),
        None => EngineError::server(BACKEND, op, reply),
    }
}

/// An error reply's code and the rest of its text, when its first word is a code.
fn reply_code(reply: &str) -> Option<(&str, &str)> {
    let reply = reply.trim_start();
    let (first, rest) = reply.split_once(' ').unwrap_or((reply, ""));
    let is_code = !first.is_empty()
        && first.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && first.bytes().any(|b| b.is_ascii_uppercase());
    is_code.then(|| (first, rest.trim_start()))
}

/// Whether fred gave up on a command because its connection died under it (fred's internal
/// response channel closed, e.g. during a server restart): transport trouble to retry, not a
/// server verdict. fred reports it as `Unknown`, the kind of server replies too, so only its
/// text tells it apart.
fn is_channel_closed(error: &Error) -> bool {
    error.details() == "channel closed"
}

/// Whether an error reply says the function called is not loaded (a server restarted without
/// persistence lost it, or the library was never loaded): `ERR Function not found` from
/// `FCALL`, `ERR No such library` from `FUNCTION DELETE`/`LIST` (docs/server-facts.md,
/// "Valkey / Redis functions and streams").
pub(crate) fn says_function_missing(reply: &str) -> bool {
    reply.contains("Function not found") || reply.contains("No such library")
}

/// Whether a `FUNCTION LOAD` without `REPLACE` was refused because a library of that name is
/// loaded (`ERR Library '…' already exists`): another instance loaded it first.
pub(crate) fn says_library_exists(reply: &str) -> bool {
    reply.contains("already exists")
}

/// Whether the server refused the `SELECT` of the configured database (`ERR DB index is out
/// of range`): it has fewer databases than the URL's index.
pub(crate) fn says_no_such_database(reply: &str) -> bool {
    reply.contains("DB index is out of range")
}

/// fred's text of an I/O error, which is the error's `Debug` form (`Os { code: 111, kind:
/// ConnectionRefused, message: "Connection refused" }`), as the error's own sentence
/// (`Connection refused (os error 111)`); other text unchanged.
pub(crate) fn plain_io_error(details: &str) -> String {
    let field = |name: &str| {
        let start = details.find(&format!("{name}: "))? + name.len() + 2;
        let rest = &details[start..];
        match rest.strip_prefix('"') {
            Some(quoted) => quoted.find('"').map(|end| quoted[..end].to_string()),
            None => rest.find([',', ' ', '}']).map(|end| rest[..end].to_string()),
        }
    };
    if details.starts_with("Os {") {
        if let (Some(message), Some(code)) = (field("message"), field("code")) {
            return format!("{message} (os error {code})");
        }
    } else if (details.starts_with("Custom {") || details.starts_with("Kind("))
        && let Some(error) = field("error")
    {
        return error;
    }
    details.to_string()
}

/// Whether fred gave up on a command because the cluster redirected it (`MOVED`/`ASK`) more
/// often than allowed: on the command connection of a cluster, at the first redirection.
pub(crate) fn is_redirection(error: &Error) -> bool {
    *error.kind() == ErrorKind::Routing && error.details().starts_with("Too many redirections")
}

/// Whether the server answered that the keys' slot or the cluster is in flux and will
/// serve the command shortly: a slot half migrated (`TRYAGAIN`), a failover under way
/// (`CLUSTERDOWN`, `MASTERDOWN`), a server still loading its data after a restart
/// (`LOADING`, standalone servers too).
pub(crate) fn is_in_flux(error: &Error) -> bool {
    matches!(reply_code(error.details()), Some(("TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "LOADING", _)))
}

/// Fills in the limit of a time-out error (fred does not say which limit passed).
pub(crate) fn with_limit(error: EngineError, limit: Duration) -> EngineError {
    match error {
        EngineError::Timeout { backend, op, .. } => EngineError::Timeout { backend, op, after: limit },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flux_replies_are_told_from_verdicts() {
        for reply in [
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "LOADING Valkey is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down",
        ] {
            assert!(is_in_flux(&Error::new(ErrorKind::Unknown, reply)), "{reply}");
        }
        for reply in ["NOT_FOUND x", "ERR Function not found", "ALREADY_TERMINAL succeeded"] {
            assert!(!is_in_flux(&Error::new(ErrorKind::Unknown, reply)), "{reply}");
        }
        assert!(!is_in_flux(&Error::new(ErrorKind::Unknown, "TRYAGAINLATER x")), "a code is a whole word");
        assert!(is_redirection(&Error::new(ErrorKind::Routing, "Too many redirections.")));
        assert!(!is_redirection(&Error::new(ErrorKind::Unknown, "Too many redirections.")));
    }

    #[test]
    fn replies_carry_their_code() {
        let e = server_reply("FCALL", "COMPLETIONS_NOT_FOUND  exec-1 ");
        assert_eq!(e.code(), Some("COMPLETIONS_NOT_FOUND"));
        assert!(e.to_string().contains("exec-1"), "{e}");
        assert_eq!(server_reply("FCALL", "something went wrong").code(), None);
        assert_eq!(server_reply("FCALL", "Err lower case").code(), None);
        assert_eq!(server_reply("FCALL", "ERR").code(), Some("ERR"));
    }

    #[test]
    fn err_replies_are_told_apart_by_their_text() {
        assert!(says_function_missing("ERR Function not found"));
        assert!(says_function_missing("ERR No such library"));
        assert!(!says_function_missing("ERR Library 'completions' already exists"));
        assert!(says_library_exists("ERR Library 'completions' already exists"));
        assert!(says_no_such_database("ERR DB index is out of range"));
        assert!(map_error("GET", Error::new(ErrorKind::Unknown, "channel closed")).is_transient());
        assert!(!map_error("GET", Error::new(ErrorKind::Unknown, "ERR channel closed")).is_transient());
    }
}
