//! The start-up facts user space hands the probes (offsets, sampling gap), as one
//! read-only global that aya patches before load.
use flowtel_probes_abi::ProbeConfig;

#[unsafe(no_mangle)]
static FLOWTEL_CONFIG: ProbeConfig = ProbeConfig {
    rtt_sample_gap_ns: 0,
    state_skaddr: 0,
    state_oldstate: 0,
    state_newstate: 0,
    state_protocol: 0,
    length_sk: 0,
    length_protocol: 0,
    length_ret: 0,
    length_flags: 0,
    retransmit_skaddr: 0,
    sock_family: 0,
    sock_num: 0,
    sock_dport: 0,
    sock_rcv_saddr: 0,
    sock_daddr: 0,
    sock_v6_rcv_saddr: 0,
    sock_v6_daddr: 0,
    sock_err: 0,
    sock_userlocks: 0,
    tcp_srtt_us: 0,
    tcp_mdev_us: 0,
    probe_skaddr: 0,
    probe_srtt: 0,
    tcp_total_retrans: 0,
    sock_protocol: 0,
    dns_ports: [0; flowtel_probes_abi::dns::PORTS_MAX],
    task_group_leader: 0,
    task_comm: 0,
    regs_syscall_nr: 0,
    regs_arg0: 0,
    regs_arg1: 0,
    syscalls: [0; flowtel_probes_abi::http::syscall::COUNT],
    http_capture_bytes: 0,
    tls_enabled: 0,
    sock_userlocks_shift: 0,
    sock_userlocks_bits: 0,
    skb_task_helpers: 0,
    task_regs: 0,
    dns_owner_by_socket: 0,
    _pad: [0; 6],
};

/// The configuration as patched by user space, by reference: a copy would cost ~100
/// bytes of each program's 512-byte stack. The address goes through a volatile read, so
/// the compiler cannot see which static it points to and fold in the zeroes above.
#[inline(always)]
pub fn config() -> &'static ProbeConfig {
    let address: *const ProbeConfig = &raw const FLOWTEL_CONFIG;
    // SAFETY: a volatile read of a local; the pointer it yields is to a static that
    // lives, read-only, for the whole program.
    unsafe { &*core::ptr::read_volatile(&raw const address) }
}
