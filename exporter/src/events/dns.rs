//! The DNS probe's ring buffer into [`CapturedPacket`]s. The buffer is read every 20 ms,
//! and at once when the probe finds it a quarter full, so its size only has to cover
//! the time between two reads; what did not fit was counted by the probe
//! (`lost::DNS_RING_FULL`).
use std::net::SocketAddr;

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use flowtel_probes_abi::{DnsPacket, dns, protocol};
use tokio::io::{Interest, unix::AsyncFd};

use super::flows::{ReadError, take};

/// One packet to or from a DNS port, seen at a local socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    /// `CLOCK_MONOTONIC` nanoseconds, the kernel's timestamp.
    pub at_ns: u64,
    /// The sending process for a query sent in process context, else 0.
    pub pid: u32,
    pub tcp: bool,
    /// The packet left a local socket (a query); else it arrived (an answer).
    pub egress: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub tcp_seq: u32,
    /// Payload bytes on the wire; `payload` may hold fewer (the probe's cap).
    pub wire_len: u32,
    pub payload: Vec<u8>,
}

/// How often the ring buffer is looked at when the probe has not woken the reader.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub struct DnsPacketReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl DnsPacketReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        let ring: RingBuf<MapData> = take(ebpf, "DNS_PACKETS")?;
        // SAFETY: the ring buffer owns its map's fd for as long as it lives, and moves
        // into the AsyncFd, so the fd stays open and the same while it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| ReadError::Io { what: "watching the DNS ring buffer", source: err.into() })?;
        Ok(Self { ring })
    }

    /// Waits until packets are there, then reads up to `max` of them. Records the
    /// agent cannot decode (a probe object newer than the agent) count as `undecodable`.
    pub async fn next_batch(&mut self, max: usize, out: &mut Vec<CapturedPacket>) -> Result<u64, ReadError> {
        loop {
            let undecodable = self.drain(max, out);
            if !out.is_empty() || undecodable > 0 {
                return Ok(undecodable);
            }
            // The probe wakes us only when the buffer fills up (see `wakeup_flag` in
            // probes/ebpf/src/dns.rs); otherwise look every POLL.
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.map_err(|source| ReadError::Io { what: "waiting for DNS packets", source })?;
                    guard.clear_ready();
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn drain(&mut self, max: usize, out: &mut Vec<CapturedPacket>) -> u64 {
        let ring = self.ring.get_mut();
        let mut undecodable = 0;
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            match decode(&item) {
                Some(packet) => out.push(packet),
                None => undecodable += 1,
            }
        }
        undecodable
    }
}

fn decode(bytes: &[u8]) -> Option<CapturedPacket> {
    let header_len = size_of::<DnsPacket>();
    let header_bytes = bytes.get(..header_len)?;
    // SAFETY: DnsPacket is plain old data of exactly `header_len` bytes; the ring
    // buffer gives no alignment guarantee beyond 8, so read it unaligned.
    let header: DnsPacket = unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast()) };
    let payload = bytes.get(header_len..header_len + header.captured_len as usize)?;
    if payload.len() > dns::PAYLOAD_MAX {
        return None;
    }
    let address = |raw: &[u8; 16]| super::kernel_address(header.family, raw);
    let tcp = match header.protocol {
        protocol::TCP => true,
        protocol::UDP => false,
        _ => return None,
    };
    let egress = match header.direction {
        dns::EGRESS => true,
        dns::INGRESS => false,
        _ => return None,
    };
    Some(CapturedPacket {
        at_ns: header.timestamp_ns,
        pid: header.pid,
        tcp,
        egress,
        src: SocketAddr::new(address(&header.src_addr)?, header.src_port),
        dst: SocketAddr::new(address(&header.dst_addr)?, header.dst_port),
        tcp_seq: header.tcp_seq,
        wire_len: header.wire_len,
        payload: payload.to_vec(),
    })
}
