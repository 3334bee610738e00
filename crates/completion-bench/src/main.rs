//! `completion-bench`: end-to-end latency and write throughput of the memory, Valkey and
//! PostgreSQL backends, each next to its raw-protocol baseline measured in the same run, on
//! throwaway servers on 127.0.0.1. Run it as `cargo xtask bench [--quick]`.
//!
//! Prints one table and writes the same figures as JSON (default
//! `target/bench/results.json`). Nothing here is a pass/fail check: the figures are for
//! reading, and a slow machine just gives slow figures.
//!
//! Each figure is measured `--repeat` times, ours and its baseline alternating within each
//! repetition; the table quotes medians and the p50 / rate range, the JSON keeps every run.
//!
//! The latency figure also measures, per backend, the same semantics by hand in one round
//! trip (the *floor*: [`raw_valkey::LatencyProbe::floor`], [`raw_postgres::LatencyProbe::floor`]),
//! interleaved with ours and the raw pub/sub baseline. Figures 3 to 5 (fan-out, filtering,
//! catch-up) are defined in [`scale`]; figure 6, PostgreSQL latency under unrelated load, in
//! [`load`]; the Valkey Cluster row (`--backends valkey-cluster`) in [`cluster`]. `--figures`
//! measures some of the six only (the tables then leave the others out, the JSON has them
//! empty or null).
//!
//! Limits: latency is measured one completion at a time (no load behind it but figure 6's,
//! which is other sessions' load, not more of ours); the writers of every figure, figure 6's
//! load sessions too, run in this process, on the same cores as the server.

mod cluster;
mod heap;
mod load;
mod machine;
mod ours;
mod raw_postgres;
mod raw_valkey;
mod scale;
mod stats;
mod waits;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use completion_core::{CompletionBackend, EngineBackend, Retention};
use completion_testserver::{PostgresOptions, PostgresServer, ValkeyFlavor, ValkeyOptions, ValkeyServer};
use completions::{Backend, OpenOptions};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::machine::Machine;
use crate::scale::ServerProbe;
use crate::stats::{Latency, Probe, Repeated, Sample, interleave, ratio};

/// Latency samples taken in turn, ours then each baseline's (see `stats::interleave`).
const CHUNK: usize = 20;

#[derive(Parser)]
#[command(name = "completion-bench", about = "Latency and write throughput of each backend against the raw protocols")]
struct Args {
    /// A short run (~2 000 completions per figure) instead of the full one (10 000).
    #[arg(long)]
    quick: bool,
    /// Completions per figure (overrides --quick).
    #[arg(long)]
    completions: Option<usize>,
    /// Backends to measure (default: all). `valkey-cluster` is the cluster row: the Valkey
    /// backend on a 3-primary cluster against one standalone server.
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Vec<Which>,
    /// How many times to measure each figure; the table quotes medians (default: 3 with
    /// --quick, 5 otherwise).
    #[arg(long)]
    repeat: Option<usize>,
    /// Figures to measure on the memory, Valkey and PostgreSQL backends (default: all). The
    /// Valkey Cluster row is chosen with `--backends` alone.
    #[arg(long, value_enum, value_delimiter = ',')]
    figures: Vec<Figure>,
    /// Events behind the catch-up subscriber (default: 10 000 with --quick, 100 000 otherwise).
    #[arg(long)]
    catch_up: Option<usize>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Which {
    Memory,
    Valkey,
    Postgres,
    #[serde(rename = "valkey-cluster")]
    ValkeyCluster,
}

/// The figures of one backend, as `--figures` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Figure {
    /// 1: end-to-end latency against the raw protocol and the same-semantics floor.
    Latency,
    /// 2: write throughput against the bare state change.
    Throughput,
    /// 3: fan-out to 1, 100 and 1 000 streams.
    FanOut,
    /// 4: a filtered subscriber against an unfiltered one.
    Filtering,
    /// 5: catch-up from far behind.
    CatchUp,
    /// 6: PostgreSQL latency with unrelated writers and a session idle in transaction,
    /// against idle (the other backends skip it).
    UnrelatedLoad,
    /// 7: many concurrent waits on one `Waiter` (memory backend): heap per pending wait, and
    /// the wake-up latency against a plain stream's.
    Waits,
}

/// Which figures a run measures.
#[derive(Clone, Copy, Debug)]
struct Plan {
    latency: bool,
    throughput: bool,
    fan_out: bool,
    filtering: bool,
    catch_up: bool,
    unrelated_load: bool,
    waits: bool,
}

impl Plan {
    /// `figures` as given to `--figures`; none means all.
    fn of(figures: &[Figure]) -> Self {
        let wants = |f: Figure| figures.is_empty() || figures.contains(&f);
        Plan {
            latency: wants(Figure::Latency),
            throughput: wants(Figure::Throughput),
            fan_out: wants(Figure::FanOut),
            filtering: wants(Figure::Filtering),
            catch_up: wants(Figure::CatchUp),
            unrelated_load: wants(Figure::UnrelatedLoad),
            waits: wants(Figure::Waits),
        }
    }
}

