//! Reading the completion log: [`PgReader`], the [`LogReader`] every stream and the feed read
//! through, and [`Log`], the reads themselves and the final ticket they stop at.
//!
//! Contract: a read returns events in ticket order up to the final ticket only (events above
//! it are committed but held back: a writer that registered before them is still in flight;
//! see [`PgPosition`]), and reports a gap when events after its position were pruned. Each
//! read is one round trip: the final ticket, then the read, pipelined in one READ COMMITTED
//! transaction so that the read's snapshot is taken after the final ticket's (migrations/V4).
//! The feed's reads are preceded by the in-flight check (`writers_in_flight()`, migrations/V2
//! and V3) in the same round trip.
//!
//! Limits: a cursor is refused when it points past the last ticket handed out (made by
//! another schema or server); cursors of schema version 3 and older are mapped to a ticket
//! ([`Log::legacy_ticket`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use completion_core::backoff::Backoff;
use completion_core::hub::{Counters, LogEvent, LogReader, ReadBatch, TrimmedGap};
use completion_core::{CompletionPayload, Cursor, EngineError, ExecutionId, FlowId, Namespace, Outcome, ScannerFilter};
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tracing::Instrument;

use crate::BACKEND;
use crate::conn::Conn;
use crate::conn::errors::{column, first_row};
use crate::position::{PgCursor, PgPosition};
use crate::schema::{BEGIN_READ, COMMIT};
use crate::stats::Stats;
use crate::wire::{parse_tags, tag_filter_json};

/// What a checked log read learned besides its events.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReadNotes {
    /// A terminal write was in flight just before the read's snapshot.
    pub in_flight: bool,
    /// The read saw committed events above the final ticket, which it held back: the final
    /// ticket it read up to. They become deliverable once the final ticket passes it.
    pub held_back_above: Option<i64>,
}

/// The log reads of one instance, and the largest final ticket it has seen.
pub(crate) struct Log {
    conn: Arc<Conn>,
    stats: Arc<Stats>,
    counters: Arc<Counters>,
    /// The largest final ticket this instance has seen (see [`Log::raise_final`]).
    max_final: AtomicI64,
}

impl Log {
    pub fn new(conn: Arc<Conn>, stats: Arc<Stats>, counters: Arc<Counters>) -> Self {
        Self { conn, stats, counters, max_final: AtomicI64::new(0) }
    }

    /// The floor of the final ticket for a read about to be sent: the largest final ticket
    /// this instance learned *before* the read (pass it to [`Log::raise_final`] with the
    /// read's own answer). `final_ticket()` can answer less than an earlier answer (a writer
    /// that read its bound before that answer registered after it; the feed's position also
    /// passes it when it delivers from a notification), but a ticket that was final stays
    /// final, and a snapshot taken after it was learned sees it. Reading up to a smaller one
    /// would hold back events the hub has already published: a stream catching up would take
    /// them for held back, stop catching up, and never receive them. Only
    /// what was learned before the read was sent is safe: a final ticket learned by another
    /// read meanwhile may cover commits this read's snapshot does not see.
    pub fn final_floor(&self) -> i64 {
        self.max_final.load(Ordering::Acquire)
    }

    /// Records `answered` (a read's `final_ticket()`, or a ticket known final) and answers
    /// the final ticket the read may go up to: the larger of it and `floor` (from
    /// [`Log::final_floor`] before the read was sent).
    pub fn raise_final(&self, floor: i64, answered: i64) -> i64 {
        self.max_final.fetch_max(answered, Ordering::AcqRel);
        answered.max(floor)
    }

