//! The live feed: one subscriber connection per backend instance, shared by all its streams.
//!
//! [`ValkeyFeed::start`] subscribes (confirmed by the server), reads the log's head and
//! moves the hub there, then spawns a task that, until the hub goes idle:
//! - hands each message to the hub, in arrival order, if it continues what the hub holds:
//!   every message carries its partition's previous entry id (`prev`), and a message whose
//!   `prev` lies past the hub's position for that partition proves that earlier messages
//!   never arrived (published while disconnected, or cut off by the server's output buffer
//!   limit). Then the hub catches up from the log instead ([`Hub::resync`]), so a lost
//!   message is found by the very next one, not only by a timer;
//! - skips, logs and counts messages that do not parse (`malformed_messages`);
//! - on fred's "lagged" (messages dropped by a full client buffer), catches up from the log;
//! - on a reconnect: subscribes again (fred does not), then catches up from the log, and
//!   counts a reconnect;
//! - every `safety_interval`: pings the subscriber connection, re-subscribes if an earlier
//!   attempt failed, and catches up from the log (so a lost message that no later message
//!   reveals waits at most that long);
//! - when the hub goes idle (no stream left, or the backend dropped): `QUIT`s the connection.
//!
//! On a cluster the partitions' channels are sharded, one subscription per partition on the
//! primary that owns its slot, and the feed differs in three ways:
//! - a message is a wake-up, not the event itself: messages of different primaries arrive
//!   over different connections, so their arrival order is not commit order. The feed
//!   drains what has arrived, then reads the log (whose merge orders partitions by id) until
//!   the hub covers every message it saw (at most [`WAKE_READS`] reads; the safety tick
//!   catches anything left);
//! - on a topology change (fred saw a `MOVED`, or a connection came back) and on every
//!   safety tick it re-issues each `SSUBSCRIBE`: a slot that moved, or a primary that failed
//!   over, silently dropped its subscription (fred keeps no track of that), and fred routes
//!   the new `SSUBSCRIBE` to the slot's current owner. Then it catches up from the log;
//! - the command connection's topology changes (a write that met `MOVED`) count too, so a
//!   resharding is usually noticed at the first write to the moved slot, not at the tick.
//!
//! A failed catch-up read is logged and retried at the next of those occasions; the hub's
//! position only moves on what was read, so nothing is skipped meanwhile.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use completion_core::EngineError;
use completion_core::hub::Counters;
use completion_core::hub::{Feed, Hub};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::conn::ClusterStateChange;
use crate::conn::subscriber::{SubEvent, Subscriber};
use crate::position::{EventPosition, StreamId, ValkeyPosition};
use crate::store::Store;
use crate::wire;

/// On a cluster: log reads after a wake-up before leaving the rest to the safety tick.
const WAKE_READS: usize = 4;
/// On a cluster: messages drained after a wake-up before reading the log.
const WAKE_DRAIN: usize = 65_536;

/// Starts subscriber connections for one backend instance.
pub(crate) struct ValkeyFeed {
    pub store: Arc<Store>,
    /// The `CLIENT SETNAME` of the latest subscriber connection (kept after it closed, so
    /// that one can check it is gone).
    pub subscriber_name: Arc<Mutex<Option<String>>>,
}

#[async_trait]
impl Feed<ValkeyPosition> for ValkeyFeed {
    async fn start(&self, hub: &Hub<ValkeyPosition>) -> Result<Option<tokio::task::JoinHandle<()>>, EngineError> {
        let config = &self.store.config;
        let span = tracing::info_span!("valkey_feed", prefix = %config.key_prefix);
        let channels = self.store.keys.channels(self.store.conn.is_cluster());
        let subscriber = Subscriber::connect(config, channels).instrument(span.clone()).await?;
        *self.subscriber_name.lock().unwrap_or_else(|e| e.into_inner()) = Some(subscriber.name());
        // Read only now that the subscription is live: whatever commits later is announced.
        let head = match self.store.head().instrument(span.clone()).await {
            Ok(head) => head,
            Err(e) => {
                subscriber.quit().await;
                return Err(e);
            }
        };
        hub.advance_to(&head);
        self.store.stats.feeds_started.bump();
        tracing::debug!(parent: &span, subscriber = %subscriber.name(), ?head, "feed live");
        let topology = self.store.conn.is_cluster().then(|| self.store.conn.cluster_changes());
        let task = FeedTask { subscriber, store: self.store.clone(), subscribed: true, topology };
        Ok(Some(tokio::spawn(task.run(hub.clone()).instrument(span))))
    }
}

/// What to do after an event.
enum Next {
    Continue,
    CatchUp,
    Stop,
}

struct FeedTask {
    subscriber: Subscriber,
    store: Arc<Store>,
    /// Whether the last SUBSCRIBE succeeded (else the safety tick tries again).
    subscribed: bool,
    /// On a cluster: topology changes seen by the command connection.
    topology: Option<tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>>>,
}

/// The next topology change of the command connection (never, outside a cluster).
async fn topology_changed(topology: &mut Option<tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>>>) {
    use tokio::sync::broadcast::error::RecvError;
    match topology {
        Some(rx) => match rx.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => {
                *topology = None;
                std::future::pending::<()>().await
            }
        },
        None => std::future::pending::<()>().await,
    }
}

