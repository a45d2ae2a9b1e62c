//! What a run costs the server and the kernel, read from `/proc`: a process's resident memory
//! (`VmRSS` in `/proc/PID/status`) and CPU time (`utime + stime` in `/proc/PID/stat`, in clock
//! ticks), and the kernel's slab memory (`Slab` in `/proc/meminfo`, system-wide).

use std::io;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    /// Resident set size.
    pub rss_bytes: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcessSample {
    /// Reads process `pid`.
    ///
    /// # Errors
    ///
    /// The process is gone, unreadable, or its files could not be parsed.
    pub fn read(pid: u32) -> io::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(Self {
            rss_bytes: parse_kib_field(&status, "VmRSS")
                .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))?,
            cpu_ticks: parse_cpu_ticks(&stat)
                .ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))?,
        })
    }
}

/// The kernel's slab memory now (`Slab` in `/proc/meminfo`), in bytes.
///
/// # Errors
///
/// `/proc/meminfo` is unreadable or lacks the field.
pub fn slab_bytes() -> io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    parse_kib_field(&meminfo, "Slab").ok_or_else(|| io::Error::other("no Slab in /proc/meminfo"))
}

/// This process's resident memory, if readable.
pub fn own_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&status, "VmRSS")
}

/// This process's CPU time (user + system), in clock ticks; 0 if unreadable.
pub fn own_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_cpu_ticks(&stat))
        .unwrap_or(0)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc/PID/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|ticks| *ticks > 0)
        // Every Linux ABI in use reports 100.
        .unwrap_or(100)
}

/// A `Name:   1234 kB` line of `/proc/PID/status` or `/proc/meminfo`, in bytes.
pub fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut parts = value.split_whitespace();
        let number = parts.next()?.parse::<u64>().ok()?;
        match parts.next() {
            Some("kB") => Some(number * 1024),
            None => Some(number),
            Some(_) => None,
        }
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: utime is field 14, the 12th here.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime = fields.next()?.parse::<u64>().ok()?;
    let stime = fields.next()?.parse::<u64>().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let status = "Name:\tuc\nVmPeak:\t  999 kB\nVmRSS:\t   10432 kB\nThreads:\t3\n";
        assert_eq!(parse_kib_field(status, "VmRSS"), Some(10432 * 1024));
        assert_eq!(parse_kib_field(status, "VmHWM"), None);
        assert_eq!(parse_kib_field(status, "Threads"), Some(3));
        let meminfo = "MemTotal:       24576000 kB\nSlab:             301234 kB\n\
                       SReclaimable:      1000 kB\n";
        assert_eq!(parse_kib_field(meminfo, "Slab"), Some(301_234 * 1024));
        // A prefix of another field's name does not match it.
        assert_eq!(parse_kib_field("Slabby: 1 kB\n", "Slab"), None);
    }

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "4242 (uring cast) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 1000000 2500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn reads_this_process() {
        let sample = ProcessSample::read(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_bytes > 0);
        assert!(slab_bytes().expect("meminfo") > 0);
        assert!(own_rss_bytes().is_some());
        assert!(clock_ticks_per_second() > 0);
    }
}
