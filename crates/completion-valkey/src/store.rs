//! The server-side operations of one backend instance except log reads ([`crate::log`]):
//! writes (create, terminal, emit), lookups (describe, emit markers) and trimming to
//! retention, all through the function library, each call touching one partition.
//!
//! Every library call that finds the library gone (a server restarted without persistence
//! answers "Function not found") reloads it and retries once.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use completion_core::hub::{Counters, Periodic};
use completion_core::{
    Completion, EngineError, ExecutionId, ExecutionInfo, ExecutionState, FlowId, Namespace, NewExecution, Outcome,
    Reason,
};

use crate::config::ValkeyConfig;
use crate::conn::Conn;
use crate::conn::commands::FcallArgs;
use crate::keys::Keyspace;
use crate::library::function;
use crate::library::{self, LibraryChange};
use crate::position::{BACKEND, StreamId};
use crate::stats::Stats;
use crate::wire::{self, FcallReply};

/// Error codes the library answers with (first word of the error reply).
const NOT_FOUND: &str = "COMPLETIONS_NOT_FOUND";
const EXISTS: &str = "COMPLETIONS_EXISTS";
const TERMINAL: &str = "COMPLETIONS_TERMINAL";
const EMITTED: &str = "COMPLETIONS_EMITTED";

/// One instance's connection, key layout and settings.
pub(crate) struct Store {
    pub conn: Conn,
    pub keys: Keyspace,
    pub config: Arc<ValkeyConfig>,
    pub stats: Arc<Stats>,
    pub counters: Arc<Counters>,
    /// Makes write tokens unique within this connection.
    next_token: AtomicU64,
}

impl Store {
    pub(crate) fn new(conn: Conn, config: Arc<ValkeyConfig>, stats: Arc<Stats>, counters: Arc<Counters>) -> Self {
        let keys = Keyspace::new(&config.key_prefix, config.partitions);
        Self { conn, keys, config, stats, counters, next_token: AtomicU64::new(0) }
    }

    /// Loads the library if needed (returns what that did), and checks the partition count
    /// of the prefix.
    pub(crate) async fn prepare(&self) -> Result<LibraryChange, EngineError> {
        let ensured = self.ensure_library().await?;
        let partitions = self.keys.partitions().to_string();
        let key = self.keys.config();
        let recorded = format!("partitions={partitions}");
        match self.conn.set_nx_get(&key, &recorded).await? {
            None => Ok(ensured),
            Some(found) if found == recorded => Ok(ensured),
            Some(found) => Err(EngineError::Incompatible {
                backend: BACKEND,
                reason: format!(
                    "key prefix `{}` was created with `{found}` (key {key}), this backend is configured with \
                     {partitions} partitions",
                    self.config.key_prefix
                ),
            }),
        }
    }

    pub(crate) async fn ensure_library(&self) -> Result<LibraryChange, EngineError> {
        let ensured = library::ensure(&self.conn).await?;
        if ensured != LibraryChange::Present {
            self.stats.library_loads.bump();
        }
        Ok(ensured)
    }

