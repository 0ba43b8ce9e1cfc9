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

/// A piece of the running kernel's layout that some probes need and the kernel may
/// lack; the feature table (features.rs) names what each variant needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// `sock:inet_sock_set_state`'s fields.
    StateFormat,
    /// `sock:sock_send_length`'s fields (Linux 6.3+).
    LengthFormat,
    /// The raw `sock_send_length`/`sock_recv_length` prototypes in BTF, and
    /// `sock.sk_protocol` as a whole member.
    RawLengths,
    /// `tcp:tcp_retransmit_skb`'s `skaddr`.
    RetransmitFormat,
    /// `tcp:tcp_probe`'s `skaddr` and `srtt` (6.1 and 5.10 have neither `skaddr`).
    ProbeFormat,
    /// The raw `tcp_probe` prototype (sk, skb) in BTF.
    RawTcpProbe,
    /// `tcp_sock.srtt_us` and `mdev_us`.
    TcpRtt,
    /// `tcp_sock.total_retrans`.
    TotalRetrans,
    /// cgroup skb programs may call the current-task helpers (support.rs).
    SkbTaskHelpers,
    /// cgroup skb programs may key a map by `skb->sk` (support.rs).
    SocketOwners,
}

/// The running kernel's layout for the probes, and what it lacks, with the reason.
pub struct Layout {
    pub config: ProbeConfig,
    pub missing: Vec<(Need, String)>,
}

impl Layout {
    pub fn lacks(&self, need: Need) -> Option<&str> {
        self.missing.iter().find(|(n, _)| *n == need).map(|(_, why)| why.as_str())
    }
}

/// `dns_ports`: at most `dns::PORTS_MAX` (the configuration is validated before this).
/// Fails only when the socket members every probe reads are missing; anything else is
/// noted in [`Layout::missing`] and its offset left 0.
#[expect(clippy::too_many_lines, reason = "one field per line of the config it fills, in its order")]
pub fn resolve(
    rtt_sample_gap_ns: u64,
    dns_ports: &[u16],
    http_capture_bytes: u16,
    tls: bool,
) -> Result<Layout, LayoutError> {
    let btf = Btf::from_kernel()?;
    let mut missing = Vec::new();
    let mut field = |need: Need, format: &Result<Format, TracefsError>, name: &str| -> u16 {
        match format.as_ref().map(|f| f.offset(name)) {
            Ok(Ok(offset)) => offset,
            Ok(Err(err)) => {
                missing.push((need, err.to_string()));
                0
            }
            Err(err) => {
                missing.push((need, err.to_string()));
                0
            }
        }
    };
    let state = Format::read("sock", "inet_sock_set_state");
    let retransmit = Format::read("tcp", "tcp_retransmit_skb");
    let probe = Format::read("tcp", "tcp_probe");
    // sock_send_length and sock_recv_length are declared from one event class, so one
    // format serves both; absent before Linux 6.3.
    let length = Format::read("sock", "sock_send_length");
    let (state_skaddr, state_oldstate, state_newstate, state_protocol) = (
        field(Need::StateFormat, &state, "skaddr"),
        field(Need::StateFormat, &state, "oldstate"),
        field(Need::StateFormat, &state, "newstate"),
        field(Need::StateFormat, &state, "protocol"),
    );
    let (length_sk, length_protocol, length_ret, length_flags) = (
        field(Need::LengthFormat, &length, "sk"),
        field(Need::LengthFormat, &length, "protocol"),
        field(Need::LengthFormat, &length, "ret"),
        field(Need::LengthFormat, &length, "flags"),
    );
    let retransmit_skaddr = field(Need::RetransmitFormat, &retransmit, "skaddr");
    let (probe_skaddr, probe_srtt) =
        (field(Need::ProbeFormat, &probe, "skaddr"), field(Need::ProbeFormat, &probe, "srtt"));
    let mut member = |need: Need, strukt: &str, path: &str| match offset16(&btf, strukt, path) {
        Ok(offset) => offset,
        Err(err) => {
            missing.push((need, err.to_string()));
            0
        }
    };
    let (tcp_srtt_us, tcp_mdev_us) =
        (member(Need::TcpRtt, "tcp_sock", "srtt_us"), member(Need::TcpRtt, "tcp_sock", "mdev_us"));
    let tcp_total_retrans = member(Need::TotalRetrans, "tcp_sock", "total_retrans");
    // A bit field before Linux 5.6: then only the classic tracepoints can be used.
    let sock_protocol = member(Need::RawLengths, "sock", "sk_protocol");
    let sock = |path: &str| offset16(&btf, "sock", path);
    let userlocks = UserLocks::resolve(&btf)?;
    let mut ports = [0; dns::PORTS_MAX];
    for (slot, &port) in ports.iter_mut().zip(dns_ports) {
        *slot = port;
    }
    let regs = syscall_registers(&btf);
    let config = ProbeConfig {
        rtt_sample_gap_ns,
        state_skaddr,
        state_oldstate,
        state_newstate,
        state_protocol,
        length_sk,
        length_protocol,
        length_ret,
        length_flags,
        retransmit_skaddr,
        sock_family: sock("__sk_common.skc_family")?,
        sock_num: sock("__sk_common.skc_num")?,
        sock_dport: sock("__sk_common.skc_dport")?,
        sock_rcv_saddr: sock("__sk_common.skc_rcv_saddr")?,
        sock_daddr: sock("__sk_common.skc_daddr")?,
        sock_v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr")?,
        sock_v6_daddr: sock("__sk_common.skc_v6_daddr")?,
        sock_err: sock("sk_err")?,
        sock_userlocks: userlocks.window,
        tcp_srtt_us,
        tcp_mdev_us,
        probe_skaddr,
        probe_srtt,
        tcp_total_retrans,
        sock_protocol,
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
        sock_userlocks_shift: userlocks.shift,
        sock_userlocks_bits: userlocks.bits,
        // Set from what the kernel accepts (support.rs), after this.
        skb_task_helpers: 0,
        task_regs: 0,
        dns_owner_by_socket: 0,
        _pad: [0; 6],
    };
    let raw = RawSupport::check(&btf);
    if !raw.lengths {
        missing.push((Need::RawLengths, "BTF does not declare sock_send_length(sk, ret, flags)".into()));
    }
    if !raw.tcp_probe {
        missing.push((Need::RawTcpProbe, "BTF does not declare tcp_probe(sk, skb)".into()));
    }
    Ok(Layout { config, missing })
}

