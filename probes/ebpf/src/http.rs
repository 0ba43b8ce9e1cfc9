//! Clear-text HTTP/1.x: the first bytes of each send and receive on a TCP socket that
//! starts like an HTTP request or response, for user space to pair into exchanges.
//!
//! Called from the byte counters on the `sock_send_length`/`sock_recv_length` raw
//! tracepoints (traffic.rs): they fire only for sockets (file I/O never reaches them)
//! and after the data is in the user buffer, for sends and receives alike. Their
//! arguments carry no buffer, so the probe reads it from the syscall's saved registers
//! (`bpf_task_pt_regs`): the second argument of read/write/sendto/recvfrom, or the first
//! `iovec` of readv/writev/sendmsg/recvmsg. Sends from elsewhere (sendfile, io_uring,
//! the kernel itself) have no such buffer and are skipped.
//!
//! Cost: a connection's first payload decides whether it carries HTTP (its verdict rides
//! in the per-socket entry the byte counter already looked up). For a connection that
//! does not, each later send or receive costs one byte read; for one that does, the
//! register reads and one 8-byte user read, plus the copy when a message starts.
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user, bpf_task_pt_regs,
    generated::bpf_probe_read_user as read_user_raw,
};
use flowtel_probes_abi::{HttpChunk, ProbeConfig, SocketTraffic, direction, http, http::verdict, lost, protocol};

use crate::{
    config::config,
    maps::{HTTP_CHUNKS, HTTP_READER, HTTP_SCRATCH, HttpScratch, SOCKETS, count_lost, wakeup_flag},
    socket::{read, socket_ends},
    tls,
};

const ECONNRESET: i32 = 104;

/// A TCP send or receive of `moved` bytes, called by the byte counter (traffic.rs) with
/// the socket's per-socket entry.
#[inline(always)]
pub fn socket_call(cfg: &ProbeConfig, sk: u64, entry: *mut SocketTraffic, moved: u32, sent: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if cfg.tls_enabled != 0 && tls::note_socket(pid_tgid, sk, sent) {
        // Ciphertext inside an OpenSSL call: its probes report the plaintext.
        return;
    }
    // SAFETY: `entry` points into a live map value.
    let known = unsafe { (*entry).http };
    if cfg.http_capture_bytes == 0 || known == verdict::OTHER {
        return;
    }
    let _ = sniff_and_capture(sk, entry, moved, sent);
}

/// In its own stack frame (BPF functions take at most five arguments, so it fetches
/// the rest itself): the common path above stays small. The payload is copied before it
/// is judged: a message start (the common case on an HTTP connection) then costs one
/// user read, not a sniff and a copy.
#[inline(never)]
fn sniff_and_capture(sk: u64, entry: *mut SocketTraffic, moved: u32, sent: bool) -> Option<()> {
    let cfg = config();
    // SAFETY: `entry` points into a live map value.
    let known = unsafe { (*entry).http };
    let (buffer, available) = user_buffer(cfg, moved)?;
    let direction = if sent { http::SEND } else { http::RECV };
    let source = Source {
        connection: sk,
        entry,
        sk,
        pid_tgid: bpf_get_current_pid_tgid(),
        buffer,
        len: moved,
        available,
        direction,
        tls: 0,
    };
    let judged = emit(cfg, source);
    if known == verdict::UNKNOWN {
        match judged {
            Judged::Http => decide(sk, entry, verdict::HTTP),
            Judged::NotHttp => decide(sk, entry, verdict::OTHER),
            // Not read (counted): the next payload decides.
            Judged::Unread => {}
        }
    }
    Some(())
}

/// A connection's first payload decided whether it carries HTTP: kept for the rest of
/// this interval (the per-socket entry) and for the socket's life (its socket entry).
fn decide(sk: u64, entry: *mut SocketTraffic, verdict: u8) {
    // SAFETY: both point into live map values; a racing writer would write the same.
    unsafe {
        (*entry).http = verdict;
        if let Some(info) = SOCKETS.get_ptr_mut(sk) {
            (*info).http = verdict;
        }
    }
}

