//! Which completions a subscription wants.

use crate::{CompletionPayload, Namespace, TagKey, TagValue};

/// Narrows a subscription to one namespace and/or one instance tag.
///
/// Matching is exact and evaluated on the event's own namespace and tags (the tags the
/// execution carried at its terminal transition). An event that lacks the tag key never
/// matches a tag filter. An empty filter ([`is_noop`](Self::is_noop)) matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ScannerFilter {
    /// Only events of this namespace.
    pub namespace: Option<Namespace>,
    /// Only events whose tags hold exactly this key with exactly this value.
    pub tag: Option<(TagKey, TagValue)>,
}

impl ScannerFilter {
    /// A filter that matches everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events of `namespace`.
    pub fn with_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = Some(namespace);
        self
    }

    /// Only events tagged `key=value`.
    pub fn with_tag(mut self, key: TagKey, value: TagValue) -> Self {
        self.tag = Some((key, value));
        self
    }

    /// Whether the filter lets every event through.
    pub fn is_noop(&self) -> bool {
        self.namespace.is_none() && self.tag.is_none()
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &CompletionPayload) -> bool {
        if let Some(ns) = &self.namespace
            && event.namespace() != ns
        {
            return false;
        }
        if let Some((key, value)) = &self.tag
            && event.tags().get(key.as_str()) != Some(value)
        {
            return false;
        }
        true
    }
}
