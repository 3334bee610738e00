//! The connections to the server, and the only modules that know the client library, fred
//! (with [`crate::wire`], which reads its reply values): the command connection ([`Conn`],
//! its commands in [`commands`]), the subscriber connection ([`subscriber`]), how both are
//! built ([`build`]) and how fred's errors map to [`EngineError`] ([`errors`]).
//!
//! Contract of the command connection: one multiplexed connection per backend instance, with
//! - a reconnect policy, a timeout on every command and on connecting, and `CLIENT SETNAME`
//!   on every (re)connect, to fred's client id, so operators and tests can find the
//!   connection in `CLIENT LIST` ([`Conn::name`]) (see [`build`]);
//! - fred retries a command whose connection dropped while it was in flight: every write
//!   function is therefore idempotent per write token (see `lua/completions.lua`);
//! - on a cluster (fred's clustered client: one connection per primary, commands routed by
//!   the slot of their first key), library management runs on every primary
//!   ([`Conn::library_nodes`]);
//! - a keyed command the server answers "in flux" (`TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`,
//!   `LOADING`: a slot being migrated, a failover under way, a server loading its data) is
//!   tried again, within `command_timeout`;
//! - on a cluster, fred follows no redirection of a command: a keyed command answered `MOVED`
//!   or `ASK` is tried again here, at once and then with a growing pause (up to 200 ms),
//!   within `command_timeout`. A `MOVED` has made fred re-read the slot map first, so the
//!   retry goes to the new owner; an `ASK` (a slot half migrated) is retried until the
//!   migration ends. A redirected command was not executed, so retrying it is safe. fred
//!   10.1 must not follow redirections itself: following an `ASK` can end its routing task
//!   (docs/server-facts.md, "fred 10.1").
//!
//! Errors come back as [`EngineError`]: transport trouble as `Transport`, time-outs as
//! `Timeout`, and error replies as `Server` with the server's code and message.

pub(crate) mod build;
pub(crate) mod commands;
pub(crate) mod errors;
pub(crate) mod subscriber;

/// A cluster topology change fred reports, re-exported so that the feed, which waits for
/// them, need not know fred.
pub(crate) use fred::types::ClusterStateChange;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use completion_core::EngineError;
use completion_core::backoff::{Backoff, Retry};
use fred::prelude::*;
use tokio::time::Instant;

use self::build::{Role, connect_client};
use self::errors::{is_in_flux, is_redirection, map_error, with_limit};
use crate::config::ValkeyConfig;
use crate::position::BACKEND;

/// The first pause before a redirected or in-flux command is tried again (after one retry
/// at once).
const FIRST_REDIRECT_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two tries of a redirected or in-flux command.
const MAX_REDIRECT_PAUSE: Duration = Duration::from_millis(200);

/// Whether a command that failed so is tried again ([`Conn::keyed`]).
fn should_retry(error: &Error) -> bool {
    is_redirection(error) || is_in_flux(error)
}

/// One node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node(Server);

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
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
    /// ([`is_in_flux`]): at once the first time (after a `MOVED` fred re-read the slot map),
    /// then after pauses growing from 5 ms to 200 ms (an `ASK` or `TRYAGAIN` lasts until the slot's
    /// migration ends, a failover or a load some seconds). Every command sent through here
    /// is idempotent (writes carry a token), so a retry takes effect once.
    async fn keyed<T, F, Fut>(&self, op: &'static str, attempt: F) -> Result<T, EngineError>
    where
        F: Fn() -> Fut + Sync,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + self.command_timeout;
        let tries = AtomicU32::new(0);
        let answer = Retry::new(Backoff::new(FIRST_REDIRECT_PAUSE, MAX_REDIRECT_PAUSE).with_immediate_first())
            .with_deadline(deadline)
            .run(should_retry, |n| {
                tries.store(n, Ordering::Relaxed);
                attempt()
            })
            .await;
        let error = match answer {
            Err(error) if should_retry(&error) => error,
            answer => return answer.map_err(self.fail(op)),
        };
        let retries = tries.load(Ordering::Relaxed).saturating_sub(1);
        tracing::warn!(backend = BACKEND, op, retries, %error, "the cluster kept redirecting or refusing a command");
        if !is_redirection(&error) {
            return Err(self.fail(op)(error));
        }
        Err(EngineError::transport(
            BACKEND,
            op,
            format!(
                "the cluster still redirected the command (MOVED/ASK) after {retries} retries over {:?}: a slot \
                 migration under way for longer than that?",
                self.command_timeout
            ),
        ))
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