/// Concurrent writers of the throughput figures.
const WRITERS: [usize; 2] = [1, 8];
/// Streams of the fan-out figures.
const SUBSCRIBERS: [usize; 3] = [1, 100, 1000];
/// Enough retention that no figure's events are trimmed before it reads them (the default,
/// 100 000, is about what a full run writes before the catch-up backlog).
const RETENTION: u64 = 2_000_000;

/// Sizes of figures 3 to 5.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Completions per fan-out measurement.
    fan_out: usize,
    /// Completions per filtering phase.
    filtering: usize,
    /// Events behind a catch-up subscriber.
    catch_up: usize,
    /// Concurrent waits of figure 7.
    waits: usize,
    /// Which figures to measure.
    plan: Plan,
}

/// One backend's figures.
#[derive(Debug, Serialize)]
struct BackendResult {
    backend: Which,
    /// Ours, terminal write → subscriber (`None` when not measured).
    latency: Option<Repeated<Latency>>,
    /// Ours, the terminal write call alone (until its reply); the event may arrive before.
    write_call: Option<Repeated<Latency>>,
    /// Ours, what each sample took after the write call's reply (end to end minus call).
    delivery: Option<Repeated<Latency>>,
    /// The raw protocol (none for memory).
    raw_latency: Option<Repeated<Latency>>,
    /// The raw protocol's write call alone, and what came after its reply.
    raw_call: Option<Repeated<Latency>>,
    raw_delivery: Option<Repeated<Latency>>,
    /// What the raw baseline is.
    raw_label: Option<&'static str>,
    /// The same semantics by hand in one round trip (none for memory).
    floor: Option<Side>,
    /// What the floor is.
    floor_label: Option<&'static str>,
    /// Figure 6 (PostgreSQL only).
    unrelated_load: Option<UnrelatedLoadFigure>,
    /// Figure 7 (memory only).
    waits: Option<waits::WaitsFigure>,
    /// Bytes of the payload the raw baseline sends: Valkey, the size of the message body our
    /// function PUBLISHes; Postgres, the JSON size of one of our payloads (our NOTIFY is
    /// empty: a raw user would put the event in it).
    payload_bytes: usize,
    throughput: Vec<Throughput>,
    /// Figures 3 to 5.
    scale: Scale,
}

/// One latency probe's runs: end to end, the write call alone, and what came after the call's
/// reply (per sample: end to end minus call).
#[derive(Debug, Serialize)]
struct Side {
    end_to_end: Repeated<Latency>,
    call: Repeated<Latency>,
    delivery: Repeated<Latency>,
}

/// [`Side`] before taking medians.
#[derive(Default)]
struct SideRuns {
    end_to_end: Vec<Latency>,
    call: Vec<Latency>,
    delivery: Vec<Latency>,
}

impl SideRuns {
    /// Keeps one repetition's samples.
    fn push(&mut self, samples: &[Sample]) {
        let (end_to_end, call) = stats::latencies(samples);
        self.end_to_end.push(end_to_end);
        self.call.push(call);
        self.delivery.push(stats::delivery(samples));
    }

    fn finish(self) -> Option<Side> {
        (!self.end_to_end.is_empty()).then(|| Side {
            end_to_end: Repeated::of_latencies(self.end_to_end),
            call: Repeated::of_latencies(self.call),
            delivery: Repeated::of_latencies(self.delivery),
        })
    }
}

/// Figure 6: ours with unrelated load against ours idle, interleaved (see [`load`]).
#[derive(Debug, Serialize)]
struct UnrelatedLoadFigure {
    idle: Side,
    loaded: Side,
    /// The load's writers, and how long each keeps its transaction open between its INSERT
    /// and its UPDATE + COMMIT.
    writers: usize,
    in_transaction_ms: f64,
    /// The writers' transactions per second while the load was on, per run.
    load_transactions_per_s: Repeated<f64>,
}

/// Fan-out with each of [`SUBSCRIBERS`].
#[derive(Debug, Default, Serialize)]
struct FanOutFigure {
    subscribers: usize,
    /// Median of the runs' delivered events per second.
    delivered_per_s: f64,
    /// Median of the runs' RSS growth per subscriber after delivery, bytes.
    rss_per_subscriber: f64,
    /// Median of the runs' live heap growth per subscriber with the streams open and idle, bytes.
    heap_per_subscriber_open: f64,
    /// Median of the runs' live heap growth per subscriber after delivery, bytes.
    heap_per_subscriber: f64,
    runs: Vec<scale::FanOut>,
}

