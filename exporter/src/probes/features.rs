//! What flowtel observes, feature by feature, and the ways each can be hooked, best
//! first. A feature takes the first variant whose hooks exist, whose layout needs the
//! kernel meets, and whose programs all pass the verifier and attach; the others stand
//! by (verified too where `flowtel status` asks) or are reported with the kernel's
//! reason. One feature failing never takes another down: only the byte counters are
//! indispensable.
use std::collections::HashMap;

use aya::{Ebpf, programs::CgroupSkbAttachType};

use super::{
    ProbeReport, ProbeState,
    hooks::{Hook, HookKind},
    layout::{Layout, Need},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// TCP opened/closed/failed, direction and owner of each socket.
    Connections,
    /// Bytes per flow and process, TCP and UDP.
    Bytes,
    /// Peers of unconnected UDP sockets.
    UdpPeers,
    Dns,
    /// Clear-text HTTP/1.x, inside the raw byte counters.
    Http,
    /// HTTPS through the OpenSSL uprobes.
    Tls,
    Rtt,
    Retransmits,
    /// exec and exit of processes that made flows.
    Processes,
}

impl Feature {
    pub const ALL: [Self; 9] = [
        Self::Bytes,
        Self::Connections,
        Self::UdpPeers,
        Self::Rtt,
        Self::Retransmits,
        Self::Processes,
        Self::Dns,
        Self::Http,
        Self::Tls,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Bytes => "bytes",
            Self::UdpPeers => "udp_peers",
            Self::Dns => "dns",
            Self::Http => "http",
            Self::Tls => "tls",
            Self::Rtt => "rtt",
            Self::Retransmits => "retransmits",
            Self::Processes => "processes",
        }
    }
}

/// One way of hooking a feature: all of its hooks attach, or none stays.
pub struct Variant {
    pub name: &'static str,
    pub hooks: &'static [Hook],
    pub needs: &'static [Need],
}

const fn variant(name: &'static str, hooks: &'static [Hook], needs: &'static [Need]) -> Variant {
    Variant { name, hooks, needs }
}

static STATE: [Hook; 1] = [Hook::new("flow_state", HookKind::Tracepoint("sock", "inet_sock_set_state"))];
static PROCESSES: [Hook; 2] = [
    Hook::new("process_exec", HookKind::Tracepoint("sched", "sched_process_exec")),
    Hook::new("process_exit", HookKind::Tracepoint("sched", "sched_process_exit")),
];
static RETRANSMIT: [Hook; 1] = [Hook::new("flow_retransmit", HookKind::Tracepoint("tcp", "tcp_retransmit_skb"))];
static RTT_RAW: [Hook; 1] = [Hook::new("flow_rtt_raw", HookKind::Raw("tcp_probe"))];
static RTT: [Hook; 1] = [Hook::new("flow_rtt", HookKind::Tracepoint("tcp", "tcp_probe"))];
static BYTES_RAW: [Hook; 2] = [
    Hook::new("flow_send_raw", HookKind::Raw("sock_send_length")),
    Hook::new("flow_recv_raw", HookKind::Raw("sock_recv_length")),
];
static BYTES_TRACEPOINTS: [Hook; 2] = [
    Hook::new("flow_send", HookKind::Tracepoint("sock", "sock_send_length")),
    Hook::new("flow_recv", HookKind::Tracepoint("sock", "sock_recv_length")),
];
/// Before 6.3, the socket layer's functions (fallback.rs): sends counted at return
/// (what was really sent), receives by the length copied out. `tcp_sendpage` carries
/// sendfile and splice before 6.5 and is gone after.
static BYTES_FEXIT: [Hook; 6] = [
    Hook::new("flow_send_tcp_fexit", HookKind::FExit("tcp_sendmsg")),
    Hook::optional("flow_sendpage_fexit", HookKind::FExit("tcp_sendpage")),
    Hook::new("flow_recv_start_fentry", HookKind::FEntry("tcp_recvmsg")),
    Hook::new("flow_recv_tcp_fentry", HookKind::FEntry("tcp_cleanup_rbuf")),
    Hook::new("flow_send_udp_fexit", HookKind::FExit("udp_sendmsg")),
    Hook::new("flow_recv_udp_fentry", HookKind::FEntry("skb_consume_udp")),
];
static BYTES_KPROBES: [Hook; 9] = [
    Hook::new("flow_send_tcp_kprobe", HookKind::Kprobe("tcp_sendmsg")),
    Hook::new("flow_send_tcp_return", HookKind::Kprobe("tcp_sendmsg")),
    Hook::optional("flow_sendpage_kprobe", HookKind::Kprobe("tcp_sendpage")),
    Hook::optional("flow_sendpage_return", HookKind::Kprobe("tcp_sendpage")),
    Hook::new("flow_recv_start_kprobe", HookKind::Kprobe("tcp_recvmsg")),
    Hook::new("flow_recv_tcp_kprobe", HookKind::Kprobe("tcp_cleanup_rbuf")),
    Hook::new("flow_send_udp_kprobe", HookKind::Kprobe("udp_sendmsg")),
    Hook::new("flow_send_udp_return", HookKind::Kprobe("udp_sendmsg")),
    Hook::new("flow_recv_udp_kprobe", HookKind::Kprobe("skb_consume_udp")),
];
/// Peers of unconnected UDP sockets, from the cgroup `sock_addr` hooks (datagram.rs).
static DATAGRAM_PEERS: [Hook; 4] = [
    Hook::new("datagram_sendmsg4", HookKind::Cgroup),
    Hook::new("datagram_recvmsg4", HookKind::Cgroup),
    Hook::new("datagram_sendmsg6", HookKind::Cgroup),
    Hook::new("datagram_recvmsg6", HookKind::Cgroup),
];
/// DNS packets of every local socket (dns.rs).
static DNS: [Hook; 2] = [
    Hook::new("dns_egress", HookKind::CgroupSkb(CgroupSkbAttachType::Egress)),
    Hook::new("dns_ingress", HookKind::CgroupSkb(CgroupSkbAttachType::Ingress)),
];
/// The same, with the connect hooks that note each socket's owner for the egress
/// probe where it cannot ask for the current task (before 6.2; datagram.rs).
static DNS_WITH_OWNERS: [Hook; 4] = [
    Hook::new("dns_egress", HookKind::CgroupSkb(CgroupSkbAttachType::Egress)),
    Hook::new("dns_ingress", HookKind::CgroupSkb(CgroupSkbAttachType::Ingress)),
    Hook::new("socket_connect4", HookKind::Cgroup),
    Hook::new("socket_connect6", HookKind::Cgroup),
];

