//! The server URL: its scheme normalised for the client library ([`target`]: `valkey://`
//! reads as `redis://`, `-cluster` schemes and the `cluster` setting select cluster mode,
//! `rediss://` / `valkeys://` ask for TLS), and every other part checked before fred reads
//! it, each error naming the part at fault in a plain sentence.
//!
//! fred reads the host, the port, the credentials, the database (the path, standalone only)
//! and `node=host:port` query parameters (cluster only), and silently ignores anything else:
//! a typo in a query parameter, a database path on a cluster URL. This check refuses those,
//! and words fred's own complaints (`InvalidPort`, `Invalid integer string.`) as sentences.
//!
//! | part | accepted |
//! |---|---|
//! | host | a name, an IPv4 address or a bracketed IPv6 address; required |
//! | port | 1 to 65535; default 6379 |
//! | path (standalone) | none, `/`, or `/N` with N the database, 0 to 255 (fred's `u8`; the server refuses a number at or above its `databases` setting, 16 by default) |
//! | path (cluster) | none, `/` or `/0`: a cluster has database 0 only |
//! | query (standalone) | none |
//! | query (cluster) | `node=host:port`, repeated: more seed nodes |
//! | fragment (`#...`) | none |

use completion_core::{EngineError, redact_url};
use url::Url;

/// The highest database number the client can select (fred keeps it in a `u8`).
pub(crate) const MAX_DATABASE: u8 = u8::MAX;

/// Where and how to connect (see [`target`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `redis://...` or `redis-cluster://...` (TLS is set up separately).
    pub url: String,
    /// Whether the URL asked for TLS.
    pub tls: bool,
    /// Whether to talk to a cluster.
    pub cluster: bool,
}

/// Whether `url` (with the config's `cluster` setting) talks to a cluster: the setting, or
/// a `-cluster` scheme.
pub(crate) fn is_cluster(url: &str, cluster: bool) -> bool {
    cluster || url.split_once("://").is_some_and(|(scheme, _)| scheme.ends_with("-cluster"))
}

/// Where to connect: the URL for the client library (`redis://...`, or
/// `redis-cluster://...` in cluster mode), whether it asks for TLS, whether it is a
/// cluster. The scheme is checked by [`plain_url`], after taking off `-cluster`; every
/// other part by [`check`] (no unknown query parameter, a database from 0 to 255, ...).
pub(crate) fn target(url: &str, cluster: bool) -> Result<Target, EngineError> {
    let cluster = is_cluster(url, cluster);
    let (plain, tls) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.ends_with("-cluster") => {
            let base = scheme.trim_end_matches("-cluster");
            plain_url(&format!("{base}://{rest}"), url)?
        }
        _ => plain_url(url, url)?,
    };
    let plain = match plain.strip_prefix("redis://") {
        Some(rest) if cluster => format!("redis-cluster://{rest}"),
        _ => plain,
    };
    check(&plain, url, cluster)?;
    Ok(Target { url: plain, tls, cluster })
}

/// `url` as `redis://...` (whatever the scheme) and whether it asks for TLS. Refuses other
/// schemes, and TLS without the `tls` feature; errors show `original`, the URL as the user
/// wrote it (with its `-cluster`).
fn plain_url(url: &str, original: &str) -> Result<(String, bool), EngineError> {
    let bad = |reason: &str| EngineError::invalid("url", redact_url(original), reason);
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected `redis://host:port`"))?;
    let tls = match scheme {
        "redis" | "valkey" => false,
        "rediss" | "valkeys" => true,
        _ => {
            return Err(bad(
                "the scheme must be redis://, rediss://, valkey:// or valkeys://, or one of those with -cluster \
                 (sentinel and unix sockets are not supported)",
            ));
        }
    };
    if tls && !cfg!(feature = "tls") {
        return Err(bad("TLS needs the `tls` cargo feature of completion-valkey"));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with('/') || host.starts_with(':') {
        return Err(bad("has no host"));
    }
    Ok((format!("redis://{rest}"), tls))
}

/// Checks `url` (`redis://...` or `redis-cluster://...`, as [`target`] normalizes it);
/// `original` is the URL as the user wrote it, shown (redacted) in errors. Returns the
/// database the path names, if any.
fn check(url: &str, original: &str, cluster: bool) -> Result<Option<u8>, EngineError> {
    let shown = redact_url(original);
    let bad = |reason: String| EngineError::invalid("url", &shown, reason);
    let parsed = Url::parse(url).map_err(|e| bad(parse_error(e, &shown, original)))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host".into()));
    }
    if parsed.port() == Some(0) {
        return Err(bad("the port 0 cannot be connected to: use 1 to 65535".into()));
    }
    if parsed.fragment().is_some() {
        return Err(bad(
            "has a `#` fragment, which a Valkey URL does not take (write a `#` in a password as %23)".into()
        ));
    }
    // The path as written: the parser drops dot segments (`/.` and `/..` read as `/`), which
    // would pass a path that names no database for none.
    let database = database(raw_path(url).unwrap_or(parsed.path()), cluster).map_err(bad)?;
    for segment in parsed.query().unwrap_or_default().split('&').filter(|s| !s.is_empty()) {
        query_parameter(segment, cluster).map_err(bad)?;
    }
    Ok(database)
}

