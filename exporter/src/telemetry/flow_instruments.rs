//! The netflow instruments of one workload, and how a flow record lands in them.
use flowtel_semconv::{attr, metric, value};
use std::sync::{Arc, OnceLock};

use opentelemetry::{
    KeyValue, StringValue, Value,
    metrics::{Counter, Gauge, Histogram, Meter},
};

use super::instrument::counter;
use crate::{
    aggregation::{Direction, FlowRecord, Transport, classify},
    enrichment::PeerInfo,
    kubernetes::PeerIdentity,
};

/// Each instrument is made on its first measurement: the SDK sizes an instrument's series
/// map for the cardinality limit when it is made (about 130 KiB at 2000), and most
/// processes never retransmit or fail a connection (and a UDP-only one never samples an
/// RTT), so a short-lived client holds three or four maps instead of seven.
pub struct FlowInstruments {
    meter: Meter,
    io: OnceLock<Counter<u64>>,
    retransmits: OnceLock<Counter<u64>>,
    rtt: OnceLock<Histogram<f64>>,
    rttvar: OnceLock<Gauge<f64>>,
    opened: OnceLock<Counter<u64>>,
    closed: OnceLock<Counter<u64>>,
    failed: OnceLock<Counter<u64>>,
}

impl FlowInstruments {
    pub fn new(meter: Meter) -> Self {
        Self {
            meter,
            io: OnceLock::new(),
            retransmits: OnceLock::new(),
            rtt: OnceLock::new(),
            rttvar: OnceLock::new(),
            opened: OnceLock::new(),
            closed: OnceLock::new(),
            failed: OnceLock::new(),
        }
    }

    fn counter<'a>(&'a self, cell: &'a OnceLock<Counter<u64>>, m: flowtel_semconv::MetricName) -> &'a Counter<u64> {
        cell.get_or_init(|| counter(&self.meter, m))
    }

    fn rtt(&self) -> &Histogram<f64> {
        let m = metric::TCP_RTT;
        self.rtt
            .get_or_init(|| self.meter.f64_histogram(m.name).with_unit(m.unit).with_description(m.description).build())
    }

    fn rttvar(&self) -> &Gauge<f64> {
        let m = metric::TCP_RTTVAR;
        self.rttvar
            .get_or_init(|| self.meter.f64_gauge(m.name).with_unit(m.unit).with_description(m.description).build())
    }

    pub fn record(&self, flow: &FlowRecord, peer: &PeerInfo) {
        let mut attrs = flow_attributes(flow);
        if let Some(domain) = &peer.domain {
            attrs.push(KeyValue::new(attr::PEER_DOMAIN, domain.to_string()));
        }
        if let Some(k8s) = &peer.k8s {
            push_peer_k8s(&mut attrs, k8s);
        }
        if let Some(location) = &peer.location {
            for (key, value) in [
                (attr::GEO_COUNTRY_ISO_CODE, &location.country_iso_code),
                (attr::GEO_REGION_ISO_CODE, &location.region_iso_code),
                (attr::GEO_LOCALITY_NAME, &location.locality_name),
            ] {
                if let Some(value) = value {
                    attrs.push(KeyValue::new(key, value.clone()));
                }
            }
        }
        let with = |key: &'static str, v: &'static str| {
            let mut a = attrs.clone();
            a.push(KeyValue::new(key, v));
            a
        };
        if flow.bytes_sent > 0 {
            self.counter(&self.io, metric::NETWORK_IO)
                .add(flow.bytes_sent, &with(attr::NETWORK_IO_DIRECTION, value::TRANSMIT));
        }
        if flow.bytes_received > 0 {
            self.counter(&self.io, metric::NETWORK_IO)
                .add(flow.bytes_received, &with(attr::NETWORK_IO_DIRECTION, value::RECEIVE));
        }
        if flow.transport != Transport::Tcp {
            return;
        }
        if flow.retransmits > 0 {
            self.counter(&self.retransmits, metric::TCP_RETRANSMITS).add(flow.retransmits, &attrs);
        }
        if flow.opened > 0 {
            self.counter(&self.opened, metric::TCP_CONNECTIONS_OPENED).add(flow.opened, &attrs);
        }
        if flow.closed > 0 {
            self.counter(&self.closed, metric::TCP_CONNECTIONS_CLOSED).add(flow.closed, &attrs);
        }
        for &(cause, n) in &flow.failed {
            self.counter(&self.failed, metric::TCP_CONNECTIONS_FAILED).add(n, &with(attr::ERROR_TYPE, cause.as_str()));
        }
        for &(seconds, n) in &flow.rtt_samples {
            for _ in 0..n {
                self.rtt().record(seconds, &attrs);
            }
        }
        if let Some(rttvar) = flow.rttvar {
            self.rttvar().record(rttvar, &attrs);
        }
    }
}

/// A shared name as an attribute value, without copying it.
fn text(name: &Arc<str>) -> Value {
    Value::String(StringValue::from(Arc::clone(name)))
}

/// `flowtel.peer.k8s.*`: who the peer is in the cluster (flows, DNS servers, the other
/// end of an HTTP exchange).
pub fn push_peer_k8s(attrs: &mut Vec<KeyValue>, k8s: &PeerIdentity) {
    attrs.push(KeyValue::new(attr::PEER_K8S_NAMESPACE_NAME, text(&k8s.namespace)));
    for (key, value) in [
        (attr::PEER_K8S_POD_NAME, &k8s.pod),
        (attr::PEER_K8S_DEPLOYMENT_NAME, &k8s.deployment),
        (attr::PEER_K8S_SERVICE_NAME, &k8s.service),
    ] {
        if let Some(value) = value {
            attrs.push(KeyValue::new(key, text(value)));
        }
    }
}

/// The spec's flow attributes. Ports are left out on the ephemeral side, so every value
/// here is bounded by the services a host talks to, not by its connections.
pub fn flow_attributes(flow: &FlowRecord) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(10);
    attrs.push(KeyValue::new(
        attr::NETWORK_TRANSPORT,
        match flow.transport {
            Transport::Tcp => value::TCP,
            Transport::Udp => value::UDP,
        },
    ));
    attrs.push(KeyValue::new(attr::NETWORK_TYPE, if flow.local.is_ipv4() { value::IPV4 } else { value::IPV6 }));
    attrs.push(KeyValue::new(
        attr::FLOW_DIRECTION,
        match flow.direction {
            Direction::Incoming => value::INCOMING,
            Direction::Outgoing => value::OUTGOING,
        },
    ));
    attrs.push(KeyValue::new(attr::NETWORK_LOCAL_ADDRESS, flow.local.to_string()));
    attrs.push(KeyValue::new(attr::LOCAL_ADDRESS_CLASS, classify(flow.local).as_str()));
    if let Some(port) = flow.local_port {
        attrs.push(KeyValue::new(attr::NETWORK_LOCAL_PORT, i64::from(port)));
    }
    if let Some(peer) = flow.peer {
        attrs.push(KeyValue::new(attr::NETWORK_PEER_ADDRESS, peer.to_string()));
        attrs.push(KeyValue::new(attr::PEER_ADDRESS_CLASS, classify(peer).as_str()));
    }
    if let Some(port) = flow.peer_port {
        attrs.push(KeyValue::new(attr::NETWORK_PEER_PORT, i64::from(port)));
    }
    attrs
}
