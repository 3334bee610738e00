//! What the demo shows: a progress bar per backend while it runs, a summary at the end.
//!
//! On a terminal the bars are drawn with `indicatif` (one line per backend, fault notes
//! printed above them). When stdout is not a terminal (CI logs, pipes) nothing is drawn;
//! instead each backend prints a plain line at every quarter of its tasks and one per
//! fault, so a log stays short and readable.
//!
//! Latencies in the summary (each over every task or completion of the run, the fault
//! windows included, so `max` shows what a dropped connection or a restart cost):
//! - **hop**: from the start of the terminal write (its last attempt, when retried) of the
//!   task whose completion made a dependent ready, to that dependent's `create_execution`
//!   returning, just before the engine hands it to a worker. It covers the write, the
//!   completion log, delivery to the engine's subscription, the engine's bookkeeping and
//!   the create.
//! - **delivery**: from the start of a terminal write to its completion's arrival on the
//!   engine's subscription.
//! - **terminal write**: how long the `complete` / `fail` / `cancel` call took to return.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use dag_engine::engine::{Progress, RunReport};

/// The bars of every backend.
pub struct Bars {
    multi: MultiProgress,
    plain: bool,
}

impl Bars {
    /// Bars on a terminal; plain lines otherwise.
    pub fn new() -> Self {
        let plain = !std::io::stdout().is_terminal();
        let target = if plain { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stdout() };
        Self { multi: MultiProgress::with_draw_target(target), plain }
    }

    /// A bar for `backend`, waiting to start.
    pub fn add(&self, backend: &'static str, tasks: usize) -> BackendProgress {
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:32.cyan/blue}] {pos:>5}/{len} tasks  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(tasks as u64).with_style(style).with_prefix(backend));
        bar.set_message("waiting");
        BackendProgress {
            bar,
            multi: self.multi.clone(),
            plain: self.plain,
            backend,
            tasks,
            quarter: AtomicUsize::new(0),
        }
    }
}

/// One backend's bar.
pub struct BackendProgress {
    bar: ProgressBar,
    multi: MultiProgress,
    plain: bool,
    backend: &'static str,
    tasks: usize,
    /// The last quarter a plain line was printed for.
    quarter: AtomicUsize,
}

impl BackendProgress {
    /// The run starts.
    pub fn start(&self, what: &str) {
        self.bar.set_message(what.to_string());
        self.bar.reset_elapsed();
        if self.plain {
            println!("  [{}] {what}", self.backend);
        }
    }

    /// The run ended: `ok` or what went wrong.
    pub fn finish(&self, line: &str) {
        self.bar.finish_with_message(line.to_string());
        if self.plain {
            println!("  [{}] {line}", self.backend);
        }
    }
}

impl Progress for BackendProgress {
    fn advance(&self, finished: usize) {
        self.bar.set_position(finished as u64);
        let quarter = finished * 4 / self.tasks.max(1);
        if self.plain && quarter > self.quarter.fetch_max(quarter, Ordering::Relaxed) && quarter < 4 {
            println!("  [{}] {finished}/{} tasks finished", self.backend, self.tasks);
        }
    }

    fn note(&self, line: &str) {
        if self.plain {
            println!("  [{}] {line}", self.backend);
        } else {
            let _ = self.multi.println(format!("{:>12}: {line}", self.backend));
            // The bar keeps only the gist ("restarted valkey-server"), to fit a narrow terminal.
            self.bar.set_message(line.split(" (").next().unwrap_or(line).to_string());
        }
    }
}

/// The value at quantile `q` (0..=1) of `values`, nearest-rank; `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// `0.42 ms`, `12.3 ms`, `1.52 s`.
pub fn format_duration(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".to_string() };
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// How one row of the summary renders a run.
type Cell = fn(&RunReport) -> String;

/// The summary table: one column per backend that ran.
pub fn summary(runs: &[(&'static str, &RunReport)]) -> String {
    let rows: [(&str, Cell); 16] = [
        ("tasks", |r| r.tasks.to_string()),
        ("completions seen", |r| r.completions.to_string()),
        ("succeeded/failed/cancelled", |r| format!("{}/{}/{}", r.outcomes[0], r.outcomes[1], r.outcomes[2])),
        ("promoted exactly once", |r| if r.problems.is_empty() { "yes".into() } else { "NO".into() }),
        ("hop p50", |r| format_duration(quantile(&r.hops, 0.50))),
        ("hop p99", |r| format_duration(quantile(&r.hops, 0.99))),
        ("hop max", |r| format_duration(quantile(&r.hops, 1.0))),
        ("terminal write p50", |r| format_duration(quantile(&r.writes, 0.50))),
        ("delivery p50", |r| format_duration(quantile(&r.deliveries, 0.50))),
        ("delivery max", |r| format_duration(quantile(&r.deliveries, 1.0))),
        ("reconnects", |r| r.counters.reconnects.to_string()),
        ("catch-up reads", |r| r.counters.catch_up_reads.to_string()),
        ("gaps", |r| (r.counters.gaps + r.gap_items).to_string()),
        ("write retries", |r| r.write_retries.to_string()),
        ("faults injected", |r| r.faults.len().to_string()),
        ("run time", |r| format_duration(Some(r.elapsed))),
    ];
    // The first row, the engine's mode, is read from the run's name (`valkey/own`).
    let mode = |name: &str| if name.ends_with("/own") { "own" } else { "built-in" }.to_string();
    let labels: Vec<&str> = std::iter::once("task state").chain(rows.iter().map(|(l, _)| *l)).collect();
    let label_width = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    let cells: Vec<Vec<String>> = std::iter::once(runs.iter().map(|(name, _)| mode(name)).collect())
        .chain(rows.iter().map(|(_, f)| runs.iter().map(|(_, r)| f(r)).collect()))
        .collect();
    let width = runs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| cells.iter().map(|row| row[i].len()).chain([name.len()]).max().unwrap_or(0))
        .collect::<Vec<_>>();
    let mut out = format!("  {:label_width$}", "");
    for ((name, _), w) in runs.iter().zip(&width) {
        out.push_str(&format!("  {name:>w$}"));
    }
    out.push('\n');
    for (label, row) in labels.iter().zip(&cells) {
        out.push_str(&format!("  {label:label_width$}"));
        for (cell, w) in row.iter().zip(&width) {
            out.push_str(&format!("  {cell:>w$}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&values, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&values, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&values, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[Duration::from_millis(7)], 0.5), Some(Duration::from_millis(7)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Some(Duration::from_micros(420))), "0.42 ms");
        assert_eq!(format_duration(Some(Duration::from_micros(12_340))), "12.3 ms");
        assert_eq!(format_duration(Some(Duration::from_millis(1520))), "1.52 s");
        assert_eq!(format_duration(None), "-");
    }

    #[test]
    fn summary_has_a_column_per_backend() {
        let report = RunReport { tasks: 3, completions: 3, outcomes: [2, 0, 1], ..RunReport::default() };
        let text = summary(&[("valkey", &report), ("postgres/own", &report)]);
        let header = text.lines().next().unwrap();
        assert!(header.contains("valkey") && header.contains("postgres/own"), "{text}");
        let mode = text.lines().nth(1).unwrap();
        assert!(mode.contains("task state") && mode.contains("built-in") && mode.ends_with(" own"), "{text}");
        assert!(text.lines().any(|l| l.contains("succeeded/failed/cancelled") && l.contains("2/0/1")), "{text}");
        assert!(text.lines().any(|l| l.trim_start().starts_with("gaps")), "{text}");
    }
}
