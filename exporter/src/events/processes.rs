//! Names and cgroups of processes as the probes recorded them when the process made a
//! flow, so that one which has exited (a 5 ms curl, a `dig`) is still named.
use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use flowtel_probes_abi::ProcessSeen;

use super::flows::{ReadError, take};

/// A process as the probes saw it when it created a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelProcess {
    pub name: String,
    /// Its cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
}

pub struct ProcessNames {
    // An LRU hash in the kernel; aya reads it through the plain HashMap type.
    seen: HashMap<MapData, u32, ProcessSeen>,
}

impl ProcessNames {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        Ok(Self { seen: take(ebpf, "PROCESSES_SEEN")? })
    }

    /// What the kernel recorded about this pid; one map lookup (a syscall).
    pub fn get(&self, pid: u32) -> Option<KernelProcess> {
        let seen = self.seen.get(&pid, 0).ok()?;
        let len = seen.comm.iter().position(|&b| b == 0).unwrap_or(seen.comm.len());
        let name = String::from_utf8_lossy(&seen.comm[..len]).into_owned();
        Some(KernelProcess { name, cgroup_id: seen.cgroup_id })
    }

    /// What the kernel recorded about these pids.
    pub fn get_all(&self, pids: impl IntoIterator<Item = u32>) -> StdHashMap<u32, KernelProcess> {
        pids.into_iter().filter_map(|pid| Some((pid, self.get(pid)?))).collect()
    }
}
