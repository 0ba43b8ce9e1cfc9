//! Checks, before touching the kernel, that the agent holds the capabilities it needs,
//! so a missing one is named instead of surfacing as an EPERM from deep inside a load.
use std::fs;

#[derive(Debug, thiserror::Error)]
#[error(
    "flowtel needs {missing}: run it as root, or grant the capabilities (docker: --cap-add BPF \
     --cap-add PERFMON --cap-add NET_ADMIN; Kubernetes: securityContext.capabilities.add; see the \
     README, Capabilities)"
)]
pub struct PrivilegeError {
    pub missing: String,
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_capabilities() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// `CAP_BPF` loads programs and maps, `CAP_PERFMON` attaches tracepoints and reads kernel
/// memory (Linux 5.8+), `CAP_NET_ADMIN` loads and attaches the cgroup programs (UDP
/// peers, DNS); `CAP_SYS_ADMIN` alone covers all three. A non-root user also needs
/// `CAP_DAC_READ_SEARCH` to read tracefs (mode 0700) and other users' /proc entries.
/// (`CAP_SYS_PTRACE`, to read other users' environments for `OTEL_SERVICE_NAME`, is
/// optional: without it those processes are named by their executable.)
pub fn check() -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    check_mask(effective_capabilities(), root)
}

fn check_mask(caps: u64, root: bool) -> Result<(), PrivilegeError> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        let bpf: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
            .into_iter()
            .filter(|&(cap, _)| !has(cap))
            .map(|(_, name)| name)
            .collect();
        if !bpf.is_empty() {
            missing.push(format!("{} (or CAP_SYS_ADMIN)", bpf.join(", ")));
        }
    }
    if !root && !has(CAP_DAC_READ_SEARCH) {
        missing.push("CAP_DAC_READ_SEARCH (when not root)".to_owned());
    }
    if missing.is_empty() { Ok(()) } else { Err(PrivilegeError { missing: missing.join(" and ") }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let least = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert!(check_mask(1 << CAP_SYS_ADMIN, true).is_ok());
        assert!(check_mask(least, true).is_ok());
        assert!(check_mask(least | (1 << CAP_DAC_READ_SEARCH), false).is_ok());
        assert_eq!(check_mask(0, true).unwrap_err().missing, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (or CAP_SYS_ADMIN)");
        assert_eq!(
            check_mask(1 << CAP_BPF, true).unwrap_err().missing,
            "CAP_PERFMON, CAP_NET_ADMIN (or CAP_SYS_ADMIN)"
        );
        assert_eq!(check_mask(least, false).unwrap_err().missing, "CAP_DAC_READ_SEARCH (when not root)");
        assert_eq!(
            check_mask(0, false).unwrap_err().missing,
            "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (or CAP_SYS_ADMIN) and CAP_DAC_READ_SEARCH (when not root)"
        );
    }
}
