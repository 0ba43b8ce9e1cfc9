//! One kernel program and the hook it attaches to: load it through the verifier,
//! attach it, take it down again. Failures come back as text for the probe report
//! (the verifier's first and last lines), never as an error that stops the agent:
//! which failures matter is the feature table's decision (features.rs).
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, FEntry, FExit, KProbe, ProgramError,
        RawTracePoint, TracePoint,
    },
};

use super::tracefs;

pub struct Hook {
    pub program: &'static str,
    pub kind: HookKind,
    /// A hook the feature can do without where the kernel lacks its function (say
    /// `tcp_sendpage`, gone in 6.5 when sendfile moved to `tcp_sendmsg`).
    pub optional: bool,
}

pub enum HookKind {
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint: the `TP_PROTO` arguments, no trace record built.
    Raw(&'static str),
    /// A cgroup `sock_addr` hook at the cgroup v2 root (the type is in the program's section).
    Cgroup,
    /// A cgroup skb hook at the cgroup v2 root.
    CgroupSkb(CgroupSkbAttachType),
    /// A kprobe, or a kretprobe (the program's section says which) on this function.
    Kprobe(&'static str),
    /// A BTF trampoline at this function's entry or exit (Linux 5.5+; arm64 6.0+).
    FEntry(&'static str),
    FExit(&'static str),
}

impl Hook {
    pub const fn new(program: &'static str, kind: HookKind) -> Self {
        Self { program, kind, optional: false }
    }

    pub const fn optional(program: &'static str, kind: HookKind) -> Self {
        Self { program, kind, optional: true }
    }

    pub fn describe(&self) -> String {
        match self.kind {
            HookKind::Tracepoint(category, name) => format!("tracepoint {category}:{name}"),
            HookKind::Raw(name) => format!("raw_tracepoint {name}"),
            HookKind::Cgroup => {
                format!("cgroup/{}", self.program.trim_start_matches("datagram_").trim_start_matches("socket_"))
            }
            HookKind::CgroupSkb(CgroupSkbAttachType::Egress) => "cgroup_skb/egress".into(),
            HookKind::CgroupSkb(CgroupSkbAttachType::Ingress) => "cgroup_skb/ingress".into(),
            HookKind::Kprobe(function) if self.program.ends_with("_return") => format!("kretprobe {function}"),
            HookKind::Kprobe(function) => format!("kprobe {function}"),
            HookKind::FEntry(function) => format!("fentry {function}"),
            HookKind::FExit(function) => format!("fexit {function}"),
        }
    }

    /// Why this hook cannot exist on the running kernel, if it cannot.
    pub fn missing(&self) -> Option<String> {
        match self.kind {
            HookKind::Tracepoint(category, name) if !tracefs::event_exists(category, name) => {
                Some(format!("no tracepoint {category}:{name} on this kernel"))
            }
            HookKind::Cgroup | HookKind::CgroupSkb(_) if crate::mounts::cgroup2_root().is_none() => {
                Some("no cgroup v2 hierarchy mounted".into())
            }
            HookKind::Kprobe(_) if !kprobes_available() => {
                Some("the kernel has no kprobes (CONFIG_KPROBE_EVENTS)".into())
            }
            _ => None,
        }
    }

    /// Loads the program through the verifier.
    pub fn load(&self, ebpf: &mut Ebpf) -> Result<(), String> {
        let program =
            ebpf.program_mut(self.program).ok_or_else(|| format!("no program {} in the object", self.program))?;
        let result = match self.kind {
            HookKind::Tracepoint(..) => <&mut TracePoint>::try_from(program).and_then(TracePoint::load),
            HookKind::Raw(_) => <&mut RawTracePoint>::try_from(program).and_then(RawTracePoint::load),
            HookKind::Cgroup => <&mut CgroupSockAddr>::try_from(program).and_then(CgroupSockAddr::load),
            HookKind::CgroupSkb(_) => <&mut CgroupSkb>::try_from(program).and_then(CgroupSkb::load),
            HookKind::Kprobe(_) => <&mut KProbe>::try_from(program).and_then(KProbe::load),
            HookKind::FEntry(function) => {
                let btf = kernel_btf()?;
                <&mut FEntry>::try_from(program).and_then(|p| p.load(function, btf))
            }
            HookKind::FExit(function) => {
                let btf = kernel_btf()?;
                <&mut FExit>::try_from(program).and_then(|p| p.load(function, btf))
            }
        };
        result.map_err(|err| refusal(&err))
    }

    pub fn attach(&self, ebpf: &mut Ebpf) -> Result<(), String> {
        let program =
            ebpf.program_mut(self.program).ok_or_else(|| format!("no program {} in the object", self.program))?;
        let attached = match self.kind {
            HookKind::Tracepoint(category, name) => {
                <&mut TracePoint>::try_from(program).and_then(|tp| tp.attach(category, name)).map(drop)
            }
            HookKind::Raw(name) => <&mut RawTracePoint>::try_from(program).and_then(|raw| raw.attach(name)).map(drop),
            HookKind::Cgroup => {
                let root = cgroup_root().map_err(|err| with_sources(&err))?;
                // aya attaches through a bpf_link (Linux 5.7+), which always coexists
                // with other tools' programs (meshes, socket load balancers); the link
                // API takes no mode flags, so `Single` (0) is the one that works.
                <&mut CgroupSockAddr>::try_from(program)
                    .and_then(|hook| hook.attach(&root, CgroupAttachMode::Single))
                    .map(drop)
            }
            HookKind::CgroupSkb(attach_type) => {
                let root = cgroup_root().map_err(|err| with_sources(&err))?;
                <&mut CgroupSkb>::try_from(program)
                    .and_then(|hook| hook.attach(&root, attach_type, CgroupAttachMode::Single))
                    .map(drop)
            }
            HookKind::Kprobe(function) => {
                <&mut KProbe>::try_from(program).and_then(|kp| kp.attach(function, 0)).map(drop)
            }
            HookKind::FEntry(_) => <&mut FEntry>::try_from(program).and_then(FEntry::attach).map(drop),
            HookKind::FExit(_) => <&mut FExit>::try_from(program).and_then(FExit::attach).map(drop),
        };
        attached.map_err(|err| with_sources(&err))
    }

    /// Takes the program out of the kernel again (its links with it): a variant that
    /// attached only in part must not count half its events.
    pub fn unload(&self, ebpf: &mut Ebpf) {
        let Some(program) = ebpf.program_mut(self.program) else { return };
        let _ = match self.kind {
            HookKind::Tracepoint(..) => <&mut TracePoint>::try_from(program).and_then(TracePoint::unload),
            HookKind::Raw(_) => <&mut RawTracePoint>::try_from(program).and_then(RawTracePoint::unload),
            HookKind::Cgroup => <&mut CgroupSockAddr>::try_from(program).and_then(CgroupSockAddr::unload),
            HookKind::CgroupSkb(_) => <&mut CgroupSkb>::try_from(program).and_then(CgroupSkb::unload),
            HookKind::Kprobe(_) => <&mut KProbe>::try_from(program).and_then(KProbe::unload),
            HookKind::FEntry(_) => <&mut FEntry>::try_from(program).and_then(FEntry::unload),
            HookKind::FExit(_) => <&mut FExit>::try_from(program).and_then(FExit::unload),
        };
    }
}

/// The running kernel's BTF in aya's form, parsed once: fentry/fexit programs are
/// loaded against the traced function's type.
fn kernel_btf() -> Result<&'static aya::Btf, String> {
    static BTF: std::sync::OnceLock<Result<aya::Btf, String>> = std::sync::OnceLock::new();
    BTF.get_or_init(|| aya::Btf::from_sys_fs().map_err(|err| format!("cannot read kernel BTF: {err}")))
        .as_ref()
        .map_err(Clone::clone)
}

fn cgroup_root() -> Result<std::fs::File, ProgramError> {
    let root = crate::mounts::cgroup2_root().ok_or_else(|| {
        ProgramError::IOError(std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup v2 hierarchy mounted"))
    })?;
    std::fs::File::open(root).map_err(ProgramError::IOError)
}

/// Whether this kernel can attach kprobes at all (`CONFIG_KPROBE_EVENTS`).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

/// Why the kernel refused a program: the syscall's error and the verifier's first and
/// last lines (the last is the reason; statistics lines after it are skipped).
pub fn refusal(err: &ProgramError) -> String {
    let ProgramError::LoadError { io_error, verifier_log } = err else { return with_sources(err) };
    let log = verifier_log.to_string();
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let is_statistics = |line: &&str| {
        line.starts_with("processed ") || line.starts_with("verification time") || line.starts_with("stack depth")
    };
    let reason = lines.iter().rev().find(|l| !is_statistics(l));
    match (lines.first(), reason) {
        (Some(first), Some(last)) if first != last => format!("verifier: {first} ... {last} ({io_error})"),
        (_, Some(last)) => format!("verifier: {last} ({io_error})"),
        _ => format!("refused by the kernel: {io_error}"),
    }
}

/// An error with its causes (aya's messages name the call, the source names the errno).
pub fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
