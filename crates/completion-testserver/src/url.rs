//! A minimal parser for `scheme://[user[:password]@]host[:port][/path][?query]`,
//! enough for `VALKEY_URL` and `DATABASE_URL`. Percent-escapes in the user and
//! password are decoded; the query is ignored; Unix-socket URLs (empty host)
//! are rejected.

use crate::ServerError;

/// The parts of a server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The path without its leading `/`.
    pub path: String,
}

impl Url {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, ServerError> {
        let bad = |why: &str| ServerError::InvalidUrl(why.to_string());
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("missing `://`"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((u, p)) => (Some(decode(u)?).filter(|u| !u.is_empty()), Some(decode(p)?).filter(|p| !p.is_empty())),
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host (Unix-socket URLs are not supported)"));
        }
        let port = match port {
            Some(p) => Some(p.parse().map_err(|_| bad("the port is not a number"))?),
            None => None,
        };
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// Decodes `%XX` escapes.
fn decode(text: &str) -> Result<String, ServerError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ServerError::InvalidUrl("bad percent-escape".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ServerError::InvalidUrl("escape is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_urls() {
        let u = Url::parse("postgres://me:p%40ss@db.local:6543/app?sslmode=disable").unwrap();
        assert_eq!(u.scheme, "postgres");
        assert_eq!(u.user.as_deref(), Some("me"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!((u.host.as_str(), u.port), ("db.local", Some(6543)));
        assert_eq!(u.path, "app");

        let u = Url::parse("redis://127.0.0.1").unwrap();
        assert_eq!((u.user, u.password, u.port), (None, None, None));
        assert_eq!(u.path, "");

        let u = Url::parse("redis://:secret@[::1]:7000/2").unwrap();
        assert_eq!((u.user, u.password.as_deref()), (None, Some("secret")));
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", Some(7000), "2"));
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(Url::parse("127.0.0.1:6379").is_err());
        assert!(Url::parse("postgres:///db").is_err());
        assert!(Url::parse("redis://h:port").is_err());
        assert!(Url::parse("redis://u:%zz@h").is_err());
    }
}
