//! The command connection: everything this crate sends to the server except pub/sub, and the
//! only module (with [`subscriber`](crate::subscriber)) that knows the client library, fred.
//!
//! Contract: one multiplexed connection per backend instance, with
//! - a reconnect policy (exponential backoff from 50 ms up to `reconnect_max_delay`,
//!   unlimited attempts): without one, fred never reconnects;
//! - a timeout on every command (`command_timeout`, time waiting for a reconnect included),
//!   and on connecting (`connect_timeout`);
//! - `CLIENT SETNAME` on every (re)connect, to fred's client id, so operators and tests can
//!   find the connection in `CLIENT LIST` ([`Conn::name`]);
//! - fred retries a command whose connection dropped while it was in flight: every write
//!   function is therefore idempotent per write token (see `lua/completions.lua`).
//!
//! - on a cluster (fred's clustered client: one connection per primary, commands routed by
//!   the slot of their first key), library management runs on every primary
//!   ([`Conn::library_nodes`]); the server's `TRYAGAIN` and `CLUSTERDOWN` answers (a slot
//!   being migrated, a failover under way) are left to the caller to retry;
//! - on a cluster, fred follows no redirection of a command: a keyed command answered `MOVED`
//!   or `ASK` is tried again here, at once and then with a growing pause (up to 200 ms),
//!   within `command_timeout`. A `MOVED` has made fred re-read the slot map first, so the
//!   retry goes to the new owner; an `ASK` (a slot half migrated) is retried until the
//!   migration ends. A redirected command was not executed, so retrying it is safe.
//!
//! Why fred must not follow redirections itself (fred 10.1.0, `router/commands.rs`
//! `process_ask`, `router/utils.rs` `send_asking_with_policy`; seen in
//! `tests/cluster.rs::slots_migrated_mid_stream_lose_nothing` one run in three, forced by
//! `a_write_to_a_half_migrated_slot_waits_and_the_client_survives`): on `ASK`
//! it sends `ASKING` to the importing node but re-sends the command by slot, to the
//! migrating node, which answers `ASK` again. Each round spends one of the command's write
//! attempts; once they are gone (`max_command_attempts` 3 < `max_redirections` 5),
//! `send_asking_with_policy` fails with "Max attempts reached", `process_ask` returns that
//! error, and the error ends fred's routing task: every connection is closed, nothing
//! reconnects, and every later command waits out its timeout, forever. (It also reads the
//! `ASKING` reply without draining the replies in flight on that connection.) With
//! `max_redirections` 0 fred answers the caller "Too many redirections." before any of that,
//! after it has re-read the slot map on a `MOVED`.
//!
//! Errors come back as [`EngineError`]: transport trouble as `Transport`, time-outs as
//! `Timeout`, and error replies as `Server` with the server's message.

use std::collections::HashMap;
use std::time::Duration;

use completion_core::EngineError;
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use fred::types::{ClusterHash, CustomCommand, RespVersion};

use crate::config::ValkeyConfig;
use completion_core::redact_url;

pub(crate) const BACKEND: &str = crate::position::BACKEND;

/// fred's write attempts per command (a connection dropped under it is retried).
pub(crate) const MAX_COMMAND_ATTEMPTS: u32 = 3;
/// On a cluster: the longest pause between two tries of a redirected command.
const MAX_REDIRECT_PAUSE: Duration = Duration::from_millis(200);

/// Maps a fred error to the engine error of `op`.
pub(crate) fn map_error(op: &'static str, error: Error) -> EngineError {
    match error.kind() {
        ErrorKind::Timeout => EngineError::Timeout { backend: BACKEND, op, after: Duration::ZERO },
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Protocol | ErrorKind::Routing | ErrorKind::Backpressure => {
            EngineError::transport(BACKEND, op, error)
        }
        // fred reports a command whose connection died under it (its internal response channel
        // closed, e.g. during a server restart) as `Unknown` "channel closed": transport trouble
        // to retry, not a server verdict. Server error replies are `Unknown` too, so match the text.
        ErrorKind::Unknown if error.details() == "channel closed" => EngineError::transport(BACKEND, op, error),
        #[cfg(feature = "tls")]
        ErrorKind::Tls => EngineError::transport(BACKEND, op, error),
        ErrorKind::Config | ErrorKind::Url => {
            EngineError::invalid("valkey client configuration", error.details(), "refused by the client library")
        }
        _ => server_reply(op, error.details()),
    }
}

