//! Writing to stdout and stderr without ever panicking, and noticing when either closes.
//!
//! `println!` and `eprintln!` panic when their stream is a pipe whose reader went away
//! (`completions tail URL 2>&1 | head -3`): Rust ignores SIGPIPE, so the write fails with
//! `BrokenPipe`, and the macros turn that into a panic (exit 134 with our panic hook). Every
//! line the CLI prints goes through [`out`] or [`err`] instead, which return the error.
//!
//! [`Closed`] tells `tail` the moment stdout or stderr is a pipe whose reader closed, even
//! while it has nothing to print (it waits for the error the kernel reports on such a pipe);
//! `tail` then stops as on Ctrl-C.

use std::io::{self, Write};

/// Writes `line` and a newline to stdout, and flushes.
pub fn out(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// Writes `line` and a newline to stderr (unbuffered).
pub fn err(line: &str) -> io::Result<()> {
    writeln!(io::stderr().lock(), "{line}")
}

/// Writes a status line to stderr, ignoring a failure: used where nothing better can be
/// done (the process is ending, or stderr is already known to be closed).
pub fn status(line: &str) {
    let _ = err(line);
}

/// Whether a write failed because the reader of the pipe went away.
pub fn is_closed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Watches stdout and stderr for a closed reader.
pub struct Closed {
    closed: tokio::sync::watch::Receiver<Option<&'static str>>,
}

impl Closed {
    /// Starts watching, on a thread of its own that waits in `poll(2)` (no timeout, no
    /// events asked for: the kernel reports an error or hang-up regardless). A pipe reports
    /// an error once its reader closed; a regular file or `/dev/null` reports nothing, and
    /// is then not watched. The thread ends with the process.
    pub fn new() -> Self {
        let (report, closed) = tokio::sync::watch::channel(None);
        #[cfg(unix)]
        {
            let spawned = std::thread::Builder::new()
                .name("stdio-watch".into())
                .spawn(move || watch(|name| report.send(Some(name))));
            // Without the thread, closed streams are still found when a write fails.
            drop(spawned);
        }
        #[cfg(not(unix))]
        drop(report);
        Self { closed }
    }

    /// Resolves when stdout or stderr is closed, with its name; never when neither is.
    pub async fn next(&mut self) -> &'static str {
        match self.closed.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("stdout"),
            // The watcher is gone (it could not poll): wait forever, as when nothing closes.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Waits until stdout or stderr reports an error or a hang-up, and reports its name.
#[cfg(unix)]
fn watch<E>(report: impl Fn(&'static str) -> Result<(), E>) {
    use std::os::fd::AsFd;

    use rustix::event::{PollFd, PollFlags, poll};
    let (stdout, stderr) = (io::stdout(), io::stderr());
    let mut watched = vec![("stdout", stdout.as_fd()), ("stderr", stderr.as_fd())];
    while !watched.is_empty() {
        let mut fds: Vec<PollFd<'_>> = watched.iter().map(|(_, fd)| PollFd::new(fd, PollFlags::empty())).collect();
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let events: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        for (&(name, _), revents) in watched.iter().zip(&events) {
            if revents.intersects(PollFlags::ERR | PollFlags::HUP) {
                let _ = report(name);
                return;
            }
        }
        // A stream that is not open at all (`>&-`) is invalid for poll: stop watching it.
        let mut events = events.into_iter();
        watched.retain(|_| !events.next().is_some_and(|e| e.contains(PollFlags::NVAL)));
    }
}
