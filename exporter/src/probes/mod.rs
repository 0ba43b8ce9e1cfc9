//! Load and attach: resolve the running kernel's layout, patch it into the BPF object,
//! load every program through the verifier, attach the best hook the kernel offers and
//! fall back where it lacks one. What attached and what fell back is kept as
//! [`ProbeReport`]s for the log, `flowtel status` and `flowtel.agent.probes.attached`.
mod btf;
mod features;
mod hooks;
mod layout;
mod mapped_file;
#[cfg(test)]
mod stack;
mod support;
mod tls;
mod tls_points;
mod tracefs;

use aya::{Ebpf, EbpfLoader};
pub use features::Feature;
use features::Variant;
pub use hooks::kprobes_available;
pub use layout::LayoutError;
use layout::{Layout, Need};
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
    Load(String),
    #[error("no way to count bytes on this kernel, so flowtel cannot run: {why}")]
    NoByteCounter { why: String, reports: Vec<ProbeReport> },
}

/// How to attach the byte counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Tracepoints where the kernel has them, else fentry/fexit, else kprobes.
    Auto,
    /// Tracepoints only; fail if they are missing.
    Tracepoints,
    /// The socket functions as fentry/fexit even where tracepoints exist.
    Fentry,
    /// The socket functions as kprobes/kretprobes even where better hooks exist: the last
    /// resort of kernels without tracepoints or fentry, chosen by hand to prove it there.
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
    /// Whether they go on emulated instructions (`tls_points.rs`) or the classic places.
    pub tls_emulated_probes: bool,
    /// Size of the HTTP ring buffer (a power of two, a multiple of the page size).
    pub http_ring_bytes: u32,
    /// Whether to load (and so verify) the programs of variants not attached.
    pub verify_standby: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    /// Loaded and verified but not attached, because another hook serves its purpose.
    Standby,
    /// Not loaded, because another hook serves its purpose (`flowtel run`; `flowtel
    /// status` verifies these).
    Spare,
    /// Could not attach; the reason is kept for the log and `flowtel status`.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub feature: Feature,
    /// The way of hooking the feature this program belongs to (features.rs).
    pub variant: &'static str,
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

