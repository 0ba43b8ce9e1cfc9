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
//! `sendmsg` (a query), so the asking process is known there; see `sender_pid` for when
//! it is not.
//! <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/cgroup.c#L1460> (cgroup skb >= 4.10;
//! `skb->data` is set to the network header before the program runs, on both sides)
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use flowtel_probes_abi::{DnsPacket, dns, family, lost, protocol};

use crate::{
    config::config,
    maps::{DNS_PACKETS, DNS_SCRATCH, count_lost, wakeup_flag},
};

/// Lets the packet through: the probe only observes.
const PASS: i32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_HEADER_MIN: u32 = 20;
const IPV6_HEADER: u32 = 40;
/// IPv4 `frag_off` offset bits: non-zero marks a fragment other than the first.
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
    let asked = if direction == dns::EGRESS { connected_socket(ctx) } else { None };
    let server_port = match asked {
        Some(socket) => socket.peer_port,
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
    if let Some(socket) = asked {
        socket.ends_into(ethertype, &mut packet);
    }
    let payload_offset = match transport.protocol {
        protocol::UDP => transport.offset + 8,
        _ => {
            let Ok(tcp) = ctx.load::<[u8; 13]>(transport.offset as usize) else {
                count_lost(lost::DNS_PACKET_READ);
                return None;
            };
            packet.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            transport.offset + u32::from(tcp[12] >> 4) * 4
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
        packet.pid = sender_pid(ctx);
    }
    emit(ctx, &mut packet, payload_offset, wire_len);
    Some(())
}

/// A connected socket (every TCP one, a UDP one after `connect()`, as glibc's resolver
/// and dig use them) and the port it sends to, as the process asked.
#[derive(Clone, Copy)]
struct ConnectedSocket {
    sk: *const bpf_sock,
    peer_port: u16,
}

/// The sending socket when it is connected. Its own ends are what the process asked:
/// the packet's header carries them after the host's NAT (kube-proxy's DNAT of a
/// Service IP, Docker's of 127.0.0.11:53 to another port, both in the OUTPUT chain,
/// which runs before cgroup egress), but the answer arrives with them restored, so
/// pairing needs the socket's. `skb->sk` is readable in cgroup skb programs since 5.1;
/// `dst_port` is read 4 bytes wide, the load older kernels accept too (5.19 narrowed the
/// field to 16 bits and kept the wide load).
/// <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/ip_output.c#L432>
fn connected_socket(ctx: &SkBuffContext) -> Option<ConnectedSocket> {
    // SAFETY: `sk` is a context field (a nullable socket pointer) every cgroup skb
    // program may read; its `dst_port` is a socket-common field readable through it.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk.cast_const();
        if sk.is_null() {
            return None;
        }
        let port_word = core::ptr::read_volatile((&raw const (*sk).dst_port).cast::<u32>());
        // The port is in network order in the word's first two bytes.
        let peer_port = u16::from_be(port_word as u16);
        (peer_port != 0).then_some(ConnectedSocket { sk, peer_port })
    }
}

impl ConnectedSocket {
    /// The socket's addresses and ports in place of the header's: the server as the
    /// process asked for it, and its own end before any source NAT. An unbound
    /// (wildcard) local address keeps the header's.
    fn ends_into(self, ethertype: u16, packet: &mut DnsPacket) {
        let sk = self.sk;
        // SAFETY: socket-common fields of a non-null `skb->sk`, each read in its own size
        // (the verifier refuses a wider load that merges two of them).
        unsafe {
            packet.dst_port = self.peer_port;
            packet.src_port = core::ptr::read_volatile(&raw const (*sk).src_port) as u16;
            if ethertype == ETH_P_IP {
                let dst = core::ptr::read_volatile(&raw const (*sk).dst_ip4);
                packet.dst_addr[..4].copy_from_slice(&dst.to_ne_bytes());
                let src = core::ptr::read_volatile(&raw const (*sk).src_ip4);
                if src != 0 {
                    packet.src_addr[..4].copy_from_slice(&src.to_ne_bytes());
                }
            } else {
                let (mut dst, mut src) = ([0u32; 4], [0u32; 4]);
                for i in 0..4 {
                    dst[i] = core::ptr::read_volatile(&raw const (*sk).dst_ip6[i]);
                    src[i] = core::ptr::read_volatile(&raw const (*sk).src_ip6[i]);
                }
                write_ip6(&mut packet.dst_addr, dst);
                if src != [0; 4] {
                    write_ip6(&mut packet.src_addr, src);
                }
            }
        }
    }
}

/// An IPv6 address as the socket holds it (four words in network order) into bytes.
fn write_ip6(out: &mut [u8; 16], words: [u32; 4]) {
    for (i, word) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
}

/// The process that owns the sending socket, or 0 when the program does not run on its
/// behalf. A segment sent from a timer or softirq (a retransmission, a send deferred by
/// TCP small queues) runs with `current` set to whatever task was interrupted: only a
/// task in the socket's own cgroup v2 (`skb->sk`'s, set when the socket was made) is
/// taken for the asker, so another container's process is never named. (Which kernels
/// give cgroup skb programs the current-task helpers varies; verified on 6.18. Where the
/// verifier refuses them the DNS probes report `failed` and flows go on.)
fn sender_pid(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the helpers read the skb's socket and the current task; no preconditions.
    let (socket_cgroup, current_cgroup) =
        unsafe { (bpf_skb_cgroup_id(ctx.skb.skb.cast::<__sk_buff>()), bpf_get_current_cgroup_id()) };
    if socket_cgroup == 0 || socket_cgroup != current_cgroup {
        return 0;
    }
    (bpf_get_current_pid_tgid() >> 32) as u32
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
