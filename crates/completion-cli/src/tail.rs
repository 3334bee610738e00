//! `completions tail`: prints completions as they arrive, until Ctrl-C.
//!
//! Contract:
//! - It subscribes with the library's resumable subscription (`subscribe_from`), so it
//!   prints gaps too, and only once the subscription is live does it print its readiness
//!   line on stderr (`completions: tailing ...`): everything committed after that line is
//!   printed.
//! - The first `--tag` filters on the server side (with `--namespace`); further `--tag`s
//!   are checked here, on the events the server let through.
//! - On Ctrl-C (SIGINT) or SIGTERM it stops, prints on stderr the cursor of the last item
//!   it handled (`completions: last cursor: ...`) and the exact command that resumes right
//!   after it, and exits 0. Items already received but not printed are not counted: the
//!   resume command prints them. Without any item, the resume command repeats `--from`.
//! - When stdout or stderr is closed (`| head`, `2>&1 | head`), it stops the same way, as
//!   soon as it notices (the kernel reports a pipe whose reader closed; a write to it
//!   fails): exit 0, with the cursor lines on whichever stream is still open. It never
//!   panics on a closed stream.
//!
//! Limit: with `--from now` and no item received, there is no cursor to resume from;
//! completions committed between two runs are then not printed by the second.

use completions::{Backend, Cursor, Namespace, ScannerFilter, StartFrom, StreamItem, TagKey, TagValue};
use futures_util::StreamExt;

use crate::error::{CliError, Kind};
use crate::output::{self, Format};
use crate::stdio::{self, Closed};

/// What `tail` was asked for, checked before anything connects.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The server-side filter.
    pub filter: ScannerFilter,
    /// Tags beyond the first, checked on the client.
    pub extra_tags: Vec<(TagKey, TagValue)>,
    /// Where to start.
    pub from: StartFrom,
    /// How lines are printed.
    pub format: Format,
}

impl Plan {
    /// Checks the arguments: a valid namespace, `key=value` tags, `now`, `earliest` or a
    /// cursor of `backend`.
    pub fn new(
        namespace: Option<&str>,
        tags: &[String],
        from: &str,
        json: bool,
        backend: &str,
    ) -> Result<Self, CliError> {
        let mut filter = ScannerFilter::new();
        if let Some(namespace) = namespace {
            filter = filter.with_namespace(Namespace::new(namespace).map_err(|e| usage("--namespace", e))?);
        }
        let mut extra_tags = Vec::new();
        for tag in tags {
            let Some((key, value)) = tag.split_once('=') else {
                return Err(CliError::usage(format!("--tag expects key=value, got `{tag}`")));
            };
            let key = TagKey::new(key).map_err(|e| usage("--tag", e))?;
            let value = TagValue::new(value).map_err(|e| usage("--tag", e))?;
            if filter.tag.is_none() {
                filter = filter.with_tag(key, value);
            } else {
                extra_tags.push((key, value));
            }
        }
        let from = match from {
            "now" => StartFrom::Now,
            "earliest" => StartFrom::Earliest,
            text => {
                let cursor = Cursor::parse(text).map_err(|e| usage("--from", e))?;
                if cursor.backend() != backend {
                    return Err(CliError::usage(format!(
                        "--from: cursor `{text}` was made by the `{}` backend, this URL is a `{backend}` backend",
                        cursor.backend()
                    )));
                }
                StartFrom::After(cursor)
            }
        };
        let format = if json { Format::Json } else { Format::Human };
        Ok(Self { filter, extra_tags, from, format })
    }

    fn describe(&self) -> String {
        let mut parts = vec![match &self.from {
            StartFrom::Earliest => "from the earliest retained completion".to_string(),
            StartFrom::After(cursor) => format!("after cursor {cursor}"),
            _ => "from now".to_string(),
        }];
        if let Some(namespace) = &self.filter.namespace {
            parts.push(format!("namespace {namespace}"));
        }
        let tags = self.filter.tag.iter().chain(&self.extra_tags).map(|(k, v)| format!("tag {k}={v}"));
        parts.extend(tags);
        parts.join(", ")
    }
}

fn usage(option: &str, e: completions::EngineError) -> CliError {
    CliError::usage(format!("{option}: {e}"))
}

