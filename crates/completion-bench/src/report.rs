//! What a run measured: the figures of each backend, as written to the JSON report and read by
//! [`render`](mod@crate::render).

use std::path::PathBuf;

use serde::Serialize;

use crate::machine::Machine;
use crate::stats::{self, Latency, Repeated, Sample};
use crate::{Which, cluster, scale, waits};

/// One backend's figures.
#[derive(Debug, Serialize)]
pub(crate) struct BackendResult {
    pub(crate) backend: Which,
    /// Ours, terminal write → subscriber (`None` when not measured).
    pub(crate) latency: Option<Repeated<Latency>>,
    /// Ours, the terminal write call alone (until its reply); the event may arrive before.
    pub(crate) write_call: Option<Repeated<Latency>>,
    /// Ours, what each sample took after the write call's reply (end to end minus call).
    pub(crate) delivery: Option<Repeated<Latency>>,
    /// The raw protocol (none for memory).
    pub(crate) raw_latency: Option<Repeated<Latency>>,
    /// The raw protocol's write call alone, and what came after its reply.
    pub(crate) raw_call: Option<Repeated<Latency>>,
    pub(crate) raw_delivery: Option<Repeated<Latency>>,
    /// What the raw baseline is.
    pub(crate) raw_label: Option<&'static str>,
    /// The same semantics by hand in one round trip (none for memory).
    pub(crate) floor: Option<Side>,
    /// What the floor is.
    pub(crate) floor_label: Option<&'static str>,
    /// Figure 6 (PostgreSQL only).
    pub(crate) unrelated_load: Option<UnrelatedLoadFigure>,
    /// Figure 7 (memory only).
    pub(crate) waits: Option<waits::WaitsFigure>,
    /// Bytes of the payload the raw baseline sends: Valkey, the size of the message body our
    /// function PUBLISHes; Postgres, the JSON size of one of our payloads (our NOTIFY is
    /// empty: a raw user would put the event in it).
    pub(crate) payload_bytes: usize,
    pub(crate) throughput: Vec<Throughput>,
    /// Figures 3 to 5.
    pub(crate) scale: Scale,
}

/// One latency probe's runs: end to end, the write call alone, and what came after the call's
/// reply (per sample: end to end minus call).
#[derive(Debug, Serialize)]
pub(crate) struct Side {
    pub(crate) end_to_end: Repeated<Latency>,
    pub(crate) call: Repeated<Latency>,
    pub(crate) delivery: Repeated<Latency>,
}

/// [`Side`] before taking medians.
#[derive(Default)]
pub(crate) struct SideRuns {
    pub(crate) end_to_end: Vec<Latency>,
    pub(crate) call: Vec<Latency>,
    pub(crate) delivery: Vec<Latency>,
}

impl SideRuns {
    /// Keeps one repetition's samples.
    pub(crate) fn push(&mut self, samples: &[Sample]) {
        let (end_to_end, call) = stats::latencies(samples);
        self.end_to_end.push(end_to_end);
        self.call.push(call);
        self.delivery.push(stats::delivery(samples));
    }

    pub(crate) fn finish(self) -> Option<Side> {
        (!self.end_to_end.is_empty()).then(|| Side {
            end_to_end: Repeated::of_latencies(self.end_to_end),
            call: Repeated::of_latencies(self.call),
            delivery: Repeated::of_latencies(self.delivery),
        })
    }
}

/// Figure 6: ours with unrelated load against ours idle, interleaved (see [`load`](crate::load)).
#[derive(Debug, Serialize)]
pub(crate) struct UnrelatedLoadFigure {
    pub(crate) idle: Side,
    pub(crate) loaded: Side,
    /// The load's writers, and how long each keeps its transaction open between its INSERT
    /// and its UPDATE + COMMIT.
    pub(crate) writers: usize,
    pub(crate) in_transaction_ms: f64,
    /// The writers' transactions per second while the load was on, per run.
    pub(crate) load_transactions_per_s: Repeated<f64>,
}

/// Fan-out with each of [`SUBSCRIBERS`](crate::SUBSCRIBERS).
#[derive(Debug, Default, Serialize)]
pub(crate) struct FanOutFigure {
    pub(crate) subscribers: usize,
    /// Median of the runs' delivered events per second.
    pub(crate) delivered_per_s: f64,
    /// Median of the runs' RSS growth per subscriber after delivery, bytes.
    pub(crate) rss_per_subscriber: f64,
    /// Median of the runs' live heap growth per subscriber with the streams open and idle, bytes.
    pub(crate) heap_per_subscriber_open: f64,
    /// Median of the runs' live heap growth per subscriber after delivery, bytes.
    pub(crate) heap_per_subscriber: f64,
    pub(crate) runs: Vec<scale::FanOut>,
}

/// Figures 3 to 5 of one backend, every run kept.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Scale {
    pub(crate) fan_out: Vec<FanOutFigure>,
    pub(crate) filtering: Vec<scale::Filtering>,
    pub(crate) catch_up: Vec<scale::CatchUp>,
    /// Seconds spent writing the catch-up backlog (context, not a figure).
    pub(crate) backlog_write_seconds: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    pub(crate) writers: usize,
    /// Ours, completions per second.
    pub(crate) ours: Repeated<f64>,
    /// The bare state change, writes per second.
    pub(crate) bare: Option<Repeated<f64>>,
    pub(crate) bare_label: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) command: String,
    pub(crate) completions: usize,
    pub(crate) repeat: usize,
    pub(crate) machine: Machine,
    pub(crate) results: Vec<BackendResult>,
    /// The cluster row, when `valkey-cluster` ran.
    pub(crate) cluster: Option<cluster::ClusterResult>,
    pub(crate) errors: Vec<String>,
    pub(crate) seconds: f64,
}

pub(crate) fn write_json(path: &PathBuf, report: &Report) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).map_err(|e| format!("cannot encode the results: {e}"))?;
    std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
