//! Load and attach: resolve the running kernel's layout, patch it into the BPF object,
//! load every program through the verifier, attach the best hook the kernel offers and
//! fall back where it lacks one. What attached and what fell back is kept as
//! [`ProbeReport`]s for the log, `flowtel status` and `flowtel.agent.probes.attached`.
mod btf;
mod layout;
mod tls;
mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, KProbe, RawTracePoint, TracePoint},
};

pub use layout::LayoutError;
pub use tls::TlsAttacher;

/// The kernel programs, built by build.rs from probes/ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtel-probes"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the BPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the BPF object has no program {0}")]
    NoProgram(&'static str),
    #[error("program {program} did not pass the verifier: {source}")]
    Verify {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no way to observe {what} on this kernel: {why}")]
    Unsupported { what: &'static str, why: String },
}

/// How to attach the byte counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Tracepoints where the kernel has them, kprobes otherwise.
    Auto,
    /// Tracepoints only; fail if they are missing.
    Tracepoints,
    /// The kprobe fallback even where tracepoints exist.
    Kprobes,
}

/// Kernel-side settings, from the agent's configuration.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub flow_table_entries: u32,
    pub socket_table_entries: u32,
    pub rtt_sample_gap_ns: u64,
    pub attach_mode: AttachMode,
    /// Ports whose packets the DNS probe copies; empty turns DNS observation off.
    pub dns_ports: Vec<u16>,
    /// Size of the DNS ring buffer (a power of two, a multiple of the page size).
    pub dns_ring_bytes: u32,
    /// Bytes of each clear-text HTTP payload to copy; 0 turns clear-text HTTP off.
    pub http_capture_bytes: u16,
    /// Whether to attach the OpenSSL uprobes.
    pub tls: bool,
    /// Size of the HTTP ring buffer (a power of two, a multiple of the page size).
    pub http_ring_bytes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    /// Loaded and verified but not attached, because another hook serves its purpose.
    Standby,
    /// Could not attach; the reason is kept for the log and `flowtel status`.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub program: &'static str,
    pub hook: String,
    pub state: ProbeState,
}

pub struct Probes {
    pub ebpf: Ebpf,
    pub reports: Vec<ProbeReport>,
    /// The OpenSSL uprobes, when `http.tls` is on: attaches to libraries found later.
    pub tls: Option<TlsAttacher>,
}

struct Hook {
    program: &'static str,
    kind: HookKind,
}

