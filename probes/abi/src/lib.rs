//! The types flowtel's kernel programs and user space exchange through maps and globals.
//!
//! Everything here is `#[repr(C)]`, made of fixed-width integers with explicit padding, so
//! that the BPF object and the agent agree byte for byte. Enumerations travel as `u8`
//! constants; user space turns them into Rust enums with `TryFrom`.
#![no_std]

use core::mem::size_of;

/// `network.type`, as carried in [`FlowKey::family`].
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// `network.transport`, as carried in [`FlowKey::protocol`] (IANA protocol numbers).
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// `flowtel.flow.direction`, as carried in [`FlowKey::direction`].
pub mod direction {
    /// This host opened the flow (connect, or a datagram from an ephemeral port).
    pub const OUTGOING: u8 = 1;
    /// The peer opened it (accepted connection, or a datagram to a bound local port).
    pub const INCOMING: u8 = 2;
}

/// Why a TCP connection failed before it was established: index into [`FlowStats::failed`].
pub mod failure {
    pub const REFUSED: usize = 0;
    pub const TIMEOUT: usize = 1;
    pub const RESET: usize = 2;
    pub const OTHER: usize = 3;
    pub const COUNT: usize = 4;
}

/// Where the kernel side lost data: index into the `LOST` per-CPU array.
pub mod lost {
    /// The active flow (or per-socket byte) table was full, so counts were dropped.
    pub const FLOW_TABLE_FULL: u32 = 0;
    /// The socket table was full: the flow is counted, but its owner and
    /// connection-open attribution are lost.
    pub const SOCKET_TABLE_FULL: u32 = 1;
    /// A read of kernel memory failed (a socket freed under us, say).
    pub const KERNEL_READ: u32 = 2;
    /// An unconnected UDP send or receive found no peer noted by the cgroup sock_addr
    /// hooks (pushed out of their per-thread LRU table, or never noted): its bytes are
    /// counted, but without their peer address.
    pub const PEER_UNKNOWN: u32 = 3;
    /// A DNS packet could not be handed to user space: the DNS ring buffer was full.
    pub const DNS_RING_FULL: u32 = 4;
    /// A DNS packet's headers could not be read from the socket buffer.
    pub const DNS_PACKET_READ: u32 = 5;
    /// An exec could not be recorded: that process keeps its old identity.
    pub const EXEC_TABLE_FULL: u32 = 6;
    /// An HTTP payload could not be handed to user space: the HTTP ring buffer was full.
    pub const HTTP_RING_FULL: u32 = 7;
    /// An HTTP payload's bytes could not be read from the process's memory.
    pub const HTTP_READ: u32 = 8;
    /// An OpenSSL call returned whose entry had been pushed out of the per-thread
    /// in-flight table (an LRU) or never made it in: its plaintext is lost.
    pub const TLS_TABLE_FULL: u32 = 9;
    /// An exit could not be recorded: the process's workload is retired later (when
    /// /proc shows it gone) and a process reusing its pid may be taken for it meanwhile.
    pub const EXIT_TABLE_FULL: u32 = 10;
    /// The active per-socket byte table was full: that socket's TCP bytes of the
    /// interval are lost (`probes.socket_table_entries` sizes it).
    pub const SOCKET_BYTES_TABLE_FULL: u32 = 11;
    /// A DNS packet arrived while this CPU's scratch event was being filled by a
    /// packet it interrupted (an ingress softirq inside an egress): it is not copied.
    pub const DNS_SCRATCH_BUSY: u32 = 12;
    /// Likewise an HTTP payload (a preempted uprobe or byte counter on the same CPU).
    pub const HTTP_SCRATCH_BUSY: u32 = 13;
    pub const COUNT: u32 = 14;
}

/// Indexes into the `CONTROL` array that user space writes and the probes read.
pub mod control {
    /// Which of the two flow tables (0 or 1) the probes write to now.
    pub const ACTIVE_TABLE: u32 = 0;
    /// 1 once the cgroup sock_addr hooks that note datagram peers are attached: only
    /// then is an unconnected datagram without a noted peer a loss.
    pub const DATAGRAM_HOOKS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Number of RTT histogram buckets: bucket `i` counts samples in `[2^i, 2^(i+1))` µs;
/// the last one also holds everything above (8.4 s and more).
pub const RTT_BUCKETS: usize = 24;

/// One flow as the kernel aggregates it. The ephemeral side's port is already zero
/// (the local port of an outgoing flow, the peer port of an incoming one), so that
/// every connection between the same two services folds into one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IPv4 in the first four bytes, or IPv6 (possibly v4-mapped), network order.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// The owning process (tgid); 0 when no process context was seen.
    pub pid: u32,
    pub local_port: u16,
    pub peer_port: u16,
    pub family: u8,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FlowKey>() == 44);

