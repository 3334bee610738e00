//! Validated value types: execution and flow ids, namespaces, instance tags and reasons.
//!
//! Every value is checked once, at construction, so that backends can splice it into a
//! Valkey key, a stream field or a SQL parameter without re-checking. The limits:
//!
//! | type | bytes | characters |
//! |---|---|---|
//! | [`ExecutionId`], [`FlowId`] | 1 to 128 | visible ASCII (`!` to `~`) except `{` and `}` |
//! | [`Namespace`] | 1 to 64 | visible ASCII except `{` and `}` |
//! | [`TagKey`] | 1 to 64 | visible ASCII except `{`, `}` and `=` |
//! | [`TagValue`] | 1 to 256 | any UTF-8 except control characters, `{` and `}` |
//! | [`Tags`] | at most 16 pairs | keys unique |
//! | [`Reason`] | 0 to 1024 | any UTF-8 except control characters other than `\n` and `\t` |
//!
//! Braces are refused everywhere because a Valkey key's hash tag is the text between the
//! first `{` and the next `}`: an id holding a brace could move a key into another cluster
//! slot. `=` is refused in tag keys because tags are written `key=value` on command lines.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::EngineError;

/// Which characters a value may hold.
#[derive(Clone, Copy)]
enum Charset {
    /// Visible ASCII without braces (and without the extra forbidden characters).
    Identifier(&'static [char]),
    /// Any UTF-8 without control characters and braces.
    Text,
}

fn validate(what: &'static str, value: &str, min: usize, max: usize, charset: Charset) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::invalid(what, value, reason);
    if value.len() < min {
        return Err(invalid(if min == 1 {
            "must not be empty".into()
        } else {
            format!("must be at least {min} bytes")
        }));
    }
    if value.len() > max {
        return Err(invalid(format!("is {} bytes long, the limit is {max}", value.len())));
    }
    for (at, c) in value.char_indices() {
        let ok = match charset {
            Charset::Identifier(extra) => c.is_ascii_graphic() && c != '{' && c != '}' && !extra.contains(&c),
            Charset::Text => !c.is_control() && c != '{' && c != '}',
        };
        if !ok {
            return Err(invalid(format!("character {c:?} at byte {at} is not allowed")));
        }
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $charset:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(try_from = "String", into = "String"))]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value`; see the [module docs](self) for the rules.
            pub fn new(value: impl Into<String>) -> Result<Self, EngineError> {
                let value = value.into();
                validate($what, &value, 1, $max, $charset)?;
                Ok(Self(value))
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = EngineError;
            fn from_str(s: &str) -> Result<Self, EngineError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = EngineError;
            fn try_from(s: String) -> Result<Self, EngineError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = EngineError;
            fn try_from(s: &str) -> Result<Self, EngineError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The id of one execution (a task run), chosen by the engine. Unique per backend.
    ExecutionId, "execution id", 128, Charset::Identifier(&[])
);
string_id!(
    /// The id of the flow (DAG run) an execution belongs to, if any.
    FlowId, "flow id", 128, Charset::Identifier(&[])
);
string_id!(
    /// A tenant or queue namespace; filters match it exactly.
    Namespace, "namespace", 64, Charset::Identifier(&[])
);
string_id!(
    /// The key of an instance tag.
    TagKey, "tag key", 64, Charset::Identifier(&['='])
);
string_id!(
    /// The value of an instance tag.
    TagValue, "tag value", 256, Charset::Text
);

/// The instance tags of an execution: at most [`Tags::MAX_TAGS`] key/value pairs, keys unique,
/// iterated in key order.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "BTreeMap<TagKey, TagValue>")
)]
pub struct Tags(BTreeMap<TagKey, TagValue>);

impl Tags {
    /// The most tags one execution may carry.
    pub const MAX_TAGS: usize = 16;

    /// No tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds tags from pairs, validating every key and value and the count. A repeated key
    /// is an error, not a silent overwrite.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, EngineError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut tags = Self::new();
        for (k, v) in pairs {
            let key = TagKey::new(k.as_ref())?;
            if tags.0.contains_key(&key) {
                return Err(EngineError::invalid("tag key", key.as_str(), "appears more than once"));
            }
            tags.insert(key, TagValue::new(v.as_ref())?)?;
        }
        Ok(tags)
    }

    /// Sets `key` to `value`; fails when this would make more than [`Tags::MAX_TAGS`] tags.
    pub fn insert(&mut self, key: TagKey, value: TagValue) -> Result<(), EngineError> {
        if !self.0.contains_key(&key) && self.0.len() >= Self::MAX_TAGS {
            return Err(EngineError::invalid(
                "tags",
                key.as_str(),
                format!("adding this key makes more than {} tags", Self::MAX_TAGS),
            ));
        }
        self.0.insert(key, value);
        Ok(())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&TagValue> {
        self.0.iter().find_map(|(k, v)| (k.as_str() == key).then_some(v))
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&TagKey, &TagValue)> {
        self.0.iter()
    }

    /// How many tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<TagKey, TagValue>> for Tags {
    type Error = EngineError;
    fn try_from(map: BTreeMap<TagKey, TagValue>) -> Result<Self, EngineError> {
        if map.len() > Self::MAX_TAGS {
            return Err(EngineError::invalid(
                "tags",
                format!("{} tags", map.len()),
                format!("at most {} are allowed", Self::MAX_TAGS),
            ));
        }
        Ok(Self(map))
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))).finish()
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a TagKey, &'a TagValue);
    type IntoIter = std::collections::btree_map::Iter<'a, TagKey, TagValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Why an execution failed or was cancelled: free text up to [`Reason::MAX_LEN`] bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "String", into = "String")
)]
pub struct Reason(String);

impl Reason {
    /// The longest accepted reason, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Validates `value`: at most 1024 bytes, no control characters but `\n` and `\t`.
    pub fn new(value: impl Into<String>) -> Result<Self, EngineError> {
        let value = value.into();
        if value.len() > Self::MAX_LEN {
            return Err(EngineError::invalid(
                "reason",
                &value,
                format!("is {} bytes long, the limit is {}", value.len(), Self::MAX_LEN),
            ));
        }
        if let Some((at, c)) = value.char_indices().find(|&(_, c)| c.is_control() && c != '\n' && c != '\t') {
            return Err(EngineError::invalid("reason", &value, format!("character {c:?} at byte {at} is not allowed")));
        }
        Ok(Self(value))
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Reason {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, EngineError> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Reason {
    type Error = EngineError;
    fn try_from(s: &str) -> Result<Self, EngineError> {
        Self::new(s)
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_values_with_the_value_and_the_reason() {
        let err = ExecutionId::new("").unwrap_err().to_string();
        assert!(err.contains("execution id") && err.contains("must not be empty"), "{err}");
        let err = Namespace::new("a{b}").unwrap_err().to_string();
        assert!(err.contains("\"a{b}\"") && err.contains("'{'"), "{err}");
        let err = Namespace::new("x".repeat(65)).unwrap_err().to_string();
        assert!(err.contains("65 bytes") && err.contains("64"), "{err}");
        assert!(ExecutionId::new("with space").is_err());
        assert!(ExecutionId::new("tab\there").is_err());
        assert!(TagKey::new("a=b").is_err());
        assert!(TagValue::new("line\nbreak").is_err());
        assert!(TagValue::new("").is_err());
        assert!(Namespace::new("x".repeat(64)).is_ok());
        assert_eq!(ExecutionId::new("exec-1:a/b").unwrap().as_str(), "exec-1:a/b");
        assert!(TagValue::new("any text, même accentuée").is_ok());
    }

    #[test]
    fn tags_enforce_count_and_unique_keys() {
        let many: Vec<_> = (0..17).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let err = Tags::from_pairs(many.clone()).unwrap_err().to_string();
        assert!(err.contains("16"), "{err}");
        assert_eq!(Tags::from_pairs(many[..16].to_vec()).unwrap().len(), 16);
        assert!(Tags::from_pairs([("a", "1"), ("a", "2")]).unwrap_err().to_string().contains("more than once"));
        let tags = Tags::from_pairs([("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(tags.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(tags.get("a").map(TagValue::as_str), Some("1"));
        assert!(tags.get("c").is_none());
    }

    #[test]
    fn reasons_allow_newlines_but_not_other_controls() {
        assert!(Reason::new("line one\nline two\tindented").is_ok());
        assert!(Reason::new("").is_ok());
        assert!(Reason::new("nul\0").is_err());
        assert!(Reason::new("x".repeat(1025)).is_err());
    }
}