    /// Up to `limit` events after `after` matching `filter`, up to the final ticket.
    pub async fn read(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<ReadBatch<PgPosition>, EngineError> {
        Ok(self.read_inner(after, filter, limit, false).await?.0)
    }

    /// [`read`](Self::read), preceded on the same connection by `writers_in_flight()` (see
    /// the V2 and V3 migrations): also says whether a terminal write was in flight just
    /// before the read's snapshot was taken. The two statements are sent together (one round
    /// trip) and run in that order, each in a transaction of its own.
    pub async fn read_checked(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<(ReadBatch<PgPosition>, ReadNotes), EngineError> {
        self.read_inner(after, filter, limit, true).await
    }

    async fn read_inner(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
        check: bool,
    ) -> Result<(ReadBatch<PgPosition>, ReadNotes), EngineError> {
        let limit_param = limit.max(1) as i64;
        let namespace = filter.namespace.as_ref().map(Namespace::as_str);
        let tag = filter.tag.as_ref().map(|(k, v)| tag_filter_json(k, v));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after.ticket, &limit_param];
        // The statement of this filter's shape: none, namespace, tag, namespace and tag.
        let shape = match (&namespace, &tag) {
            (None, None) => 0,
            (Some(ns), None) => {
                params.push(ns);
                1
            }
            (None, Some(tag)) => {
                params.push(tag);
                2
            }
            (Some(ns), Some(tag)) => {
                params.push(ns);
                params.push(tag);
                3
            }
        };
        let floor = self.final_floor();
        let fetched = self.fetch(&self.conn.sql().read[shape], &params, check).await?;
        let final_ticket = self.raise_final(floor, fetched.final_ticket);
        self.batch(after, limit, final_ticket, fetched)
    }

    /// Runs one read: the in-flight check if `check`, the final ticket and the read, in that
    /// order, in one round trip.
    async fn fetch(&self, read_sql: &str, params: &[&(dyn ToSql + Sync)], check: bool) -> Result<Fetched, EngineError> {
        const OP: &str = "log read";
        let sql = self.conn.sql();
        self.conn
            .run(OP, |client| async move {
                // tokio-postgres sends requests (and the server runs them) in the order the
                // futures are first polled, and `try_join!` polls them in order: the in-flight
                // check, then the final ticket, then the read, whose snapshot is so taken after
                // both (migrations/V3, V4), all in one round trip. One READ COMMITTED
                // transaction (each statement its own snapshot) keeps them on one server
                // connection behind a transaction-mode pooler.
                let (check, fin, read) = tokio::try_join!(
                    async { if check { client.prepare_cached(&sql.in_flight).await.map(Some) } else { Ok(None) } },
                    client.prepare_cached(&sql.final_ticket),
                    client.prepare_cached(read_sql)
                )?;
                let result = tokio::try_join!(
                    client.batch_execute(BEGIN_READ),
                    async {
                        match &check {
                            Some(check) => client.query_one(check, &[]).await.map(Some),
                            None => Ok(None),
                        }
                    },
                    client.query_one(&fin, &[]),
                    client.query(&read, params),
                    client.batch_execute(COMMIT)
                );
                let ((), in_flight, fin, rows, ()) = Conn::after_transaction(client, result)?;
                let in_flight = match in_flight {
                    Some(row) => row.try_get::<_, bool>(0)?,
                    None => false,
                };
                Ok(Fetched { in_flight, final_ticket: fin.try_get::<_, i64>(0)?, rows })
            })
            .await
            .map_err(|f| f.into_engine(OP))
    }

    /// Decodes the rows of one read up to `final_ticket` into a batch; counts those above it
    /// as held back, and skips (and counts) malformed ones.
    fn batch(
        &self,
        after: &PgPosition,
        limit: usize,
        final_ticket: i64,
        fetched: Fetched,
    ) -> Result<(ReadBatch<PgPosition>, ReadNotes), EngineError> {
        let rows = &fetched.rows;
        let header = rows.first().ok_or_else(|| EngineError::Incompatible {
            backend: BACKEND,
            reason: format!("the schema {} has no retention watermark row", self.conn.schema().name()),
        })?;
        let watermark = PgPosition::at(column(header, 0)?);
        let mut events = Vec::with_capacity(rows.len());
        let (mut last_final, mut held) = (None, 0u64);
        for row in rows {
            let Some(ticket) = column::<Option<i64>>(row, 1)? else { continue };
            if ticket > final_ticket {
                // Committed, but a writer that registered before it is still in flight.
                held += 1;
                continue;
            }
            let position = PgPosition::at(ticket);
            last_final = Some(position);
            match event_payload(row, position) {
                Ok(payload) => events.push(LogEvent { position, payload }),
                Err(error) => {
                    Counters::bump(&self.counters.malformed_messages);
                    tracing::warn!(backend = BACKEND, %position, %error, "skipping a malformed log row");
                }
            }
        }
        self.stats.held_back_events.set(held);
        if held > 0 {
            self.stats.held_back_reads.bump();
        }
        // The read stopped at its limit inside the final part of the log: more may follow.
        let more = held == 0 && last_final.is_some() && rows.len() >= limit.max(1);
        let scanned_to = match last_final {
            Some(last) if more => last,
            _ => (*after).max(PgPosition::at(final_ticket)),
        };
        let gap = (*after != PgPosition::ORIGIN && *after < watermark)
            .then_some(TrimmedGap { resumed_at: watermark, missed: None });
        let notes = ReadNotes { in_flight: fetched.in_flight, held_back_above: (held > 0).then_some(final_ticket) };
        Ok((ReadBatch { events, scanned_to, gap, more }, notes))
    }

    /// The final ticket: every event at or below it is final (migrations/V4).
    pub async fn final_ticket(&self) -> Result<i64, EngineError> {
        let floor = self.final_floor();
        Ok(self.raise_final(floor, self.ticket("final ticket", &self.conn.sql().final_ticket).await?))
    }

    /// The last ticket handed out: no event has a larger one.
    pub async fn last_ticket(&self) -> Result<i64, EngineError> {
        self.ticket("last ticket", &self.conn.sql().last_ticket).await
    }

    /// The one ticket `sql` answers.
    async fn ticket(&self, op: &'static str, sql: &str) -> Result<i64, EngineError> {
        let rows = self.conn.rows(op, sql, &[]).await?;
        column(first_row(&rows, op)?, 0)
    }

    /// The final ticket, then (in a statement after it, same round trip) `second` with
    /// `params`: its one row.
    async fn after_final_ticket(
        &self,
        op: &'static str,
        second: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(i64, Row), EngineError> {
        let final_sql = &self.conn.sql().final_ticket;
        let floor = self.final_floor();
        self.conn
            .run(op, |client| async move {
                let (fin, then) = tokio::try_join!(client.prepare_cached(final_sql), client.prepare_cached(second))?;
                // As in a log read: in this order, one round trip, one READ COMMITTED transaction.
                let result = tokio::try_join!(
                    client.batch_execute(BEGIN_READ),
                    client.query_one(&fin, &[]),
                    client.query_one(&then, params),
                    client.batch_execute(COMMIT)
                );
                let ((), fin, row, ()) = Conn::after_transaction(client, result)?;
                Ok((self.raise_final(floor, fin.try_get::<_, i64>(0)?), row))
            })
            .await
            .map_err(|f| f.into_engine(op))
    }

    /// Where a stream resuming from a cursor of schema version 3 or older (everything at or
    /// before `(xid, id)` in (xid, id) order delivered) starts in ticket order: just below
    /// the first final ticket whose event lies after `(xid, id)` (or at the final ticket when
    /// there is none). Every ticket up to it was delivered by the stream that made the
    /// cursor; a few after it may have been too (at-least-once across restarts, as for any
    /// cursor), none is skipped. Events appended after the cursor was made have larger xids
    /// (all smaller ones had ended: versions 1-3 read below the horizon, the oldest running
    /// transaction), so they lie after it.
    /// A cursor older than what retention pruned maps to ticket 1, below the ticket
    /// watermark, so the stream reports the gap.
    pub async fn legacy_ticket(&self, xid: u64, id: i64) -> Result<PgPosition, EngineError> {
        const OP: &str = "map a version 3 cursor";
        let xid_text = xid.to_string();
        let (final_ticket, row) = self.after_final_ticket(OP, &self.conn.sql().legacy, &[&xid_text, &id]).await?;
        let first_after: Option<i64> = column(&row, 0)?;
        let pruned = (parse_xid(&column::<String>(&row, 1)?, "watermark xid")?, column::<i64>(&row, 2)?);
        let ticket_watermark: i64 = column(&row, 3)?;
        let next_xid = parse_xid(&column::<String>(&row, 4)?, "next xid")?;
        if xid >= next_xid {
            return Err(EngineError::invalid(
                "cursor",
                format!("postgres:{xid}.{id}"),
                format!("points past the end of this backend's log (next transaction id {next_xid})"),
            ));
        }
        if ticket_watermark > 1 && (xid, id) < pruned {
            return Ok(PgPosition::at(1));
        }
        Ok(PgPosition::at(first_after.map_or(final_ticket, |t| (t - 1).min(final_ticket))))
    }

    /// The log head for a feed that just went live: the final ticket, once it has passed every
    /// event visible now (waiting up to `settle` for writers still in flight below the newest
    /// event). Without that wait, events committed before the call but above the final ticket
    /// would be delivered to a stream that asked only for later ones. If `settle` passes, the
    /// head stays at the final ticket: no event is lost, but a few committed before the call
    /// may be delivered.
    pub async fn head(&self, settle: Duration) -> Result<PgPosition, EngineError> {
        const OP: &str = "log head";
        let deadline = Instant::now() + settle;
        // Writers in flight usually end within a few milliseconds: look again soon.
        let mut pauses = Backoff::new(Duration::from_millis(1), Duration::from_millis(20));
        loop {
            let (final_ticket, row) = self.after_final_ticket(OP, &self.conn.sql().newest, &[]).await?;
            let newest: Option<i64> = column(&row, 0)?;
            match newest {
                Some(newest) if newest > final_ticket => {
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            backend = BACKEND,
                            final_ticket,
                            newest,
                            "a writer older than the newest completion is still in flight; \
                             events committed just before this subscription may be delivered to it"
                        );
                        return Ok(PgPosition::at(final_ticket));
                    }
                    pauses.wait().await;
                }
                _ => return Ok(PgPosition::at(final_ticket)),
            }
        }
    }
}