    /// Calls `function`; when the library is gone, reloads it and calls once more.
    /// (Redirections and a cluster in flux are retried by the connection, see
    /// [`Conn`].)
    pub(crate) async fn call(
        &self,
        op: &'static str,
        function: &'static str,
        read_only: bool,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<FcallReply, EngineError> {
        let call = FcallArgs::new(keys, args);
        let once = || self.conn.fcall(op, function, read_only, &call);
        match once().await {
            Err(e) if library::is_missing_function(&e) => {
                tracing::warn!(backend = BACKEND, function, "the server lost the function library; reloading it");
                self.ensure_library().await?;
                once().await
            }
            other => other,
        }
    }

    /// A token no other write of any process uses, so a retried write recognises itself.
    fn token(&self) -> String {
        format!("{}:{}:{}", std::process::id(), self.conn.name(), self.next_token.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) async fn create(&self, execution: &NewExecution) -> Result<(), EngineError> {
        let id = execution.id.as_str();
        let args = vec![
            execution.namespace.as_str().to_string(),
            execution.flow_id.as_ref().map_or(String::new(), |f| f.as_str().to_string()),
            wire::tags_to_json(&execution.tags),
            self.token(),
        ];
        match self.call("create_execution", function::CREATE, false, vec![self.keys.execution(id)], args).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(EXISTS) => Err(EngineError::AlreadyExists(execution.id.clone())),
            Err(e) => Err(e),
        }
    }

    /// Marks `id` terminal, appends its completion to the log and publishes it. Returns the
    /// log entry id.
    pub(crate) async fn terminal(
        &self,
        id: &ExecutionId,
        outcome: Outcome,
        reason: Option<&Reason>,
    ) -> Result<String, EngineError> {
        let partition = self.keys.partition_of(id.as_str());
        let keys = vec![self.keys.execution(id.as_str()), self.keys.log(partition), self.keys.meta(partition)];
        let sharded = self.conn.is_cluster();
        let mut args = vec![
            id.as_str().to_string(),
            outcome.as_str().to_string(),
            reason.map_or(String::new(), |r| r.as_str().to_string()),
            self.token(),
            partition.to_string(),
            if sharded { self.keys.partition_channel(partition) } else { self.keys.channel() },
            // Each partition keeps up to the whole count: the newest `max_events` overall may
            // all sit in one partition. `trim_all` cuts to exactly `max_events` overall.
            self.config.subscription.retention.max_events.map_or(String::new(), |n| n.to_string()),
            self.max_age_ms(),
        ];
        if sharded {
            args.push("sharded".to_string());
        }
        match self.call("terminal write", function::TERMINAL, false, keys, args).await {
            Ok(reply) => Ok(reply.text().unwrap_or_default()),
            Err(e) => Err(match e.code() {
                Some(NOT_FOUND) => EngineError::NotFound(id.clone()),
                Some(TERMINAL) => match terminal_outcome(&e) {
                    Some(first) => EngineError::AlreadyTerminal { execution_id: id.clone(), outcome: first },
                    None => e,
                },
                _ => e,
            }),
        }
    }

    /// The keys and arguments of the emit step for `completion` (see `lua/emit.lua`), with a
    /// fresh write token: `repeat` appends even when the execution already has a completion.
    pub(crate) fn emit_call(&self, completion: &Completion, repeat: bool) -> (Vec<String>, Vec<String>) {
        let id = completion.execution_id.as_str();
        let partition = self.keys.partition_of(id);
        let keys = vec![self.keys.log(partition), self.keys.meta(partition), self.keys.emitted(id)];
        let sharded = self.conn.is_cluster();
        let args = vec![
            id.to_string(),
            completion.namespace.as_str().to_string(),
            completion.flow_id.as_ref().map_or(String::new(), |f| f.as_str().to_string()),
            completion.outcome.as_str().to_string(),
            wire::tags_to_json(&completion.tags),
            completion.reason.as_ref().map_or(String::new(), |r| r.as_str().to_string()),
            self.token(),
            partition.to_string(),
            self.keys.partitions().to_string(),
            if sharded { self.keys.partition_channel(partition) } else { self.keys.channel() },
            if sharded { "sharded" } else { "plain" }.to_string(),
            // As for terminal writes: each partition keeps up to the whole count.
            self.config.subscription.retention.max_events.map_or(String::new(), |n| n.to_string()),
            self.max_age_ms(),
            self.config.emit_marker_ttl.map_or(String::new(), |ttl| ttl.as_millis().max(1).to_string()),
            if repeat { "repeat" } else { "once" }.to_string(),
        ];
        (keys, args)
    }

    /// Emits `completion` through the library's `completions_emit`. Returns the log entry id.
    pub(crate) async fn emit(&self, completion: &Completion, repeat: bool) -> Result<String, EngineError> {
        let (keys, args) = self.emit_call(completion, repeat);
        match self.call("emit", function::EMIT, false, keys, args).await {
            Ok(reply) => Ok(reply.text().unwrap_or_default()),
            Err(e) => Err(match (e.code(), terminal_outcome(&e)) {
                (Some(EMITTED), Some(first)) => {
                    EngineError::AlreadyTerminal { execution_id: completion.execution_id.clone(), outcome: first }
                }
                _ => e,
            }),
        }
    }

    fn max_age_ms(&self) -> String {
        self.config.subscription.retention.max_age().map_or(String::new(), |age| age.as_millis().to_string())
    }

    /// What the emit marker of `id` records of its first emitted completion (outcome and
    /// time), while the marker lives.
    pub(crate) async fn emitted(&self, id: &ExecutionId) -> Result<Option<(Outcome, u64)>, EngineError> {
        let fields = self.conn.hgetall(&self.keys.emitted(id.as_str())).await?;
        let (Some(outcome), Some(at)) = (fields.get("outcome"), fields.get("emitted_at_ms")) else { return Ok(None) };
        let bad = |what: &str| {
            EngineError::server(
                BACKEND,
                "look up an emitted completion",
                format!("the emit marker of {id} holds a bad {what}"),
            )
        };
        let outcome: Outcome = outcome.parse().map_err(|_| bad("outcome"))?;
        Ok(Some((outcome, at.parse().map_err(|_| bad("emitted_at_ms"))?)))
    }

    pub(crate) async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        let fields = self.conn.hgetall(&self.keys.execution(id.as_str())).await?;
        if fields.is_empty() {
            return Err(EngineError::NotFound(id.clone()));
        }
        parse_info(id, &fields).map_err(|reason| {
            EngineError::server(
                BACKEND,
                "describe",
                format!("execution {id} is stored in a shape this build does not read: {reason}"),
            )
        })
    }

