//! Reading a `struct sock` through offsets resolved from the running kernel's BTF.
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use flowtel_probes_abi::{FlowKey, ProbeConfig, direction, family, lost};

use crate::maps::count_lost;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `SOCK_BINDPORT_LOCK`: the user bound the local port explicitly, so it is a service
/// port and the flow is incoming. Accepted sockets inherit it from their listener.
/// <https://elixir.bootlin.com/linux/v6.12/source/include/net/sock.h#L1446>
const SOCK_BINDPORT_LOCK: u8 = 8;

#[inline(always)]
pub fn read<T>(sk: u64, offset: u16) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns Err.
    match unsafe { bpf_probe_read_kernel((sk + u64::from(offset)) as *const T) } {
        Ok(value) => Some(value),
        Err(_) => {
            count_lost(lost::KERNEL_READ);
            None
        }
    }
}

/// The direction a socket's local port implies when no state change told us.
#[inline(always)]
pub fn direction_from_locks(cfg: &ProbeConfig, sk: u64) -> u8 {
    // A bit field on older kernels: the window holding it, shifted and masked.
    let locks = read::<u32>(sk, cfg.sock_userlocks)
        .map(|window| (window >> (cfg.sock_userlocks_shift & 31)) & ((1u32 << (cfg.sock_userlocks_bits & 31)) - 1));
    match locks {
        Some(locks) if locks & u32::from(SOCK_BINDPORT_LOCK) != 0 => direction::INCOMING,
        _ => direction::OUTGOING,
    }
}

/// The socket's family, addresses and both ports (host order); pid, protocol and
/// direction are left zero.
#[inline(always)]
pub fn socket_ends(cfg: &ProbeConfig, sk: u64) -> Option<FlowKey> {
    let mut key = FlowKey::default();
    fill_ends(cfg, sk, &mut key)?;
    Some(key)
}

/// Reads the socket's ends straight into `key`: building a key and copying it out
/// would cost every caller's stack frame two keys (44 bytes each) of the 512 the
/// programs share before Linux 6.13.
#[inline(always)]
pub fn fill_ends(cfg: &ProbeConfig, sk: u64, key: &mut FlowKey) -> Option<()> {
    match read::<u16>(sk, cfg.sock_family)? {
        AF_INET => {
            key.family = family::IPV4;
            read_into(sk, cfg.sock_rcv_saddr, &mut key.local_addr[..4])?;
            read_into(sk, cfg.sock_daddr, &mut key.peer_addr[..4])?;
        }
        AF_INET6 => {
            key.family = family::IPV6;
            read_into(sk, cfg.sock_v6_rcv_saddr, &mut key.local_addr)?;
            read_into(sk, cfg.sock_v6_daddr, &mut key.peer_addr)?;
        }
        _ => return None,
    }
    key.local_port = read(sk, cfg.sock_num)?;
    key.peer_port = u16::from_be(read(sk, cfg.sock_dport)?);
    Some(())
}

#[inline(always)]
fn read_into(sk: u64, offset: u16, out: &mut [u8]) -> Option<()> {
    // SAFETY: bpf_probe_read_kernel_buf validates the address; a fault returns Err.
    match unsafe { bpf_probe_read_kernel_buf((sk + u64::from(offset)) as *const u8, out) } {
        Ok(()) => Some(()),
        Err(_) => {
            count_lost(lost::KERNEL_READ);
            None
        }
    }
}

/// The socket's flow key, with the ephemeral side's port zeroed.
#[inline(always)]
pub fn flow_key(cfg: &ProbeConfig, sk: u64, protocol: u8, dir: u8, pid: u32) -> Option<FlowKey> {
    let mut key = FlowKey::default();
    fill_flow_key(cfg, sk, protocol, dir, pid, &mut key)?;
    Some(key)
}

/// The port [`flow_key`] zeroes for direction `dir`, host order; 0 when unreadable.
#[inline(always)]
pub fn ephemeral_port(cfg: &ProbeConfig, sk: u64, dir: u8) -> u16 {
    if dir == direction::INCOMING {
        read::<u16>(sk, cfg.sock_dport).map_or(0, u16::from_be)
    } else {
        read::<u16>(sk, cfg.sock_num).unwrap_or(0)
    }
}

/// [`flow_key`], written into `key` in place.
#[inline(always)]
pub fn fill_flow_key(cfg: &ProbeConfig, sk: u64, protocol: u8, dir: u8, pid: u32, key: &mut FlowKey) -> Option<()> {
    fill_ends(cfg, sk, key)?;
    key.pid = pid;
    key.protocol = protocol;
    key.direction = dir;
    if dir == direction::INCOMING {
        key.peer_port = 0;
    } else {
        key.local_port = 0;
    }
    Some(())
}
