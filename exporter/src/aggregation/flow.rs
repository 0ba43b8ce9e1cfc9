use std::net::IpAddr;

use flowtel_probes_abi::{FlowStats, RTT_BUCKETS, direction, failure, protocol};

use crate::events::{KernelFlow, kernel_address};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl TryFrom<u8> for Transport {
    type Error = u8;
    fn try_from(raw: u8) -> Result<Self, u8> {
        match raw {
            protocol::TCP => Ok(Self::Tcp),
            protocol::UDP => Ok(Self::Udp),
            other => Err(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Outgoing,
    Incoming,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(raw: u8) -> Result<Self, u8> {
        match raw {
            direction::OUTGOING => Ok(Self::Outgoing),
            direction::INCOMING => Ok(Self::Incoming),
            other => Err(other),
        }
    }
}

/// `error.type` of a failed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Refused,
    Timeout,
    Reset,
    Other,
}

impl Failure {
    const BY_INDEX: [(usize, Self); failure::COUNT] = [
        (failure::REFUSED, Self::Refused),
        (failure::TIMEOUT, Self::Timeout),
        (failure::RESET, Self::Reset),
        (failure::OTHER, Self::Other),
    ];

    pub fn as_str(self) -> &'static str {
        use flowtel_semconv::value;
        match self {
            Self::Refused => value::REFUSED,
            Self::Timeout => value::TIMEOUT,
            Self::Reset => value::RESET,
            Self::Other => "_OTHER",
        }
    }
}

/// One flow of one process over one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// 0 when no process context was seen (the host's own flows).
    pub pid: u32,
    pub transport: Transport,
    pub direction: Direction,
    pub local: IpAddr,
    /// `None` on outgoing flows: the ephemeral port is collapsed.
    pub local_port: Option<u16>,
    /// `None` when the peer is not known (an unconnected UDP socket).
    pub peer: Option<IpAddr>,
    /// `None` on incoming flows: the ephemeral port is collapsed.
    pub peer_port: Option<u16>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub opened: u64,
    pub closed: u64,
    pub failed: Vec<(Failure, u64)>,
    /// RTT samples in seconds, with how many times each was seen.
    pub rtt_samples: Vec<(f64, u64)>,
    /// Seconds; `None` when no RTT sample was taken.
    pub rttvar: Option<f64>,
}

/// Converts one kernel entry; `None` (and a debug log) for an entry with values the
/// agent does not know, which a newer probe object than this agent could produce.
pub fn from_kernel(flow: &KernelFlow) -> Option<FlowRecord> {
    let KernelFlow { key, stats } = flow;
    let transport = Transport::try_from(key.protocol).ok()?;
    let direction = Direction::try_from(key.direction).ok()?;
    let local = kernel_address(key.family, &key.local_addr)?;
    let peer = kernel_address(key.family, &key.peer_addr).filter(|addr| !addr.is_unspecified());
    let rtt_samples = rtt_samples(stats);
    Some(FlowRecord {
        pid: key.pid,
        transport,
        direction,
        local,
        local_port: (direction == Direction::Incoming).then_some(key.local_port),
        peer,
        peer_port: (direction == Direction::Outgoing && peer.is_some()).then_some(key.peer_port),
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        retransmits: stats.retransmits,
        opened: stats.opened,
        closed: stats.closed,
        failed: Failure::BY_INDEX
            .iter()
            .filter(|(index, _)| stats.failed[*index] > 0)
            .map(|&(index, cause)| (cause, stats.failed[index]))
            .collect(),
        rttvar: (!rtt_samples.is_empty()).then(|| f64::from(stats.rttvar_us) / 1e6),
        rtt_samples,
    })
}

/// Turns the kernel's log2 buckets back into samples: each bucket's geometric midpoint,
/// all scaled by one factor so that the samples add up to the exact sum the kernel kept.
/// The histogram's count and sum are then exact; each value stays within about a
/// factor of √2 of the truth.
fn rtt_samples(stats: &FlowStats) -> Vec<(f64, u64)> {
    let buckets: Vec<(f64, u64)> = (0..RTT_BUCKETS)
        .filter(|&i| stats.rtt_hist[i] > 0)
        .map(|i| (2f64.powf(i as f64 + 0.5), stats.rtt_hist[i]))
        .collect();
    let approx_sum: f64 = buckets.iter().map(|&(mid, n)| mid * n as f64).sum();
    if approx_sum == 0.0 {
        return Vec::new();
    }
    let scale = stats.rtt_sum_us as f64 / approx_sum;
    buckets.into_iter().map(|(mid_us, n)| (mid_us * scale / 1e6, n)).collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use flowtel_probes_abi::{FlowKey, family};

    use super::*;

    fn kernel(key: FlowKey, stats: &FlowStats) -> KernelFlow {
        KernelFlow { key, stats: *stats }
    }

    #[test]
    fn outgoing_tcp_keeps_peer_port_and_folds_v4_mapped() {
        let mut key = FlowKey {
            pid: 42,
            family: family::IPV6,
            protocol: protocol::TCP,
            direction: direction::OUTGOING,
            peer_port: 443,
            ..FlowKey::default()
        };
        key.local_addr = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets();
        key.peer_addr = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets();
        let stats = FlowStats { bytes_sent: 10, opened: 1, ..FlowStats::ZERO };
        let record = from_kernel(&kernel(key, &stats)).unwrap();
        assert_eq!(record.local, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(record.peer, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
        assert_eq!((record.local_port, record.peer_port), (None, Some(443)));
        assert_eq!((record.bytes_sent, record.opened), (10, 1));
        assert!(record.rtt_samples.is_empty() && record.rttvar.is_none());
    }

    #[test]
    fn incoming_keeps_local_port_and_unconnected_udp_has_no_peer() {
        let key = FlowKey {
            family: family::IPV4,
            protocol: protocol::UDP,
            direction: direction::INCOMING,
            local_port: 53,
            peer_port: 0,
            ..FlowKey::default()
        };
        let record = from_kernel(&kernel(key, &FlowStats::ZERO)).unwrap();
        assert_eq!((record.local_port, record.peer, record.peer_port), (Some(53), None, None));
    }

    #[test]
    fn unknown_protocol_or_direction_is_dropped() {
        let key = FlowKey { family: family::IPV4, protocol: 99, direction: direction::INCOMING, ..FlowKey::default() };
        assert!(from_kernel(&kernel(key, &FlowStats::ZERO)).is_none());
        let key = FlowKey { family: family::IPV4, protocol: protocol::TCP, direction: 7, ..FlowKey::default() };
        assert!(from_kernel(&kernel(key, &FlowStats::ZERO)).is_none());
    }

    #[test]
    fn rtt_samples_keep_count_and_exact_sum() {
        let mut stats = FlowStats { rtt_sum_us: 3 * 100 + 2 * 1000, rttvar_us: 50, ..FlowStats::ZERO };
        stats.rtt_hist[6] = 3; // 100 µs is in [64, 128)
        stats.rtt_hist[9] = 2; // 1000 µs is in [512, 1024)
        let samples = rtt_samples(&stats);
        assert_eq!(samples.iter().map(|s| s.1).sum::<u64>(), 5);
        let sum: f64 = samples.iter().map(|&(v, n)| v * n as f64).sum();
        assert!((sum - 2300e-6).abs() < 1e-9, "sum {sum}");
        assert!(samples[0].0 > 64e-6 && samples[0].0 < 160e-6, "{samples:?}");
        assert!(samples[1].0 > 512e-6 && samples[1].0 < 1400e-6, "{samples:?}");
    }
}
