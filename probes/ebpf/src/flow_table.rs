//! Get-or-create a flow's counters in the active table, and add to them atomically
//! (several CPUs may update one flow at once).
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::HashMap;
use flowtel_probes_abi::{FlowKey, FlowStats, RTT_BUCKETS, SocketKey, SocketTraffic, control, lost};

use crate::maps::{CONTROL, FLOWS_0, FLOWS_1, TRAFFIC_0, TRAFFIC_1, ZERO_STATS, count_lost};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

#[inline(always)]
fn active_index() -> u32 {
    CONTROL.get(control::ACTIVE_TABLE).copied().unwrap_or(0)
}

#[inline(always)]
fn active_table() -> &'static HashMap<FlowKey, FlowStats> {
    if active_index() == 1 { &FLOWS_1 } else { &FLOWS_0 }
}

/// Adds `bytes` to the socket's entry in the active per-socket table if it has one:
/// the whole cost of a send or receive on a busy TCP socket. Returns the entry.
#[inline(always)]
pub fn add_to_existing_socket(key: &SocketKey, sent: bool, bytes: u64) -> Option<*mut SocketTraffic> {
    let table = if active_index() == 1 { &TRAFFIC_1 } else { &TRAFFIC_0 };
    let entry = table.get_ptr_mut(key)?;
    // SAFETY: `entry` points into a live map value.
    unsafe { add_bytes(&raw mut (*entry).bytes_sent, &raw mut (*entry).bytes_received, sent, bytes) };
    Some(entry)
}

/// Puts a new socket's entry into the active per-socket table. `None` when the table
/// is full (counted).
#[inline(always)]
pub fn insert_socket_entry(key: &SocketKey, entry: &SocketTraffic) -> Option<()> {
    let table = if active_index() == 1 { &TRAFFIC_1 } else { &TRAFFIC_0 };
    // EEXIST: another CPU created it between our lookup and insert; add to theirs.
    if let Err(err) = table.insert(key, entry, BPF_NOEXIST)
        && i64::from(err) != -EEXIST
    {
        count_lost(lost::SOCKET_BYTES_TABLE_FULL);
        return None;
    }
    Some(())
}

/// Adds to the sent or the received counter.
#[inline(always)]
pub fn add_bytes(sent_counter: *mut u64, received_counter: *mut u64, sent: bool, bytes: u64) {
    add(if sent { sent_counter } else { received_counter }, bytes);
}

/// The counters of `key` in the active table, created zeroed on first use (then the
/// flag is true). `None` when the table is full; that loss is counted.
#[inline(always)]
pub fn stats_for(key: &FlowKey) -> Option<(*mut FlowStats, bool)> {
    let table = active_table();
    if let Some(stats) = table.get_ptr_mut(key) {
        return Some((stats, false));
    }
    let zero = ZERO_STATS.get(0)?;
    if let Err(err) = table.insert(key, zero, BPF_NOEXIST) {
        // EEXIST: another CPU created it between our lookup and insert; use theirs.
        if i64::from(err) != -EEXIST {
            count_lost(lost::FLOW_TABLE_FULL);
            return None;
        }
    }
    table.get_ptr_mut(key).map(|stats| (stats, true))
}

#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a live map value. `core::sync::atomic` has no
    // read-modify-write on the BPF target, so call the intrinsic (a BPF atomic add).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Adds one to `key`'s counter chosen by `field`.
#[inline(always)]
pub fn count(key: &FlowKey, field: impl FnOnce(*mut FlowStats) -> *mut u64) {
    if let Some((stats, _)) = stats_for(key) {
        add(field(stats), 1);
    }
}

/// Records one RTT sample (microseconds) in the flow's log2 histogram.
#[inline(always)]
pub fn record_rtt(stats: *mut FlowStats, srtt_us: u32, rttvar_us: u32) {
    let bucket = (log2(srtt_us) as usize).min(RTT_BUCKETS - 1);
    // SAFETY: `stats` points into a live map value; `bucket` is bounded above.
    unsafe {
        add(&raw mut (*stats).rtt_hist[bucket], 1);
        add(&raw mut (*stats).rtt_sum_us, u64::from(srtt_us));
        (*stats).rttvar_us = rttvar_us;
    }
}

/// Floor of log2, branch-light so the verifier sees a bounded result (0..=31).
#[inline(always)]
fn log2(mut v: u32) -> u32 {
    let mut r = 0;
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Moves a closing socket's bytes from the per-socket table to its flow, so that a new
/// socket allocated at the same address in this interval starts clean.
#[inline(always)]
pub fn fold_socket_bytes(key: &SocketKey) {
    let table = if active_index() == 1 { &TRAFFIC_1 } else { &TRAFFIC_0 };
    // SAFETY: read-only copy of a map value.
    let Some(entry) = (unsafe { table.get(key) }).copied() else { return };
    let _ = table.remove(key);
    if let Some((stats, _)) = stats_for(&entry.flow) {
        // SAFETY: `stats` points into a live map value.
        unsafe {
            add(&raw mut (*stats).bytes_sent, entry.bytes_sent);
            add(&raw mut (*stats).bytes_received, entry.bytes_received);
        }
    }
}
