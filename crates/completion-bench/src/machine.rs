//! What the figures were measured on: cores, memory, kernel, server versions.

use serde::Serialize;

/// The machine and the servers of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// The CPU model, from `/proc/cpuinfo` (empty when unknown).
    pub cpu: String,
    /// Total memory in MiB, from `/proc/meminfo` (0 when unknown).
    pub memory_mib: u64,
    /// `uname -r`-like kernel release (empty when unknown).
    pub kernel: String,
    /// `valkey-server` / `redis-server` version, if that backend ran.
    pub valkey: Option<String>,
    /// PostgreSQL version, if that backend ran.
    pub postgres: Option<String>,
}

impl Machine {
    /// Reads what Linux tells about the machine; anything unreadable stays empty rather than
    /// failing the run.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
        Self { cores, cpu, memory_mib, kernel, valkey: None, postgres: None }
    }
}
