//! The own-state mode on Valkey/Redis: [`ValkeyTasks`] keeps each task in a hash of the
//! engine's own (`<prefix>:{P:p}:<id>`: state, namespace, flow, reason, completion) and ends
//! it with a function of its own library, which includes the emit step
//! ([`completions::valkey::EMIT_LUA`]) so that the task's state change and its completion are
//! one atomic `FCALL`:
//!
//! ```text
//! FCALL <library>_finish 4 <task hash> <emit keys (3)>  <outcome> <reason> <emit args (15)>
//!   completions_emit_prepare   checks the emit and refuses a second one (writes nothing)
//!   HGET state == 'running'    the engine's own check, before any write
//!   HSET state, reason         the engine's own state change
//!   completions_emit_commit    appends the completion to the log and publishes it
//! ```
//!
//! The keys and arguments of the emit come from [`ValkeyBackend::emit_call`]; the task hash
//! holds the call's [`hash_tag`](ValkeyBackend::hash_tag), so on a cluster it shares the slot
//! of the emit's keys. Starting a task is a function too (`<library>_start`: the hash, unless
//! it exists, with a token per call so that a re-sent call is done, not refused). Retries
//! are safe: a call the client re-sends with the same write token
//! returns the first entry (`emit.retried`); a fresh call for an ended task is refused by the
//! emit marker (`COMPLETIONS_EMITTED <outcome>`) or by the state check, and answers
//! [`EngineError::AlreadyTerminal`]. The connection is the engine's own, named
//! ([`ValkeyTasks::client_name`]) so that a fault injector can find and kill it too. The
//! library is reloaded (`FUNCTION LOAD REPLACE`) if the server lost it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use completions::valkey::{EMIT_LUA, ValkeyBackend};
use completions::{Completion, EngineError, ExecutionId, ExecutionState, NewExecution, Outcome, Reason};
use fred::prelude::*;
use fred::types::Value;

use crate::store::TaskStore;

const BACKEND: &str = "valkey";

/// The engine's own task hashes on Valkey/Redis, ended by its own function that emits.
pub struct ValkeyTasks {
    backend: ValkeyBackend,
    client: Client,
    prefix: String,
    library: String,
    /// Makes start tokens unique across instances: the connect time.
    nonce: String,
    calls: AtomicU64,
}

impl ValkeyTasks {
    /// Connects its own client to `url` (the backend's server), loads the engine's library
    /// `library` (a Lua identifier: letters, digits, `_`; function names are server-wide, so
    /// one per engine deployment) and keeps its task hashes under `prefix`. Emits through
    /// `backend`.
    pub async fn connect(backend: ValkeyBackend, url: &str, prefix: &str, library: &str) -> Result<Self, EngineError> {
        if library.is_empty() || !library.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(EngineError::invalid("library", library, "use letters, digits and _"));
        }
        let mut config =
            Config::from_url(url).map_err(|e| EngineError::invalid("Valkey URL", "(hidden)", e.details()))?;
        config.fail_fast = true;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(5);
                c.auto_client_setname = true;
                c.max_command_attempts = 3;
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 500, 2))
            .build()
            .map_err(|e| fred_error("connect", e))?;
        match tokio::time::timeout(Duration::from_secs(10), client.init()).await {
            Ok(Ok(_task)) => {}
            Ok(Err(e)) => return Err(fred_error("connect", e)),
            Err(_) => {
                return Err(EngineError::Timeout { backend: BACKEND, op: "connect", after: Duration::from_secs(10) });
            }
        }
        let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string();
        let tasks = Self {
            backend,
            client,
            prefix: prefix.to_string(),
            library: library.to_string(),
            nonce: format!("{}-{nonce}", std::process::id()),
            calls: AtomicU64::new(0),
        };
        tasks.load().await?;
        Ok(tasks)
    }

    /// The `CLIENT SETNAME` of the engine's own connection (in `CLIENT LIST`).
    pub fn client_name(&self) -> String {
        self.client.id().to_string()
    }

    /// The name of the engine's function library (`FUNCTION DELETE` removes it).
    pub fn library(&self) -> &str {
        &self.library
    }

    /// The key prefix of the engine's task hashes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The library's source: the emit step, then the engine's two functions.
    fn source(&self) -> String {
        let name = &self.library;
        format!(
            r#"#!lua name={name}
{EMIT_LUA}
-- KEYS[1] task hash; ARGV[1] namespace, ARGV[2] flow ('' for none), ARGV[3] the call's token.
-- The same call re-sent by the client after a dropped connection (same token) is done.
local function start(keys, args)
  local token = redis.call('HGET', keys[1], 'start_token')
  if token == args[3] then
    return 'OK'
  end
  if redis.call('EXISTS', keys[1]) == 1 then
    return redis.error_reply('ENGINE_EXISTS')
  end
  redis.call('HSET', keys[1], 'state', 'running', 'namespace', args[1], 'flow', args[2], 'start_token', args[3])
  return 'OK'
end
-- KEYS[1] task hash, KEYS[2..4] the emit's; ARGV[1] outcome, ARGV[2] reason, ARGV[3..] the emit's.
-- Checks first, writes last: a function that fails half way keeps what it wrote.
local function finish(keys, args)
  local emit = completions_emit_prepare(keys, args, 2, 3)
  if emit.retried then
    return emit.retried
  end
  local state = redis.call('HGET', keys[1], 'state')
  if not state then
    return redis.error_reply('ENGINE_NOT_FOUND')
  end
  if state ~= 'running' then
    return redis.error_reply('ENGINE_ENDED ' .. state)
  end
  redis.call('HSET', keys[1], 'state', args[1], 'reason', args[2])
  local entry = completions_emit_commit(emit)
  redis.call('HSET', keys[1], 'completion', entry)
  return entry
end
redis.register_function('{name}_start', start)
redis.register_function('{name}_finish', finish)
"#
        )
    }

    async fn load(&self) -> Result<(), EngineError> {
        self.client.function_load::<Value, _>(true, self.source()).await.map_err(|e| fred_error("FUNCTION LOAD", e))?;
        Ok(())
    }

    fn key(&self, id: &ExecutionId) -> String {
        format!("{}:{}:{id}", self.prefix, self.backend.hash_tag(id))
    }

    /// `FCALL`; when the server lost the library (restarted without persistence), loads it
    /// again and answers a transient error, so that the caller's retry finds it.
    async fn fcall(
        &self,
        op: &'static str,
        function: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(), EngineError> {
        let name = format!("{}_{function}", self.library);
        match self.client.fcall::<Value, _, _, _>(name, keys, args).await {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("Function not found") => {
                self.load().await?;
                Err(EngineError::transport(BACKEND, op, "the engine's library was missing: loaded it again"))
            }
            Err(e) => Err(fred_error(op, e)),
        }
    }
}

