//! Reads what `cargo test` printed (cargo's messages and libtest's plain output, interleaved
//! on one pipe) back into results: which test binary ran, which tests passed, failed or were
//! ignored (with the reason given to `#[ignore = "..."]`), whether each binary got as far as
//! its `test result:` line, and cargo's own error lines.
//!
//! Limits: it relies on libtest's human format (`test <name> ... ok|FAILED|ignored[, why]`),
//! which is stable in practice but not a promised interface. Binaries run one after another,
//! so their lines never interleave; a test's own output normally is captured by libtest, and
//! anything else (a child process writing to the inherited pipe) is skipped unless it splits
//! a result line in two, which is handled for the case libtest itself produces (a
//! `test <name> ... ` line whose status comes on a later line).

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// `ok`.
    Passed,
    /// `FAILED`.
    Failed,
    /// `ignored`, with the reason when the attribute gave one.
    Ignored(Option<String>),
}

/// One test's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    /// The test's path inside its binary, e.g. `memory::ready_on_return`.
    pub name: String,
    /// How it ended.
    pub status: Status,
}

/// One test binary (or a crate's doc tests) and what it reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binary {
    /// What cargo printed after `Running` (`tests/conformance.rs (target/debug/deps/conformance-…)`),
    /// or `Doc-tests <crate>`.
    pub name: String,
    /// Its results, in the order they were printed.
    pub results: Vec<TestResult>,
    /// Whether libtest printed its `test result:` summary: a binary that crashed or was
    /// killed did not.
    pub finished: bool,
}

impl Binary {
    /// Whether this is a `tests/conformance.rs` binary of some package.
    pub fn is_conformance(&self) -> bool {
        self.name.starts_with("tests/conformance.rs")
    }
}

/// Everything read from one `cargo test` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The binaries in the order they ran.
    pub binaries: Vec<Binary>,
    /// cargo's own `error: ...` lines (could not compile, test failed, ...), without the
    /// compiler's diagnostics.
    pub errors: Vec<String>,
}

impl Report {
    /// Every failed test, with the binary it belongs to.
    pub fn failures(&self) -> impl Iterator<Item = (&Binary, &TestResult)> {
        self.binaries.iter().flat_map(|b| b.results.iter().filter(|r| r.status == Status::Failed).map(move |r| (b, r)))
    }
}

/// Parses `output`: cargo's stderr and the test binaries' stdout, as one stream.
pub fn parse(output: &str) -> Report {
    let mut report = Report::default();
    let lines: Vec<String> = output.lines().map(|l| strip_ansi(l).trim_end().to_string()).collect();
    // A result line split by foreign output: `test <name> ...` now, its status later.
    let mut pending: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            report.binaries.push(Binary { name: rest.to_string(), ..Binary::default() });
            pending = None;
        } else if trimmed.starts_with("Doc-tests ") {
            report.binaries.push(Binary { name: trimmed.to_string(), ..Binary::default() });
            pending = None;
        } else if line.starts_with("test result: ") {
            current(&mut report).finished = true;
            pending = None;
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, status)) = rest.split_once(" ... ") {
                if let Some(status) = parse_status(status) {
                    current(&mut report).results.push(TestResult { name: name.to_string(), status });
                    pending = None;
                }
            } else if let Some(name) = rest.strip_suffix(" ...") {
                pending = Some(name.to_string());
            }
        } else if let Some(status) = pending.as_ref().and(parse_status(trimmed)) {
            let name = pending.take().unwrap_or_default();
            current(&mut report).results.push(TestResult { name, status });
        } else if is_cargo_error(&lines, i) {
            report.errors.push(trimmed.to_string());
        }
    }
    report
}

/// The binary results are added to; results seen before any `Running` line (output that
/// was not cargo's) go to a binary named `(unknown)`.
fn current(report: &mut Report) -> &mut Binary {
    if report.binaries.is_empty() {
        report.binaries.push(Binary { name: "(unknown)".to_string(), ..Binary::default() });
    }
    let last = report.binaries.len() - 1;
    &mut report.binaries[last]
}

fn parse_status(text: &str) -> Option<Status> {
    match text {
        "ok" => Some(Status::Passed),
        "FAILED" => Some(Status::Failed),
        "ignored" => Some(Status::Ignored(None)),
        _ => text.strip_prefix("ignored, ").map(|why| Status::Ignored(Some(why.to_string()))),
    }
}

/// cargo's error lines, told apart from the compiler's: a compiler error is followed by a
/// `--> file:line` line (or is its closing `aborting due to` line). The `-p … --test …`
/// list under `error: N targets failed:`, and the `Caused by:` explanation are kept too.
fn is_cargo_error(lines: &[String], i: usize) -> bool {
    let line = &lines[i];
    // `Caused by:` and its explanation: how a test binary died (signal, exit code).
    if line == "Caused by:" || (i > 0 && lines[i - 1] == "Caused by:") {
        return true;
    }
    if line.starts_with("error: ") {
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        return !next.starts_with("-->") && !line.starts_with("error: aborting due to");
    }
    let listed = line.trim_start().starts_with("`-p ");
    listed
        && lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim_start().starts_with("`-p "))
            .is_some_and(|l| l.starts_with("error: ") && l.ends_with(" failed:"))
}

