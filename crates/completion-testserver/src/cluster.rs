//! Throwaway Valkey/Redis Cluster: N primaries (default 3), optionally replicas, from the
//! same binaries as [`ValkeyServer`], and helpers to break and reshape it in tests.
//!
//! [`ValkeyCluster::start`] starts every node (a [`ValkeyServer`] with `cluster-enabled yes`
//! and a cluster bus port of its own), splits the 16384 slots evenly over the primaries
//! (`CLUSTER ADDSLOTSRANGE`), introduces the nodes (`CLUSTER MEET`), attaches the replicas
//! (`CLUSTER REPLICATE`), and returns once the cluster is ready: every live node reports
//! `cluster_state:ok` and the same slot → primary map, and every replica's link to its
//! primary is up. Readiness is polled, never slept for. Each node stops on drop and dies with
//! this process, as a standalone server does.
//!
//! Test helpers: [`ValkeyCluster::migrate_slot`] (the classic `SETSLOT IMPORTING/MIGRATING`,
//! `MIGRATE`, `SETSLOT NODE` protocol, which both Redis 7.0 and Valkey run),
//! [`ValkeyCluster::fail_over`] (once its replica caught up, kill a primary and promote the
//! replica with `CLUSTER FAILOVER FORCE`, no waiting for the node timeout),
//! [`ValkeyCluster::restart_all`],
//! [`ValkeyCluster::kill_clients_named`].
//!
//! Limits: loopback only; no TLS; a node's cluster bus port is picked when it first starts
//! (taken meanwhile: picked again, up to 4 tries) and kept across restarts (taken by then:
//! starting that node again fails).

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::process::free_port;
use crate::{Reply, ServerError, ValkeyFlavor, ValkeyOptions, ValkeyServer};

/// Slots of a Valkey/Redis cluster.
pub const CLUSTER_SLOTS: u16 = 16384;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(20);
/// Tries to start a node when its cluster bus port was taken meanwhile.
const BUS_PORT_ATTEMPTS: usize = 4;

/// How to start a [`ValkeyCluster`]; build it with the setters from `default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ValkeyClusterOptions {
    /// How every node is started (flavor, persistence, binary, extra settings, startup
    /// timeout), as for a standalone server; the cluster settings are added to it. Default:
    /// [`ValkeyOptions::default`] with persistence off (a restart wipes the node's data; its
    /// cluster configuration, `nodes.conf`, is always kept).
    pub node: ValkeyOptions,
    /// Primaries, each owning an even share of the slots. Default 3.
    pub primaries: usize,
    /// Replicas per primary. Default 0 (one is needed for [`ValkeyCluster::fail_over`]).
    pub replicas_per_primary: usize,
    /// `cluster-node-timeout`. Default 2 s (short: failed nodes are noticed quickly).
    pub node_timeout: Duration,
}

impl Default for ValkeyClusterOptions {
    fn default() -> Self {
        Self {
            node: ValkeyOptions::default().persistence(false),
            primaries: 3,
            replicas_per_primary: 0,
            node_timeout: Duration::from_secs(2),
        }
    }
}

impl ValkeyClusterOptions {
    /// Sets [`Self::node`].
    pub fn node(mut self, node: ValkeyOptions) -> Self {
        self.node = node;
        self
    }

    /// Sets the nodes' [`ValkeyOptions::flavor`].
    pub fn flavor(mut self, flavor: ValkeyFlavor) -> Self {
        self.node = self.node.flavor(flavor);
        self
    }

    /// Sets the nodes' [`ValkeyOptions::persistence`].
    pub fn persistence(mut self, on: bool) -> Self {
        self.node = self.node.persistence(on);
        self
    }

    /// Sets [`Self::primaries`].
    pub fn primaries(mut self, n: usize) -> Self {
        self.primaries = n;
        self
    }

    /// Sets [`Self::replicas_per_primary`].
    pub fn replicas_per_primary(mut self, n: usize) -> Self {
        self.replicas_per_primary = n;
        self
    }

    /// Sets [`Self::node_timeout`].
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }
}

/// A throwaway cluster. Nodes are numbered from 0: the primaries first (as started), then
/// the replicas; roles change with [`Self::fail_over`], so ask [`Self::primaries`].
pub struct ValkeyCluster {
    nodes: Vec<ValkeyServer>,
    ids: Vec<String>,
    timeout: Duration,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    /// The primary's id for a replica, `-` for a primary.
    primary: String,
}

