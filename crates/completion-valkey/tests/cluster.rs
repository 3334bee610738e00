//! Cluster-only behaviour, on one throwaway Valkey 9.1 cluster per binary (3 primaries, one
//! replica each), while a writer commits completions one at a time:
//! - completions travel on sharded channels, one per partition, with no broadcast channel
//!   and no help from the periodic safety read;
//! - slots of the log move to another primary mid-stream;
//! - a write meets a slot half migrated (`ASK`);
//! - a primary is killed and its replica promoted mid-stream.
//!
//! Every stream (plain, filtered, resumable) must get every committed completion exactly
//! once, in order, and no gap. The tests that reshape the cluster take turns (a lock), so
//! each sees only its own fault.

mod common;

use std::time::Duration;

use common::cluster::{self, Cluster};
use completion_conformance::support::{
    assert_no_gap, assert_sequence, collect_in, commit_through_faults, create_and_complete, execution_id, ids_of,
    item_ids, join, namespace, spawn_item_reader, spawn_reader,
};
use completion_core::{CompletionBackend, EngineBackend, ExecutionId, NewExecution, ScannerFilter, StartFrom, Tags};
use completion_testserver::{ValkeyCluster, ValkeyClusterOptions, ValkeyFlavor};
use completion_valkey::{ValkeyBackend, ValkeyConfig};
use tokio::sync::Mutex;

/// Long enough that no test here is rescued by the periodic safety read.
const NO_SAFETY_NET: Duration = Duration::from_secs(3600);

/// Taken by the tests that change the cluster's shape.
static RESHAPING: Mutex<()> = Mutex::const_new(());

async fn the_cluster() -> Cluster {
    static CLUSTER: std::sync::OnceLock<ValkeyCluster> = std::sync::OnceLock::new();
    if let Some(c) = CLUSTER.get() {
        return Cluster::Shared(c);
    }
    tokio::task::spawn_blocking(|| {
        CLUSTER.get_or_init(|| {
            ValkeyCluster::start(ValkeyClusterOptions::default().flavor(ValkeyFlavor::Valkey).replicas_per_primary(1))
                .unwrap_or_else(|e| panic!("could not start the cluster: {e}"))
        });
    })
    .await
    .expect("starting the cluster panicked");
    Cluster::Shared(CLUSTER.get().expect("initialised above"))
}

