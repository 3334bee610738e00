//! The throwaway cluster, on real servers: formed and ready, keys land where the slot map
//! says, a slot migrates with its keys (and answers `ASK` half way), a primary fails over to its replica, clients are
//! killed by name on every node, and nothing is left running after drop.

use completion_testserver::{CLUSTER_SLOTS, ValkeyCluster, ValkeyClusterOptions, ValkeyFlavor};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !matches!(s.rsplit_once(')').map(|(_, r)| r.trim_start().as_bytes()[0]), Some(b'Z' | b'X')))
}

fn exercise(flavor: ValkeyFlavor) {
    let cluster = ValkeyCluster::start(ValkeyClusterOptions::default().flavor(flavor).replicas_per_primary(1)).unwrap();
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.primaries().unwrap(), [0, 1, 2]);
    let url = cluster.url();
    assert!(url.starts_with("redis-cluster://127.0.0.1:") && url.matches("node=").count() == 5, "{url}");

    // A key is served by the owner of its slot, and only there (MOVED elsewhere).
    let slot = cluster.slot_of("{k}a").unwrap();
    assert!(slot < CLUSTER_SLOTS);
    let owner = cluster.owner_of(slot).unwrap();
    cluster.command(owner, &["SET", "{k}a", "1"]).unwrap();
    cluster.command(owner, &["SET", "{k}b", "2"]).unwrap();
    let other = (owner + 1) % 3;
    let err = cluster.command(other, &["GET", "{k}a"]).unwrap_err().to_string();
    assert!(err.contains("MOVED"), "{err}");

    // Half way through a migration, the owner still serves the keys it holds and sends a
    // client `ASK`ing the importing node for a key it does not hold.
    assert_eq!(cluster.begin_slot_migration(slot, other).unwrap(), Some(owner));
    assert_eq!(cluster.command(owner, &["GET", "{k}a"]).unwrap(), "1");
    let err = cluster.command(owner, &["SET", "{k}new", "3"]).unwrap_err().to_string();
    assert!(err.contains("ASK"), "{err}");
    assert_eq!(cluster.owner_of(slot).unwrap(), owner, "the slot map has not changed yet");
    // Migration moves the keys and the ownership, on every node's map.
    assert_eq!(cluster.finish_slot_migration(slot, owner, other).unwrap(), 2);
    assert_eq!(cluster.begin_slot_migration(slot, other).unwrap(), None, "moved already");
    assert_eq!(cluster.migrate_slot(slot, other).unwrap(), 0);
    assert_eq!(cluster.owner_of(slot).unwrap(), other);
    assert_eq!(cluster.command(other, &["GET", "{k}b"]).unwrap(), "2");
    assert!(cluster.command(owner, &["GET", "{k}a"]).unwrap_err().to_string().contains("MOVED"));

    // Failover: the replica of the slot's owner takes over, with the data.
    let replica = cluster.replica_of(other).unwrap().expect("every primary has a replica");
    assert!(replica >= 3);
    assert_eq!(cluster.fail_over(other).unwrap(), replica);
    assert!(!cluster.is_alive(other));
    assert_eq!(cluster.owner_of(slot).unwrap(), replica);
    assert_eq!(cluster.command(replica, &["GET", "{k}a"]).unwrap(), "1");
    cluster.start_node_again(other).unwrap();
    assert!(!cluster.primaries().unwrap().contains(&other), "the old primary came back as a replica");

    // Clients are found and killed by name on every node.
    for i in 0..3 {
        assert_eq!(cluster.command(i, &["CLIENT", "SETNAME", "victim"]).unwrap(), "OK");
    }
    // Each raw command runs on a connection of its own: none of them is left to kill.
    assert_eq!(cluster.kill_clients_named(&["victim".to_string()]).unwrap(), 0);

    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 6);
    drop(cluster);
    assert!(pids.iter().all(|&p| !alive(p)), "every node stopped on drop");
}

#[test]
fn valkey_cluster_forms_migrates_and_fails_over() {
    exercise(ValkeyFlavor::Valkey);
}

#[test]
fn redis_cluster_forms_migrates_and_fails_over() {
    exercise(ValkeyFlavor::Redis);
}

#[test]
fn restart_all_keeps_data_with_persistence() {
    let cluster = ValkeyCluster::start(ValkeyClusterOptions::default().primaries(2).persistence(true)).unwrap();
    let slot = cluster.slot_of("kept").unwrap();
    let owner = cluster.owner_of(slot).unwrap();
    cluster.command(owner, &["SET", "kept", "yes"]).unwrap();
    cluster.restart_all().unwrap();
    assert_eq!(cluster.owner_of(slot).unwrap(), owner);
    assert_eq!(cluster.command(owner, &["GET", "kept"]).unwrap(), "yes");
    assert!(ValkeyCluster::start(ValkeyClusterOptions::default().primaries(0)).is_err());
}