/// Figures 3 to 5 of one backend, every run kept.
#[derive(Debug, Default, Serialize)]
struct Scale {
    fan_out: Vec<FanOutFigure>,
    filtering: Vec<scale::Filtering>,
    catch_up: Vec<scale::CatchUp>,
    /// Seconds spent writing the catch-up backlog (context, not a figure).
    backlog_write_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    writers: usize,
    /// Ours, completions per second.
    ours: Repeated<f64>,
    /// The bare state change, writes per second.
    bare: Option<Repeated<f64>>,
    bare_label: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    completions: usize,
    repeat: usize,
    machine: Machine,
    results: Vec<BackendResult>,
    /// The cluster row, when `valkey-cluster` ran.
    cluster: Option<cluster::ClusterResult>,
    errors: Vec<String>,
    seconds: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("completion-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("completion-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let n = args.completions.unwrap_or(if args.quick { 2_000 } else { 10_000 });
    if n == 0 {
        return Err("--completions must be at least 1".to_string());
    }
    let repeat = args.repeat.unwrap_or(if args.quick { 3 } else { 5 });
    if repeat == 0 {
        return Err("--repeat must be at least 1".to_string());
    }
    let warmup = (n / 20).clamp(1, 200);
    let sizes = Sizes {
        fan_out: (n / 10).max(10),
        filtering: n.max(scale::NAMESPACES),
        catch_up: args.catch_up.unwrap_or(if args.quick { 10_000 } else { 100_000 }).max(1),
        waits: if args.quick { 10_000 } else { 100_000 },
        plan: Plan::of(&args.figures),
    };
    let which = if args.backends.is_empty() {
        vec![Which::Memory, Which::Valkey, Which::Postgres, Which::ValkeyCluster]
    } else {
        args.backends
    };
    // Unique per run, so that a re-run on an external server never collides with old ids.
    let run_id = format!(
        "r{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
    );
    let mut machine = Machine::detect();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut cluster_row = None;
    for backend in which {
        if backend == Which::ValkeyCluster {
            eprintln!("== valkey cluster vs standalone: {n} completions per throughput figure, {repeat} runs");
            match cluster::bench(&run_id, n, sizes.fan_out, &WRITERS, repeat, RETENTION).await {
                Ok(row) => cluster_row = Some(row),
                Err(e) => {
                    eprintln!("ValkeyCluster: {e}");
                    errors.push(format!("ValkeyCluster: {e}"));
                }
            }
            continue;
        }
        eprintln!("== {backend:?}: {n} completions per figure (+{warmup} warm-up), {repeat} runs");
        let outcome = match backend {
            Which::Memory => bench_memory(&run_id, n, warmup, repeat, sizes).await,
            Which::Valkey => bench_valkey(&run_id, n, warmup, repeat, sizes, &mut machine).await,
            Which::Postgres => bench_postgres(&run_id, n, warmup, repeat, sizes, &mut machine).await,
            Which::ValkeyCluster => continue,
        };
        match outcome {
            Ok(result) => results.push(result),
            // One backend failing (e.g. no server binary) must not hide the others' figures.
            Err(e) => {
                eprintln!("{backend:?}: {e}");
                errors.push(format!("{backend:?}: {e}"));
            }
        }
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        completions: n,
        repeat,
        machine,
        results,
        cluster: cluster_row,
        errors,
        seconds: started.elapsed().as_secs_f64(),
    };
    print!("{}", render(&report));
    write_json(&args.json, &report)?;
    println!("\nJSON: {}", args.json.display());
    if report.results.is_empty() && report.cluster.is_none() {
        Err("no backend could be measured".to_string())
    } else {
        Ok(())
    }
}

fn write_json(path: &PathBuf, report: &Report) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).map_err(|e| format!("cannot encode the results: {e}"))?;
    std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Every run's figures of one backend, before taking medians.
#[derive(Default)]
struct Runs {
    /// Figure 1: ours, the raw baseline, the floor.
    mine: SideRuns,
    raw: SideRuns,
    floor: SideRuns,
    payload_bytes: usize,
    /// Figure 6: ours idle and loaded, and the load's transactions per second.
    idle: SideRuns,
    loaded: SideRuns,
    load_tps: Vec<f64>,
    /// Per entry of [`WRITERS`].
    ours: [Vec<f64>; WRITERS.len()],
    bare: [Vec<f64>; WRITERS.len()],
    scale: Scale,
}

impl Runs {
    /// Keeps one repetition's latency samples (ours, and the raw baseline's and the floor's).
    fn push_latency(&mut self, ours: &[Sample], raw: Option<(&[Sample], &[Sample])>, payload_bytes: usize) {
        self.mine.push(ours);
        if let Some((raw, floor)) = raw {
            self.raw.push(raw);
            self.floor.push(floor);
        }
        self.payload_bytes = payload_bytes;
    }