/// A receive that returned end of stream (0) or a reset ended the connection as its
/// reader saw it: an event with no payload, which ends any exchange left open. One per
/// connection at most, so cheap whatever the traffic.
#[inline(never)]
pub fn connection_end(cfg: &ProbeConfig, sk: u64, ret: i32) {
    if (ret != 0 && ret != -ECONNRESET) || read::<u8>(sk, cfg.sock_protocol) != Some(protocol::TCP) {
        return;
    }
    send_end(sk, (bpf_get_current_pid_tgid() >> 32) as u32);
}

/// The end of connection `sk` of process `pid`: a chunk without payload. Inlined into
/// both callers, so no frame is added to their call chains' 512-byte stack.
#[inline(always)]
fn send_end(sk: u64, pid: u32) {
    let chunk = HttpChunk {
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        connection: sk,
        pid,
        direction: http::RECV,
        ..HttpChunk::default()
    };
    if HTTP_CHUNKS.output::<HttpChunk>(&chunk, wakeup_flag(&HTTP_CHUNKS)).is_err() {
        count_lost(lost::HTTP_RING_FULL);
    }
}

/// A TCP socket was torn down (`TCP_CLOSE`, state.rs) while it could carry HTTP: it
/// did, or its payload was never judged (TLS ciphertext, a connection older than the
/// agent). An end for user space, sent before the kernel can hand the socket's address
/// to a new connection, so a request the connection left unanswered ends here instead
/// of pairing with the next connection's response. Softirq or process context alike:
/// `pid` is the socket's owner as the flow probes know it.
#[inline(never)]
pub fn connection_closed(sk: u64, pid: u32, verdict: u8) {
    if verdict == verdict::OTHER || HTTP_READER.get(0) != Some(&1) {
        return;
    }
    send_end(sk, pid);
}

/// The user buffer of the send or receive in progress, and how many of its bytes are
/// the call's (the first `iovec` may hold fewer than the call moved).
#[inline(always)]
fn user_buffer(cfg: &ProbeConfig, moved: u32) -> Option<(u64, u32)> {
    // A read-only constant to the verifier: on a kernel without the helpers below the
    // branch is known and their calls are never checked, so the program still loads.
    if cfg.task_regs == 0 {
        return None;
    }
    // SAFETY: both helpers are valid in tracing programs. The helper's result is a
    // typed (BTF) pointer and the offsets are constants to the verifier (read-only
    // config) that it checks against `struct pt_regs`: plain loads, which it turns
    // into fault-safe ones, where `bpf_probe_read_kernel` cost a helper call each.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    let register = |offset: u16| unsafe { regs.add(usize::from(offset)).cast::<u64>().read() };
    // All 64 bits compared: outside a syscall the number is -1, never a table entry.
    let nr = register(cfg.regs_syscall_nr);
    let arg1 = register(cfg.regs_arg1);
    let is = |index: usize| u64::from(cfg.syscalls[index]) == nr;
    use http::syscall::{READ, READV, RECVFROM, RECVMSG, SENDMSG, SENDTO, WRITE, WRITEV};
    if is(READ) || is(WRITE) || is(SENDTO) || is(RECVFROM) {
        return Some((arg1, moved));
    }
    let iovec = if is(READV) || is(WRITEV) {
        arg1
    } else if is(SENDMSG) || is(RECVMSG) {
        // struct user_msghdr: msg_name, msg_namelen (padded to 8), msg_iov.
        user::<u64>(arg1 + 16)?
    } else {
        return None;
    };
    let [base, len] = user::<[u64; 2]>(iovec)?;
    Some((base, moved.min(len as u32)))
}

#[inline(always)]
fn user<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user validates the address; a fault returns Err.
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}

