//! Which backend a URL names, checked before anything connects, and how to print a URL
//! without its password.
//!
//! | scheme | backend |
//! |---|---|
//! | `redis://`, `valkey://` | Valkey / Redis |
//! | `rediss://`, `valkeys://` | Valkey / Redis over TLS (build with `--features tls`) |
//! | `redis-cluster://`, `valkey-cluster://` (and `rediss-`/`valkeys-cluster://`) | Valkey Cluster |
//! | `postgres://`, `postgresql://` | PostgreSQL (`?sslmode=require` needs `--features tls`) |
//! | `memory:` | the in-process backend (empty: useful only to try the commands) |
//!
//! Only the scheme and the presence of a host are checked here; the backend's own config
//! checks the rest when it connects, and its errors name the value at fault.

use crate::error::CliError;

/// The backend a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Valkey or Redis server; the URL as given (the library reads every scheme alias).
    Valkey {
        /// The URL.
        url: String,
    },
    /// A PostgreSQL server.
    Postgres {
        /// The URL.
        url: String,
    },
    /// The in-process backend.
    Memory,
}

impl Target {
    /// The backend's name, as in cursors.
    pub fn backend(&self) -> &'static str {
        match self {
            Target::Valkey { .. } => "valkey",
            Target::Postgres { .. } => "postgres",
            Target::Memory => "memory",
        }
    }
}

const SCHEMES: &str = "redis://, rediss://, valkey://, valkeys://, redis-cluster://, valkey-cluster://, \
                       rediss-cluster://, valkeys-cluster://, postgres://, postgresql:// or memory:";

/// Reads `text` as a backend URL.
pub fn parse(text: &str) -> Result<Target, CliError> {
    let shown = redact(text);
    if text == "memory:" || text == "memory://" {
        return Ok(Target::Memory);
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(CliError::usage(format!("`{shown}` is not a backend URL: expected one of {SCHEMES}")));
    };
    let target = match scheme.to_ascii_lowercase().as_str() {
        "redis" | "valkey" | "redis-cluster" | "valkey-cluster" => Target::Valkey { url: text.to_string() },
        "rediss" | "valkeys" | "rediss-cluster" | "valkeys-cluster" => {
            if !cfg!(feature = "tls") {
                return Err(CliError::usage(format!(
                    "`{shown}` asks for TLS, and this build of completions has none: build it with `--features tls`"
                )));
            }
            Target::Valkey { url: text.to_string() }
        }
        "postgres" | "postgresql" => Target::Postgres { url: text.to_string() },
        "memory" => {
            return Err(CliError::usage(format!(
                "`{shown}`: the in-process backend is written `memory:`, nothing after"
            )));
        }
        _ => {
            return Err(CliError::usage(format!("`{shown}`: unknown scheme `{scheme}://`, expected one of {SCHEMES}")));
        }
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    // PostgreSQL may name its host in the query instead (`postgres:///db?host=/run/postgresql`).
    let host_in_query = matches!(target, Target::Postgres { .. }) && rest.contains("host=");
    if (host.is_empty() || host.starts_with(':')) && !host_in_query {
        return Err(CliError::usage(format!("`{shown}` names no host")));
    }
    Ok(target)
}

/// The password of `url`, if any (the library's [`completion_core::url_password`]).
pub fn password(url: &str) -> Option<&str> {
    completion_core::url_password(url)
}

/// `url` with its password replaced by `***`, for every line the CLI prints (the library's
/// [`completion_core::redact_url`], so the CLI and the backends' errors agree).
pub fn redact(url: &str) -> String {
    completion_core::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn schemes_pick_the_backend() {
        assert_eq!(parse("redis://h:1").unwrap().backend(), "valkey");
        assert_eq!(parse("valkey://u:p@h/2").unwrap().backend(), "valkey");
        assert_eq!(parse("redis-cluster://h:1?node=h:2").unwrap().backend(), "valkey");
        assert_eq!(parse("valkey-cluster://h:1").unwrap().backend(), "valkey");
        assert_eq!(parse("postgres://u@h/db").unwrap().backend(), "postgres");
        assert_eq!(parse("postgresql://h").unwrap().backend(), "postgres");
        assert_eq!(parse("postgres:///db?host=/run/postgresql").unwrap().backend(), "postgres");
        assert_eq!(parse("memory:").unwrap(), Target::Memory);
        if cfg!(feature = "tls") {
            assert_eq!(parse("valkeys://h").unwrap().backend(), "valkey");
        } else {
            assert!(parse("rediss://h").unwrap_err().to_string().contains("--features tls"));
        }
    }

    #[test]
    fn bad_urls_are_usage_errors_that_name_the_url() {
        for (url, says) in [
            ("http://h", "unknown scheme `http://`"),
            ("garbage", "not a backend URL"),
            ("redis://", "names no host"),
            ("redis://:6379", "names no host"),
            ("postgres://u@/db", "names no host"),
            ("memory:x", "not a backend URL"),
            ("memory://x", "written `memory:`"),
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err.kind, Kind::Usage, "{url}");
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
        let err = parse("mysql://u:hunter2@h").unwrap_err().to_string();
        assert!(!err.contains("hunter2") && err.contains("u:***@h"), "{err}");
    }

    #[test]
    fn passwords_are_found_and_redacted() {
        assert_eq!(redact("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:hunter2@h"), "redis://:***@h");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=hunter2"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("postgres://u@h/d?x=a@b:c"), "postgres://u@h/d?x=a@b:c");
        assert_eq!(password("redis://u:hunter2@h"), Some("hunter2"));
        assert_eq!(password("postgres://u@h/db?password=hunter2&x=1"), Some("hunter2"));
        assert_eq!(password("redis://h"), None);
        // Unencoded `/`, `?` and `#` in a password: still found, still hidden.
        for url in ["redis://u:pa/ss@h:1/0", "redis://u:pa?ss@h:1", "redis://u:p#w@h"] {
            let secret = password(url).unwrap_or_else(|| panic!("no password found in {url}"));
            assert!(!redact(url).contains(secret), "{url} -> {}", redact(url));
            assert!(redact(url).contains("u:***@h"), "{url} -> {}", redact(url));
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::connect::{Options, postgres_config, valkey_config};

        const SCHEMES: &[&str] = &[
            "redis",
            "valkey",
            "redis-cluster",
            "valkey-cluster",
            "rediss",
            "postgres",
            "postgresql",
            "memory",
            "http",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text after any scheme, with a password in it: the CLI's parser and the
            /// backend config it builds never panic, a refusal is a usage error of one line,
            /// and the password never shows.
            #[test]
            fn any_url_never_panics_nor_shows_the_password(
                scheme in proptest::sample::select(SCHEMES),
                host in "[a-z0-9.:\\[\\]]{0,12}",
                rest in "\\PC{0,40}",
            ) {
                let url = format!("{scheme}://user:hunter2@{host}{rest}");
                match parse(&url) {
                    Ok(target) => {
                        // What `open` would check before connecting: errors only, no panic.
                        let checked = match &target {
                            Target::Valkey { url } => valkey_config(url, &Options::default()).check(),
                            Target::Postgres { url } => postgres_config(url, &Options::default()).check(),
                            Target::Memory => Ok(()),
                        };
                        if let Err(e) = checked {
                            let e = CliError::from(e);
                            let line = e.line(password(&url));
                            prop_assert!(!line.contains("hunter2"), "{url}: {line}");
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind, crate::error::Kind::Usage);
                        let line = e.line(None);
                        prop_assert!(!line.contains('\n') && !line.contains("hunter2"), "{url}: {line}");
                    }
                }
            }
        }
    }
}
