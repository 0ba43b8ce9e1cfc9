//! DNS packets at the socket layer: cgroup skb programs at the cgroup v2 root see every
//! packet of every local socket, whatever network namespace it lives in (a container's
//! or a pod's traffic included), loopback and a local stub resolver included. For each
//! packet they read the IP header and ports in one bounded load, and only when a port
//! is one of the configured DNS ports do they copy the payload (UDP) or segment payload
//! (TCP) to the `DNS_PACKETS` ring buffer for user space to parse.
//!
//! Only the client side of a lookup is copied: a query leaving a local socket for a DNS
//! port, and an answer arriving from one. A local DNS server's own view of the same
//! exchange (query in, answer out) would count every lookup twice.
//!
//! Egress runs in the sending process's context for UDP and for a TCP segment sent by
//! `sendmsg` (a query), so the asking process is known there; `dns_asked.rs` says when
//! it is not, and how the server the process asked is found behind the host's NAT.
//! <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/cgroup.c#L1460> (cgroup skb >= 4.10;
//! `skb->data` is set to the network header before the program runs, on both sides)
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use flowtel_probes_abi::{DnsPacket, dns, family, lost, protocol};

use crate::{
    config::config,
    dns_asked::{asked_server, sender_pid},
    maps::{DNS_PACKETS, DNS_SCRATCH, DnsScratch, count_lost, wakeup_flag},
};

/// Lets the packet through: the probe only observes.
const PASS: i32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_HEADER_MIN: u32 = 20;
const IPV6_HEADER: u32 = 40;
/// IPv4 `frag_off` offset bits: non-zero marks a fragment other than the first.
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
/// The SYN bit of a TCP header's flags byte (its 14th).
const TCP_SYN: u8 = 0x02;

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

/// What the cheap first look at a packet finds: enough to decide whether it is DNS.
struct Transport {
    protocol: u8,
    offset: u32,
    src_port: u16,
    dst_port: u16,
}

fn try_dns(ctx: &SkBuffContext, direction: u8) -> Option<()> {
    // Every packet of the host passes here: one bounded load decides, and only a DNS
    // packet pays for the rest.
    // SAFETY: `protocol` is a plain context field every skb program may read.
    let ethertype = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let transport = match ethertype {
        ETH_P_IP => ipv4_transport(ctx)?,
        ETH_P_IPV6 => ipv6_transport(ctx)?,
        _ => return None,
    };
    // The client side only: queries out to a DNS port, answers in from one.
    let asked = if direction == dns::EGRESS { asked_server(ctx, transport.protocol) } else { None };
    let server_port = match asked {
        Some(asked) => asked.port(),
        None if direction == dns::EGRESS => transport.dst_port,
        None => transport.src_port,
    };
    if server_port == 0 || !config().dns_ports.contains(&server_port) {
        return None;
    }
    let mut packet = DnsPacket {
        direction,
        protocol: transport.protocol,
        src_port: transport.src_port,
        dst_port: transport.dst_port,
        ..DnsPacket::default()
    };
    if addresses(ctx, ethertype, &mut packet).is_none() {
        count_lost(lost::DNS_PACKET_READ);
        return None;
    }
    if let Some(asked) = asked {
        asked.ends_into(ethertype == ETH_P_IP, &mut packet);
    }
    let payload_offset = match transport.protocol {
        protocol::UDP => transport.offset + 8,
        _ => {
            let Ok(tcp) = ctx.load::<[u8; 14]>(transport.offset as usize) else {
                count_lost(lost::DNS_PACKET_READ);
                return None;
            };
            packet.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            packet.tcp_syn = u8::from(tcp[13] & TCP_SYN != 0);
            transport.offset + u32::from(tcp[12] >> 4) * 4
        }
    };
    let wire_len = ctx.len().checked_sub(payload_offset)?;
    if wire_len == 0 && packet.protocol == protocol::TCP && packet.tcp_syn == 0 {
        // An ACK or FIN: nothing of DNS in it. A SYN goes up for its sequence number, an
        // empty UDP datagram to be counted as not DNS.
        return None;
    }
    packet.wire_len = wire_len;
    packet.timestamp_ns = now_ns();
    if direction == dns::EGRESS {
        packet.pid = sender_pid(ctx);
    }
    emit(ctx, &mut packet, payload_offset, wire_len);
    Some(())
}