/// The statements of one read, as the server answered them.
struct Fetched {
    in_flight: bool,
    final_ticket: i64,
    rows: Vec<Row>,
}

fn parse_xid(text: &str, what: &str) -> Result<u64, EngineError> {
    text.parse().map_err(|_| EngineError::Incompatible {
        backend: BACKEND,
        reason: format!("{what} {text:?} is not a 64-bit transaction id"),
    })
}

/// The payload of one log row (columns from 2 on; see `schema::LOG_COLUMNS`).
fn event_payload(row: &Row, position: PgPosition) -> Result<CompletionPayload, EngineError> {
    use completion_core::hub::Position;

    let execution_id = ExecutionId::new(column::<String>(row, 2)?)?;
    let flow_id = column::<Option<String>>(row, 3)?.map(FlowId::new).transpose()?;
    let namespace = Namespace::new(column::<String>(row, 4)?)?;
    let outcome: Outcome = column::<String>(row, 5)?.parse()?;
    let tags = parse_tags(&column::<String>(row, 6)?)?;
    let completed_at: i64 = column(row, 7)?;
    Ok(CompletionPayload::new(execution_id, namespace, outcome)
        .with_flow(flow_id)
        .with_tags(tags)
        .with_completed_at_ms(completed_at.max(0) as u64)
        .with_cursor(position.to_cursor()))
}