    /// Trims the log to retention every `every` ([`Self::trim_all`]), until the returned
    /// task is dropped.
    pub(crate) fn trim_periodically(self: Arc<Self>, every: Duration) -> Periodic {
        let span = tracing::info_span!("valkey_retention", prefix = %self.config.key_prefix);
        Periodic::spawn(every, span, move || {
            let store = self.clone();
            async move {
                match store.trim_all().await {
                    Ok(removed) => tracing::debug!(removed, "log trimmed to retention"),
                    Err(error) => tracing::warn!(%error, "trimming the log to retention failed; retrying later"),
                }
            }
        })
    }

    /// Trims every partition's log to retention, exactly: keeps the newest `max_events`
    /// entries over all partitions, and none older than `max_age`. Returns how many
    /// entries went.
    pub(crate) async fn trim_all(&self) -> Result<u64, EngineError> {
        let minid = match self.config.subscription.retention.max_events {
            Some(n) => self.count_cutoff(n).await?.map_or(String::new(), |id| id.to_string()),
            None => String::new(),
        };
        let maxage = self.max_age_ms();
        if minid.is_empty() && maxage.is_empty() {
            return Ok(0);
        }
        let calls = (0..self.keys.partitions()).map(|p| {
            let args = vec![minid.clone(), maxage.clone()];
            self.call("trim log", function::TRIM, false, vec![self.keys.log(p), self.keys.meta(p)], args)
        });
        let mut removed = 0;
        for reply in futures_util::future::join_all(calls).await {
            removed += reply?.integer().unwrap_or(0).max(0) as u64;
        }
        Ok(removed)
    }

