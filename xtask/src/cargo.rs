//! Running cargo: plain steps, and `cargo test` with its output shown live and kept for
//! parsing; finding the packages that run the conformance suite.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long to keep reading after cargo exited. A process started by a test that outlives
/// it (and inherited the pipe) would otherwise keep the pipe open forever.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command run from the workspace root, with the cargo that runs xtask.
pub fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(workspace_root()).stdin(Stdio::null());
    command
}

/// Whether our output goes to a terminal: then cargo and libtest are asked for colour even
/// though they write into a pipe (the parser strips it).
pub fn colour() -> bool {
    std::io::stdout().is_terminal()
}

/// The command line, for headers and messages.
pub fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let mut words = vec![program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `command` with its output going straight to the terminal.
pub fn run(mut command: Command) -> Result<ExitStatus, String> {
    command.status().map_err(|e| format!("could not start `{}`: {e}", describe(&command)))
}

/// Runs `command` with stdout and stderr merged into one pipe (so cargo's `Running …` lines
/// stay in order with the tests' lines), copying every line to our stdout as it comes and
/// returning it all.
pub fn run_captured(mut command: Command) -> Result<(ExitStatus, String), String> {
    let what = describe(&command);
    let fail = |e: std::io::Error| format!("could not start `{what}`: {e}");
    let (reader, writer) = std::io::pipe().map_err(fail)?;
    command.stdout(writer.try_clone().map_err(fail)?).stderr(writer);
    let mut child = command.spawn().map_err(fail)?;
    // The command holds our copies of the pipe's write end: drop them, or reading never ends.
    drop(command);

    let captured = Arc::new(Mutex::new(String::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let sink = captured.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        let stdout = std::io::stdout();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut out = stdout.lock();
                    // A closed terminal must not stop the capture.
                    let _ = out.write_all(&line).and_then(|()| out.flush());
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&line));
                }
            }
        }
        let _ = done_tx.send(());
    });

    let status = child.wait().map_err(|e| format!("waiting for `{what}` failed: {e}"))?;
    if done_rx.recv_timeout(DRAIN_DEADLINE).is_err() {
        eprintln!(
            "xtask: `{what}` exited but its output pipe is still open after {DRAIN_DEADLINE:?} \
             (a process it started outlives it); using the output read so far"
        );
    }
    let output = captured.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((status, output))
}

/// The packages under `crates/` that register the conformance suite (`tests/conformance.rs`),
/// sorted. Found on disk, so a new backend crate is picked up without editing xtask.
pub fn conformance_packages() -> Result<Vec<String>, String> {
    let crates = workspace_root().join("crates");
    let entries = std::fs::read_dir(&crates).map_err(|e| format!("cannot list {}: {e}", crates.display()))?;
    let mut packages = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| format!("cannot list {}: {e}", crates.display()))?.path();
        if !dir.join("tests").join("conformance.rs").is_file() {
            continue;
        }
        let manifest = dir.join("Cargo.toml");
        let text =
            std::fs::read_to_string(&manifest).map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
        let name = package_name(&text).ok_or_else(|| format!("no [package] name in {}", manifest.display()))?;
        packages.push(name);
    }
    packages.sort();
    Ok(packages)
}

/// The `name` of the `[package]` table of a manifest (enough TOML for our own manifests).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_package_name() {
        let manifest = "[workspace]\nname = \"no\"\n\n[package]\nversion.workspace = true\nname = \"completion-valkey\"\n[dependencies]\nname = \"no\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("completion-valkey"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    #[test]
    fn finds_the_memory_backend() {
        let packages = conformance_packages().unwrap();
        assert!(packages.iter().any(|p| p == "completion-memory"), "{packages:?}");
        assert!(!packages.iter().any(|p| p == "completion-conformance"), "{packages:?}");
    }

    #[test]
    fn captures_and_merges_both_streams_in_order() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo two >&2; echo three"]);
        let (status, output) = run_captured(command).unwrap();
        assert!(status.success());
        assert_eq!(output, "one\ntwo\nthree\n");
    }
}
