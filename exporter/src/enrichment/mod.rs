//! Who did it: the local process behind a flow (with its container and pod, from its
//! cgroup), and the host everything runs on. Kubernetes names (pod, deployment) and
//! peers' identity need the API server: not there yet (issue #5).
mod cgroups;
mod container;
mod host;
mod process;

pub use cgroups::CgroupPaths;
pub use host::HostInfo;
pub use process::{ProcessCache, ProcessInfo};
