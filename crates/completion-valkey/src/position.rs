//! Positions in a partitioned log: one stream id per partition, and their cursor text.
//!
//! A [`ValkeyPosition`] is either the origin ("from the earliest", the `Default`) or anchored:
//! for every partition of the instance, the id of the last stream entry covered (`0-0`:
//! nothing yet in that partition). An anchored position always holds one id per partition:
//! each [`EventPosition`] carries the instance's partition count, so the first event a stream
//! from the origin meets anchors every partition, not only those up to its own.
//!
//! Cursor text: `valkey:<partitions>:<micros>-<seq>,<micros>-<seq>,...` with exactly `<partitions>`
//! ids, or `valkey:origin` for the origin (never produced once a stream delivered an event).
//!
//! Builds before library version 5 of this crate wrote a shorter cursor for a stream started
//! at the origin: ids only up to the highest partition it had covered, and that length as the
//! partition count. Those cursors still resume: [`ValkeyPosition::decode`] accepts fewer ids
//! than the instance has partitions when the last one is not `0-0` (a short cursor always
//! ends with the id of an entry it covered, while a complete cursor of a smaller prefix may
//! end anywhere) and counts the missing partitions as `0-0`, which is exact: a stream from the
//! origin delivers in id order, so a partition it never covered held no entry below its
//! watermark. A complete cursor of another key prefix with fewer partitions whose last id is
//! set cannot be told apart from a short one; such a cursor belongs to other keys and is a
//! caller's mistake the text cannot reveal.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use completion_core::hub::Position;
use completion_core::{Cursor, EngineError};

pub(crate) const BACKEND: &str = "valkey";

