//! The wire format: stream entry fields, the channel's message body, tags as JSON, and the
//! replies of the library's functions and of `XRANGE`.
//!
//! Both the log entry and the message are written by the Lua library (`lua/completions.lua`);
//! this module only reads them, and refuses anything malformed with a reason (the caller
//! skips, logs and counts it). See `docs/valkey.md` for the format. Replies arrive as the
//! client library's values ([`Value`]), read here by shape.

use std::collections::BTreeMap;

use completion_core::hub::LogEvent;
use completion_core::{CompletionPayload, ExecutionId, FlowId, Namespace, Outcome, Tags};
use fred::types::Value;
use serde::Deserialize;

use crate::keys::Keyspace;
use crate::position::{EventPosition, StreamId, ValkeyPosition};

/// Version of the message body this build reads (`"v"`). Newer versions stay readable as
/// long as they keep these fields.
pub(crate) const MESSAGE_VERSION: u64 = 1;

/// Tags as the JSON object stored in the hash and the log: `{"key":"value",...}`.
pub(crate) fn tags_to_json(tags: &Tags) -> String {
    let map: BTreeMap<&str, &str> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Serializing a map of strings cannot fail.
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_string())
}

/// Parses the tags JSON object.
pub(crate) fn tags_from_json(text: &str) -> Result<Tags, String> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|e| format!("tags are not a JSON object of strings: {e}"))?;
    tags_from_map(map)
}

fn tags_from_map(map: BTreeMap<String, String>) -> Result<Tags, String> {
    Tags::from_pairs(map).map_err(|e| e.to_string())
}

/// One completion announced on the channel.
#[derive(Debug)]
pub(crate) struct Announcement {
    /// The event, with its position.
    pub event: LogEvent<ValkeyPosition>,
    /// The id of the partition's previous log entry when this one was appended (`0-0` for
    /// none): if the feed's position is at or past it, nothing was missed in between.
    pub prev: StreamId,
}

#[derive(Deserialize)]
struct MessageBody {
    v: u64,
    partition: u16,
    id: String,
    prev: String,
    execution_id: String,
    namespace: String,
    #[serde(default)]
    flow_id: Option<String>,
    outcome: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    completed_at_ms: u64,
}

/// Parses a message body published by the library.
pub(crate) fn parse_message(body: &[u8], keys: &Keyspace) -> Result<Announcement, String> {
    let m: MessageBody = serde_json::from_slice(body).map_err(|e| format!("not a completion message: {e}"))?;
    if m.v < MESSAGE_VERSION {
        return Err(format!("message version {} is older than {MESSAGE_VERSION}", m.v));
    }
    if m.partition >= keys.partitions() {
        return Err(format!("partition {} is out of range (0..{})", m.partition, keys.partitions()));
    }
    let id: StreamId = m.id.parse()?;
    let prev: StreamId = m.prev.parse()?;
    let execution_id = ExecutionId::new(m.execution_id).map_err(|e| e.to_string())?;
    if keys.partition_of(execution_id.as_str()) != m.partition {
        return Err(format!("execution {execution_id} does not belong to partition {}", m.partition));
    }
    let payload = CompletionPayload::new(
        execution_id,
        Namespace::new(m.namespace).map_err(|e| e.to_string())?,
        m.outcome.parse::<Outcome>().map_err(|e| e.to_string())?,
    )
    .with_flow(m.flow_id.filter(|f| !f.is_empty()).map(FlowId::new).transpose().map_err(|e| e.to_string())?)
    .with_tags(tags_from_map(m.tags)?)
    .with_completed_at_ms(m.completed_at_ms);
    let position = EventPosition { partition: m.partition, id, partitions: keys.partitions() };
    Ok(Announcement { event: LogEvent { position, payload }, prev })
}

/// Parses one log entry's fields (`field, value, field, value, ...`).
pub(crate) fn parse_entry(
    keys: &Keyspace,
    partition: u16,
    id: StreamId,
    fields: &[(String, String)],
) -> Result<LogEvent<ValkeyPosition>, String> {
    let get = |name: &str| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str());
    let need = |name: &str| get(name).ok_or_else(|| format!("log entry {id} has no `{name}` field"));
    let flow = get("flow_id").filter(|f| !f.is_empty()).map(FlowId::new).transpose().map_err(|e| e.to_string())?;
    let payload = CompletionPayload::new(
        ExecutionId::new(need("execution_id")?).map_err(|e| e.to_string())?,
        Namespace::new(need("namespace")?).map_err(|e| e.to_string())?,
        need("outcome")?.parse::<Outcome>().map_err(|e| e.to_string())?,
    )
    .with_flow(flow)
    .with_tags(tags_from_json(need("tags")?)?)
    .with_completed_at_ms(
        need("completed_at_ms")?.parse().map_err(|_| format!("log entry {id} has a bad `completed_at_ms`"))?,
    );
    Ok(LogEvent { position: EventPosition { partition, id, partitions: keys.partitions() }, payload })
}

