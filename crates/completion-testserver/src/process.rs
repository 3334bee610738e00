//! Process plumbing shared by every server kind: binary lookup, free loopback
//! ports, the `sh` wrapper that ties a server's life to ours, readiness polling,
//! stop and restart.
//!
//! Each server runs as the child of a tiny `/bin/sh` wrapper whose standard
//! input is a pipe held only by this process (the pipe is close-on-exec, so no
//! other child inherits it). The wrapper starts the server in the background,
//! prints its pid and blocks reading the pipe. On the line `keep` (a restart or
//! [`Instance::stop`]) it stops the server and leaves the directory alone; on
//! end-of-file — a final stop, or this process exiting in any way, `abort` and
//! `SIGKILL` included, since the kernel then closes the pipe — it stops the
//! server and removes the server's directory. The wrapper runs in its own
//! process group so a terminal's Ctrl-C reaches it only through that pipe.
//!
//! Limits: Linux only (`/proc` tells a live server from an exited one). A
//! server that ignores its stop signal for [`STOP_GRACE`] is killed with
//! `SIGKILL` by this process, so only while this process lives.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ServerError;

/// Runs `$4...` with output appended to `$1`, prints its pid, then waits for a
/// line on stdin; stops the server with signal `$2` and removes `$3` unless the
/// line was `keep`.
const WRAPPER: &str = r#"log=$1 sig=$2 dir=$3
shift 3
"$@" </dev/null >>"$log" 2>&1 &
p=$!
echo "$p"
exec >/dev/null
IFS= read -r cmd || cmd=
kill -"$sig" "$p" 2>/dev/null
wait "$p"
[ "$cmd" = keep ] || rm -rf "$dir"
"#;

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(25);
/// How long a server may take to stop before it is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(20);
/// How many fresh ports to try when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 4;
/// Lines of log shown in errors and by `log_tail`.
const TAIL_LINES: usize = 40;

/// A user the server runs as (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Account {
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// Makes `cmd` run as this account.
    pub fn apply(account: Option<Self>, cmd: &mut Command) -> &mut Command {
        if let Some(a) = account {
            cmd.uid(a.uid).gid(a.gid);
        }
        cmd
    }
}

/// Everything needed to (re)launch one server.
pub(crate) struct Spec {
    /// Binary name for messages, e.g. `valkey-server`.
    pub name: String,
    pub program: PathBuf,
    /// Arguments for a given port.
    pub args: Box<dyn Fn(u16) -> Vec<OsString> + Send + Sync>,
    /// Signal name for a clean, prompt stop (`TERM`, `INT`).
    pub stop_signal: &'static str,
    pub run_as: Option<Account>,
    /// Log file (inside the server's directory).
    pub log: PathBuf,
    /// True once the server with this pid answers on this port. Checking the
    /// pid matters: another server may have taken the port meanwhile.
    pub ready: Box<dyn Fn(u16, u32) -> bool + Send + Sync>,
    pub timeout: Duration,
}

/// A started server: its port, its directory and the running process, if any.
///
/// Field order matters: the process is stopped before the directory is dropped.
pub(crate) struct Instance {
    running: Mutex<Option<Running>>,
    spec: Spec,
    port: u16,
    dir: TempDir,
}

