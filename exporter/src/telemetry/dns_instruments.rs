//! The DNS instruments of one workload (scope `flowtel.dns`), and how a lookup lands in
//! them. `dns.question.name` is on by default and bounded by the instrument's
//! cardinality limit (the SDK's overflow series takes the rest); it can be turned off.
use flowtel_semconv::{attr, metric, value};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter},
};

use crate::{
    aggregation::{DnsLookup, Outcome, Transport, rcode_name, type_name},
    kubernetes::PeerIdentity,
};

/// Bucket bounds of `dns.lookup.duration` in seconds: from a local cache's 100 µs to a
/// resolver's 5 s retry.
pub const DURATION_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

pub struct DnsInstruments {
    duration: Histogram<f64>,
    lookups: Counter<u64>,
    question_name: bool,
}

impl DnsInstruments {
    pub fn new(meter: &Meter, question_name: bool) -> Self {
        let d = metric::DNS_LOOKUP_DURATION;
        let l = metric::DNS_LOOKUPS;
        Self {
            duration: meter
                .f64_histogram(d.name)
                .with_unit(d.unit)
                .with_description(d.description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            lookups: super::instrument::counter(meter, l),
            question_name,
        }
    }

    /// A lookup without an answer is counted in `flowtel.dns.lookups` only: it has no
    /// duration to record.
    /// `server`: who the answering server is in the cluster (`kube-dns`, say).
    pub fn record(&self, lookup: &DnsLookup, server: Option<&PeerIdentity>) {
        let mut attrs = Vec::with_capacity(9);
        if self.question_name {
            attrs.push(KeyValue::new(attr::DNS_QUESTION_NAME, lookup.question_name.clone()));
        }
        attrs.push(KeyValue::new(attr::DNS_QUESTION_TYPE, type_name(lookup.question_type)));
        attrs.push(KeyValue::new(attr::NETWORK_PEER_ADDRESS, lookup.server.to_string()));
        if let Some(server) = server {
            super::flow_instruments::push_peer_k8s(&mut attrs, server);
        }
        attrs.push(KeyValue::new(
            attr::NETWORK_TRANSPORT,
            match lookup.transport {
                Transport::Tcp => value::TCP,
                Transport::Udp => value::UDP,
            },
        ));
        match lookup.outcome {
            Outcome::Answered { rcode, latency_s } => {
                let name = rcode_name(rcode);
                if rcode != 0 {
                    attrs.push(KeyValue::new(attr::ERROR_TYPE, name.clone()));
                }
                attrs.push(KeyValue::new(attr::DNS_RCODE, name));
                self.duration.record(latency_s, &attrs);
                self.lookups.add(1, &attrs);
            }
            Outcome::TimedOut => {
                attrs.push(KeyValue::new(attr::ERROR_TYPE, value::TIMEOUT));
                attrs.push(KeyValue::new(attr::DNS_RCODE, value::DNS_TIMEOUT));
                self.lookups.add(1, &attrs);
            }
        }
    }
}