/// What the kernel counts for one [`FlowKey`] between two drains of a table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub opened: u64,
    pub closed: u64,
    pub failed: [u64; failure::COUNT],
    /// Sum of the RTT samples in microseconds, for an exact histogram sum.
    pub rtt_sum_us: u64,
    /// The kernel's RTT variation (`mdev_us >> 2`, what `ss -ti` shows) at the last sample.
    pub rttvar_us: u32,
    pub _pad: u32,
    pub rtt_hist: [u64; RTT_BUCKETS],
}
const _: () = assert!(size_of::<FlowStats>() == 280);

impl FlowStats {
    pub const ZERO: Self = Self {
        bytes_sent: 0,
        bytes_received: 0,
        retransmits: 0,
        opened: 0,
        closed: 0,
        failed: [0; failure::COUNT],
        rtt_sum_us: 0,
        rttvar_us: 0,
        _pad: 0,
        rtt_hist: [0; RTT_BUCKETS],
    };
}

impl Default for FlowStats {
    fn default() -> Self {
        Self::ZERO
    }
}

/// What the probes record about a process when it creates a flow, so that one which
/// exits before the next drain (a 5 ms curl) is still named and placed in its container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSeen {
    /// `bpf_get_current_cgroup_id`: the cgroup v2 directory's inode number.
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ProcessSeen>() == 24);

/// Key of the per-socket byte tables: one TCP socket as used by one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketKey {
    /// `struct sock *`, only an identity here.
    pub sk: u64,
    pub pid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SocketKey>() == 16);

/// Bytes of one TCP socket and process since the last drain, with the flow they
/// belong to. Counting per socket costs one small-key lookup per send/recv; user space
/// folds these into flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketTraffic {
    pub flow: FlowKey,
    /// The socket's [`http::verdict`], copied from its [`SocketInfo`] when this entry
    /// was made, so the HTTP sniff is skipped for a socket known not to carry HTTP.
    pub http: u8,
    pub _pad: u8,
    /// The port `flow` leaves zero (the ephemeral side's), host order: with `flow`, the
    /// socket's two ends for the HTTP chunks without reading the socket again.
    pub ephemeral_port: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}
const _: () = assert!(size_of::<SocketTraffic>() == 64);
const _: () = assert!(core::mem::offset_of!(SocketTraffic, flow) + core::mem::offset_of!(FlowKey, peer_addr) == 16);

/// What the probes remember about one TCP socket between its state changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketInfo {
    /// The socket's flow key; `pid` is the owner once a process context touched it.
    pub key: FlowKey,
    /// The socket's `total_retrans` already counted: retransmits are added as deltas of
    /// the kernel's own per-socket counter, so they match `TcpRetransSegs` exactly.
    pub retrans_seen: u32,
    /// When this socket last gave an RTT sample (`bpf_ktime_get_ns`).
    pub last_rtt_sample_ns: u64,
    /// 1 while the connection's "opened" count waits for its owner to be known
    /// (an accepted connection is established in softirq, before accept() runs).
    pub open_pending: u8,
    /// Whether the connection carries HTTP/1.x ([`http::verdict`]), decided by its first
    /// payload when the probes saw it open.
    pub http: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<SocketInfo>() == 64);