/// The IPv4 header and, when it has no options (nearly always), the ports, in one load.
fn ipv4_transport(ctx: &SkBuffContext) -> Option<Transport> {
    let h: [u8; IPV4_HEADER_MIN as usize + 4] = ctx.load(0).ok()?;
    let protocol = h[9];
    if protocol != protocol::UDP && protocol != protocol::TCP {
        return None;
    }
    // A later fragment carries no transport header; DNS over UDP above the MTU is
    // fragmented only where EDNS sizes exceed it, which resolvers avoid since 2020.
    if u16::from_be_bytes([h[6], h[7]]) & IPV4_FRAGMENT_OFFSET != 0 {
        return None;
    }
    let offset = u32::from(h[0] & 0x0f) * 4;
    let ports = if offset == IPV4_HEADER_MIN {
        [h[20], h[21], h[22], h[23]]
    } else {
        ctx.load::<[u8; 4]>(offset as usize).ok()?
    };
    Some(Transport {
        protocol,
        offset,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

/// Extension headers are not followed: DNS over IPv6 does not use them in practice.
fn ipv6_transport(ctx: &SkBuffContext) -> Option<Transport> {
    let h: [u8; IPV6_HEADER as usize + 4] = ctx.load(0).ok()?;
    let protocol = h[6];
    if protocol != protocol::UDP && protocol != protocol::TCP {
        return None;
    }
    Some(Transport {
        protocol,
        offset: IPV6_HEADER,
        src_port: u16::from_be_bytes([h[40], h[41]]),
        dst_port: u16::from_be_bytes([h[42], h[43]]),
    })
}

/// Source and destination addresses, read only for a DNS packet.
fn addresses(ctx: &SkBuffContext, ethertype: u16, packet: &mut DnsPacket) -> Option<()> {
    if ethertype == ETH_P_IP {
        let a: [u8; 8] = ctx.load(12).ok()?;
        packet.family = family::IPV4;
        packet.src_addr[..4].copy_from_slice(&a[..4]);
        packet.dst_addr[..4].copy_from_slice(&a[4..]);
    } else {
        packet.family = family::IPV6;
        packet.src_addr = ctx.load(8).ok()?;
        packet.dst_addr = ctx.load(24).ok()?;
    }
    Some(())
}

/// Copies the header and up to `PAYLOAD_MAX` payload bytes into this CPU's scratch
/// event (too big for the 512-byte stack) and hands them to the ring buffer.
fn emit(ctx: &SkBuffContext, packet: &mut DnsPacket, payload_offset: u32, wire_len: u32) {
    if wire_len == 0 {
        if DNS_PACKETS.output::<DnsPacket>(packet, wakeup_flag(&DNS_PACKETS)).is_err() {
            count_lost(lost::DNS_RING_FULL);
        }
        return;
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot; only programs on this CPU touch it.
    unsafe {
        if (*scratch).busy != 0 {
            count_lost(lost::DNS_SCRATCH_BUSY);
            return;
        }
        (*scratch).busy = 1;
    }
    emit_from_scratch(ctx, scratch, packet, payload_offset, wire_len);
    // SAFETY: as above.
    unsafe { (*scratch).busy = 0 };
}

#[inline(always)]
fn emit_from_scratch(
    ctx: &SkBuffContext,
    scratch: *mut DnsScratch,
    packet: &mut DnsPacket,
    payload_offset: u32,
    wire_len: u32,
) {
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
    if DNS_PACKETS.output::<[u8]>(bytes, wakeup_flag(&DNS_PACKETS)).is_err() {
        count_lost(lost::DNS_RING_FULL);
    }
}

fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
