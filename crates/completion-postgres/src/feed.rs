//! The live side of one instance: the [`Feed`] whose task wakes the hub.
//!
//! On each wake-up — notifications (bursts folded into one), the safety timer, a reconnect —
//! the feed runs one [`Hub::resync`], a log read after the hub's position that serves every
//! stream at once. So a lost notification (server restart, killed connection, PgBouncer)
//! delays events until the next wake-up, and never loses them. A notification whose payload
//! carries an event (schema version 4, a transaction's first) whose ticket is the one right
//! after the hub's position is delivered before that read, straight from the payload: one
//! round trip less between the commit and the stream (`wire.rs` says why that is
//! safe; the read still follows, for whatever no payload announced).
//!
//! With coalesced NOTIFYs (`PostgresConfig::coalesce_notify`, schema version 2) a terminal
//! write notifies only when no other write in flight is about to, so one notification may
//! stand for several commits, some of them after it. The feed's reads are then preceded by
//! `writers_in_flight()` on the same connection, and while it answers true the feed reads
//! again after `in_flight_recheck`: once a check finds no write in flight, every write that
//! skipped its NOTIFY has committed before the read that follows (migrations/V2, V3).
//!
//! Poll-only mode (`listen: false`) is the same task without the LISTEN connection: the
//! safety timer is the poll interval.
//!
//! Limits: events are delivered only once the final ticket has passed them (migrations/V4),
//! so a transaction that appended and stays open delays every completion appended after it
//! until it ends (see [`PostgresStats::held_back_events`](crate::PostgresStats)). It may end
//! without a notification (it rolls back, or its NOTIFY was coalesced into one already read),
//! so while a read held events back the feed looks at the final ticket on a short backoff
//! (`in_flight_recheck` doubling up to 32 times that) and reads again as soon as it moved
//! ([`HeldBack`]): held-back events arrive within that pause of the writer's end, not at the
//! next safety read. Transactions that never append hold nothing back.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use completion_core::EngineError;
use completion_core::backoff::Backoff;
use completion_core::hub::{Counters, Feed, Hub};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::BACKEND;
use crate::conn::build::Dedicated;
use crate::conn::listener::{Listener, Wake};
use crate::log::{Log, PgReader};
use crate::position::PgPosition;
use crate::stats::Stats;

/// How far the pause between re-reads while writes are in flight grows when they find
/// nothing new: `in_flight_recheck` times this (32 ms by default).
const RECHECK_BACKOFF: u32 = 32;

/// First pause before retrying a failed LISTEN connection or log read.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The pauses between the feed's re-reads while writes are in flight, as they stand after a
/// read that published: the next re-read that finds nothing new waits twice
/// `in_flight_recheck`, then twice that, up to [`RECHECK_BACKOFF`] times it.
fn rechecks(in_flight_recheck: Duration) -> Backoff {
    let mut backoff = Backoff::new(in_flight_recheck, in_flight_recheck * RECHECK_BACKOFF);
    backoff.next_pause(); // `in_flight_recheck` itself, after the read that published
    backoff
}

/// How to run the feed of one instance.
pub(crate) struct PgFeed {
    pub log: Arc<Log>,
    pub reader: Arc<PgReader>,
    /// How to open the LISTEN connection (its own application name); `None` in poll-only
    /// mode.
    pub listen: Option<Dedicated>,
    pub channel: String,
    pub safety_interval: Duration,
    /// `PostgresConfig::in_flight_recheck`.
    pub in_flight_recheck: Duration,
    /// `PostgresConfig::reconnect_max_delay`: the longest pause between reconnects or
    /// failed reads.
    pub reconnect_max_delay: Duration,
    pub stats: Arc<Stats>,
}

impl PgFeed {
    /// How long a starting feed waits for older transactions before taking the head.
    fn settle(&self) -> Duration {
        self.safety_interval.min(Duration::from_secs(1))
    }

