//! The `metrics` feature on a real server: the instance's metrics carry `backend=postgres`
//! and its `schema`, and after known traffic hold what `counters()` holds, with one write
//! sample per call and one delivery sample per delivered completion. Its own binary: it
//! installs the process-wide recorder.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;

use completion_conformance::support::{create, namespace, next_completion};
use completion_core::{CompletionBackend, EngineBackend, Reason, ScannerFilter, Tags};
use completion_postgres::{PostgresBackend, PostgresConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_latencies_reach_the_recorder_with_the_schema_label() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this binary");
    let schema = common::unique_schema("metrics");
    let url = common::shared_server().await.url();
    let config = PostgresConfig::from_url(url).with_schema(schema.clone()).with_retention_interval(None);
    let backend = PostgresBackend::connect(config).await.expect("connect");
    let ns = namespace("metrics");
    let other = namespace("other");
    let mut stream =
        backend.subscribe_completions_filtered(&ScannerFilter::new().with_namespace(ns.clone())).await.unwrap();
    let a = create(&backend, &ns, None, &Tags::new()).await;
    let b = create(&backend, &ns, None, &Tags::new()).await;
    let c = create(&backend, &other, None, &Tags::new()).await;
    backend.complete(&a).await.unwrap();
    backend.fail(&b, &Reason::new("no").unwrap()).await.unwrap();
    backend.complete(&c).await.unwrap();
    next_completion(&mut stream, "a").await;
    next_completion(&mut stream, "b").await;
    let snapshot = backend.counters();

    let values: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().labels().any(|l| l.key() == "schema" && l.value() == schema))
        .map(|(key, _, _, value)| {
            let op = key.key().labels().find(|l| l.key() == "op").map(|l| format!("/{}", l.value()));
            assert!(key.key().labels().any(|l| l.key() == "backend" && l.value() == "postgres"));
            (format!("{}{}", key.key().name(), op.unwrap_or_default()), value)
        })
        .collect();
    let counter = |name: &str| match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    let samples = |name: &str| match values.get(name) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|f| f.0).collect::<Vec<_>>(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter("completions_delivered_total"), 2);
    assert_eq!(snapshot.delivered, 2);
    for (field, value) in [
        ("reconnects", snapshot.reconnects),
        ("catch_up_reads", snapshot.catch_up_reads),
        ("gaps", snapshot.gaps),
        ("filtered_out", snapshot.filtered_out),
        ("malformed_messages", snapshot.malformed_messages),
        ("buffer_overflows", snapshot.buffer_overflows),
    ] {
        // The feed may count one more read or filtered event after the snapshot: never fewer.
        let metric = counter(&format!("completions_{field}_total"));
        assert!(metric >= value, "{field}: metric {metric} < counters() {value}");
    }
    assert!(matches!(values.get("completions_active_streams"), Some(DebugValue::Gauge(g)) if g.0 == 1.0));
    assert_eq!(samples("completions_write_duration_seconds/create").len(), 3);
    assert_eq!(samples("completions_write_duration_seconds/complete").len(), 2);
    assert_eq!(samples("completions_write_duration_seconds/fail").len(), 1);
    let delivery = samples("completions_delivery_latency_seconds");
    assert_eq!(delivery.len(), 2);
    assert!(delivery.iter().all(|s| (0.0..30.0).contains(s)), "{delivery:?}");
    drop(stream);
}
