//! The subscriber connection: one per backend instance while any stream is open.
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
//! - On a cluster, fred's clustered client holds one connection per primary, and the
//!   subscriber `SSUBSCRIBE`s every partition's channel, one per call, each routed to the
//!   primary that owns the channel's slot. fred does not treat the `SSUBSCRIBE` reply as an
//!   out-of-band push (it must see a `MOVED` there), so the call returns once the server
//!   processed it. When a slot moves, the old owner unsubscribes us and fred drops that
//!   notice silently: the caller re-issues every `SSUBSCRIBE` on topology changes
//!   ([`SubEvent::TopologyChanged`]) and on a timer; fred follows the `MOVED` to the new owner
//!   (given the attempts to do so: see [`Subscriber::subscribe`]), and a channel that still
//!   fails is tried once more, without keeping the others from being re-issued.

use completion_core::EngineError;
use completion_core::backoff::{Backoff, Retry};
use fred::prelude::*;
use fred::types::{ClusterStateChange, Message};
use tokio::sync::broadcast::error::RecvError;

use super::build::{MAX_COMMAND_ATTEMPTS, Role, connect_client};
use super::errors::map_error;
use crate::config::ValkeyConfig;

/// On a cluster: the pause before trying a failed `SSUBSCRIBE` once more.
const SUBSCRIBE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// What happened on the subscriber connection.
#[derive(Debug)]
pub(crate) enum SubEvent {
    /// A message on the channel (its body).
    Message(Vec<u8>),
    /// This many messages were dropped because the reader fell behind.
    Lagged(u64),
    /// The connection was re-established (the subscription is gone).
    Reconnected,
    /// On a cluster: the client saw the slot map change (subscriptions may have been moved
    /// away from under it).
    TopologyChanged,
    /// The client is gone; nothing more will come.
    Closed,
}

/// A connection (on a cluster: one per primary) subscribed to the completion channels.
pub(crate) struct Subscriber {
    client: Client,
    channels: Vec<String>,
    /// `SSUBSCRIBE` (a cluster) rather than `SUBSCRIBE`.
    sharded: bool,
    messages: tokio::sync::broadcast::Receiver<Message>,
    reconnects: tokio::sync::broadcast::Receiver<Server>,
    topology: tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>>,
}

impl Subscriber {
    /// Connects and subscribes to `channels` (sharded on a cluster); returns once the server
    /// confirmed.
    pub(crate) async fn connect(config: &ValkeyConfig, channels: Vec<String>) -> Result<Self, EngineError> {
        let client = connect_client(config, Role::Subscriber).await?;
        // Receivers taken before SUBSCRIBE: no message after the confirmation is missed.
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        let topology = client.cluster_change_rx();
        let sharded = client.is_clustered();
        let subscriber = Self { client, channels, sharded, messages, reconnects, topology };
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
    ///
    /// On a cluster, `SSUBSCRIBE`s each channel in turn (fred resolves each once the server
    /// answered, following `MOVED`); re-issuing it for a channel already subscribed on the
    /// right node is harmless.
    pub(crate) async fn subscribe(&self) -> Result<(), EngineError> {
        if self.sharded {
            // fred 10.1 builds `SSUBSCRIBE` with one write attempt and one redirection
            // whatever the configuration (`Command::new` in `protocol/command.rs`), so a
            // `MOVED` (the slot moved: exactly when we re-subscribe) re-reads the slot map and
            // then fails with "Too many failed write attempts" instead of following it. Give
            // it the configured attempts, and one redirection fewer: fred ends its routing
            // task when attempts run out while following an `ASK` (see `conn`).
            let options = Options {
                max_attempts: Some(MAX_COMMAND_ATTEMPTS),
                max_redirections: Some(MAX_COMMAND_ATTEMPTS - 1),
                ..Options::default()
            };
            let client = self.client.with_options(&options);
            // Every channel is tried, so that one failure does not leave the others
            // unsubscribed; one more try for a channel that failed (the map fred read may
            // have come from a node that had not heard of the move yet).
            let mut first_error = None;
            for channel in &self.channels {
                let result = Retry::new(Backoff::new(SUBSCRIBE_RETRY_PAUSE, SUBSCRIBE_RETRY_PAUSE))
                    .with_attempts(2)
                    .run(|_| true, |_| client.ssubscribe(channel.as_str()))
                    .await;
                if let Err(e) = result {
                    first_error.get_or_insert(map_error("SSUBSCRIBE", e));
                }
            }
            return first_error.map_or(Ok(()), Err);
        }
        for channel in &self.channels {
            self.client.subscribe(channel.as_str()).await.map_err(|e| map_error("SUBSCRIBE", e))?;
        }
        self.ping().await
    }

    /// Whether the subscriptions are sharded (a cluster).
    pub(crate) fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// `PING` on the subscribed connection (on a cluster: on one of them): fails when it is
    /// dead or unresponsive.
    pub(crate) async fn ping(&self) -> Result<(), EngineError> {
        let _: Value = self.client.ping(None).await.map_err(|e| map_error("PING", e))?;
        Ok(())
    }

    /// A message already received, if any, without waiting (reconnect and topology notices
    /// are left for [`Self::next`]).
    pub(crate) fn try_next(&mut self) -> Option<SubEvent> {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            match self.messages.try_recv() {
                Ok(m) => match self.body_of(m) {
                    Some(body) => return Some(SubEvent::Message(body)),
                    None => continue,
                },
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(n)) => return Some(SubEvent::Lagged(n)),
                Err(TryRecvError::Closed) => return Some(SubEvent::Closed),
            }
        }
    }

    /// The body of a message on one of our channels.
    fn body_of(&self, m: Message) -> Option<Vec<u8>> {
        if !self.channels.iter().any(|c| **c == *m.channel) {
            return None;
        }
        Some(match m.value {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.to_vec(),
            other => format!("{other:?}").into_bytes(),
        })
    }

    /// The next event. Cancel-safe: nothing is lost when the future is dropped unfinished.
    pub(crate) async fn next(&mut self) -> SubEvent {
        loop {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(m) => match self.body_of(m) {
                        Some(body) => return SubEvent::Message(body),
                        None => continue,
                    },
                    Err(RecvError::Lagged(n)) => return SubEvent::Lagged(n),
                    Err(RecvError::Closed) => return SubEvent::Closed,
                },
                reconnect = self.reconnects.recv() => match reconnect {
                    Ok(_) => return SubEvent::Reconnected,
                    // Lost reconnect notices still mean "reconnected".
                    Err(RecvError::Lagged(_)) => return SubEvent::Reconnected,
                    Err(RecvError::Closed) => return SubEvent::Closed,
                },
                change = self.topology.recv(), if self.sharded => match change {
                    Ok(_) | Err(RecvError::Lagged(_)) => return SubEvent::TopologyChanged,
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