#[async_trait]
impl TaskStore for ValkeyTasks {
    fn describe(&self) -> String {
        format!(
            "own hashes {}:{{..}}:<id>, completions from its own function (FCALL {}_finish)",
            self.prefix, self.library
        )
    }

    async fn start(&self, task: &NewExecution) -> Result<(), EngineError> {
        let flow = task.flow_id.as_ref().map_or(String::new(), |f| f.to_string());
        // A token per call: fred re-sends a command whose connection dropped, and the first
        // send may have run.
        let token = format!("{}-{}", self.nonce, self.calls.fetch_add(1, Ordering::Relaxed));
        let args = vec![task.namespace.to_string(), flow, token];
        match self.fcall("start", "start", vec![self.key(&task.id)], args).await {
            Err(EngineError::Server { message, .. }) if message.contains("ENGINE_EXISTS") => {
                Err(EngineError::AlreadyExists(task.id.clone()))
            }
            other => other,
        }
    }

    async fn finish(&self, task: &NewExecution, outcome: Outcome, reason: Option<&Reason>) -> Result<(), EngineError> {
        let mut completion = Completion::new(task.id.clone(), task.namespace.clone(), outcome);
        if let Some(flow) = &task.flow_id {
            completion = completion.with_flow(flow.clone());
        }
        if let Some(reason) = reason {
            completion = completion.with_reason(reason.clone());
        }
        let call = self.backend.emit_call(&completion);
        let mut keys = vec![self.key(&task.id)];
        keys.extend(call.keys);
        let mut args = vec![outcome.as_str().to_string(), reason.map_or(String::new(), |r| r.to_string())];
        args.extend(call.args);
        match self.fcall("finish", "finish", keys, args).await {
            Err(EngineError::Server { message, .. }) => {
                // Ended before: by the emit marker, or by the engine's own state check.
                let first = ["COMPLETIONS_EMITTED ", "ENGINE_ENDED "].iter().find_map(|code| {
                    let rest = &message[message.find(code)? + code.len()..];
                    rest.split_whitespace().next()?.parse::<Outcome>().ok()
                });
                Err(match first {
                    Some(first) => EngineError::AlreadyTerminal { execution_id: task.id.clone(), outcome: first },
                    None if message.contains("ENGINE_NOT_FOUND") => EngineError::NotFound(task.id.clone()),
                    None => EngineError::server(BACKEND, "finish", message),
                })
            }
            other => other,
        }
    }

    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, EngineError> {
        let state: Option<String> = self.client.hget(self.key(id), "state").await.map_err(|e| fred_error("HGET", e))?;
        match state.as_deref() {
            None => Err(EngineError::NotFound(id.clone())),
            Some("running") => Ok(ExecutionState::Active),
            Some(other) => Ok(ExecutionState::Terminal(other.parse()?)),
        }
    }
}

/// Connection trouble, time-outs and a server busy loading or in flux are transient; any
/// other error reply is the server's verdict.
fn fred_error(op: &'static str, e: Error) -> EngineError {
    let reply = e.details().trim_start();
    let in_flux = ["LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"].iter().any(|code| reply.starts_with(code));
    match e.kind() {
        ErrorKind::Timeout => EngineError::Timeout { backend: BACKEND, op, after: Duration::from_secs(5) },
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Protocol | ErrorKind::Routing | ErrorKind::Backpressure => {
            EngineError::transport(BACKEND, op, e)
        }
        // fred's "channel closed": the connection died under the command.
        ErrorKind::Unknown if reply == "channel closed" => EngineError::transport(BACKEND, op, e),
        _ if in_flux => EngineError::transport(BACKEND, op, e),
        _ => EngineError::server(BACKEND, op, e.details()),
    }
}
