//! Names and cgroups of processes as the probes recorded them when the process made a
//! flow or exec'd, so that one which has exited (a 5 ms curl, a `dig`) is still named;
//! which processes exec'd, so that their identity is read afresh; and which exited, so
//! that their workloads are retired and a reused pid is not taken for them.
use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use flowtel_probes_abi::ProcessSeen;

use super::flows::{ReadError, take};

fn drain_keys(map: &mut HashMap<MapData, u32, u8>) -> Vec<u32> {
    let pids: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    for pid in &pids {
        let _ = map.remove(pid);
    }
    pids
}

/// A process as the probes saw it when it created a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelProcess {
    pub name: String,
    /// Its cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
}

pub struct ProcessNames {
    // `seen` is an LRU hash in the kernel; aya reads both kinds through this type.
    seen: HashMap<MapData, u32, ProcessSeen>,
    execed: HashMap<MapData, u32, u8>,
    exited: HashMap<MapData, u32, u8>,
}

impl ProcessNames {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        Ok(Self { seen: take(ebpf, "PROCESSES_SEEN")?, execed: take(ebpf, "EXECED")?, exited: take(ebpf, "EXITED")? })
    }

    /// What the kernel recorded about this pid; one map lookup (a syscall).
    pub fn get(&self, pid: u32) -> Option<KernelProcess> {
        let seen = self.seen.get(&pid, 0).ok()?;
        let len = seen.comm.iter().position(|&b| b == 0).unwrap_or(seen.comm.len());
        let name = String::from_utf8_lossy(&seen.comm[..len]).into_owned();
        Some(KernelProcess { name, cgroup_id: seen.cgroup_id })
    }

    /// Pids that exec'd since the last call (each reported once).
    pub fn take_execed(&mut self) -> Vec<u32> {
        drain_keys(&mut self.execed)
    }

    /// Pids of processes that made flows and exited since the last call.
    pub fn take_exited(&mut self) -> Vec<u32> {
        drain_keys(&mut self.exited)
    }

    /// What the kernel recorded about these pids.
    pub fn get_all(&self, pids: impl IntoIterator<Item = u32>) -> StdHashMap<u32, KernelProcess> {
        pids.into_iter().filter_map(|pid| Some((pid, self.get(pid)?))).collect()
    }
}
