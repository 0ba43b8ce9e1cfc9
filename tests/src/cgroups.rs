//! Real cgroups shaped like a Kubernetes pod's containers, as the kubelet's systemd
//! driver and containerd lay them out; removed on drop.
use std::path::PathBuf;

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let path = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    });
    path.expect("a cgroup v2 hierarchy")
}

/// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
pub struct PodCgroup {
    /// The directories this one created (shared parents may exist already).
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl PodCgroup {
    pub fn create(pod_uid: &str, container_id: &str) -> Self {
        let uid = pod_uid.replace('-', "_");
        let mut dirs = Vec::new();
        let mut dir = cgroup2_root();
        for part in [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).expect("create cgroup");
                dirs.push(dir.clone());
            }
        }
        Self { created: dirs, leaf: dir }
    }

    /// The container's own cgroup, where a test process is moved.
    pub fn leaf(&self) -> PathBuf {
        self.leaf.clone()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // Shared parents stay while another test's pod is inside (EBUSY).
            let _ = std::fs::remove_dir(dir);
        }
    }
}
