//! The dedicated LISTEN connection of one backend instance.
//!
//! tokio-postgres has no listener type: notifications arrive only to whoever polls the
//! `Connection` with `poll_message` (awaiting the connection as a future throws them away),
//! so this module owns both halves and polls the connection itself. A pooled connection
//! cannot LISTEN reliably (the pool drives its connections and may hand them to anyone), so
//! this connection is made outside the pool (docs/server-facts.md, "tokio-postgres 0.7 and
//! deadpool-postgres 0.14").
//!
//! An error or end (`None`) from `poll_message` is terminal, and tokio-postgres says not to
//! poll again after one: the listener keeps it ([`End`]) and never polls the connection again.
//! One met while folding notifications is returned by the next [`Listener::next`]. The caller
//! then drops the listener, reconnects, LISTENs again and re-reads the log, because whatever
//! was notified meanwhile is gone.

use std::future::poll_fn;
use std::time::Duration;

use completion_core::EngineError;
use futures_util::FutureExt;
use tokio_postgres::{AsyncMessage, Client, Connection, Socket};

use super::build::{Dedicated, TlsStream};
use super::errors::pg_error;
use crate::BACKEND;

/// What the connection produced.
#[derive(Debug)]
pub(crate) enum Wake {
    /// At least one notification (others already pending were folded into it): how many,
    /// and their payloads that are not empty, in the order they arrived.
    Notified { count: u64, payloads: Vec<String> },
    /// The connection ended; `None` means it closed without an error.
    Lost(Option<tokio_postgres::Error>),
}

/// A connection in LISTEN mode on one channel.
pub(crate) struct Listener {
    client: Client,
    connection: Connection<Socket, TlsStream>,
    end: End,
}

/// Whether `poll_message` has given its terminal answer (an error, or `None`: closed); once
/// it has, the connection is not polled again.
#[derive(Debug)]
enum End {
    /// Not yet: the connection may be polled.
    Open,
    /// Met while folding notifications: the next [`Listener::next`] returns it.
    Kept(Option<tokio_postgres::Error>),
    /// Returned by [`Listener::next`] already.
    Reported,
}

impl Listener {
    /// Connects, runs `LISTEN "<channel>"`, and returns once it is in effect (LISTEN runs
    /// in its own implicit transaction: when the command completes, it has committed).
    /// Bounded by the connection's `connect_timeout` as a whole.
    pub async fn open(dedicated: &Dedicated, channel: &str) -> Result<Self, EngineError> {
        const OP: &str = "LISTEN";
        let timeout = dedicated.connect_timeout;
        let open = async {
            let (client, mut connection) = dedicated.connect().await.map_err(|e| pg_error("connect (listener)", e))?;
            {
                let listen = crate::schema::listen(channel);
                let command = client.batch_execute(&listen);
                tokio::pin!(command);
                // The command only progresses while the connection is polled.
                loop {
                    tokio::select! {
                        done = &mut command => {
                            done.map_err(|e| pg_error(OP, e))?;
                            break;
                        }
                        message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                            Some(Ok(_)) => {} // a notice, or a notification we will read the log for anyway
                            Some(Err(e)) => return Err(pg_error(OP, e)),
                            None => return Err(EngineError::transport(BACKEND, OP, "connection closed during LISTEN")),
                        },
                    }
                }
            }
            Ok(Self { client, connection, end: End::Open })
        };
        tokio::time::timeout(timeout, open).await.unwrap_or(Err(EngineError::Timeout {
            backend: BACKEND,
            op: OP,
            after: timeout,
        }))
    }

    /// Waits for the next notification or the end of the connection. Cancel-safe. After the
    /// end it answers `Lost` at once, without polling the connection.
    pub async fn next(&mut self) -> Wake {
        match std::mem::replace(&mut self.end, End::Reported) {
            End::Open => self.end = End::Open,
            End::Kept(error) => return Wake::Lost(error),
            End::Reported => return Wake::Lost(None),
        }
        loop {
            match poll_fn(|cx| self.connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let mut payloads = Vec::new();
                    if !n.payload().is_empty() {
                        payloads.push(n.payload().to_string());
                    }
                    let count = 1 + self.drain(&mut payloads);
                    return Wake::Notified { count, payloads };
                }
                Some(Ok(_)) => continue, // notices and future message kinds
                end @ (Some(Err(_)) | None) => {
                    self.end = End::Reported;
                    return Wake::Lost(end.and_then(Result::err));
                }
            }
        }
    }

    /// Folds the notifications already received, without waiting; returns how many, and
    /// adds their payloads that are not empty. Messages other than notifications are
    /// dropped; the connection's end, if met, is kept for the next `next`.
    fn drain(&mut self, payloads: &mut Vec<String>) -> u64 {
        let mut folded = 0;
        while matches!(self.end, End::Open) {
            match poll_fn(|cx| self.connection.poll_message(cx)).now_or_never() {
                Some(Some(Ok(AsyncMessage::Notification(n)))) => {
                    folded += 1;
                    if !n.payload().is_empty() {
                        payloads.push(n.payload().to_string());
                    }
                }
                Some(Some(Ok(_))) => {}
                Some(Some(Err(e))) => self.end = End::Kept(Some(e)),
                Some(None) => self.end = End::Kept(None),
                None => break, // nothing more right now
            }
        }
        folded
    }

    /// Closes the connection politely (Terminate), waiting at most a second.
    pub async fn close(self) {
        let Self { client, mut connection, end } = self;
        if !matches!(end, End::Open) {
            return;
        }
        drop(client);
        let finish = async { while poll_fn(|cx| connection.poll_message(cx)).await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
    }
}

