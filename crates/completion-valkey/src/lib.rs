//! The Valkey / Redis completion backend (Valkey 7.2+ or Redis 7.0+, standalone or cluster).
//!
//! Writes go through a server-side function library (`lua/completions.lua`, loaded on
//! connect): a terminal write checks the execution, marks it terminal, appends the event to
//! its partition's log (a stream, trimmed to the configured retention) and PUBLISHes it, in
//! one atomic call. Subscriptions share one subscriber connection per backend instance and
//! the shared [`hub`](completion_core::hub): they are live when `subscribe` returns, catch up
//! from the log after any reconnect, lost message or overflow, and never deliver an event
//! twice. See `docs/valkey.md` for the key layout and wire format.
//!
//! An engine that keeps its executions' state itself emits their completions instead:
//! [`ValkeyBackend::emit`] (the library's `completions_emit`), or, to change its own keys in
//! the same atomic call, a function of its own library that includes the emit step
//! ([`EMIT_LUA`]) and is called with the keys and arguments of [`ValkeyBackend::emit_call`].
//! Subscribers get those completions exactly as terminal writes' (docs/valkey.md,
//! "Emitting completions of executions you keep yourself").
//!
//! ```no_run
//! use completion_core::{CompletionBackend, EngineBackend, ExecutionId, Namespace, NewExecution};
//! use completion_valkey::{ValkeyBackend, ValkeyConfig};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), completion_core::EngineError> {
//! let backend = ValkeyBackend::connect(ValkeyConfig::new("valkey://127.0.0.1:6379")).await?;
//! let mut completions = backend.subscribe_completions().await?;
//! let id = ExecutionId::new("task-1")?;
//! backend.create_execution(NewExecution::new(id.clone(), Namespace::new("demo")?)).await?;
//! backend.complete(&id).await?;
//! let done = completions.next().await;
//! # Ok(()) }
//! ```
//!
//! Limits:
//! - A standalone server or a cluster (`valkey-cluster://` URLs or `cluster = true`: every
//!   call touches one hash tag, announcements are sharded per partition); no sentinel.
//! - Executions are kept until deleted by hand; only the completion log is trimmed.
//! - A write that fails with [`EngineError::Timeout`] may still have taken effect: check
//!   with `describe`. A write the client retried after a dropped connection takes effect
//!   once (calls carry a token the server recognises).
//! - The function library is server-wide: every prefix on a server shares one version.

mod config;
mod conn;
mod feed;
mod keys;
mod library;
mod log;
mod position;
mod stats;
mod store;
mod url;
mod wire;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use completion_core::hub::{Counters, Hub, HubConfig, Periodic, Subscriptions, WriteOp};
use completion_core::{
    Completion, EngineBackend, EngineError, ExecutionId, ExecutionInfo, NewExecution, Outcome, Reason, RetentionReport,
};
use tracing::Instrument;

pub use config::ValkeyConfig;
pub use library::{EMIT_LUA, LIBRARY_SOURCE, LIBRARY_VERSION, LibraryChange};
pub use stats::{ChannelView, PartitionView, ValkeyServerView, ValkeyStats};

use crate::conn::{Closer, Conn};
use crate::feed::ValkeyFeed;
use crate::position::{BACKEND, ValkeyPosition};
use crate::store::Store;

/// A completion backend on one Valkey or Redis server. Cheap to clone: clones share the
/// connections, the subscriber connection and the streams.
#[derive(Clone)]
pub struct ValkeyBackend {
    shared: Arc<Shared>,
}

struct Shared {
    subscriptions: Subscriptions<ValkeyPosition>,
    store: Arc<Store>,
    /// The latest subscriber connection's name (see [`ValkeyBackend::client_names`]).
    subscriber_name: Arc<Mutex<Option<String>>>,
    /// Closes the command connection when the last clone of the backend is dropped.
    closer: Option<Closer>,
    /// What `connect` did to the server's function library.
    library_on_connect: LibraryChange,
    /// The background trim to retention (`retention_interval`); dropping it stops it.
    _retention: Option<Periodic>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Ends every stream, which stops the feed and closes the subscriber connection.
        self.subscriptions.hub().close();
        if let Some(closer) = self.closer.take() {
            closer.close();
        }
    }
}

