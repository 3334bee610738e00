//! The state of one open stream: its position, its mailbox and its catch-up reads.
//!
//! A stream yields an event only if it lies past the stream's position ([`Position::is_new`]),
//! then advances; so an event met both in the log and in the mailbox is delivered once, in
//! log order. While it catches up (it started from a cursor or the earliest event, or its
//! mailbox overflowed) it reads the log in batches of at most `buffer` events, retrying a
//! failed read by the hub's backoff without ever giving up: a stream does not end while its
//! backend lives.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Hub;
use super::counters::Counters;
use super::mailbox::Mailbox;
use super::traits::{LogEvent, LogReader, Position, ReadBatch};
use crate::backoff::Backoff;
use crate::{Gap, StreamItem};

pub(super) struct Subscription<P: Position> {
    pub(super) hub: Hub<P>,
    pub(super) id: u64,
    pub(super) mailbox: Arc<Mailbox<P>>,
    pub(super) reader: Arc<dyn LogReader<P>>,
    /// Everything up to here was delivered (or skipped by the filter).
    pub(super) position: P,
    pub(super) catching_up: bool,
    /// Items of the current catch-up batch, at most `buffer` (plus one gap).
    pub(super) pending: VecDeque<StreamItem>,
    pub(super) report_gaps: bool,
}

impl<P: Position> Drop for Subscription<P> {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl<P: Position> Subscription<P> {
    pub(super) async fn next(&mut self) -> Option<StreamItem> {
        let config = self.hub.inner.config.clone();
        let mut backoff = Backoff::new(config.retry_backoff, config.retry_max_backoff);
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.hub.inner.closed.load(Ordering::SeqCst) {
                return None;
            }
            {
                let mut queue = self.mailbox.queue();
                if queue.overflowed {
                    queue.overflowed = false;
                    self.catching_up = true;
                }
            }
            if self.catching_up {
                match self.reader.read_after(&self.position, &self.mailbox.filter, config.buffer).await {
                    Ok(batch) => {
                        Counters::bump(&self.hub.inner.counters.catch_up_reads);
                        backoff.reset();
                        self.absorb(batch);
                    }
                    Err(error) => {
                        tracing::warn!(backend = P::BACKEND, %error, "catch-up read failed; retrying");
                        backoff.wait().await;
                    }
                }
                continue;
            }
            let event = self.mailbox.queue().events.pop_front();
            match event {
                Some(event) => {
                    if let Some(item) = self.accept(&event) {
                        return Some(item);
                    }
                }
                None => self.mailbox.notify.notified().await,
            }
        }
    }

    /// Delivers `event` if it is new to this stream, stamping this stream's cursor.
    fn accept(&mut self, event: &LogEvent<P>) -> Option<StreamItem> {
        if !self.position.is_new(&event.position) {
            return None;
        }
        self.position.advance(&event.position);
        let mut payload = event.payload.clone();
        payload.cursor = self.position.to_cursor();
        Counters::bump(&self.hub.inner.counters.delivered);
        self.hub.inner.counters.note_delivery(payload.completed_at_ms());
        Some(StreamItem::Completion(payload))
    }

    fn absorb(&mut self, batch: ReadBatch<P>) {
        if let Some(gap) = batch.gap {
            let after = (self.position != P::default()).then(|| self.position.to_cursor());
            self.position.merge(&gap.resumed_at);
            Counters::bump(&self.hub.inner.counters.gaps);
            let gap = Gap { after, resumed_at: self.position.to_cursor(), missed: gap.missed };
            if self.report_gaps {
                self.pending.push_back(StreamItem::Gap(gap));
            } else {
                tracing::warn!(
                    backend = P::BACKEND,
                    ?gap,
                    "completions lost to retention before this stream read them"
                );
            }
        }
        for event in &batch.events {
            if let Some(item) = self.accept(event) {
                self.pending.push_back(item);
            }
        }
        self.position.merge(&batch.scanned_to);
        self.catching_up = batch.more;
    }
}