impl Instance {
    /// Starts the server on a free port, trying another port if it was taken.
    pub fn start(spec: Spec, dir: TempDir) -> Result<Self, ServerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            match launch(&spec, dir.path(), port) {
                Ok(running) => {
                    return Ok(Self { running: Mutex::new(Some(running)), spec, port, dir });
                }
                Err(ServerError::Exited { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The port, fixed for the instance's life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(|r| r.pid)
    }

    /// Stops the server, keeping its directory and port for [`Self::start_again`].
    pub fn stop(&self) {
        if let Some(mut running) = self.lock().take() {
            running.stop(true);
        }
    }

    /// Starts the server again on the same port and directory; no-op if running.
    pub fn start_again(&self) -> Result<(), ServerError> {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(launch(&self.spec, self.dir.path(), self.port)?);
        }
        Ok(())
    }

    /// Stops the server and starts it again on the same port and directory.
    pub fn restart(&self) -> Result<(), ServerError> {
        let mut guard = self.lock();
        if let Some(mut running) = guard.take() {
            running.stop(true);
        }
        *guard = Some(launch(&self.spec, self.dir.path(), self.port)?);
        Ok(())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log, 0)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The wrapper of one running server.
pub(crate) struct Running {
    wrapper: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Running {
    /// Stops the server and waits for the wrapper; removes the directory unless
    /// `keep_dir`. Idempotent.
    fn stop(&mut self, keep_dir: bool) {
        if let Some(mut stdin) = self.stdin.take()
            && keep_dir
        {
            let _ = stdin.write_all(b"keep\n");
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match self.wrapper.try_wait() {
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = Command::new("/bin/sh")
                        .args(["-c", "kill -KILL \"$1\"", "kill", &self.pid.to_string()])
                        .status();
                    let _ = self.wrapper.wait();
                    return;
                }
                Ok(Some(_)) | Err(_) => return,
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// Launches the wrapper and waits until the server on `port` is ready.
pub(crate) fn launch(spec: &Spec, dir: &Path, port: u16) -> Result<Running, ServerError> {
    let log_start = fs::metadata(&spec.log).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("completion-testserver")
        .arg(&spec.log)
        .arg(spec.stop_signal)
        .arg(dir)
        .arg(&spec.program)
        .args((spec.args)(port))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    Account::apply(spec.run_as, &mut cmd);
    let mut wrapper = cmd.spawn().map_err(|e| ServerError::io(format!("starting /bin/sh to run {}", spec.name), e))?;
    let stdin = wrapper.stdin.take();
    let mut line = String::new();
    let read = BufReader::new(wrapper.stdout.take().expect("stdout is piped")).read_line(&mut line);
    let pid = match (read, line.trim().parse::<u32>()) {
        (Ok(_), Ok(pid)) => pid,
        _ => {
            let _ = wrapper.kill();
            let _ = wrapper.wait();
            return Err(ServerError::Setup {
                what: format!("starting {}", spec.name),
                detail: "the /bin/sh wrapper did not report a pid".into(),
            });
        }
    };
    let mut running = Running { wrapper, stdin, pid };
    let deadline = Instant::now() + spec.timeout;
    loop {
        if (spec.ready)(port, pid) {
            return Ok(running);
        }
        if !pid_alive(pid) {
            running.stop(true);
            return Err(ServerError::Exited { server: spec.name.clone(), port, log: log_tail(&spec.log, log_start) });
        }
        if Instant::now() >= deadline {
            running.stop(true);
            return Err(ServerError::Timeout {
                server: spec.name.clone(),
                port,
                timeout: spec.timeout,
                log: log_tail(&spec.log, log_start),
            });
        }
        sleep(POLL);
    }
}

/// Opens a TCP connection with connect, read and write timeouts.
pub(crate) fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The state letter and parent pid of `pid`, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state, ppid, ...
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// The parent of `pid`.
pub(crate) fn parent_pid(pid: u32) -> Option<u32> {
    proc_stat(pid).map(|(_, ppid)| ppid)
}

/// A port that was free on 127.0.0.1 a moment ago (never a standard service port).
pub(crate) fn free_port() -> Result<u16, ServerError> {
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| ServerError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener.local_addr().map_err(|e| ServerError::io("reading a bound port", e))?.port();
        if !matches!(port, 5432 | 6379) {
            return Ok(port);
        }
    }
}

/// The last lines of `path` after byte `from`.
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = from.max(len.saturating_sub(64 * 1024));
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_ok() && file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// True if `path` is a file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable `name` on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    path_dirs().into_iter().map(|dir| dir.join(name)).find(|p| is_executable(p))
}

/// The directories of `PATH`.
pub(crate) fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default()
}

/// Keeps a directory until this process exits, then removes it, even on abort.
///
/// Hold the returned value for as long as the directory must live (typically
/// forever, in a static): a `sh` child blocks on a pipe that only we hold, and
/// removes the directory when the pipe closes.
pub(crate) struct RemoveOnExit {
    _child: Child,
    _stdin: Option<ChildStdin>,
}

impl RemoveOnExit {
    /// Arms the removal of `dir`.
    pub fn arm(dir: &Path) -> Result<Self, ServerError> {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read -r _; rm -rf \"$1\"", "completion-testserver"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| ServerError::io("starting /bin/sh to clean up on exit", e))?;
        Ok(Self { _stdin: child.stdin.take(), _child: child })
    }
}
