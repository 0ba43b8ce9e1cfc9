//! Every map the probes share with user space, and the loss counter.
use crate::{config::config, dns_asked::AskedSend};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use flowtel_probes_abi::{
    DatagramPeer, DnsPacket, FlowKey, FlowStats, HttpChunk, ProcessSeen, SocketInfo, SocketKey, SocketTraffic, TlsCall,
    control, dns, http, lost,
};

/// Default sizes; user space resizes them from its configuration before load.
const FLOW_TABLE_ENTRIES: u32 = 8_192;
const SOCKET_TABLE_ENTRIES: u32 = 32_768;

/// Two flow tables: the probes add into the active one while user space drains the
/// other, so a drain never races an update and nothing is lost between intervals.
#[map]
pub static FLOWS_0: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);
#[map]
pub static FLOWS_1: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// TCP bytes per socket and process, double-buffered like the flow tables. The hot
/// path (every send and receive) costs one lookup with a 16-byte key here.
#[map]
pub static TRAFFIC_0: HashMap<SocketKey, SocketTraffic> = HashMap::with_max_entries(SOCKET_TABLE_ENTRIES, 0);
#[map]
pub static TRAFFIC_1: HashMap<SocketKey, SocketTraffic> = HashMap::with_max_entries(SOCKET_TABLE_ENTRIES, 0);

/// TCP sockets seen open, keyed by `struct sock *`; removed when the socket closes.
#[map]
pub static SOCKETS: HashMap<u64, SocketInfo> = HashMap::with_max_entries(SOCKET_TABLE_ENTRIES, 0);

/// `comm` and cgroup of each process that created a flow, so that a process which exited
/// before the next drain (a 5 ms curl) is still named and placed. LRU: old entries may
/// go, never new ones.
#[map]
pub static PROCESSES_SEEN: LruHashMap<u32, ProcessSeen> = LruHashMap::with_max_entries(8_192, 0);

/// Pids that exec'd since user space last looked: their identity is read afresh. A
/// plain hash, emptied at each read: a burst beyond it fails to insert and is counted
/// (`lost::EXEC_TABLE_FULL`), where an LRU would push out older entries uncounted.
#[map]
pub static EXECED: HashMap<u32, u8> = HashMap::with_max_entries(4_096, 0);

/// Pids of processes that made flows and exited since user space last looked; like
/// `EXECED` (an exit that does not fit is counted, and found later through /proc).
#[map]
pub static EXITED: HashMap<u32, u8> = HashMap::with_max_entries(4_096, 0);

/// Peer of the datagram being sent or received on each thread (unconnected UDP). LRU,
/// so entries of threads that exited make room by themselves.
#[map]
pub static DATAGRAM_PEERS: LruHashMap<u64, DatagramPeer> = LruHashMap::with_max_entries(16_384, 0);

/// The process behind each UDP socket (keyed by `struct sock *`), noted by the cgroup
/// connect and sendmsg hooks in process context, for the DNS probe on kernels whose
/// cgroup skb programs cannot ask for the current task (6.1 and older). LRU: a socket
/// gone makes room by itself; a reused address is noted afresh at its next connect or send.
#[map]
pub static SOCKET_OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The socket of each thread inside a send function, between the kprobe fallback's
/// entry and return probes (fallback.rs). LRU: a thread killed mid-call ages out.
#[map]
pub static SENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Bytes the thread's `tcp_recvmsg` in progress has counted so far (fallback.rs): the
/// kernel reports them cumulatively, once per wait and at the end.
#[map]
pub static RECEIVING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The `sendto` address of this CPU's latest unconnected UDP send to a DNS port, for the
/// DNS egress probe (`dns_asked.rs`); the sendmsg hooks write it.
#[map]
pub static DNS_ASKED_SEND: PerCpuArray<AskedSend> = PerCpuArray::with_max_entries(1, 0);

/// Written by user space: which flow table is active (`control::ACTIVE_TABLE`).
#[map]
pub static CONTROL: Array<u32> = Array::with_max_entries(control::COUNT, 0);

