//! OpenSSL's plaintext: uprobes on `SSL_write`, `SSL_read` and their `_ex` forms record
//! the call (its `SSL *` and buffer) per thread; the shared uretprobe reads what the call
//! moved and hands it to the HTTP path. The socket a call used is learnt while it runs:
//! its ciphertext passes the socket hooks (http.rs) on the same thread, which tie the
//! `SSL *` to the `struct sock *` for the addresses.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use flowtel_probes_abi::{TlsCall, http, lost};

use crate::{
    config::config,
    flow_table::add,
    http::{Source, emit, starts_like_http},
    maps::{SSL_SOCKETS, TLS_CALLS, TLS_IN_FLIGHT, count_lost},
};

#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, http::SEND, false);
    0
}

#[uprobe]
pub fn tls_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, http::SEND, true);
    0
}

#[uprobe]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, http::RECV, false);
    0
}

#[uprobe]
pub fn tls_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, http::RECV, true);
    0
}

/// One for all four functions: the recorded call says which it was.
#[uretprobe]
pub fn tls_return(ctx: RetProbeContext) -> u32 {
    let _ = try_return(&ctx);
    0
}

fn enter(ctx: &ProbeContext, direction: u8, ex: bool) {
    let (Some(ssl), Some(buffer)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return };
    let len_out = if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    let call = TlsCall { ssl, buffer, len_out, direction, _pad: [0; 7] };
    // LRU: an entry pushed out (or, rarely, one that could not go in) is counted when
    // its call returns.
    if TLS_CALLS.insert(bpf_get_current_pid_tgid(), call, 0).is_err() {
        return;
    }
    adjust_in_flight(1);
}

/// Counts OpenSSL calls in flight on the whole host, so that the socket hooks look up
/// the per-thread table only while there is something to find (most sends and receives
/// happen with no OpenSSL call anywhere in progress).
fn adjust_in_flight(delta: i64) {
    if let Some(counter) = TLS_IN_FLIGHT.get_ptr_mut(0) {
        add(counter.cast(), delta as u64);
    }
}

fn try_return(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a copy of the map value is taken before the entry is removed.
    let Some(&call) = (unsafe { TLS_CALLS.get(pid_tgid) }) else {
        count_lost(lost::TLS_TABLE_FULL);
        return None;
    };
    let _ = TLS_CALLS.remove(pid_tgid);
    adjust_in_flight(-1);
    let ret = ctx.ret::<i64>() as i32;
    let moved = if call.len_out != 0 {
        // SAFETY: bpf_probe_read_user validates the address.
        if ret != 1 { return None } else { unsafe { bpf_probe_read_user(call.len_out as *const u64) }.ok()? as u32 }
    } else if ret > 0 {
        ret as u32
    } else {
        return None;
    };
    if moved == 0 || !starts_like_http(call.buffer, moved) {
        return None;
    }
    let cfg = config();
    // SAFETY: a copy of the map value.
    let sk = unsafe { SSL_SOCKETS.get(call.ssl) }.copied().unwrap_or(0);
    let connection = if sk != 0 { sk } else { call.ssl };
    emit(
        &cfg,
        Source {
            connection,
            sk,
            pid_tgid,
            buffer: call.buffer,
            len: moved,
            available: moved,
            direction: call.direction,
            tls: 1,
        },
    )
}

/// Called by the socket hooks for every send and receive while TLS probes are on:
/// inside an OpenSSL call, ties its `SSL *` to this socket and says so.
#[inline(always)]
pub fn note_socket(pid_tgid: u64, sk: u64) -> bool {
    if TLS_IN_FLIGHT.get(0).is_none_or(|n| *n <= 0) {
        return false;
    }
    // SAFETY: a copy of the map value.
    let Some(call) = (unsafe { TLS_CALLS.get(pid_tgid) }).copied() else { return false };
    // SAFETY: as above.
    if unsafe { SSL_SOCKETS.get(call.ssl) }.copied() != Some(sk) {
        let _ = SSL_SOCKETS.insert(call.ssl, sk, 0);
    }
    true
}
