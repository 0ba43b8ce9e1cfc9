//! What flowtel knows about a flow's peer address beyond the address: the name a local
//! process looked up to reach it (DNS answers), who it is in the cluster (Kubernetes)
//! and where it is (a `GeoIP` database).
use std::{net::IpAddr, sync::Arc, time::Instant};

use super::{DomainNames, GeoIp, Location};
use crate::kubernetes::{ClusterView, PeerIdentity};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// `flowtel.peer.domain`.
    pub domain: Option<Arc<str>>,
    /// `flowtel.peer.k8s.*`, when the address is a pod's or a Service's.
    pub k8s: Option<Arc<PeerIdentity>>,
    /// `geo.*`, for public addresses when a database is configured.
    pub location: Option<Arc<Location>>,
}

pub struct Peers {
    pub domains: DomainNames,
    pub geo: Option<GeoIp>,
    /// Empty unless the Kubernetes watchers run.
    pub cluster: Arc<ClusterView>,
}

impl Peers {
    pub fn describe(&mut self, address: IpAddr, now: Instant) -> PeerInfo {
        PeerInfo {
            domain: self.domains.name_of(address, now),
            k8s: self.cluster.peer(address).cloned(),
            location: self.geo.as_mut().and_then(|geo| geo.locate(address)),
        }
    }
}