    fn finish(
        self,
        backend: Which,
        raw_label: Option<&'static str>,
        floor_label: Option<&'static str>,
        bare_label: Option<&'static str>,
    ) -> BackendResult {
        let Runs { mine, raw, floor, payload_bytes, idle, loaded, load_tps, ours, bare, mut scale } = self;
        let unrelated_load = match (idle.finish(), loaded.finish()) {
            (Some(idle), Some(loaded)) => Some(UnrelatedLoadFigure {
                idle,
                loaded,
                writers: load::WRITERS,
                in_transaction_ms: load::IN_TRANSACTION.as_secs_f64() * 1e3,
                load_transactions_per_s: Repeated::of(load_tps),
            }),
            _ => None,
        };
        let (mine, raw) = (mine.finish(), raw.finish());
        for figure in &mut scale.fan_out {
            figure.delivered_per_s = stats::median(&figure.runs.iter().map(|r| r.delivered_per_s).collect::<Vec<_>>());
            figure.rss_per_subscriber =
                stats::median(&figure.runs.iter().map(|r| r.rss_per_subscriber_after).collect::<Vec<_>>());
            figure.heap_per_subscriber_open =
                stats::median(&figure.runs.iter().map(|r| r.heap_per_subscriber_open).collect::<Vec<_>>());
            figure.heap_per_subscriber =
                stats::median(&figure.runs.iter().map(|r| r.heap_per_subscriber_after).collect::<Vec<_>>());
        }
        let throughput = WRITERS
            .iter()
            .zip(ours)
            .zip(bare)
            .filter(|((_, ours), _)| !ours.is_empty())
            .map(|((&writers, ours), bare)| Throughput {
                writers,
                ours: Repeated::of(ours),
                bare: (!bare.is_empty()).then(|| Repeated::of(bare)),
                bare_label,
            })
            .collect();
        let (latency, write_call, delivery) = match mine {
            Some(Side { end_to_end, call, delivery }) => (Some(end_to_end), Some(call), Some(delivery)),
            None => (None, None, None),
        };
        let (raw_latency, raw_call, raw_delivery) = match raw {
            Some(Side { end_to_end, call, delivery }) => (Some(end_to_end), Some(call), Some(delivery)),
            None => (None, None, None),
        };
        BackendResult {
            backend,
            latency,
            write_call,
            delivery,
            raw_latency,
            raw_call,
            raw_delivery,
            raw_label,
            floor: floor.finish(),
            floor_label,
            unrelated_load,
            waits: None,
            payload_bytes,
            throughput,
            scale,
        }
    }
}

async fn bench_memory(
    run: &str,
    n: usize,
    warmup: usize,
    repeat: usize,
    sizes: Sizes,
) -> Result<BackendResult, String> {
    let backend = match open("memory:", OpenOptions::default(), RETENTION).await? {
        Backend::Memory(backend) => Arc::new(backend),
        other => return Err(opened_as(&other)),
    };
    let mut runs = Runs::default();
    for rep in 0..repeat {
        let run = format!("{run}-{rep}");
        if sizes.plan.latency {
            let mut probe = ours::LatencyProbe::new(&*backend, &run).await?;
            let samples = interleave(&mut [&mut probe], n, warmup, CHUNK).await?;
            runs.push_latency(&samples[0], None, probe.payload_bytes);
        }
        for (i, writers) in WRITERS.into_iter().enumerate().filter(|_| sizes.plan.throughput) {
            runs.ours[i].push(ours::throughput(backend.clone(), &run, n, writers).await?);
        }
    }
    bench_scale(backend.clone(), &ServerProbe::None, run, repeat, sizes, &mut runs.scale).await?;
    let mut result = runs.finish(Which::Memory, None, None, None);
    if sizes.plan.waits {
        eprintln!("   figure 7: {} concurrent waits", sizes.waits);
        let probes = (n / 10).clamp(100, 2_000);
        result.waits = Some(waits::measure(backend.clone(), backend, run, sizes.waits, probes).await?);
    }
    Ok(result)
}

async fn bench_valkey(
    run: &str,
    n: usize,
    warmup: usize,
    repeat: usize,
    sizes: Sizes,
    machine: &mut Machine,
) -> Result<BackendResult, String> {
    // No persistence: an fsync per write would measure the disk, the same for ours and raw.
    let server = match ValkeyServer::start(ValkeyOptions::default().flavor(ValkeyFlavor::Valkey).persistence(false)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("valkey-server unavailable ({e}); falling back to redis-server");
            ValkeyServer::start(ValkeyOptions::default().flavor(ValkeyFlavor::Redis).persistence(false))
                .map_err(|e| format!("no valkey-server or redis-server: {e}"))?
        }
    };
    let version = server.version().unwrap_or_else(|e| format!("unknown ({e})"));
    machine.valkey = Some(format!("{} {version}", server.flavor().binary_name()));
    let url = server.url();
    let prefix = format!("bench-{run}");
    let backend = match open(&url, OpenOptions::default().with_prefix(prefix.clone()), RETENTION).await? {
        Backend::Valkey(backend) => Arc::new(backend),
        other => return Err(opened_as(&other)),
    };
    // The raw PUBLISH sends as many bytes as our function's PUBLISH does (the channel name
    // is documented in docs/valkey.md), not the size of the decoded payload.
    // One completion before the measured runs, so that the extra subscriber is gone by then.
    let payload_bytes = if sizes.plan.latency {
        let sniffer = raw_valkey::Sniffer::start(&url, &format!("{prefix}:completions")).await?;
        ours::complete_one(&*backend, run).await?;
        sniffer.first_size().await?
    } else {
        0
    };
    let mut runs = Runs::default();
    // Ours and raw alternate within each repetition (latency: every CHUNK samples), so that
    // a noisy neighbour on a shared machine hits both sides of a ratio alike.
    for rep in 0..repeat {
        let run = format!("{run}-{rep}");
        if sizes.plan.latency {
            let mut probe = ours::LatencyProbe::new(&*backend, &run).await?;
            let mut raw = raw_valkey::LatencyProbe::new(&url, payload_bytes).await?;
            let mut floor = raw_valkey::LatencyProbe::floor(&url, payload_bytes).await?;
            let samples = interleave(&mut [&mut probe, &mut raw, &mut floor], n, warmup, CHUNK).await?;
            raw.close().await;
            floor.close().await;
            runs.push_latency(&samples[0], Some((&samples[1], &samples[2])), payload_bytes);
        }
        for (i, writers) in WRITERS.into_iter().enumerate().filter(|_| sizes.plan.throughput) {
            runs.ours[i].push(ours::throughput(backend.clone(), &run, n, writers).await?);
            runs.bare[i].push(raw_valkey::bare_writes(&url, &run, n, writers).await?);
        }
    }
    bench_scale(backend, &ServerProbe::Valkey(url.clone()), run, repeat, sizes, &mut runs.scale).await?;
    Ok(runs.finish(
        Which::Valkey,
        Some("fred PUBLISH -> SUBSCRIBE, our PUBLISH body size"),
        Some("FCALL of HSET+XADD+PUBLISH (library benchfloor) -> SUBSCRIBE, same size"),
        Some("HSET alone"),
    ))
}

