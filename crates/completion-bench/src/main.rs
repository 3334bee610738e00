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

mod backends;
mod cluster;
mod heap;
mod library;
mod load;
mod machine;
mod raw_postgres;
mod raw_valkey;
mod render;
mod report;
mod scale;
mod stats;
mod waits;
mod writers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::backends::{bench_memory, bench_postgres, bench_valkey};
use crate::machine::Machine;
use crate::render::render;
use crate::report::*;

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