async fn connect(config: ValkeyConfig) -> ValkeyBackend {
    ValkeyBackend::connect(config).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_channels_deliver_without_the_safety_net() {
    let cluster = the_cluster().await;
    let _turn = RESHAPING.lock().await;
    let backend = connect(cluster::config(&cluster, "sharded").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("sharded");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let channels = cluster::channels(&backend);
    assert_eq!(cluster.shard_subscribers(channels.clone()).await, 16, "one subscription per partition");
    let broadcast = format!("{}:completions", backend.config().key_prefix);
    let numsub = cluster.with(move |c| c.command_all(&["PUBSUB", "NUMSUB", &broadcast]).unwrap()).await;
    assert!(numsub.iter().flatten().all(|r| r.ends_with("\n0")), "no broadcast channel: {numsub:?}");
    let mut expected = Vec::new();
    for _ in 0..64 {
        expected.push(create_and_complete(&backend, &ns, &Tags::new()).await);
    }
    assert_eq!(ids_of(&collect_in(&mut stream, &ns, 64).await), expected, "in commit order, each once");
    assert_eq!(backend.stats().safety_reads, 0);
    // server_view asks each partition's shard: SHARDNUMSUB per channel, XLEN per log.
    let view = backend.server_view().await.expect("server view");
    assert_eq!(view.channels.len(), 16, "{view:?}");
    assert!(
        view.channels.iter().enumerate().all(|(p, c)| c.partition == Some(p as u16) && c.subscribers == 1),
        "{view:?}"
    );
    assert_eq!(view.subscribers(), 1);
    assert_eq!(view.log_entries(), 64, "{view:?}");
    assert!(view.partitions.iter().all(|p| (p.length == 0) == p.first_id.is_none()), "{view:?}");
    assert_eq!(view.library_version, Some(completion_valkey::LIBRARY_VERSION));
    drop(stream);
    common::wait_until("the sharded subscriptions are released", || {
        let (cluster, channels) = (cluster.clone(), channels.clone());
        async move { cluster.shard_subscribers(channels).await == 0 }
    })
    .await;
}

/// The partition of `id` (FNV-1a 64 of its bytes, modulo the partition count: the
/// documented storage format, see `docs/valkey.md`).
fn partition_of(id: &ExecutionId, partitions: u16) -> u16 {
    let hash =
        id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % u64::from(partitions)) as u16
}

/// The regression test of the stall (docs/server-facts.md, "fred 10.1"): a write to a new key
/// of a slot half migrated is answered `ASK` by the slot's owner. fred 10.1 follows it in a
/// loop that ends its routing task, after which every later command of the backend times out.
/// The write must wait out the migration, take effect once, and leave the backend working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_half_migrated_slot_waits_and_the_client_survives() {
    let cluster = the_cluster().await;
    let _turn = RESHAPING.lock().await;
    let backend = connect(cluster::config(&cluster, "ask")).await;
    let (prefix, partitions) = (backend.config().key_prefix.clone(), backend.config().partitions);
    let ns = namespace("ask");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let id = std::iter::repeat_with(|| execution_id("ask")).find(|id| partition_of(id, partitions) == 0).unwrap();
    let slot = cluster.with(move |c| c.slot_of(&cluster::log_key(&prefix, 0)).unwrap()).await;
    let (from, to) = cluster
        .with(move |c| {
            let from = c.owner_of(slot).unwrap();
            let to = *c.primaries().unwrap().iter().find(|&&n| n != from).expect("3 primaries");
            assert_eq!(c.begin_slot_migration(slot, to).unwrap(), Some(from));
            (from, to)
        })
        .await;
    // Commands the slot's owner refused (`ASK`, `TRYAGAIN`: a server counts each cluster
    // redirection as a rejected call of its command), summed over its commands.
    let refused = async |cluster: &Cluster| -> u64 {
        let info = cluster.with(move |c| c.command(from, &["INFO", "commandstats"]).unwrap()).await;
        info.lines().filter_map(|l| l.split_once("rejected_calls=")?.1.split(',').next()?.parse::<u64>().ok()).sum()
    };
    let refused_before = refused(&cluster).await;
    let writer = {
        let (backend, id, ns) = (backend.clone(), id.clone(), ns.clone());
        tokio::spawn(async move { backend.create_execution(NewExecution::new(id, ns)).await })
    };
    // Wait until the write met the half-migrated slot and was refused (it cannot succeed
    // before the migration finishes), however slow the machine: a readiness check.
    common::wait_until("the slot's owner to refuse the write", async || refused(&cluster).await > refused_before).await;
    assert!(!writer.is_finished(), "the write ended while the slot was half migrated: {:?}", writer.await);
    cluster.with(move |c| c.finish_slot_migration(slot, from, to).unwrap()).await;
    join(writer, "the write to the migrated slot").await.unwrap_or_else(|e| panic!("the write failed: {e}"));
    backend.complete(&id).await.unwrap_or_else(|e| panic!("complete({id}) failed: {e}"));
    let mut expected = vec![id];
    for _ in 0..8 {
        expected.push(create_and_complete(&backend, &ns, &Tags::new()).await);
    }
    assert_eq!(ids_of(&collect_in(&mut stream, &ns, expected.len()).await), expected, "each once, in commit order");
}

/// What reshapes the cluster while the writer writes.
#[derive(Clone, Copy, Debug)]
enum Reshape {
    /// The slots of partitions 0..4 move to another primary.
    MigrateSlots,
    /// The primary of partition 0 is killed and its replica takes over.
    FailOver,
}