/// A log entry as the server sent it: its id and its field/value pairs.
pub(crate) type RawEntry = (String, Vec<(String, String)>);

/// One partition's answer to the library's read function.
#[derive(Debug)]
pub(crate) struct RawRead {
    /// The newest id trimmed away before the read's first step.
    pub trimmed_before: String,
    /// The newest id trimmed away after the entries were read: everything up to it is gone.
    pub trimmed_to: String,
    /// `last-generated-id`: the newest id ever appended.
    pub last_generated: String,
    /// The entries, in id order.
    pub entries: Vec<RawEntry>,
    /// The server's time of the read, in microseconds.
    pub read_at_us: u64,
}

/// The reply of a library function, read by shape.
#[derive(Debug)]
pub(crate) struct FcallReply(Value);

impl FcallReply {
    /// The reply `value` of a function call.
    pub(crate) fn new(value: Value) -> Self {
        Self(value)
    }

    /// The reply as text (stream ids, codes).
    pub(crate) fn text(&self) -> Option<String> {
        self.0.as_string()
    }

    /// The reply as a list of texts.
    pub(crate) fn texts(&self) -> Option<Vec<String>> {
        match &self.0 {
            Value::Array(items) => items.iter().map(Value::as_string).collect(),
            Value::Null => Some(Vec::new()),
            _ => None,
        }
    }

    /// The reply as an integer.
    pub(crate) fn integer(&self) -> Option<i64> {
        self.0.as_i64()
    }

    /// The reply of `completions_read`, and its entries if it was asked for any.
    pub(crate) fn into_read(self) -> Result<RawRead, String> {
        let mut parts = self.0.into_array().into_iter();
        let (Some(trimmed_to), Some(last), Some(entries), Some(read_at)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the read function returned fewer than 4 parts".into());
        };
        let read_at_us = read_at
            .as_string()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("the read time is not a number: {read_at:?}"))?;
        let trimmed_to = text(trimmed_to, "trimmed_to")?;
        Ok(RawRead {
            trimmed_before: trimmed_to.clone(),
            trimmed_to,
            last_generated: text(last, "last-generated-id")?,
            entries: parse_entries(entries)?,
            read_at_us,
        })
    }
}

fn text(v: Value, what: &str) -> Result<String, String> {
    v.as_string().ok_or_else(|| format!("{what} is not text: {v:?}"))
}

