//! The DNS server as the asking process addressed it, and the asking process itself,
//! for a query leaving a local socket (`dns.rs`'s egress program).
//!
//! NAT in the sender's OUTPUT chain (kube-proxy's DNAT of a Service IP to a DNS pod,
//! Docker's of 127.0.0.11:53 to another port) runs before cgroup egress, so the packet's
//! header carries the rewritten server; the answer arrives with the rewrite undone. The
//! asked server comes from the socket when it is connected, else from the address the
//! process passed to `sendto`, which the sendmsg hook (`datagram.rs`) noted on this CPU
//! earlier in the same syscall.
//! <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/ip_output.c#L432>
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use flowtel_probes_abi::{DatagramPeer, DnsPacket, family, protocol};

use crate::{
    config::config,
    maps::{DNS_ASKED_SEND, SOCKET_OWNERS, SOCKETS},
};

/// The server a query was sent to, as its process addressed it.
#[derive(Clone, Copy)]
pub enum AskedServer {
    Socket(ConnectedSocket),
    Datagram(DatagramPeer),
}

/// The asked server of an egress packet, when the socket or the send tells it.
pub fn asked_server(ctx: &SkBuffContext, protocol: u8) -> Option<AskedServer> {
    if let Some(socket) = connected_socket(ctx) {
        return Some(AskedServer::Socket(socket));
    }
    if protocol != protocol::UDP {
        return None;
    }
    noted_send(ctx).map(AskedServer::Datagram)
}

impl AskedServer {
    pub fn port(&self) -> u16 {
        match self {
            Self::Socket(socket) => socket.peer_port,
            Self::Datagram(peer) => peer.port,
        }
    }

    /// The asked ends in place of the header's.
    pub fn ends_into(self, ipv4: bool, packet: &mut DnsPacket) {
        match self {
            Self::Socket(socket) => socket.ends_into(ipv4, packet),
            Self::Datagram(peer) => {
                packet.dst_port = peer.port;
                match (ipv4, peer.family) {
                    (true, family::IPV4) => packet.dst_addr[..4].copy_from_slice(&peer.addr[..4]),
                    // An IPv6 socket sending to a v4-mapped address sends IPv4.
                    (true, family::IPV6) => packet.dst_addr[..4].copy_from_slice(&peer.addr[12..]),
                    (false, family::IPV6) => packet.dst_addr = peer.addr,
                    _ => {}
                }
            }
        }
    }
}

/// The `sendto` address of this CPU's latest unconnected UDP send, kept only when it is
/// a DNS port (`tid` 0 otherwise), for that datagram's own egress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AskedSend {
    tid: u64,
    peer: DatagramPeer,
}

/// Called by the sendmsg hooks (`datagram.rs`) for every unconnected UDP send, before the
/// datagram's egress in the same syscall: remembers a DNS port's address on this CPU,
/// and forgets an older one otherwise, so that no later datagram of the thread is taken
/// for a query. Costs a non-DNS send one per-CPU array write.
pub fn note_asked_send(peer: &DatagramPeer) {
    let Some(slot) = DNS_ASKED_SEND.get_ptr_mut(0) else { return };
    let dns = peer.port != 0 && config().dns_ports.contains(&peer.port);
    // SAFETY: this CPU's slot. The address is written before the `tid` that makes it
    // valid, so an egress program that interrupts this one on the CPU never takes a
    // half-written slot.
    unsafe {
        if dns {
            (*slot).peer = *peer;
            (*slot).tid = bpf_get_current_pid_tgid();
        } else {
            (*slot).tid = 0;
        }
    }
}

/// The address the sending thread passed to `sendto` for this datagram, when it is a
/// DNS port. The slot is this CPU's, so it is taken only by the thread that wrote it and
/// only once; a send that migrated CPUs between its hook and its egress is read from
/// the header instead (behind a port-changing NAT such a query is missed). A non-DNS
/// unconnected datagram costs one per-CPU array read here.
fn noted_send(ctx: &SkBuffContext) -> Option<DatagramPeer> {
    // A read-only constant to the verifier (see `sender_pid`).
    if config().skb_task_helpers == 0 {
        return None;
    }
    let slot = DNS_ASKED_SEND.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, read and cleared while this program runs.
    let tid = unsafe { (*slot).tid };
    if tid == 0 || tid != bpf_get_current_pid_tgid() || sender_pid(ctx) == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe {
        (*slot).tid = 0;
        Some((*slot).peer)
    }
}

