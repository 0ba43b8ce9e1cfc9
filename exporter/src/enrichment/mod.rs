//! Who did it: the local process behind a flow (with its container and pod uid, from
//! its cgroup), and the host everything runs on. Whom it talked to: the peer's DNS name
//! and location. The names the API server knows (pod, deployment, Service) come from
//! `crate::kubernetes`.
mod cgroups;
mod container;
mod domains;
mod geo;
mod host;
mod peers;
mod process;

pub use cgroups::CgroupPaths;
#[cfg(test)]
pub use container::ContainerInfo;
pub use domains::DomainNames;
pub use geo::{GeoIp, Location};
pub use host::HostInfo;
pub use peers::{PeerInfo, Peers};
pub use process::{ProcessCache, ProcessInfo};
