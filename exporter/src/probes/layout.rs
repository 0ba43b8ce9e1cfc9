//! The running kernel's layout, as the probes need it: tracepoint field offsets from
//! tracefs, `struct sock` / `struct tcp_sock` member offsets from BTF.
use flowtel_probes_abi::{ProbeConfig, dns, http};

use super::{
    btf::{Btf, BtfError, Param},
    tracefs::{Format, TracefsError},
};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("{0} does not fit the 16-bit offset the probes use")]
    TooFar(String),
}

/// `dns_ports`: at most `dns::PORTS_MAX` (the configuration is validated before this).
pub fn resolve(
    rtt_sample_gap_ns: u64,
    dns_ports: &[u16],
    http_capture_bytes: u16,
    tls: bool,
) -> Result<ProbeConfig, LayoutError> {
    let state = Format::read("sock", "inet_sock_set_state")?;
    let retransmit = Format::read("tcp", "tcp_retransmit_skb").ok();
    let probe = Format::read("tcp", "tcp_probe").ok();
    // sock_send_length and sock_recv_length are declared from one event class, so one
    // format serves both; absent before Linux 6.3 (the kprobe fallback ignores them).
    let length = Format::read("sock", "sock_send_length").ok();
    let btf = Btf::from_kernel()?;
    let sock = |member: &str| offset16(&btf, "sock", member);
    let length_field = |field| length.as_ref().map_or(Ok(0), |f| f.offset(field));
    let mut ports = [0; dns::PORTS_MAX];
    for (slot, &port) in ports.iter_mut().zip(dns_ports) {
        *slot = port;
    }
    let regs = syscall_registers(&btf);
    Ok(ProbeConfig {
        rtt_sample_gap_ns,
        state_skaddr: state.offset("skaddr")?,
        state_oldstate: state.offset("oldstate")?,
        state_newstate: state.offset("newstate")?,
        state_protocol: state.offset("protocol")?,
        length_sk: length_field("sk")?,
        length_protocol: length_field("protocol")?,
        length_ret: length_field("ret")?,
        length_flags: length_field("flags")?,
        retransmit_skaddr: retransmit.as_ref().map_or(Ok(0), |f| f.offset("skaddr"))?,
        sock_family: sock("__sk_common.skc_family")?,
        sock_num: sock("__sk_common.skc_num")?,
        sock_dport: sock("__sk_common.skc_dport")?,
        sock_rcv_saddr: sock("__sk_common.skc_rcv_saddr")?,
        sock_daddr: sock("__sk_common.skc_daddr")?,
        sock_v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr")?,
        sock_v6_daddr: sock("__sk_common.skc_v6_daddr")?,
        sock_err: sock("sk_err")?,
        sock_userlocks: sock("sk_userlocks")?,
        tcp_srtt_us: offset16(&btf, "tcp_sock", "srtt_us")?,
        tcp_mdev_us: offset16(&btf, "tcp_sock", "mdev_us")?,
        probe_skaddr: probe.as_ref().map_or(Ok(0), |f| f.offset("skaddr"))?,
        probe_srtt: probe.as_ref().map_or(Ok(0), |f| f.offset("srtt"))?,
        tcp_total_retrans: offset16(&btf, "tcp_sock", "total_retrans")?,
        // A bit field before Linux 5.6: then only the classic tracepoints can be used.
        sock_protocol: offset16(&btf, "sock", "sk_protocol").unwrap_or(0),
        dns_ports: ports,
        // Optional: without them a process is named by the thread that made the flow.
        task_group_leader: offset16(&btf, "task_struct", "group_leader").unwrap_or(0),
        task_comm: offset16(&btf, "task_struct", "comm").unwrap_or(0),
        regs_syscall_nr: regs.map_or(0, |r| r.number),
        regs_arg0: regs.map_or(0, |r| r.args[0]),
        regs_arg1: regs.map_or(0, |r| r.args[1]),
        syscalls: socket_syscalls(),
        // Without the registers the probe cannot find a buffer: clear-text HTTP is off.
        http_capture_bytes: if regs.is_some() { http_capture_bytes } else { 0 },
        tls_enabled: u8::from(tls),
        _pad: [0; 3],
    })
}

/// Where `struct pt_regs` keeps a syscall's number and first arguments.
#[derive(Clone, Copy, Debug)]
pub struct SyscallRegisters {
    pub number: u16,
    pub args: [u16; 2],
}

/// Resolved from BTF by this architecture's member names; `None` on an architecture
/// the HTTP probe does not know yet (it then reports clear-text HTTP as off).
pub fn syscall_registers(btf: &Btf) -> Option<SyscallRegisters> {
    let (number, arg0, arg1) = match std::env::consts::ARCH {
        "x86_64" => ("orig_ax", "di", "si"),
        "aarch64" => ("syscallno", "regs", "regs"),
        _ => return None,
    };
    let at = |member| offset16(btf, "pt_regs", member).ok();
    // arm64 keeps x0..x30 in one array: the second argument is 8 bytes after the first.
    let step = if arg0 == arg1 { 8 } else { 0 };
    Some(SyscallRegisters { number: at(number)?, args: [at(arg0)?, at(arg1)? + step] })
}

/// This architecture's syscall numbers, in `http::syscall` order.
fn socket_syscalls() -> [u16; http::syscall::COUNT] {
    let mut numbers = [http::syscall::ABSENT; http::syscall::COUNT];
    for (index, nr) in [
        (http::syscall::READ, libc::SYS_read),
        (http::syscall::WRITE, libc::SYS_write),
        (http::syscall::SENDTO, libc::SYS_sendto),
        (http::syscall::RECVFROM, libc::SYS_recvfrom),
        (http::syscall::READV, libc::SYS_readv),
        (http::syscall::WRITEV, libc::SYS_writev),
        (http::syscall::SENDMSG, libc::SYS_sendmsg),
        (http::syscall::RECVMSG, libc::SYS_recvmsg),
    ] {
        numbers[index] = u16::try_from(nr).unwrap_or(http::syscall::ABSENT);
    }
    numbers
}

/// Which raw tracepoints the running kernel declares with the prototype the raw
/// programs read (checked in BTF; a mismatch means the classic tracepoint is used).
pub fn raw_tracepoints_usable(config: &ProbeConfig) -> RawSupport {
    let Ok(btf) = Btf::from_kernel() else { return RawSupport::default() };
    let sock = || Param::Pointer("sock".into());
    let length = [sock(), Param::Int(4), Param::Int(4)];
    let ok = |event: &str, expected: &[Param]| btf.raw_tracepoint_params(event).is_some_and(|p| p == expected);
    RawSupport {
        lengths: config.sock_protocol != 0 && ok("sock_send_length", &length) && ok("sock_recv_length", &length),
        tcp_probe: ok("tcp_probe", &[sock(), Param::Pointer("sk_buff".into())]),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RawSupport {
    pub lengths: bool,
    pub tcp_probe: bool,
}

fn offset16(btf: &Btf, strukt: &str, member: &str) -> Result<u16, LayoutError> {
    let offset = btf.offset_of(strukt, member)?;
    u16::try_from(offset).map_err(|_| LayoutError::TooFar(format!("{strukt}.{member} at {offset}")))
}