/// A stream entry id, `<micros>-<seq>`. The library writes the server's time in
/// microseconds where streams usually hold milliseconds (`lua/emit.lua`), so that ids of all
/// partitions sort in commit order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    /// The first part: the server's time of the append, in microseconds.
    pub micros: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: StreamId = StreamId { micros: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.micros, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (micros, seq) = s.split_once('-').ok_or_else(|| format!("`{s}` is not a stream id (<micros>-<seq>)"))?;
        let digits = |part: &str| -> Result<u64, String> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{s}` is not a stream id (<micros>-<seq>)"));
            }
            part.parse().map_err(|_| format!("`{s}` is out of range for a stream id"))
        };
        Ok(StreamId { micros: digits(micros)?, seq: digits(seq)? })
    }
}

/// Where a stream stands in every partition's log. `Default` is the origin.
///
/// The origin ("from the earliest retained event", never a gap) differs from an anchored
/// position whose ids are all `0-0` (the head of an empty log): a stream that started there
/// and fell behind past retention lost events and must be told.
#[derive(Clone, Default)]
pub(crate) struct ValkeyPosition(Option<Vec<StreamId>>);

impl ValkeyPosition {
    /// An anchored position from one id per partition.
    pub(crate) fn from_ids(ids: Vec<StreamId>) -> Self {
        Self(Some(ids))
    }

    /// Whether this is the origin.
    pub(crate) fn is_origin(&self) -> bool {
        self.0.is_none()
    }

    /// The id covered in `partition` (`0-0` when none).
    pub(crate) fn get(&self, partition: u16) -> StreamId {
        self.0.as_ref().and_then(|ids| ids.get(usize::from(partition)).copied()).unwrap_or_default()
    }

    /// The newest id covered in any partition. Streams deliver in id order, so every
    /// event with a smaller id either was delivered or predates the stream.
    pub(crate) fn watermark(&self) -> StreamId {
        self.0.iter().flatten().copied().max().unwrap_or_default()
    }

    /// Raises `partition` to `id`, first anchoring every one of `partitions` partitions.
    fn raise(&mut self, partition: u16, id: StreamId, partitions: u16) {
        let ids = self.0.get_or_insert_with(Vec::new);
        let len = usize::from(partitions).max(usize::from(partition) + 1);
        if ids.len() < len {
            ids.resize(len, StreamId::ZERO);
        }
        let at = usize::from(partition);
        if id > ids[at] {
            ids[at] = id;
        }
    }

    /// Decodes the position part of a cursor for an instance of `partitions` partitions
    /// (also the short cursors of older builds: see the module docs).
    pub(crate) fn decode(cursor: &Cursor, partitions: u16) -> Result<Self, EngineError> {
        let text = cursor.position_for(BACKEND)?;
        let bad = |reason: String| EngineError::invalid("cursor", cursor.as_str(), reason);
        if text == "origin" {
            return Ok(Self::default());
        }
        let (count, ids) =
            text.split_once(':').ok_or_else(|| bad("expected `valkey:<partitions>:<id>,<id>,...`".into()))?;
        let count: u16 = count.parse().map_err(|_| bad(format!("`{count}` is not a partition count")))?;
        let mut ids = ids
            .split(',')
            .map(|id| {
                let id: StreamId = id.parse().map_err(bad)?;
                if id.micros == u64::MAX && id.seq == u64::MAX {
                    return Err(bad("the largest stream id has no successor to read from".into()));
                }
                Ok(id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() != usize::from(count) {
            return Err(bad(format!("holds {} stream ids, its partition count says {count}", ids.len())));
        }
        let short = count < partitions && ids.last().is_some_and(|last| *last != StreamId::ZERO);
        if count != partitions && !short {
            return Err(bad(format!(
                "was made for {count} partitions, this backend has {partitions} (the partition count of a key \
                 prefix never changes)"
            )));
        }
        ids.resize(usize::from(partitions), StreamId::ZERO);
        Ok(Self::from_ids(ids))
    }
}

impl PartialEq for ValkeyPosition {
    /// Missing partitions of an anchored position count as `0-0`; the origin equals only
    /// the origin.
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => (0..a.len().max(b.len())).all(|p| self.get(p as u16) == other.get(p as u16)),
            _ => false,
        }
    }
}

impl fmt::Debug for ValkeyPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => write!(f, "ValkeyPosition(origin)"),
            Some(ids) => {
                write!(f, "ValkeyPosition[")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{id}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// A position's cursor text, `<partitions>:<id>,<id>,...`, written straight into the
/// cursor (this runs once per delivered event and stream: no string per id, no join).
struct CursorIds<'a>(&'a [StreamId]);

impl fmt::Display for CursorIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.0.len())?;
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_id(f, *id)?;
        }
        Ok(())
    }
}

/// Writes `<micros>-<seq>` with plain digit loops, cheaper than the formatting machinery:
/// this runs for every id of every cursor (16 ids per cursor, one cursor per event and
/// stream), on a catch-up's hot path.
fn write_id(f: &mut fmt::Formatter<'_>, id: StreamId) -> fmt::Result {
    fn digits(n: u64, buf: &mut [u8; 20]) -> &str {
        let (mut n, mut at) = (n, buf.len());
        loop {
            at -= 1;
            buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        std::str::from_utf8(&buf[at..]).unwrap_or("0")
    }
    let mut buf = [0u8; 20];
    f.write_str(digits(id.micros, &mut buf))?;
    f.write_str("-")?;
    f.write_str(digits(id.seq, &mut buf))
}

/// The position of one event: its partition and stream id, and the partition count of its
/// instance (which an event anchoring the origin gives to the position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventPosition {
    /// The partition whose log holds the event.
    pub partition: u16,
    /// The event's entry id in that log.
    pub id: StreamId,
    /// How many partitions the instance has.
    pub partitions: u16,
}

impl Position for ValkeyPosition {
    const BACKEND: &'static str = BACKEND;
    type Event = EventPosition;

    fn is_new(&self, event: &EventPosition) -> bool {
        event.id.cmp(&self.get(event.partition)) == Ordering::Greater
    }

    fn advance(&mut self, event: &EventPosition) {
        self.raise(event.partition, event.id, event.partitions);
    }

    fn merge(&mut self, other: &Self) {
        if let Some(ids) = &other.0 {
            if self.0.is_none() {
                self.0 = Some(Vec::new());
            }
            let partitions = u16::try_from(ids.len()).unwrap_or(u16::MAX);
            for (p, id) in ids.iter().enumerate() {
                self.raise(p as u16, *id, partitions);
            }
        }
    }

    fn to_cursor(&self) -> Cursor {
        match &self.0 {
            None => Cursor::new(BACKEND, "origin"),
            Some(ids) => Cursor::new(BACKEND, CursorIds(ids)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(micros: u64, seq: u64) -> StreamId {
        StreamId { micros, seq }
    }

    fn at(partition: u16, id: StreamId, partitions: u16) -> EventPosition {
        EventPosition { partition, id, partitions }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let mut p = ValkeyPosition::default();
        p.advance(&at(2, id(5, 1), 4));
        p.merge(&ValkeyPosition::from_ids(vec![id(1, 0), id(0, 0), id(0, 0), id(9, 9)]));
        let cursor = p.to_cursor();
        assert_eq!(cursor.as_str(), "valkey:4:1-0,0-0,5-1,9-9");
        assert_eq!(ValkeyPosition::decode(&cursor, 4).unwrap(), p);
        let complete = Cursor::parse("valkey:4:1-0,0-0,5-1,0-0").unwrap();
        let err = ValkeyPosition::decode(&complete, 16).unwrap_err().to_string();
        assert!(err.contains("4 partitions") && err.contains("16"), "{err}");
        for garbage in [
            "valkey:x",
            "valkey:2:1-0",
            "valkey:2:1-0,zz",
            "valkey:2:1-0,-1",
            "valkey:2:1-0,1-",
            "valkey:3:1-0,2-0",
            "valkey:1:1-0,2-0",
            "valkey:3:1-0,2-0,3-0",
            "valkey:0:",
            "memory:3",
        ] {
            let c = Cursor::parse(garbage).unwrap();
            assert!(ValkeyPosition::decode(&c, 2).is_err(), "{garbage}");
        }
        let big = ValkeyPosition::from_ids(vec![id(u64::MAX, 0), id(1_700_000_000_123_456, 10), id(0, u64::MAX - 1)]);
        assert_eq!(
            big.to_cursor().as_str(),
            "valkey:3:18446744073709551615-0,1700000000123456-10,0-18446744073709551614"
        );
        assert_eq!(ValkeyPosition::decode(&big.to_cursor(), 3).unwrap(), big);
        let max = Cursor::parse("valkey:1:18446744073709551615-18446744073709551615").unwrap();
        assert!(ValkeyPosition::decode(&max, 1).is_err());
        let origin = ValkeyPosition::default().to_cursor();
        assert_eq!(ValkeyPosition::decode(&origin, 3).unwrap(), ValkeyPosition::default());
    }

    /// The breach older builds had: the first event of a stream from the origin gave a cursor
    /// of only the partitions up to its own, which `decode` then refused.
    #[test]
    fn the_first_event_from_the_origin_anchors_every_partition() {
        let mut p = ValkeyPosition::default();
        p.advance(&at(12, id(1_796_397_759_849_480, 0), 16));
        let cursor = p.to_cursor();
        assert!(cursor.as_str().starts_with("valkey:16:0-0,"), "{cursor}");
        assert!(cursor.as_str().ends_with(",1796397759849480-0,0-0,0-0,0-0"), "{cursor}");
        assert_eq!(ValkeyPosition::decode(&cursor, 16).unwrap().to_cursor(), cursor);
    }

    /// Cursors older builds wrote for a stream from the origin (ids up to the highest
    /// partition covered, the last one set) resume, the missing partitions at `0-0`.
    #[test]
    fn short_cursors_of_older_builds_resume() {
        let old = Cursor::parse("valkey:3:0-0,0-0,1796397759849480-0").unwrap();
        let p = ValkeyPosition::decode(&old, 16).unwrap();
        let mut expected = vec![StreamId::ZERO; 16];
        expected[2] = id(1_796_397_759_849_480, 0);
        assert_eq!(p.to_cursor(), ValkeyPosition::from_ids(expected).to_cursor());
        assert_eq!(p.watermark(), id(1_796_397_759_849_480, 0));
        let longer = Cursor::parse("valkey:3:0-0,0-0,1-0").unwrap();
        let err = ValkeyPosition::decode(&longer, 2).unwrap_err().to_string();
        assert!(err.contains("3 partitions") && err.contains("has 2"), "{err}");
    }

    #[test]
    fn positions_compare_per_partition() {
        let mut p = ValkeyPosition::default();
        assert!(p.is_new(&at(3, id(0, 1), 4)));
        p.advance(&at(3, id(7, 0), 4));
        assert!(!p.is_new(&at(3, id(7, 0), 4)));
        assert!(!p.is_new(&at(3, id(6, 9), 4)));
        assert!(p.is_new(&at(3, id(7, 1), 4)));
        assert!(p.is_new(&at(0, id(1, 0), 4)));
        assert_ne!(ValkeyPosition::default(), ValkeyPosition::from_ids(vec![StreamId::ZERO; 4]));
        assert_eq!(ValkeyPosition::from_ids(vec![]), ValkeyPosition::from_ids(vec![StreamId::ZERO; 4]));
        assert_ne!(ValkeyPosition::default(), p);
        assert_eq!(p.watermark(), id(7, 0));
        let mut origin = ValkeyPosition::default();
        origin.merge(&ValkeyPosition::default());
        assert!(origin.is_origin());
    }

    /// One step a stream's position takes: an event delivered, or a read's scanned-to
    /// position (one id per partition) merged.
    #[derive(Clone, Debug)]
    enum Step {
        Event(u16, StreamId),
        Scanned(Vec<StreamId>),
    }

    fn stream_id() -> impl Strategy<Value = StreamId> {
        // Entry ids are never `0-0`; the largest id has no successor and is refused.
        prop_oneof![
            (1..1_000u64, 0..4u64),
            (1_700_000_000_000_000..1_900_000_000_000_000u64, any::<u64>()),
            (Just(u64::MAX), 0..u64::MAX),
        ]
        .prop_map(|(micros, seq)| id(micros, seq))
    }

    /// A partition count, and positions reachable on such an instance: from the origin or
    /// from the head, through events and merged reads.
    fn reachable() -> impl Strategy<Value = (u16, ValkeyPosition)> {
        prop_oneof![1..=4u16, Just(16u16), Just(256u16)].prop_flat_map(|partitions| {
            let step = prop_oneof![
                (0..partitions, stream_id()).prop_map(|(p, id)| Step::Event(p, id)),
                proptest::collection::vec(prop_oneof![Just(StreamId::ZERO), stream_id()], usize::from(partitions))
                    .prop_map(Step::Scanned),
            ];
            let start = prop_oneof![
                Just(ValkeyPosition::default()),
                proptest::collection::vec(prop_oneof![Just(StreamId::ZERO), stream_id()], usize::from(partitions))
                    .prop_map(ValkeyPosition::from_ids),
            ];
            (start, proptest::collection::vec(step, 0..12)).prop_map(move |(mut position, steps)| {
                for step in steps {
                    match step {
                        Step::Event(p, id) => position.advance(&at(p, id, partitions)),
                        Step::Scanned(ids) => position.merge(&ValkeyPosition::from_ids(ids)),
                    }
                }
                (partitions, position)
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every reachable position comes back exactly from its cursor text.
        #[test]
        fn every_reachable_position_round_trips((partitions, position) in reachable()) {
            let text = position.to_cursor().to_string();
            let cursor: Cursor = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let back = ValkeyPosition::decode(&cursor, partitions)
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(back.to_cursor().to_string(), text);
            prop_assert_eq!(back.is_origin(), position.is_origin());
            prop_assert_eq!(back.watermark(), position.watermark());
            for p in 0..partitions {
                prop_assert_eq!(back.get(p), position.get(p));
            }
        }

        /// Mutated cursor text (a character dropped, changed or added) decodes or is refused
        /// with a reason; it never panics.
        #[test]
        fn mutated_cursors_never_panic(
            (partitions, position) in reachable(),
            at in any::<proptest::sample::Index>(),
            mutation in 0..3u8,
            ch in prop_oneof![Just(','), Just('-'), Just(':'), Just('0'), Just('9'), any::<char>()],
        ) {
            let mut chars: Vec<char> = position.to_cursor().to_string().chars().collect();
            let i = at.index(chars.len());
            match mutation {
                0 => { chars.remove(i); }
                1 => chars[i] = ch,
                _ => chars.insert(i, ch),
            }
            let text: String = chars.into_iter().collect();
            if let Ok(cursor) = Cursor::parse(&text)
                && let Err(e) = ValkeyPosition::decode(&cursor, partitions) {
                    prop_assert!(!e.to_string().is_empty());
                }
        }

        /// Arbitrary text never panics the decoder.
        #[test]
        fn random_cursors_never_panic(text in "valkey:[0-9]{0,3}:[0-9,\\-]{0,40}|.{0,40}", partitions in 1..=300u16) {
            if let Ok(cursor) = Cursor::parse(&text) {
                let _ = ValkeyPosition::decode(&cursor, partitions);
            }
        }
    }
}
