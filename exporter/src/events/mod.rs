//! Reading what the probes produced: the flow tables (drained each interval, table
//! swap so nothing is lost between reads), the loss counters, the process names, and
//! the DNS packets and HTTP payloads (ring buffers read as they fill).
//!
//! Guarantee: every count the kernel added to a table is read exactly once. The probes
//! write into the active table; `drain` makes the other one active, waits for programs
//! still running on the old one to finish (an RCU grace period, `barrier.rs`), then
//! reads and empties it.
mod barrier;
mod dns;
mod flows;
mod http;
mod processes;
mod ring;

pub use dns::{CapturedPacket, DnsPacketReader};
pub use flows::{FlowReader, KernelFlow, ReadError};
pub use http::{HttpChunk, HttpChunkReader, decode_into as decode_http_into, take_buffer as spare_payload};
pub use processes::{KernelProcess, ProcessNames};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowtel_probes_abi::family;

/// An address as the probes carry it (`family`, 16 bytes, network order): IPv4 in the
/// first four bytes, or IPv6, where a v4-mapped address is folded to IPv4. `None` for
/// a family the agent does not know.
pub fn kernel_address(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        family::IPV4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        family::IPV6 => {
            let v6 = Ipv6Addr::from(*raw);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps
/// every event.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests;
