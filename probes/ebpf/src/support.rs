//! Probes of what the running kernel lets programs do, loaded by user space before the
//! real programs (exporter/src/probes/support.rs): which helpers a program type may
//! call is not in BTF, so the loader asks the verifier. Never attached.
use crate::maps::SOCKET_OWNERS;
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::{cgroup_skb, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext},
};

/// cgroup skb programs may call the current-task helpers (6.2+).
#[cgroup_skb(egress)]
pub fn support_skb_task_helpers(_ctx: SkBuffContext) -> i32 {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    i32::from(bpf_get_current_pid_tgid() ^ cgroup != 1)
}

/// cgroup skb programs may use `skb->sk`'s address as a map key (the DNS probe's way
/// to its owner where the current-task helpers are missing).
#[cgroup_skb(egress)]
pub fn support_skb_socket_key(ctx: SkBuffContext) -> i32 {
    // SAFETY: as in dns_asked.rs.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk } as u64;
    // SAFETY: read-only copy of a map value.
    i32::from(sk == 0 || unsafe { SOCKET_OWNERS.get(sk) }.is_some())
}

/// Tracing programs may read the current task's saved user registers (5.15+).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn support_task_regs(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: no preconditions; the result is only compared.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
    i32::from(regs == 0)
}
