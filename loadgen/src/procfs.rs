//! The server's resident memory and CPU time, read from /proc/PID (Linux).

use std::path::PathBuf;

/// A reading of one process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    /// Resident set size in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// User plus system CPU time in microseconds.
    pub cpu_us: u64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`; `None` when the process is gone or the
/// files do not parse.
pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let cpu_us = cpu_from_stat(&stat, ticks_per_second())?;
    Some(Usage {
        rss_bytes: rss_kib * 1024,
        cpu_us,
    })
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in microseconds. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_from_stat(stat: &str, ticks_per_second: u64) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / ticks_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (shard 0) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3";
        assert_eq!(cpu_from_stat(stat, 100), Some(4_000_000));
    }

    #[test]
    fn this_process_can_be_read() {
        let usage = usage(std::process::id()).unwrap();
        // The kernel's other account of resident memory: pages in /proc/self/statm.
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let statm_bytes = pages * 4096;
        assert!(
            usage.rss_bytes / 2 <= statm_bytes && statm_bytes <= usage.rss_bytes * 2,
            "VmRSS {} against statm {statm_bytes}",
            usage.rss_bytes
        );
    }
}
