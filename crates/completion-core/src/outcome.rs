//! The terminal outcome of an execution.

use std::fmt;
use std::str::FromStr;

use crate::EngineError;

/// How an execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Outcome {
    /// The execution completed.
    Succeeded,
    /// The execution failed.
    Failed,
    /// The execution was cancelled.
    Cancelled,
}

impl Outcome {
    /// The wire name: `succeeded`, `failed` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "succeeded" => Ok(Outcome::Succeeded),
            "failed" => Ok(Outcome::Failed),
            "cancelled" => Ok(Outcome::Cancelled),
            _ => Err(EngineError::invalid("outcome", s, "expected succeeded, failed or cancelled")),
        }
    }
}
