//! `tcp:tcp_retransmit_skb`: one event per retransmitted segment, in timer or softirq
//! context, so the flow (and its owner) comes from the socket table, not the current pid.
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/tcp.h#L76> (>= 4.15)
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use flowtel_probes_abi::protocol;

use crate::{
    config::config,
    flow_table::count,
    maps::SOCKETS,
    socket::{direction_from_locks, flow_key},
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
    // SAFETY: read-only copy of a map value.
    let key = match unsafe { SOCKETS.get(sk) } {
        Some(info) => info.key,
        None => flow_key(&cfg, sk, protocol::TCP, direction_from_locks(&cfg, sk), 0)?,
    };
    // SAFETY: `s` points into a live map value.
    count(&key, |s| unsafe { &raw mut (*s).retransmits });
    Some(())
}