async fn bench_postgres(
    run: &str,
    n: usize,
    warmup: usize,
    repeat: usize,
    sizes: Sizes,
    machine: &mut Machine,
) -> Result<BackendResult, String> {
    // The helper's default: fsync and synchronous_commit off, the same for ours and raw.
    let server = PostgresServer::start(PostgresOptions::default()).map_err(|e| format!("postgres server: {e}"))?;
    let version = server.version().unwrap_or_else(|e| format!("unknown ({e})"));
    machine.postgres = Some(version);
    let url = server.url();
    // As many pooled connections as the bare baseline's writers use.
    let backend = match open(&url, OpenOptions::default().with_pool_size(WRITERS[WRITERS.len() - 1]), RETENTION).await?
    {
        Backend::Postgres(backend) => Arc::new(backend),
        other => return Err(opened_as(&other)),
    };
    let mut runs = Runs::default();
    for rep in 0..repeat {
        let run = format!("{run}-{rep}");
        if sizes.plan.latency {
            let mut probe = ours::LatencyProbe::new(&*backend, &run).await?;
            // One unmeasured completion first: the raw baseline NOTIFYs as many bytes as our
            // payload's JSON has.
            probe.sample(n + warmup).await?;
            let mut raw = raw_postgres::LatencyProbe::new(&url, n + warmup, probe.payload_bytes).await?;
            let mut floor = raw_postgres::LatencyProbe::floor(&url, n + warmup, probe.payload_bytes).await?;
            let samples = interleave(&mut [&mut probe, &mut raw, &mut floor], n, warmup, CHUNK).await?;
            let payload_bytes = probe.payload_bytes;
            runs.push_latency(&samples[0], Some((&samples[1], &samples[2])), payload_bytes);
        }
        if sizes.plan.unrelated_load {
            eprintln!("   unrelated load (run {})", rep + 1);
            let probe = Mutex::new(ours::LatencyProbe::new(&*backend, &format!("{run}-ul")).await?);
            let load = Mutex::new(load::UnrelatedLoad::start(&url).await?);
            let mut idle = load::Phase { probe: &probe, load: &load, on: false, offset: 0 };
            let mut loaded = load::Phase { probe: &probe, load: &load, on: true, offset: n + warmup };
            let samples = interleave(&mut [&mut idle, &mut loaded], n, warmup, CHUNK).await?;
            runs.load_tps.push(load.into_inner().finish().await?);
            runs.idle.push(&samples[0]);
            runs.loaded.push(&samples[1]);
        }
        for (i, writers) in WRITERS.into_iter().enumerate().filter(|_| sizes.plan.throughput) {
            runs.ours[i].push(ours::throughput(backend.clone(), &run, n, writers).await?);
            runs.bare[i].push(raw_postgres::bare_writes(&url, n, writers).await?);
        }
    }
    let probe = ServerProbe::Postgres {
        url: url.clone(),
        listen: backend.listener_application_name(),
        pool: backend.pool_application_name(),
    };
    bench_scale(backend.clone(), &probe, run, repeat, sizes, &mut runs.scale).await?;
    backend.close();
    Ok(runs.finish(
        Which::Postgres,
        Some("tokio-postgres BEGIN;UPDATE;NOTIFY;COMMIT -> LISTEN, our payload's JSON size"),
        Some("prepared SELECT of a PL/pgSQL UPDATE+INSERT+NOTIFY(event), autocommit -> LISTEN, same size"),
        Some("UPDATE alone"),
    ))
}

/// Opens the backend `url` names with `options`, keeping the last `retention` events.
pub(crate) async fn open(url: &str, options: OpenOptions, retention: u64) -> Result<Backend, String> {
    let options = options.with_retention(Retention::events(retention));
    completions::open(url, &options).await.map_err(|e| format!("connect: {e}"))
}

