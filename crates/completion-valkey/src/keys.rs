//! Where things live on the server: partitions, key names and the channel.
//!
//! Layout, for a key prefix `P` and partition `p` (see `docs/valkey.md`):
//!
//! | what | name | type |
//! |---|---|---|
//! | one execution | `P:{P:p}:x:<execution id>` | hash |
//! | the partition's completion log | `P:{P:p}:log` | stream |
//! | the partition's trimming record | `P:{P:p}:meta` | hash |
//! | an execution's emit marker | `P:{P:p}:emitted:<execution id>` | hash, expires |
//! | the instance-wide settings guard | `P:config` | string |
//! | the completion channel | `P:completions` | pub/sub channel |
//! | on a cluster: the partition's channel | `P:{P:p}:completions` | sharded pub/sub channel |
//!
//! Every key of partition `p` carries the hash tag `{P:p}`, so one call only ever touches one
//! cluster slot; on a cluster the partition's sharded channel carries it too, so the call's
//! `SPUBLISH` stays in that slot's shard (a function may only publish to a channel of the
//! slot of its keys). The partition of an execution is `fnv1a64(id bytes) % partitions`: FNV-1a
//! (64 bit, offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the UTF-8 bytes
//! of the execution id. This function is part of the storage format and never changes;
//! changing the number of partitions of an existing prefix is refused at connect.
//!
//! Execution ids never hold braces (core validates them), so an id cannot move a key into
//! another slot.

/// The partition count and key names of one backend instance.
#[derive(Clone, Debug)]
pub(crate) struct Keyspace {
    prefix: String,
    partitions: u16,
}

/// FNV-1a, 64 bit. Part of the storage format: never change it.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Keyspace {
    /// `prefix` and `partitions` are validated by the config.
    pub(crate) fn new(prefix: &str, partitions: u16) -> Self {
        Self { prefix: prefix.to_string(), partitions: partitions.max(1) }
    }

    pub(crate) fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The partition that holds `execution_id`.
    pub(crate) fn partition_of(&self, execution_id: &str) -> u16 {
        (fnv1a64(execution_id.as_bytes()) % u64::from(self.partitions)) as u16
    }

    /// The hash tag of `partition`: `{P:p}`.
    pub(crate) fn hash_tag(&self, partition: u16) -> String {
        format!("{{{}:{partition}}}", self.prefix)
    }

    fn tag(&self, partition: u16) -> String {
        format!("{}:{}", self.prefix, self.hash_tag(partition))
    }

    /// The emit marker of one execution: what its first emitted completion was (outcome,
    /// log entry, write token), so that a second one is refused while it lives.
    pub(crate) fn emitted(&self, execution_id: &str) -> String {
        format!("{}:emitted:{execution_id}", self.tag(self.partition_of(execution_id)))
    }

    /// The hash of one execution.
    pub(crate) fn execution(&self, execution_id: &str) -> String {
        format!("{}:x:{execution_id}", self.tag(self.partition_of(execution_id)))
    }

    /// The completion log (stream) of `partition`.
    pub(crate) fn log(&self, partition: u16) -> String {
        format!("{}:log", self.tag(partition))
    }

    /// The partition's bookkeeping hash (`trimmed_to`: the newest id trimmed away).
    pub(crate) fn meta(&self, partition: u16) -> String {
        format!("{}:meta", self.tag(partition))
    }

    /// The key that records the partition count this prefix was created with.
    pub(crate) fn config(&self) -> String {
        format!("{}:config", self.prefix)
    }

    /// The pub/sub channel completions are announced on. Internal: never in the public API.
    pub(crate) fn channel(&self) -> String {
        format!("{}:completions", self.prefix)
    }

    /// On a cluster: the sharded channel of `partition`, in the partition's slot.
    pub(crate) fn partition_channel(&self, partition: u16) -> String {
        format!("{}:completions", self.tag(partition))
    }

    /// The channels a subscriber listens on: the one channel, or on a cluster every
    /// partition's sharded channel.
    pub(crate) fn channels(&self, sharded: bool) -> Vec<String> {
        if sharded { (0..self.partitions).map(|p| self.partition_channel(p)).collect() } else { vec![self.channel()] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite: these values are the storage format.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn keys_of_one_execution_share_one_hash_tag() {
        let ks = Keyspace::new("completions", 16);
        let p = ks.partition_of("exec-1");
        assert!(p < 16);
        assert_eq!(ks.execution("exec-1"), format!("completions:{{completions:{p}}}:x:exec-1"));
        assert_eq!(ks.log(p), format!("completions:{{completions:{p}}}:log"));
        assert_eq!(ks.emitted("exec-1"), format!("completions:{{completions:{p}}}:emitted:exec-1"));
        assert_eq!(ks.hash_tag(p), format!("{{completions:{p}}}"));
        assert_eq!(ks.channel(), "completions:completions");
        assert_eq!(ks.partition_channel(p), format!("completions:{{completions:{p}}}:completions"));
        assert_eq!(ks.channels(true).len(), 16);
        assert_eq!(ks.channels(false), ["completions:completions"]);
        assert_eq!(Keyspace::new("x", 1).partition_of("anything"), 0);
    }
}