/// The `CLIENT SETNAME` of an instance's connections, to find them in `CLIENT LIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientNames {
    /// The command connection (writes and log reads).
    pub commands: String,
    /// The latest subscriber connection, if a stream was ever opened (it stays here after
    /// the connection closed, so its absence from `CLIENT LIST` can be checked).
    pub subscriber: Option<String>,
}

/// What an engine's own function call must pass to emit one completion with the emit step
/// ([`EMIT_LUA`]), from [`ValkeyBackend::emit_call`]: the step's 3 keys and 15 arguments, in
/// order, to put among the call's own (the function reads them with
/// `completions_emit_prepare(KEYS, ARGV, k, a)` from `KEYS[k]` and `ARGV[a]` on).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmitCall {
    /// `P:{P:p}:log`, `P:{P:p}:meta`, `P:{P:p}:emitted:<execution id>`: the partition's log
    /// and bookkeeping, and the execution's emit marker.
    pub keys: Vec<String>,
    /// Execution id, namespace, flow id, outcome, tags JSON, reason, write token, partition,
    /// partition count, channel, `plain` or `sharded`, retention count, retention age (ms),
    /// marker lifetime (ms), `once` or `repeat` (`''`: none). See `docs/valkey.md`.
    pub args: Vec<String>,
    /// The partition's hash tag, `{P:p}`: on a cluster every other key the call touches
    /// must hold it too (one call, one slot), e.g. `jobs:{P:p}:<execution id>`.
    pub hash_tag: String,
}

impl ValkeyBackend {
    /// Connects to the server of `config`, loads (or upgrades) the function library and
    /// checks the key prefix's partition count.
    ///
    /// Fails within `connect_timeout` when the server cannot be reached
    /// ([`EngineError::Transport`] naming the URL, or [`EngineError::Timeout`]), with
    /// [`EngineError::InvalidInput`] for a bad config, and with
    /// [`EngineError::Incompatible`] when the server holds a newer library or the prefix
    /// was created with another partition count.
    pub async fn connect(config: ValkeyConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let span = tracing::info_span!("valkey_connect", prefix = %config.key_prefix, partitions = config.partitions);
        async move {
            let conn = Conn::connect(&config).await?;
            let closer = conn.closer();
            let config = Arc::new(config);
            let counters = Arc::new(Counters::labelled(BACKEND, &[("prefix", config.key_prefix.clone())]));
            let store = Arc::new(Store::new(conn, config.clone(), Default::default(), counters.clone()));
            let library_on_connect = match store.prepare().await {
                Ok(ensured) => ensured,
                Err(e) => {
                    store.conn.quit().await;
                    return Err(e);
                }
            };
            tracing::info!(server = ?store.conn.server_version(), "connected");
            let hub = Hub::new(HubConfig::with_buffer(config.subscription.buffer), counters);
            let subscriber_name = Arc::new(Mutex::new(None));
            let feed = ValkeyFeed { store: store.clone(), subscriber_name: subscriber_name.clone() };
            let subscriptions = Subscriptions::new(hub, Arc::new(feed), store.clone());
            let retention = config.retention_interval.map(|every| store.clone().trim_periodically(every));
            let shared = Shared {
                subscriptions,
                store,
                subscriber_name,
                closer: Some(closer),
                library_on_connect,
                _retention: retention,
            };
            Ok(Self { shared: Arc::new(shared) })
        }
        .instrument(span)
        .await
    }

    /// The settings this backend runs with.
    pub fn config(&self) -> &ValkeyConfig {
        &self.shared.store.config
    }

    /// Trims every partition's log to the configured retention now, exactly (writes trim
    /// only approximately). The report gives how many log entries were removed; it has no
    /// watermark (finding where each partition now starts would cost a read per partition).
    pub async fn enforce_retention(&self) -> Result<RetentionReport, EngineError> {
        let removed = self.shared.store.trim_all().instrument(tracing::info_span!("enforce_retention")).await?;
        tracing::debug!(removed, "log trimmed to retention");
        Ok(RetentionReport::removed(removed))
    }

    /// Ends every stream (they yield `None`) and refuses new subscriptions
    /// ([`EngineError::Closed`]); the subscriber connection closes once the streams are
    /// gone. Writes, reads and [`enforce_retention`](Self::enforce_retention) keep working
    /// until the backend is dropped.
    pub fn close(&self) {
        self.hub().close();
    }

