//! `sock:inet_sock_set_state`: TCP connections opened, closed and failed, and the
//! direction and owner of each socket.
//!
//! Only some transitions run in the owning process's context (connect, close,
//! shutdown); the rest run in softirq where the current pid is whoever was interrupted.
//! So the owner is taken only from the process-context transitions and from send/recv
//! (see `traffic.rs`), and an accepted connection's "opened" waits until its owner is known.
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/sock.h#L144> (>= 4.16)
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use flowtel_probes_abi::{
    FlowKey, FlowStats, ProbeConfig, SocketInfo, SocketKey, direction, failure, http::verdict, lost, protocol,
};

use crate::{
    config::config,
    flow_table::{count, fold_socket_bytes},
    http,
    maps::{SOCKETS, count_lost, remember_process_name},
    retransmit::count_new_retransmits,
    socket::{direction_from_locks, flow_key, read},
};

// include/net/tcp_states.h
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;

#[tracepoint]
pub fn flow_state(ctx: TracePointContext) -> u32 {
    let _ = try_flow_state(&ctx);
    0
}

fn try_flow_state(ctx: &TracePointContext) -> Option<()> {
    let cfg = config();
    // SAFETY: offsets come from this tracepoint's format file.
    let proto: u16 = unsafe { ctx.read_at(cfg.state_protocol.into()) }.ok()?;
    if proto != u16::from(protocol::TCP) {
        return None;
    }
    // SAFETY: as above.
    let (sk, old, new): (u64, i32, i32) = unsafe {
        (
            ctx.read_at(cfg.state_skaddr.into()).ok()?,
            ctx.read_at(cfg.state_oldstate.into()).ok()?,
            ctx.read_at(cfg.state_newstate.into()).ok()?,
        )
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Each transition in a function of its own, so that only one transition's locals
    // are on the stack: all frames of a call chain share 512 bytes before Linux 6.13.
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => connecting(sk, pid),
        (TCP_SYN_SENT, TCP_ESTABLISHED) => connected(cfg, sk),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => accepted(cfg, sk),
        (TCP_SYN_SENT | TCP_SYN_RECV, TCP_CLOSE) => {
            let dir = if old == TCP_SYN_SENT { direction::OUTGOING } else { direction::INCOMING };
            count_failure(cfg, sk, dir);
            // Even when the failure could not be counted: a stale entry would hand its
            // key to the next socket allocated at this address.
            forget(sk);
        }
        (_, TCP_FIN_WAIT1 | TCP_LAST_ACK) => claim(sk, pid),
        (TCP_LISTEN, _) | (_, TCP_LISTEN) => {}
        (_, TCP_CLOSE) => close(cfg, sk),
        _ => {}
    }
    Some(())
}

/// connect(): process context. The tuple is not final yet (no source port).
#[inline(never)]
fn connecting(sk: u64, pid: u32) {
    let info = SocketInfo {
        key: FlowKey { pid, direction: direction::OUTGOING, ..FlowKey::default() },
        ..SocketInfo::default()
    };
    remember(sk, &info);
    remember_process_name(pid);
}

#[inline(never)]
fn connected(cfg: &ProbeConfig, sk: u64) {
    let owner = owner_of(sk);
    let Some(key) = flow_key(cfg, sk, protocol::TCP, direction::OUTGOING, owner) else { return };
    // Keep retrans_seen: SYN retransmits are counted on this connection's flow.
    let retrans_seen = SOCKETS.get_ptr(sk).map_or(0, |info| unsafe { (*info).retrans_seen });
    remember(sk, &SocketInfo { key, retrans_seen, ..SocketInfo::default() });
    count(&key, |s| unsafe { &raw mut (*s).opened });
}

#[inline(never)]
fn accepted(cfg: &ProbeConfig, sk: u64) {
    let Some(key) = flow_key(cfg, sk, protocol::TCP, direction::INCOMING, 0) else { return };
    remember(sk, &SocketInfo { key, open_pending: 1, ..SocketInfo::default() });
}

