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
    _pad: [0; 2],
};

/// The configuration as patched by user space. A volatile read keeps the compiler from
/// folding in the zeroes above.
#[inline(always)]
pub fn config() -> ProbeConfig {
    // SAFETY: a plain read of a static that lives in the object's read-only data.
    unsafe { core::ptr::read_volatile(&raw const FLOWTEL_CONFIG) }
}