impl ValkeyCluster {
    /// Starts the nodes and forms the cluster (see the module docs).
    pub fn start(opts: ValkeyClusterOptions) -> Result<Self, ServerError> {
        if opts.primaries == 0 {
            return Err(ServerError::Setup {
                what: "starting a cluster".into(),
                detail: "needs 1 primary or more".into(),
            });
        }
        let total = opts.primaries * (1 + opts.replicas_per_primary);
        let timeout = opts.node.startup_timeout;
        let node_options = |bus_port: u16| -> ValkeyOptions {
            let mut o = opts.node.clone();
            // The caller's extra settings go last, so they can override the cluster's.
            let extra = std::mem::take(&mut o.config);
            o = o
                .config("cluster-enabled", "yes")
                .config("cluster-config-file", "nodes.conf")
                .config("cluster-port", bus_port.to_string())
                .config("cluster-node-timeout", opts.node_timeout.as_millis().max(100).to_string())
                // Other shards keep serving while one is down (tests kill primaries).
                .config("cluster-require-full-coverage", "no")
                // A killed primary must not wait for its replicas to catch up.
                .config("shutdown-timeout", "0");
            o.config.extend(extra);
            o
        };
        // The client port is retried by `ValkeyServer::start`, the bus port here: it was free
        // when picked, but another process (or a node starting alongside) may take it first.
        let start_node = || -> Result<(ValkeyServer, u16), ServerError> {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let bus_port = free_port()?;
                match ValkeyServer::start(node_options(bus_port)) {
                    Ok(node) => return Ok((node, bus_port)),
                    Err(ServerError::Exited { log, .. })
                        if attempt < BUS_PORT_ATTEMPTS && log.contains("Address already in use") => {}
                    Err(e) => return Err(e),
                }
            }
        };
        // Start them side by side: each start waits for its own readiness.
        let started: Vec<Result<(ValkeyServer, u16), ServerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..total).map(|_| scope.spawn(start_node)).collect();
            handles.into_iter().map(|h| h.join().expect("starting a node panicked")).collect()
        });
        let (nodes, bus_ports): (Vec<ValkeyServer>, Vec<u16>) =
            started.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
        let ids = nodes.iter().map(|n| n.command(&["CLUSTER", "MYID"])).collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { nodes, ids, timeout };
        let share = usize::from(CLUSTER_SLOTS) / opts.primaries;
        for p in 0..opts.primaries {
            let first = p * share;
            let last = if p + 1 == opts.primaries { usize::from(CLUSTER_SLOTS) - 1 } else { first + share - 1 };
            cluster.command(p, &["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()])?;
        }
        for (node, bus) in cluster.nodes.iter().zip(&bus_ports).skip(1) {
            // The bus port is not the default port + 10000 (that may be out of range or taken).
            cluster.command(0, &["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string(), &bus.to_string()])?;
        }
        cluster.wait("every node knows every other", || {
            Ok((0..total).all(|i| {
                cluster.node_lines(i).is_ok_and(|lines| {
                    lines.len() == total && lines.iter().all(|l| !l.flags.iter().any(|f| f == "handshake"))
                })
            }))
        })?;
        for r in 0..opts.primaries * opts.replicas_per_primary {
            let (replica, primary) = (opts.primaries + r, r % opts.primaries);
            cluster.command(replica, &["CLUSTER", "REPLICATE", &cluster.ids[primary]])?;
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// A URL naming every node: `redis-cluster://127.0.0.1:P0?node=127.0.0.1:P1&node=...`.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(ValkeyServer::port);
        let first = ports.next().unwrap_or_default();
        let others: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        if others.is_empty() {
            format!("redis-cluster://127.0.0.1:{first}")
        } else {
            format!("redis-cluster://127.0.0.1:{first}?{}", others.join("&"))
        }
    }

    /// Every node, primaries first (as started).
    pub fn nodes(&self) -> &[ValkeyServer] {
        &self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &ValkeyServer {
        &self.nodes[i]
    }

    /// The cluster node id of node `i`.
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The flavor of the nodes.
    pub fn flavor(&self) -> ValkeyFlavor {
        self.nodes[0].flavor()
    }

    /// Whether node `i` runs (not killed).
    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].pid().is_some()
    }

    /// One command on node `i` (see [`ValkeyServer::command`]).
    pub fn command(&self, i: usize, args: &[&str]) -> Result<String, ServerError> {
        self.nodes[i].command(args)
    }

    /// The same command on every live node; the replies in node order (`None`: node down).
    pub fn command_all(&self, args: &[&str]) -> Result<Vec<Option<String>>, ServerError> {
        (0..self.nodes.len())
            .map(|i| if self.is_alive(i) { self.command(i, args).map(Some) } else { Ok(None) })
            .collect()
    }

    fn any_live(&self) -> Result<usize, ServerError> {
        (0..self.nodes.len()).find(|&i| self.is_alive(i)).ok_or_else(|| ServerError::Setup {
            what: "talking to the cluster".into(),
            detail: "every node is down".into(),
        })
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> Result<u16, ServerError> {
        let reply = self.command(self.any_live()?, &["CLUSTER", "KEYSLOT", key])?;
        reply.parse().map_err(|_| ServerError::Protocol(format!("CLUSTER KEYSLOT answered `{reply}`")))
    }

    /// The node that owns `slot`, as a live node sees it.
    pub fn owner_of(&self, slot: u16) -> Result<usize, ServerError> {
        let map = self.slot_map(self.any_live()?)?;
        map.iter()
            .find(|((first, last), _)| (*first..=*last).contains(&slot))
            .and_then(|(_, port)| self.index_of_port(*port))
            .ok_or_else(|| ServerError::Protocol(format!("no node owns slot {slot}")))
    }

    /// The current primaries that own slots (node indexes, ascending).
    pub fn primaries(&self) -> Result<Vec<usize>, ServerError> {
        let map = self.slot_map(self.any_live()?)?;
        let mut owners: Vec<usize> = map.values().filter_map(|port| self.index_of_port(*port)).collect();
        owners.sort_unstable();
        owners.dedup();
        Ok(owners)
    }

    /// A live replica of `primary`, as `primary`'s peers see it.
    pub fn replica_of(&self, primary: usize) -> Result<Option<usize>, ServerError> {
        let lines = self.node_lines(self.any_live()?)?;
        Ok(lines
            .iter()
            .filter(|n| n.primary == self.ids[primary] && !n.flags.iter().any(|f| f.starts_with("fail")))
            .find_map(|n| self.index_of_port(n.port).filter(|&i| self.is_alive(i))))
    }

    /// Moves `slot`, and every key in it, to primary `to`; returns the keys moved. Returns
    /// once every live node agrees on the new owner. Writes to the slot meanwhile may be
    /// answered `ASK` (clients follow it) or `TRYAGAIN` (clients retry). The steps are
    /// [`Self::begin_slot_migration`] then [`Self::finish_slot_migration`].
    pub fn migrate_slot(&self, slot: u16, to: usize) -> Result<usize, ServerError> {
        match self.begin_slot_migration(slot, to)? {
            Some(from) => self.finish_slot_migration(slot, from, to),
            None => Ok(0),
        }
    }

    /// Starts moving `slot` to primary `to` and leaves it half way: `to` imports it (`CLUSTER
    /// SETSLOT IMPORTING`, first), its owner migrates it (`MIGRATING`), no key has moved yet.
    /// The owner then answers `ASK` for a key it does not hold, and `TRYAGAIN` for a call on
    /// several keys of which it holds some. Returns the owner, or `None` when `to` owns the
    /// slot already (nothing to do).
    pub fn begin_slot_migration(&self, slot: u16, to: usize) -> Result<Option<usize>, ServerError> {
        let from = self.owner_of(slot)?;
        if from == to {
            return Ok(None);
        }
        let s = slot.to_string();
        self.command(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[from]])?;
        self.command(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[to]])?;
        Ok(Some(from))
    }

    /// Finishes what [`Self::begin_slot_migration`] started: `MIGRATE`s the keys of `slot`
    /// from `from` to `to` in batches until `from` holds none, then assigns the slot to `to`
    /// (`SETSLOT NODE` on `to` first, then `from`, then the others: the documented order);
    /// returns the keys moved, once every live node agrees on the new owner.
    pub fn finish_slot_migration(&self, slot: u16, from: usize, to: usize) -> Result<usize, ServerError> {
        let slot_text = slot.to_string();
        let s = slot_text.as_str();
        let port = self.nodes[to].port().to_string();
        let mut moved = 0;
        loop {
            let keys = match self.nodes[from].command_reply(&["CLUSTER", "GETKEYSINSLOT", s, "100"])? {
                Reply::Array(keys) => keys.iter().map(Reply::to_string).collect::<Vec<_>>(),
                other => return Err(ServerError::Protocol(format!("CLUSTER GETKEYSINSLOT answered {other:?}"))),
            };
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", port.as_str(), "", "0", "10000", "REPLACE", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            self.command(from, &args)?;
            moved += keys.len();
        }
        let to_id = self.ids[to].clone();
        // The destination first, then the source (the documented order), then the others.
        let mut order = vec![to, from];
        order.extend((0..self.nodes.len()).filter(|i| *i != to && *i != from && self.is_alive(*i)));
        for i in order {
            // A replica refuses SETSLOT on some versions; gossip tells it anyway.
            if let Err(e) = self.command(i, &["CLUSTER", "SETSLOT", s, "NODE", &to_id])
                && (i == to || i == from)
            {
                return Err(e);
            }
        }
        self.wait("every node agrees on the migrated slot", || {
            Ok((0..self.nodes.len())
                .filter(|&i| self.is_alive(i))
                .all(|i| self.slot_map(i).is_ok_and(|m| owner_in(&m, slot) == Some(self.nodes[to].port()))))
        })?;
        self.wait_ready()?;
        Ok(moved)
    }

    /// Waits until a replica of primary `primary` has caught up, kills the primary and
    /// promotes the replica (`CLUSTER FAILOVER FORCE`: an election among the live primaries);
    /// returns the new primary once every live node agrees on it. The killed node stays
    /// down ([`Self::start_node_again`] brings it back, as a replica).
    pub fn fail_over(&self, primary: usize) -> Result<usize, ServerError> {
        let replica = self.replica_of(primary)?.ok_or_else(|| ServerError::Setup {
            what: format!("failing over node {primary}"),
            detail: "it has no live replica".into(),
        })?;
        // Replication is asynchronous: wait until the replica has everything the primary had
        // (its replication offset caught up), so that the failover loses no write.
        let offset = |node: usize| -> Result<u64, ServerError> {
            let info = self.command(node, &["INFO", "replication"])?;
            info.lines()
                .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ServerError::Protocol(format!("INFO replication of node {node} has no offset")))
        };
        let target = offset(primary)?;
        self.wait("the replica caught up with its primary", || Ok(offset(replica)? >= target))?;
        self.kill_node(primary)?;
        // FORCE, not TAKEOVER: an election among the live primaries (a majority, with one of
        // three down) gives the replica a new epoch by consensus. TAKEOVER claims one without
        // it, and when the dead primary held the highest epoch (a slot migration had just
        // bumped it) the claim can tie with it and be ignored by every node for good (seen on
        // Redis 7.0, 3 times in 10 runs).
        self.command(replica, &["CLUSTER", "FAILOVER", "FORCE"])?;
        self.wait("the replica took over", || {
            Ok(self.primaries().is_ok_and(|p| p.contains(&replica) && !p.contains(&primary)))
        })?;
        self.wait_ready()?;
        Ok(replica)
    }

    /// Makes live replica `replica` the primary of its shard with a coordinated `CLUSTER
    /// FAILOVER` (its primary stays up and becomes its replica); returns once every live
    /// node agrees.
    pub fn promote(&self, replica: usize) -> Result<(), ServerError> {
        self.command(replica, &["CLUSTER", "FAILOVER"])?;
        self.wait("the replica was promoted", || Ok(self.primaries().is_ok_and(|p| p.contains(&replica))))?;
        self.wait_ready()
    }

    /// Stops node `i` (`SIGTERM`, no waiting for replicas), keeping its directory.
    pub fn kill_node(&self, i: usize) -> Result<(), ServerError> {
        self.nodes[i].kill()
    }

    /// Starts a killed node again (same port, directory and node id) and waits until the
    /// cluster is ready.
    pub fn start_node_again(&self, i: usize) -> Result<(), ServerError> {
        self.nodes[i].start_again()?;
        self.wait_ready()
    }

    /// Stops every node, then starts them all again, and waits until the cluster is ready.
    /// Data survives only with persistence.
    pub fn restart_all(&self) -> Result<(), ServerError> {
        for node in &self.nodes {
            node.kill()?;
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = self.nodes.iter().map(|n| scope.spawn(move || n.start_again())).collect();
            handles.into_iter().try_for_each(|h| h.join().expect("starting a node panicked"))
        })?;
        self.wait_ready()
    }

    /// Kills every client connection named one of `names`, on every live node; returns how
    /// many were killed.
    pub fn kill_clients_named(&self, names: &[String]) -> Result<usize, ServerError> {
        let mut killed = 0;
        for i in (0..self.nodes.len()).filter(|&i| self.is_alive(i)) {
            killed += crate::valkey::kill_clients_named(|args| self.command(i, args), names)?;
        }
        Ok(killed)
    }

    /// Waits until every live node reports `cluster_state:ok`, the same current epoch and the
    /// same slot map with every slot owned, and every live replica's link to its primary is up.
    pub fn wait_ready(&self) -> Result<(), ServerError> {
        self.wait("the cluster is ready", || {
            let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_alive(i)).collect();
            let mut maps = Vec::new();
            let mut epochs = Vec::new();
            for &i in &live {
                let (Ok(info), Ok(map)) = (self.command(i, &["CLUSTER", "INFO"]), self.slot_map(i)) else {
                    return Ok(false);
                };
                let owned: usize = map.keys().map(|(a, b)| usize::from(b - a) + 1).sum();
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") || owned != usize::from(CLUSTER_SLOTS) {
                    return Ok(false);
                }
                let Ok(replication) = self.command(i, &["INFO", "replication"]) else { return Ok(false) };
                let is_replica = replication.lines().any(|l| l.trim() == "role:slave");
                if is_replica && !replication.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Ok(false);
                }
                maps.push(map);
                epochs.push(
                    info.lines().find(|l| l.starts_with("cluster_current_epoch:")).map(str::trim).map(String::from),
                );
            }
            // The same epoch everywhere: gossip has spread every change (a takeover right
            // after a migration would otherwise reuse the migration's epoch and be ignored).
            Ok(maps.windows(2).all(|w| w[0] == w[1])
                && epochs.windows(2).all(|w| w[0] == w[1])
                && maps.first().is_some_and(|m| m.values().all(|port| self.index_of_port(*port).is_some())))
        })
    }

    /// `(first, last) → primary port` as node `i` sees it (`CLUSTER SLOTS`).
    fn slot_map(&self, i: usize) -> Result<BTreeMap<(u16, u16), u16>, ServerError> {
        let Reply::Array(ranges) = self.nodes[i].command_reply(&["CLUSTER", "SLOTS"])? else {
            return Err(ServerError::Protocol("CLUSTER SLOTS did not answer an array".into()));
        };
        let mut map = BTreeMap::new();
        for range in ranges {
            let bad = || ServerError::Protocol(format!("unexpected CLUSTER SLOTS entry {range:?}"));
            let Reply::Array(parts) = &range else { return Err(bad()) };
            let (Some(Reply::Integer(first)), Some(Reply::Integer(last)), Some(Reply::Array(primary))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad());
            };
            let Some(Reply::Integer(port)) = primary.get(1) else { return Err(bad()) };
            let narrow = |n: i64| u16::try_from(n).map_err(|_| bad());
            map.insert((narrow(*first)?, narrow(*last)?), narrow(*port)?);
        }
        Ok(map)
    }

    /// `CLUSTER NODES` of node `i`, parsed.
    fn node_lines(&self, i: usize) -> Result<Vec<NodeLine>, ServerError> {
        let text = self.command(i, &["CLUSTER", "NODES"])?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let bad = || ServerError::Protocol(format!("unexpected CLUSTER NODES line `{line}`"));
                let mut fields = line.split(' ');
                fields.next().ok_or_else(bad)?; // the node id
                let address = fields.next().ok_or_else(bad)?;
                let port = address
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
                    .ok_or_else(bad)?;
                let flags = fields.next().ok_or_else(bad)?.split(',').map(str::to_string).collect();
                let primary = fields.next().ok_or_else(bad)?.to_string();
                Ok(NodeLine { port, flags, primary })
            })
            .collect()
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> Result<bool, ServerError>) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if done()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let views = (0..self.nodes.len())
                    .map(|i| match self.command(i, &["CLUSTER", "NODES"]) {
                        Ok(nodes) => format!("node {i} (port {}):\n{nodes}", self.nodes[i].port()),
                        Err(e) => format!("node {i} (port {}): {e}", self.nodes[i].port()),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(ServerError::Setup {
                    what: format!("waiting until {what}"),
                    detail: format!("not done within {:?}; the nodes' views:\n{views}", self.timeout),
                });
            }
            sleep(POLL);
        }
    }
}

/// The port of the primary owning `slot` in `map`.
fn owner_in(map: &BTreeMap<(u16, u16), u16>, slot: u16) -> Option<u16> {
    map.iter().find(|((a, b), _)| (*a..=*b).contains(&slot)).map(|(_, port)| *port)
}

impl std::fmt::Debug for ValkeyCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeyCluster").field("nodes", &self.nodes).finish()
    }
}