#[inline(never)]
fn count_failure(cfg: &ProbeConfig, sk: u64, dir: u8) -> Option<()> {
    let key = flow_key(cfg, sk, protocol::TCP, dir, owner_of(sk))?;
    if let Some(info) = SOCKETS.get_ptr_mut(sk) {
        // SAFETY: `info` points into a live map value. Its SYN retransmits belong to
        // this failed attempt's flow.
        unsafe { (*info).key = key };
        count_new_retransmits(cfg, sk, info);
    }
    let cause = failure_cause(cfg, sk);
    // SAFETY: `s` points into a live map value; `cause` < failure::COUNT.
    count(&key, |s| unsafe { &raw mut (*s).failed[cause] });
    Some(())
}

fn failure_cause(cfg: &ProbeConfig, sk: u64) -> usize {
    match read::<i32>(sk, cfg.sock_err) {
        Some(ECONNREFUSED) => failure::REFUSED,
        Some(ETIMEDOUT) => failure::TIMEOUT,
        Some(ECONNRESET) => failure::RESET,
        _ => failure::OTHER,
    }
}

fn owner_of(sk: u64) -> u32 {
    // SAFETY: `info` points into a live map value.
    SOCKETS.get_ptr(sk).map_or(0, |info| unsafe { (*info).key.pid })
}

fn remember(sk: u64, info: &SocketInfo) {
    if SOCKETS.insert(sk, info, 0).is_err() {
        count_lost(lost::SOCKET_TABLE_FULL);
    }
}

fn forget(sk: u64) {
    let _ = SOCKETS.remove(sk);
}

/// A process-context transition: the current process owns the socket from now on.
/// The previous owner's bytes of this interval move to its flow now, so a socket has
/// at most one per-socket entry (its owner's), which `close` folds: an entry left
/// under another pid would hand its old flow to whatever socket reuses the address.
pub fn claim(sk: u64, pid: u32) {
    let Some(info) = SOCKETS.get_ptr_mut(sk) else { return };
    // SAFETY: `info` points into a live map value.
    let previous = unsafe { (*info).key.pid };
    if previous != pid {
        fold_previous_owner(sk, previous);
    }
    // SAFETY: as above.
    unsafe {
        (*info).key.pid = pid;
        if (*info).open_pending == 1 {
            (*info).open_pending = 0;
            let key = (*info).key;
            count(&key, |s| &raw mut (*s).opened);
        }
    }
}

/// Its own frame: it runs beside `adopt_socket` under `new_tcp_entry`, never inside it.
#[inline(never)]
fn fold_previous_owner(sk: u64, pid: u32) {
    fold_socket_bytes(&SocketKey { sk, pid, _pad: 0 });
}

#[inline(never)]
fn close(cfg: &ProbeConfig, sk: u64) {
    let (key, open_pending, http_verdict) = match SOCKETS.get_ptr_mut(sk) {
        Some(info) => {
            count_new_retransmits(cfg, sk, info);
            // SAFETY: `info` points into a live map value.
            unsafe { ((*info).key, (*info).open_pending, (*info).http) }
        }
        // A connection that predates the agent: name it from the socket itself.
        None => match flow_key(cfg, sk, protocol::TCP, direction_from_locks(cfg, sk), 0) {
            Some(key) => (key, 0, verdict::ALWAYS),
            None => return,
        },
    };
    fold_socket_bytes(&SocketKey { sk, pid: key.pid, _pad: 0 });
    if open_pending == 1 {
        count(&key, |s: *mut FlowStats| unsafe { &raw mut (*s).opened });
    }
    count(&key, |s| unsafe { &raw mut (*s).closed });
    forget(sk);
    if cfg.http_capture_bytes != 0 {
        http::connection_closed(sk, key.pid, http_verdict);
    }
}
