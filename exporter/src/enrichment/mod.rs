//! Who did it: the local process behind a flow, and the host everything runs on.
//! Containers and Kubernetes identity come later (issue #5).
mod host;
mod process;

pub use host::HostInfo;
pub use process::{ProcessCache, ProcessInfo};
