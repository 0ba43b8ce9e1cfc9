//! `sock:sock_send_length` and `sock:sock_recv_length`: bytes per flow and process.
//!
//! Both fire in the calling process's context, once per sendmsg/recvmsg on any socket
//! (write/read/send/recv and their vector forms all go through them).
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/sock.h#L265> (>= 6.3)
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use flowtel_probes_abi::{ProbeConfig, SocketInfo, SocketKey, SocketTraffic, http::verdict, lost, protocol};

use crate::{
    config::config,
    datagram,
    flow_table::{add_bytes, add_to_existing_socket, insert_socket_entry, stats_for},
    http,
    maps::{SOCKETS, count_lost, remember_process_name},
    socket::{direction_from_locks, ephemeral_port, fill_flow_key, flow_key, read},
    state::claim,
};

const MSG_PEEK: i32 = 2;

#[tracepoint]
pub fn flow_send(ctx: TracePointContext) -> u32 {
    let _ = try_flow_length(&ctx, true);
    0
}

#[tracepoint]
pub fn flow_recv(ctx: TracePointContext) -> u32 {
    let _ = try_flow_length(&ctx, false);
    0
}

/// The same hooks as raw tracepoints: the kernel hands over the `TP_PROTO` arguments
/// (sk, ret, flags) without building a trace record, several times cheaper than the
/// classic tracepoint. User space attaches these when the running kernel's BTF shows
/// that prototype, and the classic ones otherwise.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn flow_send_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_raw_length(&ctx, true);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn flow_recv_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_raw_length(&ctx, false);
    0
}

fn try_raw_length(ctx: &RawTracePointContext, sent: bool) -> Option<()> {
    let cfg = config();
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if !sent && flags & MSG_PEEK != 0 {
        return None;
    }
    if ret <= 0 {
        if sent {
            datagram::forget_peer();
        } else if cfg.http_wanted() {
            http::connection_end(cfg, sk, ret);
        }
        return None;
    }
    let entry = account(cfg, sk, || read::<u16>(sk, cfg.sock_protocol), ret as u64, sent);
    // HTTP rides on the byte counter's lookup: the entry says whether this socket can
    // carry HTTP, so most sends and receives cost the HTTP side one byte read.
    if let Some(entry) = entry
        && cfg.http_wanted()
    {
        http::socket_call(cfg, sk, entry, ret as u32, sent);
    }
    Some(())
}

fn try_flow_length(ctx: &TracePointContext, sent: bool) -> Option<()> {
    let cfg = config();
    // SAFETY: offsets come from the tracepoint's format file.
    let (ret, proto, flags, sk): (i32, u16, i32, u64) = unsafe {
        (
            ctx.read_at(cfg.length_ret.into()).ok()?,
            ctx.read_at(cfg.length_protocol.into()).ok()?,
            ctx.read_at(cfg.length_flags.into()).ok()?,
            ctx.read_at(cfg.length_sk.into()).ok()?,
        )
    };
    if ret <= 0 && sent {
        datagram::forget_peer();
    }
    if ret <= 0 || (!sent && flags & MSG_PEEK != 0) {
        return None;
    }
    let entry = account(cfg, sk, || Some(proto), ret as u64, sent)?;
    if cfg.http_wanted() {
        http::socket_call(cfg, sk, entry, ret as u32, sent);
    }
    Some(())
}

/// Adds `bytes` to the flow of socket `sk`; shared with the kprobe fallback. `proto`
/// is asked only when the socket has no entry yet this interval (a kernel read on the
/// raw path), so a busy TCP socket costs one lookup and an atomic add. Returns a TCP
/// socket's per-socket entry (UDP has none).
#[inline(always)]
pub fn account(
    cfg: &ProbeConfig,
    sk: u64,
    proto: impl FnOnce() -> Option<u16>,
    bytes: u64,
    sent: bool,
) -> Option<*mut SocketTraffic> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = SocketKey { sk, pid, _pad: 0 };
    if let Some(entry) = add_to_existing_socket(&key, sent, bytes) {
        return Some(entry);
    }
    match proto()? {
        p if p == u16::from(protocol::TCP) => {
            // First send/recv of this socket by this process in the interval: work out
            // its flow key once.
            // Its result aside: a full socket table still leaves a per-socket entry.
            let _ = new_tcp_entry(cfg, &key);
            add_to_existing_socket(&key, sent, bytes)
        }
        p if p == u16::from(protocol::UDP) => {
            account_udp(cfg, sk, pid, bytes, sent);
            None
        }
        _ => None,
    }
}