    /// The id of the `n`-th newest entry over all partitions (`None`: there are fewer): a
    /// merge of the partitions' ids, newest first, fetched a page at a time.
    async fn count_cutoff(&self, n: u64) -> Result<Option<StreamId>, EngineError> {
        let partitions = self.keys.partitions();
        let page = (n / u64::from(partitions) + 1).clamp(16, 1000) as usize;
        let mut pages: Vec<VecDeque<StreamId>> = vec![VecDeque::new(); usize::from(partitions)];
        let mut exhausted = vec![false; usize::from(partitions)];
        let mut last: Vec<Option<StreamId>> = vec![None; usize::from(partitions)];
        let mut heads = BinaryHeap::new();
        for p in 0..partitions {
            self.fetch_ids(p, page, &mut pages, &mut exhausted, &mut last).await?;
            if let Some(id) = pages[usize::from(p)].front() {
                heads.push((*id, p));
            }
        }
        let mut counted = 0;
        while let Some((id, p)) = heads.pop() {
            counted += 1;
            if counted == n {
                return Ok(Some(id));
            }
            let at = usize::from(p);
            pages[at].pop_front();
            if pages[at].is_empty() && !exhausted[at] {
                self.fetch_ids(p, page, &mut pages, &mut exhausted, &mut last).await?;
            }
            if let Some(next) = pages[at].front() {
                heads.push((*next, p));
            }
        }
        Ok(None)
    }

    async fn fetch_ids(
        &self,
        p: u16,
        page: usize,
        pages: &mut [VecDeque<StreamId>],
        exhausted: &mut [bool],
        last: &mut [Option<StreamId>],
    ) -> Result<(), EngineError> {
        let at = usize::from(p);
        let before = last[at].map_or("+".to_string(), |id| id.to_string());
        let reply =
            self.call("trim log", function::IDS, true, vec![self.keys.log(p)], vec![before, page.to_string()]).await?;
        let ids = reply
            .texts()
            .ok_or_else(|| EngineError::server(BACKEND, "trim log", "the ids function did not return a list of ids"))?;
        exhausted[at] = ids.len() < page;
        for text in ids {
            let id: StreamId =
                text.parse().map_err(|message: String| EngineError::server(BACKEND, "trim log", message))?;
            pages[at].push_back(id);
            last[at] = Some(id);
        }
        Ok(())
    }
}

/// The outcome a `COMPLETIONS_TERMINAL` / `COMPLETIONS_EMITTED` reply carries. The reply's
/// code says what happened (the execution already finished); its message is not prose but
/// data the library writes for this: the outcome the execution finished with
/// (`lua/completions.lua`).
fn terminal_outcome(error: &EngineError) -> Option<Outcome> {
    match error {
        EngineError::Server { message, .. } => message.split_whitespace().next()?.parse().ok(),
        _ => None,
    }
}

fn parse_info(id: &ExecutionId, fields: &HashMap<String, String>) -> Result<ExecutionInfo, String> {
    let get = |name: &str| fields.get(name).map(String::as_str).ok_or_else(|| format!("no `{name}` field"));
    let number = |name: &str| -> Result<Option<u64>, String> {
        match get(name)? {
            "" => Ok(None),
            n => n.parse().map(Some).map_err(|_| format!("`{name}` is not a number")),
        }
    };
    let state = match get("state")? {
        "active" => ExecutionState::Active,
        other => ExecutionState::Terminal(other.parse().map_err(|e: EngineError| e.to_string())?),
    };
    let reason = match (state, get("reason")?) {
        (ExecutionState::Terminal(Outcome::Failed | Outcome::Cancelled), text) => {
            Some(Reason::new(text).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let flow_id = match get("flow_id")? {
        "" => None,
        f => Some(FlowId::new(f).map_err(|e| e.to_string())?),
    };
    Ok(ExecutionInfo::new(id.clone(), Namespace::new(get("namespace")?).map_err(|e| e.to_string())?, state)
        .with_flow(flow_id)
        .with_tags(wire::tags_from_json(get("tags")?)?)
        .with_reason(reason)
        .with_created_at_ms(number("created_at_ms")?.ok_or("`created_at_ms` is empty")?)
        .with_completed_at_ms(number("completed_at_ms")?))
}
