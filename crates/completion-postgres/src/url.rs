//! The server address: a `postgres://` URL (or a libpq `key=value` string) read into a
//! `tokio_postgres::Config` ([`parse`]), and the `host:port` list error messages name
//! ([`server_name`]).
//!
//! Every part of a `postgres://` URL is checked before tokio-postgres reads it, so that an
//! error names the part at fault (tokio-postgres says only "invalid connection string").
//! Accepted query parameters are those tokio-postgres 0.7 reads ([`PARAMETERS`]); any other
//! is refused by name, with the accepted ones listed. A libpq `key=value` string is left to
//! tokio-postgres, whose reason ("unknown option `x`") is passed on. No error shows the
//! password.

use std::net::IpAddr;

use completion_core::EngineError;
use percent_encoding::percent_decode_str;

/// Reads `url` into a `tokio_postgres::Config`; the error ([`EngineError::InvalidInput`],
/// `postgres url`) names the part at fault and shows the URL without its password.
pub(crate) fn parse(url: &str) -> Result<tokio_postgres::Config, EngineError> {
    let bad = |reason: String| EngineError::invalid("postgres url", completion_core::redact_url(url), reason);
    check(url).map_err(bad)?;
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        // tokio-postgres's reason is its error's source ("unknown option `x`").
        let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        let listed =
            if reason.starts_with("unknown option") { format!("; accepted: {}", accepted()) } else { String::new() };
        bad(format!("{reason}{listed}"))
    })
}

/// `host:port` of the configured server(s), for error messages.
pub(crate) fn server_name(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The query parameters (and `key=value` keys) tokio-postgres reads, with what each takes.
pub(crate) const PARAMETERS: &[(&str, Value)] = &[
    ("user", Value::Text),
    ("password", Value::Text),
    ("dbname", Value::Text),
    ("options", Value::Text),
    ("application_name", Value::Text),
    ("sslmode", Value::OneOf(&["disable", "prefer", "require"])),
    ("sslnegotiation", Value::OneOf(&["postgres", "direct"])),
    ("host", Value::Text),
    ("hostaddr", Value::Addresses),
    ("port", Value::Ports),
    ("connect_timeout", Value::Seconds),
    ("tcp_user_timeout", Value::Seconds),
    ("keepalives", Value::OneOf(&["0", "1"])),
    ("keepalives_idle", Value::Seconds),
    ("keepalives_interval", Value::Seconds),
    ("keepalives_retries", Value::Count),
    ("target_session_attrs", Value::OneOf(&["any", "read-write", "read-only"])),
    ("channel_binding", Value::OneOf(&["disable", "prefer", "require"])),
    ("load_balance_hosts", Value::OneOf(&["disable", "random"])),
];

/// What a parameter takes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value {
    /// Any text.
    Text,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// Comma-separated IP addresses.
    Addresses,
    /// Comma-separated ports, 1 to 65535 (empty: 5432).
    Ports,
    /// Whole seconds (0 or less: none).
    Seconds,
    /// A count, 0 to 4294967295.
    Count,
}

/// The accepted parameter names, for error messages.
pub(crate) fn accepted() -> String {
    PARAMETERS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// Checks a `postgres://` or `postgresql://` URL part by part; other text (a `key=value`
/// string) passes. The error is the reason, naming the part (never the password).
pub(crate) fn check(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) else {
        return Ok(());
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    // As tokio-postgres reads it: the user info ends at the first `@`, the hosts at `/`.
    let (credentials, hosts) = before_query.split_once('@').map_or((None, before_query), |(c, h)| (Some(c), h));
    let hosts = hosts.split('/').next().unwrap_or_default();
    // A password with an unencoded `@` or `/` moves the cut: name no host then, it may be
    // a piece of the password.
    let may_hold_password =
        credentials.is_some_and(|c| c.contains(':')) && (hosts.contains('@') || rest.matches('@').count() > 1);
    if let Some(credentials) = credentials {
        let user = credentials.split(':').next().unwrap_or_default();
        decode(user).map_err(|()| "the user name is not UTF-8 once percent-decoded".to_string())?;
    }
    for chunk in hosts.split(',').filter(|c| !c.is_empty()) {
        let name = |what: String| if may_hold_password { what } else { format!("in the host `{chunk}`, {what}") };
        let port = if let Some(bracketed) = chunk.strip_prefix('[') {
            let (address, after) =
                bracketed.split_once(']').ok_or_else(|| name("the IPv6 address has no closing `]`".into()))?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(name(format!("`{address}` is not an IPv6 address")));
            }
            match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| name("the `]` must be followed by `:port`".into()))?),
            }
        } else {
            let host = chunk.split_once(':').map_or(chunk, |(host, _)| host);
            decode(host).map_err(|()| name("the host name is not UTF-8 once percent-decoded".into()))?;
            chunk.split_once(':').map(|(_, port)| port)
        };
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            ports(port).map_err(name)?;
        }
    }
    for segment in query.split('&').filter(|s| !s.is_empty()) {
        let Some((key, value)) = segment.split_once('=') else {
            return Err(format!("the query parameter `{segment}` has no value (`{segment}=...`)"));
        };
        let key =
            decode(key).map_err(|()| format!("the query parameter name `{key}` is not UTF-8 once percent-decoded"))?;
        let Some((_, kind)) = PARAMETERS.iter().find(|(name, _)| *name == key) else {
            return Err(format!("unknown query parameter `{key}`; accepted: {}", accepted()));
        };
        let shown = if key == "password" { "***".to_string() } else { value.to_string() };
        let value = decode(value).map_err(|()| format!("`{key}={shown}` is not UTF-8 once percent-decoded"))?;
        if key == "host" {
            continue; // a name or a socket directory: tokio-postgres takes any
        }
        let wrong = match kind {
            Value::Text => None,
            Value::OneOf(words) => (!words.contains(&value.as_str())).then(|| format!("one of {}", words.join(", "))),
            Value::Addresses => value
                .split(',')
                .any(|a| a.parse::<IpAddr>().is_err())
                .then(|| "comma-separated IP addresses".to_string()),
            Value::Ports => ports(&value).err(),
            Value::Seconds => value.parse::<i64>().is_err().then(|| "a whole number of seconds".to_string()),
            Value::Count => value.parse::<u32>().is_err().then(|| "a number from 0 to 4294967295".to_string()),
        };
        if let Some(expected) = wrong {
            return Err(format!("the query parameter `{key}={shown}` must be {expected}"));
        }
    }
    Ok(())
}