/// One zeroed `FlowStats`, the initial value of a new flow (kept out of the 512-byte stack).
#[map]
pub static ZERO_STATS: Array<FlowStats> = Array::with_max_entries(1, 0);

/// DNS packets for user space (dns.rs). User space sizes it from its configuration.
#[map]
pub static DNS_PACKETS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// One DNS packet being assembled, per CPU (2 KiB does not fit the BPF stack).
#[repr(C)]
pub struct DnsScratch {
    pub header: DnsPacket,
    pub payload: [u8; dns::PAYLOAD_MAX],
    /// 1 while a program fills the slot: one that interrupts it on this CPU (a softirq,
    /// a preempting task) must not overwrite it, and counts its loss instead.
    pub busy: u32,
}

#[map]
pub static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);

/// HTTP payload starts for user space (http.rs, tls.rs). User space sizes it.
#[map]
pub static HTTP_CHUNKS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Written by user space: 1 while it reads `HTTP_CHUNKS`, so the close events the flow
/// probes send (http.rs `connection_closed`) never fill a ring no one drains.
#[map]
pub static HTTP_READER: Array<u32> = Array::with_max_entries(1, 0);

/// One HTTP payload being assembled; two slots per CPU (http.rs `free_scratch`).
#[repr(C)]
pub struct HttpScratch {
    pub header: HttpChunk,
    pub payload: [u8; http::CAPTURE_MAX],
    /// As [`DnsScratch::busy`].
    pub busy: u32,
}

#[map]
pub static HTTP_SCRATCH: PerCpuArray<HttpScratch> = PerCpuArray::with_max_entries(2, 0);

/// OpenSSL calls in flight, per thread (tls.rs). LRU: a thread killed inside a call
/// leaves an entry that ages out.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16_384, 0);

/// OpenSSL calls in flight on the host (tls.rs), one slot shared by all CPUs.
#[map]
pub static TLS_IN_FLIGHT: Array<i64> = Array::with_max_entries(1, 0);

/// `SSL *` to `struct sock *`, learnt while an OpenSSL call does its socket I/O.
#[map]
pub static SSL_SOCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Events the kernel side had to drop, per cause (`lost::*`), summed by user space.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

#[inline(always)]
pub fn count_lost(cause: u32) {
    if let Some(slot) = LOST.get_ptr_mut(cause) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// Records the current process's name and cgroup. Called only on rare events in
/// process context (a new flow, a connect, a socket changing owner, an exec), never
/// per send. A function of its own: inlined, its frame would join every caller's.
#[inline(never)]
pub fn remember_process_name(pid: u32) {
    if let Some(comm) = leader_comm().or_else(|| bpf_get_current_comm().ok()) {
        // SAFETY: no preconditions; available to tracing programs since Linux 4.18.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let _ = PROCESSES_SEEN.insert(pid, ProcessSeen { cgroup_id, comm }, 0);
    }
}

/// The thread group leader's `comm`: the process's name, whichever thread runs (a
/// worker thread's own comm is often something like "isc-net-0000").
#[inline(always)]
fn leader_comm() -> Option<[u8; 16]> {
    let cfg = config();
    if cfg.task_group_leader == 0 || cfg.task_comm == 0 {
        return None;
    }
    // SAFETY: bpf_get_current_task has no preconditions; the reads go through
    // bpf_probe_read_kernel, which validates the addresses.
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = unsafe { bpf_probe_read_kernel((task + u64::from(cfg.task_group_leader)) as *const u64) }.ok()?;
    unsafe { bpf_probe_read_kernel((leader + u64::from(cfg.task_comm)) as *const [u8; 16]) }.ok()
}

/// The flag for a ring buffer output. Waking the reader costs more than a whole probe
/// (an irq_work and a task switch per record, about 2 µs), so the readers poll on a
/// short timer and are woken only when a quarter of the buffer is in use.
/// <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/ringbuf.c#L561> (flags >= 5.8)
#[inline(always)]
pub fn wakeup_flag(ring: &RingBuf) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_RING_SIZE: u64 = 1;
    if ring.query(BPF_RB_AVAIL_DATA) > ring.query(BPF_RB_RING_SIZE) / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