/// The error for a URL that opened another backend than the figure measures.
pub(crate) fn opened_as(backend: &Backend) -> String {
    format!("connect: the URL opened the {} backend, not the one measured", backend.name())
}

/// Figures 3 to 5 on one backend instance, `repeat` times each.
async fn bench_scale<B>(
    backend: Arc<B>,
    probe: &ServerProbe,
    run: &str,
    repeat: usize,
    sizes: Sizes,
    into: &mut Scale,
) -> Result<(), String>
where
    B: CompletionBackend + EngineBackend,
{
    if sizes.plan.fan_out {
        into.fan_out =
            SUBSCRIBERS.iter().map(|&subscribers| FanOutFigure { subscribers, ..Default::default() }).collect();
    }
    for rep in 0..repeat {
        let run = format!("{run}-s{rep}");
        for figure in &mut into.fan_out {
            eprintln!("   fan-out to {} (run {})", figure.subscribers, rep + 1);
            figure.runs.push(scale::fan_out(backend.clone(), probe, &run, figure.subscribers, sizes.fan_out).await?);
        }
        if sizes.plan.filtering {
            eprintln!("   filtering (run {})", rep + 1);
            into.filtering.push(scale::filtering(backend.clone(), &run, sizes.filtering).await?);
        }
    }
    if !sizes.plan.catch_up {
        return Ok(());
    }
    eprintln!("   catch-up: writing {} events", sizes.catch_up);
    // Written once: resuming does not consume the log, so every run reads the same backlog.
    let backlog = scale::backlog(backend.clone(), &format!("{run}-cu"), sizes.catch_up).await?;
    into.backlog_write_seconds = backlog.write_seconds;
    for _ in 0..repeat {
        into.catch_up.push(scale::catch_up(&*backend, &backlog).await?);
    }
    Ok(())
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".to_string())
}

fn render(report: &Report) -> String {
    use std::fmt::Write;
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncompletion-bench: {} completions per figure, medians of {} runs, {:.0} s in all",
        report.completions, report.repeat, report.seconds
    );
    let _ = writeln!(out, "command: {}", report.command);
    let _ = writeln!(out, "machine: {} cores ({}), {} MiB, Linux {}", m.cores, m.cpu, m.memory_mib, m.kernel);
    let _ = writeln!(
        out,
        "servers: {}; PostgreSQL {}",
        m.valkey.as_deref().unwrap_or("valkey not run"),
        m.postgres.as_deref().unwrap_or("not run")
    );
    if !report.results.is_empty() {
        render_backends(report, &mut out);
    }
    if let Some(row) = &report.cluster {
        cluster::render(row, &mut out);
    }
    for e in &report.errors {
        let _ = writeln!(out, "not measured: {e}");
    }
    out
}

