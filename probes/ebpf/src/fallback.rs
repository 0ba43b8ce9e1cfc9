//! kprobe fallback for kernels older than 6.3, which lack `sock:sock_send_length` and
//! `sock:sock_recv_length`. The classic hooks (as tcptop uses): bytes handed to
//! tcp_sendmsg/udp_sendmsg, bytes copied out in tcp_cleanup_rbuf/skb_consume_udp.
//! User space attaches these only when the tracepoints are missing and kprobes exist;
//! where neither holds (this project's CI kernel has no kprobes) they are still loaded,
//! so the verifier checks them.
use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use flowtel_probes_abi::protocol;

use crate::{config::config, traffic::account};

#[kprobe]
pub fn flow_send_tcp_kprobe(ctx: ProbeContext) -> u32 {
    // tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
    let _ = length_arg(&ctx, 2).and_then(|n| with_sk(&ctx, protocol::TCP, n, true));
    0
}

#[kprobe]
pub fn flow_recv_tcp_kprobe(ctx: ProbeContext) -> u32 {
    // tcp_cleanup_rbuf(struct sock *sk, int copied)
    let _ = int_length_arg(&ctx, 1).and_then(|n| with_sk(&ctx, protocol::TCP, n, false));
    0
}

#[kprobe]
pub fn flow_send_udp_kprobe(ctx: ProbeContext) -> u32 {
    // udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)
    let _ = length_arg(&ctx, 2).and_then(|n| with_sk(&ctx, protocol::UDP, n, true));
    0
}

#[kprobe]
pub fn flow_recv_udp_kprobe(ctx: ProbeContext) -> u32 {
    // skb_consume_udp(struct sock *sk, struct sk_buff *skb, int len)
    let _ = int_length_arg(&ctx, 2).and_then(|n| with_sk(&ctx, protocol::UDP, n, false));
    0
}

/// A length argument; `int` lengths are read as 32 bits (the register's upper half is
/// not defined for them).
fn length_arg(ctx: &ProbeContext, index: usize) -> Option<u64> {
    let n: i64 = ctx.arg(index)?;
    (n > 0).then_some(n as u64)
}

fn int_length_arg(ctx: &ProbeContext, index: usize) -> Option<u64> {
    let n: i32 = ctx.arg(index)?;
    (n > 0).then_some(n as u64)
}

fn with_sk(ctx: &ProbeContext, proto: u8, bytes: u64, sent: bool) -> Option<()> {
    let sk: u64 = ctx.arg(0)?;
    account(config(), sk, || Some(proto.into()), bytes, sent).map(drop)
}
