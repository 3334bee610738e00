//! The dedicated LISTEN connection of one backend instance.
//!
//! tokio-postgres has no listener type: notifications arrive only to whoever polls the
//! `Connection` with `poll_message` (awaiting the connection as a future throws them away),
//! so this module owns both halves and polls the connection itself. A pooled connection
//! cannot LISTEN reliably (the pool drives its connections and may hand them to anyone), so
//! this connection is made outside the pool. Any error or end of `poll_message` is final:
//! the caller drops the listener, reconnects, LISTENs again and re-reads the log, because
//! whatever was notified meanwhile is gone.

use std::future::poll_fn;
use std::time::Duration;

use completion_core::EngineError;
use futures_util::FutureExt;
use tokio_postgres::{AsyncMessage, Client, Connection, Socket};

use crate::BACKEND;
use crate::db::pg_error;
use crate::tls::{Tls, TlsStream};

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
    /// The connection's end, met while folding notifications: returned by the next `next`
    /// (an error or end of `poll_message` is final; the connection is not polled again).
    ended: Option<Option<tokio_postgres::Error>>,
}

impl Listener {
    /// Connects, runs `LISTEN "<channel>"`, and returns once it is in effect (LISTEN runs
    /// in its own implicit transaction: when the command completes, it has committed).
    /// Bounded by `timeout` as a whole.
    pub async fn open(
        pg: &tokio_postgres::Config,
        tls: Tls,
        channel: &str,
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        const OP: &str = "LISTEN";
        let open = async {
            let (client, mut connection) = pg.connect(tls).await.map_err(|e| pg_error("connect (listener)", e))?;
            // The channel is `<validated schema>_completions`: a plain identifier; quoted so
            // that it is taken as is (LISTEN would silently truncate a longer one, the
            // schema validation keeps it within 63 bytes).
            let listen = format!("LISTEN \"{channel}\"");
            {
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
            Ok(Self { client, connection, ended: None })
        };
        tokio::time::timeout(timeout, open).await.unwrap_or(Err(EngineError::Timeout {
            backend: BACKEND,
            op: OP,
            after: timeout,
        }))
    }

    /// Waits for the next notification or the end of the connection. Cancel-safe.
    pub async fn next(&mut self) -> Wake {
        if let Some(end) = self.ended.take() {
            // Kept by `drain`; `next` is not called again after a `Lost`.
            return Wake::Lost(end);
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
                Some(Err(e)) => return Wake::Lost(Some(e)),
                None => return Wake::Lost(None),
            }
        }
    }

    /// Folds the notifications already received, without waiting; returns how many, and
    /// adds their payloads that are not empty. Messages other than notifications are
    /// dropped; the connection's end is kept for `next`.
    fn drain(&mut self, payloads: &mut Vec<String>) -> u64 {
        let mut folded = 0;
        while self.ended.is_none() {
            match poll_fn(|cx| self.connection.poll_message(cx)).now_or_never() {
                Some(Some(Ok(AsyncMessage::Notification(n)))) => {
                    folded += 1;
                    if !n.payload().is_empty() {
                        payloads.push(n.payload().to_string());
                    }
                }
                Some(Some(Ok(_))) => {}
                Some(Some(Err(e))) => self.ended = Some(Some(e)),
                Some(None) => self.ended = Some(None),
                None => break, // nothing more right now
            }
        }
        folded
    }

    /// Closes the connection politely (Terminate), waiting at most a second.
    pub async fn close(self) {
        let Self { client, mut connection, ended } = self;
        if ended.is_some() {
            return;
        }
        drop(client);
        let finish = async { while poll_fn(|cx| connection.poll_message(cx)).await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
    }
}