/// The per-backend tables (figures 1 to 5).
fn render_backends(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let name = backend_name;
    if report.results.iter().any(|r| r.latency.is_some()) {
        let _ = writeln!(
            out,
            "\nend-to-end latency, terminal write call -> event on a subscriber stream (us); call50: p50 of the write call's own reply"
        );
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:>6} {:>6} {:>11} {:>6} | {:>6} {:>6} {:>6} {:>11} | {:>6} {:>6}  raw baseline",
            "backend",
            "p50",
            "p99",
            "p99.9",
            "p50 range",
            "call50",
            "raw50",
            "raw99",
            "raw999",
            "p50 range",
            "p50 x",
            "p99 x"
        );
        for r in &report.results {
            let (Some(latency), Some(write_call)) = (&r.latency, &r.write_call) else { continue };
            let ours = &latency.median;
            let raw = r.raw_latency.as_ref();
            let cell = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".to_string());
            let _ = writeln!(
                out,
                "{:<9} {:>6.0} {:>6.0} {:>6.0} {:>11} {:>6.0} | {:>6} {:>6} {:>6} {:>11} | {:>6} {:>6}  {}",
                name(r.backend),
                ours.p50_us,
                ours.p99_us,
                ours.p999_us,
                latency.p50_range(),
                write_call.median.p50_us,
                cell(raw.map(|l| l.median.p50_us)),
                cell(raw.map(|l| l.median.p99_us)),
                cell(raw.map(|l| l.median.p999_us)),
                raw.map(|l| l.p50_range()).unwrap_or_else(|| "-".to_string()),
                fmt_ratio(ratio(ours.p50_us, raw.map(|l| l.median.p50_us))),
                fmt_ratio(ratio(ours.p99_us, raw.map(|l| l.median.p99_us))),
                r.raw_label.map(|l| format!("{l}, {} B payload", r.payload_bytes)).unwrap_or_default(),
            );
        }
    }
    if report.results.iter().any(|r| r.floor.is_some()) {
        render_floors(report, out);
    }
    if let Some(w) = report.results.iter().find_map(|r| r.waits.as_ref()) {
        let _ = writeln!(
            out,
            "\nconcurrent waits on one Waiter (memory backend): {} pending, {:.0} bytes of heap per pending wait (its task, future, table entry and channel), registered in {:.1} s",
            w.waits, w.heap_per_wait, w.register_seconds
        );
        let _ = writeln!(out, "{:<22} {:>8} {:>8} {:>8}", "complete -> (us)", "p50", "p99", "samples");
        for (what, l) in [("the wait wakes up", &w.wake), ("a plain stream's item", &w.stream)] {
            let _ = writeln!(out, "{what:<22} {:>8.0} {:>8.0} {:>8}", l.p50_us, l.p99_us, l.samples);
        }
    }
    if report.results.iter().any(|r| r.unrelated_load.is_some()) {
        render_unrelated_load(report, out);
    }
    if report.results.iter().any(|r| !r.throughput.is_empty()) {
        let _ = writeln!(out, "\nwrite throughput (completions/s; bare: writes/s)");
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:>9} {:>15} | {:>9} {:>15} | {:>9}  bare baseline",
            "backend", "writers", "ours", "range", "bare", "range", "ours/bare"
        );
        for r in &report.results {
            for t in &r.throughput {
                let _ = writeln!(
                    out,
                    "{:<9} {:>7} {:>9.0} {:>15} | {:>9} {:>15} | {:>9}  {}",
                    name(r.backend),
                    t.writers,
                    t.ours.median,
                    t.ours.range(),
                    t.bare.as_ref().map(|b| format!("{:.0}", b.median)).unwrap_or_else(|| "-".to_string()),
                    t.bare.as_ref().map(Repeated::range).unwrap_or_else(|| "-".to_string()),
                    fmt_ratio(ratio(t.ours.median, t.bare.as_ref().map(|b| b.median))),
                    t.bare_label.unwrap_or("none (in-process)"),
                );
            }
        }
    }
    if report.results.iter().any(|r| !r.scale.fan_out.is_empty()) {
        let _ = writeln!(
            out,
            "\nfan-out: {} writers, one backend instance; delivered = subscribers x events / (first write -> last delivery)",
            scale::WRITERS
        );
        let _ = writeln!(
            out,
            "{:<9} {:>5} {:>6} {:>11} {:>19} | {:>11} {:>11} | {:>10} {:>10} {:>10}",
            "backend",
            "subs",
            "events",
            "delivered/s",
            "range",
            "server conns",
            "of them sub",
            "RSS/sub",
            "heap idle",
            "heap used"
        );
        for r in &report.results {
            for f in &r.scale.fan_out {
                let conns = f.runs.last().and_then(|run| run.connections);
                let cell = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string());
                let _ = writeln!(
                    out,
                    "{:<9} {:>5} {:>6} {:>11.0} {:>19} | {:>11} {:>11} | {:>8.1} K {:>8.1} K {:>8.1} K",
                    name(r.backend),
                    f.subscribers,
                    f.runs.first().map(|run| run.events).unwrap_or(0),
                    f.delivered_per_s,
                    Repeated::of(f.runs.iter().map(|run| run.delivered_per_s).collect()).range(),
                    cell(conns.map(|c| c.total)),
                    cell(conns.map(|c| c.subscriber)),
                    f.rss_per_subscriber / 1024.0,
                    f.heap_per_subscriber_open / 1024.0,
                    f.heap_per_subscriber / 1024.0,
                );
            }
        }
    }
    if report.results.iter().any(|r| !r.scale.filtering.is_empty()) {
        let _ = writeln!(
            out,
            "\nfiltering: {} namespaces, {} writers; one subscriber filtered to one namespace vs one unfiltered",
            scale::NAMESPACES,
            scale::WRITERS
        );
        let _ = writeln!(
            out,
            "{:<9} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
            "backend", "events", "flt p50", "all p50", "x", "flt CPU", "all CPU", "x"
        );
        for r in &report.results {
            let runs = &r.scale.filtering;
            if runs.is_empty() {
                continue;
            }
            let med = |f: fn(&scale::Filtering) -> f64| stats::median(&runs.iter().map(f).collect::<Vec<_>>());
            let (fp50, up50) = (med(|f| f.filtered.latency.p50_us), med(|f| f.unfiltered.latency.p50_us));
            let (fcpu, ucpu) = (med(|f| f.filtered.cpu_ms_per_1000), med(|f| f.unfiltered.cpu_ms_per_1000));
            let _ = writeln!(
                out,
                "{:<9} {:>6} | {:>6.0}us {:>6.0}us {:>6} | {:>6.0}ms {:>6.0}ms {:>6}  (p50 of the one namespace's events; process CPU per 1000 written)",
                name(r.backend),
                runs[0].events,
                fp50,
                up50,
                fmt_ratio(ratio(fp50, Some(up50))),
                fcpu,
                ucpu,
                fmt_ratio(ratio(fcpu, Some(ucpu))),
            );
        }
    }
    if report.results.iter().any(|r| !r.scale.catch_up.is_empty()) {
        let _ = writeln!(
            out,
            "\ncatch-up: StartFrom::After(cursor) with the events behind it, subscribe call -> last of them"
        );
        let _ = writeln!(out, "{:<9} {:>7} {:>10} {:>17} {:>5}", "backend", "events", "events/s", "range", "gaps");
        for r in &report.results {
            let runs = &r.scale.catch_up;
            if runs.is_empty() {
                continue;
            }
            let rates = Repeated::of(runs.iter().map(|c| c.events_per_s).collect());
            let _ = writeln!(
                out,
                "{:<9} {:>7} {:>10.0} {:>17} {:>5}",
                name(r.backend),
                runs[0].events,
                rates.median,
                rates.range(),
                runs.iter().map(|c| c.gaps).sum::<usize>(),
            );
        }
    }
}

