//! DNS packets at the socket layer: cgroup skb programs at the cgroup v2 root see every
//! packet of every local socket, whatever network namespace it lives in (a container's
//! or a pod's traffic included), loopback and a local stub resolver included. For each
//! packet they read the IP and transport headers, and only when a port is one of the
//! configured DNS ports do they copy the payload (UDP) or segment payload (TCP) to the
//! `DNS_PACKETS` ring buffer for user space to parse. Everything else costs three
//! bounded header loads.
//!
//! Only the client side of a lookup is copied: a query leaving a local socket for a DNS
//! port, and an answer arriving from one. A local DNS server's own view of the same
//! exchange (query in, answer out) would count every lookup twice.
//!
//! Egress runs in the sending process's context for UDP and for a TCP segment sent by
//! `sendmsg` (a query), so the asking process is known there.
//! <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/cgroup.c#L1460> (cgroup skb >= 4.10;
//! `skb->data` is set to the network header before the program runs, on both sides)
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use flowtel_probes_abi::{DnsPacket, dns, family, lost, protocol};

use crate::{
    config::config,
    maps::{DNS_PACKETS, DNS_SCRATCH, count_lost},
};

/// Lets the packet through: the probe only observes.
const PASS: i32 = 1;
const IPV4_HEADER_MIN: u32 = 20;
const IPV6_HEADER: u32 = 40;
/// IPv4 `frag_off` bits that mark a fragment other than the first (offset), and "more".
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, dns::EGRESS);
    PASS
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, dns::INGRESS);
    PASS
}

/// Where a packet's transport header starts, with its addresses filled into `packet`.
struct Network {
    transport_offset: u32,
}

fn try_dns(ctx: &SkBuffContext, direction: u8) -> Option<()> {
    let ports = config().dns_ports;
    let first: u8 = ctx.load(0).ok()?;
    let mut packet = DnsPacket { direction, ..DnsPacket::default() };
    let network = match first >> 4 {
        4 => ipv4(ctx, &mut packet)?,
        6 => ipv6(ctx, &mut packet)?,
        _ => return None,
    };
    let port_words: [u16; 2] = ctx.load(network.transport_offset as usize).ok()?;
    packet.src_port = u16::from_be(port_words[0]);
    packet.dst_port = u16::from_be(port_words[1]);
    // The client side only: queries out to a DNS port, answers in from one.
    let server_port = if direction == dns::EGRESS { packet.dst_port } else { packet.src_port };
    if server_port == 0 || !ports.contains(&server_port) {
        return None;
    }
    let payload_offset = match packet.protocol {
        protocol::UDP => network.transport_offset + 8,
        _ => {
            let Ok(seq) = ctx.load::<u32>(network.transport_offset as usize + 4) else {
                count_lost(lost::DNS_PACKET_READ);
                return None;
            };
            let Ok(data_offset) = ctx.load::<u8>(network.transport_offset as usize + 12) else {
                count_lost(lost::DNS_PACKET_READ);
                return None;
            };
            packet.tcp_seq = u32::from_be(seq);
            network.transport_offset + u32::from(data_offset >> 4) * 4
        }
    };
    let wire_len = ctx.len().checked_sub(payload_offset)?;
    if wire_len == 0 && packet.protocol == protocol::TCP {
        // A TCP handshake or ACK: nothing of DNS in it. (An empty UDP datagram goes up,
        // to be counted as not DNS.)
        return None;
    }
    packet.wire_len = wire_len;
    packet.timestamp_ns = now_ns();
    if direction == dns::EGRESS {
        packet.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    }
    emit(ctx, &mut packet, payload_offset, wire_len);
    Some(())
}

fn ipv4(ctx: &SkBuffContext, packet: &mut DnsPacket) -> Option<Network> {
    let header: [u8; IPV4_HEADER_MIN as usize] = ctx.load(0).ok()?;
    let proto = header[9];
    if proto != protocol::UDP && proto != protocol::TCP {
        return None;
    }
    // A later fragment carries no transport header; DNS over UDP above the MTU is
    // fragmented only where EDNS sizes exceed it, which resolvers avoid since 2020.
    if u16::from_be_bytes([header[6], header[7]]) & IPV4_FRAGMENT_OFFSET != 0 {
        return None;
    }
    packet.family = family::IPV4;
    packet.protocol = proto;
    packet.src_addr[..4].copy_from_slice(&header[12..16]);
    packet.dst_addr[..4].copy_from_slice(&header[16..20]);
    Some(Network { transport_offset: u32::from(header[0] & 0x0f) * 4 })
}

/// Extension headers are not followed: DNS over IPv6 does not use them in practice.
fn ipv6(ctx: &SkBuffContext, packet: &mut DnsPacket) -> Option<Network> {
    let header: [u8; IPV6_HEADER as usize] = ctx.load(0).ok()?;
    let next = header[6];
    if next != protocol::UDP && next != protocol::TCP {
        return None;
    }
    packet.family = family::IPV6;
    packet.protocol = next;
    packet.src_addr.copy_from_slice(&header[8..24]);
    packet.dst_addr.copy_from_slice(&header[24..40]);
    Some(Network { transport_offset: IPV6_HEADER })
}

/// Copies the header and up to `PAYLOAD_MAX` payload bytes into this CPU's scratch
/// event (too big for the 512-byte stack) and hands them to the ring buffer.
fn emit(ctx: &SkBuffContext, packet: &mut DnsPacket, payload_offset: u32, wire_len: u32) {
    if wire_len == 0 {
        if DNS_PACKETS.output::<DnsPacket>(packet, 0).is_err() {
            count_lost(lost::DNS_RING_FULL);
        }
        return;
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else { return };
    // `(len - 1) & mask + 1` keeps the length in [1, PAYLOAD_MAX] in a form the verifier
    // can bound; the `min` before it makes the value the true one.
    let len = ((wire_len.min(dns::PAYLOAD_MAX as u32) - 1) & (dns::PAYLOAD_MAX as u32 - 1)) + 1;
    packet.captured_len = len;
    // SAFETY: the scratch slot is this CPU's alone while the program runs; the helper
    // writes at most `len` <= PAYLOAD_MAX bytes into a PAYLOAD_MAX buffer.
    let loaded = unsafe {
        (*scratch).header = *packet;
        bpf_skb_load_bytes(
            ctx.skb.skb.cast::<__sk_buff>().cast(),
            payload_offset,
            (*scratch).payload.as_mut_ptr().cast(),
            len,
        )
    };
    if loaded != 0 {
        count_lost(lost::DNS_PACKET_READ);
        return;
    }
    let size = size_of::<DnsPacket>() + len as usize;
    // SAFETY: `size` is within the scratch event, which is plain bytes.
    let bytes = unsafe { core::slice::from_raw_parts(scratch.cast::<u8>(), size) };
    if DNS_PACKETS.output::<[u8]>(bytes, 0).is_err() {
        count_lost(lost::DNS_RING_FULL);
    }
}

fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
