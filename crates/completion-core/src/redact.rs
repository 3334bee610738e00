//! Printing a server URL without its password: one implementation for every backend's
//! errors and logs and for the CLI, so that they cannot disagree about what is secret.
//!
//! Handles `scheme://user:password@host...` (the password is whatever lies between the
//! first `:` of the user info and its last `@`, so unencoded `/`, `?`, `#` or `@` in a
//! password are still hidden), a `password=` query parameter, and libpq's `key=value`
//! form (`host=db password=...`). When in doubt it hides too much, never too little: an
//! `@` inside a query value of a URL without user info can hide part of that query.

/// Where the user info of `rest` (a URL after its `scheme://`) ends: its last `@` before
/// the query, else its last `@` anywhere (a password with an unencoded `?` or `#`).
fn userinfo_end(rest: &str) -> Option<usize> {
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    rest[..query].rfind('@').or_else(|| rest.rfind('@'))
}

/// Byte range of the value of the first `password=` query parameter in `rest`.
fn query_password(rest: &str) -> Option<(usize, usize)> {
    query_passwords(rest).into_iter().next()
}

/// Byte ranges of the values of every `password=` query parameter in `rest`.
fn query_passwords(rest: &str) -> Vec<(usize, usize)> {
    let Some(query_at) = rest.find('?').map(|at| at + 1) else { return Vec::new() };
    let mut at = query_at;
    let mut ranges = Vec::new();
    for pair in rest[query_at..].split('&') {
        if let Some(value) = pair.strip_prefix("password=") {
            let start = at + "password=".len();
            ranges.push((start, start + value.len()));
        }
        at += pair.len() + 1;
    }
    ranges
}

/// The password in `url` (user info, `password=` query parameter, or libpq `password=`
/// word), if any: e.g. to scrub it from a client library's error text too.
pub fn url_password(url: &str) -> Option<&str> {
    let Some((_, rest)) = url.split_once("://") else {
        return url.split_whitespace().find_map(|pair| pair.strip_prefix("password="));
    };
    let from_userinfo = userinfo_end(rest).and_then(|at| rest[..at].split_once(':')).map(|(_, p)| p);
    from_userinfo.or_else(|| query_password(rest).map(|(start, end)| &rest[start..end]))
}

/// `url` with its password replaced by `***` (see the module docs for the forms handled).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // libpq's key=value form: hide the value of `password`.
        return url
            .split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.trim() == "password" => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let mut rest = rest.to_string();
    // Every `password=` of the query, not only the first (tokio-postgres takes the last);
    // from the end, so that the earlier ranges stay where they are.
    for (start, end) in query_passwords(&rest).into_iter().rev() {
        rest.replace_range(start..end, "***");
    }
    if let Some(at) = userinfo_end(&rest)
        && let Some(colon) = rest[..at].find(':')
    {
        rest.replace_range(colon + 1..at, "***");
    }
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_and_hidden_in_every_form() {
        assert_eq!(redact_url("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:hunter2@h"), "redis://:***@h");
        assert_eq!(redact_url("postgres://me:p%40ss@db:5432/app"), "postgres://me:***@db:5432/app");
        assert_eq!(redact_url("postgres://me@db/app"), "postgres://me@db/app");
        assert_eq!(redact_url("host=db password=hunter2 user=me"), "host=db password=*** user=me");
        assert_eq!(
            redact_url("postgres://u@h/db?password=a&x=1&password=hunter2"),
            "postgres://u@h/db?password=***&x=1&password=***"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=hunter2"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("postgres://u@h/d?x=a@b:c"), "postgres://u@h/d?x=a@b:c");
        assert_eq!(url_password("redis://u:hunter2@h"), Some("hunter2"));
        assert_eq!(url_password("postgres://u@h/db?password=hunter2&x=1"), Some("hunter2"));
        assert_eq!(url_password("host=db password=hunter2"), Some("hunter2"));
        assert_eq!(url_password("redis://h"), None);
    }

    #[test]
    fn passwords_with_unencoded_delimiters_are_still_hidden() {
        for url in ["redis://u:pa/ss@h:1/0", "redis://u:pa?ss@h:1", "redis://u:p#w@h", "redis://u:p@ss@h"] {
            let secret = url_password(url).unwrap_or_else(|| panic!("no password found in {url}"));
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(shown.starts_with("redis://u:***@h"), "{url} -> {shown}");
        }
    }
}
