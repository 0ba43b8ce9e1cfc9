//! `container.id` and `k8s.pod.uid` from a process's cgroup path, for Docker,
//! containerd (cri-containerd), CRI-O, podman and plain cgroupfs layouts, cgroup v1 and v2,
//! systemd and cgroupfs drivers. The names are part of the path the runtime creates:
//! `.../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope` (systemd driver) or
//! `/kubepods/besteffort/pod<uid>/<id>` (cgroupfs driver), `/docker/<id>`, `docker-<id>.scope`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Runtime prefixes of a container's scope; the `conmon` scopes are the monitor, not
/// the container.
const PREFIXES: [&str; 6] = ["cri-containerd-", "containerd-", "docker-", "crio-", "libpod-", ""];

/// Reads `/proc/<pid>/cgroup`'s content (`hierarchy:controllers:path` per line).
pub fn from_proc_cgroup(text: &str) -> ContainerInfo {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .map(from_cgroup_path)
        .find(|info| info.container_id.is_some())
        .unwrap_or_default()
}

/// One cgroup path, e.g. `/kubepods.slice/.../cri-containerd-<id>.scope`.
pub fn from_cgroup_path(path: &str) -> ContainerInfo {
    let mut info = ContainerInfo::default();
    for segment in path.split('/') {
        if let Some(id) = container_id(segment) {
            info.container_id = Some(id);
        }
        if let Some(uid) = pod_uid(segment) {
            info.pod_uid = Some(uid);
        }
    }
    info
}

fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if name.contains("conmon") {
        return None;
    }
    PREFIXES
        .iter()
        .filter_map(|prefix| name.strip_prefix(prefix))
        .find(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = name.rfind("pod")?;
    let uid = name[at + 3..].replace('_', "-");
    let is_uuid = uid.len() == 36
        && uid
            .bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() });
    is_uuid.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291817161514131211100f";
    const UID: &str = "0d3b8a9e-1c2f-4e5a-9b7c-6d5e4f3a2b1c";

    fn info(text: &str) -> ContainerInfo {
        from_proc_cgroup(text)
    }

    #[test]
    fn containerd_under_kubernetes_systemd_driver_v2() {
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(info(&text), ContainerInfo { container_id: Some(ID.into()), pod_uid: Some(UID.into()) });
    }

    #[test]
    fn cgroupfs_driver_v1_with_root_v2_line() {
        let text =
            format!("12:memory:/kubepods/burstable/pod{UID}/{ID}\n11:cpu:/kubepods/burstable/pod{UID}/{ID}\n0::/\n");
        assert_eq!(info(&text), ContainerInfo { container_id: Some(ID.into()), pod_uid: Some(UID.into()) });
    }

    #[test]
    fn docker_crio_podman() {
        for text in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("4:pids:/docker/{ID}"),
            format!("0::/machine.slice/crio-{ID}.scope"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(info(&text).container_id.as_deref(), Some(ID), "{text}");
            assert_eq!(info(&text).pod_uid, None);
        }
    }

    #[test]
    fn hosts_processes_and_monitors_have_none() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope".to_owned(),
            "0::/\n1:name=systemd:/init.scope".to_owned(),
            format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
            "0::/system.slice/docker-notanid.scope".to_owned(),
            "garbage without colons".to_owned(),
        ] {
            assert_eq!(info(&text), ContainerInfo::default(), "{text}");
        }
    }
}
