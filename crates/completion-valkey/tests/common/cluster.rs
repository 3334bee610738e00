//! Test support for a Valkey/Redis Cluster: one throwaway cluster per flavor per test
//! binary, clusters of a test's own, raw commands on every node.

use std::sync::{Arc, OnceLock};

use completion_testserver::{ValkeyCluster, ValkeyClusterOptions, ValkeyFlavor};
use completion_valkey::{ValkeyBackend, ValkeyConfig};

/// A cluster a test talks to: the binary's shared one or one of its own.
#[derive(Clone)]
pub enum Cluster {
    /// Shared by every test of the binary (never restarted).
    Shared(&'static ValkeyCluster),
    /// The test's own, stopped when the last handle drops.
    Dedicated(Arc<ValkeyCluster>),
}

impl Cluster {
    pub fn get(&self) -> &ValkeyCluster {
        match self {
            Cluster::Shared(c) => c,
            Cluster::Dedicated(c) => c,
        }
    }

    /// Runs `f` on the (blocking) cluster handle, off the runtime.
    pub async fn with<T: Send + 'static>(&self, f: impl FnOnce(&ValkeyCluster) -> T + Send + 'static) -> T {
        let cluster = self.clone();
        tokio::task::spawn_blocking(move || f(cluster.get())).await.expect("a cluster operation panicked")
    }

    /// Kills every connection named one of `names`, on every node.
    pub async fn kill_named(&self, names: Vec<String>) -> usize {
        self.with(move |c| c.kill_clients_named(&names).expect("CLIENT KILL on the cluster")).await
    }

    /// Open connections named `name`, over every live node.
    pub async fn count_named(&self, name: &str) -> usize {
        let name = name.to_string();
        self.with(move |c| {
            c.command_all(&["CLIENT", "LIST"])
                .expect("CLIENT LIST on the cluster")
                .into_iter()
                .flatten()
                .map(|list| list.lines().filter(|l| l.split(' ').any(|kv| kv == format!("name={name}"))).count())
                .sum()
        })
        .await
    }

    /// Subscribers of the sharded `channels`, over every live node.
    pub async fn shard_subscribers(&self, channels: Vec<String>) -> usize {
        self.with(move |c| {
            let mut args = vec!["PUBSUB", "SHARDNUMSUB"];
            args.extend(channels.iter().map(String::as_str));
            c.command_all(&args)
                .expect("PUBSUB SHARDNUMSUB on the cluster")
                .into_iter()
                .flatten()
                .map(|reply| {
                    reply.lines().skip(1).step_by(2).filter_map(|n| n.trim().parse::<usize>().ok()).sum::<usize>()
                })
                .sum()
        })
        .await
    }
}

/// The cluster of `flavor` this test binary shares: 3 primaries, no replicas, no persistence.
pub async fn shared_cluster(flavor: ValkeyFlavor) -> Cluster {
    static VALKEY: OnceLock<ValkeyCluster> = OnceLock::new();
    static REDIS: OnceLock<ValkeyCluster> = OnceLock::new();
    let cell = match flavor {
        ValkeyFlavor::Redis => &REDIS,
        _ => &VALKEY,
    };
    if let Some(cluster) = cell.get() {
        return Cluster::Shared(cluster);
    }
    tokio::task::spawn_blocking(move || {
        cell.get_or_init(|| {
            ValkeyCluster::start(ValkeyClusterOptions::default().flavor(flavor))
                .unwrap_or_else(|e| panic!("could not start a {flavor} cluster: {e}"))
        });
    })
    .await
    .expect("starting the cluster panicked");
    Cluster::Shared(cell.get().expect("initialised above"))
}

/// A cluster of the caller's own.
pub async fn dedicated_cluster(options: ValkeyClusterOptions) -> Cluster {
    let flavor = options.node.flavor;
    let cluster = tokio::task::spawn_blocking(move || ValkeyCluster::start(options))
        .await
        .expect("starting the cluster panicked")
        .unwrap_or_else(|e| panic!("could not start a {flavor} cluster: {e}"));
    Cluster::Dedicated(Arc::new(cluster))
}

/// A config for `cluster` with a fresh prefix.
pub fn config(cluster: &Cluster, tag: &str) -> ValkeyConfig {
    ValkeyConfig::new(cluster.get().url()).with_key_prefix(super::unique_prefix(tag))
}

/// The sharded channel of each partition of `backend` (the documented wire format).
pub fn channels(backend: &ValkeyBackend) -> Vec<String> {
    let config = backend.config();
    let prefix = &config.key_prefix;
    (0..config.partitions).map(|p| format!("{prefix}:{{{prefix}:{p}}}:completions")).collect()
}

/// The key of partition `p`'s log (its slot is the partition's slot).
pub fn log_key(prefix: &str, p: u16) -> String {
    format!("{prefix}:{{{prefix}:{p}}}:log")
}