/// An error reply as [`EngineError::Server`]: its first word is the code when it is one
/// (upper-case letters, digits and `_`, as `ERR`, `NOSCRIPT` or the library's
/// `COMPLETIONS_NOT_FOUND`), the rest the message.
pub(crate) fn server_reply(op: &'static str, reply: &str) -> EngineError {
    let reply = reply.trim();
    let (first, rest) = reply.split_once(' ').unwrap_or((reply, ""));
    let is_code = !first.is_empty()
        && first.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && first.bytes().any(|b| b.is_ascii_uppercase());
    if is_code {
        EngineError::server_code(BACKEND, op, first, rest.trim_start())
    } else {
        EngineError::server(BACKEND, op, reply)
    }
}

/// fred's text of an I/O error, which is the error's `Debug` form (`Os { code: 111, kind:
/// ConnectionRefused, message: "Connection refused" }`), as the error's own sentence
/// (`Connection refused (os error 111)`); other text unchanged.
pub(crate) fn plain_io_error(details: &str) -> String {
    let field = |name: &str| {
        let start = details.find(&format!("{name}: "))? + name.len() + 2;
        let rest = &details[start..];
        match rest.strip_prefix('"') {
            Some(quoted) => quoted.find('"').map(|end| quoted[..end].to_string()),
            None => rest.find([',', ' ', '}']).map(|end| rest[..end].to_string()),
        }
    };
    if details.starts_with("Os {") {
        if let (Some(message), Some(code)) = (field("message"), field("code")) {
            return format!("{message} (os error {code})");
        }
    } else if (details.starts_with("Custom {") || details.starts_with("Kind("))
        && let Some(error) = field("error")
    {
        return error;
    }
    details.to_string()
}

/// Whether fred gave up on a command because the cluster redirected it (`MOVED`/`ASK`) more
/// often than allowed: on the command connection of a cluster, at the first redirection.
fn is_redirection(error: &Error) -> bool {
    *error.kind() == ErrorKind::Routing && error.details().starts_with("Too many redirections")
}

/// Whether the server answered that the keys' slot or the cluster is in flux and will
/// serve the command shortly: a slot half migrated (`TRYAGAIN`), a failover under way
/// (`CLUSTERDOWN`, `MASTERDOWN`), a server still loading its data after a restart
/// (`LOADING`, standalone servers too).
fn is_in_flux(error: &Error) -> bool {
    let reply = error.details().trim_start();
    ["TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING"].iter().any(|code| reply.starts_with(code))
}

/// Fills in the limit of a time-out error (fred does not say which limit passed).
fn with_limit(error: EngineError, limit: Duration) -> EngineError {
    match error {
        EngineError::Timeout { backend, op, .. } => EngineError::Timeout { backend, op, after: limit },
        other => other,
    }
}

/// Which connection of the instance a client is (sizes its message channel).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Commands.
    Commands,
    /// Pub/sub (RESP3, so that PING works while subscribed).
    Subscriber,
}

