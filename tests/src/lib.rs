//! What the end-to-end tests share: a real OTLP receiver (gRPC and HTTP/protobuf), the
//! agent as a child process, test hosts in network namespaces, and queries over what
//! the receiver decoded.
//!
//! These tests need root and a BPF-capable kernel. Without them they skip with a loud
//! message on a developer machine; under `CI=true` they fail instead.
pub mod agent;
pub mod cgroups;
pub mod collector;
pub mod docker;
pub mod kube_api;
pub mod netns;
pub mod procfs;
pub mod query;
pub mod receiver;
pub mod servers;
pub mod traffic;

/// The capabilities the Kubernetes `DaemonSet` and the compose sidecar grant flowtel, and
/// that a test shows are enough for an unprivileged user.
pub const DOCUMENTED_CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "DAC_READ_SEARCH", "SYS_PTRACE"];

/// A local TCP port that was free a moment ago (for a server started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Returns false (after saying so loudly) when privileged tests cannot run here.
/// Under CI they must run: panics instead.
pub fn privileged_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    let why = format!("{test} needs root and /sys/kernel/btf/vmlinux (root={root}, btf={btf})");
    assert!(std::env::var("CI").is_err(), "under CI nothing skips: {why}");
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    false
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