impl FeedTask {
    async fn run(mut self, hub: Hub<ValkeyPosition>) {
        let idle = hub.until_idle();
        tokio::pin!(idle);
        let period = self.store.config.subscription.safety_interval;
        let mut safety = tokio::time::interval_at(Instant::now() + period, period);
        safety.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut idle => Next::Stop,
                event = self.subscriber.next() => self.on_event(event, &hub).await,
                _ = topology_changed(&mut self.topology) => {
                    self.resubscribe_sharded("the command connection saw the slot map change").await;
                    Next::CatchUp
                }
                _ = safety.tick() => {
                    self.store.stats.safety_reads.bump();
                    self.check_connection().await;
                    Next::CatchUp
                }
            };
            match next {
                Next::Continue => {}
                Next::CatchUp => {
                    if let Err(error) = hub.resync(&*self.store).await {
                        tracing::warn!(%error, "catching up from the log failed; retrying at the next tick");
                    }
                }
                Next::Stop => break,
            }
        }
        self.subscriber.quit().await;
        tracing::debug!("feed stopped: no stream left");
    }

    async fn on_event(&mut self, event: SubEvent, hub: &Hub<ValkeyPosition>) -> Next {
        let stats = &self.store.stats;
        match event {
            SubEvent::Message(body) if self.subscriber.is_sharded() => self.wake(body, hub).await,
            SubEvent::Message(body) => match wire::parse_message(&body, &self.store.keys) {
                Ok(message) => {
                    let EventPosition { partition, id, .. } = message.event.position;
                    let at = hub.position().get(partition);
                    if id <= at {
                        // Already read from the log.
                        Next::Continue
                    } else if message.prev <= at {
                        hub.publish([message.event]);
                        Next::Continue
                    } else {
                        stats.message_holes.bump();
                        tracing::debug!(partition, %id, prev = %message.prev, %at, "messages were lost; reading the log");
                        Next::CatchUp
                    }
                }
                Err(reason) => {
                    Counters::bump(&self.store.counters.malformed_messages);
                    let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    tracing::warn!(%reason, message = %shown, "skipping a malformed message on the completion channel");
                    Next::Continue
                }
            },
            SubEvent::Lagged(n) => {
                stats.lagged_messages.add(n);
                tracing::warn!(dropped = n, "the feed fell behind its message buffer; reading the log");
                Next::CatchUp
            }
            SubEvent::Reconnected => {
                Counters::bump(&self.store.counters.reconnects);
                self.resubscribe().await;
                Next::CatchUp
            }
            SubEvent::TopologyChanged => {
                self.resubscribe_sharded("the subscriber saw the slot map change").await;
                Next::CatchUp
            }
            SubEvent::Closed => Next::Stop,
        }
    }

    /// On a cluster: a message is a wake-up. Drains what already arrived, then reads the
    /// log until the hub covers every message seen (see the module docs).
    async fn wake(&mut self, first: Vec<u8>, hub: &Hub<ValkeyPosition>) -> Next {
        let mut wanted: Vec<(u16, StreamId)> = Vec::new();
        // Messages were dropped: what they announced is unknown, so `wanted` cannot cover it.
        let mut lagged = false;
        self.note(&first, hub, &mut wanted);
        for _ in 0..WAKE_DRAIN {
            match self.subscriber.try_next() {
                Some(SubEvent::Message(body)) => self.note(&body, hub, &mut wanted),
                Some(SubEvent::Lagged(n)) => {
                    self.store.stats.lagged_messages.add(n);
                    tracing::warn!(dropped = n, "the feed fell behind its message buffer; reading the log");
                    lagged = true;
                }
                Some(SubEvent::Closed) => return Next::Stop,
                Some(_) | None => break,
            }
        }
        for _ in 0..WAKE_READS {
            let at = hub.position();
            wanted.retain(|(p, id)| *id > at.get(*p));
            if wanted.is_empty() {
                break;
            }
            if let Err(error) = hub.resync(&*self.store).await {
                tracing::warn!(%error, "catching up from the log failed; retrying at the next tick");
                break;
            }
        }
        if lagged { Next::CatchUp } else { Next::Continue }
    }

    /// Records the partition and id of a message (or counts it as malformed).
    fn note(&self, body: &[u8], hub: &Hub<ValkeyPosition>, wanted: &mut Vec<(u16, StreamId)>) {
        match wire::parse_message(body, &self.store.keys) {
            Ok(message) => {
                let EventPosition { partition, id, .. } = message.event.position;
                if id > hub.position().get(partition) {
                    wanted.push((partition, id));
                }
            }
            Err(reason) => {
                Counters::bump(&self.store.counters.malformed_messages);
                let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                tracing::warn!(%reason, message = %shown, "skipping a malformed message on a completion channel");
            }
        }
    }

    /// On a cluster: re-issues every `SSUBSCRIBE` (a moved slot dropped its subscription).
    async fn resubscribe_sharded(&mut self, why: &str) {
        if !self.subscriber.is_sharded() {
            return;
        }
        tracing::debug!(why, "re-issuing the sharded subscriptions");
        match self.subscriber.subscribe().await {
            Ok(()) => self.subscribed = true,
            Err(error) => {
                self.subscribed = false;
                tracing::warn!(%error, "re-issuing the sharded subscriptions failed; retrying at the next tick");
            }
        }
    }

    async fn resubscribe(&mut self) {
        match self.subscriber.subscribe().await {
            Ok(()) => {
                self.store.stats.resubscribes.bump();
                self.subscribed = true;
                tracing::info!("subscriber reconnected and subscribed again");
            }
            Err(error) => {
                self.subscribed = false;
                tracing::warn!(%error, "subscribing again after a reconnect failed; retrying at the next tick");
            }
        }
    }

    async fn check_connection(&mut self) {
        if !self.subscribed {
            self.resubscribe().await;
        } else if self.subscriber.is_sharded() {
            self.resubscribe_sharded("safety tick").await;
        } else if let Err(error) = self.subscriber.ping().await {
            tracing::warn!(%error, "the subscriber connection does not answer PING");
        }
    }
}
