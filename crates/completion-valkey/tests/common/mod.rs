//! Test support shared by this crate's test binaries: one throwaway server per flavor per
//! binary (or `$VALKEY_URL`), servers of a test's own, unique key prefixes, and raw
//! commands to inspect and break things (`CLIENT LIST`, `CLIENT KILL`, `PUBSUB NUMSUB`).

#![allow(dead_code)] // each test binary uses a different subset

pub mod cluster;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use completion_conformance::support::EVENT_DEADLINE;
use completion_testserver::{ValkeyFlavor, ValkeyOptions, ValkeyServer};
use completion_valkey::{ValkeyBackend, ValkeyConfig};
use tokio::time::Instant;

/// A server a test talks to: the binary's shared one or one of its own.
#[derive(Clone)]
pub enum Server {
    /// Shared by every test of the binary (never restarted).
    Shared(&'static ValkeyServer),
    /// The test's own, stopped when the last handle drops.
    Dedicated(Arc<ValkeyServer>),
}

impl Server {
    pub fn get(&self) -> &ValkeyServer {
        match self {
            Server::Shared(s) => s,
            Server::Dedicated(s) => s,
        }
    }

    pub fn url(&self) -> String {
        self.get().url()
    }

    /// One raw command (blocking client, run off the runtime); panics on error replies.
    pub async fn command(&self, args: &[&str]) -> String {
        self.try_command(args).await.unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// One raw command; the server's error as text.
    pub async fn try_command(&self, args: &[&str]) -> Result<String, String> {
        let server = self.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server.get().command(&args).map_err(|e| e.to_string())
        })
        .await
        .expect("a raw command panicked")
    }

    /// Stops and starts the (dedicated) server; data kept only with persistence.
    pub async fn restart(&self) -> Result<(), String> {
        let Server::Dedicated(server) = self else { return Err("the shared server is never restarted".into()) };
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.restart().map_err(|e| e.to_string()))
            .await
            .expect("restart panicked")
    }

    /// `(id, name)` of every client connection.
    pub async fn clients(&self) -> Vec<(String, String)> {
        let list = self.command(&["CLIENT", "LIST"]).await;
        list.lines()
            .filter_map(|line| {
                let field =
                    |name: &str| line.split(' ').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
                Some((field("id")?.to_string(), field("name")?.to_string()))
            })
            .collect()
    }

    /// Kills every connection named one of `names`; returns how many.
    pub async fn kill_named(&self, names: &[String]) -> usize {
        let (server, names) = (self.clone(), names.to_vec());
        tokio::task::spawn_blocking(move || server.get().kill_clients_named(&names))
            .await
            .expect("killing clients panicked")
            .expect("CLIENT LIST / CLIENT KILL")
    }

    /// Open connections named `name`.
    pub async fn count_named(&self, name: &str) -> usize {
        self.clients().await.iter().filter(|(_, n)| n == name).count()
    }

    /// `PUBSUB NUMSUB channel`.
    pub async fn numsub(&self, channel: &str) -> usize {
        let reply = self.command(&["PUBSUB", "NUMSUB", channel]).await;
        reply.lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

/// The server of `flavor` this test binary shares (`$VALKEY_URL` when set).
pub async fn shared_server(flavor: ValkeyFlavor) -> Server {
    static VALKEY: OnceLock<ValkeyServer> = OnceLock::new();
    static REDIS: OnceLock<ValkeyServer> = OnceLock::new();
    let cell = match flavor {
        ValkeyFlavor::Redis => &REDIS,
        _ => &VALKEY,
    };
    if let Some(server) = cell.get() {
        return Server::Shared(server);
    }
    tokio::task::spawn_blocking(move || {
        cell.get_or_init(|| {
            ValkeyServer::from_env_or_start(ValkeyOptions::default().flavor(flavor).persistence(false))
                .unwrap_or_else(|e| panic!("could not start {flavor}: {e}"))
        });
    })
    .await
    .expect("starting the server panicked");
    Server::Shared(cell.get().expect("initialised above"))
}

/// A server of the caller's own.
pub async fn dedicated_server(options: ValkeyOptions) -> Server {
    let flavor = options.flavor;
    let server = tokio::task::spawn_blocking(move || ValkeyServer::start(options))
        .await
        .expect("starting the server panicked")
        .unwrap_or_else(|e| panic!("could not start {flavor}: {e}"));
    Server::Dedicated(Arc::new(server))
}

/// A key prefix unique in this process and across runs on one external server.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    format!("t-{tag}-{micros:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A config for `server` with a fresh prefix.
pub fn config(server: &Server, tag: &str) -> ValkeyConfig {
    ValkeyConfig::new(server.url()).with_key_prefix(unique_prefix(tag))
}

pub async fn connect(config: ValkeyConfig) -> ValkeyBackend {
    ValkeyBackend::connect(config).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

/// The channel of a prefix (the documented wire format; never in the public API).
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:completions")
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after the deadline.
pub async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connections of `backend` (commands and the latest subscriber) on `server`.
pub fn names_of(backend: &ValkeyBackend) -> Vec<String> {
    let names = backend.client_names();
    std::iter::once(names.commands).chain(names.subscriber).collect()
}
