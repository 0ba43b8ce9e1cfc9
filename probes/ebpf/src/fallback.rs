//! Byte counters for kernels older than 6.3, which lack `sock:sock_send_length` and
//! `sock:sock_recv_length`: the socket layer's own functions, counting what they
//! really moved (a send's return value, a receive's copied length), never what was
//! asked for. Two variants, chosen by user space: fentry/fexit where the kernel offers
//! them (BTF trampolines, cheaper than a kprobe's trap), kprobes and kretprobes where
//! it does not. Sends are read at return; before 6.5 sendfile and splice bypass
//! `tcp_sendmsg` for `tcp_sendpage`, which is hooked the same way.
//! <https://elixir.bootlin.com/linux/v6.1/source/net/ipv4/tcp.c#L1034> (tcp_sendpage)
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use flowtel_probes_abi::protocol;

use crate::{
    config::config,
    datagram, http,
    maps::{RECEIVING, SENDING},
    traffic::account,
};

// fexit: the traced function's arguments, then its return value as one more argument
// (readable this way since 5.5; `bpf_get_func_ret` needs 5.17).

#[fexit(function = "tcp_sendmsg")]
pub fn flow_send_tcp_fexit(ctx: FExitContext) -> i32 {
    // int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
    let _ = sent(ctx.arg(0), protocol::TCP, ctx.arg::<u64>(3) as i32);
    0
}

#[fexit(function = "tcp_sendpage")]
pub fn flow_sendpage_fexit(ctx: FExitContext) -> i32 {
    // int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)
    let _ = sent(ctx.arg(0), protocol::TCP, ctx.arg::<u64>(5) as i32);
    0
}

#[fexit(function = "udp_sendmsg")]
pub fn flow_send_udp_fexit(ctx: FExitContext) -> i32 {
    // int udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)
    let _ = sent(ctx.arg(0), protocol::UDP, ctx.arg::<u64>(3) as i32);
    0
}

#[fentry(function = "tcp_recvmsg")]
pub fn flow_recv_start_fentry(_ctx: FEntryContext) -> i32 {
    start_receiving();
    0
}

#[fentry(function = "tcp_cleanup_rbuf")]
pub fn flow_recv_tcp_fentry(ctx: FEntryContext) -> i32 {
    // void tcp_cleanup_rbuf(struct sock *sk, int copied): what recvmsg copied out so far.
    let _ = received(ctx.arg(0), protocol::TCP, newly_copied(ctx.arg::<u64>(1) as i32));
    0
}

#[fentry(function = "skb_consume_udp")]
pub fn flow_recv_udp_fentry(ctx: FEntryContext) -> i32 {
    // void skb_consume_udp(struct sock *sk, struct sk_buff *skb, int len): the copied length.
    let _ = received(ctx.arg(0), protocol::UDP, ctx.arg::<u64>(2) as i32);
    0
}

// kprobes: the entry notes the socket per thread, the return probe takes the result.

#[kprobe]
pub fn flow_send_tcp_kprobe(ctx: ProbeContext) -> u32 {
    note_sending(&ctx);
    0
}

#[kretprobe]
pub fn flow_send_tcp_return(ctx: RetProbeContext) -> u32 {
    let _ = take_sending().and_then(|sk| sent(sk, protocol::TCP, ctx.ret::<i32>()));
    0
}

#[kprobe]
pub fn flow_sendpage_kprobe(ctx: ProbeContext) -> u32 {
    note_sending(&ctx);
    0
}

#[kretprobe]
pub fn flow_sendpage_return(ctx: RetProbeContext) -> u32 {
    let _ = take_sending().and_then(|sk| sent(sk, protocol::TCP, ctx.ret::<i32>()));
    0
}

#[kprobe]
pub fn flow_send_udp_kprobe(ctx: ProbeContext) -> u32 {
    note_sending(&ctx);
    0
}

#[kretprobe]
pub fn flow_send_udp_return(ctx: RetProbeContext) -> u32 {
    let _ = take_sending().and_then(|sk| sent(sk, protocol::UDP, ctx.ret::<i32>()));
    0
}

#[kprobe]
pub fn flow_recv_start_kprobe(_ctx: ProbeContext) -> u32 {
    start_receiving();
    0
}

#[kprobe]
pub fn flow_recv_tcp_kprobe(ctx: ProbeContext) -> u32 {
    let _ = ctx.arg::<u64>(0).zip(ctx.arg::<i32>(1)).and_then(|(sk, n)| received(sk, protocol::TCP, newly_copied(n)));
    0
}

#[kprobe]
pub fn flow_recv_udp_kprobe(ctx: ProbeContext) -> u32 {
    let _ = ctx.arg::<u64>(0).zip(ctx.arg::<i32>(2)).and_then(|(sk, n)| received(sk, protocol::UDP, n));
    0
}

fn thread() -> u64 {
    bpf_get_current_pid_tgid()
}

/// The send functions do not nest within one thread, so one slot per thread holds the
/// socket between entry and return.
#[inline(always)]
fn note_sending(ctx: &ProbeContext) {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = SENDING.insert(thread(), sk, 0);
    }
}

/// A `tcp_recvmsg` begins on this thread: nothing of it copied yet.
#[inline(always)]
fn start_receiving() {
    let _ = RECEIVING.insert(thread(), 0u32, 0);
}

/// `tcp_cleanup_rbuf` is told the bytes this `tcp_recvmsg` copied so far: it runs
/// each time the call waits for more data and again at its end, so only the growth
/// since its last run on this thread is new.
/// <https://elixir.bootlin.com/linux/v6.1/source/net/ipv4/tcp.c#L2517>
#[inline(always)]
fn newly_copied(copied: i32) -> i32 {
    let tid = thread();
    // SAFETY: read-only copy of a map value.
    let before = unsafe { RECEIVING.get(tid) }.copied().unwrap_or(0);
    let now = u32::try_from(copied).unwrap_or(0);
    if now <= before {
        return 0;
    }
    let _ = RECEIVING.insert(tid, now, 0);
    (now - before) as i32
}

#[inline(always)]
fn take_sending() -> Option<u64> {
    let tid = thread();
    // SAFETY: read-only copy of a map value.
    let sk = unsafe { SENDING.get(tid) }.copied();
    let _ = SENDING.remove(tid);
    sk
}

#[inline(always)]
fn sent(sk: u64, proto: u8, ret: i32) -> Option<()> {
    if ret <= 0 && proto == protocol::UDP {
        datagram::forget_peer();
    }
    moved(sk, proto, ret, true)
}

#[inline(always)]
fn received(sk: u64, proto: u8, copied: i32) -> Option<()> {
    moved(sk, proto, copied, false)
}

/// Counts the bytes; a TCP socket's entry then goes to the HTTP side as on the raw
/// tracepoints (traffic.rs): the user buffer is still the syscall's, in the
/// registers, whichever function inside the syscall we are in.
#[inline(always)]
fn moved(sk: u64, proto: u8, n: i32, sent: bool) -> Option<()> {
    (n > 0).then_some(())?;
    let cfg = config();
    let entry = account(cfg, sk, || Some(proto.into()), n as u64, sent)?;
    if cfg.http_wanted() {
        http::socket_call(cfg, sk, entry, n as u32, sent);
    }
    Some(())
}
