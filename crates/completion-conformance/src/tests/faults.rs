//! Dropped connections and restarted servers cost latency, never events.

use super::*;

/// What goes wrong with the server while a test writes.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillConnections,
    RestartServer,
}

/// Writes `total` completions one at a time while `fault` strikes when the count reaches
/// each of `at`; three streams opened before (plain, filtered, resumable) must each get
/// every committed completion exactly once, in order, with no gap.
async fn lose_nothing_through_faults(harness: &dyn Harness, fault: Fault, total: usize, at: &[usize]) {
    let capabilities = harness.capabilities();
    let supported = match fault {
        Fault::KillConnections => capabilities.kill_connections,
        Fault::RestartServer => capabilities.restart_server,
    };
    assert!(supported, "the harness does not support {fault:?}: mark this test ignored for this backend instead");
    let b = backend(harness, BackendOptions::default().dedicated_server()).await;
    let ns = namespace("faults");
    let marker = execution_id("marker");
    let plain = spawn_reader(subscribe(&b).await, ns.clone(), marker.clone());
    let filtered = spawn_reader(subscribe_filtered(&b, &ns_filter(&ns)).await, ns.clone(), marker.clone());
    let resumable =
        spawn_item_reader(subscribe_from(&b, StartFrom::Now, &ScannerFilter::new()).await, ns.clone(), marker.clone());
    // Kept open to the end: the feed must live until it has seen its reconnect (asserted
    // below), which can come after every event already arrived by another path.
    let keep_alive = subscribe(&b).await;
    let mut committed = Vec::with_capacity(total);
    let mut striking: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    for i in 0..total {
        if at.contains(&i) {
            if let Some(previous) = striking.take() {
                join(previous, "fault").await.unwrap_or_else(|e| panic!("{fault:?} hook failed: {e}"));
            }
            let hooks = b.hooks.clone();
            // The fault runs alongside the writes: some are in flight when it strikes.
            striking = Some(tokio::spawn(async move {
                match fault {
                    Fault::KillConnections => hooks.kill_connections().await,
                    Fault::RestartServer => hooks.restart_server().await,
                }
                .map_err(|e| e.to_string())
            }));
        }
        let id = execution_id("exec");
        commit_through_faults(&*b.engine, &ns, &id).await;
        committed.push(id);
    }
    if let Some(last) = striking.take() {
        join(last, "fault").await.unwrap_or_else(|e| panic!("{fault:?} hook failed: {e}"));
    }
    commit_through_faults(&*b.engine, &ns, &marker).await;
    assert_sequence(&join(plain, "plain reader").await, &committed, &format!("plain stream through {fault:?}"));
    assert_sequence(
        &join(filtered, "filtered reader").await,
        &committed,
        &format!("filtered stream through {fault:?}"),
    );
    let items = join(resumable, "resumable reader").await;
    assert_sequence(&item_ids(&items), &committed, &format!("resumable stream through {fault:?}"));
    assert_no_gap(&items, &format!("resumable stream through {fault:?}"));
    // The fault must have hit the subscription side: it reconnects (the count may come after
    // the last event, which catch-up reads or other nodes can deliver first).
    poll_until(&format!("the subscription side to reconnect after {fault:?}"), Duration::from_millis(10), || async {
        b.completions.counters().reconnects > 0
    })
    .await;
    drop(keep_alive);
}

/// The instance's server connections are killed three times while a writer commits
/// completions: every committed completion reaches every stream exactly once, in order.
pub async fn connections_killed_mid_stream_lose_nothing(harness: &dyn Harness) {
    lose_nothing_through_faults(harness, Fault::KillConnections, 300, &[75, 150, 225]).await;
}

/// The instance's server is restarted twice while a writer commits completions: every
/// committed completion reaches every stream (a resumable one included) exactly once, in
/// order.
pub async fn server_restarted_mid_stream_loses_nothing(harness: &dyn Harness) {
    lose_nothing_through_faults(harness, Fault::RestartServer, 200, &[50, 130]).await;
}