/// Where `sock.sk_userlocks` is: a 4-bit field before Linux 6.2, a `u8` since.
/// <https://elixir.bootlin.com/linux/v6.1/source/include/net/sock.h#L475>
struct UserLocks {
    window: u16,
    shift: u8,
    bits: u8,
}

impl UserLocks {
    fn resolve(btf: &Btf) -> Result<Self, LayoutError> {
        let (bit_offset, width) = btf.bits_of("sock", "sk_userlocks")?;
        let window = u16::try_from(bit_offset / 8)
            .map_err(|_| LayoutError::TooFar(format!("sock.sk_userlocks at bit {bit_offset}")))?;
        let bits = if width == 0 { 8 } else { width };
        let shift = bit_offset % 8;
        // The probe reads 32 bits from `window`; a field must fit in them.
        if shift + bits > 32 {
            return Err(LayoutError::TooFar(format!("sock.sk_userlocks spans {bits} bits from bit {shift}")));
        }
        // Both below 32, checked above.
        Ok(Self { window, shift: u8::try_from(shift).unwrap_or(0), bits: u8::try_from(bits).unwrap_or(8) })
    }
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
#[derive(Clone, Copy, Debug, Default)]
struct RawSupport {
    lengths: bool,
    tcp_probe: bool,
}

impl RawSupport {
    fn check(btf: &Btf) -> Self {
        let sock = || Param::Pointer("sock".into());
        let length = [sock(), Param::Int(4), Param::Int(4)];
        let ok = |event: &str, expected: &[Param]| btf.raw_tracepoint_params(event).is_some_and(|p| p == expected);
        Self {
            lengths: ok("sock_send_length", &length) && ok("sock_recv_length", &length),
            tcp_probe: ok("tcp_probe", &[sock(), Param::Pointer("sk_buff".into())]),
        }
    }
}

fn offset16(btf: &Btf, strukt: &str, member: &str) -> Result<u16, LayoutError> {
    let offset = btf.offset_of(strukt, member)?;
    u16::try_from(offset).map_err(|_| LayoutError::TooFar(format!("{strukt}.{member} at {offset}")))
}
