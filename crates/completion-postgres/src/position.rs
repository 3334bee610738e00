//! [`PgPosition`]: a place in the completion log, ordered by *ticket*.
//!
//! A ticket is drawn when an event is appended, after its transaction registered as a writer
//! (schema version 4, `migrations/V4__tickets.sql`). Transactions commit in any order, so a
//! reader that moved past ticket 11 could later miss ticket 10: the log is read only up to
//! `final_ticket()`, below which every ticket's transaction has ended; a ticket drawn later
//! is larger than everything read. Only transactions that appended to this schema's log hold
//! it back, not every transaction of the cluster (versions 1-3 ordered by transaction id and
//! read below the cluster's oldest running one).
//!
//! Text form (inside a [`Cursor`]): `postgres:<ticket>`; the origin is `postgres:0`. Cursors
//! of versions 1-3, `postgres:<xid>.<id>`, are recognised ([`PgCursor::Legacy`]) and mapped
//! to a ticket when a stream resumes from them (`Log::legacy_ticket`).

use std::fmt;

use completion_core::hub::Position;
use completion_core::{Cursor, EngineError};

use crate::BACKEND;

/// A position in the PostgreSQL completion log: every event up to this ticket was delivered
/// (or filtered out). `Default` is the origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgPosition {
    /// The ticket of the newest event covered (0: none).
    pub ticket: i64,
}

/// What a PostgreSQL cursor's text holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PgCursor {
    /// A ticket (schema version 4 on).
    Ticket(PgPosition),
    /// `(xid, id)` of schema versions 1-3: everything at or before it in (xid, id) order.
    Legacy { xid: u64, id: i64 },
}

impl PgPosition {
    /// The origin, before every event.
    pub const ORIGIN: PgPosition = PgPosition { ticket: 0 };

    /// The position of ticket `ticket`.
    pub fn at(ticket: i64) -> Self {
        PgPosition { ticket }
    }

    /// Parses the position part of a cursor. A cursor of schema version 3 or older
    /// (`postgres:<xid>.<id>`) is refused here: `subscribe_from` maps it to a ticket first.
    pub fn parse(cursor: &Cursor) -> Result<Self, EngineError> {
        match PgCursor::parse(cursor)? {
            PgCursor::Ticket(position) => Ok(position),
            PgCursor::Legacy { .. } => Err(EngineError::invalid(
                "cursor",
                cursor.as_str(),
                "was made for schema version 3 or older (`postgres:<xid>.<id>`): resume from it with \
                 subscribe_from, which maps it to a ticket",
            )),
        }
    }
}

impl PgCursor {
    /// Parses the position part of a cursor of any schema version.
    pub(crate) fn parse(cursor: &Cursor) -> Result<Self, EngineError> {
        let text = cursor.position_for(BACKEND)?;
        let bad = || {
            EngineError::invalid("cursor", cursor.as_str(), "expected `postgres:<ticket>` (or `postgres:<xid>.<id>`)")
        };
        let number = |part: &str| part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty();
        match text.split_once('.') {
            None if number(text) => Ok(PgCursor::Ticket(PgPosition { ticket: text.parse().map_err(|_| bad())? })),
            Some((xid, id)) if number(xid) && number(id) => {
                Ok(PgCursor::Legacy { xid: xid.parse().map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for PgPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ticket)
    }
}

impl Position for PgPosition {
    const BACKEND: &'static str = "postgres";
    type Event = PgPosition;

    fn is_new(&self, event: &PgPosition) -> bool {
        event > self
    }

    fn advance(&mut self, event: &PgPosition) {
        *self = (*self).max(*event);
    }

    fn merge(&mut self, other: &Self) {
        *self = (*self).max(*other);
    }

    fn to_cursor(&self) -> Cursor {
        Cursor::new(BACKEND, self)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn orders_by_ticket_and_round_trips() {
        let (a, b) = (PgPosition::at(10), PgPosition::at(11));
        assert!(a < b && b.is_new(&PgPosition::at(12)) && !b.is_new(&a));
        let c = b.to_cursor();
        assert_eq!(c.as_str(), "postgres:11");
        assert_eq!(PgPosition::parse(&c).unwrap(), b);
        assert_eq!(PgPosition::parse(&PgPosition::ORIGIN.to_cursor()).unwrap(), PgPosition::ORIGIN);
        for bad in
            ["postgres:", "postgres:a", "postgres:-2", "memory:5", "postgres:1.2.3", "postgres:1.", "postgres:.1"]
        {
            let cursor = Cursor::parse(bad).unwrap();
            assert!(PgCursor::parse(&cursor).is_err(), "{bad}");
            assert!(PgPosition::parse(&cursor).is_err(), "{bad}");
        }
        let legacy = Cursor::parse("postgres:738.12").unwrap();
        assert_eq!(PgCursor::parse(&legacy).unwrap(), PgCursor::Legacy { xid: 738, id: 12 });
        let err = PgPosition::parse(&legacy).unwrap_err().to_string();
        assert!(err.contains("version 3") && err.contains("subscribe_from"), "{err}");
    }

    #[test]
    fn merge_and_advance_never_go_back() {
        let mut p = PgPosition::at(5);
        p.advance(&PgPosition::at(4));
        assert_eq!(p, PgPosition::at(5));
        p.merge(&PgPosition::at(9));
        assert_eq!(p, PgPosition::at(9));
        assert!(p.is_new(&PgPosition::at(10)));
        assert!(!p.is_new(&PgPosition::at(9)));
    }

    /// Positions a stream reaches: from the origin, through events and reads that found
    /// nothing more below a final ticket.
    fn reachable() -> impl Strategy<Value = PgPosition> {
        let step = prop_oneof![
            (1..=i64::MAX).prop_map(|t| (PgPosition::at(t), false)),
            (0..=i64::MAX).prop_map(|t| (PgPosition::at(t), true))
        ];
        proptest::collection::vec(step, 0..8).prop_map(|steps| {
            let mut p = PgPosition::ORIGIN;
            for (step, read) in steps {
                if read { p.merge(&step) } else { p.advance(&step) }
            }
            p
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_reachable_position_round_trips(position in reachable()) {
            let text = position.to_cursor().to_string();
            let cursor = Cursor::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = PgPosition::parse(&cursor).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(back, position);
        }

        /// Cursors of schema version 3 and older are recognised as such, whatever their numbers.
        #[test]
        fn legacy_cursors_are_recognised(xid in any::<u64>(), id in 0..=i64::MAX) {
            let cursor = Cursor::parse(&format!("postgres:{xid}.{id}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(PgCursor::parse(&cursor).map_err(|e| TestCaseError::fail(e.to_string()))?, PgCursor::Legacy { xid, id });
        }

        /// Any cursor text, and mutations of real ones, decode or are refused with a reason.
        #[test]
        fn any_cursor_text_never_panics(
            position in reachable(),
            text in "postgres:[0-9.+-]{0,44}|.{0,40}",
            at in any::<proptest::sample::Index>(),
            ch in any::<char>(),
        ) {
            let mut mutated: Vec<char> = position.to_cursor().to_string().chars().collect();
            let i = at.index(mutated.len());
            mutated[i] = ch;
            for text in [text, mutated.into_iter().collect()] {
                if let Ok(cursor) = Cursor::parse(&text)
                    && let Err(e) = PgCursor::parse(&cursor) {
                        prop_assert!(e.to_string().contains("cursor"), "{}", e);
                    }
            }
        }
    }
}
