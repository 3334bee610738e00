//! The conformance suite against the memory backend.

use std::sync::Arc;

use async_trait::async_trait;
use completion_conformance::{BackendHooks, BackendOptions, Capabilities, Harness, TestBackend};
use completion_core::BoxError;
use completion_memory::{MemoryBackend, MemoryConfig};

struct MemoryHarness;

struct MemoryHooks(MemoryBackend);

#[async_trait]
impl BackendHooks for MemoryHooks {
    async fn kill_connections(&self) -> Result<(), BoxError> {
        Err("the memory backend has no server connections".into())
    }

    async fn restart_server(&self) -> Result<(), BoxError> {
        Err("the memory backend has no server".into())
    }

    async fn subscription_resources(&self) -> Result<usize, BoxError> {
        Ok(self.0.open_streams())
    }

    async fn enforce_retention(&self) -> Result<(), BoxError> {
        self.0.enforce_retention();
        Ok(())
    }

    async fn close(&self) -> Result<(), BoxError> {
        self.0.close();
        Ok(())
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }

    async fn backend(&self, options: BackendOptions) -> Result<TestBackend, BoxError> {
        let backend = MemoryBackend::with_config(
            MemoryConfig::default().with_retention(options.retention).with_buffer(options.buffer),
        );
        Ok(TestBackend::new(Arc::new(backend.clone()), Arc::new(backend.clone()), Arc::new(MemoryHooks(backend))))
    }
}

async fn harness() -> Arc<dyn Harness> {
    Arc::new(MemoryHarness)
}

completion_conformance::suite!(mod memory, harness,
    kill: [#[ignore = "the memory backend has no server connections"]],
    restart: [#[ignore = "the memory backend has no server"]]);