/// Reads the log for the hub and for catching-up streams.
pub(crate) struct PgReader {
    pub log: Arc<Log>,
    /// Whether each read is preceded by the in-flight check: the feed's reader (whatever its
    /// instance's `coalesce_notify`: other writers may coalesce); the streams' readers do
    /// not need it (a stream that catches up goes back to what the feed delivers).
    pub check_in_flight: bool,
    /// Set when a checked read found terminal writes in flight; taken by the feed.
    pub in_flight: AtomicBool,
    /// The final ticket up to which the last checked read delivered while it held committed
    /// events back above it (0: it held none back); read by the feed.
    pub held_back_above: AtomicI64,
}

impl PgReader {
    pub(crate) fn new(log: Arc<Log>, check_in_flight: bool) -> Self {
        Self { log, check_in_flight, in_flight: AtomicBool::new(false), held_back_above: AtomicI64::new(0) }
    }

    /// Whether a read since the last call found terminal writes in flight.
    pub(crate) fn take_in_flight(&self) -> bool {
        self.in_flight.swap(false, Ordering::Relaxed)
    }

    /// The final ticket up to which the last checked read delivered, if it held events back.
    pub(crate) fn held_back_above(&self) -> Option<i64> {
        Some(self.held_back_above.load(Ordering::Relaxed)).filter(|h| *h > 0)
    }
}

#[async_trait]
impl LogReader<PgPosition> for PgReader {
    /// Reads a ticket cursor, refusing one past the newest ticket drawn, and converts a
    /// version 3 cursor (`<xid>.<id>`) to the ticket of the event it names.
    async fn decode_cursor(&self, cursor: &Cursor) -> Result<PgPosition, EngineError> {
        match PgCursor::parse(cursor)? {
            PgCursor::Ticket(position) => {
                let last = self.log.last_ticket().await?;
                if position.ticket > last {
                    return Err(EngineError::invalid(
                        "cursor",
                        cursor.as_str(),
                        format!("points past the end of this backend's log (last ticket {last})"),
                    ));
                }
                Ok(position)
            }
            PgCursor::Legacy { xid, id } => self.log.legacy_ticket(xid, id).await,
        }
    }

    async fn read_after(
        &self,
        after: &PgPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<ReadBatch<PgPosition>, EngineError> {
        let span = tracing::debug_span!("read_log", backend = BACKEND, position = ?after, limit);
        if !self.check_in_flight {
            return self.log.read(after, filter, limit).instrument(span).await;
        }
        let (batch, notes) = self.log.read_checked(after, filter, limit).instrument(span).await?;
        if notes.in_flight {
            self.in_flight.store(true, Ordering::Relaxed);
        }
        self.held_back_above.store(notes.held_back_above.unwrap_or(0), Ordering::Relaxed);
        Ok(batch)
    }
}
