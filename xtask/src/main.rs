//! Project chores, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `test`: what CI runs: formatting, clippy, every workspace test, then the conformance
//!   table read from that same test run.
//! - `conformance`: only the conformance suite, against every backend crate that registers
//!   it (a crate under `crates/` with `tests/conformance.rs`), as a backend-by-test table.
//! - `demo`: a small DAG engine on the public traits, on throwaway Valkey and PostgreSQL
//!   servers and in-process, surviving killed connections and a server restart midway.
//! - `bench`: the benchmarks (`crates/completion-bench`), in a release build.

mod cargo;
mod demo;
mod libtest;
#[cfg(test)]
mod readme_example;
mod table;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::libtest::Report;
use crate::table::Table;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project chores for the completions workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// cargo fmt --check, cargo clippy -D warnings, cargo test --workspace, then the
    /// conformance table from that test run. Exits non-zero if any step failed.
    Test,
    /// Runs only the conformance tests of every backend and prints a test-by-backend table.
    Conformance,
    /// A DAG engine of 240 tasks on every backend (throwaway servers, or VALKEY_URL /
    /// DATABASE_URL), killing connections and restarting the server midway; ends with a
    /// summary and exits non-zero unless every task was promoted exactly once.
    Demo(demo::DemoArgs),
    /// Latency and write throughput of each backend against the raw protocols, on
    /// throwaway servers (release build). Prints a table; JSON in target/bench/results.json.
    Bench {
        /// A short run (about 2 000 completions per figure) instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Further arguments for completion-bench (see `cargo xtask bench -- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test => test(),
        Command::Conformance => conformance(),
        Command::Demo(args) => demo::run(args),
        Command::Bench { quick, args } => bench(quick, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn header(text: &str) {
    println!("\n==> {text}");
}

/// `cargo run --release -p completion-bench -- [--quick] <args>`.
fn bench(quick: bool, args: &[String]) -> Result<(), String> {
    let mut cargo_args = vec!["run", "--release", "-p", "completion-bench", "--"];
    if quick {
        cargo_args.push("--quick");
    }
    cargo_args.extend(args.iter().map(String::as_str));
    let command = cargo::cargo(&cargo_args);
    header(&cargo::describe(&command));
    let status = cargo::run(command)?;
    if status.success() { Ok(()) } else { Err(format!("completion-bench failed ({status})")) }
}

/// One step's verdict for the final summary.
struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn test() -> Result<(), String> {
    let mut steps = Vec::new();
    let colour = cargo::colour();

    let mut fmt = vec!["fmt", "--all", "--", "--check"];
    if !colour {
        // rustfmt colours its diff even into a file or CI log unless told not to.
        fmt.extend(["--color", "never"]);
    }
    let plain_steps: [(&'static str, &[&str]); 2] =
        [("fmt", &fmt), ("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])];
    for (i, (name, args)) in plain_steps.into_iter().enumerate() {
        let command = cargo::cargo(args);
        header(&format!("[{}/3] {}", i + 1, cargo::describe(&command)));
        let started = Instant::now();
        let status = cargo::run(command)?;
        let detail = format!("{} in {:.0?}", if status.success() { "ok" } else { "FAILED" }, started.elapsed());
        steps.push(Step { name, ok: status.success(), detail });
    }

    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if colour {
        args.extend(["--color", "always", "--", "--color", "always"]);
    }
    let command = cargo::cargo(&args);
    header(&format!("[3/3] {}", cargo::describe(&command)));
    let started = Instant::now();
    let (status, output) = cargo::run_captured(command)?;
    let elapsed = started.elapsed();
    let report = libtest::parse(&output);
    let expected = cargo::conformance_packages()?;
    let table = Table::from_report(&report, &expected);

    header("conformance (from the test run above)");
    print!("{}", table.render());

    let failures: Vec<_> = report.failures().collect();
    let crashed: Vec<_> = report.binaries.iter().filter(|b| !b.finished).collect();
    let ran: usize = report.binaries.iter().map(|b| b.results.len()).sum();
    let ok = status.success() && failures.is_empty() && crashed.is_empty() && table.is_clean();
    let detail = format!(
        "{} in {elapsed:.0?}: {ran} tests reported in {} binaries, {} failed{}",
        if ok { "ok" } else { "FAILED" },
        report.binaries.len(),
        failures.len(),
        if crashed.is_empty() { String::new() } else { format!(", {} binaries did not finish", crashed.len()) }
    );
    steps.push(Step { name: "test", ok, detail });

    header("summary");
    for step in &steps {
        println!("  {:<7} {}", step.name, step.detail);
    }
    print_problems(&report, status.success());
    if steps.iter().all(|s| s.ok) {
        Ok(())
    } else {
        let failed: Vec<_> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
        Err(format!("failed steps: {}", failed.join(", ")))
    }
}

/// Failed tests, unfinished binaries and cargo's own errors, after the summary, where a
/// reader of a long CI log looks first.
fn print_problems(report: &Report, cargo_ok: bool) {
    let failures: Vec<_> = report.failures().collect();
    if !failures.is_empty() {
        println!("\nfailed tests:");
        for (binary, result) in failures {
            println!("  {}  ({})", result.name, binary.name);
        }
    }
    for binary in report.binaries.iter().filter(|b| !b.finished) {
        println!("did not finish (crashed, aborted or killed): {}", binary.name);
    }
    if !report.errors.is_empty() {
        println!("\ncargo reported:");
        for error in &report.errors {
            println!("  {error}");
        }
    } else if !cargo_ok {
        println!("\ncargo test failed without an error line xtask recognises: see its output above");
    }
}

/// Runs each backend crate's conformance binary in its own cargo invocation, so a crate
/// that does not build (or a binary that crashes) cannot hide the results of the others.
fn conformance() -> Result<(), String> {
    let packages = cargo::conformance_packages()?;
    if packages.is_empty() {
        return Err("no package under crates/ has tests/conformance.rs".to_string());
    }
    let mut table = Table::default();
    let mut errors = Vec::new();
    let mut failed_runs = Vec::new();
    for (i, package) in packages.iter().enumerate() {
        let mut args = vec!["test", "--no-fail-fast", "-p", package.as_str(), "--test", "conformance"];
        if cargo::colour() {
            args.extend(["--color", "always", "--", "--color", "always"]);
        }
        let command = cargo::cargo(&args);
        header(&format!("[{}/{}] {}", i + 1, packages.len(), cargo::describe(&command)));
        let (status, output) = cargo::run_captured(command)?;
        let report = libtest::parse(&output);
        table.add(&report, std::slice::from_ref(package));
        errors.extend(report.errors.iter().map(|e| format!("{package}: {e}")));
        if !status.success() {
            failed_runs.push(package.as_str());
        }
    }

    header("conformance");
    print!("{}", table.render());
    if !errors.is_empty() {
        println!("\ncargo reported:");
        for error in &errors {
            println!("  {error}");
        }
    }
    match (table.is_clean(), failed_runs.is_empty()) {
        (true, true) => Ok(()),
        (true, false) => {
            Err(format!("`cargo test` failed for {} although every reported test passed", failed_runs.join(", ")))
        }
        _ => Err("the conformance suite did not pass: see the table above".to_string()),
    }
}
