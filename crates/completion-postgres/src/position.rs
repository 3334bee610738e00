//! [`PgPosition`]: a place in the completion log, ordered by (transaction id, event id).
//!
//! Why not the event id alone: ids come from a sequence at insert time, but transactions
//! commit in any order, so a reader that moved past id 11 could later miss id 10. The log is
//! read only below the *horizon* — the oldest transaction id still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`). Every transaction below it has ended, so the
//! events visible there are final, and every event that becomes visible later belongs to a
//! transaction at or above the horizon, which sorts after everything already read. Ordering
//! by (xid, id) therefore never lets a late commit land behind a cursor.
//!
//! Text form (inside a [`Cursor`]): `postgres:<xid>.<id>`. The origin is `0.0`. A position
//! reached by a read that found nothing more is `<horizon - 1>.<i64::MAX>`: "everything
//! below the horizon".

use std::fmt;

use completion_core::hub::Position;
use completion_core::{Cursor, EngineError};

use crate::BACKEND;

/// A position in the PostgreSQL completion log: everything at or before (xid, id) was
/// delivered (or filtered out). `Default` is the origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgPosition {
    /// The 64-bit (epoch-extended) id of the transaction that inserted the event.
    pub xid: u64,
    /// The event's sequence id.
    pub id: i64,
}

impl PgPosition {
    /// The origin, before every event.
    pub const ORIGIN: PgPosition = PgPosition { xid: 0, id: 0 };

    /// The position covering every event of transactions below `horizon`.
    pub fn below(horizon: u64) -> Self {
        PgPosition { xid: horizon.saturating_sub(1), id: i64::MAX }
    }

    /// Parses the position part of a cursor.
    pub fn parse(cursor: &Cursor) -> Result<Self, EngineError> {
        let text = cursor.position_for(BACKEND)?;
        let bad = || EngineError::invalid("cursor", cursor.as_str(), "expected `postgres:<xid>.<id>`");
        let (xid, id) = text.split_once('.').ok_or_else(bad)?;
        let xid: u64 = xid.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        if id < 0 {
            return Err(bad());
        }
        Ok(PgPosition { xid, id })
    }
}

impl fmt::Display for PgPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.xid, self.id)
    }
}

impl Position for PgPosition {
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
    fn orders_by_transaction_then_id_and_round_trips() {
        let late_commit = PgPosition { xid: 100, id: 11 };
        let early_xid = PgPosition { xid: 99, id: 12 };
        assert!(early_xid < late_commit);
        assert!(PgPosition::below(100) > early_xid);
        assert!(PgPosition::below(100) < late_commit);
        let c = late_commit.to_cursor();
        assert_eq!(c.as_str(), "postgres:100.11");
        assert_eq!(PgPosition::parse(&c).unwrap(), late_commit);
        assert_eq!(PgPosition::parse(&PgPosition::ORIGIN.to_cursor()).unwrap(), PgPosition::ORIGIN);
        for bad in ["postgres:1", "postgres:a.1", "postgres:1.-2", "memory:5", "postgres:1.2.3"] {
            let cursor = Cursor::parse(bad).unwrap();
            assert!(PgPosition::parse(&cursor).is_err(), "{bad}");
        }
    }

    #[test]
    fn merge_and_advance_never_go_back() {
        let mut p = PgPosition { xid: 5, id: 1 };
        p.advance(&PgPosition { xid: 4, id: 9 });
        assert_eq!(p, PgPosition { xid: 5, id: 1 });
        p.merge(&PgPosition::below(10));
        assert_eq!(p, PgPosition { xid: 9, id: i64::MAX });
        assert!(p.is_new(&PgPosition { xid: 10, id: 0 }));
        assert!(!p.is_new(&PgPosition { xid: 9, id: 3 }));
    }

    /// Positions a stream reaches: from the origin, through events of any transaction and
    /// reads that found nothing more below a horizon.
    fn reachable() -> impl Strategy<Value = PgPosition> {
        let step = prop_oneof![
            (any::<u64>(), 1..=i64::MAX).prop_map(|(xid, id)| (PgPosition { xid, id }, false)),
            (1..=u64::MAX).prop_map(|h| (PgPosition::below(h), true)),
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
                if let Ok(cursor) = Cursor::parse(&text) {
                    if let Err(e) = PgPosition::parse(&cursor) {
                        prop_assert!(e.to_string().contains("cursor"), "{}", e);
                    }
                }
            }
        }
    }
}
