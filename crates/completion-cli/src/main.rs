//! `completions`: tail, migrate, inspect and wait on a completion backend from the shell.
//!
//! ```text
//! completions tail URL [--namespace N] [--tag k=v]... [--from now|earliest|CURSOR] [--json]
//! completions migrate URL
//! completions stats URL [--json]
//! completions wait URL ID... [--timeout DURATION] [--json]
//! ```
//!
//! The URL picks the backend (see [`completions::parse_url`]). Every failure prints one line on stderr and
//! exits non-zero with a code that tells its kind (see [`error`]); passwords in URLs are
//! never printed. Logs go to stderr, off unless `RUST_LOG` asks for them
//! (`RUST_LOG=completion_valkey=debug`). Full usage: `docs/cli.md`.

mod connect;
mod error;
mod migrate;
mod output;
mod stats;
mod stdio;
mod tail;
mod wait;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::connect::Options;
use crate::error::{CliError, Kind};

/// Tail, migrate, inspect and wait on a completion backend (Valkey/Redis, PostgreSQL, in-process).
#[derive(Parser, Debug)]
#[command(name = "completions", version, about, propagate_version = true)]
#[command(after_help = "Exit codes: 0 done, 1 operation failed, 2 usage, 3 server unreachable, 4 incompatible server \
                        state; wait: 5 any failed, 6 any cancelled (none failed), 7 no such execution, 124 timed \
                        out.\nLogs: RUST_LOG=debug (stderr).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print completions as they arrive (and gaps), until Ctrl-C; then print the cursor to
    /// resume from.
    Tail {
        #[command(flatten)]
        target: TargetArgs,
        /// Only completions of this namespace.
        #[arg(long, value_name = "N")]
        namespace: Option<String>,
        /// Only completions tagged key=value (repeat for several; all must match).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Where to start: `now`, `earliest` (the oldest retained), or after a cursor.
        #[arg(long, value_name = "now|earliest|CURSOR", default_value = "now")]
        from: String,
        /// One JSON object per line (`"type": "completion"` or `"gap"`).
        #[arg(long)]
        json: bool,
    },
    /// Install or upgrade the PostgreSQL schema or the Valkey function library, and report
    /// versions. Running it again is a no-op.
    Migrate {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show the server's log and queue usage and the backend's counters.
    Stats {
        #[command(flatten)]
        target: TargetArgs,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every execution is terminal, printing each outcome as it arrives (also
    /// those that finished before the command started). Exit 0 when all succeeded, 5 when
    /// any failed, 6 when any was cancelled (none failed), 7 when one does not exist, 124 on
    /// timeout.
    Wait {
        #[command(flatten)]
        target: TargetArgs,
        /// The executions to wait for.
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
        /// Give up after this long, e.g. 30s, 5m [default: no limit]
        #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// One JSON object per outcome.
        #[arg(long)]
        json: bool,
    },
}

/// Which backend, and how to reach it.
#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// redis://, rediss://, valkey://, valkeys:// (TLS), redis-cluster://, valkey-cluster://,
    /// postgres://, postgresql:// or memory:
    #[arg(value_name = "URL")]
    url: String,
    /// Valkey/Redis key prefix [default: completions]
    #[arg(long)]
    prefix: Option<String>,
    /// Valkey/Redis partition count of the prefix, 1 to 256 [default: 16]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    partitions: Option<u16>,
    /// PostgreSQL schema [default: completions]
    #[arg(long)]
    schema: Option<String>,
    /// Limit on connecting, e.g. 500ms, 2s [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    connect_timeout: Option<Duration>,
}

impl TargetArgs {
    fn options(&self) -> Options {
        Options {
            prefix: self.prefix.clone(),
            schema: self.schema.clone(),
            partitions: self.partitions,
            connect_timeout: self.connect_timeout,
        }
    }

    /// The arguments that reach the same backend again, quoted for a shell, with the URL's
    /// password redacted.
    fn shell_words(&self) -> Vec<String> {
        let mut words = vec![completions::redact_url(&self.url)];
        let mut option = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                words.push(name.to_string());
                words.push(value);
            }
        };
        option("--prefix", self.prefix.clone());
        option("--partitions", self.partitions.map(|p| p.to_string()));
        option("--schema", self.schema.clone());
        option("--connect-timeout", self.connect_timeout.map(|t| humantime::format_duration(t).to_string()));
        words
    }
}

/// A `--connect-timeout` value (humantime's syntax), the error naming what is expected.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("not a duration such as 500ms, 2s or 1m ({e})"))
}

