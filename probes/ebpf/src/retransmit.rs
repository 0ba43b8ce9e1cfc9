//! `tcp:tcp_retransmit_skb`: fires per retransmitted skb, in timer or softirq context.
//! An skb can carry several segments (TSO), and the tracepoint's placement relative to
//! the counters has moved between kernels, so the count itself comes from the socket's
//! own `total_retrans`: each event adds what it grew by since we last looked (and the
//! close adds the rest). The flow and its owner come from the socket table.
//! <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_output.c#L3369> (>= 4.15)
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use flowtel_probes_abi::{ProbeConfig, SocketInfo};

use crate::{
    config::config,
    flow_table::{add, stats_for},
    maps::SOCKETS,
    socket::read,
};

#[tracepoint]
pub fn flow_retransmit(ctx: TracePointContext) -> u32 {
    let _ = try_flow_retransmit(&ctx);
    0
}

fn try_flow_retransmit(ctx: &TracePointContext) -> Option<()> {
    let cfg = config();
    // SAFETY: the offset comes from the tracepoint's format file.
    let sk: u64 = unsafe { ctx.read_at(cfg.retransmit_skaddr.into()) }.ok()?;
    // A socket we do not know yet is picked up (with its retransmit baseline) at its
    // next send or receive; retransmits before that are not attributed.
    let info = SOCKETS.get_ptr_mut(sk)?;
    count_new_retransmits(&cfg, sk, info);
    Some(())
}

/// Adds the growth of the socket's `total_retrans` since the last call to its flow.
#[inline(always)]
pub fn count_new_retransmits(cfg: &ProbeConfig, sk: u64, info: *mut SocketInfo) {
    // SAFETY: `info` points into a live map value.
    if unsafe { (*info).key.family } == 0 {
        // Still connecting: the tuple is not known yet. The delta waits for it.
        return;
    }
    let Some(total) = read::<u32>(sk, cfg.tcp_total_retrans) else { return };
    // SAFETY: as above.
    let (key, delta) = unsafe {
        let delta = total.wrapping_sub((*info).retrans_seen);
        (*info).retrans_seen = total;
        ((*info).key, delta)
    };
    if delta == 0 || delta > 1 << 24 {
        return;
    }
    if let Some((stats, _)) = stats_for(&key) {
        // SAFETY: `stats` points into a live map value.
        add(unsafe { &raw mut (*stats).retransmits }, u64::from(delta));
    }
}