/// Offsets the probes need, resolved by user space at start-up: tracepoint fields from
/// their `format` files, `struct sock`/`struct tcp_sock` members from the running
/// kernel's BTF. Nothing about kernel layout is baked in at build time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Minimum gap between two RTT samples of one socket, in nanoseconds.
    pub rtt_sample_gap_ns: u64,
    // sock:inet_sock_set_state
    pub state_skaddr: u16,
    pub state_oldstate: u16,
    pub state_newstate: u16,
    pub state_protocol: u16,
    // sock:sock_send_length and sock:sock_recv_length share one layout (checked at start-up)
    pub length_sk: u16,
    pub length_protocol: u16,
    pub length_ret: u16,
    pub length_flags: u16,
    // tcp:tcp_retransmit_skb
    pub retransmit_skaddr: u16,
    // struct sock (through struct sock_common)
    pub sock_family: u16,
    pub sock_num: u16,
    pub sock_dport: u16,
    pub sock_rcv_saddr: u16,
    pub sock_daddr: u16,
    pub sock_v6_rcv_saddr: u16,
    pub sock_v6_daddr: u16,
    pub sock_err: u16,
    /// `sk_userlocks`: the byte the 32-bit window holding it starts at; a bit field
    /// below Linux 6.2, so it is read as `(window >> shift) & ((1 << bits) - 1)`.
    pub sock_userlocks: u16,
    // struct tcp_sock
    pub tcp_srtt_us: u16,
    pub tcp_mdev_us: u16,
    // tcp:tcp_probe (one event per received segment: the RTT sampler)
    pub probe_skaddr: u16,
    pub probe_srtt: u16,
    // struct tcp_sock
    pub tcp_total_retrans: u16,
    // struct sock: for the raw tracepoints, whose arguments carry no protocol
    pub sock_protocol: u16,
    /// Ports whose UDP and TCP payloads the DNS probe captures; 0 marks an unused slot.
    pub dns_ports: [u16; dns::PORTS_MAX],
    // struct task_struct: a process's name is its thread group leader's `comm` (the
    // current thread's may be a worker's, "isc-net-0000"); 0 when BTF lacks them.
    pub task_group_leader: u16,
    pub task_comm: u16,
    // struct pt_regs (the syscall's saved user registers): its number and first two
    // arguments, for the HTTP probe to find the buffer a send or receive used.
    pub regs_syscall_nr: u16,
    pub regs_arg0: u16,
    pub regs_arg1: u16,
    /// This architecture's numbers for the syscalls whose buffers the HTTP probe reads,
    /// indexed by [`http::syscall`]; [`http::syscall::ABSENT`] where it lacks one (0 is
    /// `read` on x86_64).
    pub syscalls: [u16; http::syscall::COUNT],
    /// Bytes of each HTTP payload to copy (at most [`http::CAPTURE_MAX`]); 0 turns the
    /// clear-text HTTP probe off.
    pub http_capture_bytes: u16,
    /// 1 when the OpenSSL probes are attached, so the socket probes tie `SSL*`s to sockets.
    pub tls_enabled: u8,
    pub sock_userlocks_shift: u8,
    pub sock_userlocks_bits: u8,
    /// 1 when cgroup skb programs may call the current-task helpers (not on 6.1 and
    /// older): the DNS probe names the asking process only then.
    pub skb_task_helpers: u8,
    /// 1 when tracing programs may read the current task's saved registers
    /// (`bpf_task_pt_regs`, 5.15+): clear-text HTTP needs them to find the buffer.
    pub task_regs: u8,
    /// 1 when the DNS probe finds the asker through `skb->sk` and the owners the
    /// connect/sendmsg hooks note (kernels without `skb_task_helpers`).
    pub dns_owner_by_socket: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<ProbeConfig>() == 104);

impl ProbeConfig {
    /// Whether the HTTP side runs at all: clear text, TLS or both.
    pub fn http_wanted(&self) -> bool {
        self.http_capture_bytes != 0 || self.tls_enabled != 0
    }
}

/// The peer address of a datagram on an unconnected UDP socket, stashed per thread by
/// the cgroup sendmsg/recvmsg hooks while the syscall runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramPeer {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<DatagramPeer>() == 20);

/// The DNS probe's capture limits.
pub mod dns {
    /// How many DNS ports can be configured.
    pub const PORTS_MAX: usize = 4;
    /// Bytes of a packet's DNS payload (UDP) or TCP segment payload copied to user space.
    /// A power of two: the probe masks lengths with `PAYLOAD_MAX - 1` for the verifier.
    /// Above the 1232-byte EDNS size that resolvers advertise, so UDP answers arrive whole.
    pub const PAYLOAD_MAX: usize = 2048;
    /// [`super::DnsPacket::direction`]: the packet left a local socket.
    pub const EGRESS: u8 = 1;
    /// The packet arrived at a local socket.
    pub const INGRESS: u8 = 2;
}

/// One packet to or from a DNS port, as the cgroup skb probe saw it at a local socket.
/// Followed in the ring buffer by `captured_len` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPacket {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the probe saw the packet.
    pub timestamp_ns: u64,
    /// The sending process (tgid) for an egress packet sent in process context, else 0.
    pub pid: u32,
    /// Payload bytes on the wire (UDP payload, or TCP segment payload).
    pub wire_len: u32,
    /// Payload bytes that follow this header (at most [`dns::PAYLOAD_MAX`]).
    pub captured_len: u32,
    /// TCP sequence number of the payload's first byte (0 for UDP), host order.
    pub tcp_seq: u32,
    /// IPv4 in the first four bytes, or IPv6, network order.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub protocol: u8,
    pub direction: u8,
    /// For TCP, 1 when the segment is a SYN: the stream's data starts at `tcp_seq + 1`.
    /// The probe passes a SYN on (it carries no payload) so that a stream whose first
    /// data segment went unseen shows the gap.
    pub tcp_syn: u8,
}
const _: () = assert!(size_of::<DnsPacket>() == 64);

