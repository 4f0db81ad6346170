//! The open-files limit and the ephemeral port range: what one process may hold.
//!
//! Raising the soft limit is the only thing this module changes; it never touches the
//! hard limit or any sysctl.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Open-files limits after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// Soft limit now in force.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit and returns both.
pub fn raise_nofile() -> anyhow::Result<FdLimits> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit still cannot go past fs.nr_open (1,048,576 by default).
    let want = hard.min(1 << 20);
    if soft < want
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, want, hard)
    {
        tracing::warn!(%error, soft, want, "could not raise the open-files soft limit");
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(FdLimits { soft, hard })
}

/// Sockets one process may hold under `limits`.
pub fn sockets_per_process(limits: FdLimits) -> u64 {
    limits.soft.saturating_sub(crate::plan::FD_HEADROOM).max(1)
}

/// Number of ephemeral ports (`net.ipv4.ip_local_port_range`), i.e. how many
/// connections one (source address, destination) pair can have. 28,232 (the Linux
/// default) when the file cannot be read.
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or(28_232)
}

fn parse_port_range(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace().map(str::parse::<u64>);
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (hi >= lo).then(|| hi - lo + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("1024 65535"), Some(64_512));
        assert_eq!(parse_port_range("5 4"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn raising_is_idempotent() {
        let a = raise_nofile().unwrap();
        let b = raise_nofile().unwrap();
        assert_eq!(a, b);
        assert!(a.soft == a.hard || a.soft == 1 << 20, "{a:?}");
    }
}
