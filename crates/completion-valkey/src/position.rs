//! Positions in a partitioned log: one stream id per partition, and their cursor text.
//!
//! A [`ValkeyPosition`] holds, for each partition, the id of the last stream entry covered
//! (`0-0`: nothing yet, "from the earliest"). Partitions past the end of the vector count as
//! `0-0`, so the empty default is the origin whatever the partition count.
//!
//! Cursor text: `valkey:<partitions>:<ms>-<seq>,<ms>-<seq>,...` with exactly `<partitions>`
//! ids, or `valkey:origin` for the origin of an instance whose partition count is not known
//! to the position (never produced once a stream delivered an event).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use completion_core::hub::Position;
use completion_core::{Cursor, EngineError};

pub(crate) const BACKEND: &str = "valkey";

/// A stream entry id, `<ms>-<seq>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ms, seq) = s.split_once('-').ok_or_else(|| format!("`{s}` is not a stream id (<ms>-<seq>)"))?;
        let digits = |part: &str| -> Result<u64, String> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{s}` is not a stream id (<ms>-<seq>)"));
            }
            part.parse().map_err(|_| format!("`{s}` is out of range for a stream id"))
        };
        Ok(StreamId { ms: digits(ms)?, seq: digits(seq)? })
    }
}

/// Where a stream stands in every partition's log. `Default` is the origin.
///
/// The origin ("from the earliest retained event", never a gap) differs from an anchored
/// position whose ids are all `0-0` (the head of an empty log): a stream that started there
/// and fell behind past retention lost events and must be told.
#[derive(Clone, Default)]
pub struct ValkeyPosition(Option<Vec<StreamId>>);

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

    fn raise(&mut self, partition: u16, id: StreamId) {
        let ids = self.0.get_or_insert_with(Vec::new);
        let at = usize::from(partition);
        if ids.len() <= at {
            ids.resize(at + 1, StreamId::ZERO);
        }
        if id > ids[at] {
            ids[at] = id;
        }
    }

    /// Decodes the position part of a cursor for an instance of `partitions` partitions.
    pub(crate) fn decode(cursor: &Cursor, partitions: u16) -> Result<Self, EngineError> {
        let text = cursor.position_for(BACKEND)?;
        let bad = |reason: String| EngineError::invalid("cursor", cursor.as_str(), reason);
        if text == "origin" {
            return Ok(Self::default());
        }
        let (count, ids) =
            text.split_once(':').ok_or_else(|| bad("expected `valkey:<partitions>:<id>,<id>,...`".into()))?;
        let count: u16 = count.parse().map_err(|_| bad(format!("`{count}` is not a partition count")))?;
        if count != partitions {
            return Err(bad(format!(
                "was made for {count} partitions, this backend has {partitions} (the partition count of a key \
                 prefix never changes)"
            )));
        }
        let ids = ids
            .split(',')
            .map(|id| {
                let id: StreamId = id.parse().map_err(bad)?;
                if id.ms == u64::MAX && id.seq == u64::MAX {
                    return Err(bad("the largest stream id has no successor to read from".into()));
                }
                Ok(id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() != usize::from(partitions) {
            return Err(bad(format!("holds {} stream ids, expected {partitions}", ids.len())));
        }
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

/// Writes `<ms>-<seq>` with plain digit loops: the formatting machinery was a visible share
/// of a catch-up's client time (16 ids per cursor, one cursor per event and stream).
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
    f.write_str(digits(id.ms, &mut buf))?;
    f.write_str("-")?;
    f.write_str(digits(id.seq, &mut buf))
}

/// The position of one event: its partition and stream id.
pub type EventPosition = (u16, StreamId);

impl Position for ValkeyPosition {
    type Event = EventPosition;

    fn is_new(&self, event: &EventPosition) -> bool {
        event.1.cmp(&self.get(event.0)) == Ordering::Greater
    }

    fn advance(&mut self, event: &EventPosition) {
        self.raise(event.0, event.1);
    }

    fn merge(&mut self, other: &Self) {
        if let Some(ids) = &other.0 {
            if self.0.is_none() {
                self.0 = Some(Vec::new());
            }
            for (p, id) in ids.iter().enumerate() {
                self.raise(p as u16, *id);
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
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let mut p = ValkeyPosition::default();
        p.advance(&(2, id(5, 1)));
        p.merge(&ValkeyPosition::from_ids(vec![id(1, 0), id(0, 0), id(0, 0), id(9, 9)]));
        let cursor = p.to_cursor();
        assert_eq!(cursor.as_str(), "valkey:4:1-0,0-0,5-1,9-9");
        assert_eq!(ValkeyPosition::decode(&cursor, 4).unwrap(), p);
        let err = ValkeyPosition::decode(&cursor, 16).unwrap_err().to_string();
        assert!(err.contains("4 partitions") && err.contains("16"), "{err}");
        for garbage in ["valkey:x", "valkey:2:1-0", "valkey:2:1-0,zz", "valkey:2:1-0,-1", "valkey:2:1-0,1-", "memory:3"]
        {
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

    #[test]
    fn positions_compare_per_partition() {
        let mut p = ValkeyPosition::default();
        assert!(p.is_new(&(3, id(0, 1))));
        p.advance(&(3, id(7, 0)));
        assert!(!p.is_new(&(3, id(7, 0))));
        assert!(!p.is_new(&(3, id(6, 9))));
        assert!(p.is_new(&(3, id(7, 1))));
        assert!(p.is_new(&(0, id(1, 0))));
        assert_ne!(ValkeyPosition::default(), ValkeyPosition::from_ids(vec![StreamId::ZERO; 4]));
        assert_eq!(ValkeyPosition::from_ids(vec![]), ValkeyPosition::from_ids(vec![StreamId::ZERO; 4]));
        assert_ne!(ValkeyPosition::default(), p);
        assert_eq!(p.watermark(), id(7, 0));
        let mut origin = ValkeyPosition::default();
        origin.merge(&ValkeyPosition::default());
        assert!(origin.is_origin());
    }
}
