//! The conformance suite against PostgreSQL: one shared throwaway server per test binary
//! (or `$DATABASE_URL`), a schema per backend instance; tests that kill or restart their
//! server get a server of their own.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use completion_conformance::{BackendHooks, BackendOptions, Capabilities, Harness, TestBackend};
use completion_core::BoxError;
use completion_postgres::{PostgresBackend, PostgresConfig};
use completion_testserver::PostgresServer;

struct PgHarness {
    shared: &'static PostgresServer,
}

struct PgHooks {
    backend: PostgresBackend,
    url: String,
    /// The instance's own server, when it asked for one (stopped when the hooks drop).
    dedicated: Option<Arc<PostgresServer>>,
}

#[async_trait]
impl BackendHooks for PgHooks {
    async fn kill_connections(&self) -> Result<(), BoxError> {
        let names = [self.backend.listener_application_name(), self.backend.pool_application_name()];
        // Zero would make the fault tests pass without a fault: the names must be found.
        match common::terminate_named(&self.url, &names).await {
            0 => Err("no session of this backend was found to terminate".into()),
            _ => Ok(()),
        }
    }

    async fn restart_server(&self) -> Result<(), BoxError> {
        let server = self.dedicated.clone().ok_or("this instance shares its server: it cannot be restarted")?;
        tokio::task::spawn_blocking(move || server.restart()).await??;
        Ok(())
    }

    async fn subscription_resources(&self) -> Result<usize, BoxError> {
        Ok(common::connections_named(&self.url, &self.backend.listener_application_name()).await)
    }

    async fn enforce_retention(&self) -> Result<(), BoxError> {
        self.backend.prune().await?;
        Ok(())
    }
}

#[async_trait]
impl Harness for PgHarness {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn backend(&self, options: BackendOptions) -> Result<TestBackend, BoxError> {
        let dedicated = if options.dedicated_server && !self.shared.is_external() {
            Some(Arc::new(common::dedicated_server().await))
        } else {
            None
        };
        let url = dedicated.as_ref().map_or_else(|| self.shared.url(), |s| s.url());
        let config = PostgresConfig::from_url(url.clone())
            .with_schema(common::unique_schema("conf"))
            .with_retention(options.retention)
            .with_buffer(options.buffer)
            .with_prune_interval(None);
        let backend = PostgresBackend::connect(config).await?;
        let hooks = PgHooks { backend: backend.clone(), url, dedicated };
        Ok(TestBackend::new(Arc::new(backend.clone()), Arc::new(backend), Arc::new(hooks)))
    }
}

async fn harness() -> Arc<dyn Harness> {
    Arc::new(PgHarness { shared: common::shared_server().await })
}

completion_conformance::suite!(mod postgres, harness,
    restart: [#[cfg_attr(external_postgres, ignore = "DATABASE_URL is set: an external server cannot be restarted")]]);