/// A request line's method followed by a space, or a status line's "HTTP/1.", in the
/// first eight bytes at `buffer`: one user read. For an OpenSSL write, which must be
/// judged before it waits for its socket.
#[inline(always)]
pub fn starts_like_http(buffer: u64, available: u32) -> bool {
    if available < 8 {
        return false;
    }
    let Some(head) = user::<[u8; 8]>(buffer) else {
        // Not readable here (an OpenSSL write's page not yet touched: a probe cannot
        // fault it in): whether it was HTTP is unknown, and it is counted.
        count_lost(lost::HTTP_READ);
        return false;
    };
    is_message_start(&head)
}

#[inline(always)]
fn is_message_start(head: &[u8; 8]) -> bool {
    matches!(
        head,
        [b'G', b'E', b'T', b' ', ..]
            | [b'P', b'U', b'T', b' ', ..]
            | [b'P', b'O', b'S', b'T', b' ', ..]
            | [b'H', b'E', b'A', b'D', b' ', ..]
            | [b'P', b'A', b'T', b'C', b'H', b' ', ..]
            | [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..]
            | [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' ']
            | [b'T', b'R', b'A', b'C', b'E', b' ', ..]
            | [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _]
    )
}

/// One payload to hand to user space.
pub struct Source {
    pub connection: u64,
    /// The per-socket entry the byte counter looked up, for the addresses and ports
    /// without reading the socket; null when not at hand (TLS), then `sk` is read.
    pub entry: *const SocketTraffic,
    /// The socket; 0 when unknown (TLS before its socket was seen): ends left zero.
    pub sk: u64,
    pub pid_tgid: u64,
    pub buffer: u64,
    pub len: u32,
    /// Bytes readable at `buffer` that belong to this call.
    pub available: u32,
    pub direction: u8,
    pub tls: u8,
}

/// What [`emit`] found the payload to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// A message start: handed to the ring buffer (or counted lost when it was full).
    Http,
    /// Anything else: nothing sent.
    NotHttp,
    /// Not read (no free scratch slot, or the user read failed): counted.
    Unread,
}

/// Copies the payload's first bytes into a scratch event of this CPU (too big for the
/// stack) and, when they start an HTTP message, the header beside them, and hands both to
/// the ring buffer.
#[inline(always)]
pub fn emit(cfg: &ProbeConfig, source: Source) -> Judged {
    if source.available < 8 {
        return Judged::NotHttp;
    }
    let Some(scratch) = free_scratch() else {
        count_lost(lost::HTTP_SCRATCH_BUSY);
        return Judged::Unread;
    };
    let judged = emit_from_scratch(cfg, scratch, &source);
    // SAFETY: this CPU's slot, taken above.
    unsafe { (*scratch).busy = 0 };
    judged
}

/// A scratch slot of this CPU that no program is using, marked taken. Two: a program
/// runs with migration off but, on a preemptible kernel, can be preempted in the middle
/// of its copy by a task whose program then needs a slot too (seen on the newest
/// guest: one request's response lost as `scratch_busy`).
#[inline(always)]
fn free_scratch() -> Option<*mut HttpScratch> {
    let take = |slot: u32| -> Option<*mut HttpScratch> {
        let scratch = HTTP_SCRATCH.get_ptr_mut(slot)?;
        // SAFETY: this CPU's slot; only programs on this CPU touch it.
        unsafe {
            if (*scratch).busy != 0 {
                return None;
            }
            (*scratch).busy = 1;
        }
        Some(scratch)
    };
    take(0).or_else(|| take(1))
}