pub static CONNECTIONS: [Variant; 1] = [variant("tracepoint", &STATE, &[Need::StateFormat])];
pub static PROCESS_EVENTS: [Variant; 1] = [variant("tracepoints", &PROCESSES, &[])];
pub static RETRANSMITS: [Variant; 1] =
    [variant("tracepoint", &RETRANSMIT, &[Need::RetransmitFormat, Need::TotalRetrans])];
pub static RTT_SAMPLES: [Variant; 2] = [
    variant("raw_tracepoint", &RTT_RAW, &[Need::RawTcpProbe, Need::TcpRtt]),
    variant("tracepoint", &RTT, &[Need::ProbeFormat, Need::TcpRtt]),
];
pub static BYTES: [Variant; 4] = [
    variant("raw_tracepoints", &BYTES_RAW, &[Need::RawLengths]),
    variant("tracepoints", &BYTES_TRACEPOINTS, &[Need::LengthFormat]),
    variant("fentry", &BYTES_FEXIT, &[]),
    variant("kprobes", &BYTES_KPROBES, &[]),
];
pub static UDP_PEERS: [Variant; 1] = [variant("cgroup_sock_addr", &DATAGRAM_PEERS, &[])];
pub static DNS_PACKETS: [Variant; 3] = [
    variant("cgroup_skb", &DNS, &[Need::SkbTaskHelpers]),
    variant("cgroup_skb, owners from connect/sendmsg", &DNS_WITH_OWNERS, &[Need::SocketOwners]),
    variant("cgroup_skb, lookups under the host", &DNS, &[]),
];

/// Each program's verdict from the verifier, loaded when first needed: a program in
/// several variants is loaded once. The programs of variants not chosen are loaded only
/// when `verify_standby` asks (`flowtel status`): `flowtel run` does not spend the
/// verifier's time and the kernel's memory on programs it will not attach.
pub struct Verdicts {
    loaded: HashMap<&'static str, Result<(), String>>,
    verify_standby: bool,
}

impl Verdicts {
    pub fn new(verify_standby: bool) -> Self {
        Self { loaded: HashMap::new(), verify_standby }
    }

