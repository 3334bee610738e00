//! Figure 7 (docs/benchmarks.md, "How it is measured"): many concurrent waits on one
//! [`Waiter`] (docs/waiting.md).
//!
//! `waits` executions are created and one task per execution waits on it (as an engine that
//! awaits each of its tasks would); the live heap grows by what each pending wait holds (its
//! task, its future, the waiter's table entry and channel). Then `probes` of them are
//! completed one at a time, each timed from the `complete` call to the wake-up of its wait,
//! interleaved with as many completions timed to a plain stream of the same backend. Last,
//! every wait is dropped and the waiter must hold no entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use completion_core::{CompletionBackend, EngineBackend, ExecutionId, Namespace, NewExecution, Waiter};
use futures_util::StreamExt;
use serde::Serialize;

use crate::heap;
use crate::stats::Latency;

/// What figure 7 measured.
#[derive(Debug, Serialize)]
pub struct WaitsFigure {
    /// Waits pending at once.
    pub waits: usize,
    /// Live heap growth per pending wait, bytes.
    pub heap_per_wait: f64,
    /// `complete` call -> the wait's wake-up, over `probes` completions.
    pub wake: Latency,
    /// `complete` call -> the event on a plain stream, interleaved with the wake-ups.
    pub stream: Latency,
    /// Seconds to register the waits (each looks its execution up once).
    pub register_seconds: f64,
}

/// Measures figure 7 on `completions`/`engine`.
pub async fn measure(
    completions: Arc<dyn CompletionBackend>,
    engine: Arc<dyn EngineBackend>,
    run: &str,
    waits: usize,
    probes: usize,
) -> Result<WaitsFigure, String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("waits figure, {what}: {err}");
    let ns = Namespace::new(format!("{run}-waits")).map_err(|err| e("namespace", &err))?;
    let ids: Vec<ExecutionId> = (0..waits)
        .map(|i| ExecutionId::new(format!("{run}-wait-{i}")))
        .collect::<Result<_, _>>()
        .map_err(|err| e("ids", &err))?;
    for id in &ids {
        engine.create_execution(NewExecution::new(id.clone(), ns.clone())).await.map_err(|err| e("create", &err))?;
    }
    let waiter = Arc::new(Waiter::new(completions.clone(), engine.clone()).await.map_err(|err| e("waiter", &err))?);
    let before = heap::live_bytes();
    let started = Instant::now();
    // Each task reports its wake-up instant.
    let mut tasks = Vec::with_capacity(waits);
    for id in &ids {
        let (waiter, id) = (waiter.clone(), id.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let result = waiter.wait(&id, Duration::from_secs(600)).await;
            let _ = tx.send((Instant::now(), result.is_ok()));
        });
        tasks.push((task, Some(rx)));
    }
    while waiter.pending() < waits {
        // Registration happens on each task's first poll: let them run.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("waits figure: only {} of {waits} waits registered", waiter.pending()));
        }
    }
    let register_seconds = started.elapsed().as_secs_f64();
    let heap_per_wait = heap::live_bytes().saturating_sub(before) as f64 / waits as f64;

    let mut stream = completions.subscribe_completions().await.map_err(|err| e("subscribe", &err))?;
    let (mut wake, mut plain) = (Vec::with_capacity(probes), Vec::with_capacity(probes));
    let probes = probes.min(waits);
    for (i, id) in ids.iter().take(probes).enumerate() {
        // The waited-on execution, then one more for the plain stream, alternately.
        let sent = Instant::now();
        engine.complete(id).await.map_err(|err| e("complete", &err))?;
        let rx = tasks[i].1.take().ok_or("waits figure: a probe ran twice")?;
        let (woke, ok) = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "waits figure: a wait did not wake within 30 s".to_string())?
            .map_err(|_| "waits figure: a wait task ended without an answer".to_string())?;
        if !ok {
            return Err("waits figure: a wait answered with an error".to_string());
        }
        wake.push(woke.duration_since(sent));
        let other = ExecutionId::new(format!("{run}-plain-{i}")).map_err(|err| e("id", &err))?;
        engine.create_execution(NewExecution::new(other.clone(), ns.clone())).await.map_err(|err| e("create", &err))?;
        let sent = Instant::now();
        engine.complete(&other).await.map_err(|err| e("complete", &err))?;
        loop {
            let c = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .map_err(|_| "waits figure: the plain stream stalled".to_string())?
                .ok_or("waits figure: the plain stream ended")?;
            if c.execution_id() == &other {
                plain.push(sent.elapsed());
                break;
            }
        }
    }
    for (task, _) in &tasks {
        task.abort();
    }
    for (task, _) in tasks {
        let _ = task.await;
    }
    if waiter.pending() != 0 {
        return Err(format!("waits figure: {} entries left after every wait was dropped", waiter.pending()));
    }
    Ok(WaitsFigure {
        waits,
        heap_per_wait,
        wake: Latency::from_samples(&mut wake),
        stream: Latency::from_samples(&mut plain),
        register_seconds,
    })
}
