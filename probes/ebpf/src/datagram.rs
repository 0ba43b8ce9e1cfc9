//! Peer addresses of unconnected UDP sockets (a DNS server answering with sendto, a
//! client sending with sendto without connect). The socket has no peer, so it is read
//! from the syscall's own `struct sockaddr` in user memory:
//! - send: sys_enter_sendto/sendmsg stash the destination per thread; `sock_send_length`
//!   (in `traffic.rs`) uses it; sys_exit removes it.
//! - receive: sys_enter_recvfrom/recvmsg stash the user's address buffer; the
//!   `sock_recv_length` of an unconnected UDP socket parks its bytes there; sys_exit,
//!   when the kernel has written the sender's address, counts them.
//! sendmmsg/recvmmsg are not covered: their bytes are counted without a peer.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use flowtel_probes_abi::{DatagramPeer, FlowKey, PendingReceive, direction, family, lost};

use crate::{
    config::config,
    flow_table::{add, stats_for},
    maps::{DATAGRAM_PEERS, PENDING_RECEIVES, count_lost, remember_process_name},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[tracepoint]
pub fn datagram_sendto_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file.
    if let Ok(addr) = unsafe { ctx.read_at::<u64>(config().sendto_addr.into()) } {
        stash_peer(addr);
    }
    0
}

#[tracepoint]
pub fn datagram_sendmsg_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file; msg_name is msghdr's first field.
    if let Ok(msg) = unsafe { ctx.read_at::<u64>(config().sendmsg_msg.into()) }
        && let Ok(name) = unsafe { bpf_probe_read_user(msg as *const u64) }
    {
        stash_peer(name);
    }
    0
}

#[tracepoint]
pub fn datagram_send_exit(_ctx: TracePointContext) -> u32 {
    let _ = DATAGRAM_PEERS.remove(bpf_get_current_pid_tgid());
    0
}

#[tracepoint]
pub fn datagram_recvfrom_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file.
    if let Ok(addr) = unsafe { ctx.read_at::<u64>(config().recvfrom_addr.into()) } {
        stash_receive(addr, 0);
    }
    0
}

#[tracepoint]
pub fn datagram_recvmsg_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file.
    if let Ok(msg) = unsafe { ctx.read_at::<u64>(config().recvmsg_msg.into()) } {
        stash_receive(msg, 1);
    }
    0
}

#[tracepoint]
pub fn datagram_recv_exit(_ctx: TracePointContext) -> u32 {
    let _ = try_recv_exit();
    0
}

fn stash_peer(user_sockaddr: u64) {
    if user_sockaddr == 0 {
        return;
    }
    if let Some(peer) = read_sockaddr(user_sockaddr)
        && DATAGRAM_PEERS.insert(bpf_get_current_pid_tgid(), peer, 0).is_err()
    {
        count_lost(lost::PEER_TABLE_FULL);
    }
}

fn stash_receive(user_ptr: u64, is_msghdr: u8) {
    if user_ptr == 0 {
        return;
    }
    let pending = PendingReceive { user_ptr, is_msghdr, ..PendingReceive::default() };
    if PENDING_RECEIVES.insert(bpf_get_current_pid_tgid(), pending, 0).is_err() {
        count_lost(lost::PEER_TABLE_FULL);
    }
}

fn try_recv_exit() -> Option<()> {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of a map value.
    let pending = *unsafe { PENDING_RECEIVES.get(tid) }?;
    let _ = PENDING_RECEIVES.remove(tid);
    if pending.has_data == 0 {
        return None;
    }
    let sockaddr = if pending.is_msghdr == 1 {
        // SAFETY: user memory read through the helper, which checks the address.
        unsafe { bpf_probe_read_user(pending.user_ptr as *const u64) }.ok()?
    } else {
        pending.user_ptr
    };
    let mut key = pending.key;
    if let Some(peer) = read_sockaddr(sockaddr) {
        set_peer(&mut key, &peer);
    }
    let (stats, created) = stats_for(&key)?;
    if created {
        remember_process_name((tid >> 32) as u32);
    }
    // SAFETY: `stats` points into a live map value.
    add(unsafe { &raw mut (*stats).bytes_received }, pending.bytes);
    Some(())
}

/// Called from `sock_send_length` for an unconnected UDP socket.
#[inline(always)]
pub fn peer_of_send(key: &mut FlowKey) {
    // SAFETY: read-only copy of a map value.
    if let Some(peer) = unsafe { DATAGRAM_PEERS.get(bpf_get_current_pid_tgid()) } {
        set_peer(key, peer);
    }
}

/// Called from `sock_recv_length` for an unconnected UDP socket: parks the bytes until
/// the syscall returns. False when no recvfrom/recvmsg is in progress (read(), recvmmsg):
/// then the caller counts them without a peer.
#[inline(always)]
pub fn park_receive(key: &FlowKey, bytes: u64) -> bool {
    let Some(pending) = PENDING_RECEIVES.get_ptr_mut(bpf_get_current_pid_tgid()) else {
        return false;
    };
    // SAFETY: `pending` points into a live map value owned by this thread's syscall.
    unsafe {
        (*pending).key = *key;
        (*pending).bytes = bytes;
        (*pending).has_data = 1;
    }
    true
}

fn set_peer(key: &mut FlowKey, peer: &DatagramPeer) {
    match (key.family, peer.family) {
        (family::IPV4, family::IPV4) => key.peer_addr[..4].copy_from_slice(&peer.addr[..4]),
        (family::IPV6, family::IPV6) => key.peer_addr = peer.addr,
        // An IPv6 socket sending to an IPv4 address uses a v4-mapped sockaddr_in6.
        _ => return,
    }
    if key.direction == direction::OUTGOING {
        key.peer_port = peer.port;
    }
}

fn read_sockaddr(user_sockaddr: u64) -> Option<DatagramPeer> {
    // SAFETY: user memory read through the helper, which checks the address.
    let family_raw: u16 = unsafe { bpf_probe_read_user(user_sockaddr as *const u16) }.ok()?;
    let port: u16 = unsafe { bpf_probe_read_user((user_sockaddr + 2) as *const u16) }.ok()?;
    let mut peer = DatagramPeer { port: u16::from_be(port), ..DatagramPeer::default() };
    match family_raw {
        AF_INET => {
            let addr: [u8; 4] = unsafe { bpf_probe_read_user((user_sockaddr + 4) as *const [u8; 4]) }.ok()?;
            peer.addr[..4].copy_from_slice(&addr);
            peer.family = family::IPV4;
        }
        AF_INET6 => {
            peer.addr = unsafe { bpf_probe_read_user((user_sockaddr + 8) as *const [u8; 16]) }.ok()?;
            peer.family = family::IPV6;
        }
        _ => return None,
    }
    Some(peer)
}
