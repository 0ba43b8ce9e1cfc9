//! OpenSSL's plaintext through uprobes, as few traps per request as the calls allow.
//!
//! Writes: only the entry of `SSL_write`/`SSL_write_ex` is probed, one trap per call:
//! the buffer and its length are arguments. The plaintext goes out at the entry when
//! the `SSL *`'s socket is known (every response of a server, every later request of a
//! client); otherwise the call waits per thread and goes out at its own ciphertext's
//! send, which names the socket.
//!
//! Reads: the plaintext exists only once `SSL_read`/`SSL_read_ex` returns, so reads keep
//! an entry probe (the call's `SSL *` and buffer, per thread) and a return probe (what
//! the call moved): a plain uprobe just before the `ret` where the code allows, else
//! the shared uretprobe.
//!
//! Each probe sits where user space found it cheapest (tls_points.rs there): on an
//! instruction the kernel emulates rather than single-steps, the entry inside the
//! function's first instructions while the arguments are still in their registers. The socket a call used is learnt while it runs: its
//! ciphertext passes the socket hooks (http.rs) on the same thread, which tie the
//! `SSL *` to the `struct sock *` for the addresses.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use flowtel_probes_abi::{TlsCall, http, lost, tls::PENDING_WRITE_NS};

use crate::{
    config::config,
    flow_table::add,
    http::{Source, emit, starts_like_http},
    maps::{SOCKETS, SSL_SOCKETS, TLS_CALLS, TLS_IN_FLIGHT, count_lost},
};

#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    // `int num`: the upper half of the register is not the caller's.
    let _ = write_entry(&ctx, ctx.arg::<u64>(2).map(|n| n as i32 as i64));
    0
}

#[uprobe]
pub fn tls_write_ex(ctx: ProbeContext) -> u32 {
    let _ = write_entry(&ctx, ctx.arg::<u64>(2).map(|n| n.min(i32::MAX as u64) as i64));
    0
}

#[uprobe]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    read_entry(&ctx, false);
    0
}

#[uprobe]
pub fn tls_read_ex(ctx: ProbeContext) -> u32 {
    read_entry(&ctx, true);
    0
}

/// The return of both read functions: the recorded call says which it was.
#[uretprobe]
pub fn tls_return(ctx: RetProbeContext) -> u32 {
    let _ = try_return(ctx.ret::<i64>());
    0
}

/// The same, as a plain uprobe on an instruction just before a read's `ret` where the
/// return value is already in place (user space finds it: exporter/src/probes/
/// tls_points.rs): no uretprobe breakpoint on the function's first instruction.
#[uprobe]
pub fn tls_read_done(ctx: ProbeContext) -> u32 {
    let _ = try_return(RetProbeContext::new(ctx.regs.cast()).ret::<i64>());
    0
}

fn write_entry(ctx: &ProbeContext, len: Option<i64>) -> Option<()> {
    let (ssl, buffer) = (ctx.arg::<u64>(0)?, ctx.arg::<u64>(1)?);
    let len = len.filter(|&n| n > 0)? as u32;
    // Decided before anything else: a body's continuation costs one user read.
    if !starts_like_http(buffer, len) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(sk) = socket_of(ssl, pid_tgid) {
        emit(&config(), write_source(sk, pid_tgid, buffer, len));
        return Some(());
    }
    // SAFETY: no preconditions.
    let started_ns = unsafe { bpf_ktime_get_ns() };
    let call = TlsCall { ssl, buffer, started_ns, len, direction: http::SEND, pending_write: 1, ..TlsCall::default() };
    begin_call(pid_tgid, &call);
    Some(())
}

fn write_source(sk: u64, pid_tgid: u64, buffer: u64, len: u32) -> Source {
    Source {
        connection: sk,
        entry: core::ptr::null(),
        sk,
        pid_tgid,
        buffer,
        len,
        available: len,
        direction: http::SEND,
        tls: 1,
    }
}

/// The socket tied to `ssl`, if this process still owns it. A freed `SSL *` whose
/// address a new connection (or another process) reuses keeps its old tie until the
/// new one's first socket I/O: an old socket is closed (gone from SOCKETS) or owned by
/// the other process, and then the write waits for its own send instead.
fn socket_of(ssl: u64, pid_tgid: u64) -> Option<u64> {
    // SAFETY: copies of map values.
    let sk = unsafe { SSL_SOCKETS.get(ssl) }.copied()?;
    let owner = unsafe { SOCKETS.get(sk) }?.key.pid;
    (owner == (pid_tgid >> 32) as u32).then_some(sk)
}