    /// How many streams of this instance are open.
    pub fn open_streams(&self) -> usize {
        self.hub().stream_count()
    }

    /// The version of the function library the server holds now (`None`: none loaded), to
    /// compare with [`LIBRARY_VERSION`].
    pub async fn library_version(&self) -> Result<Option<i64>, EngineError> {
        library::installed_version(&self.shared.store.conn).await
    }

    /// What [`connect`](Self::connect) did to the server's function library: found this
    /// build's version, loaded it, or upgraded an older one (which it names). What
    /// `completions migrate` reports.
    pub fn library_on_connect(&self) -> LibraryChange {
        self.shared.library_on_connect
    }

    /// Valkey-specific counters (library loads, lost and lagged messages, resubscriptions).
    pub fn stats(&self) -> ValkeyStats {
        self.shared.store.stats.snapshot()
    }

    /// What the server holds for this key prefix, over every instance that uses it: the
    /// library version, each partition's log length and first/last entry ids, and the
    /// subscriber connections on the prefix's channel(s). `2 + 3 × partitions` commands
    /// (on a cluster, one `SHARDNUMSUB` per primary); meant for operators (`completions stats`), not
    /// for a hot path.
    pub async fn server_view(&self) -> Result<ValkeyServerView, EngineError> {
        stats::server_view(&self.shared.store.conn, &self.shared.store.keys).await
    }

    /// The names of this instance's server connections.
    pub fn client_names(&self) -> ClientNames {
        ClientNames {
            commands: self.shared.store.conn.name(),
            subscriber: self.shared.subscriber_name.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Emits `completion` for an execution whose state the engine keeps itself, with no
    /// state change of the backend's own (no execution hash is read or written): one call of
    /// the library's `completions_emit`, which appends the event to the partition's log and
    /// announces it exactly as a terminal write does. Subscribers get it in the same ordered
    /// log as every other completion, with the same cursor and resume; nothing tells them
    /// apart but what `completion` says.
    ///
    /// Fails with [`EngineError::AlreadyTerminal`] (the first outcome) when a completion of
    /// the execution was emitted before, while its marker lives
    /// ([`emit_marker_ttl`](ValkeyConfig::emit_marker_ttl), default 24 h); use
    /// [`emit_repeat`](Self::emit_repeat) to append one anyway. Only emits are counted:
    /// a completion written by [`complete`](EngineBackend::complete) and friends does not
    /// make an emit of the same id a repeat (use one path per execution). A call the
    /// client re-sent after a dropped connection takes effect once. To change state of your
    /// own in the same atomic call, run your own function with [`EMIT_LUA`] included
    /// instead ([`emit_call`](Self::emit_call)).
    ///
    /// ```no_run
    /// use completion_core::{Completion, ExecutionId, Namespace, Outcome, Reason};
    /// # async fn demo(backend: &completion_valkey::ValkeyBackend) -> Result<(), completion_core::EngineError> {
    /// let failed = Completion::new(ExecutionId::new("job-42")?, Namespace::new("billing")?, Outcome::Failed)
    ///     .with_reason(Reason::new("the upstream API answered 503")?);
    /// backend.emit(&failed).await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit(&self, completion: &Completion) -> Result<(), EngineError> {
        self.emit_with(completion, false).await
    }

    /// [`emit`](Self::emit), also when a completion of the execution was emitted before (an
    /// engine that retries executions and reports each attempt, say). The marker then
    /// records this one.
    pub async fn emit_repeat(&self, completion: &Completion) -> Result<(), EngineError> {
        self.emit_with(completion, true).await
    }

    async fn emit_with(&self, completion: &Completion, repeat: bool) -> Result<(), EngineError> {
        let span = tracing::debug_span!("emit", backend = BACKEND, execution_id = %completion.execution_id,
            outcome = %completion.outcome, repeat, position = tracing::field::Empty);
        let _timer = self.hub().counters().time_write(WriteOp::Emit);
        let entry = self.shared.store.emit(completion, repeat).instrument(span.clone()).await?;
        span.record("position", entry.as_str());
        tracing::trace!(parent: &span, %entry, "completion emitted");
        Ok(())
    }

    /// The keys and arguments an engine's own function must pass in its `FCALL` to emit
    /// `completion` with [`EMIT_LUA`] in the same atomic call as its own state change (see
    /// `docs/valkey.md`, "Including `lua/emit.lua` in your own function"). Each call carries a fresh write
    /// token: a call your client re-sends after losing the reply emits once, and the
    /// function sees `emit.retried`. Refuses a second completion of the execution like
    /// [`emit`](Self::emit) does (`COMPLETIONS_EMITTED <outcome>`).
    pub fn emit_call(&self, completion: &Completion) -> EmitCall {
        self.emit_call_with(completion, false)
    }

    /// [`emit_call`](Self::emit_call) for a repeat, as [`emit_repeat`](Self::emit_repeat).
    pub fn emit_repeat_call(&self, completion: &Completion) -> EmitCall {
        self.emit_call_with(completion, true)
    }

    fn emit_call_with(&self, completion: &Completion, repeat: bool) -> EmitCall {
        let (keys, args) = self.shared.store.emit_call(completion, repeat);
        EmitCall { keys, args, hash_tag: self.hash_tag(&completion.execution_id) }
    }

    /// The hash tag `{P:p}` of the partition of `id`: on a cluster, keys of your own that a
    /// function touches together with the emit of `id` must hold it (a call's keys must
    /// share one slot). Harmless on a standalone server, so use it there too.
    pub fn hash_tag(&self, id: &ExecutionId) -> String {
        let keys = &self.shared.store.keys;
        keys.hash_tag(keys.partition_of(id.as_str()))
    }

    fn hub(&self) -> &Hub<ValkeyPosition> {
        self.shared.subscriptions.hub()
    }

    async fn terminal(&self, id: &ExecutionId, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        let span = completion_core::hub::terminal_write_span(BACKEND, id, outcome);
        let _timer = self.hub().counters().time_write(WriteOp::terminal(outcome));
        let entry = self.shared.store.terminal(id, outcome, reason).instrument(span.clone()).await?;
        span.record("position", entry.as_str());
        tracing::trace!(parent: &span, %entry, "completion logged and published");
        Ok(())
    }
}

completion_core::delegate_completion_backend!(ValkeyBackend, |this| &this.shared.subscriptions);

#[async_trait]
impl EngineBackend for ValkeyBackend {
    async fn create_execution(&self, execution: NewExecution) -> Result<(), EngineError> {
        let span = tracing::debug_span!("create_execution", backend = BACKEND, execution_id = %execution.id);
        let _timer = self.hub().counters().time_write(WriteOp::Create);
        self.shared.store.create(&execution).instrument(span).await
    }