#[inline(always)]
fn emit_from_scratch(cfg: &ProbeConfig, scratch: *mut HttpScratch, source: &Source) -> Judged {
    // At least the eight bytes the judgement reads (`available` >= 8).
    let want = source.available.min(u32::from(cfg.http_capture_bytes)).max(8);
    // `(n - 1) & mask + 1` keeps the length in [1, CAPTURE_MAX] in a form the verifier
    // can bound; the `min` before it makes it the true one.
    let len = ((want.min(http::CAPTURE_MAX as u32) - 1) & (http::CAPTURE_MAX as u32 - 1)) + 1;
    // SAFETY: the scratch slot is this CPU's alone while the program runs; the helper
    // writes at most `len` <= CAPTURE_MAX bytes into a CAPTURE_MAX buffer, and the head
    // read after it lies within the `len` >= 8 bytes it wrote.
    let head = unsafe {
        if read_user_raw((*scratch).payload.as_mut_ptr().cast(), len, source.buffer as *const _) != 0 {
            count_lost(lost::HTTP_READ);
            return Judged::Unread;
        }
        (*scratch).payload.as_ptr().cast::<[u8; 8]>().read()
    };
    if !is_message_start(&head) {
        return Judged::NotHttp;
    }
    // SAFETY: as above.
    unsafe { fill_header(cfg, &mut (*scratch).header, source, len) };
    let size = size_of::<HttpChunk>() + len as usize;
    // SAFETY: `size` is within the scratch event, which is plain bytes.
    let bytes = unsafe { core::slice::from_raw_parts(scratch.cast::<u8>(), size) };
    if HTTP_CHUNKS.output::<[u8]>(bytes, wakeup_flag(&HTTP_CHUNKS)).is_err() {
        count_lost(lost::HTTP_RING_FULL);
    }
    // The process's name and cgroup were recorded with its flow (a short-lived curl
    // is still named after it exits).
    Judged::Http
}

/// Every field written one by one: a struct literal with defaults costs the program a
/// byte-by-byte `memset` call (BPF has no wider one).
#[inline(always)]
fn fill_header(cfg: &ProbeConfig, chunk: &mut HttpChunk, source: &Source, captured_len: u32) {
    // SAFETY: no preconditions.
    chunk.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    chunk.connection = source.connection;
    chunk.pid = (source.pid_tgid >> 32) as u32;
    chunk.len = source.len;
    chunk.captured_len = captured_len;
    chunk.direction = source.direction;
    chunk.tls = source.tls;
    // `_pad` is left as the zeroed map made it: nothing writes it.
    if !source.entry.is_null() {
        // SAFETY: `entry` points into a live map value (8-byte aligned, as are the
        // addresses in both structs: abi asserts).
        let entry = unsafe { &*source.entry };
        let flow = &entry.flow;
        copy_address(&mut chunk.local_addr, &flow.local_addr);
        copy_address(&mut chunk.peer_addr, &flow.peer_addr);
        chunk.family = flow.family;
        (chunk.local_port, chunk.peer_port) = if flow.direction == direction::INCOMING {
            (flow.local_port, entry.ephemeral_port)
        } else {
            (entry.ephemeral_port, flow.peer_port)
        };
    } else if source.sk != 0
        && let Some(ends) = socket_ends(cfg, source.sk)
    {
        (chunk.family, chunk.local_addr, chunk.peer_addr) = (ends.family, ends.local_addr, ends.peer_addr);
        (chunk.local_port, chunk.peer_port) = (ends.local_port, ends.peer_port);
    } else {
        clear_ends(chunk);
    }
}

#[inline(always)]
fn clear_ends(chunk: &mut HttpChunk) {
    for address in [&mut chunk.local_addr, &mut chunk.peer_addr] {
        let words = address.as_mut_ptr().cast::<u64>();
        // SAFETY: as in `copy_address`.
        unsafe {
            words.write(0);
            words.add(1).write(0);
        }
    }
    (chunk.family, chunk.local_port, chunk.peer_port) = (0, 0, 0);
}

/// Two 8-byte moves where a plain assignment of a byte array would be sixteen.
#[inline(always)]
fn copy_address(to: &mut [u8; 16], from: &[u8; 16]) {
    let (to, from) = (to.as_mut_ptr().cast::<u64>(), from.as_ptr().cast::<u64>());
    // SAFETY: both arrays sit at 8-byte-aligned offsets of 8-byte-aligned map values
    // (abi asserts the offsets for `HttpChunk` and `SocketTraffic`).
    unsafe {
        to.write(from.read());
        to.add(1).write(from.add(1).read());
    }
}
