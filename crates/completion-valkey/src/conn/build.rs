//! Building and connecting a fred client: the command connection and the subscriber
//! connection of one backend instance share this setup.
//!
//! Contract: a client connects within `connect_timeout` or fails naming the URL (redacted);
//! it reconnects by itself (exponential backoff from 50 ms up to `reconnect_max_delay`,
//! unlimited attempts: without a policy fred never reconnects), times every command out
//! after `command_timeout` (time waiting for a reconnect included), closes a connection
//! that stops answering, and names itself with `CLIENT SETNAME` on every (re)connect.
//! TLS (`tls` feature) trusts the system's roots and `tls_ca_file`
//! ([`completion_core::tls::client_config`]).

use std::time::Duration;

use completion_core::{EngineError, redact_url};
use fred::prelude::*;
use fred::types::RespVersion;
use fred::types::config::UnresponsiveConfig;

use super::errors::{map_error, plain_io_error};
use crate::config::ValkeyConfig;
use crate::position::BACKEND;
use crate::url::Target;

/// fred's write attempts per command (a connection dropped under it is retried).
pub(crate) const MAX_COMMAND_ATTEMPTS: u32 = 3;

/// Which connection of the instance a client is (sizes its message channel).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Commands.
    Commands,
    /// Pub/sub (RESP3, so that PING works while subscribed).
    Subscriber,
}

/// fred's config of `target`'s URL (without this crate's settings). `original` is the URL
/// as given, for errors. [`crate::url`] has refused what fred would; should fred still
/// refuse something, its reason is passed on.
pub(crate) fn fred_config(target: &Target, original: &str) -> Result<Config, EngineError> {
    let parsed = if target.cluster { Config::from_url_clustered(&target.url) } else { Config::from_url(&target.url) };
    parsed.map_err(|e| {
        EngineError::invalid("url", redact_url(original), format!("the client library refused it: {}", e.details()))
    })
}

/// Builds a fred client for `config` and connects it, within `connect_timeout`.
pub(crate) async fn connect_client(config: &ValkeyConfig, role: Role) -> Result<Client, EngineError> {
    let target = crate::url::target(&config.url, config.cluster)?;
    let tls = target.tls;
    let mut fred_config = fred_config(&target, &config.url)?;
    // Our own TLS setup rather than fred's from the `rediss` scheme: fred's refuses to start
    // when any system root certificate fails to load, and cannot add a CA file.
    #[cfg(feature = "tls")]
    if tls {
        let tls = completion_core::tls::client_config(config.tls_ca_file.as_deref())?;
        fred_config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls; // refused by the URL check without the feature
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
        // fred's default of 32 drops the oldest messages when the reader lags
        // (docs/server-facts.md, "fred 10.1"): size it.
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
                // fred 10.1 cannot follow `ASK` safely (see `conn`): the command connection
                // follows no redirection itself, [`Conn`](super::Conn) retries instead. The
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
        Ok(Err(e)) if super::errors::says_no_such_database(e.details()) => Err(EngineError::invalid(
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
