use std::fs;

use flowtel_semconv::resource;
use opentelemetry::KeyValue;

/// The host attributes every Resource carries.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub name: String,
    pub id: Option<String>,
    pub arch: &'static str,
    pub os_version: Option<String>,
    /// `k8s.node.name`, from `K8S_NODE_NAME` (the downward API's `spec.nodeName`).
    pub k8s_node_name: Option<String>,
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl HostInfo {
    /// `name_override` comes from configuration (a container sees its own hostname). In
    /// a pod, the node's name (`K8S_NODE_NAME`) names the host better than the pod's
    /// hostname does.
    pub fn detect(name_override: Option<&str>) -> Self {
        let k8s_node_name = std::env::var("K8S_NODE_NAME").ok().filter(|n| !n.is_empty());
        Self {
            name: name_override
                .map(str::to_owned)
                .or_else(|| k8s_node_name.clone())
                .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
                .unwrap_or_else(|| "unknown".into()),
            id: read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id")),
            // host.arch values of the semantic conventions.
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "powerpc64" => "ppc64",
                other => other,
            },
            os_version: read_trimmed("/proc/sys/kernel/osrelease"),
            k8s_node_name,
        }
    }

    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new(resource::HOST_NAME, self.name.clone()),
            KeyValue::new(resource::HOST_ARCH, self.arch),
            KeyValue::new(resource::OS_TYPE, "linux"),
        ];
        if let Some(id) = &self.id {
            attrs.push(KeyValue::new(resource::HOST_ID, id.clone()));
        }
        if let Some(version) = &self.os_version {
            attrs.push(KeyValue::new(resource::OS_VERSION, version.clone()));
        }
        if let Some(node) = &self.k8s_node_name {
            attrs.push(KeyValue::new(resource::K8S_NODE_NAME, node.clone()));
        }
        attrs
    }
}