/// Builds a fred client for `config` and connects it, within `connect_timeout`.
pub(crate) async fn connect_client(config: &ValkeyConfig, role: Role) -> Result<Client, EngineError> {
    let target = config.target()?;
    let tls = target.tls;
    let mut fred_config = target.fred_config(&config.url)?;
    // Our own TLS setup rather than fred's from the `rediss` scheme: fred's refuses to start
    // when any system root certificate fails to load, and cannot add a CA file.
    #[cfg(feature = "tls")]
    if tls {
        fred_config.tls = Some(tls_connector(config)?.into());
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls; // refused by `plain_url` without the feature
    if let Some(user) = &config.username {
        fred_config.username = Some(user.clone());
    }
    if let Some(password) = &config.password {
        fred_config.password = Some(password.clone());
    }
    if let Some(db) = config.database.filter(|_| !target.cluster) {
        fred_config.database = Some(db);
    }
    // Report the first connection failure to connect() instead of retrying forever.
    fred_config.fail_fast = true;
    if role == Role::Subscriber {
        fred_config.version = RespVersion::RESP3;
    }
    let command_timeout = config.command_timeout;
    let connect_timeout = config.connect_timeout;
    let capacity = match role {
        // Fred's default of 32 drops messages when the reader lags (field notes): size it.
        Role::Subscriber => config.message_capacity,
        Role::Commands => 64,
    };
    let max_delay = u32::try_from(config.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX).max(50);
    let cluster = target.cluster;
    let client = Builder::from_config(fred_config)
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.auto_client_setname = true;
            c.max_command_attempts = MAX_COMMAND_ATTEMPTS;
            if cluster {
                // fred 10.1 cannot follow `ASK` safely (see the module docs): the command
                // connection follows no redirection itself, [`Conn`] retries instead. The
                // subscriber only meets `MOVED` (sharded channels are never answered `ASK`),
                // which fred follows; fewer redirections than attempts keeps even an
                // unexpected `ASK` from ending its connection task.
                c.max_redirections = match role {
                    Role::Commands => 0,
                    Role::Subscriber => MAX_COMMAND_ATTEMPTS - 1,
                };
            }
            c.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() };
            // A connection that stops answering is closed and reconnected, instead of
            // timing out every command forever (a half-open TCP connection).
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(command_timeout),
                interval: (command_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
            p.broadcast_channel_capacity = capacity;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, max_delay, 2))
        .build()
        .map_err(|e| map_error("connect", e))?;
    let redacted = redact_url(&config.url);
    let database = client.client_config().database;
    match tokio::time::timeout(connect_timeout, client.init()).await {
        Ok(Ok(_task)) => Ok(client),
        Ok(Err(e)) if *e.kind() == ErrorKind::Timeout => {
            tracing::warn!(url = %redacted, ?connect_timeout, "connecting timed out");
            Err(EngineError::Timeout { backend: BACKEND, op: "connect", after: connect_timeout })
        }
        // fred SELECTs the database as it connects: the server's refusal ends the connect.
        Ok(Err(e)) if e.details().contains("DB index is out of range") => Err(EngineError::invalid(
            "database",
            database.map(|db| db.to_string()).unwrap_or_default(),
            format!(
                "the server has no such database ({}): it has as many as its `databases` setting says, 16 by default",
                e.details().trim()
            ),
        )),
        Ok(Err(e)) => Err(EngineError::transport(
            BACKEND,
            "connect",
            format!("could not connect to {redacted}: {}", plain_io_error(e.details())),
        )),
        Err(_) => {
            // The attempt may still finish later: make sure its connection closes then.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), client.quit()).await;
            });
            tracing::warn!(url = %redacted, ?connect_timeout, "connecting timed out");
            Err(EngineError::Timeout { backend: BACKEND, op: "connect", after: connect_timeout })
        }
    }
}

