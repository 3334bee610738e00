//! The demo (`cargo xtask demo`, which runs `cargo run -p dag-engine --bin demo -- ARGS`): a
//! small workflow engine, built only on the public traits, runs a
//! seeded random DAG on every backend, on real throwaway servers, and survives a killed
//! connection and a server restart midway.
//!
//! Per backend: start (or find) the server, connect a fresh backend instance, run the
//! engine of `examples/dag-engine` ([`dag_engine`]) over its DAG with a progress bar, inject the faults of [`servers`]
//! (kill the backend's connections at 40 % of the tasks, restart the server at 65 %), then
//! check that every task was promoted exactly once, every completion arrived once, no gap
//! occurred and every execution is terminal with the outcome the DAG implies. The summary
//! ([`report`]) shows latencies per hop, reconnects and gaps. Any failed check makes the
//! demo exit non-zero, naming what went wrong.
//!
//! `--state` picks where the engine keeps its task state: `builtin` (the backend's
//! executions, `EngineBackend`), `own` (a task table of the engine's own that emits each
//! completion from its own transaction or function: PostgreSQL and Valkey/Redis only, the
//! in-process backend has no emit API) or `both` (the default: each backend in both modes
//! where it has them, named `valkey` and `valkey/own` and so on). The same checks apply to
//! every run.
//!
//! `--backend all` (the default) runs valkey, postgres and memory, in that order. When no
//! `valkey-server` is installed, `redis-server` stands in for it (said in the output). When
//! a server cannot be started, the demo prints exactly what to install (or which URL to
//! set) and exits non-zero before running anything; `--backend memory` needs no server.

mod report;
mod servers;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use completion_testserver::{ServerError, ValkeyFlavor};

use self::report::Bars;
use self::servers::{Kind, Server, State};
use dag_engine::dag::{Dag, NAMESPACES};
use dag_engine::engine::{self, EngineOptions, Progress, RunReport};

/// The options of the demo.
#[derive(Debug, clap::Parser)]
#[command(
    name = "cargo xtask demo",
    about = "The DAG engine on every backend, surviving killed connections and a server restart"
)]
pub struct DemoArgs {
    /// Which backend to run on. `all` runs valkey (redis-server when valkey-server is not
    /// installed), postgres and memory.
    #[arg(long, value_enum, default_value_t = Choice::All)]
    backend: Choice,
    /// Tasks in the DAG, in flows of about 30 spread over 3 namespaces.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    tasks: u32,
    /// Seed of the DAG's shape, the workers' outcomes and work times (default: from the
    /// clock, printed so that a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the engine keeps its task state: the backend's executions (`builtin`), a table
    /// of its own that emits from its own transaction (`own`: postgres, valkey, redis), or
    /// `both` in turn on each backend that has them.
    #[arg(long, value_enum, default_value_t = StateChoice::Both)]
    state: StateChoice,
}

/// `--state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StateChoice {
    /// The backend's executions (`EngineBackend`).
    Builtin,
    /// The engine's own task table, emitting from its own atomic step.
    Own,
    /// Built-in, then own (where the backend has an emit API).
    Both,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Choice {
    /// In-process: no server needed.
    Memory,
    /// A throwaway valkey-server (or `$VALKEY_URL`).
    Valkey,
    /// A throwaway redis-server (or `$VALKEY_URL`).
    Redis,
    /// A throwaway PostgreSQL (or `$DATABASE_URL`).
    Postgres,
    /// valkey, postgres and memory.
    All,
}

