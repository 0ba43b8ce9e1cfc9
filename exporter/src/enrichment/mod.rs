//! Who did it: the local process behind a flow (with its container and pod, from its
//! cgroup), and the host everything runs on. Whom it talked to: the peer's DNS name. Kubernetes names (pod, deployment) and
//! peers' identity need the API server: not there yet (issue #5).
mod cgroups;
mod container;
mod domains;
mod geo;
mod host;
mod peers;
mod process;

pub use cgroups::CgroupPaths;
pub use domains::DomainNames;
pub use geo::{GeoIp, Location};
pub use host::HostInfo;
pub use peers::{PeerInfo, Peers};
pub use process::{ProcessCache, ProcessInfo};