/// A rustls connector trusting the system's roots and `tls_ca_file`.
#[cfg(feature = "tls")]
fn tls_connector(config: &ValkeyConfig) -> Result<fred::types::config::TlsConnector, EngineError> {
    use std::sync::Arc;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &config.tls_ca_file {
        let shown = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| EngineError::invalid("tls_ca_file", &shown, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::invalid("tls_ca_file", &shown, e.to_string()))?;
        if certs.is_empty() {
            return Err(EngineError::invalid("tls_ca_file", &shown, "holds no PEM certificate"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| EngineError::invalid("tls_ca_file", &shown, e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::invalid("tls", "rustls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls.into())
}

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

/// One node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node(Server);

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The outcome of a `FUNCTION LOAD`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// Loaded.
    Done,
    /// Another process loaded a library of that name first.
    AlreadyExists,
}

/// A log entry as the server sent it: its id and its field/value pairs.
pub(crate) type RawEntry = (String, Vec<(String, String)>);

/// One partition's answer to the library's read function.
#[derive(Debug)]
pub(crate) struct RawRead {
    /// The newest id trimmed away before the read's first step.
    pub trimmed_before: String,
    /// The newest id trimmed away after the entries were read: everything up to it is gone.
    pub trimmed_to: String,
    /// `last-generated-id`: the newest id ever appended.
    pub last_generated: String,
    /// The entries, in id order.
    pub entries: Vec<RawEntry>,
    /// The server's time of the read, in microseconds.
    pub read_at_us: u64,
}

/// The command connection of one backend instance.
pub(crate) struct Conn {
    client: Client,
    command_timeout: Duration,
}

impl Conn {
    /// Connects the command connection.
    pub(crate) async fn connect(config: &ValkeyConfig) -> Result<Self, EngineError> {
        let client = connect_client(config, Role::Commands).await?;
        Ok(Self { client, command_timeout: config.command_timeout })
    }

    /// The connection's `CLIENT SETNAME` (fred's client id; set again on every reconnect).
    pub(crate) fn name(&self) -> String {
        self.client.id().to_string()
    }

    /// The server's version as reported by its handshake, if known.
    pub(crate) fn server_version(&self) -> Option<String> {
        self.client.server_version().map(|v| v.to_string())
    }

    fn fail(&self, op: &'static str) -> impl FnOnce(Error) -> EngineError + '_ {
        move |e| with_limit(map_error(op, e), self.command_timeout)
    }

    /// Runs a keyed command, trying it again within `command_timeout` while a cluster
    /// redirects it (see the module docs) or the server says it is in flux
    /// ([`is_in_flux`]). Every command sent through here is idempotent (writes carry a
    /// token), so a retry takes effect once. The one retry loop of the client: the store
    /// above it only reloads a lost function library.
    async fn keyed<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::ZERO;
        let mut retries = 0u32;
        loop {
            let error = match attempt().await {
                Err(e) if is_redirection(&e) || is_in_flux(&e) => e,
                other => return other.map_err(self.fail(op)),
            };
            if started.elapsed() + pause >= self.command_timeout {
                tracing::warn!(backend = BACKEND, op, retries, %error, "the cluster kept redirecting or refusing a command");
                if !is_redirection(&error) {
                    return Err(self.fail(op)(error));
                }
                return Err(EngineError::transport(
                    BACKEND,
                    op,
                    format!(
                        "the cluster still redirected the command (MOVED/ASK) after {retries} retries over {:?}: a \
                         slot migration under way for longer than that?",
                        self.command_timeout
                    ),
                ));
            }
            tracing::debug!(backend = BACKEND, op, retries, %error, ?pause, "redirected or in flux; trying again");
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            // At once after the first (after a `MOVED` fred re-read the slot map), then
            // growing: an `ASK` or `TRYAGAIN` lasts until the slot's migration ends, a
            // failover or a load some seconds.
            pause = (pause * 2).clamp(Duration::from_millis(5), MAX_REDIRECT_PAUSE);
            retries += 1;
        }
    }

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
        Ok(FcallReply(value))
    }

    /// Whether this connection talks to a cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.client.is_clustered()
    }

    /// Where the function library must live: the server (`None`), or every primary of the
    /// cluster as the client knows them now.
    pub(crate) fn library_nodes(&self) -> Vec<Option<Node>> {
        if !self.is_cluster() {
            return vec![None];
        }
        let mut nodes: Vec<Server> = self.client.active_connections();
        nodes.sort_by_key(|s| s.to_string());
        nodes.into_iter().map(|s| Some(Node(s))).collect()
    }

    /// The client, aimed at `node` (or routed as usual).
    fn on(&self, node: Option<&Node>) -> fred::clients::WithOptions<Client> {
        match node {
            Some(Node(server)) => self.client.with_cluster_node(server.clone()),
            None => self.client.with_options(&Options::default()),
        }
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
            Err(e) if e.details().contains("Function not found") => {
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
            Err(e) if e.details().contains("already exists") => Ok(Loaded::AlreadyExists),
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
    /// built it, where a function's would be converted to Lua tables and back (about 7x
    /// the server time for a page of 100 entries).
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

    /// Closes the connection (and stops reconnecting).
    pub(crate) async fn quit(&self) {
        let _ = tokio::time::timeout(self.command_timeout, self.client.quit()).await;
    }

    /// A handle that closes the connection when asked from a `Drop` impl.
    pub(crate) fn closer(&self) -> Closer {
        Closer(self.client.clone(), self.command_timeout)
    }
}

/// Closes a connection from synchronous code (a `Drop`), on the current tokio runtime.
pub(crate) struct Closer(Client, Duration);

impl Closer {
    /// Sends `QUIT` in the background, if a runtime is there to run it.
    pub(crate) fn close(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let Closer(client, limit) = self;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(limit, client.quit()).await;
            });
        }
    }
}

/// The reply of a library function, read by shape.
#[derive(Debug)]
pub(crate) struct FcallReply(Value);

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

impl FcallReply {
    /// The reply as text (stream ids, codes).
    pub(crate) fn text(&self) -> Option<String> {
        self.0.as_string()
    }

    /// The reply as a list of texts.
    pub(crate) fn texts(&self) -> Option<Vec<String>> {
        match &self.0 {
            Value::Array(items) => items.iter().map(Value::as_string).collect(),
            Value::Null => Some(Vec::new()),
            _ => None,
        }
    }

    /// The reply as an integer.
    pub(crate) fn integer(&self) -> Option<i64> {
        self.0.as_i64()
    }

    /// The reply of `completions_read`, and its entries if it was asked for any.
    pub(crate) fn into_read(self) -> Result<RawRead, String> {
        let mut parts = self.0.into_array().into_iter();
        let (Some(trimmed_to), Some(last), Some(entries), Some(read_at)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the read function returned fewer than 4 parts".into());
        };
        let read_at_us = read_at
            .as_string()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("the read time is not a number: {read_at:?}"))?;
        let trimmed_to = text(trimmed_to, "trimmed_to")?;
        Ok(RawRead {
            trimmed_before: trimmed_to.clone(),
            trimmed_to,
            last_generated: text(last, "last-generated-id")?,
            entries: parse_entries(entries)?,
            read_at_us,
        })
    }
}

fn text(v: Value, what: &str) -> Result<String, String> {
    v.as_string().ok_or_else(|| format!("{what} is not text: {v:?}"))
}

/// Stream entries as `XRANGE` (or a function returning its reply) gives them:
/// `[[id, [field, value, ...]], ...]`.
pub(crate) fn parse_entries(entries: Value) -> Result<Vec<RawEntry>, String> {
    let mut out = Vec::new();
    for entry in entries.into_array() {
        let mut entry = entry.into_array().into_iter();
        let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
            return Err("a log entry is not [id, fields]".into());
        };
        let id = text(id, "an entry id")?;
        let mut pairs = Vec::new();
        let mut fields = fields.into_array().into_iter();
        while let (Some(f), Some(v)) = (fields.next(), fields.next()) {
            pairs.push((text(f, "a field name")?, v.as_str_lossy().map(|s| s.into_owned()).unwrap_or_default()));
        }
        out.push((id, pairs));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flux_replies_are_told_from_verdicts() {
        for reply in [
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "LOADING Valkey is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down",
        ] {
            assert!(is_in_flux(&Error::new(ErrorKind::Unknown, reply)), "{reply}");
        }
        for reply in ["NOT_FOUND x", "ERR Function not found", "ALREADY_TERMINAL succeeded"] {
            assert!(!is_in_flux(&Error::new(ErrorKind::Unknown, reply)), "{reply}");
        }
        assert!(is_redirection(&Error::new(ErrorKind::Routing, "Too many redirections.")));
        assert!(!is_redirection(&Error::new(ErrorKind::Unknown, "Too many redirections.")));
    }
}
