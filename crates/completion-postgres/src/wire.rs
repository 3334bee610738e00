//! The text formats between this crate and its stored functions: tags as JSON (written into
//! `executions` and the log, and as the log read's tag filter), and the NOTIFY payload.
//!
//! The NOTIFY payload of a terminal write (schema version 4) is a transaction's first event,
//! as JSON, so that the feed can deliver it without reading the log first.
//!
//! `finish_execution` sends `{"v":1,"t":<ticket>,"e":<execution id>,"n":<namespace>,
//! "f":<flow id or null>,"o":<outcome>,"g":<tags>,"c":<completed_at_ms>}` for the first event
//! of its transaction when it fits the 8000-byte limit, an empty payload otherwise (later
//! events of the transaction, a payload too large). An empty payload is a plain wake-up.
//!
//! When the feed may deliver an event straight from its notification: when its ticket is
//! the one right after the feed's position. Tickets are unique and the feed's position says
//! that every ticket up to it was delivered or filtered out; a notification is sent at
//! commit, so the event is committed; so nothing can still appear before it. Anything else
//! (a ticket further on: a ticket left unused by a rollback, a writer that skipped its NOTIFY,
//! an event not read yet; a ticket already covered; an empty or malformed payload) is left to
//! the log read that every wake-up makes anyway. That read also covers what a notification
//! cannot announce: writes whose NOTIFY was coalesced, later events of a transaction.

use std::collections::BTreeMap;

use completion_core::hub::LogEvent;
use completion_core::{
    CompletionPayload, EngineError, ExecutionId, FlowId, Namespace, Outcome, TagKey, TagValue, Tags,
};
use serde::Deserialize;

use crate::position::PgPosition;

/// `tags` as a JSON object of strings, keys in order (what the stored functions take).
pub(crate) fn tags_json(tags: &Tags) -> String {
    // A map of strings always serializes.
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".into())
}

/// Tags from the JSON object the log or `executions` holds.
pub(crate) fn parse_tags(json: &str) -> Result<Tags, EngineError> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| EngineError::invalid("tags", json, e.to_string()))?;
    Tags::from_pairs(map)
}

/// The JSON object `{key: value}` a log read's tag filter matches with `@>`.
pub(crate) fn tag_filter_json(key: &TagKey, value: &TagValue) -> String {
    let mut one = BTreeMap::new();
    one.insert(key.as_str(), value.as_str());
    serde_json::to_string(&one).unwrap_or_default()
}

/// The payload version this build reads.
const VERSION: u64 = 1;

#[derive(Deserialize)]
struct Payload {
    v: u64,
    t: i64,
    e: String,
    n: String,
    #[serde(default)]
    f: Option<String>,
    o: String,
    #[serde(default)]
    g: BTreeMap<String, String>,
    c: i64,
}

/// The event a payload carries; `Ok(None)` for an empty payload (a plain wake-up), `Err`
/// with the reason for one that is not a valid event.
pub(crate) fn parse(payload: &str) -> Result<Option<LogEvent<PgPosition>>, String> {
    use completion_core::hub::Position;

    if payload.is_empty() {
        return Ok(None);
    }
    let p: Payload = serde_json::from_str(payload).map_err(|e| format!("not a completion payload: {e}"))?;
    if p.v != VERSION {
        return Err(format!("payload version {} is not {VERSION}", p.v));
    }
    if p.t < 1 {
        return Err(format!("ticket {} is not positive", p.t));
    }
    let position = PgPosition::at(p.t);
    let payload = CompletionPayload::new(
        ExecutionId::new(p.e).map_err(|e| e.to_string())?,
        Namespace::new(p.n).map_err(|e| e.to_string())?,
        p.o.parse::<Outcome>().map_err(|e| e.to_string())?,
    )
    .with_flow(p.f.map(FlowId::new).transpose().map_err(|e| e.to_string())?)
    .with_tags(Tags::from_pairs(p.g).map_err(|e| e.to_string())?)
    .with_completed_at_ms(p.c.max(0) as u64)
    .with_cursor(position.to_cursor());
    Ok(Some(LogEvent { position, payload }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GOOD: &str = r#"{"v":1,"t":42,"e":"exec-1","n":"ns","f":null,"o":"failed","g":{"k":"v"},"c":1700000000000}"#;

    #[test]
    fn tags_are_a_json_object_in_key_order_both_ways() {
        let tags = Tags::from_pairs([("zone", "eu"), ("a", "x\"y")]).unwrap();
        let json = tags_json(&tags);
        assert_eq!(json, r#"{"a":"x\"y","zone":"eu"}"#);
        assert_eq!(parse_tags(&json).unwrap(), tags);
        assert_eq!(tags_json(&Tags::new()), "{}");
        assert!(parse_tags("[1]").unwrap_err().to_string().contains("tags"));
    }

    #[test]
    fn payloads_parse_and_garbage_is_refused_with_a_reason() {
        let event = parse(GOOD).unwrap().expect("an event");
        assert_eq!(event.position, PgPosition::at(42));
        assert_eq!(event.payload.execution_id().as_str(), "exec-1");
        assert_eq!(event.payload.outcome(), Outcome::Failed);
        assert_eq!(event.payload.tags().get("k").map(|v| v.as_str()), Some("v"));
        assert_eq!(event.payload.cursor().as_str(), "postgres:42");
        assert!(parse("").unwrap().is_none());
        for garbage in ["x", "{}", "[1]", r#"{"v":2,"t":1}"#, &GOOD.replace("42", "0"), &GOOD.replace("failed", "odd")]
        {
            assert!(parse(garbage).is_err(), "{garbage}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Mutated payloads (a byte dropped, changed or added, or cut short) and random text
        /// parse or are refused with a reason; never a panic.
        #[test]
        fn mutated_and_random_payloads_never_panic(
            at in any::<proptest::sample::Index>(),
            how in 0..4u8,
            with in any::<char>(),
            random in ".{0,200}",
        ) {
            let mut chars: Vec<char> = GOOD.chars().collect();
            let i = at.index(chars.len());
            match how {
                0 => { chars.remove(i); }
                1 => chars[i] = with,
                2 => chars.insert(i, with),
                _ => chars.truncate(i),
            }
            let mutated: String = chars.into_iter().collect();
            for text in [mutated, random] {
                if let Err(reason) = parse(&text) {
                    prop_assert!(!reason.is_empty());
                }
            }
        }
    }
}