/// Runs the demo; an error is the line `xtask` prints before exiting non-zero.
fn main() -> std::process::ExitCode {
    let args = <DemoArgs as clap::Parser>::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: DemoArgs) -> Result<(), String> {
    let seed =
        args.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(7, |d| d.as_secs() % 100_000));
    let dag = Dag::generate(args.tasks as usize, seed).map_err(|e| e.to_string())?;
    let kinds: Vec<Kind> = match args.backend {
        Choice::Memory => vec![Kind::Memory],
        Choice::Valkey => vec![Kind::Valkey(ValkeyFlavor::Valkey)],
        Choice::Redis => vec![Kind::Valkey(ValkeyFlavor::Redis)],
        Choice::Postgres => vec![Kind::Postgres],
        Choice::All => vec![Kind::Valkey(ValkeyFlavor::Valkey), Kind::Postgres, Kind::Memory],
    };
    let states = match args.state {
        StateChoice::Builtin => vec![State::Builtin],
        StateChoice::Own => vec![State::Own],
        StateChoice::Both => vec![State::Builtin, State::Own],
    };
    if kinds == [Kind::Memory] && states == [State::Own] {
        return Err("--state own needs an emit API, which the in-process backend does not have: \
                    use --backend postgres, valkey or redis, or --state builtin"
            .to_string());
    }
    println!(
        "completions demo: {} tasks in {} flows over {} namespaces (longest chain {} tasks), seed {seed} \
         (repeat with --seed {seed})",
        dag.tasks.len(),
        dag.flows,
        NAMESPACES.len(),
        dag.depth()
    );

    let started = Instant::now();
    let servers = start_servers(&kinds, args.backend == Choice::All)?;
    for (kind, server) in &servers {
        println!("  {:<9} {}", kind.name(), server.describe());
    }
    println!("  started in {} ms", started.elapsed().as_millis());
    // Every (server, mode) pair the backend has; memory has no own-state mode.
    let runs: Vec<(usize, State)> = (0..servers.len())
        .flat_map(|i| states.iter().map(move |&state| (i, state)))
        .filter(|&(i, state)| servers[i].0 != Kind::Memory || state == State::Builtin)
        .collect();
    if states.contains(&State::Own) && kinds.contains(&Kind::Memory) {
        let what = if states.contains(&State::Builtin) { "built-in mode only" } else { "skipped" };
        println!("  memory: {what} (no own-state mode: completion-memory has no emit API)");
    }
    println!();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let bars = Bars::new();
    let outcome = runtime.block_on(async {
        let progress: Vec<_> =
            runs.iter().map(|&(i, state)| bars.add(servers::run_name(servers[i].0, state), dag.tasks.len())).collect();
        let mut outcome = Vec::new();
        for (&(i, state), progress) in runs.iter().zip(&progress) {
            let (kind, server) = &servers[i];
            let result = run_backend(server, state, &dag, progress).await;
            match &result {
                Ok(report) if report.problems.is_empty() => progress.finish("ok"),
                Ok(report) => progress.finish(&format!("FAILED: {} problems", report.problems.len())),
                Err(e) => progress.finish(&format!("FAILED: {e}")),
            }
            outcome.push((servers::run_name(*kind, state), result));
        }
        outcome
    });
    drop(runtime);
    drop(servers);
    // The bars are finished: the rest prints below them.
    conclude(&outcome)
}

/// Starts every server (in parallel: PostgreSQL takes the longest). On failure, says what
/// to install. With `fallback`, a missing valkey-server is replaced by redis-server.
fn start_servers(kinds: &[Kind], fallback: bool) -> Result<Vec<(Kind, Server)>, String> {
    let results: Vec<(Kind, Result<Server, ServerError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            kinds.iter().map(|&kind| (kind, scope.spawn(move || Server::start(kind, None)))).collect();
        handles
            .into_iter()
            .map(|(kind, h)| (kind, h.join().unwrap_or_else(|_| Err(ServerError::Protocol("start panicked".into())))))
            .collect()
    });
    let mut servers = Vec::new();
    let mut missing = Vec::new();
    for (kind, result) in results {
        let result = match (kind, result) {
            (Kind::Valkey(ValkeyFlavor::Valkey), Err(valkey @ ServerError::MissingBinary { .. })) if fallback => {
                let redis = Kind::Valkey(ValkeyFlavor::Redis);
                match Server::start(redis, None) {
                    Ok(server) => {
                        println!("  valkey-server is not installed: redis-server stands in for it");
                        servers.push((redis, server));
                        continue;
                    }
                    // Either binary would do: say how to get both.
                    Err(e) => {
                        missing.push(valkey);
                        Err(e)
                    }
                }
            }
            (_, result) => result,
        };
        match result {
            Ok(server) => servers.push((kind, server)),
            Err(e) => missing.push(e),
        }
    }
    if missing.is_empty() { Ok(servers) } else { Err(install_advice(&missing)) }
}