fn read_entry(ctx: &ProbeContext, ex: bool) {
    let (Some(ssl), Some(buffer)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return };
    let len_out = if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    begin_call(
        bpf_get_current_pid_tgid(),
        &TlsCall { ssl, buffer, len_out, direction: http::RECV, ..TlsCall::default() },
    );
}

/// Records this thread's call. One that replaces an earlier one (a write that never
/// reached its socket) is not counted in flight twice.
fn begin_call(pid_tgid: u64, call: &TlsCall) {
    // LRU: an entry pushed out (or, rarely, one that could not go in) is counted when
    // its read returns.
    if TLS_CALLS.insert(pid_tgid, call, u64::from(BPF_NOEXIST)).is_ok() {
        adjust_in_flight(1);
    } else {
        let _ = TLS_CALLS.insert(pid_tgid, call, 0);
    }
}

/// Ends this thread's call.
fn end_call(pid_tgid: u64) {
    if TLS_CALLS.remove(pid_tgid).is_ok() {
        adjust_in_flight(-1);
    }
}

/// Counts OpenSSL calls in flight on the whole host, so that the socket hooks look up
/// the per-thread table only while there is something to find (most sends and receives
/// happen with no OpenSSL call anywhere in progress).
fn adjust_in_flight(delta: i64) {
    if let Some(counter) = TLS_IN_FLIGHT.get_ptr_mut(0) {
        add(counter.cast(), delta as u64);
    }
}

fn try_return(ret: i64) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a copy of the map value is taken before the entry is removed.
    let Some(&call) = (unsafe { TLS_CALLS.get(pid_tgid) }) else {
        count_lost(lost::TLS_TABLE_FULL);
        return None;
    };
    end_call(pid_tgid);
    let ret = ret as i32;
    let moved = if call.len_out != 0 {
        // SAFETY: bpf_probe_read_user validates the address.
        if ret != 1 { return None } else { unsafe { bpf_probe_read_user(call.len_out as *const u64) }.ok()? as u32 }
    } else if ret > 0 {
        ret as u32
    } else {
        return None;
    };
    let cfg = config();
    // SAFETY: a copy of the map value.
    let sk = unsafe { SSL_SOCKETS.get(call.ssl) }.copied().unwrap_or(0);
    let connection = if sk != 0 { sk } else { call.ssl };
    // Judged there, after the copy: one user read for a message start.
    emit(
        &cfg,
        Source {
            connection,
            entry: core::ptr::null(),
            sk,
            pid_tgid,
            buffer: call.buffer,
            len: moved,
            available: moved,
            direction: call.direction,
            tls: 1,
        },
    );
    Some(())
}

/// Called by the socket hooks for every send and receive while TLS probes are on:
/// inside an OpenSSL call, ties its `SSL *` to this socket and says so. A pending
/// write goes out at its first send.
#[inline(always)]
pub fn note_socket(pid_tgid: u64, sk: u64, sent: bool) -> bool {
    if TLS_IN_FLIGHT.get(0).is_none_or(|n| *n <= 0) {
        return false;
    }
    // SAFETY: a copy of the map value.
    let Some(call) = (unsafe { TLS_CALLS.get(pid_tgid) }).copied() else { return false };
    if call.pending_write == 1 {
        // SAFETY: no preconditions.
        if unsafe { bpf_ktime_get_ns() }.wrapping_sub(call.started_ns) > PENDING_WRITE_NS {
            end_call(pid_tgid);
            return false;
        }
    }
    // SAFETY: as above.
    if unsafe { SSL_SOCKETS.get(call.ssl) }.copied() != Some(sk) {
        let _ = SSL_SOCKETS.insert(call.ssl, sk, 0);
    }
    if call.pending_write == 1 && sent {
        end_call(pid_tgid);
        send_pending_write(sk, pid_tgid, &call);
    }
    true
}

/// In its own stack frame, beside the clear-text path's: the callers' chains stay
/// within the 512-byte stack of kernels before 6.13.
#[inline(never)]
fn send_pending_write(sk: u64, pid_tgid: u64, call: &TlsCall) {
    let _ = emit(&config(), write_source(sk, pid_tgid, call.buffer, call.len));
}