async fn lose_nothing_while(reshape: Reshape, safety: Duration) {
    let cluster = the_cluster().await;
    let _turn = RESHAPING.lock().await;
    let backend = connect(cluster::config(&cluster, "reshape").with_safety_interval(safety)).await;
    let prefix = backend.config().key_prefix.clone();
    let ns = namespace("reshape");
    let marker = execution_id("marker");
    let plain = spawn_reader(backend.subscribe_completions().await.unwrap(), ns.clone(), marker.clone());
    let filtered = spawn_reader(
        backend.subscribe_completions_filtered(&ScannerFilter::new().with_namespace(ns.clone())).await.unwrap(),
        ns.clone(),
        marker.clone(),
    );
    let resumable = spawn_item_reader(
        backend.subscribe_from(StartFrom::Now, &ScannerFilter::new()).await.unwrap(),
        ns.clone(),
        marker.clone(),
    );
    let (total, strike_at) = (240, 80);
    let mut committed = Vec::with_capacity(total);
    let mut striking = None;
    for i in 0..total {
        if i == strike_at {
            let prefix = prefix.clone();
            // The reshaping runs alongside the writes: some are in flight when it strikes.
            let handle = cluster.clone();
            striking = Some(tokio::spawn(async move {
                handle
                    .with(move |c| -> Result<String, String> {
                        match reshape {
                            Reshape::MigrateSlots => {
                                let mut moved = Vec::new();
                                for p in 0..4 {
                                    let slot = c.slot_of(&cluster::log_key(&prefix, p)).map_err(|e| e.to_string())?;
                                    let from = c.owner_of(slot).map_err(|e| e.to_string())?;
                                    let primaries = c.primaries().map_err(|e| e.to_string())?;
                                    let to = *primaries.iter().find(|&&n| n != from).expect("3 primaries");
                                    let keys = c.migrate_slot(slot, to).map_err(|e| e.to_string())?;
                                    moved.push(format!("slot {slot}: node {from} -> {to} ({keys} keys)"));
                                }
                                Ok(moved.join(", "))
                            }
                            Reshape::FailOver => {
                                let slot = c.slot_of(&cluster::log_key(&prefix, 0)).map_err(|e| e.to_string())?;
                                let old = c.owner_of(slot).map_err(|e| e.to_string())?;
                                let new = c.fail_over(old).map_err(|e| e.to_string())?;
                                // Back as a replica of the new primary, for the next test.
                                c.start_node_again(old).map_err(|e| e.to_string())?;
                                Ok(format!("node {old} failed over to {new}"))
                            }
                        }
                    })
                    .await
            }));
            // Let the reshaping start before the next writes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let id = execution_id("exec");
        commit_through_faults(&backend, &ns, &id).await;
        committed.push(id);
    }
    let what = join(striking.expect("struck"), "reshaping").await.unwrap_or_else(|e| panic!("{reshape:?} failed: {e}"));
    // Writes after the reshaping, so that every partition is written on its new shard.
    for _ in 0..40 {
        let id = execution_id("after");
        commit_through_faults(&backend, &ns, &id).await;
        committed.push(id);
    }
    commit_through_faults(&backend, &ns, &marker).await;
    let context = format!("{reshape:?} ({what})");
    assert_sequence(&join(plain, "plain reader").await, &committed, &format!("plain stream, {context}"));
    assert_sequence(&join(filtered, "filtered reader").await, &committed, &format!("filtered stream, {context}"));
    let items = join(resumable, "resumable reader").await;
    assert_sequence(&item_ids(&items), &committed, &format!("resumable stream, {context}"));
    assert_no_gap(&items, &format!("resumable stream, {context}"));
}

/// Slots of the log move to another primary mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_migrated_mid_stream_lose_nothing() {
    // No safety read: the moved subscriptions are found through the topology change the
    // writer's `MOVED` reveals.
    lose_nothing_while(Reshape::MigrateSlots, NO_SAFETY_NET).await;
}

/// A primary is killed and its replica promoted mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_failed_over_mid_stream_loses_nothing() {
    lose_nothing_while(Reshape::FailOver, Duration::from_secs(1)).await;
}