#[cfg(test)]
mod tests {
    use completion_testserver::{PostgresOptions, PostgresServer};
    use tokio_postgres::error::SqlState;

    use super::*;

    const CHANNEL: &str = "listener_test";

    /// A listener whose session is terminated after the server sent it three notifications:
    /// the notifications and the session's end reach the client together. `next` returns the
    /// three folded into one wake-up, then the end that folding met (the server's
    /// `57P01`, not a second answer from the dead connection, which says only "closed"), then
    /// `Lost` again at once, without polling the connection.
    #[tokio::test]
    async fn an_end_met_while_folding_is_kept_for_next_and_the_connection_not_polled_again() {
        let server = tokio::task::spawn_blocking(|| PostgresServer::from_env_or_start(PostgresOptions::default()))
            .await
            .expect("starting the server panicked")
            .expect("PostgreSQL starts");
        let name = format!("listener-test-{}", uuid::Uuid::new_v4().simple());
        let mut pg: tokio_postgres::Config = server.url().parse().expect("the test server's URL parses");
        pg.application_name(&name);
        let timeout = Duration::from_secs(10);
        let tls = super::super::build::connector(&crate::PostgresConfig::default()).expect("the default TLS setup");
        let dedicated = Dedicated { pg, tls, connect_timeout: timeout };
        let (admin, connection) =
            tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.expect("admin connection");
        tokio::spawn(connection);
        // The server process sends the notifications when it notices them, and a termination
        // that arrives first wins (nothing outside shows that they were sent): such an attempt
        // starts over.
        for _ in 0..5 {
            let mut listener = Listener::open(&dedicated, CHANNEL).await.expect("LISTEN");
            admin
                .batch_execute(&format!(
                    "BEGIN; NOTIFY {CHANNEL}, '1'; NOTIFY {CHANNEL}, '2'; NOTIFY {CHANNEL}, '3'; COMMIT"
                ))
                .await
                .expect("NOTIFY");
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Waits until the process has exited: its notifications and its FATAL error are
            // all on the way to the client, which has not read any of them yet.
            let terminated = admin
                .query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&name],
                )
                .await
                .expect("pg_terminate_backend")
                .get::<_, i64>(0);
            assert_eq!(terminated, 1, "the listener's session is found and terminated");
            match listener.next().await {
                Wake::Notified { count, payloads } => {
                    assert_eq!((count, payloads), (3, vec!["1".to_string(), "2".into(), "3".into()]));
                }
                Wake::Lost(_) => continue,
            }
            match tokio::time::timeout(timeout, listener.next()).await.expect("the kept end returns at once") {
                Wake::Lost(Some(error)) => assert_eq!(error.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{error}"),
                other => panic!("expected the session's end (57P01), got {other:?}"),
            }
            let again = tokio::time::timeout(Duration::from_millis(100), listener.next()).await;
            assert!(matches!(again, Ok(Wake::Lost(None))), "after the end, Lost at once: {again:?}");
            return;
        }
        panic!("in 5 attempts the termination always overtook the notifications");
    }
}