/// Attaches each feature's best variant (loading the programs of the others too when
/// `verify_standby` asks, so that the verifier checks the ones that stand by). Fails
/// only when the BPF object cannot be loaded at all, the socket layout is unknown, or
/// no byte counter can run.
pub fn load_and_attach(settings: &ProbeSettings) -> Result<Probes, ProbeError> {
    tracefs::ensure_mounted()?;
    let mut layout =
        layout::resolve(settings.rtt_sample_gap_ns, &settings.dns_ports, settings.http_capture_bytes, settings.tls)?;
    let support = support::probe();
    layout.config.skb_task_helpers = u8::from(support.skb_task_helpers.is_none());
    layout.config.task_regs = u8::from(support.task_regs.is_none());
    if let Some(why) = &support.skb_task_helpers {
        layout.missing.push((
            Need::SkbTaskHelpers,
            format!("no current-task helpers in cgroup skb programs (Linux 6.2+): {why}"),
        ));
        match &support.socket_key {
            None => layout.config.dns_owner_by_socket = 1,
            Some(no) => layout
                .missing
                .push((Need::SocketOwners, format!("cgroup skb programs cannot key a map by skb->sk: {no}"))),
        }
    }
    let mut ebpf = EbpfLoader::new()
        .override_global("FLOWTEL_CONFIG", &layout.config, true)
        .map_max_entries("FLOWS_0", settings.flow_table_entries)
        .map_max_entries("FLOWS_1", settings.flow_table_entries)
        .map_max_entries("SOCKETS", settings.socket_table_entries)
        .map_max_entries("TRAFFIC_0", settings.socket_table_entries)
        .map_max_entries("TRAFFIC_1", settings.socket_table_entries)
        .map_max_entries("DNS_PACKETS", settings.dns_ring_bytes)
        .map_max_entries("HTTP_CHUNKS", settings.http_ring_bytes)
        .load(OBJECT)
        .map_err(|err| ProbeError::Load(hooks::with_sources(&err)))?;

    let mut verdicts = features::Verdicts::new(settings.verify_standby);
    let everything = |_: &Variant| Ok(());
    let mut attach = |feature, variants, allowed: &dyn Fn(&Variant) -> Result<(), String>| {
        features::attach(&mut ebpf, feature, variants, &layout, &mut verdicts, allowed)
    };

    let bytes = attach(Feature::Bytes, &features::BYTES, &|v| attach_mode_allows(settings.attach_mode, v));
    let byte_counter = bytes.attached.unwrap_or("none");
    let mut reports = bytes.reports;
    reports.extend(attach(Feature::Connections, &features::CONNECTIONS, &everything).reports);
    reports.extend(attach(Feature::UdpPeers, &features::UDP_PEERS, &everything).reports);
    reports.extend(attach(Feature::Rtt, &features::RTT_SAMPLES, &everything).reports);
    reports.extend(attach(Feature::Retransmits, &features::RETRANSMITS, &everything).reports);
    reports.extend(attach(Feature::Processes, &features::PROCESS_EVENTS, &everything).reports);
    let dns_wanted = |_: &Variant| {
        if settings.dns_ports.is_empty() { Err("turned off (dns.ports is empty)".to_owned()) } else { Ok(()) }
    };
    let dns = attach(Feature::Dns, &features::DNS_PACKETS, &dns_wanted).reports;
    reports.extend(dns);
    reports.push(http_report(&layout, settings, byte_counter, support.task_regs.as_deref()));
    let tls = settings.tls.then(|| {
        let mut attacher = TlsAttacher::new(settings.tls_emulated_probes);
        match tls::load(&mut ebpf) {
            Ok(()) => attacher.scan_all(&mut ebpf),
            Err(why) => attacher.refused = Some(why),
        }
        reports.push(attacher.report());
        attacher
    });
    if bytes.attached.is_none() {
        // Everything else was tried too, so that `flowtel status` shows the whole table.
        let why = reports
            .iter()
            .filter(|r| r.feature == Feature::Bytes)
            .map(|r| format!("{} ({}): {}", r.program, r.hook, state_text(&r.state)));
        let why = why.collect::<Vec<_>>().join("; ");
        return Err(ProbeError::NoByteCounter { why, reports });
    }
    let datagram_hooks = reports.iter().any(|r| r.feature == Feature::UdpPeers && r.state == ProbeState::Attached);
    if datagram_hooks {
        // Only now is a datagram without a noted peer a loss (`lost::PEER_UNKNOWN`).
        let control = ebpf.map_mut("CONTROL").ok_or_else(|| ProbeError::Load("no map CONTROL".into()))?;
        let mut control: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(control).map_err(|err| ProbeError::Load(format!("map CONTROL: {err}")))?;
        control
            .set(flowtel_probes_abi::control::DATAGRAM_HOOKS, 1, 0)
            .map_err(|err| ProbeError::Load(format!("map CONTROL: {err}")))?;
    }
    Ok(Probes { ebpf, reports, tls })
}

fn attach_mode_allows(mode: AttachMode, variant: &Variant) -> Result<(), String> {
    match (mode, variant.name) {
        (AttachMode::Tracepoints, "kprobes" | "fentry") => Err("probes.attach_mode is tracepoints".into()),
        (AttachMode::Fentry, name) if name != "fentry" => Err("probes.attach_mode is fentry".into()),
        (AttachMode::Kprobes, name) if name != "kprobes" => Err("probes.attach_mode is kprobes".into()),
        _ => Ok(()),
    }
}

pub fn state_text(state: &ProbeState) -> String {
    match state {
        ProbeState::Attached => "attached".to_owned(),
        ProbeState::Standby => "verified, standby (a better hook is attached)".to_owned(),
        ProbeState::Spare => "standby, not loaded (a better hook is attached; flowtel status verifies it)".to_owned(),
        ProbeState::Failed(why) => format!("failed: {why}"),
    }
}

/// Clear-text HTTP runs inside the byte counters (it rides on their per-socket lookup),
/// so it is on when one is attached and the syscall's registers can be read.
fn http_report(layout: &Layout, settings: &ProbeSettings, byte_counter: &str, no_regs: Option<&str>) -> ProbeReport {
    let state = match (settings.http_capture_bytes, layout.config.http_capture_bytes, byte_counter, no_regs) {
        (0, _, _, _) => ProbeState::Failed("turned off (http.capture_bytes is 0)".into()),
        (_, 0, _, _) => ProbeState::Failed("no syscall registers known for this architecture".into()),
        (_, _, "none", _) => ProbeState::Failed("no byte counter attached".into()),
        (_, _, _, Some(why)) => ProbeState::Failed(format!("needs bpf_task_pt_regs (Linux 5.15+): {why}")),
        _ => ProbeState::Attached,
    };
    ProbeReport {
        feature: Feature::Http,
        variant: "in the byte counters",
        program: "http",
        hook: format!("in the {byte_counter} byte counters (request and status lines)"),
        state,
    }
}
