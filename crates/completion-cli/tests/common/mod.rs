//! Running the built `completions` binary from tests: one-shot runs, and `tail` children
//! whose stdout and stderr lines are read as they come, with time limits (no fixed sleeps).

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use completions::{EngineBackend, ExecutionId, Namespace, NewExecution, Reason, Tags};

/// Long enough for a loaded 2-core machine; only reached when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_completions")
}

/// A runtime for the library calls the tests make (the writer side).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
    })
}

/// A name unique in this process and across runs on one external server.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    format!("{tag}_{micros:x}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Creates execution `id` in `namespace` with `tags` and completes it, through the library.
pub fn complete(writer: &dyn EngineBackend, id: &str, namespace: &str, tags: &[(&str, &str)]) {
    runtime().block_on(async {
        let tags = Tags::from_pairs(tags.iter().copied()).expect("valid tags");
        let id = ExecutionId::new(id).expect("valid id");
        let execution = NewExecution::new(id.clone(), Namespace::new(namespace).expect("valid namespace"));
        writer.create_execution(execution.with_tags(tags)).await.expect("create");
        writer.complete(&id).await.expect("complete");
    });
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    /// Panics unless the run failed with exactly one stderr line, `code`, and no panic.
    pub fn assert_one_line_failure(&self, code: i32) -> &str {
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
        assert_eq!(self.stderr.len(), 1, "expected one stderr line: {self:#?}");
        let all = format!("{:?}{:?}", self.stdout, self.stderr);
        assert!(!all.contains("panicked") && !all.contains("RUST_BACKTRACE"), "{self:#?}");
        assert!(self.stderr[0].starts_with("completions: "), "{self:#?}");
        &self.stderr[0]
    }
}

/// Runs `completions args...` to the end.
pub fn run(args: &[&str]) -> Finished {
    let output = Command::new(binary())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary()));
    let lines = |bytes: &[u8]| String::from_utf8_lossy(bytes).lines().map(str::to_string).collect::<Vec<_>>();
    Finished { status: output.status, stdout: lines(&output.stdout), stderr: lines(&output.stderr) }
}

/// A running `completions` process whose output is read line by line.
pub struct Running {
    child: std::process::Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stderr line read so far.
    pub stderr_seen: Vec<String>,
}

/// Reads `pipe` line by line on a thread of its own; with `close_after`, it closes the
/// pipe (drops its read end) once it read that many lines.
fn lines_of(pipe: impl std::io::Read + Send + 'static, close_after: Option<usize>) -> Receiver<String> {
    let (send, receive) = channel();
    std::thread::spawn(move || {
        for (n, line) in BufReader::new(pipe).lines().enumerate() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() || close_after == Some(n + 1) {
                return;
            }
        }
    });
    receive
}

/// Which of the child's output streams a test closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Runs `completions args...` to the end with `closed` a pipe whose read end was closed
/// before the process started (every write to it fails with EPIPE); the other stream is read.
pub fn run_with_closed(args: &[&str], closed: Stream) -> Finished {
    // Close-on-exec: a child that another test spawns meanwhile must not inherit the read
    // end (it would keep the pipe open, and the write this test expects to fail succeed).
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("a pipe");
    drop(read);
    let mut command = Command::new(binary());
    command.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    match closed {
        Stream::Stdout => command.stdout(Stdio::from(write)),
        Stream::Stderr => command.stderr(Stdio::from(write)),
    };
    let output = command.output().unwrap_or_else(|e| panic!("running {}: {e}", binary()));
    let lines = |bytes: &[u8]| String::from_utf8_lossy(bytes).lines().map(str::to_string).collect::<Vec<_>>();
    Finished { status: output.status, stdout: lines(&output.stdout), stderr: lines(&output.stderr) }
}

/// Panics if `done` shows a panic or an abort: exit 101 or 134, a signal, or "panicked".
pub fn assert_no_panic(done: &Finished) {
    assert!(done.status.code().is_some(), "killed by a signal: {done:#?}");
    assert!(!matches!(done.status.code(), Some(101 | 134)), "{done:#?}");
    let all = format!("{:?}{:?}", done.stdout, done.stderr);
    assert!(!all.contains("panicked") && !all.contains("internal error"), "{done:#?}");
}

