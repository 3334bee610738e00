//! The Valkey Cluster row (docs/benchmarks.md, "How it is measured"): the Valkey backend on a
//! 3-primary Valkey Cluster against the same backend on one standalone server, measured in the
//! same run, so that what the cluster gains (or costs) is a number.
//!
//! Figures, each measured `--repeat` times with the standalone server and the cluster
//! alternating within every repetition (so background noise hits both sides alike):
//! - write throughput with 1 and 8 concurrent writers, one subscriber draining
//!   ([`crate::library::throughput`]);
//! - delivered events per second to [`SUBSCRIBERS`] streams of one backend instance
//!   ([`crate::scale::fan_out`]: `subscribers x events / (first write -> last delivery)`).
//!
//! Limits: every node runs on this machine, on the same cores as the client and as each
//! other. On a 2-core machine three primaries share two cores, so the cluster cannot show
//! scale-out here: its figures measure what the cluster protocol costs (a connection per
//! primary, sharded subscriptions whose messages only wake the feed, which then reads the
//! log), not what more machines would give. Run it on separate hosts to see scale-out.

use std::sync::Arc;

use completion_testserver::{ValkeyCluster, ValkeyClusterOptions, ValkeyFlavor, ValkeyOptions, ValkeyServer};
use completions::valkey::ValkeyBackend;
use completions::{Backend, OpenOptions};
use serde::Serialize;

use crate::scale::ServerProbe;
use crate::stats::{Repeated, ratio};

/// Streams of the delivered-events figure.
pub const SUBSCRIBERS: usize = 100;
/// Primaries of the throwaway cluster.
pub const PRIMARIES: usize = 3;

/// One figure on both deployments.
#[derive(Debug, Serialize)]
pub struct Pair {
    /// What is measured.
    pub figure: String,
    /// One standalone server.
    pub standalone: Repeated<f64>,
    /// The cluster.
    pub cluster: Repeated<f64>,
}

impl Pair {
    fn new(figure: String) -> Self {
        Self { figure, standalone: Repeated::of(Vec::new()), cluster: Repeated::of(Vec::new()) }
    }

    fn finish(&mut self) {
        self.standalone = Repeated::of(std::mem::take(&mut self.standalone.runs));
        self.cluster = Repeated::of(std::mem::take(&mut self.cluster.runs));
    }

    /// `cluster / standalone` of the medians.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.cluster.median, Some(self.standalone.median))
    }
}

/// The cluster row.
#[derive(Debug, Serialize)]
pub struct ClusterResult {
    /// Primaries of the cluster (no replicas).
    pub primaries: usize,
    /// Server binary and version of every node.
    pub server: String,
    /// Write throughput (completions/s) per writer count, then delivered events/s.
    pub figures: Vec<Pair>,
}

fn err(op: &str, e: impl std::fmt::Display) -> String {
    format!("{op}: {e}")
}

async fn connect(url: String, prefix: &str, retention: u64) -> Result<Arc<ValkeyBackend>, String> {
    match crate::backends::open(&url, OpenOptions::default().with_key_prefix(prefix), retention).await? {
        Backend::Valkey(backend) => Ok(Arc::new(backend)),
        other => Err(crate::backends::opened_as(&other)),
    }
}

/// Measures both deployments; `n` completions per throughput run, `fan_out` per
/// delivered-events run.
pub async fn bench(
    run: &str,
    n: usize,
    fan_out: usize,
    writers: &[usize],
    repeat: usize,
    retention: u64,
) -> Result<ClusterResult, String> {
    // No persistence on either side: an fsync per write would measure the disk.
    let node = ValkeyOptions::default().flavor(ValkeyFlavor::Valkey).persistence(false);
    let standalone = ValkeyServer::start(node.clone()).map_err(|e| err("standalone valkey-server", e))?;
    let server = format!(
        "{} {}",
        standalone.flavor().binary_name(),
        standalone.version().unwrap_or_else(|e| format!("unknown ({e})"))
    );
    let cluster = ValkeyCluster::start(ValkeyClusterOptions::default().node(node).primaries(PRIMARIES))
        .map_err(|e| err("valkey cluster", e))?;
    let prefix = format!("bench-{run}");
    let single = connect(standalone.url(), &prefix, retention).await?;
    let sharded = connect(cluster.url(), &prefix, retention).await?;
    let mut figures: Vec<Pair> = writers
        .iter()
        .map(|w| Pair::new(format!("completions/s, {w} writer{}", if *w == 1 { "" } else { "s" })))
        .collect();
    let mut delivered = Pair::new(format!("delivered/s, {SUBSCRIBERS} streams"));
    for rep in 0..repeat {
        let run = format!("{run}-c{rep}");
        for (figure, &w) in figures.iter_mut().zip(writers) {
            eprintln!("   throughput x{w}, standalone then cluster (run {})", rep + 1);
            figure.standalone.runs.push(crate::library::throughput(single.clone(), &format!("{run}s"), n, w).await?);
            figure.cluster.runs.push(crate::library::throughput(sharded.clone(), &format!("{run}c"), n, w).await?);
        }
        eprintln!("   fan-out to {SUBSCRIBERS}, standalone then cluster (run {})", rep + 1);
        let s =
            crate::scale::fan_out(single.clone(), &ServerProbe::None, &format!("{run}s"), SUBSCRIBERS, fan_out).await?;
        delivered.standalone.runs.push(s.delivered_per_s);
        let c = crate::scale::fan_out(sharded.clone(), &ServerProbe::None, &format!("{run}c"), SUBSCRIBERS, fan_out)
            .await?;
        delivered.cluster.runs.push(c.delivered_per_s);
    }
    figures.push(delivered);
    for figure in &mut figures {
        figure.finish();
    }
    Ok(ClusterResult { primaries: PRIMARIES, server, figures })
}

/// The table of the cluster row.
pub fn render(result: &ClusterResult, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nvalkey cluster ({} primaries, {}) vs one standalone server, same run, same machine (nodes share its cores)",
        result.primaries, result.server
    );
    let _ = writeln!(
        out,
        "{:<26} {:>10} {:>15} | {:>10} {:>15} | {:>9}",
        "figure", "standalone", "range", "cluster", "range", "cluster x"
    );
    for f in &result.figures {
        let _ = writeln!(
            out,
            "{:<26} {:>10.0} {:>15} | {:>10.0} {:>15} | {:>9}",
            f.figure,
            f.standalone.median,
            f.standalone.range(),
            f.cluster.median,
            f.cluster.range(),
            f.ratio().map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".to_string()),
        );
    }
}