enum HookKind {
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint: the `TP_PROTO` arguments, no trace record built.
    Raw(&'static str),
    /// A cgroup `sock_addr` hook at the cgroup v2 root (the type is in the program's section).
    Cgroup,
    /// A cgroup skb hook at the cgroup v2 root.
    CgroupSkb(CgroupSkbAttachType),
    Kprobe(&'static str),
}

const STATE: Hook = Hook { program: "flow_state", kind: HookKind::Tracepoint("sock", "inet_sock_set_state") };
const EXEC: Hook = Hook { program: "process_exec", kind: HookKind::Tracepoint("sched", "sched_process_exec") };
const EXIT: Hook = Hook { program: "process_exit", kind: HookKind::Tracepoint("sched", "sched_process_exit") };
const RETRANSMIT: Hook = Hook { program: "flow_retransmit", kind: HookKind::Tracepoint("tcp", "tcp_retransmit_skb") };
const RTT: Hook = Hook { program: "flow_rtt", kind: HookKind::Tracepoint("tcp", "tcp_probe") };
const RTT_RAW: Hook = Hook { program: "flow_rtt_raw", kind: HookKind::Raw("tcp_probe") };
const BYTES_RAW: [Hook; 2] = [
    Hook { program: "flow_send_raw", kind: HookKind::Raw("sock_send_length") },
    Hook { program: "flow_recv_raw", kind: HookKind::Raw("sock_recv_length") },
];
const BYTES_TRACEPOINTS: [Hook; 2] = [
    Hook { program: "flow_send", kind: HookKind::Tracepoint("sock", "sock_send_length") },
    Hook { program: "flow_recv", kind: HookKind::Tracepoint("sock", "sock_recv_length") },
];
/// Peers of unconnected UDP sockets, from the cgroup `sock_addr` hooks (datagram.rs).
const DATAGRAM_PEERS: [Hook; 4] = [
    Hook { program: "datagram_sendmsg4", kind: HookKind::Cgroup },
    Hook { program: "datagram_recvmsg4", kind: HookKind::Cgroup },
    Hook { program: "datagram_sendmsg6", kind: HookKind::Cgroup },
    Hook { program: "datagram_recvmsg6", kind: HookKind::Cgroup },
];
/// DNS packets of every local socket (dns.rs).
const DNS: [Hook; 2] = [
    Hook { program: "dns_egress", kind: HookKind::CgroupSkb(CgroupSkbAttachType::Egress) },
    Hook { program: "dns_ingress", kind: HookKind::CgroupSkb(CgroupSkbAttachType::Ingress) },
];
const BYTES_KPROBES: [Hook; 4] = [
    Hook { program: "flow_send_tcp_kprobe", kind: HookKind::Kprobe("tcp_sendmsg") },
    Hook { program: "flow_recv_tcp_kprobe", kind: HookKind::Kprobe("tcp_cleanup_rbuf") },
    Hook { program: "flow_send_udp_kprobe", kind: HookKind::Kprobe("udp_sendmsg") },
    Hook { program: "flow_recv_udp_kprobe", kind: HookKind::Kprobe("skb_consume_udp") },
];

impl Hook {
    fn describe(&self) -> String {
        match self.kind {
            HookKind::Tracepoint(category, name) => format!("tracepoint {category}:{name}"),
            HookKind::Raw(name) => format!("raw_tracepoint {name}"),
            HookKind::Cgroup => format!("cgroup/{}", self.program.trim_start_matches("datagram_")),
            HookKind::CgroupSkb(CgroupSkbAttachType::Egress) => "cgroup_skb/egress".into(),
            HookKind::CgroupSkb(CgroupSkbAttachType::Ingress) => "cgroup_skb/ingress".into(),
            HookKind::Kprobe(function) => format!("kprobe {function}"),
        }
    }

    fn available(&self) -> bool {
        match self.kind {
            HookKind::Tracepoint(category, name) => tracefs::event_exists(category, name),
            // Checked against BTF before the raw hooks are chosen.
            HookKind::Raw(_) => true,
            HookKind::Cgroup | HookKind::CgroupSkb(_) => crate::mounts::cgroup2_root().is_some(),
            HookKind::Kprobe(_) => kprobes_available(),
        }
    }

    fn load(&self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let program = ebpf.program_mut(self.program).ok_or(ProbeError::NoProgram(self.program))?;
        let verify = |source| ProbeError::Verify { program: self.program, source };
        match self.kind {
            HookKind::Tracepoint(..) => {
                let tp: &mut TracePoint = program.try_into().map_err(verify)?;
                tp.load().map_err(verify)
            }
            HookKind::Raw(_) => {
                let raw: &mut RawTracePoint = program.try_into().map_err(verify)?;
                raw.load().map_err(verify)
            }
            HookKind::Cgroup => {
                let hook: &mut CgroupSockAddr = program.try_into().map_err(verify)?;
                hook.load().map_err(verify)
            }
            HookKind::CgroupSkb(_) => {
                let hook: &mut CgroupSkb = program.try_into().map_err(verify)?;
                hook.load().map_err(verify)
            }
            HookKind::Kprobe(_) => {
                let kp: &mut KProbe = program.try_into().map_err(verify)?;
                kp.load().map_err(verify)
            }
        }
    }

    fn attach(&self, ebpf: &mut Ebpf) -> ProbeReport {
        let result = match (ebpf.program_mut(self.program), &self.kind) {
            (None, _) => Err(format!("no program {}", self.program)),
            (Some(program), HookKind::Tracepoint(category, name)) => <&mut TracePoint>::try_from(program)
                .map_err(|e| e.to_string())
                .and_then(|tp| tp.attach(category, name).map(drop).map_err(|e| with_sources(&e))),
            (Some(program), HookKind::Raw(name)) => <&mut RawTracePoint>::try_from(program)
                .map_err(|e| e.to_string())
                .and_then(|raw| raw.attach(name).map(drop).map_err(|e| with_sources(&e))),
            (Some(program), HookKind::Cgroup) => with_cgroup_root(|root| {
                <&mut CgroupSockAddr>::try_from(program).map_err(|e| e.to_string()).and_then(|hook| {
                    // aya attaches through a bpf_link (Linux 5.7+), which always coexists
                    // with other tools' programs (meshes, socket load balancers); the link
                    // API takes no mode flags, so `Single` (0) is the one that works.
                    hook.attach(root, CgroupAttachMode::Single).map(drop).map_err(|e| with_sources(&e))
                })
            }),
            (Some(program), HookKind::CgroupSkb(attach_type)) => with_cgroup_root(|root| {
                <&mut CgroupSkb>::try_from(program).map_err(|e| e.to_string()).and_then(|hook| {
                    hook.attach(root, *attach_type, CgroupAttachMode::Single).map(drop).map_err(|e| with_sources(&e))
                })
            }),
            (Some(program), HookKind::Kprobe(function)) => <&mut KProbe>::try_from(program)
                .map_err(|e| e.to_string())
                .and_then(|kp| kp.attach(function, 0).map(drop).map_err(|e| with_sources(&e))),
        };
        let state = result.map_or_else(ProbeState::Failed, |()| ProbeState::Attached);
        ProbeReport { program: self.program, hook: self.describe(), state }
    }

    /// Loaded and verified, not attached: another hook serves its purpose.
    fn standby(&self) -> ProbeReport {
        ProbeReport { program: self.program, hook: self.describe(), state: ProbeState::Standby }
    }

    fn unavailable(&self, why: &str) -> ProbeReport {
        ProbeReport { program: self.program, hook: self.describe(), state: ProbeState::Failed(why.to_owned()) }
    }
}

/// Runs `attach` with the cgroup v2 root open.
fn with_cgroup_root(attach: impl FnOnce(&std::fs::File) -> Result<(), String>) -> Result<(), String> {
    match crate::mounts::cgroup2_root().map(std::fs::File::open) {
        Some(Ok(root)) => attach(&root),
        Some(Err(err)) => Err(format!("cannot open the cgroup v2 root: {err}")),
        None => Err("no cgroup v2 hierarchy mounted".into()),
    }
}

/// Whether this kernel can attach kprobes at all (`CONFIG_KPROBE_EVENTS`).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

/// Loads every program (so the verifier checks even the ones we will not attach) and
/// attaches the flow probes.
pub fn load_and_attach(settings: &ProbeSettings) -> Result<Probes, ProbeError> {
    tracefs::ensure_mounted()?;
    let config =
        layout::resolve(settings.rtt_sample_gap_ns, &settings.dns_ports, settings.http_capture_bytes, settings.tls)?;
    let mut ebpf = EbpfLoader::new()
        .override_global("FLOWTEL_CONFIG", &config, true)
        .map_max_entries("FLOWS_0", settings.flow_table_entries)
        .map_max_entries("FLOWS_1", settings.flow_table_entries)
        .map_max_entries("SOCKETS", settings.socket_table_entries)
        .map_max_entries("TRAFFIC_0", settings.socket_table_entries)
        .map_max_entries("TRAFFIC_1", settings.socket_table_entries)
        .map_max_entries("DNS_PACKETS", settings.dns_ring_bytes)
        .map_max_entries("HTTP_CHUNKS", settings.http_ring_bytes)
        .load(OBJECT)
        .map_err(ProbeError::Load)?;

    let all = [&STATE, &RETRANSMIT, &RTT, &RTT_RAW, &EXEC, &EXIT]
        .into_iter()
        .chain(&BYTES_RAW)
        .chain(&BYTES_TRACEPOINTS)
        .chain(&BYTES_KPROBES);
    for hook in all.chain(&DATAGRAM_PEERS).chain(&DNS) {
        hook.load(&mut ebpf)?;
    }
    tls::load(&mut ebpf)?;

    let mut reports = vec![STATE.attach(&mut ebpf)];
    if reports[0].state != ProbeState::Attached {
        return Err(ProbeError::Unsupported {
            what: "TCP connections",
            why: format!("{}: {:?}", STATE.describe(), reports[0].state),
        });
    }
    for hook in [&EXEC, &EXIT] {
        reports.push(if hook.available() { hook.attach(&mut ebpf) } else { hook.unavailable("not on this kernel") });
    }
    let raw = layout::raw_tracepoints_usable(&config);
    reports.push(if RETRANSMIT.available() {
        RETRANSMIT.attach(&mut ebpf)
    } else {
        RETRANSMIT.unavailable("not on this kernel")
    });
    reports.extend(prefer_raw(&mut ebpf, raw.tcp_probe, &[RTT_RAW], &[RTT]));
    reports.extend(attach_byte_counters(&mut ebpf, settings.attach_mode, raw.lengths)?);
    reports.extend(DATAGRAM_PEERS.iter().map(|hook| {
        if hook.available() { hook.attach(&mut ebpf) } else { hook.unavailable("no cgroup v2 hierarchy mounted") }
    }));
    reports.extend(DNS.iter().map(|hook| match (settings.dns_ports.is_empty(), hook.available()) {
        (true, _) => hook.unavailable("turned off (dns.ports is empty)"),
        (false, true) => hook.attach(&mut ebpf),
        (false, false) => hook.unavailable("no cgroup v2 hierarchy mounted"),
    }));
    reports.push(http_report(&config, settings, &reports));
    let tls = settings.tls.then(|| {
        let mut attacher = TlsAttacher::default();
        attacher.scan_all(&mut ebpf);
        reports.push(attacher.report());
        attacher
    });
    Ok(Probes { ebpf, reports, tls })
}

/// Clear-text HTTP runs inside the raw byte counters (it rides on their per-socket
/// lookup), so it is on when they are attached and the syscall registers are known.
fn http_report(
    config: &flowtel_probes_abi::ProbeConfig,
    settings: &ProbeSettings,
    reports: &[ProbeReport],
) -> ProbeReport {
    let raw_attached = reports.iter().any(|r| r.program == "flow_send_raw" && r.state == ProbeState::Attached);
    let state = match (settings.http_capture_bytes, config.http_capture_bytes, raw_attached) {
        (0, _, _) => ProbeState::Failed("turned off (http.capture_bytes is 0)".into()),
        (_, 0, _) => ProbeState::Failed("no syscall registers known for this architecture".into()),
        (_, _, false) => ProbeState::Failed("needs the sock_send_length raw tracepoint (Linux 6.3+, BTF)".into()),
        _ => ProbeState::Attached,
    };
    ProbeReport { program: "http", hook: "in flow_send_raw/flow_recv_raw (request and status lines)".into(), state }
}

/// Attaches the raw-tracepoint programs when usable, else the classic ones; the others
/// stay loaded (verified) as standby.
fn prefer_raw(ebpf: &mut Ebpf, raw_usable: bool, raw: &[Hook], classic: &[Hook]) -> Vec<ProbeReport> {
    let (active, standby) = if raw_usable { (raw, classic) } else { (classic, raw) };
    let mut reports: Vec<ProbeReport> = active
        .iter()
        .map(|hook| if hook.available() { hook.attach(ebpf) } else { hook.unavailable("not on this kernel") })
        .collect();
    reports.extend(standby.iter().map(Hook::standby));
    reports
}

fn attach_byte_counters(ebpf: &mut Ebpf, mode: AttachMode, raw_usable: bool) -> Result<Vec<ProbeReport>, ProbeError> {
    let tracepoints_present = BYTES_TRACEPOINTS.iter().all(Hook::available);
    let use_tracepoints = match mode {
        AttachMode::Kprobes => false,
        AttachMode::Auto => tracepoints_present,
        AttachMode::Tracepoints if tracepoints_present => true,
        AttachMode::Tracepoints => {
            return Err(ProbeError::Unsupported {
                what: "bytes per flow",
                why: "attach_mode is tracepoints but sock:sock_send_length needs Linux 6.3 or later".into(),
            });
        }
    };
    if !use_tracepoints && !kprobes_available() {
        return Err(ProbeError::Unsupported {
            what: "bytes per flow",
            why: "the kernel has neither sock:sock_send_length (Linux 6.3+) nor kprobes".into(),
        });
    }
    if !use_tracepoints {
        let mut reports: Vec<ProbeReport> = BYTES_KPROBES.iter().map(|hook| hook.attach(ebpf)).collect();
        reports.extend(BYTES_RAW.iter().chain(&BYTES_TRACEPOINTS).map(Hook::standby));
        return Ok(reports);
    }
    let mut reports = prefer_raw(ebpf, raw_usable, &BYTES_RAW, &BYTES_TRACEPOINTS);
    reports.extend(BYTES_KPROBES.iter().map(Hook::standby));
    Ok(reports)
}

/// An error with its causes, for the status report (aya's messages name the call, the
/// source names the errno).
fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