/// UDP goes by flow: an unconnected socket's peer changes with every datagram. A
/// separate BPF function, so that each path's stack frame stays within the limit.
#[inline(never)]
fn account_udp(cfg: &ProbeConfig, sk: u64, pid: u32, bytes: u64, sent: bool) -> Option<()> {
    let mut key = flow_key(cfg, sk, protocol::UDP, direction_from_locks(cfg, sk), pid)?;
    if key.peer_addr == [0; 16] {
        // Unconnected: the peer comes from the cgroup sock_addr hook (datagram.rs).
        datagram::take_peer(&mut key);
    }
    let (stats, created) = stats_for(&key)?;
    if created {
        remember_process_name(pid);
    }
    // SAFETY: `stats` points into a live map value.
    unsafe { add_bytes(&raw mut (*stats).bytes_sent, &raw mut (*stats).bytes_received, sent, bytes) };
    Some(())
}

/// Makes the TCP socket's per-socket entry in the active table: its cached key,
/// claimed by the current process, and its HTTP verdict. Runs once per socket, process
/// and interval (the per-socket table's miss path), in its own stack frame: the
/// programs' frames together must stay within 512 bytes before Linux 6.13.
#[inline(never)]
fn new_tcp_entry(cfg: &ProbeConfig, key: &SocketKey) -> Option<()> {
    let (sk, pid) = (key.sk, key.pid);
    match SOCKETS.get_ptr(sk) {
        Some(info) => {
            // SAFETY: `info` points into a live map value.
            let (owner, open_pending) = unsafe { ((*info).key.pid, (*info).open_pending) };
            if owner != pid || open_pending == 1 {
                claim(sk, pid);
                remember_process_name(pid);
            }
        }
        None => {
            adopt_socket(cfg, key)?;
            remember_process_name(pid);
        }
    }
    // None when the socket table was full: then adopt_socket made the entry itself.
    let info = SOCKETS.get_ptr(sk)?;
    let mut entry = SocketTraffic::default();
    // SAFETY: as above.
    unsafe {
        entry.flow = (*info).key;
        entry.http = (*info).http;
    }
    entry.flow.pid = pid;
    entry.ephemeral_port = ephemeral_port(cfg, sk, entry.flow.direction);
    insert_socket_entry(key, &entry)
}

/// A TCP socket opened before the agent started (or when the socket table was full):
/// its earlier retransmits are not ours to count, and its first payload was not seen.
/// A leaf function, so that its locals never share a call chain with another frame.
#[inline(never)]
fn adopt_socket(cfg: &ProbeConfig, key: &SocketKey) -> Option<()> {
    let (sk, pid) = (key.sk, key.pid);
    let mut info = SocketInfo { http: verdict::ALWAYS, ..SocketInfo::default() };
    fill_flow_key(cfg, sk, protocol::TCP, direction_from_locks(cfg, sk), pid, &mut info.key)?;
    info.retrans_seen = read::<u32>(sk, cfg.tcp_total_retrans).unwrap_or(0);
    if SOCKETS.insert(sk, &info, 0).is_err() {
        count_lost(lost::SOCKET_TABLE_FULL);
        // Counted all the same, under the flow the socket shows now.
        let entry = SocketTraffic {
            flow: info.key,
            http: verdict::ALWAYS,
            ephemeral_port: ephemeral_port(cfg, sk, info.key.direction),
            ..SocketTraffic::default()
        };
        insert_socket_entry(key, &entry)?;
    }
    Some(())
}
