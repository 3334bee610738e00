//! Opening the backend a URL names ([`completions::open`]), with the CLI's settings: nothing
//! the CLI opens changes or trims anyone's data behind the operator's back.
//!
//! - PostgreSQL is opened with `migrate` off (a missing or old schema is reported; only
//!   `completions migrate` changes it) and no periodic prune.
//! - Valkey is opened with no periodic retention trim. Connecting loads the function
//!   library when the server has none (the library does that on every connect; it is the
//!   same library every client of this build loads) and records the key prefix's partition
//!   count when the prefix is new.
//! - The whole connect is bounded: `connect_timeout` for the connection itself (the
//!   libraries enforce it), plus a guard around the set-up queries that follow.

use std::time::Duration;

use completions::{Backend, OpenOptions, Scheme};

use crate::error::{CliError, Kind};

/// The default of `--connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings given on the command line; `None` means the library's default.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Valkey key prefix (library default `completions`).
    pub prefix: Option<String>,
    /// PostgreSQL schema (library default `completions`).
    pub schema: Option<String>,
    /// Valkey partition count of the prefix (library default 16).
    pub partitions: Option<u16>,
    /// Limit on connecting (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Option<Duration>,
}

impl Options {
    fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Refuses options that do not apply to `scheme`'s backend, naming the one that does.
    pub fn check_for(&self, scheme: Scheme) -> Result<(), CliError> {
        let valkey = scheme == Scheme::Valkey;
        let postgres = scheme == Scheme::Postgres;
        if self.prefix.is_some() && !valkey {
            return Err(CliError::usage("--prefix applies to Valkey/Redis URLs only (PostgreSQL: --schema)"));
        }
        if self.partitions.is_some() && !valkey {
            return Err(CliError::usage("--partitions applies to Valkey/Redis URLs only"));
        }
        if self.schema.is_some() && !postgres {
            return Err(CliError::usage("--schema applies to PostgreSQL URLs only (Valkey/Redis: --prefix)"));
        }
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(CliError::usage("--connect-timeout must be longer than zero"));
        }
        Ok(())
    }

    /// How the CLI opens a backend: as given on the command line, with no migrations and
    /// no background trim (see the module docs), a pool of two and its own
    /// `application_name`.
    pub fn open_options(&self) -> OpenOptions {
        let mut options = OpenOptions::default()
            .with_connect_timeout(self.connect_timeout())
            .with_migrate(false)
            .with_background_retention(false)
            .with_application_name("completions-cli")
            .with_pool_size(2);
        if let Some(prefix) = &self.prefix {
            options = options.with_key_prefix(prefix);
        }
        if let Some(partitions) = self.partitions {
            options = options.with_partitions(partitions);
        }
        if let Some(schema) = &self.schema {
            options = options.with_schema(schema);
        }
        options
    }
}

/// Connects to the backend `url` names (see [`completions::open`]). Unreachable servers
/// fail with [`Kind::Connect`], bad settings with [`Kind::Usage`], an old or missing
/// PostgreSQL schema with [`Kind::Incompatible`] and a hint to run `completions migrate`.
pub async fn open(url: &str, scheme: Scheme, options: &Options) -> Result<Backend, CliError> {
    let opened = guarded(options, url, completions::open(url, &options.open_options())).await;
    opened.map_err(|e| match e.kind {
        Kind::Incompatible if scheme == Scheme::Postgres => {
            e.context("the schema is not ready (run `completions migrate URL` first)")
        }
        _ => e,
    })
}

/// Runs a connect (or any first contact with the server) within the connect timeout plus
/// room for the set-up queries, naming the server in a failure to reach it.
pub async fn guarded<T>(
    options: &Options,
    url: &str,
    connect: impl Future<Output = Result<T, completions::EngineError>>,
) -> Result<T, CliError> {
    let limit = options.connect_timeout();
    // The libraries bound the connection itself by `limit`; the guard only catches set-up
    // work after it that hangs (a server that accepts and then never answers).
    let guard = limit.saturating_mul(2) + Duration::from_secs(5);
    match tokio::time::timeout(guard, connect).await {
        Ok(Ok(backend)) => Ok(backend),
        Ok(Err(e)) => Err(unreachable(url, e)),
        Err(_) => Err(CliError::new(
            Kind::Connect,
            format!(
                "cannot reach {}: no answer within {}",
                completions::redact_url(url),
                humantime::format_duration(guard)
            ),
        )),
    }
}

/// A failure of a first contact with the server at `url`: when it could not be reached,
/// `cannot reach URL: <the reason, as the system gave it>`, without the library's wrapping
/// (`valkey transport error during connect: could not connect to URL: ...`).
fn unreachable(url: &str, e: completions::EngineError) -> CliError {
    let shown = completions::redact_url(url);
    let reason = match &e {
        completions::EngineError::Transport { source, .. } => Some(completions::error_chain(&**source)),
        _ => None,
    };
    let e = CliError::from(e);
    if e.kind != Kind::Connect {
        return e;
    }
    match reason {
        Some(reason) => {
            let reason = reason.strip_prefix(&format!("could not connect to {shown}: ")).unwrap_or(&reason);
            CliError::new(Kind::Connect, format!("cannot reach {shown}: {reason}"))
        }
        None => e.context(format!("cannot reach {shown}")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SCHEMES: &[&str] =
        &["redis", "valkey", "redis-cluster", "valkey-cluster", "rediss", "postgres", "postgresql", "memory", "http"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text after any scheme, with a password in it: the URL check and the backend
        /// config the CLI builds never panic, a refusal is a usage error of one line, and
        /// the password never shows.
        #[test]
        fn any_url_never_panics_nor_shows_the_password(
            scheme in proptest::sample::select(SCHEMES),
            host in "[a-z0-9.:\\[\\]]{0,12}",
            rest in "\\PC{0,40}",
        ) {
            let url = format!("{scheme}://user:hunter2@{host}{rest}");
            let options = Options::default().open_options();
            match completions::parse_url(&url) {
                Ok(scheme) => {
                    // What `open` checks before connecting: errors only, no panic.
                    let checked = match scheme {
                        Scheme::Valkey => options.valkey_config(&url).check(),
                        Scheme::Postgres => options.postgres_config(&url).check(),
                        _ => Ok(()),
                    };
                    if let Err(e) = checked {
                        let line = CliError::from(e).line(completions::url_password(&url));
                        prop_assert!(!line.contains("hunter2"), "{url}: {line}");
                    }
                }
                Err(e) => {
                    let e = CliError::from(e);
                    prop_assert_eq!(e.kind, Kind::Usage);
                    let line = e.line(None);
                    prop_assert!(!line.contains('\n') && !line.contains("hunter2"), "{url}: {line}");
                }
            }
        }
    }
}
