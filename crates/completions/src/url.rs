//! Which backend a URL names: the one list of URL schemes, checked before anything
//! connects (as `object_store`'s `ObjectStoreScheme` and `parse_url`).
//!
//! | scheme | backend | feature |
//! |---|---|---|
//! | `redis://`, `valkey://` | Valkey / Redis | `valkey` |
//! | `rediss://`, `valkeys://` | Valkey / Redis over TLS | `valkey` and `tls` |
//! | `redis-cluster://`, `valkey-cluster://` (`rediss-`/`valkeys-cluster://` with TLS) | Valkey Cluster | `valkey` |
//! | `postgres://`, `postgresql://` | PostgreSQL (`?sslmode=require` needs `tls`) | `postgres` |
//! | `memory:` | the in-process backend (empty on every open) | `memory` |
//!
//! Only the scheme and the presence of a host are checked here; the backend's own config
//! checks the rest when it connects, and its errors name the value at fault.

use completion_core::{EngineError, redact_url};

/// The backend a URL names, whether or not this build includes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `memory:`, the in-process backend (feature `memory`).
    Memory,
    /// A Valkey or Redis server or cluster (feature `valkey`).
    Valkey,
    /// A PostgreSQL server (feature `postgres`).
    Postgres,
}

/// Every scheme with `://`, the backend it names and whether it asks for TLS, in the order
/// error messages list them; `memory:` has no `://` and is matched apart.
const SCHEMES: [(&str, Scheme, bool); 10] = [
    ("redis", Scheme::Valkey, false),
    ("rediss", Scheme::Valkey, true),
    ("valkey", Scheme::Valkey, false),
    ("valkeys", Scheme::Valkey, true),
    ("redis-cluster", Scheme::Valkey, false),
    ("valkey-cluster", Scheme::Valkey, false),
    ("rediss-cluster", Scheme::Valkey, true),
    ("valkeys-cluster", Scheme::Valkey, true),
    ("postgres", Scheme::Postgres, false),
    ("postgresql", Scheme::Postgres, false),
];

impl Scheme {
    /// The backend's name, as in cursors and [`CompletionBackend::backend_name`]
    /// (`memory`, `valkey`, `postgres`).
    ///
    /// [`CompletionBackend::backend_name`]: completion_core::CompletionBackend::backend_name
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Memory => "memory",
            Scheme::Valkey => "valkey",
            Scheme::Postgres => "postgres",
        }
    }

    /// The cargo feature of `completions` that includes this backend.
    pub fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether this build includes the backend (its [feature](Self::feature) is on).
    pub fn is_enabled(self) -> bool {
        match self {
            Scheme::Memory => cfg!(feature = "memory"),
            Scheme::Valkey => cfg!(feature = "valkey"),
            Scheme::Postgres => cfg!(feature = "postgres"),
        }
    }
}

/// Reads `url` as a backend URL: which backend it names, checked before anything connects.
///
/// Refuses, with [`EngineError::InvalidInput`] naming the URL (its password redacted with
/// [`redact_url`]): text that is not a backend URL or has an unknown scheme (the message
/// lists the schemes), a URL that names no host (PostgreSQL may name it in the query
/// instead: `postgres:///db?host=/run/postgresql`), a backend this build leaves out (the
/// message names the feature to enable) and a TLS scheme without the `tls` feature.
///
/// ```
/// use completions::{Scheme, parse_url};
///
/// assert_eq!(parse_url("memory:")?, Scheme::Memory);
/// let unknown = parse_url("mysql://app:hunter2@db/app").unwrap_err().to_string();
/// assert!(unknown.contains("unknown scheme `mysql://`") && !unknown.contains("hunter2"));
/// # Ok::<(), completions::EngineError>(())
/// ```
pub fn parse_url(url: &str) -> Result<Scheme, EngineError> {
    let (scheme, tls) = scheme_of(url)?;
    if !scheme.is_enabled() {
        let feature = scheme.feature();
        return Err(refused(
            url,
            format!(
                "this build of completions leaves the {} backend out: enable the `{feature}` feature \
                 (`cargo add completions --features {feature}`)",
                scheme.name()
            ),
        ));
    }
    if tls && !cfg!(feature = "tls") {
        return Err(refused(
            url,
            "asks for TLS, and this build of completions has none: build it with `--features tls`",
        ));
    }
    Ok(scheme)
}