/// A connected socket (every TCP one, a UDP one after `connect()`, as glibc's resolver
/// and dig use them) and the port it sends to, as the process asked.
#[derive(Clone, Copy)]
pub struct ConnectedSocket {
    sk: *const bpf_sock,
    peer_port: u16,
}

/// The sending socket when it is connected. Its own ends are what the process asked:
/// the packet's header carries them after the host's NAT (kube-proxy's DNAT of a
/// Service IP, Docker's of 127.0.0.11:53 to another port), but the answer arrives with
/// them restored, so pairing needs the socket's. `skb->sk` is readable in cgroup skb programs since 5.1;
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
    fn ends_into(self, ipv4: bool, packet: &mut DnsPacket) {
        let sk = self.sk;
        // SAFETY: socket-common fields of a non-null `skb->sk`, each read in its own size
        // (the verifier refuses a wider load that merges two of them).
        unsafe {
            packet.dst_port = self.peer_port;
            packet.src_port = core::ptr::read_volatile(&raw const (*sk).src_port) as u16;
            if ipv4 {
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

/// An IPv6 address as the kernel's BPF contexts hold it (four words in network order)
/// into bytes; the sendmsg hooks' `user_ip6` uses it too.
pub fn write_ip6(out: &mut [u8; 16], words: [u32; 4]) {
    for (i, word) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
}

/// The process that owns the sending socket, or 0 when the program does not run on its
/// behalf. A segment sent from a timer or softirq (a retransmission, a send deferred by
/// TCP small queues) runs with `current` set to whatever task was interrupted: only a
/// task in the socket's own cgroup v2 (`skb->sk`'s, set when the socket was made) is
/// taken for the asker, so another container's process is never named. A socket whose
/// cgroup reads as none (0) or the root (1) says nothing: no socket, a process in the
/// root cgroup, or an older kernel whose sockets lose their cgroup v2 link once cgroup
/// v1's net_cls or net_prio is used; then the running task is taken, as before the
/// check. (Which kernels give cgroup skb programs the current-task helpers varies;
/// verified on 6.18. Where the verifier refuses them the DNS probes report `failed` and
/// flows go on.)
pub fn sender_pid(ctx: &SkBuffContext) -> u32 {
    // cgroup skb programs get the current-task helpers in 6.2: before, this branch is
    // a known constant to the verifier and the calls below are never checked; the
    // sending socket's noted owner stands in.
    if config().skb_task_helpers == 0 {
        return socket_owner(ctx);
    }
    const ROOT_CGROUP: u64 = 1;
    // SAFETY: the helpers read the skb's socket and the current task; no preconditions.
    let (socket_cgroup, current_cgroup) =
        unsafe { (bpf_skb_cgroup_id(ctx.skb.skb.cast::<__sk_buff>()), bpf_get_current_cgroup_id()) };
    if socket_cgroup > ROOT_CGROUP && socket_cgroup != current_cgroup {
        return 0;
    }
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The process that connected or last sent on the packet's socket, as the connect and
/// sendmsg hooks (UDP, datagram.rs) and the TCP state probe (state.rs) noted it; 0 when
/// unknown or where the kernel refused the lookup (then the lookup goes under the host).
#[inline(always)]
fn socket_owner(ctx: &SkBuffContext) -> u32 {
    if config().dns_owner_by_socket == 0 {
        return 0;
    }
    // SAFETY: `sk` is a context field; only its address is used, as a map key (a
    // privileged program may).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk } as u64;
    if sk == 0 {
        return 0;
    }
    // SAFETY: read-only copies of map values.
    if let Some(pid) = unsafe { SOCKET_OWNERS.get(sk) } {
        return *pid;
    }
    SOCKETS.get_ptr(sk).map_or(0, |info| unsafe { (*info).key.pid })
}