    async fn open_listener(&self) -> Result<Option<Listener>, EngineError> {
        match &self.listen {
            Some(dedicated) => Ok(Some(Listener::open(dedicated, &self.channel).await?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Feed<PgPosition> for Arc<PgFeed> {
    async fn start(&self, hub: &Hub<PgPosition>) -> Result<Option<JoinHandle<()>>, EngineError> {
        let span = tracing::info_span!("postgres_feed", backend = BACKEND, channel = %self.channel);
        let listener = self.open_listener().instrument(span.clone()).await?;
        // The head is read only now that LISTEN is in effect: every event committed from
        // here on either sorts after it or arrives with a notification.
        let head = self.log.head(self.settle()).await?;
        hub.advance_to(&head);
        tracing::debug!(parent: &span, %head, listening = listener.is_some(), "feed live");
        let task = FeedTask { feed: self.clone(), hub: hub.clone() };
        Ok(Some(tokio::spawn(task.run(listener).instrument(span))))
    }
}

struct FeedTask {
    feed: Arc<PgFeed>,
    hub: Hub<PgPosition>,
}

impl FeedTask {
    async fn run(self, mut listener: Option<Listener>) {
        let feed = &*self.feed;
        let counters: &Counters = self.hub.counters();
        let mut idle = pin!(self.hub.until_idle());
        let mut safety = tokio::time::interval_at(Instant::now() + feed.safety_interval, feed.safety_interval);
        safety.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reconnect_pauses = Backoff::new(FIRST_BACKOFF, feed.reconnect_max_delay);
        let mut reconnect_at: Option<Instant> = None;
        let mut read_pauses = Backoff::new(FIRST_BACKOFF, feed.reconnect_max_delay);
        // One checked read at once: a write that skipped its NOTIFY against a notifier that
        // committed before LISTEN took effect may still be in flight, and nothing else would
        // announce it (the head was taken below it).
        let mut read_retry_at: Option<Instant> = Some(Instant::now());
        // Set while writes are in flight, to `in_flight_recheck` after the last read: a
        // wake-up before then does not read at once but moves the next read to then.
        let mut busy_until: Option<Instant> = None;
        // The pauses before the next read while writes are in flight: `in_flight_recheck`
        // after a read that published, doubled (up to RECHECK_BACKOFF times) while the
        // re-reads find nothing new, so that a transaction held open after a terminal write
        // does not keep the feed reading every millisecond.
        let mut recheck = rechecks(feed.in_flight_recheck);
        // Set while the last read held committed events back above the final ticket: the
        // feed then looks at it on a short backoff and reads again once it moved.
        let mut held: Option<HeldBack> = None;
        loop {
            let mut wake = false;
            tokio::select! {
                biased;
                _ = &mut idle => break,
                event = next_wake(&mut listener) => match event {
                    Wake::Notified { count, payloads } => {
                        feed.stats.notifications.add(count);
                        self.deliver_from(&payloads);
                        wake = true;
                    }
                    Wake::Lost(error) => {
                        feed.stats.listener_failures.bump();
                        tracing::warn!(error = ?error, "LISTEN connection lost; reconnecting");
                        listener = None;
                        reconnect_pauses.reset();
                        reconnect_at = Some(Instant::now());
                    }
                },
                _ = sleep_until(reconnect_at) => {
                    match feed.open_listener().await {
                        Ok(l) => {
                            listener = l;
                            reconnect_at = None;
                            Counters::bump(&counters.reconnects);
                            tracing::info!("LISTEN connection re-established");
                            // Whatever was notified while it was down is gone: read the log.
                            wake = true;
                        }
                        Err(error) => {
                            feed.stats.listener_failures.bump();
                            let pause = reconnect_pauses.next_pause();
                            tracing::warn!(%error, retry_in = ?pause, "re-opening the LISTEN connection failed");
                            reconnect_at = Some(Instant::now() + pause);
                        }
                    }
                }
                _ = safety.tick() => wake = true,
                _ = sleep_until(read_retry_at) => wake = true,
                _ = sleep_until(held.as_ref().map(|h| h.check_at)) => {
                    let final_ticket = feed.log.final_ticket().await;
                    // Counted once it answered, not when it started: a check whose query was
                    // under way while a holder ended must count after that end (edge tests
                    // read the count to tell which path delivered; on a loaded machine the
                    // query can take long enough to straddle the rollback).
                    feed.stats.held_back_checks.bump();
                    match (final_ticket, held.as_mut()) {
                        // The read that follows decides whether anything is still held back.
                        (Ok(final_ticket), Some(h)) if final_ticket > h.above => {
                            held = None;
                            wake = true;
                        }
                        (Ok(_), Some(h)) => h.back_off(),
                        (Err(error), Some(h)) => {
                            tracing::debug!(%error, "checking the final ticket for held-back events failed");
                            h.back_off();
                        }
                        (_, None) => {}
                    }
                }
            }
            if !wake {
                continue;
            }
            // Under load every commit that notifies wakes the feed, and a log read costs the
            // server about as much for one event as for a hundred: while writes are in flight
            // a wake-up within `in_flight_recheck` of the last read waits for the end of that
            // pause, so reads stay far fewer than notifications (docs/benchmarks.md,
            // "PostgreSQL write throughput"). When none is in flight it reads at once.
            if let Some(until) = busy_until.filter(|until| Instant::now() < *until) {
                read_retry_at = Some(read_retry_at.map_or(until, |at| at.min(until)));
                continue;
            }
            feed.reader.take_in_flight();
            match self.hub.resync(&*feed.reader).await {
                Ok(published) => {
                    read_pauses.reset();
                    // A write that skipped its NOTIFY (another in flight was to notify) may
                    // commit after that notification was read: while writes are in flight,
                    // read again shortly (the V2 migration explains why that suffices, V3 how the
                    // check itself never makes a writer skip).
                    let in_flight = feed.reader.take_in_flight();
                    if in_flight {
                        let pause = if published > 0 {
                            recheck = rechecks(feed.in_flight_recheck);
                            feed.in_flight_recheck
                        } else {
                            recheck.next_pause()
                        };
                        let now = Instant::now();
                        read_retry_at = Some(now + pause);
                        busy_until = Some(now + feed.in_flight_recheck);
                        feed.stats.in_flight_rechecks.bump();
                    } else {
                        recheck = rechecks(feed.in_flight_recheck);
                        read_retry_at = None;
                        busy_until = None;
                    }
                    held = match (feed.reader.held_back_above(), held) {
                        (Some(above), Some(h)) if h.above == above => Some(h),
                        (Some(above), _) => Some(HeldBack::new(above, feed.in_flight_recheck)),
                        (None, _) => None,
                    };
                    tracing::trace!(published, in_flight, held_back_above = ?held.as_ref().map(|h| h.above), "resync");
                }
                Err(error) => {
                    let pause = read_pauses.next_pause();
                    tracing::warn!(%error, retry_in = ?pause, "reading the completion log failed");
                    read_retry_at = Some(Instant::now() + pause);
                    busy_until = None;
                }
            }
        }
        if let Some(listener) = listener {
            listener.close().await;
        }
        tracing::debug!("feed stopped: no stream left");
    }
}

/// Committed events a read held back above the final ticket, and when the feed looks at the
/// final ticket next.
///
/// The writer that holds them back (it registered before they were appended and is still in
/// flight) may end without a notification to the feed: it rolls back, or it skipped its
/// NOTIFY and its notifier's was read already. So the feed looks at the final ticket after
/// `in_flight_recheck`, then at doubling pauses up to `RECHECK_BACKOFF` times that, and reads
/// the log once it moved past the one the events were held above. Nothing of this runs while
/// no event is held back.
#[derive(Debug)]
struct HeldBack {
    /// The final ticket the read delivered up to.
    above: i64,
    pauses: Backoff,
    check_at: Instant,
}

impl HeldBack {
    fn new(above: i64, in_flight_recheck: Duration) -> Self {
        let mut pauses = Backoff::new(in_flight_recheck, in_flight_recheck * RECHECK_BACKOFF);
        let check_at = Instant::now() + pauses.next_pause();
        Self { above, pauses, check_at }
    }

    /// The final ticket has not moved: looks again after a longer pause.
    fn back_off(&mut self) {
        self.check_at = Instant::now() + self.pauses.next_pause();
    }
}

impl FeedTask {
    /// Delivers the events that notification payloads carry, each whose ticket is the one
    /// right after the hub's position (see `wire.rs` for why that is safe); leaves
    /// the others to the log read that follows every wake-up.
    fn deliver_from(&self, payloads: &[String]) {
        for payload in payloads {
            match crate::wire::parse(payload) {
                Ok(Some(event)) if event.position.ticket == self.hub.position().ticket + 1 => {
                    // Final now (see wire.rs): reads must not hold it back again.
                    self.feed.log.raise_final(0, event.position.ticket);
                    tracing::trace!(position = %event.position, "delivered from the notification");
                    // Counted before the stream can see it: whoever reads the count after
                    // receiving the event must find it counted (on a busy machine this task can
                    // be descheduled right after publishing).
                    self.feed.stats.delivered_from_notification.bump();
                    self.hub.publish([event]);
                }
                Ok(_) => {}
                Err(reason) => {
                    Counters::bump(&self.hub.counters().malformed_messages);
                    let shown: String = payload.chars().take(200).collect();
                    tracing::warn!(%reason, payload = %shown, "skipping a malformed notification payload");
                }
            }
        }
    }
}

/// The listener's next wake-up; pending forever without a listener.
async fn next_wake(listener: &mut Option<Listener>) -> Wake {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; pending forever for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
