//! A tiny blocking RESP2 client: one connection per command, enough for tests
//! to send `PING`, `CONFIG SET`, `CLIENT KILL`, `PUBSUB NUMSUB`...
//!
//! Limits: RESP2 replies only (simple string, error, integer, bulk string,
//! array, and their nil forms); no TLS, no pipelining, no pub/sub mode.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::time::Duration;

use crate::ServerError;
use crate::process::connect;
use crate::url::Url;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (only seen inside arrays: a top-level error becomes [`ServerError::Reply`]).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<Reply>),
}

/// Renders the reply as text: strings as they are (bulk strings decoded
/// lossily as UTF-8), integers in decimal, nil as `(nil)`, and arrays as their
/// elements (flattened) one per line.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(s) | Reply::Error(s) => f.write_str(s),
            Reply::Integer(n) => write!(f, "{n}"),
            Reply::Bulk(b) => f.write_str(&String::from_utf8_lossy(b)),
            Reply::Nil => f.write_str("(nil)"),
            Reply::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

/// Where to send commands, and how to log in.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    user: Option<String>,
    password: Option<String>,
    db: Option<u32>,
}

impl Endpoint {
    /// A server of ours on 127.0.0.1.
    pub fn local(port: u16) -> Self {
        Self { host: "127.0.0.1".into(), port, user: None, password: None, db: None }
    }

    /// Parses `redis://` / `valkey://` URLs (port 6379 when absent).
    pub fn from_url(text: &str) -> Result<Self, ServerError> {
        let url = Url::parse(text)?;
        if !matches!(url.scheme.as_str(), "redis" | "valkey") {
            return Err(ServerError::InvalidUrl(format!(
                "scheme `{}` is not supported (use redis:// or valkey://; TLS is not supported)",
                url.scheme
            )));
        }
        let db = match url.path.as_str() {
            "" => None,
            p => Some(p.parse().map_err(|_| ServerError::InvalidUrl("the path must be a database number".into()))?),
        };
        Ok(Self { host: url.host, port: url.port.unwrap_or(6379), user: url.user, password: url.password, db })
    }

    /// Connects, logs in, sends one command and reads its reply.
    pub fn call(&self, args: &[&str], timeout: Duration) -> Result<Reply, ServerError> {
        let at = |e| ServerError::io(format!("talking to {}:{}", self.host, self.port), e);
        let stream = connect(&self.host, self.port, timeout).map_err(at)?;
        let mut writer = stream.try_clone().map_err(at)?;
        let mut reader = BufReader::new(stream);
        let db = self.db.map(|d| d.to_string());
        let mut login: Vec<Vec<&str>> = Vec::new();
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => login.push(vec!["AUTH", u, p]),
            (None, Some(p)) => login.push(vec!["AUTH", p]),
            _ => {}
        }
        if let Some(db) = &db {
            login.push(vec!["SELECT", db]);
        }
        let mut exchange = |command: &[&str]| -> Result<Reply, ServerError> {
            writer.write_all(&encode(command)).map_err(at)?;
            match read_reply(&mut reader).map_err(at)? {
                Reply::Error(e) => Err(ServerError::Reply(e)),
                reply => Ok(reply),
            }
        };
        for command in &login {
            exchange(command)?;
        }
        exchange(args)
    }
}

/// Encodes a command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply.
fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(bad("connection closed or line without CRLF".into()));
    };
    let (kind, body) = line.split_first().ok_or_else(|| bad("empty line".into()))?;
    let text = String::from_utf8_lossy(body).into_owned();
    let number = || text.parse::<i64>().map_err(|_| bad(format!("bad number `{text}`")));
    Ok(match kind {
        b'+' => Reply::Simple(text.clone()),
        b'-' => Reply::Error(text.clone()),
        b':' => Reply::Integer(number()?),
        b'$' => match number()? {
            -1 => Reply::Nil,
            n @ 0..=536_870_912 => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                if buf.split_off(n as usize) != b"\r\n" {
                    return Err(bad("bulk string without CRLF".into()));
                }
                Reply::Bulk(buf)
            }
            n => return Err(bad(format!("bad bulk length {n}"))),
        },
        b'*' => match number()? {
            -1 => Reply::Nil,
            n @ 0..=16_777_216 => Reply::Array((0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?),
            n => return Err(bad(format!("bad array length {n}"))),
        },
        other => return Err(bad(format!("unsupported RESP type byte {:?}", *other as char))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        read_reply(&mut &bytes[..])
    }

    #[test]
    fn encodes_bulk_array() {
        assert_eq!(encode(&["SET", "k", ""]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_every_resp2_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Reply::Error("ERR no".into()));
        assert_eq!(parse(b":-7\r\n").unwrap(), Reply::Integer(-7));
        assert_eq!(parse(b"$5\r\na\r\nbc\r\n").unwrap(), Reply::Bulk(b"a\r\nbc".to_vec()));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Reply::Nil);
        let nested = parse(b"*3\r\n$2\r\nch\r\n:1\r\n*2\r\n$0\r\n\r\n$-1\r\n").unwrap();
        assert_eq!(
            nested,
            Reply::Array(vec![
                Reply::Bulk(b"ch".to_vec()),
                Reply::Integer(1),
                Reply::Array(vec![Reply::Bulk(vec![]), Reply::Nil]),
            ])
        );
        assert_eq!(nested.to_string(), "ch\n1\n\n(nil)");
        assert_eq!(parse(b"*0\r\n").unwrap().to_string(), "");
    }

    #[test]
    fn rejects_malformed_replies() {
        assert!(parse(b"").is_err());
        assert!(parse(b"+OK").is_err());
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
        assert!(parse(b"$2\r\na").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"%1\r\n").is_err());
        assert!(parse(b"*2\r\n+a\r\n").is_err());
    }
}