/// What to do when servers cannot be started: one line per problem, then the ways out.
fn install_advice(errors: &[ServerError]) -> String {
    let mut text = String::from("the demo cannot start the servers it needs:\n");
    for error in errors {
        match error {
            ServerError::MissingBinary { what, hint } => {
                text.push_str(&format!("  - not found: {what}\n      fix: {hint}\n"));
            }
            other => text.push_str(&format!("  - {other}\n")),
        }
    }
    text.push_str(
        "  or use servers of your own: VALKEY_URL=redis://HOST:PORT and/or DATABASE_URL=postgres://USER@HOST/DB\n\
         \x20 or run only the in-process backend, which needs no server: cargo xtask demo --backend memory",
    );
    text
}

/// Connects, runs the engine (its task state as `state` says) with the server's faults,
/// cleans up on external servers.
async fn run_backend(
    server: &Server,
    state: State,
    dag: &Dag,
    progress: &report::BackendProgress,
) -> Result<RunReport, String> {
    progress.start("connecting");
    let connected = server.connect(state).await?;
    let mut options = EngineOptions::new().map_err(|e| e.to_string())?;
    options.faults = connected.faults;
    progress.note(&format!("task state ({}): {}", state.name(), connected.store.describe()));
    progress.start(match server {
        Server::Memory => "running (in-process: no connection to kill, no server to restart)",
        _ if server.is_external() => "running (your server: kills connections twice, no restart)",
        _ => "running",
    });
    let report =
        engine::run(connected.completions.clone(), connected.store.clone(), dag, options, progress as &dyn Progress)
            .await;
    drop(connected.completions);
    drop(connected.store);
    if let Some(cleanup) = connected.cleanup {
        match cleanup.await {
            Ok(line) => progress.note(&line),
            Err(e) => progress.note(&format!("cleaning up failed: {e}")),
        }
    }
    report
}

/// Prints the summary (after the bars are finished) and the problems; fails when any
/// backend had one.
fn conclude(runs: &[(&'static str, Result<RunReport, String>)]) -> Result<(), String> {
    let done: Vec<(&'static str, &RunReport)> =
        runs.iter().filter_map(|(name, r)| r.as_ref().ok().map(|r| (*name, r))).collect();
    println!();
    if !done.is_empty() {
        println!("summary");
        print!("{}", report::summary(&done));
        println!(
            "  hop: from the start of a task's terminal write to its dependent's start (create_execution, or the\n  \
             engine's own insert) returning;\n  \
             delivery: from the start of a terminal write to its completion arriving on the engine's subscription.",
        );
    }
    let mut failed = Vec::new();
    for (name, result) in runs {
        match result {
            Ok(report) => {
                for fault in &report.faults {
                    println!("  {name}: {fault}");
                }
                if let Some(cursor) = &report.last_cursor {
                    println!("  {name}: last cursor {cursor} (subscribe_from(StartFrom::After(cursor)) resumes there)");
                }
                if !report.problems.is_empty() {
                    failed.push(format!("{name}: {} problems", report.problems.len()));
                    for problem in report.problems.iter().take(20) {
                        println!("  {name} PROBLEM: {problem}");
                    }
                }
            }
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    if failed.is_empty() {
        println!("\nevery task promoted exactly once, every completion delivered once, no gaps: ok");
        Ok(())
    } else {
        Err(format!("the demo failed: {}", failed.join("; ")))
    }
}

#[cfg(test)]
mod tests;