    async fn complete(&self, id: &ExecutionId) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Succeeded, None).await
    }

    async fn fail(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Failed, Some(reason)).await
    }

    async fn cancel(&self, id: &ExecutionId, reason: &Reason) -> Result<(), EngineError> {
        self.terminal(id, Outcome::Cancelled, Some(reason)).await
    }

    async fn describe(&self, id: &ExecutionId) -> Result<ExecutionInfo, EngineError> {
        self.shared
            .store
            .describe(id)
            .instrument(tracing::debug_span!("describe", backend = BACKEND, execution_id = %id))
            .await
    }
}

/// Looks executions up for a [`Waiter`](completion_core::Waiter) of an engine that emits
/// with [`emit`](ValkeyBackend::emit) (or its own function): the emit marker first (while it
/// lives: `emit_marker_ttl`), then the execution hash of the built-in write side. An id
/// known to neither is pending (it may still be emitted), so such a wait ends at its
/// deadline. Built-in engines use [`Waiter::new`](completion_core::Waiter::new) instead.
#[async_trait]
impl completion_core::CompletionLookup for ValkeyBackend {
    async fn look_up(&self, id: &ExecutionId) -> Result<completion_core::Looked, EngineError> {
        use completion_core::{ExecutionState, Finished, Looked};

        if let Some((outcome, at)) = self.shared.store.emitted(id).await? {
            return Ok(Looked::Finished(Finished::new(id.clone(), outcome, at)));
        }
        match self.shared.store.describe(id).await {
            Ok(info) => Ok(match info.state {
                ExecutionState::Terminal(outcome) => {
                    Looked::Finished(Finished::new(id.clone(), outcome, info.completed_at_ms.unwrap_or_default()))
                }
                _ => Looked::Pending,
            }),
            Err(EngineError::NotFound(_)) => Ok(Looked::Pending),
            Err(e) => Err(e),
        }
    }
}
