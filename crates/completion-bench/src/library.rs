//! The library under test, measured through the public traits only: what an engine would see.

use std::sync::Arc;
use std::time::{Duration, Instant};

use completion_core::{CompletionBackend, CompletionStream, EngineBackend, ExecutionId, Namespace, NewExecution};
use futures_util::StreamExt;

use crate::stats::{Probe, Sample};
use crate::writers::spread;

/// How long one event may take to arrive before the run is declared broken.
const EVENT_DEADLINE: Duration = Duration::from_secs(30);

fn err(op: &str, e: impl std::fmt::Display) -> String {
    format!("{op}: {e}")
}

fn id(run: &str, what: &str, i: usize) -> Result<ExecutionId, String> {
    ExecutionId::new(format!("{run}-{what}-{i}")).map_err(|e| err("execution id", e))
}

/// End-to-end latency: from the call of `complete` to the event arriving on a stream opened
/// beforehand, one completion at a time; also how long the `complete` call itself took (its
/// reply), to split the latency between the write and the delivery. Sampled by
/// [`crate::stats::interleave`] alongside a raw baseline.
pub struct LatencyProbe<'a, B> {
    backend: &'a B,
    stream: CompletionStream,
    namespace: Namespace,
    run: String,
    /// The JSON size of the first delivered payload (0 before), so that the raw baselines
    /// can send as many bytes.
    pub payload_bytes: usize,
}

impl<'a, B: CompletionBackend + EngineBackend> LatencyProbe<'a, B> {
    /// Opens the stream the samples are read from.
    pub async fn new(backend: &'a B, run: &str) -> Result<Self, String> {
        let namespace = Namespace::new("bench").map_err(|e| err("namespace", e))?;
        let stream = backend.subscribe_completions().await.map_err(|e| err("subscribe", e))?;
        Ok(Self { backend, stream, namespace, run: run.to_string(), payload_bytes: 0 })
    }
}

impl<B: CompletionBackend + EngineBackend> Probe for LatencyProbe<'_, B> {
    async fn sample(&mut self, i: usize) -> Result<Sample, String> {
        let id = id(&self.run, "lat", i)?;
        self.backend
            .create_execution(NewExecution::new(id.clone(), self.namespace.clone()))
            .await
            .map_err(|e| err("create", e))?;
        let started = Instant::now();
        self.backend.complete(&id).await.map_err(|e| err("complete", e))?;
        let call = started.elapsed();
        loop {
            let event = tokio::time::timeout(EVENT_DEADLINE, self.stream.next())
                .await
                .map_err(|_| format!("completion of {id} did not arrive within {EVENT_DEADLINE:?}"))?
                .ok_or_else(|| "the completion stream ended".to_string())?;
            if event.execution_id() == &id {
                let end_to_end = started.elapsed();
                if self.payload_bytes == 0 {
                    self.payload_bytes = serde_json::to_vec(&event).map_err(|e| err("payload size", e))?.len();
                }
                return Ok(Sample { end_to_end, call });
            }
        }
    }
}

/// Creates and completes one execution, unmeasured (to see what the backend sends).
pub async fn complete_one<B: EngineBackend>(backend: &B, run: &str) -> Result<(), String> {
    let namespace = Namespace::new("bench").map_err(|e| err("namespace", e))?;
    let id = id(run, "probe", 0)?;
    backend.create_execution(NewExecution::new(id.clone(), namespace)).await.map_err(|e| err("create", e))?;
    backend.complete(&id).await.map_err(|e| err("complete", e))
}

/// Terminal writes per second with `writers` concurrent writers, over `n` executions
/// created beforehand (not timed), with one subscriber draining the stream as an engine
/// would. Returns completions per second.
pub async fn throughput<B>(backend: Arc<B>, run: &str, n: usize, writers: usize) -> Result<f64, String>
where
    B: CompletionBackend + EngineBackend,
{
    let namespace = Namespace::new("bench").map_err(|e| err("namespace", e))?;
    let what = format!("tp{writers}");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = id(run, &what, i)?;
        backend
            .create_execution(NewExecution::new(id.clone(), namespace.clone()))
            .await
            .map_err(|e| err("create", e))?;
        ids.push(id);
    }
    let mut stream = backend.subscribe_completions().await.map_err(|e| err("subscribe", e))?;
    let drain = tokio::spawn(async move {
        let mut seen = 0usize;
        while seen < n {
            match tokio::time::timeout(EVENT_DEADLINE, stream.next()).await {
                Ok(Some(_)) => seen += 1,
                _ => break,
            }
        }
        seen
    });
    let ids = Arc::new(ids);
    let started = Instant::now();
    spread!(writers, n, [backend, ids], |_, i| backend.complete(&ids[i]).await.map_err(|e| err("complete", e))).await?;
    let elapsed = started.elapsed();
    // Not part of the figure: only a check that every completion was delivered.
    let seen = drain.await.map_err(|e| err("drain task", e))?;
    if seen < n {
        eprintln!("warning: {run} throughput x{writers}: the subscriber saw {seen} of {n} completions");
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}
