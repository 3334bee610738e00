//! Opaque, persistable positions in a backend's completion log.

use std::fmt;
use std::str::FromStr;

use crate::EngineError;

/// A position in one backend's completion log, carried by every delivered completion.
///
/// A consumer persists it (it round-trips through [`Display`](fmt::Display) and
/// [`FromStr`]) and later resumes after it with [`StartFrom::After`](crate::StartFrom).
/// Its text is `<backend>:<position>`; the position part belongs to the backend and is not
/// a stable format to parse. A cursor from another backend, or text that is not a cursor,
/// is refused with [`EngineError::InvalidInput`] when it is used, never a panic.
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "String", into = "String")
)]
pub struct Cursor(String);

impl Cursor {
    /// The longest accepted cursor text, in bytes: room for every cursor a backend of this
    /// workspace makes. The longest is a Valkey cursor of 256 partitions whose stream ids
    /// have twenty digits on both sides, 10 762 bytes (a 16-partition cursor of today's ids
    /// is about 300).
    pub const MAX_LEN: usize = 16 * 1024;

    /// Makes a cursor of `backend`'s `position`. Meant for backends.
    pub fn new(backend: &str, position: impl fmt::Display) -> Self {
        Cursor(format!("{backend}:{position}"))
    }

    /// Parses persisted cursor text (only its shape: the backend checks the rest).
    pub fn parse(text: &str) -> Result<Self, EngineError> {
        if text.len() > Self::MAX_LEN {
            return Err(EngineError::invalid("cursor", text, format!("is longer than {} bytes", Self::MAX_LEN)));
        }
        match text.split_once(':') {
            Some((backend, _))
                if !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') => {}
            _ => {
                return Err(EngineError::invalid("cursor", text, "expected `<backend>:<position>`"));
            }
        }
        if text.chars().any(char::is_control) {
            return Err(EngineError::invalid("cursor", text, "holds control characters"));
        }
        Ok(Cursor(text.to_string()))
    }

    /// The backend that made this cursor.
    pub fn backend(&self) -> &str {
        self.0.split_once(':').map_or("", |(b, _)| b)
    }

    /// The position part, if this cursor was made by `backend`; otherwise an
    /// [`EngineError::InvalidInput`] naming both backends.
    pub fn position_for(&self, backend: &str) -> Result<&str, EngineError> {
        match self.0.split_once(':') {
            Some((b, position)) if b == backend => Ok(position),
            _ => Err(EngineError::invalid(
                "cursor",
                &self.0,
                format!("was made by the `{}` backend, not by `{backend}`", self.backend()),
            )),
        }
    }

    /// The cursor text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({:?})", self.0)
    }
}

impl FromStr for Cursor {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        Cursor::parse(s)
    }
}

impl TryFrom<String> for Cursor {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, EngineError> {
        Cursor::parse(&s)
    }
}

impl From<Cursor> for String {
    fn from(c: Cursor) -> String {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trips_and_checks_the_backend() {
        let c = Cursor::new("memory", 42);
        let back: Cursor = c.to_string().parse().unwrap();
        assert_eq!(back, c);
        assert_eq!(back.position_for("memory").unwrap(), "42");
        let err = back.position_for("valkey").unwrap_err().to_string();
        assert!(err.contains("`memory`") && err.contains("`valkey`"), "{err}");
        assert!(Cursor::parse("garbage").is_err());
        assert!(Cursor::parse(":42").is_err());
        assert!(Cursor::parse("Memory:1").is_err());
        assert!(Cursor::parse("memory:\n").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any text parses or is refused with a reason naming the cursor; what parses keeps
        /// its text exactly and names its backend.
        #[test]
        fn any_text_parses_exactly_or_is_refused(text in "[a-z-]{0,8}:?.{0,64}|.{0,64}") {
            match Cursor::parse(&text) {
                Ok(cursor) => {
                    prop_assert_eq!(cursor.as_str(), text.as_str());
                    prop_assert!(text.starts_with(cursor.backend()));
                    prop_assert!(cursor.position_for(cursor.backend()).is_ok());
                }
                Err(e) => prop_assert!(e.to_string().contains("cursor"), "{}", e),
            }
        }

        /// A cursor a backend makes (a backend name and a position without control
        /// characters) comes back exactly from its text.
        #[test]
        fn made_cursors_round_trip(backend in "[a-z][a-z-]{0,15}", position in "[^\\p{Cc}]{0,200}") {
            let made = Cursor::new(&backend, &position);
            let back = Cursor::parse(&made.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.position_for(&backend).map_err(|e| TestCaseError::fail(e.to_string()))?, position.as_str());
            prop_assert_eq!(back, made);
        }
    }
}