fn backend_name(b: Which) -> String {
    match b {
        Which::ValkeyCluster => "valkey-cluster".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Figure 1's split and floors: p50 of each probe end to end, of its write call alone and of
/// what came after the call's reply (per sample), and ours against the raw pub/sub baseline
/// and against the same-semantics floor.
fn render_floors(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nlatency split and floors (p50, us; dlv: end to end minus the call, per sample), ours / raw pub/sub / same semantics in one round trip, interleaved"
    );
    let _ = writeln!(
        out,
        "{:<9} {:>5} {:>6} {:>5} | {:>5} {:>6} {:>5} | {:>5} {:>5} {:>6} {:>5} {:>11} | {:>7} {:>7} {:>7}  floor",
        "backend",
        "ours",
        "call",
        "dlv",
        "raw",
        "call",
        "dlv",
        "flr50",
        "flr99",
        "call",
        "dlv",
        "flr range",
        "x raw",
        "x floor",
        "p99 x f"
    );
    for r in &report.results {
        let (Some(latency), Some(call), Some(delivery), Some(floor)) =
            (&r.latency, &r.write_call, &r.delivery, &r.floor)
        else {
            continue;
        };
        let p50 = |l: Option<&Repeated<Latency>>| l.map(|l| format!("{:.0}", l.median.p50_us)).unwrap_or("-".into());
        let _ = writeln!(
            out,
            "{:<9} {:>5.0} {:>6.0} {:>5.0} | {:>5} {:>6} {:>5} | {:>5.0} {:>5.0} {:>6.0} {:>5.0} {:>11} | {:>7} {:>7} {:>7}  {}",
            backend_name(r.backend),
            latency.median.p50_us,
            call.median.p50_us,
            delivery.median.p50_us,
            p50(r.raw_latency.as_ref()),
            p50(r.raw_call.as_ref()),
            p50(r.raw_delivery.as_ref()),
            floor.end_to_end.median.p50_us,
            floor.end_to_end.median.p99_us,
            floor.call.median.p50_us,
            floor.delivery.median.p50_us,
            floor.end_to_end.p50_range(),
            fmt_ratio(ratio(latency.median.p50_us, r.raw_latency.as_ref().map(|l| l.median.p50_us))),
            fmt_ratio(ratio(latency.median.p50_us, Some(floor.end_to_end.median.p50_us))),
            fmt_ratio(ratio(latency.median.p99_us, Some(floor.end_to_end.median.p99_us))),
            r.floor_label.unwrap_or_default(),
        );
    }
}

/// Figure 6: ours with the unrelated load against ours idle, interleaved.
fn render_unrelated_load(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let Some((r, f)) = report.results.iter().find_map(|r| r.unrelated_load.as_ref().map(|f| (r, f))) else {
        return;
    };
    let _ = writeln!(
        out,
        "\nlatency with unrelated load ({} writers on a table of their own, each BEGIN; INSERT; {:.0} ms; UPDATE; COMMIT; plus one session idle in transaction holding an xid) vs idle, interleaved (us)",
        f.writers, f.in_transaction_ms
    );
    let _ = writeln!(
        out,
        "{:<9} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>11} | {:>6} {:>6} | {:>7}",
        "backend",
        "idle50",
        "idle99",
        "call50",
        "dlv50",
        "load50",
        "load99",
        "call50",
        "dlv50",
        "p50 range",
        "p50 x",
        "p99 x",
        "load tx/s"
    );
    let (idle, loaded) = (&f.idle, &f.loaded);
    let _ = writeln!(
        out,
        "{:<9} {:>6.0} {:>6.0} {:>6.0} {:>6.0} | {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>11} | {:>6} {:>6} | {:>9.0}",
        backend_name(r.backend),
        idle.end_to_end.median.p50_us,
        idle.end_to_end.median.p99_us,
        idle.call.median.p50_us,
        idle.delivery.median.p50_us,
        loaded.end_to_end.median.p50_us,
        loaded.end_to_end.median.p99_us,
        loaded.call.median.p50_us,
        loaded.delivery.median.p50_us,
        loaded.end_to_end.p50_range(),
        fmt_ratio(ratio(loaded.end_to_end.median.p50_us, Some(idle.end_to_end.median.p50_us))),
        fmt_ratio(ratio(loaded.end_to_end.median.p99_us, Some(idle.end_to_end.median.p99_us))),
        f.load_transactions_per_s.median,
    );
}
