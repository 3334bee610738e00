//! How stream items are printed: one line per item, for people or (with `--json`) for
//! programs.
//!
//! JSON lines are objects with a `type` field:
//! - `{"type":"completion","execution_id":..,"flow_id":..|null,"namespace":..,"outcome":
//!   "succeeded"|"failed"|"cancelled","tags":{..},"completed_at_ms":..,"cursor":..}`
//! - `{"type":"gap","after":..|null,"resumed_at":..,"missed":N|null}`: events were trimmed
//!   by retention before they could be read; the stream goes on after `resumed_at`.
//!
//! Fields are only ever added, never renamed; readers should ignore fields they do not know.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use completions::{CompletionPayload, Cursor, Gap};
use serde::Serialize;

/// How lines are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One readable line per item.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Serialize)]
struct CompletionLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    payload: &'a CompletionPayload,
}

#[derive(Serialize)]
struct GapLine<'a> {
    r#type: &'static str,
    after: Option<&'a str>,
    resumed_at: &'a str,
    missed: Option<u64>,
}

/// The line of one completion (without the newline).
pub fn completion(format: Format, c: &CompletionPayload) -> String {
    match format {
        Format::Json => json(&CompletionLine { r#type: "completion", payload: c }),
        Format::Human => {
            let mut line = format!(
                "{} {:<9} {} {}",
                timestamp(c.completed_at_ms()),
                c.outcome().as_str(),
                c.namespace(),
                c.execution_id()
            );
            if let Some(flow) = c.flow_id() {
                line.push_str(&format!(" flow={flow}"));
            }
            for (key, value) in c.tags().iter() {
                line.push_str(&format!(" {key}={value}"));
            }
            line.push_str(&format!("  cursor={}", c.cursor()));
            line
        }
    }
}

/// The line of one gap (without the newline).
pub fn gap(format: Format, g: &Gap) -> String {
    gap_parts(format, g.after.as_ref(), &g.resumed_at, g.missed)
}

fn gap_parts(format: Format, after: Option<&Cursor>, resumed_at: &Cursor, missed: Option<u64>) -> String {
    match format {
        Format::Json => {
            json(&GapLine { r#type: "gap", after: after.map(Cursor::as_str), resumed_at: resumed_at.as_str(), missed })
        }
        Format::Human => {
            let missed = missed.map_or("an unknown number of".to_string(), |n| n.to_string());
            format!(
                "GAP: {missed} completions were trimmed by retention before they could be read; \
                 going on after cursor={}",
                resumed_at
            )
        }
    }
}

/// `value` as compact JSON. The values printed here always serialize; should one ever
/// fail, the line says so rather than the process panicking.
pub fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":{:?}}}", e.to_string()))
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Now, as [`timestamp`] prints it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use completions::{ExecutionId, FlowId, Namespace, Outcome, Tags};

    use super::*;

    fn payload() -> CompletionPayload {
        CompletionPayload::new(
            ExecutionId::new("flow-1/extract").unwrap(),
            Namespace::new("billing").unwrap(),
            Outcome::Failed,
        )
        .with_flow(FlowId::new("flow-1").unwrap())
        .with_tags(Tags::from_pairs([("region", "eu")]).unwrap())
        .with_completed_at_ms(1_700_000_000_123)
        .with_cursor(Cursor::new("memory", 7))
    }

    #[test]
    fn json_lines_carry_the_type_and_every_field() {
        let line: serde_json::Value = serde_json::from_str(&completion(Format::Json, &payload())).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "type": "completion", "execution_id": "flow-1/extract", "flow_id": "flow-1",
                "namespace": "billing", "outcome": "failed", "tags": {"region": "eu"},
                "completed_at_ms": 1_700_000_000_123u64, "cursor": "memory:7",
            })
        );
        let (after, resumed_at) = (Cursor::new("memory", 1), Cursor::new("memory", 5));
        let line: serde_json::Value =
            serde_json::from_str(&gap_parts(Format::Json, Some(&after), &resumed_at, Some(4))).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"type": "gap", "after": "memory:1", "resumed_at": "memory:5", "missed": 4})
        );
    }

    #[test]
    fn human_lines_read_left_to_right() {
        assert_eq!(
            completion(Format::Human, &payload()),
            "2023-11-14T22:13:20.123Z failed    billing flow-1/extract flow=flow-1 region=eu  cursor=memory:7"
        );
    }
}
