//! One stream's bounded queue of live events.
//!
//! The hub offers each published event to every mailbox whose filter matches it. A full
//! mailbox does not grow: it drops what it holds and is flagged *overflowed*, and its stream
//! reads the log from its own position instead (the dropped events are in the log).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::counters::Counters;
use super::traits::{LogEvent, Position};
use crate::ScannerFilter;

pub(super) struct Mailbox<P: Position> {
    pub(super) filter: ScannerFilter,
    capacity: usize,
    queue: Mutex<Queue<P>>,
    pub(super) notify: Notify,
}

pub(super) struct Queue<P: Position> {
    pub(super) events: VecDeque<Arc<LogEvent<P>>>,
    /// Set when events were dropped for lack of room: the stream must read the log.
    pub(super) overflowed: bool,
}

impl<P: Position> Mailbox<P> {
    pub(super) fn new(filter: ScannerFilter, capacity: usize) -> Self {
        Self {
            filter,
            capacity,
            queue: Mutex::new(Queue { events: VecDeque::new(), overflowed: false }),
            notify: Notify::new(),
        }
    }

    pub(super) fn queue(&self) -> MutexGuard<'_, Queue<P>> {
        // Every update under this lock is one step: a poisoned lock holds consistent data.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn offer(&self, event: &Arc<LogEvent<P>>, counters: &Counters) {
        if !self.filter.matches(&event.payload) {
            Counters::bump(&counters.filtered_out);
            return;
        }
        let mut queue = self.queue();
        if queue.overflowed {
            return;
        }
        if queue.events.len() >= self.capacity {
            Self::overflow(&mut queue, counters);
        } else {
            queue.events.push_back(event.clone());
            counters.note_buffer_len(queue.events.len());
        }
        drop(queue);
        self.notify.notify_one();
    }

    pub(super) fn force_catch_up(&self, counters: &Counters) {
        Self::overflow(&mut self.queue(), counters);
        self.notify.notify_one();
    }

    fn overflow(queue: &mut Queue<P>, counters: &Counters) {
        // What is queued will be read again from the log: free it now.
        queue.events = VecDeque::new();
        if !queue.overflowed {
            queue.overflowed = true;
            Counters::bump(&counters.buffer_overflows);
        }
    }
}