    fn of(&mut self, ebpf: &mut Ebpf, hook: &Hook) -> Result<(), String> {
        self.loaded.entry(hook.program).or_insert_with(|| hook.load(ebpf)).clone()
    }

    /// The state of a program whose variant was not chosen.
    fn standby(&mut self, ebpf: &mut Ebpf, hook: &Hook) -> ProbeState {
        if !self.verify_standby && !self.loaded.contains_key(hook.program) {
            return ProbeState::Spare;
        }
        self.of(ebpf, hook).map_or_else(ProbeState::Failed, |()| ProbeState::Standby)
    }
}

/// The outcome of one feature: the variant attached, or why none could be.
pub struct Outcome {
    pub attached: Option<&'static str>,
    pub reports: Vec<ProbeReport>,
}

/// Attaches the first usable variant of `variants` (those `allowed` lets through);
/// `verdicts` loads each program tried and says whether it passed the verifier.
pub fn attach(
    ebpf: &mut Ebpf,
    feature: Feature,
    variants: &'static [Variant],
    layout: &Layout,
    verdicts: &mut Verdicts,
    allowed: &dyn Fn(&Variant) -> Result<(), String>,
) -> Outcome {
    let mut attached = None;
    let mut reports = Vec::new();
    for variant in variants {
        let report = |hook: &Hook, state| ProbeReport {
            feature,
            variant: variant.name,
            program: hook.program,
            hook: hook.describe(),
            state,
        };
        if attached.is_some() {
            // A better variant is attached: this one stands by.
            for hook in variant.hooks {
                let state = verdicts.standby(ebpf, hook);
                reports.push(report(hook, state));
            }
            continue;
        }
        match try_variant(ebpf, variant, layout, verdicts, allowed) {
            Ok(states) => {
                attached = Some(variant.name);
                reports.extend(variant.hooks.iter().zip(states).map(|(hook, state)| report(hook, state)));
            }
            Err(why) => reports.extend(variant.hooks.iter().map(|hook| report(hook, ProbeState::Failed(why.clone())))),
        }
    }
    Outcome { attached, reports: one_per_program(reports) }
}

/// A program in several variants is reported once: attached if any variant attached
/// it, else standby if verified, else spare, else its first failure.
fn one_per_program(reports: Vec<ProbeReport>) -> Vec<ProbeReport> {
    let rank = |state: &ProbeState| match state {
        ProbeState::Attached => 3,
        ProbeState::Standby => 2,
        ProbeState::Spare => 1,
        ProbeState::Failed(_) => 0,
    };
    let mut out: Vec<ProbeReport> = Vec::with_capacity(reports.len());
    for report in reports {
        match out.iter_mut().find(|r| r.program == report.program) {
            Some(kept) if rank(&report.state) > rank(&kept.state) => *kept = report,
            Some(_) => {}
            None => out.push(report),
        }
    }
    out
}

fn try_variant(
    ebpf: &mut Ebpf,
    variant: &Variant,
    layout: &Layout,
    verdicts: &mut Verdicts,
    allowed: &dyn Fn(&Variant) -> Result<(), String>,
) -> Result<Vec<ProbeState>, String> {
    allowed(variant)?;
    if let Some(why) = variant.needs.iter().find_map(|&need| layout.lacks(need)) {
        return Err(why.to_owned());
    }
    let mut states = Vec::with_capacity(variant.hooks.len());
    for hook in variant.hooks {
        let usable = hook.missing().map_or_else(|| verdicts.of(ebpf, hook), Err);
        match usable {
            Ok(()) => states.push(ProbeState::Attached),
            Err(why) if hook.optional => states.push(ProbeState::Failed(format!("optional, not used: {why}"))),
            Err(why) => return Err(format!("{}: {why}", hook.program)),
        }
    }
    for (index, hook) in variant.hooks.iter().enumerate() {
        if states[index] != ProbeState::Attached {
            continue;
        }
        if let Err(why) = hook.attach(ebpf) {
            if hook.optional {
                states[index] = ProbeState::Failed(format!("optional, not used: {why}"));
                continue;
            }
            for (done, state) in variant.hooks[..index].iter().zip(&states) {
                if *state == ProbeState::Attached {
                    done.unload(ebpf);
                }
            }
            return Err(format!("{}: {why}", hook.program));
        }
    }
    Ok(states)
}