/// `line` without ANSI escape sequences (colours, charset switches and OSC hyperlinks).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // Anything else (`ESC ( B`, which terminals get after a colour reset): any
            // intermediate bytes, then one final byte.
            Some(c) if (' '..='/').contains(&c) => {
                for c in chars.by_ref() {
                    if !(' '..='/').contains(&c) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_BINARIES: &str = "\
   Compiling completion-memory v0.1.0 (/work/main/crates/completion-memory)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 3.02s
     Running unittests src/lib.rs (target/debug/deps/completion_memory-5d1c)

running 1 test
test log::tests::trims ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/conformance.rs (target/debug/deps/conformance-0a1b)

running 4 tests
test memory::killed_connections_lose_nothing ... ignored, the memory backend has no server connections
test memory::each_outcome ... ok
test memory::plain_ignore ... ignored
test memory::ready_on_return ... FAILED

failures:

---- memory::ready_on_return stdout ----
test helper line that is not a result
thread 'memory::ready_on_return' panicked at crates/completion-conformance/src/tests.rs:22:9:
round 3: the first completion after subscribe returned

failures:
    memory::ready_on_return

test result: FAILED. 1 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.05s

error: test failed, to rerun pass `-p completion-memory --test conformance`
   Doc-tests completion_core

running 1 test
test crates/completion-core/src/lib.rs - (line 44) - compile ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.20s

error: 1 target failed:
    `-p completion-memory --test conformance`
";

    #[test]
    fn reads_binaries_results_and_reasons() {
        let report = parse(TWO_BINARIES);
        let names: Vec<_> = report.binaries.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "unittests src/lib.rs (target/debug/deps/completion_memory-5d1c)",
                "tests/conformance.rs (target/debug/deps/conformance-0a1b)",
                "Doc-tests completion_core"
            ]
        );
        assert!(report.binaries.iter().all(|b| b.finished));
        let conformance = &report.binaries[1];
        assert!(conformance.is_conformance() && !report.binaries[0].is_conformance());
        let results: Vec<_> = conformance.results.iter().map(|r| (r.name.as_str(), r.status.clone())).collect();
        assert_eq!(
            results,
            [
                (
                    "memory::killed_connections_lose_nothing",
                    Status::Ignored(Some("the memory backend has no server connections".into()))
                ),
                ("memory::each_outcome", Status::Passed),
                ("memory::plain_ignore", Status::Ignored(None)),
                ("memory::ready_on_return", Status::Failed),
            ]
        );
        assert_eq!(report.binaries[2].results[0].name, "crates/completion-core/src/lib.rs - (line 44) - compile");
        let failed: Vec<_> = report.failures().map(|(_, r)| r.name.as_str()).collect();
        assert_eq!(failed, ["memory::ready_on_return"]);
        assert_eq!(
            report.errors,
            [
                "error: test failed, to rerun pass `-p completion-memory --test conformance`",
                "error: 1 target failed:",
                "`-p completion-memory --test conformance`"
            ]
        );
    }

    #[test]
    fn a_binary_without_its_summary_did_not_finish() {
        let output = "\
     Running tests/conformance.rs (target/debug/deps/conformance-77)

running 2 tests
test valkey::each_outcome ... ok
error: test failed, to rerun pass `-p completion-valkey --test conformance`

Caused by:
  process didn't exit successfully: `/work/main/target/debug/deps/conformance-77` (signal: 6, SIGABRT: process abort signal)
";
        let report = parse(output);
        assert_eq!(report.binaries.len(), 1);
        assert!(!report.binaries[0].finished);
        assert_eq!(report.binaries[0].results.len(), 1);
        assert_eq!(report.errors.len(), 3);
        assert!(report.errors[2].contains("(signal: 6, SIGABRT"), "{:?}", report.errors);
    }

    #[test]
    fn compiler_diagnostics_are_not_cargo_errors() {
        let output = "\
error: unused variable: `x`
  --> crates/completion-valkey/src/lib.rs:3:9
   |
error: aborting due to 1 previous error

error: could not compile `completion-valkey` (lib) due to 1 previous error
";
        let report = parse(output);
        assert_eq!(report.errors, ["error: could not compile `completion-valkey` (lib) due to 1 previous error"]);
        assert!(report.binaries.is_empty());
    }

    #[test]
    fn a_result_split_by_foreign_output_is_joined() {
        let output = "\
     Running tests/conformance.rs (target/debug/deps/conformance-1)
test postgres::restart_mid_stream ... \n\
2024-01-01 LOG:  database system is ready to accept connections
ok
test postgres::each_outcome ... ok
noise test postgres::fake ... ok
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.00s
";
        let report = parse(output);
        let names: Vec<_> = report.binaries[0].results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["postgres::restart_mid_stream", "postgres::each_outcome"]);
    }

    #[test]
    fn colours_and_hyperlinks_are_stripped() {
        let line = "\u{1b}[1m\u{1b}[92m     Running\u{1b}[0m tests/conformance.rs (\u{1b}]8;;file:///x\u{7}target/x\u{1b}]8;;\u{1b}\\)";
        assert_eq!(strip_ansi(line), "     Running tests/conformance.rs (target/x)");
        // As libtest colours into a terminal: `ESC [ 32 m ok ESC ( B ESC [ m`.
        let report = parse(
            "test a::b ... \u{1b}[32mok\u{1b}(B\u{1b}[m\ntest a::c ... \u{1b}[31mFAILED\u{1b}[0m\n\
             test a::d ... \u{1b}[33mignored\u{1b}(B\u{1b}[m, why\n",
        );
        let statuses: Vec<_> = report.binaries[0].results.iter().map(|r| r.status.clone()).collect();
        assert_eq!(statuses, [Status::Passed, Status::Failed, Status::Ignored(Some("why".into()))]);
        assert_eq!(report.binaries[0].name, "(unknown)");
    }
}
