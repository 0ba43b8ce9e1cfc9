//! Checks, before touching the kernel, that the agent holds the capabilities it needs,
//! so a missing one is named instead of surfacing as an EPERM from deep inside a load.
use std::fs;

#[derive(Debug, thiserror::Error)]
#[error(
    "flowtel needs {missing} (it has none of the alternatives): run it as root, or grant the \
     capabilities (docker: --cap-add BPF --cap-add PERFMON; Kubernetes: securityContext.capabilities.add)"
)]
pub struct PrivilegeError {
    pub missing: String,
}

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
/// memory (Linux 5.8+); `CAP_SYS_ADMIN` alone covers both on older kernels.
pub fn check() -> Result<(), PrivilegeError> {
    check_mask(effective_capabilities())
}

fn check_mask(caps: u64) -> Result<(), PrivilegeError> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    Err(PrivilegeError { missing: format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert!(check_mask(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_mask((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        assert_eq!(check_mask(0).unwrap_err().missing, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)");
        assert_eq!(check_mask(1 << CAP_BPF).unwrap_err().missing, "CAP_PERFMON (or CAP_SYS_ADMIN)");
    }
}