impl Running {
    /// Starts `completions args...`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_closing(args, None)
    }

    /// Starts `completions args...`; with `close`, the test closes that stream (drops the
    /// read end of its pipe) once it read that many lines of it.
    pub fn start_closing(args: &[&str], close: Option<(Stream, usize)>) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary()));
        let after = |stream| close.filter(|(s, _)| *s == stream).map(|(_, n)| n);
        let stdout = lines_of(child.stdout.take().expect("piped stdout"), after(Stream::Stdout));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"), after(Stream::Stderr));
        Self { child, stdout, stderr, stderr_seen: Vec::new() }
    }

    /// Starts `completions tail args...` and waits for its readiness line (subscribed).
    pub fn tail(args: &[&str]) -> Self {
        let mut all = vec!["tail"];
        all.extend_from_slice(args);
        let mut running = Self::start(&all);
        running.stderr_line(|line| line.starts_with("completions: tailing "));
        running
    }

    /// Waits for a stderr line that `wanted` accepts, and returns it.
    pub fn stderr_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            match self.stderr.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no such stderr line ({e:?}); stderr so far: {:#?}", self.stderr_seen),
            }
        }
    }

    /// The next stdout line, parsed as JSON.
    pub fn next_json(&mut self) -> serde_json::Value {
        match self.stdout.recv_timeout(DEADLINE) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            Err(RecvTimeoutError::Timeout) => panic!("no stdout line in {DEADLINE:?}; stderr: {:#?}", self.stderr_seen),
            Err(RecvTimeoutError::Disconnected) => {
                let rest: Vec<String> = self.stderr.try_iter().collect();
                panic!("stdout closed; stderr: {:#?} {rest:#?}", self.stderr_seen)
            }
        }
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("running kill");
        assert!(status.success(), "kill -INT failed");
    }

    /// Waits for the process to exit (within the deadline: its pipes close when it does,
    /// or the test closed them) and collects what it printed.
    pub fn finish(mut self) -> Finished {
        let until = Instant::now() + DEADLINE;
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        let mut stdout = Vec::new();
        for (lines, into) in [(&self.stderr, &mut stderr), (&self.stdout, &mut stdout)] {
            loop {
                match lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(line) => into.push(line),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => panic!("the process did not exit; stderr: {into:#?}"),
                }
            }
        }
        let status = loop {
            match self.child.try_wait().expect("waiting for the child") {
                Some(status) => break status,
                None if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("the process did not exit; stderr: {stderr:#?}, stdout: {stdout:#?}"),
            }
        };
        Finished { status, stdout, stderr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `completions: last cursor: X` among stderr lines.
pub fn last_cursor(stderr: &[String]) -> String {
    stderr
        .iter()
        .find_map(|line| line.strip_prefix("completions: last cursor: "))
        .unwrap_or_else(|| panic!("no last cursor in {stderr:#?}"))
        .to_string()
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

/// `tail` prints what another process writes, with `--namespace` and `--tag` filters that
/// let nothing else through. `target` is the URL and its options (prefix or schema).
pub fn tail_sees_completions_and_filters(target: &[String], writer: &dyn EngineBackend, backend: &str) {
    let (ns, other) = (unique("ns"), unique("other"));
    let args = |extra: &[&str]| -> Vec<String> {
        target.iter().cloned().chain(["--json".to_string()]).chain(extra.iter().map(|s| s.to_string())).collect()
    };
    let by_namespace = args(&["--namespace", &ns]);
    let by_tag = args(&["--tag", "team=red"]);
    let mut by_namespace = Running::tail(&by_namespace.iter().map(String::as_str).collect::<Vec<_>>());
    let mut by_tag = Running::tail(&by_tag.iter().map(String::as_str).collect::<Vec<_>>());

    complete(writer, "w1-other-blue", &other, &[("team", "blue")]);
    complete(writer, "w2-mine-blue", &ns, &[("team", "blue")]);
    complete(writer, "w3-mine-red", &ns, &[("team", "red"), ("tier", "1")]);

    let first = by_namespace.next_json();
    assert_eq!(first["type"], "completion", "{first}");
    assert_eq!(first["execution_id"], "w2-mine-blue", "another namespace's completion came first: {first}");
    assert_eq!(first["namespace"], ns.as_str());
    assert_eq!(first["outcome"], "succeeded");
    assert_eq!(first["tags"], serde_json::json!({"team": "blue"}));
    assert_eq!(first["flow_id"], serde_json::Value::Null);
    assert!(first["completed_at_ms"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000), "{first}");
    let cursor = first["cursor"].as_str().unwrap_or_default();
    assert!(cursor.starts_with(&format!("{backend}:")), "{first}");
    assert_eq!(by_namespace.next_json()["execution_id"], "w3-mine-red");

    let red = by_tag.next_json();
    assert_eq!(red["execution_id"], "w3-mine-red", "a completion without team=red came first: {red}");
    assert_eq!(red["tags"], serde_json::json!({"team": "red", "tier": "1"}));

    for tail in [by_namespace, by_tag] {
        tail.interrupt();
        let done = tail.finish();
        assert_eq!(done.status.code(), Some(0), "{done:#?}");
        assert!(done.stdout.is_empty(), "printed more than its filter lets through: {done:#?}");
    }
}

/// Ctrl-C prints the last cursor and exits 0; `--from` that cursor then prints exactly the
/// completions after it, in order.
pub fn interrupt_then_resume(target: &[String], writer: &dyn EngineBackend) {
    let ns = unique("resume");
    let args: Vec<String> = target.iter().cloned().chain(["--json", "--namespace", &ns].map(String::from)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tail = Running::tail(&args);
    complete(writer, "first", &ns, &[]);
    let first = tail.next_json();
    assert_eq!(first["execution_id"], "first");
    tail.interrupt();
    let done = tail.finish();
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    let cursor = last_cursor(&done.stderr);
    assert_eq!(first["cursor"].as_str(), Some(cursor.as_str()), "{done:#?}");
    let resume =
        done.stderr.iter().find(|l| l.starts_with("completions: resume with: completions tail ")).expect("resume");
    assert!(resume.contains("--from") && resume.contains(&cursor) && resume.contains(&ns), "{resume}");

    // Written while nothing tails: the resumed run must print them, and nothing before.
    complete(writer, "second", &ns, &[]);
    complete(writer, "third", &ns, &[]);
    let mut resumed = args.clone();
    resumed.extend(["--from", &cursor]);
    let mut tail = Running::tail(&resumed);
    assert_eq!(tail.next_json()["execution_id"], "second");
    let third = tail.next_json();
    assert_eq!(third["execution_id"], "third");
    tail.interrupt();
    let done = tail.finish();
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert_eq!(third["cursor"].as_str(), Some(last_cursor(&done.stderr).as_str()));
    assert!(done.stdout.is_empty(), "{done:#?}");
}

/// `tail` stopped before any completion arrived says so, and how to run again.
pub fn interrupt_without_completions(target: &[String]) {
    let args: Vec<&str> = target.iter().map(String::as_str).collect();
    let tail = Running::tail(&args);
    tail.interrupt();
    let done = tail.finish();
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert!(done.stderr.iter().any(|l| l.contains("no completion received")), "{done:#?}");
    assert!(done.stderr.iter().any(|l| l.contains("--from now")), "{done:#?}");
}

/// `wait` on executions that finished before it started and during it: it prints each
/// outcome as it arrives and exits 0 when all succeeded, 5 when any failed, 6 when any was
/// cancelled (none failed); 124 on timeout (naming what it waited for); 7 for an id that does
/// not exist; 2 for a bad id. `--json` prints one object per outcome.
pub fn wait_reports_outcomes_and_exit_codes(target: &[String], writer: &dyn EngineBackend) {
    let args = |extra: &[&str]| -> Vec<String> {
        let mut all = vec!["wait".to_string()];
        all.extend(target.iter().cloned());
        all.extend(extra.iter().map(|s| s.to_string()));
        all
    };
    let run_args = |v: Vec<String>| run(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let ns = unique("wait");
    // A failed wait prints its readiness line (once connected), then one error line.
    let failure = |done: &Finished, code: i32| -> String {
        assert_eq!(done.status.code(), Some(code), "{done:#?}");
        assert_no_panic(done);
        let last = done.stderr.last().unwrap_or_else(|| panic!("no error line: {done:#?}"));
        assert!(last.starts_with("completions: "), "{done:#?}");
        assert!(done.stderr.len() <= 2, "the readiness line and one error line at most: {done:#?}");
        last.clone()
    };

    // Finished before the command started: answered, exit 0.
    let before = unique("before");
    complete(writer, &before, &ns, &[]);
    let done = run_args(args(&[&before, "--timeout", "30s"]));
    assert_eq!(done.status.code(), Some(0), "{done:#?}");
    assert_eq!(done.stdout, [format!("{before} succeeded")], "{done:#?}");

    // Finished during the wait: one failed, one cancelled -> 5.
    let (failing, cancelling) = (unique("failing"), unique("cancelling"));
    runtime().block_on(async {
        for id in [&failing, &cancelling] {
            let execution =
                NewExecution::new(ExecutionId::new(id.as_str()).unwrap(), Namespace::new(ns.as_str()).unwrap());
            writer.create_execution(execution).await.expect("create");
        }
    });
    let all = args(&[&failing, &cancelling, &before, "--timeout", "30s", "--json"]);
    let mut running = Running::start(&all.iter().map(String::as_str).collect::<Vec<_>>());
    running.stderr_line(|line| line.starts_with("completions: waiting for 3 executions"));
    let first = running.next_json();
    assert_eq!(first["execution_id"], before.as_str(), "the finished one first: {first}");
    runtime().block_on(async {
        let why = Reason::new("boom").unwrap();
        writer.fail(&ExecutionId::new(failing.as_str()).unwrap(), &why).await.expect("fail");
        writer.cancel(&ExecutionId::new(cancelling.as_str()).unwrap(), &why).await.expect("cancel");
    });
    let mut seen = [running.next_json(), running.next_json()];
    seen.sort_by_key(|v| v["execution_id"].as_str().unwrap_or_default().to_string());
    let outcomes: Vec<(String, String)> = seen
        .iter()
        .map(|v| (v["execution_id"].as_str().unwrap().to_string(), v["outcome"].as_str().unwrap().to_string()))
        .collect();
    let mut expected = vec![(failing.clone(), "failed".to_string()), (cancelling.clone(), "cancelled".to_string())];
    expected.sort();
    assert_eq!(outcomes, expected);
    let done = running.finish();
    assert_eq!(done.status.code(), Some(5), "any failed: {done:#?}");

    // Only cancelled -> 6.
    let done = run_args(args(&[&cancelling, &before]));
    assert_eq!(done.status.code(), Some(6), "any cancelled, none failed: {done:#?}");

    // Never finishes -> 124, naming it.
    let active = unique("active");
    runtime().block_on(async {
        let execution =
            NewExecution::new(ExecutionId::new(active.as_str()).unwrap(), Namespace::new(ns.as_str()).unwrap());
        writer.create_execution(execution).await.expect("create");
    });
    let done = run_args(args(&[&before, &active, "--timeout", "300ms"]));
    let line = failure(&done, 124);
    assert!(line.contains("timed out after 300ms") && line.contains(&active), "{line}");
    assert_eq!(done.stdout, [format!("{before} succeeded")], "what finished is still printed");

    // No such execution -> 7; a bad id -> 2.
    let done = run_args(args(&[&unique("nobody"), "--timeout", "30s"]));
    assert!(failure(&done, 7).contains("does not exist"), "{done:#?}");
    let done = run_args(args(&["a{b"]));
    assert!(failure(&done, 2).contains("execution id"), "{done:#?}");
}

/// The scenarios every backend's CLI tests run, as `#[test]`s on the calling file's
/// `fresh()` (the target arguments and a library backend writing to them); `$backend` is the
/// name `tail --json` reports.
#[allow(unused_macros)] // not every test binary that includes this module runs them
macro_rules! shared_scenarios {
    ($backend:literal) => {
        #[test]
        fn tail_sees_completions_of_another_process_through_its_filters() {
            let (target, writer) = fresh();
            common::tail_sees_completions_and_filters(&target, &writer, $backend);
        }

        #[test]
        fn interrupt_prints_the_last_cursor_and_from_resumes_after_it() {
            let (target, writer) = fresh();
            common::interrupt_then_resume(&target, &writer);
        }

        #[test]
        fn wait_reports_outcomes_and_exit_codes() {
            let (target, writer) = fresh();
            common::wait_reports_outcomes_and_exit_codes(&target, &writer);
        }

        #[test]
        fn interrupt_before_any_completion_says_so() {
            let (target, _writer) = fresh();
            common::interrupt_without_completions(&target);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use shared_scenarios;
