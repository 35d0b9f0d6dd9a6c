//! This process's resident memory, as the kernel reports it in `/proc/self/status`.

use anyhow::{Context, Result};

/// Resident set sizes, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct ResidentMemory {
    /// Resident now (`VmRSS`).
    pub rss_bytes: u64,
    /// The most ever resident (`VmHWM`, the high-water mark).
    pub peak_rss_bytes: u64,
}

/// Reads the current and peak resident set size.
pub fn resident_memory() -> Result<ResidentMemory> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/self/status"))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parsing {name}{line}"))?;
        Ok(kib * 1024)
    };
    Ok(ResidentMemory { rss_bytes: field("VmRSS:")?, peak_rss_bytes: field("VmHWM:")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_figures() {
        let memory = resident_memory().unwrap();
        assert!(memory.rss_bytes > 0);
        assert!(memory.peak_rss_bytes >= memory.rss_bytes);
    }
}
