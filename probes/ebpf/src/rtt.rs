//! `tcp:tcp_probe`: one event per segment received on an established socket, carrying
//! the socket's smoothed RTT. It samples the RTT of busy connections in both roles
//! (a bulk sender sees ACKs, a receiver sees data), at most once per configured gap per
//! socket, so a connection contributes samples over its whole life, not one at close.
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/tcp.h#L268> (>= 4.16)
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use flowtel_probes_abi::ProbeConfig;

use crate::{
    config::config,
    flow_table::{record_rtt, stats_for},
    maps::SOCKETS,
    socket::read,
};

#[tracepoint]
pub fn flow_rtt(ctx: TracePointContext) -> u32 {
    let _ = try_flow_rtt(&ctx);
    0
}

fn try_flow_rtt(ctx: &TracePointContext) -> Option<()> {
    let cfg = config();
    // SAFETY: offsets from the tracepoint's format file.
    let sk: u64 = unsafe { ctx.read_at(cfg.probe_skaddr.into()) }.ok()?;
    // The tracepoint already shifted srtt to microseconds.
    // SAFETY: as above.
    sample(&cfg, sk, || unsafe { ctx.read_at::<u32>(cfg.probe_srtt.into()) }.ok())
}

/// The raw tracepoint (args: sk, skb), attached instead where BTF shows that prototype.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn flow_rtt_raw(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let sk: u64 = ctx.arg(0);
    // srtt_us is kept << 3 (RFC 6298 fixed point).
    let _ = sample(&cfg, sk, || read::<u32>(sk, cfg.tcp_srtt_us).map(|srtt| srtt >> 3));
    0
}

/// Takes a sample when this socket's last one is older than the configured gap.
#[inline(always)]
fn sample(cfg: &ProbeConfig, sk: u64, srtt_us: impl FnOnce() -> Option<u32>) -> Option<()> {
    // Only sockets whose flow (and owner) we know; others join at their next send/recv.
    let info = SOCKETS.get_ptr_mut(sk)?;
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `info` points into a live map value; a racing CPU at worst adds a sample.
    let key = unsafe {
        if now.wrapping_sub((*info).last_rtt_sample_ns) < cfg.rtt_sample_gap_ns {
            return None;
        }
        (*info).last_rtt_sample_ns = now;
        (*info).key
    };
    // 0 means the connection has no RTT sample yet.
    let srtt_us = srtt_us().filter(|&v| v != 0)?;
    // mdev_us is kept << 2 (RFC 6298 fixed point); `ss -ti` shows mdev_us >> 2.
    let rttvar_us = read::<u32>(sk, cfg.tcp_mdev_us).map_or(0, |mdev| mdev >> 2);
    let (stats, _) = stats_for(&key)?;
    record_rtt(stats, srtt_us, rttvar_us);
    Some(())
}
