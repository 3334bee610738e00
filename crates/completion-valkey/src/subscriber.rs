//! The subscriber connection: one per backend instance while any stream is open, and the
//! other module (with [`client`](crate::client)) that knows fred.
//!
//! Contract:
//! - [`Subscriber::connect`] returns only after the server processed `SUBSCRIBE` (a `PING`
//!   on the same connection answered after it: fred itself resolves `subscribe` as soon as
//!   the command is written).
//! - fred reconnects it (same policy as the command connection) but does not restore the
//!   subscription: [`Subscriber::next`] reports [`SubEvent::Reconnected`] and the caller
//!   re-subscribes with [`Subscriber::subscribe`], one channel per call. (fred's own
//!   `resubscribe_all` sends a bare `SUBSCRIBE` for an empty set, which the server refuses,
//!   and stops before the rest: it is not used.)
//! - Messages pass through fred's broadcast channel, sized by `message_capacity`; when the
//!   reader falls behind, the oldest are dropped and [`SubEvent::Lagged`] says how many, so
//!   the caller catches up from the log.
//! - RESP3, so that `PING` works on the subscribed connection (liveness check).

use completion_core::EngineError;
use fred::prelude::*;
use fred::types::Message;
use tokio::sync::broadcast::error::RecvError;

use crate::client::{Role, connect_client, map_error};
use crate::config::ValkeyConfig;

/// What happened on the subscriber connection.
#[derive(Debug)]
pub(crate) enum SubEvent {
    /// A message on the channel (its body).
    Message(Vec<u8>),
    /// This many messages were dropped because the reader fell behind.
    Lagged(u64),
    /// The connection was re-established (the subscription is gone).
    Reconnected,
    /// The client is gone; nothing more will come.
    Closed,
}

/// A connection subscribed to one channel.
pub(crate) struct Subscriber {
    client: Client,
    channel: String,
    messages: tokio::sync::broadcast::Receiver<Message>,
    reconnects: tokio::sync::broadcast::Receiver<Server>,
}

impl Subscriber {
    /// Connects and subscribes to `channel`; returns once the server confirmed.
    pub(crate) async fn connect(config: &ValkeyConfig, channel: String) -> Result<Self, EngineError> {
        let client = connect_client(config, Role::Subscriber).await?;
        // Receivers taken before SUBSCRIBE: no message after the confirmation is missed.
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        let subscriber = Self { client, channel, messages, reconnects };
        if let Err(e) = subscriber.subscribe().await {
            subscriber.quit().await;
            return Err(e);
        }
        Ok(subscriber)
    }

    /// The connection's `CLIENT SETNAME` (fred's client id).
    pub(crate) fn name(&self) -> String {
        self.client.id().to_string()
    }

    /// `SUBSCRIBE channel`, confirmed by the server.
    ///
    /// fred resolves `subscribe` once the command is *written*, not when the server has
    /// processed it (it treats the confirmation as an out-of-band push and drops it). A
    /// `PING` on the same connection is answered only after the server processed every
    /// command before it, so its reply is the confirmation. Without it, a read of the log
    /// on the command connection can overtake the SUBSCRIBE, and a completion committed in
    /// between is neither read nor announced to us.
    pub(crate) async fn subscribe(&self) -> Result<(), EngineError> {
        self.client.subscribe(self.channel.as_str()).await.map_err(|e| map_error("SUBSCRIBE", e))?;
        self.ping().await
    }

    /// `PING` on the subscribed connection: fails when it is dead or unresponsive.
    pub(crate) async fn ping(&self) -> Result<(), EngineError> {
        let _: Value = self.client.ping(None).await.map_err(|e| map_error("PING", e))?;
        Ok(())
    }

    /// The next event. Cancel-safe: nothing is lost when the future is dropped unfinished.
    pub(crate) async fn next(&mut self) -> SubEvent {
        loop {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(m) if *m.channel == *self.channel => {
                        let body = match m.value {
                            Value::String(s) => s.as_bytes().to_vec(),
                            Value::Bytes(b) => b.to_vec(),
                            other => format!("{other:?}").into_bytes(),
                        };
                        return SubEvent::Message(body);
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => return SubEvent::Lagged(n),
                    Err(RecvError::Closed) => return SubEvent::Closed,
                },
                reconnect = self.reconnects.recv() => match reconnect {
                    Ok(_) => return SubEvent::Reconnected,
                    // Lost reconnect notices still mean "reconnected".
                    Err(RecvError::Lagged(_)) => return SubEvent::Reconnected,
                    Err(RecvError::Closed) => return SubEvent::Closed,
                },
            }
        }
    }

    /// Closes the connection (`QUIT`) and stops reconnecting.
    pub(crate) async fn quit(&self) {
        let limit = self.client.perf_config().default_command_timeout;
        let _ = tokio::time::timeout(limit, self.client.quit()).await;
    }
}
