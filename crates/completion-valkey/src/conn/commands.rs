//! The typed commands of the command connection: one method per command (or library
//! function call) this crate sends, each returning its reply parsed (see [`crate::wire`]).
//!
//! Contract: every keyed command goes through [`Conn::keyed`](super::Conn), so it is tried
//! again while a cluster redirects it or the server is in flux, within `command_timeout`;
//! commands aimed at one cluster node (library management, `PUBSUB SHARDNUMSUB`) are not.

use std::collections::HashMap;

use completion_core::EngineError;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use super::{Conn, Node};
use crate::position::BACKEND;
use crate::wire::{FcallReply, RawEntry, parse_entries};

/// What a server holds under the library name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InstalledLibrary {
    /// Nothing.
    Missing,
    /// This library, at this version.
    Version(i64),
    /// A library of that name that is not ours (no version function).
    Foreign(String),
}

/// The outcome of a `FUNCTION LOAD`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// Loaded.
    Done,
    /// Another process loaded a library of that name first.
    AlreadyExists,
}

/// The keys and arguments of one function call, converted once to the client's own
/// reference-counted strings: a call that is retried (redirected, or sent again after the
/// library was reloaded) clones handles, not the strings.
#[derive(Debug)]
pub(crate) struct FcallArgs {
    keys: Vec<Key>,
    args: Vec<Value>,
}

impl FcallArgs {
    pub(crate) fn new(keys: Vec<String>, args: Vec<String>) -> Self {
        Self { keys: keys.into_iter().map(Key::from).collect(), args: args.into_iter().map(Value::from).collect() }
    }
}

impl Conn {
    /// Calls a library function: `FCALL_RO` when `read_only` (so replicas may serve it),
    /// else `FCALL`.
    pub(crate) async fn fcall(
        &self,
        op: &'static str,
        function: &'static str,
        read_only: bool,
        call: &FcallArgs,
    ) -> Result<FcallReply, EngineError> {
        let value: Value = self
            .keyed(op, || {
                let (keys, args) = (call.keys.clone(), call.args.clone());
                async move {
                    if read_only {
                        self.client.fcall_ro(function, keys, args).await
                    } else {
                        self.client.fcall(function, keys, args).await
                    }
                }
            })
            .await?;
        Ok(FcallReply::new(value))
    }

    /// What the server (or cluster `node`) holds under `library`, asking its version
    /// function `version_fn`.
    pub(crate) async fn installed_library(
        &self,
        node: Option<&Node>,
        library: &'static str,
        version_fn: &'static str,
    ) -> Result<InstalledLibrary, EngineError> {
        let client = self.on(node);
        let listed: Value = client.function_list(Some(library), false).await.map_err(self.fail("FUNCTION LIST"))?;
        if listed.array_len().unwrap_or(0) == 0 && !listed.is_map() {
            return Ok(InstalledLibrary::Missing);
        }
        let version: Result<Value, Error> =
            client.fcall_ro(version_fn, Vec::<String>::new(), Vec::<String>::new()).await;
        match version {
            Ok(v) => match v.as_i64() {
                Some(n) => Ok(InstalledLibrary::Version(n)),
                None => Ok(InstalledLibrary::Foreign(format!("{version_fn} returned {v:?}"))),
            },
            Err(e) if super::errors::says_function_missing(e.details()) => {
                Ok(InstalledLibrary::Foreign(format!("it has no {version_fn} function")))
            }
            Err(e) => Err(self.fail("FCALL_RO")(e)),
        }
    }

    /// `FUNCTION LOAD [REPLACE] code` on the server (or cluster `node`).
    pub(crate) async fn function_load(
        &self,
        node: Option<&Node>,
        code: &str,
        replace: bool,
    ) -> Result<Loaded, EngineError> {
        let result: Result<Value, Error> = self.on(node).function_load(replace, code).await;
        match result {
            Ok(_) => Ok(Loaded::Done),
            Err(e) if super::errors::says_library_exists(e.details()) => Ok(Loaded::AlreadyExists),
            Err(e) => Err(self.fail("FUNCTION LOAD")(e)),
        }
    }

    /// `SET key value NX GET`: stores `value` unless the key exists; returns the old value.
    pub(crate) async fn set_nx_get(&self, key: &str, value: &str) -> Result<Option<String>, EngineError> {
        let reply: Value = self
            .keyed("SET NX GET", || {
                let command = CustomCommand::new_static("SET", ClusterHash::FirstKey, false);
                self.client.custom(command, vec![key.to_string(), value.to_string(), "NX".into(), "GET".into()])
            })
            .await?;
        Ok(reply.as_string())
    }

