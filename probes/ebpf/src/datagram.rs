//! Peer addresses of unconnected UDP sockets (a DNS server answering with sendto, a
//! client sending with sendto without connect). The socket has no peer, so it comes
//! from the cgroup sock_addr hooks that the kernel runs inside udp_sendmsg (the
//! destination) and udp_recvmsg (the source), per datagram, sendmmsg/recvmmsg
//! included. They stash the address per thread; the `sock_send_length` /
//! `sock_recv_length` that follows in the same syscall (`traffic.rs`) takes it. A send
//! to a DNS port is also noted for the DNS egress probe (`dns_asked.rs`): the address
//! the process asked, before any NAT.
//! Unlike syscall tracepoints, these hooks cost nothing for other syscalls.
//! Attached at the cgroup v2 root, so they see every process of the host.
//! <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/udp.c#L1160> (>= 4.18 sendmsg, 5.2 recvmsg)
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::cgroup_sock_addr, programs::SockAddrContext};
use flowtel_probes_abi::{DatagramPeer, FlowKey, control, direction, family, lost};

use crate::{
    config::config,
    dns_asked::{note_asked_send, write_ip6},
    maps::{CONTROL, DATAGRAM_PEERS, SOCKET_OWNERS, count_lost},
};

/// Lets the syscall proceed: these hooks only observe.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(sendmsg4)]
pub fn datagram_sendmsg4(ctx: SockAddrContext) -> i32 {
    note_asked_send(&stash_v4(&ctx));
    note_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn datagram_recvmsg4(ctx: SockAddrContext) -> i32 {
    stash_v4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn datagram_sendmsg6(ctx: SockAddrContext) -> i32 {
    note_asked_send(&stash_v6(&ctx));
    note_owner(&ctx);
    ALLOW
}

/// connect() of any socket: where a connected UDP socket (glibc's resolver, dig) gets
/// its owner noted, for the DNS probe on kernels before 6.2.
#[cgroup_sock_addr(connect4)]
pub fn socket_connect4(ctx: SockAddrContext) -> i32 {
    note_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn socket_connect6(ctx: SockAddrContext) -> i32 {
    note_owner(&ctx);
    ALLOW
}

/// Notes the calling process as the socket's owner, only where the DNS probe needs it:
/// a read-only constant to the verifier, so elsewhere this costs nothing.
#[inline(always)]
fn note_owner(ctx: &SockAddrContext) {
    if config().dns_owner_by_socket == 0 {
        return;
    }
    // SAFETY: `sk` is a context field of every sock_addr program; only its address is
    // used, as the key the DNS probe looks up with `skb->sk`.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk } as u64;
    if sk != 0 {
        let _ = SOCKET_OWNERS.insert(sk, (bpf_get_current_pid_tgid() >> 32) as u32, 0);
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn datagram_recvmsg6(ctx: SockAddrContext) -> i32 {
    stash_v6(&ctx);
    ALLOW
}

fn stash_v4(ctx: &SockAddrContext) -> DatagramPeer {
    // SAFETY: the kernel passes a valid bpf_sock_addr; plain context loads.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let mut peer = DatagramPeer { family: family::IPV4, port: port_of(port), ..DatagramPeer::default() };
    peer.addr[..4].copy_from_slice(&ip.to_ne_bytes());
    stash(&peer);
    peer
}

fn stash_v6(ctx: &SockAddrContext) -> DatagramPeer {
    // SAFETY: as above; user_ip6 is read one 32-bit word at a time, as the verifier asks.
    let (words, port) = unsafe {
        let a = &*ctx.sock_addr;
        ([a.user_ip6[0], a.user_ip6[1], a.user_ip6[2], a.user_ip6[3]], a.user_port)
    };
    let mut peer = DatagramPeer { family: family::IPV6, port: port_of(port), ..DatagramPeer::default() };
    write_ip6(&mut peer.addr, words);
    stash(&peer);
    peer
}

/// `user_port` holds the port in network byte order in its low 16 bits.
fn port_of(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

/// LRU, so an insert does not fail: a peer pushed out before its use is counted there.
fn stash(peer: &DatagramPeer) {
    let _ = DATAGRAM_PEERS.insert(bpf_get_current_pid_tgid(), peer, 0);
}

/// A send that failed (`ret <= 0`) after the sendmsg hook stashed its destination (a
/// broadcast without `SO_BROADCAST`, no route): no byte counter takes that peer, so it
/// goes now, before the thread's next receive without an address could take it.
#[inline(always)]
pub fn forget_peer() {
    let _ = DATAGRAM_PEERS.remove(bpf_get_current_pid_tgid());
}

/// Called from `sock_send_length`/`sock_recv_length` for an unconnected UDP socket:
/// takes this thread's stashed peer (and removes it, so it is never reused).
#[inline(always)]
pub fn take_peer(key: &mut FlowKey) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of a map value.
    let Some(peer) = (unsafe { DATAGRAM_PEERS.get(tid) }).copied() else {
        if CONTROL.get(control::DATAGRAM_HOOKS) == Some(&1) {
            count_lost(lost::PEER_UNKNOWN);
        }
        return;
    };
    let _ = DATAGRAM_PEERS.remove(tid);
    match (key.family, peer.family) {
        (family::IPV4, family::IPV4) => key.peer_addr[..4].copy_from_slice(&peer.addr[..4]),
        (family::IPV6, family::IPV6) => key.peer_addr = peer.addr,
        _ => return,
    }
    if key.direction == direction::OUTGOING {
        key.peer_port = peer.port;
    }
}
