//! The `metrics` feature: after known traffic, every counter of `CounterSnapshot` and the
//! write and delivery histograms read back from a debugging recorder with the values the
//! traffic implies (and the same values as `counters()`).
#![cfg(feature = "metrics")]

use std::collections::HashMap;

use completion_core::{
    CompletionBackend, EngineBackend, EngineError, ExecutionId, Namespace, NewExecution, Reason, Retention,
    ScannerFilter, StartFrom, StreamItem,
};
use completion_memory::{MemoryBackend, MemoryConfig};
use futures_util::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// `name{label=value,...}` (labels sorted) -> value.
fn read(recorder: &metrics_util::debugging::Snapshotter) -> HashMap<String, DebugValue> {
    recorder
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(values: &HashMap<String, DebugValue>, name: &str) -> u64 {
    match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?} in {values:?}"),
    }
}

fn gauge(values: &HashMap<String, DebugValue>, name: &str) -> f64 {
    match values.get(name) {
        Some(DebugValue::Gauge(n)) => n.0,
        other => panic!("{name}: {other:?} in {values:?}"),
    }
}

fn histogram(values: &HashMap<String, DebugValue>, name: &str) -> Vec<f64> {
    match values.get(name) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|f| f.0).collect(),
        other => panic!("{name}: {other:?} in {values:?}"),
    }
}

#[tokio::test]
async fn every_counter_and_both_latencies_reach_the_recorder() -> Result<(), EngineError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The handles are made with the instance: only its construction needs the recorder.
    let backend = metrics::with_local_recorder(&recorder, || {
        MemoryBackend::with_config(MemoryConfig::default().with_retention(Retention::events(3)))
    });
    let a = Namespace::new("a")?;
    let b = Namespace::new("b")?;
    let mut all = backend.subscribe_completions().await?;
    let mut only_a = backend.subscribe_completions_filtered(&ScannerFilter::new().with_namespace(a.clone())).await?;
    let ids: Vec<ExecutionId> = (0..5).map(|i| ExecutionId::new(format!("x{i}"))).collect::<Result<_, _>>()?;
    for (i, id) in ids.iter().enumerate() {
        let ns = if i < 3 { a.clone() } else { b.clone() };
        backend.create_execution(NewExecution::new(id.clone(), ns)).await?;
    }
    for id in &ids[..4] {
        backend.complete(id).await?;
    }
    backend.fail(&ids[4], &Reason::new("broken")?).await?;
    assert!(matches!(backend.complete(&ids[0]).await, Err(EngineError::AlreadyTerminal { .. })));
    for _ in 0..5 {
        all.next().await.expect("a completion");
    }
    for _ in 0..3 {
        only_a.next().await.expect("a completion");
    }
    // From the earliest retained event (3 of 5 kept): a catch-up read delivers 3 more.
    let mut late = backend.subscribe_from(StartFrom::Earliest, &ScannerFilter::new()).await?;
    for _ in 0..3 {
        assert!(matches!(late.next().await, Some(StreamItem::Completion(_))));
    }
    drop(late);
    drop(only_a);

    let snapshot = backend.counters();
    let values = read(&snapshotter);
    let l = "backend=memory";
    assert_eq!(counter(&values, &format!("completions_delivered_total{{{l}}}")), 5 + 3 + 3);
    assert_eq!(counter(&values, &format!("completions_filtered_out_total{{{l}}}")), 2);
    assert_eq!(gauge(&values, &format!("completions_active_streams{{{l}}}")), 1.0);
    assert_eq!(gauge(&values, &format!("completions_buffer_high_water{{{l}}}")), 5.0);
    // Every counter of the snapshot, under its metric name.
    let pairs = [
        ("reconnects", snapshot.reconnects),
        ("catch_up_reads", snapshot.catch_up_reads),
        ("gaps", snapshot.gaps),
        ("filtered_out", snapshot.filtered_out),
        ("malformed_messages", snapshot.malformed_messages),
        ("buffer_overflows", snapshot.buffer_overflows),
        ("delivered", snapshot.delivered),
    ];
    for (field, value) in pairs {
        assert_eq!(counter(&values, &format!("completions_{field}_total{{{l}}}")), value, "{field}");
    }
    assert!(snapshot.catch_up_reads >= 1, "the Earliest stream read the log");
    assert_eq!(gauge(&values, &format!("completions_buffer_high_water{{{l}}}")), snapshot.buffer_high_water as f64);
    assert_eq!(gauge(&values, &format!("completions_active_streams{{{l}}}")), snapshot.active_streams as f64);

    let writes = |op: &str| histogram(&values, &format!("completions_write_duration_seconds{{{l},op={op}}}"));
    assert_eq!(writes("create").len(), 5);
    assert_eq!(writes("complete").len(), 5, "four completions and the refused fifth: every call is timed");
    assert_eq!(writes("fail").len(), 1);
    assert!(writes("create").iter().all(|s| (0.0..5.0).contains(s)));
    let delivery = histogram(&values, &format!("completions_delivery_latency_seconds{{{l}}}"));
    assert_eq!(delivery.len(), 11, "one sample per delivered completion");
    assert!(delivery.iter().all(|s| (0.0..5.0).contains(s)), "{delivery:?}");
    drop(all);
    Ok(())
}

#[tokio::test]
async fn a_gap_is_counted_under_its_metric() -> Result<(), EngineError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let backend = metrics::with_local_recorder(&recorder, || {
        MemoryBackend::with_config(MemoryConfig::default().with_retention(Retention::events(2)))
    });
    let ns = Namespace::new("n")?;
    let mut cursor = None;
    let mut first = backend.subscribe_completions().await?;
    for i in 0..4 {
        let id = ExecutionId::new(format!("g{i}"))?;
        backend.create_execution(NewExecution::new(id.clone(), ns.clone())).await?;
        backend.complete(&id).await?;
        let c = first.next().await.expect("a completion");
        cursor.get_or_insert(c.cursor().clone());
    }
    drop(first);
    let mut late = backend.subscribe_from(StartFrom::After(cursor.expect("a cursor")), &ScannerFilter::new()).await?;
    assert!(matches!(late.next().await, Some(StreamItem::Gap(_))));
    let values = read(&snapshotter);
    assert_eq!(counter(&values, "completions_gaps_total{backend=memory}"), 1);
    assert_eq!(backend.counters().gaps, 1);
    Ok(())
}