/// The path of `url` as written: from the first `/` after the authority to the query or
/// fragment (`None`: no authority found; the parser's path is used).
fn raw_path(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let rest = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
    Some(&rest[..rest.find(['?', '#']).unwrap_or(rest.len())])
}

/// The database of the URL's path.
fn database(path: &str, cluster: bool) -> Result<Option<u8>, String> {
    let number = match path.strip_prefix('/') {
        None | Some("") => return Ok(None),
        Some(number) => number,
    };
    let range = format!("0 to {MAX_DATABASE}, and below the server's `databases` setting (16 by default)");
    if number.contains('/') {
        return Err(format!("the path `{path}` must be one database number (`/N`, N from {range})"));
    }
    let database = number
        .parse::<u8>()
        .ok()
        .filter(|_| number.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("the database `{number}` (the URL's path) must be a number from {range}"))?;
    if cluster && database != 0 {
        return Err(format!("the database `{number}` (the URL's path): a cluster has database 0 only"));
    }
    Ok(Some(database))
}

/// One `key=value` of the query.
fn query_parameter(segment: &str, cluster: bool) -> Result<(), String> {
    let accepted = if cluster {
        "a cluster URL takes only `node=host:port` (more seed nodes)"
    } else {
        "a standalone URL takes none (`node=host:port` is for redis-cluster:// and valkey-cluster:// URLs)"
    };
    let Some((key, value)) = url::form_urlencoded::parse(segment.as_bytes()).next() else { return Ok(()) };
    if !segment.contains('=') {
        return Err(format!("the query parameter `{key}` has no value: {accepted}"));
    }
    if key == "node" && !cluster {
        return Err(
            "the query parameter `node` is for cluster URLs (redis-cluster://, valkey-cluster://): a standalone URL \
             takes no query parameters"
                .into(),
        );
    }
    if key != "node" {
        return Err(format!("unknown query parameter `{key}`: {accepted}"));
    }
    // As fred reads it: exactly one `:`, then a port.
    let node = value
        .split_once(':')
        .filter(|(host, port)| !host.is_empty() && !port.contains(':') && port.parse::<u16>().is_ok_and(|p| p != 0));
    if node.is_none() {
        return Err(format!(
            "the query parameter `node={value}` must be host:port, with a port from 1 to 65535 (an IPv6 address cannot \
             be given here)"
        ));
    }
    Ok(())
}

