//! Just enough of the PostgreSQL wire protocol (v3) to tell whether a server
//! accepts sessions and which version it runs: send a startup message, read
//! until `ReadyForQuery`, note the `server_version` parameter, disconnect.
//!
//! Limits: no TLS and only `trust` authentication (what our own servers use);
//! a server asking for a password yields [`ServerError::Protocol`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::ServerError;
use crate::process::connect;

/// Protocol version 3.0.
const PROTOCOL_V3: u32 = 196_608;

/// What a server says when a session opens.
pub(crate) struct Hello {
    /// `server_version`, e.g. `15.20 (Debian 15.20-0+deb12u1)`.
    pub version: String,
    /// The pid of the backend process serving the session.
    pub backend_pid: Option<u32>,
    /// The open session, ended when this is dropped (so the backend lives
    /// while the caller inspects it).
    stream: TcpStream,
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.stream.write_all(&[b'X', 0, 0, 0, 4]); // Terminate
    }
}

/// Opens a session as `user` on `database` and reads the greeting.
pub(crate) fn hello(
    host: &str,
    port: u16,
    user: &str,
    database: &str,
    timeout: Duration,
) -> Result<Hello, ServerError> {
    let at = |e| ServerError::io(format!("talking to PostgreSQL at {host}:{port}"), e);
    let mut stream = connect(host, port, timeout).map_err(at)?;
    let mut body = PROTOCOL_V3.to_be_bytes().to_vec();
    for field in ["user", user, "database", database] {
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    stream.write_all(&startup).map_err(at)?;

    let (mut version, mut backend_pid) = (None, None);
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).map_err(at)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(ServerError::Protocol(format!("bad message length {len}")));
        }
        let mut msg = vec![0; len - 4];
        stream.read_exact(&mut msg).map_err(at)?;
        let mut fields = msg.split(|b| *b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
        match header[0] {
            b'R' => {
                let method = msg.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                if method != Some(0) {
                    return Err(ServerError::Protocol(format!(
                        "the server asks for authentication method {method:?} (only trust is supported)"
                    )));
                }
            }
            // ParameterStatus: name, value.
            b'S' if fields.next().as_deref() == Some("server_version") => version = fields.next(),
            b'E' => {
                let message = fields.find_map(|f| f.strip_prefix('M').map(str::to_string));
                return Err(ServerError::Reply(message.unwrap_or_else(|| "unknown error".into())));
            }
            b'K' => backend_pid = msg.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
            b'Z' => break,
            _ => {} // notices...
        }
    }
    let version = version.ok_or_else(|| ServerError::Protocol("the server sent no server_version".into()))?;
    Ok(Hello { version, backend_pid, stream })
}
