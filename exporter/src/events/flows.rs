use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use flowtel_probes_abi::{FlowKey, FlowStats, SocketKey, SocketTraffic, control, lost};

use super::barrier::ProgramBarrier;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the BPF object has no map {0}")]
    NoMap(&'static str),
    #[error("map {map}: {cause}")]
    Map { map: &'static str, cause: aya::maps::MapError },
    #[error("{what}: {cause}")]
    Io { what: &'static str, cause: std::io::Error },
}

/// One drained flow table entry.
#[derive(Clone, Copy, Debug)]
pub struct KernelFlow {
    pub key: FlowKey,
    pub stats: FlowStats,
}

/// Owns the maps user space reads; the programs stay in the `Ebpf` that owns the links.
pub struct FlowReader {
    tables: [HashMap<MapData, FlowKey, FlowStats>; 2],
    traffic: [HashMap<MapData, SocketKey, SocketTraffic>; 2],
    control: Array<MapData, u32>,
    lost: PerCpuArray<MapData, u64>,
    active: u32,
    lost_seen: [u64; lost::COUNT as usize],
    /// Waits out the programs still writing to the retiring tables (`barrier.rs`);
    /// `None` where the kernel refused its map, then the swap sleeps `GRACE` instead.
    barrier: Option<ProgramBarrier>,
}

/// Only without the barrier: how long programs that read the old table index may
/// still be writing to it. They run to completion in microseconds; this is generous,
/// but not a guarantee.
const GRACE: Duration = Duration::from_millis(5);

pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ReadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ReadError::NoMap(name))?;
    T::try_from(map).map_err(|cause| ReadError::Map { map: name, cause })
}

impl FlowReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        Ok(Self {
            tables: [take(ebpf, "FLOWS_0")?, take(ebpf, "FLOWS_1")?],
            traffic: [take(ebpf, "TRAFFIC_0")?, take(ebpf, "TRAFFIC_1")?],
            control: take(ebpf, "CONTROL")?,
            lost: take(ebpf, "LOST")?,
            active: 0,
            lost_seen: [0; lost::COUNT as usize],
            barrier: ProgramBarrier::new()
                .inspect_err(|err| {
                    tracing::warn!(%err, "no BPF map of maps for the table swap: it waits 5 ms instead of a grace period");
                })
                .ok(),
        })
    }

    /// Returns when no program can still be writing to the retiring tables.
    fn settle(&mut self) {
        if let Some(barrier) = &self.barrier {
            match barrier.wait() {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%err, "the table swap's grace period failed: waiting 5 ms from now on");
                    self.barrier = None;
                }
            }
        }
        std::thread::sleep(GRACE);
    }

    /// Everything counted since the last drain. Blocking (an RCU grace period and one
    /// syscall per flow): call it from a blocking thread.
    pub fn drain(&mut self) -> Result<Vec<KernelFlow>, ReadError> {
        let retiring = self.active;
        self.active ^= 1;
        self.control
            .set(control::ACTIVE_TABLE, self.active, 0)
            .map_err(|cause| ReadError::Map { map: "CONTROL", cause })?;
        self.settle();
        // Per-socket TCP bytes fold into their flows here, with the per-flow entries.
        let mut by_flow: StdHashMap<FlowKey, FlowStats> = StdHashMap::new();
        let flows = &mut self.tables[retiring as usize];
        let entries: Vec<(FlowKey, FlowStats)> = read_all(flows, "FLOWS")?;
        for (key, _) in &entries {
            let _ = flows.remove(key);
        }
        for (key, stats) in entries {
            by_flow.insert(key, stats);
        }
        let traffic = &mut self.traffic[retiring as usize];
        let sockets: Vec<(SocketKey, SocketTraffic)> = read_all(traffic, "TRAFFIC")?;
        for (key, _) in &sockets {
            let _ = traffic.remove(key);
        }
        for (_, t) in sockets {
            let stats = by_flow.entry(t.flow).or_default();
            stats.bytes_sent += t.bytes_sent;
            stats.bytes_received += t.bytes_received;
        }
        Ok(by_flow.into_iter().map(|(key, stats)| KernelFlow { key, stats }).collect())
    }

    /// Newly lost events per cause (`lost::*`) since the last call.
    pub fn lost_since_last(&mut self) -> Result<[u64; lost::COUNT as usize], ReadError> {
        let mut delta = [0; lost::COUNT as usize];
        for cause in 0..lost::COUNT {
            let per_cpu = self.lost.get(&cause, 0).map_err(|err| ReadError::Map { map: "LOST", cause: err })?;
            let total: u64 = per_cpu.iter().sum();
            let seen = &mut self.lost_seen[cause as usize];
            delta[cause as usize] = total.saturating_sub(*seen);
            *seen = total;
        }
        Ok(delta)
    }
}

/// Every entry of a drained table. An entry that disappears while iterating is skipped.
fn read_all<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    table: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, ReadError> {
    let mut out = Vec::new();
    for entry in table {
        match entry {
            Ok(kv) => out.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(cause) => return Err(ReadError::Map { map: name, cause }),
        }
    }
    Ok(out)
}
