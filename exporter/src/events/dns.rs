//! The DNS probe's ring buffer into [`CapturedPacket`]s (see ring.rs for how it is
//! read); what did not fit was counted by the probe (`lost::DNS_RING_FULL`).
use std::net::SocketAddr;

use aya::Ebpf;
use flowtel_probes_abi::{DnsPacket, dns, protocol};

use super::{
    flows::ReadError,
    ring::{RingReader, split_record},
};

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
    /// A TCP SYN: the connection's data in this direction starts at `tcp_seq + 1`.
    pub tcp_syn: bool,
    /// Payload bytes on the wire; `payload` may hold fewer (the probe's cap).
    pub wire_len: u32,
    pub payload: Vec<u8>,
}

pub struct DnsPacketReader {
    ring: RingReader,
}

impl DnsPacketReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        Ok(Self { ring: RingReader::new(ebpf, "DNS_PACKETS", "waiting for DNS packets")? })
    }

    /// Waits until packets are there, then reads up to `max` of them. Records the
    /// agent cannot decode (a probe object newer than the agent) count as `undecodable`.
    pub async fn next_batch(&mut self, max: usize, out: &mut Vec<CapturedPacket>) -> Result<u64, ReadError> {
        self.ring.next_batch(max, out, decode).await
    }

    /// Up to `max` records already there, without waiting (at shutdown).
    pub fn read_now(&mut self, max: usize, out: &mut Vec<CapturedPacket>) -> u64 {
        self.ring.drain(max, out, &mut decode)
    }
}

pub(super) fn decode(bytes: &[u8]) -> Option<CapturedPacket> {
    let (header, rest) = split_record::<DnsPacket>(bytes)?;
    let payload = rest.get(..header.captured_len as usize)?;
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
        tcp_syn: tcp && header.tcp_syn != 0,
        wire_len: header.wire_len,
        payload: payload.to_vec(),
    })
}