/// The HTTP probes' capture limits and event codes.
pub mod http {
    /// Most payload bytes one event carries. A power of two: the probe masks lengths with
    /// `CAPTURE_MAX - 1` for the verifier.
    pub const CAPTURE_MAX: usize = 8192;
    /// [`super::HttpChunk::direction`]: the process sent these bytes.
    pub const SEND: u8 = 1;
    /// The process received them.
    pub const RECV: u8 = 2;

    /// What a TCP connection's first payload said about it.
    pub mod verdict {
        /// Not decided yet: the next payload decides.
        pub const UNKNOWN: u8 = 0;
        /// It started like HTTP/1.x: every send and receive is sniffed.
        pub const HTTP: u8 = 1;
        /// It started otherwise (TLS, a database protocol, ...): never sniffed again.
        pub const OTHER: u8 = 2;
        /// Opened before the agent started, so its first payload was not seen: every
        /// send and receive is sniffed, and nothing is decided.
        pub const ALWAYS: u8 = 3;
    }

    /// Syscalls a socket send or receive can come through, as indexes into
    /// [`super::ProbeConfig::syscalls`].
    pub mod syscall {
        /// `read`, `write`, `sendto`, `recvfrom`: the buffer is the second argument.
        pub const READ: usize = 0;
        pub const WRITE: usize = 1;
        pub const SENDTO: usize = 2;
        pub const RECVFROM: usize = 3;
        /// `readv`, `writev`: the second argument is an `iovec` array.
        pub const READV: usize = 4;
        pub const WRITEV: usize = 5;
        /// `sendmsg`, `recvmsg`: the second argument is a `msghdr`.
        pub const SENDMSG: usize = 6;
        pub const RECVMSG: usize = 7;
        pub const COUNT: usize = 8;
        /// No such syscall on this architecture.
        pub const ABSENT: u16 = u16::MAX;
    }
}

/// The first bytes of one send or receive on a TCP socket (clear text), or of one
/// `SSL_write`/`SSL_read` (TLS), that look like an HTTP/1.x message start. Followed in
/// the ring buffer by `captured_len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpChunk {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the call finished.
    pub timestamp_ns: u64,
    /// The connection: its `struct sock *`, or for TLS whose socket was not seen yet the
    /// `SSL *`. Only an identity.
    pub connection: u64,
    pub pid: u32,
    /// Bytes the call moved.
    pub len: u32,
    /// Bytes that follow this header (at most [`http::CAPTURE_MAX`]).
    pub captured_len: u32,
    pub local_port: u16,
    pub peer_port: u16,
    /// IPv4 in the first four bytes, or IPv6, network order; zero when unknown. At
    /// 8-byte-aligned offsets, as in [`FlowKey`], so the probe copies them in words.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub family: u8,
    /// [`http::SEND`] or [`http::RECV`].
    pub direction: u8,
    /// 1 when the bytes are the plaintext of an OpenSSL call.
    pub tls: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<HttpChunk>() == 72);
const _: () = assert!(core::mem::offset_of!(HttpChunk, local_addr) % 8 == 0);

/// An OpenSSL call in flight on one thread: a read from its uprobe to its uretprobe,
/// or a write whose socket was not known at its uprobe, until its ciphertext's send.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    pub ssl: u64,
    pub buffer: u64,
    /// `SSL_read_ex`: where the byte count goes; 0 for `SSL_read`.
    pub len_out: u64,
    /// When the call began (`bpf_ktime_get_ns`): a pending write older than
    /// `tls::PENDING_WRITE_NS` never reached a socket and is dropped, not sent.
    pub started_ns: u64,
    /// A pending write's plaintext length.
    pub len: u32,
    pub direction: u8,
    /// 1 for a write waiting for its socket.
    pub pending_write: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<TlsCall>() == 40);

/// The OpenSSL probes' shared constants.
pub mod tls {
    /// How long a write may wait for its ciphertext's send. OpenSSL sends inside the
    /// call (microseconds, milliseconds under emulation); a write that failed before
    /// sending is superseded by its retry, and one left this long is dropped rather
    /// than tied to a later, unrelated send of the thread.
    pub const PENDING_WRITE_NS: u64 = 1_000_000_000;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: #[repr(C)], integer fields only, explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatagramPeer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessSeen {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketTraffic {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsPacket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HttpChunk {}
}
