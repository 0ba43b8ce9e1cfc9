//! Where the host's filesystems the agent needs are mounted.
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// `probes.cgroup_root` from the configuration, set once at start-up.
static CGROUP_ROOT_OVERRIDE: OnceLock<PathBuf> = OnceLock::new();

/// In a container with its own cgroup namespace (Docker's and containerd's default on
/// cgroup v2) `/sys/fs/cgroup` is the container's own subtree; a bind mount of the
/// host's `/sys/fs/cgroup` elsewhere (say `/host/sys/fs/cgroup`) is the host's root,
/// where the cgroup probes must attach to see every process.
pub fn set_cgroup_root(path: &Path) {
    let _ = CGROUP_ROOT_OVERRIDE.set(cgroup2_dir(path).unwrap_or_else(|| path.to_owned()));
}

/// `path` when it is a cgroup v2 directory, else its `unified` child when that is one:
/// a hybrid host's whole `/sys/fs/cgroup` (v1 controllers, v2 beneath) mounted as the
/// compose example mounts it. None when neither is.
pub fn cgroup2_dir(path: &Path) -> Option<PathBuf> {
    let is_cgroup2 = |dir: &Path| dir.join("cgroup.controllers").is_file();
    [path.to_owned(), path.join("unified")].into_iter().find(|dir| is_cgroup2(dir))
}

/// The cgroup v2 hierarchy: the configured path, else the first cgroup2 mount in the
/// mount table (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid
/// ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    if let Some(path) = CGROUP_ROOT_OVERRIDE.get() {
        return Some(path.clone());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}
