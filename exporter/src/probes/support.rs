//! What the running kernel lets programs do beyond what BTF and tracefs say: which
//! helpers a program type may call. Asked of the verifier itself with the tiny
//! programs of probes/ebpf/src/support.rs, in a throwaway load of the object (with
//! minimal maps) before the real one, whose read-only settings then tell the real
//! programs which paths they may take.
use aya::{
    EbpfLoader,
    programs::{CgroupSkb, RawTracePoint},
};

use super::{OBJECT, hooks::refusal};

/// What the kernel refused, with the verifier's reason; `None` where it accepted.
#[derive(Debug, Default)]
pub struct Support {
    /// cgroup skb programs may call `bpf_get_current_pid_tgid` and friends (6.2+).
    pub skb_task_helpers: Option<String>,
    /// Tracing programs may call `bpf_task_pt_regs` (5.15+).
    pub task_regs: Option<String>,
    /// cgroup skb programs may key a map by `skb->sk`.
    pub socket_key: Option<String>,
}

/// Maps made as small as the kernel allows: this load exists only to verify.
const SMALL_MAPS: [(&str, u32); 7] = [
    ("FLOWS_0", 1),
    ("FLOWS_1", 1),
    ("SOCKETS", 1),
    ("TRAFFIC_0", 1),
    ("TRAFFIC_1", 1),
    ("DNS_PACKETS", 4096),
    ("HTTP_CHUNKS", 4096),
];

pub fn probe() -> Support {
    let mut loader = EbpfLoader::new();
    for (map, entries) in SMALL_MAPS {
        loader.map_max_entries(map, entries);
    }
    let mut ebpf = match loader.load(OBJECT) {
        Ok(ebpf) => ebpf,
        Err(err) => {
            let why = format!("the BPF object did not load: {err}");
            return Support {
                skb_task_helpers: Some(why.clone()),
                task_regs: Some(why.clone()),
                socket_key: Some(why),
            };
        }
    };
    let mut skb = |name: &str| {
        ebpf.program_mut(name)
            .ok_or_else(|| format!("no {name} program"))
            .and_then(|p| <&mut CgroupSkb>::try_from(p).and_then(CgroupSkb::load).map_err(|e| refusal(&e)))
    };
    let (skb_task, socket_key) = (skb("support_skb_task_helpers"), skb("support_skb_socket_key"));
    let regs = ebpf
        .program_mut("support_task_regs")
        .ok_or_else(|| "no support_task_regs program".to_owned())
        .and_then(|p| <&mut RawTracePoint>::try_from(p).and_then(RawTracePoint::load).map_err(|e| refusal(&e)));
    Support { skb_task_helpers: skb_task.err(), task_regs: regs.err(), socket_key: socket_key.err() }
}