/// The backend `url` names and whether it asks for TLS, whatever this build includes.
fn scheme_of(url: &str) -> Result<(Scheme, bool), EngineError> {
    if url == "memory:" || url == "memory://" {
        return Ok((Scheme::Memory, false));
    }
    // Text before `://` that cannot be a scheme (`user:password@host://`) is not echoed.
    let is_scheme = |name: &str| {
        name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    let Some((name, rest)) = url.split_once("://").filter(|(name, _)| is_scheme(name)) else {
        return Err(refused(url, format!("not a backend URL: expected one of {}", schemes())));
    };
    let name = name.to_ascii_lowercase();
    let Some(&(_, scheme, tls)) = SCHEMES.iter().find(|(known, _, _)| *known == name) else {
        if name == "memory" {
            return Err(refused(url, "the in-process backend is written `memory:`, nothing after"));
        }
        return Err(refused(url, format!("unknown scheme `{name}://`, expected one of {}", schemes())));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    // PostgreSQL may name its host in the query instead (`postgres:///db?host=/run/postgresql`).
    let host_in_query = scheme == Scheme::Postgres && rest.contains("host=");
    if (host.is_empty() || host.starts_with(':')) && !host_in_query {
        return Err(refused(url, "names no host"));
    }
    Ok((scheme, tls))
}

/// The schemes, as error messages list them: `redis://, rediss://, ... or memory:`.
fn schemes() -> String {
    let names: Vec<String> = SCHEMES.iter().map(|(name, _, _)| format!("{name}://")).collect();
    format!("{} or memory:", names.join(", "))
}

/// An [`EngineError::InvalidInput`] for the backend URL `url`, shown without its password.
fn refused(url: &str, reason: impl Into<String>) -> EngineError {
    EngineError::invalid("backend URL", redact_url(url), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `parse_url` answers for a URL of `scheme`: the scheme, or the refusal that names
    /// the feature this build lacks.
    fn expect(url: &str, scheme: Scheme, tls: bool) {
        match parse_url(url) {
            Ok(found) => {
                assert_eq!(found, scheme, "{url}");
                assert!(scheme.is_enabled() && (!tls || cfg!(feature = "tls")), "{url} opened without its feature");
            }
            Err(e) => {
                let text = e.to_string();
                assert!(matches!(e, EngineError::InvalidInput { what: "backend URL", .. }), "{url}: {e:?}");
                if !scheme.is_enabled() {
                    assert!(text.contains(&format!("enable the `{}` feature", scheme.feature())), "{url}: {text}");
                } else {
                    assert!(tls && !cfg!(feature = "tls") && text.contains("--features tls"), "{url}: {text}");
                }
            }
        }
    }

    #[test]
    fn every_scheme_names_its_backend() {
        for (name, scheme, tls) in SCHEMES {
            expect(&format!("{name}://u:p@h:1/0"), scheme, tls);
            expect(&format!("{}://h", name.to_ascii_uppercase()), scheme, tls);
            assert_eq!(scheme_of(&format!("{name}://h")).unwrap(), (scheme, tls), "{name}");
        }
        expect("memory:", Scheme::Memory, false);
        expect("memory://", Scheme::Memory, false);
        expect("postgres:///db?host=/run/postgresql", Scheme::Postgres, false);
        expect("redis-cluster://h:1?node=h:2", Scheme::Valkey, false);
        assert_eq!(Scheme::Valkey.name(), "valkey");
        assert_eq!(Scheme::Postgres.feature(), "postgres");
    }

    #[test]
    fn bad_urls_are_refused_naming_the_url() {
        for (url, says) in [
            ("http://h", "unknown scheme `http://`"),
            ("garbage", "not a backend URL"),
            ("redis://", "names no host"),
            ("redis://:6379", "names no host"),
            ("valkeys://u:p@", "names no host"),
            ("postgres://u@/db", "names no host"),
            ("memory:x", "not a backend URL"),
            ("memory://x", "written `memory:`"),
            ("://h", "not a backend URL"),
            ("u@h://x", "not a backend URL"),
        ] {
            let err = parse_url(url).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, EngineError::InvalidInput { what: "backend URL", .. }), "{url}: {err:?}");
            assert!(text.contains(says), "{url}: {text}");
            assert!(text.contains(&format!("{:?}", redact_url(url))), "{url}: {text}");
        }
    }

    #[test]
    fn unknown_schemes_list_every_scheme() {
        let text = parse_url("http://h").unwrap_err().to_string();
        for (name, _, _) in SCHEMES {
            assert!(text.contains(&format!("{name}://")), "{name}: {text}");
        }
        assert!(text.ends_with(", postgresql:// or memory:"), "{text}");
    }

    #[test]
    fn a_backend_left_out_names_its_feature() {
        for (url, scheme) in [("redis://h", Scheme::Valkey), ("postgres://h/db", Scheme::Postgres)] {
            match parse_url(url) {
                Ok(found) => assert!(found == scheme && scheme.is_enabled(), "{url}"),
                Err(e) => {
                    let text = e.to_string();
                    let feature = scheme.feature();
                    assert!(!scheme.is_enabled(), "{url}: {text}");
                    assert!(text.contains(&format!("--features {feature}")), "{url}: {text}");
                }
            }
        }
    }

    #[test]
    fn the_password_never_shows() {
        for url in [
            "mysql://u:hunter2@h",
            "redis://u:hunter2@",
            "postgres://u:hunter2@/db",
            "garbage://u:hunter2@h?password=hunter2",
            "postgres://u@/db?password=hunter2",
            "rediss://u:hunter2@h",
            "valkey://u:hunter2@h",
        ] {
            if let Err(e) = parse_url(url) {
                let text = e.to_string();
                assert!(!text.contains("hunter2"), "{url}: {text}");
            }
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text after any scheme, with a password in it: never a panic, and a
            /// refusal is one line that names the URL without the password.
            #[test]
            fn any_url_is_read_or_refused_without_the_password(
                scheme in proptest::sample::select(&["redis", "valkeys", "redis-cluster", "postgres", "memory", "http", ""][..]),
                host in "[a-z0-9.:\\[\\]]{0,12}",
                rest in "\\PC{0,40}",
            ) {
                let url = format!("{scheme}://user:hunter2@{host}{rest}");
                if let Err(e) = parse_url(&url) {
                    let text = e.to_string();
                    prop_assert!(!text.contains('\n') && !text.contains("hunter2"), "{url}: {text}");
                    let is_url_error = matches!(e, EngineError::InvalidInput { what: "backend URL", .. });
                    prop_assert!(is_url_error, "{url}: {e:?}");
                }
            }
        }
    }
}