    /// `HGETALL key` (empty when the key does not exist).
    pub(crate) async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, EngineError> {
        self.keyed("HGETALL", || self.client.hgetall(key)).await
    }

    /// `XRANGE key (after + COUNT count`: up to `count` entries after `after` (exclusive).
    /// A plain command, not the library's read function: its reply goes out as the server
    /// built it, where a function's would be converted to Lua tables and back, several times
    /// the server time of the read (docs/benchmarks.md, "What the figures show").
    pub(crate) async fn xrange_after(
        &self,
        key: &str,
        after: &str,
        count: usize,
    ) -> Result<Vec<RawEntry>, EngineError> {
        let start = format!("({after}");
        let reply: Value =
            self.keyed("read log", || self.client.xrange(key, start.as_str(), "+", Some(count as u64))).await?;
        parse_entries(reply).map_err(|message| EngineError::server(BACKEND, "read log", message))
    }

    /// `XLEN key`, and the ids of its first and last entries (`XRANGE key - + COUNT 1`,
    /// `XREVRANGE key + - COUNT 1`); zero and `None` for a missing key.
    pub(crate) async fn stream_extent(&self, key: &str) -> Result<(u64, Option<String>, Option<String>), EngineError> {
        let length: u64 = self.keyed("XLEN", || self.client.xlen(key)).await?;
        let first: Value = self.keyed("XRANGE", || self.client.xrange(key, "-", "+", Some(1))).await?;
        let last: Value = self.keyed("XREVRANGE", || self.client.xrevrange(key, "+", "-", Some(1))).await?;
        let id = |reply: Value| -> Result<Option<String>, EngineError> {
            let entries = parse_entries(reply).map_err(|message| EngineError::server(BACKEND, "XRANGE", message))?;
            Ok(entries.into_iter().next().map(|(id, _)| id))
        };
        Ok((length, id(first)?, id(last)?))
    }

    /// Subscribers of each of `channels`: `PUBSUB NUMSUB`, or (`sharded`, on a cluster)
    /// `PUBSUB SHARDNUMSUB` on every primary, added up.
    pub(crate) async fn subscribers(&self, channels: &[String], sharded: bool) -> Result<Vec<u64>, EngineError> {
        let counts = |reply: Value| -> Vec<u64> {
            // [channel, count, channel, count, ...] (RESP2) or a map (RESP3).
            let values: Vec<Value> = match reply {
                Value::Array(v) => v,
                Value::Map(m) => m.inner().into_iter().flat_map(|(k, v)| [Value::from(k), v]).collect(),
                _ => Vec::new(),
            };
            values.into_iter().skip(1).step_by(2).map(|v| v.as_u64().unwrap_or(0)).collect()
        };
        if !sharded {
            let reply: Value = self
                .keyed("PUBSUB NUMSUB", || {
                    let command = CustomCommand::new_static("PUBSUB", ClusterHash::Random, false);
                    let mut args = vec!["NUMSUB".to_string()];
                    args.extend(channels.iter().cloned());
                    self.client.custom(command, args)
                })
                .await?;
            return Ok(counts(reply));
        }
        // A channel's subscribers are on the primary of its slot; asking every primary and
        // adding up does not depend on the client's routing of a keyless command.
        let mut all = vec![0u64; channels.len()];
        for node in self.library_nodes() {
            let mut args = vec!["SHARDNUMSUB".to_string()];
            args.extend(channels.iter().cloned());
            let command = CustomCommand::new_static("PUBSUB", ClusterHash::Random, false);
            let reply: Value =
                self.on(node.as_ref()).custom(command, args).await.map_err(self.fail("PUBSUB SHARDNUMSUB"))?;
            for (total, n) in all.iter_mut().zip(counts(reply)) {
                *total += n;
            }
        }
        Ok(all)
    }

    /// `HGET key field`.
    pub(crate) async fn hget(&self, op: &'static str, key: &str, field: &str) -> Result<Option<String>, EngineError> {
        self.keyed(op, || self.client.hget(key, field)).await
    }

    /// Notices of cluster topology changes this client saw (slots moved, nodes added or
    /// removed: fred learns them from `MOVED` replies and reconnects).
    pub(crate) fn cluster_changes(&self) -> tokio::sync::broadcast::Receiver<Vec<fred::types::ClusterStateChange>> {
        self.client.cluster_change_rx()
    }
}