/// Comma-separated ports as tokio-postgres reads them (an empty one is 5432).
fn ports(text: &str) -> Result<(), String> {
    for port in text.split(',').filter(|p| !p.is_empty()) {
        if !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err(format!("`{port}` is not a port number from 1 to 65535"));
        }
    }
    Ok(())
}

fn decode(text: &str) -> Result<String, ()> {
    percent_decode_str(text).decode_utf8().map(|s| s.into_owned()).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_urls_and_key_value_strings_pass() {
        for url in [
            "postgres://u:p@h/db",
            "postgresql://h:5433,h2:5434/db?sslmode=require&application_name=x&connect_timeout=3",
            "postgres:///db?host=/run/postgresql",
            "postgres://[::1]:5432/db?target_session_attrs=read-write&hostaddr=127.0.0.1,::1&port=1,2",
            "postgres://u:pa%40ss@h/db?password=x%26y&keepalives=1&keepalives_retries=3",
            "host=h bogus=1",
        ] {
            assert_eq!(check(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn server_names_list_each_host_with_its_port() {
        let pg = parse("postgres://u@a:5433,b/db").unwrap();
        assert_eq!(server_name(&pg), "a:5433,b:5432");
        let pg = parse("host=/run/postgresql port=6000").unwrap();
        assert_eq!(server_name(&pg), "/run/postgresql:6000");
    }

    #[test]
    fn each_bad_part_is_named() {
        for (url, says) in [
            ("postgres://u@h:notaport/db", "in the host `h:notaport`, `notaport` is not a port number from 1 to 65535"),
            ("postgres://u@h:0/db", "`0` is not a port number"),
            ("postgres://u@[::1/db", "no closing `]`"),
            ("postgres://u@[zz]:1/db", "`zz` is not an IPv6 address"),
            ("postgres://h/db?foo=bar", "unknown query parameter `foo`; accepted: user, password,"),
            ("postgres://h/db?sslmode=bogus", "`sslmode=bogus` must be one of disable, prefer, require"),
            ("postgres://h/db?port=x", "`port=x` must be"),
            ("postgres://h/db?connect_timeout=soon", "`connect_timeout=soon` must be a whole number of seconds"),
            ("postgres://h/db?hostaddr=nope", "comma-separated IP addresses"),
            ("postgres://h/db?sslmode", "`sslmode` has no value"),
            ("postgres://h/db?password=%ff", "`password=***` is not UTF-8"),
            ("postgres://u@h:,%a0/db", "in the host `%a0`, the host name is not UTF-8"),
        ] {
            let err = check(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
        let err = check("postgres://u:se@cret@h:x/db").unwrap_err();
        assert!(!err.contains("cret"), "{err}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::{PARAMETERS, check};
        use crate::PostgresConfig;

        fn token() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9_.%,:\\-]{0,8}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text: the check and tokio-postgres's parser behind it never panic, and a
            /// refusal is an invalid-input error.
            #[test]
            fn any_text_never_panics(text in "\\PC{0,60}", prefixed in any::<bool>()) {
                let url = if prefixed { format!("postgres://{text}") } else { text };
                let _ = check(&url);
                if let Err(e) = PostgresConfig::from_url(url.clone()).validate() {
                    prop_assert!(matches!(e, completion_core::EngineError::InvalidInput { .. }), "{url}: {e}");
                }
            }

            /// Random query parameters, known names or not, with random values: accepted, or
            /// refused naming the parameter (never showing a password's value).
            #[test]
            fn a_bad_query_parameter_is_named(
                params in proptest::collection::vec(
                    (prop_oneof![proptest::sample::select(PARAMETERS).prop_map(|(k, _)| k.to_string()), token()], token()),
                    1..4,
                ),
                port in prop_oneof![Just(String::new()), token()],
            ) {
                let port_part = if port.is_empty() { String::new() } else { format!(":{port}") };
                let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let url = format!("postgres://u@h{port_part}/db?{}", query.join("&"));
                if let Err(e) = PostgresConfig::from_url(url.clone()).validate() {
                    let text = e.to_string();
                    let named = params.iter().any(|(k, _)| text.contains(&format!("`{k}")))
                        || text.contains("port number")
                        || text.contains("host");
                    prop_assert!(named, "{url}: names no part: {text}");
                    for (k, v) in &params {
                        if k == "password" && v.len() > 2 {
                            prop_assert!(!text.contains(&format!("password={v}")), "{url}: {text}");
                        }
                    }
                }
            }
        }
    }
}
