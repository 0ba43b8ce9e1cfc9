//! What flowtel knows about a flow's peer address beyond the address: the name a local
//! process looked up to reach it (DNS answers) and where it is (a `GeoIP` database).
use std::{net::IpAddr, sync::Arc, time::Instant};

use super::{DomainNames, GeoIp, Location};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// `flowtel.peer.domain`.
    pub domain: Option<Arc<str>>,
    /// `geo.*`, for public addresses when a database is configured.
    pub location: Option<Arc<Location>>,
}

pub struct Peers {
    pub domains: DomainNames,
    pub geo: Option<GeoIp>,
}

impl Peers {
    pub fn describe(&mut self, address: IpAddr, now: Instant) -> PeerInfo {
        PeerInfo {
            domain: self.domains.name_of(address, now),
            location: self.geo.as_mut().and_then(|geo| geo.locate(address)),
        }
    }
}