fn quote(words: impl IntoIterator<Item = String>) -> String {
    words
        .into_iter()
        .map(|w| shlex::try_quote(&w).map(|q| q.into_owned()).unwrap_or_else(|_| format!("{w:?}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_logging();
    // One line, never a backtrace, should a bug ever panic (and no second panic when stderr
    // is closed).
    std::panic::set_hook(Box::new(|info| stdio::status(&format!("completions: internal error: {info}"))));
    let target = match &cli.command {
        Command::Tail { target, .. }
        | Command::Migrate { target }
        | Command::Stats { target, .. }
        | Command::Wait { target, .. } => target.clone(),
    };
    let secret = completions::url_password(&target.url).map(str::to_string);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            stdio::status(&format!("completions: cannot start the async runtime: {e}"));
            return ExitCode::from(Kind::Failed.code());
        }
    };
    let result = runtime.block_on(run(cli));
    // Background tasks of the backend (feeds, reconnects) end with the runtime.
    drop(runtime);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            stdio::status(&format!("completions: {}", e.line(secret.as_deref())));
            e.exit_code()
        }
    }
}

/// Runs the command; answers the exit code of a command that did not fail (0, or `wait`'s).
async fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Tail { target, namespace, tags, from, json } => {
            let scheme = completions::parse_url(&target.url)?;
            let options = target.options();
            options.check_for(scheme)?;
            let plan = tail::Plan::new(namespace.as_deref(), &tags, &from, json, scheme.name())?;
            let backend = connect::open(&target.url, scheme, &options).await?;
            let resume = |from: &str| {
                let mut words = vec!["completions".to_string(), "tail".to_string()];
                words.extend(target.shell_words());
                if let Some(namespace) = &namespace {
                    words.extend(["--namespace".to_string(), namespace.clone()]);
                }
                for tag in &tags {
                    words.extend(["--tag".to_string(), tag.clone()]);
                }
                words.extend(["--from".to_string(), from.to_string()]);
                if json {
                    words.push("--json".to_string());
                }
                let mut command = quote(words);
                if completions::url_password(&target.url).is_some() {
                    command.push_str("   (put the password back into the URL)");
                }
                command
            };
            tail::run(&backend, plan, &completions::redact_url(&target.url), resume).await.map(|()| 0)
        }
        Command::Migrate { target } => {
            let scheme = completions::parse_url(&target.url)?;
            let options = target.options();
            options.check_for(scheme)?;
            let lines = migrate::run(&target.url, scheme, &options).await?;
            print_lines(lines.iter().map(String::as_str)).map(|()| 0)
        }
        Command::Stats { target, json } => {
            let scheme = completions::parse_url(&target.url)?;
            let options = target.options();
            options.check_for(scheme)?;
            let backend = connect::open(&target.url, scheme, &options).await?;
            let stats = stats::gather(&backend, &completions::redact_url(&target.url)).await?;
            if json {
                print_lines([stats.to_json().as_str()])
            } else {
                print_lines(stats.to_lines().iter().map(String::as_str))
            }
            .map(|()| 0)
        }
        Command::Wait { target, ids, timeout, json } => {
            let scheme = completions::parse_url(&target.url)?;
            let options = target.options();
            options.check_for(scheme)?;
            let ids = wait::ids(&ids)?;
            let backend = connect::open(&target.url, scheme, &options).await?;
            wait::run(&backend, &completions::redact_url(&target.url), &ids, timeout, json).await
        }
    }
}

/// Reports what clap found wrong with the arguments: `--help` and `--version` as clap prints
/// them (exit 0), a missing subcommand with the usage text, anything else as one line
/// (`completions: unexpected argument '--nope' found; see `completions --help``), exit 2.
/// Never panics on a closed stream.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(Kind::Usage.code()));
    }
    stdio::status(&format!("completions: {}; see `completions --help`", clap_line(e)));
    ExitCode::from(Kind::Usage.code())
}

/// The message of a clap error as one line: its first paragraph (what is wrong), without
/// the `error: ` in front, the tips and the usage that follow.
fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let paragraph: Vec<&str> = text.lines().map(str::trim).take_while(|line| !line.is_empty()).collect();
    let line = paragraph.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// Prints the output of a one-shot command on stdout. A closed stdout (`| head -1`) or any
/// other write failure is a failure of the command (exit 1): its output was not delivered.
fn print_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<(), CliError> {
    for line in lines {
        stdio::out(line).map_err(|e| {
            let why = if stdio::is_closed(&e) { "stdout was closed".to_string() } else { e.to_string() };
            CliError::new(Kind::Failed, format!("cannot write the output: {why}"))
        })?;
    }
    Ok(())
}

/// Logs to stderr as `RUST_LOG` says; nothing without it, so that output stays clean.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn resume_words_are_quoted_and_redacted() {
        let cli =
            Cli::parse_from(["completions", "tail", "redis://u:pw@h:1", "--prefix", "a b", "--connect-timeout", "2s"]);
        let Command::Tail { target, .. } = cli.command else { panic!("parsed as another command") };
        assert_eq!(quote(target.shell_words()), "'redis://u:***@h:1' --prefix 'a b' --connect-timeout 2s");
    }
}