/// A sentence for what the `url` crate found wrong, naming the part when it can be found.
fn parse_error(e: url::ParseError, shown: &str, original: &str) -> String {
    use url::ParseError;
    let password = completion_core::url_password(original).is_some();
    // The host and port as the url crate cut them: the authority ends at the first `/`, `?`
    // or `#`. With a password in the URL, an unencoded one of those may have cut it inside
    // the password: then no part is named, lest it be a piece of the password.
    let authority = original.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (host_port, None),
    };
    let (host, port) = if password || !shown.contains(host_port) { ("", None) } else { (host, port) };
    let name = |what: &str, text: &str| if text.is_empty() { what.to_string() } else { format!("{what} `{text}`") };
    let (host, port) = (name("the host", host), name("the port", port.unwrap_or_default()));
    let mut sentence = match e {
        ParseError::EmptyHost => "names no host".to_string(),
        ParseError::InvalidPort => format!("{port} is not a number from 1 to 65535"),
        ParseError::InvalidIpv6Address => format!("{host} is not an IPv6 address"),
        ParseError::InvalidIpv4Address => format!("{host} is not an IPv4 address"),
        ParseError::InvalidDomainCharacter | ParseError::IdnaError => {
            format!("{host} is not a host name (it holds a character a host name cannot have)")
        }
        other => format!("is not a URL: {other}"),
    };
    if password {
        sentence.push_str(" (a password holding `/`, `?`, `#` or `@` must be percent-encoded: %2F, %3F, %23, %40)");
    }
    sentence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str, cluster: bool) -> String {
        check(url, url, cluster).expect_err(url).to_string()
    }

    #[test]
    fn schemes_are_normalized_and_bad_ones_named() {
        let url = |u: &str| plain_url(u, u);
        assert_eq!(url("valkey://h:1/2").unwrap(), ("redis://h:1/2".to_string(), false));
        assert_eq!(url("redis://u:p@h").unwrap(), ("redis://u:p@h".to_string(), false));
        assert!(url("http://h").unwrap_err().to_string().contains("scheme"));
        assert!(url("nothing").is_err());
        assert!(url("redis://").is_err());
        if cfg!(feature = "tls") {
            assert_eq!(url("valkeys://h").unwrap(), ("redis://h".to_string(), true));
        } else {
            assert!(url("rediss://h").unwrap_err().to_string().contains("`tls`"));
        }
        let err = plain_url("redis+unix://u:secret@x", "redis+unix://u:secret@x").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn cluster_urls_and_the_cluster_setting_select_cluster_mode() {
        let seeds = "valkey-cluster://u:p@h1:7000?node=h2:7001&node=h3:7002";
        assert_eq!(
            target(seeds, false).unwrap(),
            Target { url: "redis-cluster://u:p@h1:7000?node=h2:7001&node=h3:7002".into(), tls: false, cluster: true }
        );
        assert!(target("redis-cluster://h:1", false).unwrap().cluster);
        let by_setting = target("redis://h:1", true).unwrap();
        assert_eq!(by_setting, Target { url: "redis-cluster://h:1".into(), tls: false, cluster: true });
        assert!(!target("redis://h:1", false).unwrap().cluster);
        let err = target("http-cluster://h:1", false).unwrap_err().to_string();
        assert!(err.contains("-cluster"), "{err}");
        if !cfg!(feature = "tls") {
            let err = target("rediss-cluster://h:1", false).unwrap_err().to_string();
            assert!(err.contains("`tls`") && err.contains("rediss-cluster://h:1"), "{err}");
        }
        // A -cluster URL's other faults are named as such, on the URL as written.
        let err = target("valkey-cluster://u:secret@", false).unwrap_err().to_string();
        assert!(err.contains("has no host") && err.contains("valkey-cluster://"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn good_urls_pass_and_give_their_database() {
        assert_eq!(check("redis://h", "valkey://h", false).unwrap(), None);
        assert_eq!(check("redis://u:p@h:6380/", "redis://u:p@h:6380/", false).unwrap(), None);
        assert_eq!(check("redis://h:1/255", "redis://h:1/255", false).unwrap(), Some(255));
        assert_eq!(check("redis://[::1]:7000/2", "redis://[::1]:7000/2", false).unwrap(), Some(2));
        let seeds = "redis-cluster://u:p@h1:7000?node=h2:7001&node=10.0.0.3:7002";
        assert_eq!(check(seeds, seeds, true).unwrap(), None);
        assert_eq!(check("redis-cluster://h:1/0", "redis-cluster://h:1/0", true).unwrap(), Some(0));
    }

    #[test]
    fn each_bad_part_is_named() {
        for (url, cluster, says) in [
            ("redis://127.0.0.1:notaport", false, "the port `notaport` is not a number from 1 to 65535"),
            ("redis://h:65536", false, "the port `65536`"),
            ("redis://h:0", false, "the port 0"),
            ("redis://h:1/999", false, "the database `999` (the URL's path) must be a number from 0 to 255"),
            ("redis://h:1/abc", false, "the database `abc`"),
            ("redis://h:1/+1", false, "the database `+1`"),
            ("redis://h:1/0/1", false, "the path `/0/1` must be one database number"),
            ("redis://h:1/.", false, "the database `.` (the URL's path) must be a number"),
            ("redis://h:1/0/..", false, "the path `/0/..` must be one database number"),
            ("redis://h:1?node=]]", false, "the query parameter `node` is for cluster URLs"),
            ("redis://h:1?db=2", false, "unknown query parameter `db`"),
            ("redis://h:1?x", false, "the query parameter `x` has no value"),
            ("redis-cluster://h:1?node=]]", true, "`node=]]` must be host:port"),
            ("redis-cluster://h:1?node=h2", true, "`node=h2` must be host:port"),
            ("redis-cluster://h:1?node=h2:0", true, "`node=h2:0`"),
            ("redis-cluster://h:1?node=h2:1&nodes=h3:1", true, "unknown query parameter `nodes`"),
            ("redis-cluster://h:1/3", true, "a cluster has database 0 only"),
            ("redis://h:1#x", false, "fragment"),
            ("redis://[::1", false, "is not an IPv6 address"),
            ("redis://:1", false, "names no host"),
        ] {
            let err = error(url, cluster);
            assert!(err.contains(says), "{url}: {err}");
        }
        let err = error("redis://u:pa#ss@h:1", false);
        assert!(!err.contains("pa#ss") && !err.contains("ss@") && err.contains("percent-encoded"), "{err}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::check;
        use crate::ValkeyConfig;

        fn token() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9_.%\\-\\]\\[]{0,8}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text: the checks and fred's parser behind them never panic, and a refusal
            /// is an invalid-input error.
            #[test]
            fn any_text_never_panics(url in "\\PC{0,60}", cluster in any::<bool>()) {
                let _ = check(&url, &url, cluster);
                let config = ValkeyConfig::new(url.clone());
                if let Err(e) = config.validate() {
                    prop_assert!(matches!(e, completion_core::EngineError::InvalidInput { .. }), "{url}: {e}");
                }
            }

            /// A URL with one part replaced by random text: accepted, or refused by an error
            /// that names that part.
            #[test]
            fn a_mutated_part_is_named(
                port in prop_oneof![Just(String::new()), (1u16..).prop_map(|p| p.to_string()), token()],
                path in prop_oneof![Just(String::new()), (0u16..300).prop_map(|d| d.to_string()), token()],
                query in proptest::collection::vec((prop_oneof![Just("node".to_string()), token()], token()), 0..3),
                cluster in any::<bool>(),
            ) {
                let port_part = if port.is_empty() { String::new() } else { format!(":{port}") };
                let path_part = if path.is_empty() { String::new() } else { format!("/{path}") };
                let query_part: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let query_part = if query_part.is_empty() { String::new() } else { format!("?{}", query_part.join("&")) };
                let scheme = if cluster { "redis-cluster" } else { "redis" };
                let url = format!("{scheme}://host{port_part}{path_part}{query_part}");
                let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p != 0);
                match ValkeyConfig::new(url.clone()).validate() {
                    Ok(()) => {
                        prop_assert!(port_ok, "{url}: a bad port passed");
                        let db_ok = path.is_empty() || path.parse::<u8>().is_ok_and(|d| !cluster || d == 0);
                        prop_assert!(db_ok, "{url}: a bad database passed");
                        prop_assert!(cluster || query.is_empty(), "{url}: a standalone query passed");
                    }
                    Err(e) => {
                        let text = e.to_string();
                        let named = [
                            !port_ok && (text.contains(&format!("`{port}`")) || text.contains("the port")),
                            text.contains("database") || text.contains("the path"),
                            query.iter().any(|(k, v)| text.contains(&format!("`{k}")) || text.contains(&format!("{k}={v}`"))),
                            text.contains("host") || text.contains("is not a URL"),
                        ];
                        prop_assert!(named.iter().any(|n| *n), "{url}: names no part: {text}");
                    }
                }
            }
        }
    }
}
