//! The conformance suite against PostgreSQL: one shared throwaway server per test binary
//! (or `$DATABASE_URL`), a schema per backend instance; tests that kill or restart their
//! server get a server of their own. It runs twice: on the built-in `EngineBackend`
//! (`postgres`), and on an engine that keeps its executions in a table of its own and emits
//! with `emit_in` from its own transactions (`postgres_own_state`).

mod common;
#[path = "common/own_state.rs"]
mod own_state;

use std::sync::Arc;

use async_trait::async_trait;
use completion_conformance::support::EVENT_DEADLINE;
use completion_conformance::{BackendHooks, BackendOptions, Capabilities, Harness, TestBackend};
use completion_core::BoxError;
use completion_postgres::{PostgresBackend, PostgresConfig};
use completion_testserver::PostgresServer;

struct PgHarness {
    shared: &'static PostgresServer,
    /// Whether the write side is the own-state engine of `own_state.rs`.
    own_state: bool,
}

struct PgHooks {
    backend: PostgresBackend,
    /// The `application_name` of the own-state engine's connections, if it writes.
    engine_name: Option<String>,
    url: String,
    /// The instance's own server, when it asked for one (stopped when the hooks drop).
    dedicated: Option<Arc<PostgresServer>>,
}

#[async_trait]
impl BackendHooks for PgHooks {
    async fn kill_connections(&self) -> Result<(), BoxError> {
        let mut names = vec![self.backend.listener_application_name(), self.backend.pool_application_name()];
        names.extend(self.engine_name.clone());
        // Zero would make the fault tests pass without a fault: the names must be found. Just
        // after an earlier kill (on a busy machine a slow hook's kill lands right before the
        // next one starts) the instance may have no session for a moment, while its listener
        // reconnects: wait for one (a readiness check; the deadline only bounds a hang).
        let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
        while common::terminate_named(&self.url, &names).await == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(
                    format!("no session of this backend was found to terminate within {EVENT_DEADLINE:?}").into()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
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
        self.backend.enforce_retention().await?;
        Ok(())
    }

    async fn close(&self) -> Result<(), BoxError> {
        self.backend.close();
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
            .with_retention_interval(None);
        let backend = PostgresBackend::connect(config).await?;
        if self.own_state {
            let name = format!("{}-engine", backend.pool_application_name());
            let engine =
                own_state::OwnStateEngine::create(&url, &common::unique_schema("engine"), &name, backend.clone()).await;
            let hooks = PgHooks { backend: backend.clone(), engine_name: Some(name), url, dedicated };
            return Ok(TestBackend::new(Arc::new(engine), Arc::new(backend), Arc::new(hooks)));
        }
        let hooks = PgHooks { backend: backend.clone(), engine_name: None, url, dedicated };
        Ok(TestBackend::new(Arc::new(backend.clone()), Arc::new(backend), Arc::new(hooks)))
    }
}

async fn harness() -> Arc<dyn Harness> {
    Arc::new(PgHarness { shared: common::shared_server().await, own_state: false })
}

async fn own_state_harness() -> Arc<dyn Harness> {
    Arc::new(PgHarness { shared: common::shared_server().await, own_state: true })
}

completion_conformance::suite!(mod postgres, harness,
    restart: [#[cfg_attr(external_postgres, ignore = "DATABASE_URL is set: an external server cannot be restarted")]]);

completion_conformance::suite!(mod postgres_own_state, own_state_harness,
    restart: [#[cfg_attr(external_postgres, ignore = "DATABASE_URL is set: an external server cannot be restarted")]]);