/// Stream entries as `XRANGE` (or a function returning its reply) gives them:
/// `[[id, [field, value, ...]], ...]`.
pub(crate) fn parse_entries(entries: Value) -> Result<Vec<RawEntry>, String> {
    let mut out = Vec::new();
    for entry in entries.into_array() {
        let mut entry = entry.into_array().into_iter();
        let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
            return Err("a log entry is not [id, fields]".into());
        };
        let id = text(id, "an entry id")?;
        let mut pairs = Vec::new();
        let mut fields = fields.into_array().into_iter();
        while let (Some(f), Some(v)) = (fields.next(), fields.next()) {
            pairs.push((text(f, "a field name")?, v.as_str_lossy().map(|s| s.into_owned()).unwrap_or_default()));
        }
        out.push((id, pairs));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn messages_parse_and_garbage_is_refused_with_a_reason() {
        let keys = Keyspace::new("t", 4);
        let p = keys.partition_of("e-1");
        let body = format!(
            r#"{{"v":1,"partition":{p},"id":"10-1","prev":"9-0","execution_id":"e-1","namespace":"ns","outcome":"failed","tags":{{"a":"b"}},"completed_at_ms":10}}"#
        );
        let a = parse_message(body.as_bytes(), &keys).unwrap();
        assert_eq!(
            a.event.position,
            EventPosition { partition: p, id: StreamId { micros: 10, seq: 1 }, partitions: 4 }
        );
        assert_eq!(a.prev, StreamId { micros: 9, seq: 0 });
        assert_eq!(a.event.payload.outcome(), Outcome::Failed);
        assert_eq!(a.event.payload.tags().get("a").map(|v| v.as_str()), Some("b"));
        assert!(a.event.payload.flow_id().is_none());
        for garbage in [&b"hello"[..], b"{}", b"[1,2]", b"\xff\xfe", br#"{"v":1,"partition":99}"#] {
            assert!(parse_message(garbage, &keys).is_err());
        }
        let wrong_partition = body.replace(&format!("\"partition\":{p}"), &format!("\"partition\":{}", (p + 1) % 4));
        assert!(parse_message(wrong_partition.as_bytes(), &keys).unwrap_err().contains("does not belong"));
    }

    #[test]
    fn tags_round_trip_through_json() {
        let tags = Tags::from_pairs([("k", "v \"quoted\" é"), ("a", "1")]).unwrap();
        assert_eq!(tags_from_json(&tags_to_json(&tags)).unwrap(), tags);
        assert_eq!(tags_to_json(&Tags::new()), "{}");
        assert!(tags_from_json("[]").is_err());
    }

    /// A message as the library writes it, for execution `id` of `keys`.
    fn message(keys: &Keyspace, id: &str, ns: &str, ms: u64) -> String {
        let p = keys.partition_of(id);
        let body = serde_json::json!({
            "v": 4, "partition": p, "id": format!("{ms}-0"), "prev": "0-0", "execution_id": id,
            "namespace": ns, "flow_id": "", "outcome": "succeeded", "tags": {"k": "v"}, "completed_at_ms": ms / 1000,
        });
        body.to_string()
    }

    fn mutate(text: &str, at: proptest::sample::Index, how: u8, with: char) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        let i = at.index(bytes.len());
        let mut buf = [0u8; 4];
        let with = with.encode_utf8(&mut buf).as_bytes();
        match how {
            0 => {
                bytes.remove(i);
            }
            1 => {
                bytes.splice(i..=i, with.iter().copied());
            }
            2 => {
                bytes.splice(i..i, with.iter().copied());
            }
            _ => bytes.truncate(i),
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A message of any execution id and namespace parses back to what was sent.
        #[test]
        fn messages_round_trip(id in "[!-z|~]{1,64}", ns in "[a-z0-9._-]{1,32}", ms in 1..u64::MAX / 2, partitions in 1..=256u16) {
            prop_assume!(ExecutionId::new(id.clone()).is_ok() && Namespace::new(ns.clone()).is_ok());
            let keys = Keyspace::new("t", partitions);
            let a = parse_message(message(&keys, &id, &ns, ms).as_bytes(), &keys).map_err(TestCaseError::fail)?;
            prop_assert_eq!(a.event.payload.execution_id().as_str(), id.as_str());
            prop_assert_eq!(a.event.payload.namespace().as_str(), ns.as_str());
            prop_assert_eq!(a.event.position.id, StreamId { micros: ms, seq: 0 });
            prop_assert_eq!(a.event.position.partitions, partitions);
        }

        /// A mutated message (a byte dropped, changed or added, or cut short) or random bytes
        /// parse or are refused with a reason (the feed skips and counts those); never a panic.
        #[test]
        fn mutated_and_random_messages_never_panic(
            at in any::<proptest::sample::Index>(),
            how in 0..4u8,
            with in prop_oneof![Just('"'), Just('\\'), Just('{'), Just('}'), Just(','), Just('9'), any::<char>()],
            random in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let keys = Keyspace::new("t", 16);
            let good = message(&keys, "exec-1", "ns", 1_700_000_000_000_000);
            for body in [mutate(&good, at, how, with), random] {
                if let Err(reason) = parse_message(&body, &keys) {
                    prop_assert!(!reason.is_empty());
                }
            }
        }

        /// Log entries with any fields (missing, extra, garbled values) parse or are refused
        /// with a reason; never a panic.
        #[test]
        fn any_log_entry_fields_never_panic(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("execution_id".to_string()), Just("namespace".to_string()), Just("flow_id".to_string()),
                    Just("outcome".to_string()), Just("tags".to_string()), Just("completed_at_ms".to_string()),
                    ".{0,12}",
                ], prop_oneof![Just("{}".to_string()), Just("succeeded".to_string()), "[0-9]{1,22}", ".{0,40}"]),
                0..10,
            ),
            partition in any::<u16>(),
        ) {
            let keys = Keyspace::new("t", 16);
            if let Err(reason) = parse_entry(&keys, partition, StreamId { micros: 1, seq: 0 }, &fields) {
                prop_assert!(!reason.is_empty());
            }
        }
    }
}