/// Why the loop stopped.
enum Stop {
    Signal(&'static str),
    /// `stdout` or `stderr` was closed.
    Closed(&'static str),
    /// Writing to stdout failed for another reason than a closed reader (a full disk).
    StdoutFailed(std::io::Error),
}

/// Runs `tail` on `backend` until a signal. `shown_url` is the redacted URL for the
/// readiness line; `resume` turns a `--from` value into the command that resumes there.
pub async fn run(
    backend: &Backend,
    plan: Plan,
    shown_url: &str,
    resume: impl Fn(&str) -> String,
) -> Result<(), CliError> {
    // Installed before subscribing: a signal that comes right after the readiness line must
    // find the handler in place, not kill the process.
    let mut signals = Signals::new()?;
    let mut closed = Closed::new();
    let completions = backend.completions();
    // A long catch-up or a server that stops answering can hold the subscribe call: a signal
    // or a closed stream must still end the command.
    let mut stream = tokio::select! {
        subscribed = completions.subscribe_from(plan.from.clone(), &plan.filter) => subscribed.map_err(CliError::from)?,
        signal = signals.next() => {
            stdio::status(&format!("completions: {signal} before the subscription was live; nothing was printed"));
            return Ok(());
        }
        stream = closed.next() => {
            stdio::status(&format!("completions: {stream} was closed before the subscription was live; nothing was printed"));
            return Ok(());
        }
    };
    let ready = format!(
        "completions: tailing {} {shown_url} ({}); Ctrl-C to stop",
        completions.backend_name(),
        plan.describe()
    );
    let mut last: Option<Cursor> = match &plan.from {
        StartFrom::After(cursor) => Some(cursor.clone()),
        _ => None,
    };
    let stop = if stdio::err(&ready).is_err() {
        Stop::Closed("stderr")
    } else {
        loop {
            tokio::select! {
                biased;
                signal = signals.next() => break Stop::Signal(signal),
                stream = closed.next() => break Stop::Closed(stream),
                item = stream.next() => {
                    let (line, cursor) = match item {
                        Some(StreamItem::Completion(c)) => {
                            let wanted = plan.extra_tags.iter().all(|(k, v)| c.tags().get(k.as_str()) == Some(v));
                            (wanted.then(|| output::completion(plan.format, &c)), c.cursor().clone())
                        }
                        Some(StreamItem::Gap(g)) => (Some(output::gap(plan.format, &g)), g.resumed_at.clone()),
                        Some(_) => continue, // a kind of item this build does not know
                        None => {
                            report_last(last.as_ref(), &plan, &resume);
                            return Err(CliError::new(Kind::Failed, "the stream ended: the backend was closed"));
                        }
                    };
                    if let Some(line) = line {
                        match stdio::out(&line) {
                            Ok(()) => {}
                            Err(e) if stdio::is_closed(&e) => break Stop::Closed("stdout"),
                            Err(e) => break Stop::StdoutFailed(e),
                        }
                    }
                    last = Some(cursor);
                }
            }
        }
    };
    match stop {
        Stop::Signal(name) => stdio::status(&format!("completions: stopped by {name}")),
        Stop::Closed(stream) => stdio::status(&format!("completions: stopped: {stream} was closed")),
        Stop::StdoutFailed(e) => {
            report_last(last.as_ref(), &plan, &resume);
            return Err(CliError::new(Kind::Failed, format!("stopped: cannot write to stdout: {e}")));
        }
    }
    report_last(last.as_ref(), &plan, &resume);
    Ok(())
}

/// Tells where to resume, on stderr (if it is still open).
fn report_last(last: Option<&Cursor>, plan: &Plan, resume: &impl Fn(&str) -> String) {
    match last {
        Some(cursor) => {
            stdio::status(&format!("completions: last cursor: {cursor}"));
            stdio::status(&format!("completions: resume with: {}", resume(cursor.as_str())));
        }
        None => {
            let from = match &plan.from {
                StartFrom::Earliest => "earliest",
                _ => "now",
            };
            stdio::status("completions: no completion received, so no cursor to resume after");
            stdio::status(&format!("completions: run again with: {}", resume(from)));
        }
    }
}

/// SIGINT and SIGTERM, installed at creation.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind| {
                signal(kind).map_err(|e| CliError::new(Kind::Failed, format!("cannot install a signal handler: {e}")))
            };
            Ok(Self { interrupt: install(SignalKind::interrupt())?, terminate: install(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_check_their_arguments() {
        let plan = Plan::new(Some("billing"), &["a=1".into(), "b=2".into()], "earliest", true, "valkey").unwrap();
        assert_eq!(plan.filter.namespace.as_ref().map(|n| n.as_str()), Some("billing"));
        assert_eq!(plan.filter.tag.as_ref().map(|(k, v)| (k.as_str(), v.as_str())), Some(("a", "1")));
        assert_eq!(plan.extra_tags.len(), 1);
        assert_eq!(plan.from, StartFrom::Earliest);
        assert_eq!(plan.format, Format::Json);
        let after = Plan::new(None, &[], "valkey:1-0", false, "valkey").unwrap();
        assert!(matches!(after.from, StartFrom::After(_)));

        for (namespace, tags, from, says) in [
            (None, vec!["nokey".to_string()], "now", "key=value"),
            (None, vec![], "garbage", "--from"),
            (None, vec![], "postgres:1:2", "`postgres` backend"),
            (Some(""), vec![], "now", "--namespace"),
        ] {
            let err = Plan::new(namespace, &tags, from, false, "valkey").unwrap_err();
            assert_eq!(err.kind, Kind::Usage);
            assert!(err.to_string().contains(says), "{err}");
        }
    }
}
