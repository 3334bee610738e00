//! The conformance suite three times: against Valkey 9.1, against Redis 7.0, and against a
//! Valkey 9.1 cluster (3 primaries; column `valkey_cluster`). One shared throwaway server
//! (or cluster) per flavor per binary (or `$VALKEY_URL` for the standalone ones), a key
//! prefix per backend instance; instances that need a server of their own (to kill its
//! connections or restart it) get one, with persistence on. On the cluster, "kill the
//! connections" kills the instance's connections on every node, and "restart the server"
//! stops every node and starts them all again.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::Server;
use common::cluster::{self, Cluster};
use completion_conformance::support::EVENT_DEADLINE;
use completion_conformance::{BackendHooks, BackendOptions, Capabilities, Harness, TestBackend};
use completion_core::BoxError;
use completion_testserver::{ValkeyClusterOptions, ValkeyFlavor, ValkeyOptions};
use completion_valkey::ValkeyBackend;

struct VkHarness {
    flavor: ValkeyFlavor,
    shared: Server,
}

struct VkHooks {
    backend: ValkeyBackend,
    server: Server,
}

#[async_trait]
impl BackendHooks for VkHooks {
    async fn kill_connections(&self) -> Result<(), BoxError> {
        // Zero would make the fault tests pass without a fault: the names must be found. Just
        // after an earlier kill the instance may have no connection for a moment, while it
        // reconnects: wait for one (the deadline only bounds a hang).
        let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
        while self.server.kill_named(&common::names_of(&self.backend)).await == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no connection of this backend was found to kill within {EVENT_DEADLINE:?}").into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn restart_server(&self) -> Result<(), BoxError> {
        Ok(self.server.restart().await?)
    }

    async fn subscription_resources(&self) -> Result<usize, BoxError> {
        let channel = common::channel(&self.backend.config().key_prefix);
        let mut count = self.server.numsub(&channel).await;
        if let Some(name) = self.backend.client_names().subscriber {
            count += self.server.count_named(&name).await;
        }
        Ok(count)
    }

    async fn enforce_retention(&self) -> Result<(), BoxError> {
        self.backend.enforce_retention().await?;
        Ok(())
    }

    async fn close(&self) -> Result<(), BoxError> {
        self.backend.close();
        Ok(())
    }
}

#[async_trait]
impl Harness for VkHarness {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn backend(&self, options: BackendOptions) -> Result<TestBackend, BoxError> {
        let server = if options.dedicated_server && !self.shared.get().is_external() {
            common::dedicated_server(ValkeyOptions::default().flavor(self.flavor)).await
        } else {
            self.shared.clone()
        };
        let config = common::config(&server, "conf")
            .with_retention(options.retention)
            .with_buffer(options.buffer)
            .with_retention_interval(None);
        let backend = ValkeyBackend::connect(config).await?;
        let hooks = VkHooks { backend: backend.clone(), server };
        Ok(TestBackend::new(Arc::new(backend.clone()), Arc::new(backend), Arc::new(hooks)))
    }
}

struct ClusterHarness {
    flavor: ValkeyFlavor,
    shared: Cluster,
}

struct ClusterHooks {
    backend: ValkeyBackend,
    cluster: Cluster,
}

#[async_trait]
impl BackendHooks for ClusterHooks {
    async fn kill_connections(&self) -> Result<(), BoxError> {
        // As above: wait for a connection to kill rather than fail in a reconnect's moment.
        let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
        while self.cluster.kill_named(common::names_of(&self.backend)).await == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no connection of this backend was found on any node to kill within {EVENT_DEADLINE:?}"
                )
                .into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn restart_server(&self) -> Result<(), BoxError> {
        Ok(self.cluster.with(|c| c.restart_all()).await?)
    }

    async fn subscription_resources(&self) -> Result<usize, BoxError> {
        let mut count = self.cluster.shard_subscribers(cluster::channels(&self.backend)).await;
        if let Some(name) = self.backend.client_names().subscriber {
            count += self.cluster.count_named(&name).await;
        }
        Ok(count)
    }

    async fn enforce_retention(&self) -> Result<(), BoxError> {
        self.backend.enforce_retention().await?;
        Ok(())
    }

    async fn close(&self) -> Result<(), BoxError> {
        self.backend.close();
        Ok(())
    }
}

#[async_trait]
impl Harness for ClusterHarness {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn backend(&self, options: BackendOptions) -> Result<TestBackend, BoxError> {
        let cluster = if options.dedicated_server {
            cluster::dedicated_cluster(ValkeyClusterOptions::default().flavor(self.flavor).persistence(true)).await
        } else {
            self.shared.clone()
        };
        let config = cluster::config(&cluster, "conf")
            .with_retention(options.retention)
            .with_buffer(options.buffer)
            .with_retention_interval(None);
        let backend = ValkeyBackend::connect(config).await?;
        let hooks = ClusterHooks { backend: backend.clone(), cluster };
        Ok(TestBackend::new(Arc::new(backend.clone()), Arc::new(backend), Arc::new(hooks)))
    }
}

async fn valkey_cluster_harness() -> Arc<dyn Harness> {
    let shared = cluster::shared_cluster(ValkeyFlavor::Valkey).await;
    Arc::new(ClusterHarness { flavor: ValkeyFlavor::Valkey, shared })
}

async fn valkey_harness() -> Arc<dyn Harness> {
    Arc::new(VkHarness { flavor: ValkeyFlavor::Valkey, shared: common::shared_server(ValkeyFlavor::Valkey).await })
}

async fn redis_harness() -> Arc<dyn Harness> {
    Arc::new(VkHarness { flavor: ValkeyFlavor::Redis, shared: common::shared_server(ValkeyFlavor::Redis).await })
}

completion_conformance::suite!(mod valkey, valkey_harness,
    restart: [#[cfg_attr(external_valkey, ignore = "VALKEY_URL is set: an external server cannot be restarted")]]);

completion_conformance::suite!(mod redis, redis_harness,
    restart: [#[cfg_attr(external_valkey, ignore = "VALKEY_URL is set: an external server cannot be restarted")]]);

completion_conformance::suite!(mod valkey_cluster, valkey_cluster_harness);
