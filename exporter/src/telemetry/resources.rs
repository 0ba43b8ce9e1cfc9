//! The Resource of each workload: who did it, as OpenTelemetry users expect to read it.
use flowtel_semconv::resource;
use opentelemetry::KeyValue;
use opentelemetry_sdk::{Resource, resource::EnvResourceDetector};

use crate::{
    enrichment::{HostInfo, ProcessInfo},
    kubernetes::{PodIdentity, WorkloadKind},
};

/// `OTEL_RESOURCE_ATTRIBUTES` merged under flowtel's own attributes: the workload's
/// identity wins over anything set for the whole node.
pub fn resource_with(attributes: Vec<KeyValue>) -> Resource {
    Resource::builder_empty().with_detector(Box::new(EnvResourceDetector::new())).with_attributes(attributes).build()
}

pub fn workload_resource(host: &HostInfo, process: Option<&ProcessInfo>, pod: Option<&PodIdentity>) -> Resource {
    // Later attributes win. First what a workload may say of itself: the pod's
    // `resource.opentelemetry.io/*` annotations, then the process's own
    // OTEL_RESOURCE_ATTRIBUTES; then what flowtel measures (host, pid, executable,
    // container, pod), which they cannot override.
    let mut attrs: Vec<KeyValue> = Vec::new();
    if let Some(pod) = pod {
        attrs.push(KeyValue::new(resource::SERVICE_NAMESPACE, pod.namespace.to_string()));
        attrs.extend(pod.resource_annotations.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())));
    }
    attrs.extend(
        process.iter().flat_map(|p| &p.otel_resource_attributes).map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    attrs.extend(host.attributes());
    if let Some(p) = process {
        attrs.push(KeyValue::new(resource::SERVICE_NAME, service_name(p, pod)));
        attrs.push(KeyValue::new(resource::SERVICE_INSTANCE_ID, format!("{}/{}", host.name, p.pid)));
        attrs.push(KeyValue::new(resource::PROCESS_PID, i64::from(p.pid)));
        attrs.push(KeyValue::new(resource::PROCESS_EXECUTABLE_NAME, p.executable_name.clone()));
        if let Some(command) = &p.command {
            attrs.push(KeyValue::new(resource::PROCESS_COMMAND, command.clone()));
        }
        if let Some(command_line) = &p.command_line {
            attrs.push(KeyValue::new(resource::PROCESS_COMMAND_LINE, command_line.clone()));
        }
        if let Some(created) = &p.creation_time {
            attrs.push(KeyValue::new(resource::PROCESS_CREATION_TIME, created.clone()));
        }
        attrs.extend(placement(p, pod));
    }
    resource_with(attrs)
}

/// Where a process runs: its container, its pod and the pod's names.
fn placement(p: &ProcessInfo, pod: Option<&PodIdentity>) -> Vec<KeyValue> {
    let mut attrs = Vec::new();
    if let Some(id) = &p.container.container_id {
        attrs.push(KeyValue::new(resource::CONTAINER_ID, id.clone()));
    }
    if let Some(uid) = &p.container.pod_uid {
        attrs.push(KeyValue::new(resource::K8S_POD_UID, uid.clone()));
    }
    if let Some(pod) = pod {
        attrs.extend(pod_attributes(pod, p.container.container_id.as_deref()));
    }
    attrs
}

/// The Resource of processes folded together (`telemetry.max_workloads`): who they
/// are without which one (no `process.pid`, command or creation time), so every fold
/// of the same container or pod and executable lands in one. `None`: the host's rest.
pub fn folded_resource(host: &HostInfo, process: Option<&ProcessInfo>, pod: Option<&PodIdentity>) -> Resource {
    let mut attrs: Vec<KeyValue> = Vec::new();
    if let Some(pod) = pod {
        attrs.push(KeyValue::new(resource::SERVICE_NAMESPACE, pod.namespace.to_string()));
        attrs.extend(pod.resource_annotations.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())));
    }
    attrs.extend(host.attributes());
    let Some(p) = process else {
        attrs.push(KeyValue::new(resource::SERVICE_INSTANCE_ID, format!("{}/folded", host.name)));
        return resource_with(attrs);
    };
    let place = p.container.container_id.as_deref().or(p.container.pod_uid.as_deref()).unwrap_or("host");
    attrs.push(KeyValue::new(resource::SERVICE_NAME, service_name(p, pod)));
    attrs.push(KeyValue::new(
        resource::SERVICE_INSTANCE_ID,
        format!("{}/folded/{place}/{}", host.name, p.executable_name),
    ));
    attrs.push(KeyValue::new(resource::PROCESS_EXECUTABLE_NAME, p.executable_name.clone()));
    attrs.extend(placement(p, pod));
    resource_with(attrs)
}

/// `service.name`, first of: the process's own `OTEL_SERVICE_NAME` (or `service.name`
/// in its `OTEL_RESOURCE_ATTRIBUTES`), the pod's `resource.opentelemetry.io/service.name`
/// annotation, the pod's owner workload, its container's name, the executable's name.
fn service_name(process: &ProcessInfo, pod: Option<&PodIdentity>) -> String {
    let annotated = pod
        .and_then(|pod| pod.resource_annotations.iter().find(|(k, _)| &**k == resource::SERVICE_NAME))
        .map(|(_, v)| v.to_string());
    let workload = pod.and_then(|pod| pod.workload.as_ref()).map(|(_, name)| name.to_string());
    let container = pod
        .zip(process.container.container_id.as_deref())
        .and_then(|(pod, id)| pod.container_name(id))
        .map(ToString::to_string);
    process
        .otel_service_name
        .clone()
        .or(annotated)
        .or(workload)
        .or(container)
        .unwrap_or_else(|| process.executable_name.clone())
}

/// The pod's names from the API server.
fn pod_attributes(pod: &PodIdentity, container_id: Option<&str>) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new(resource::K8S_NAMESPACE_NAME, pod.namespace.to_string()),
        KeyValue::new(resource::K8S_POD_NAME, pod.name.to_string()),
    ];
    if let Some(node) = &pod.node {
        attrs.push(KeyValue::new(resource::K8S_NODE_NAME, node.to_string()));
    }
    if let Some(name) = container_id.and_then(|id| pod.container_name(id)) {
        attrs.push(KeyValue::new(resource::K8S_CONTAINER_NAME, name.to_string()));
    }
    if let Some(replicaset) = &pod.replicaset {
        attrs.push(KeyValue::new(resource::K8S_REPLICASET_NAME, replicaset.to_string()));
    }
    if let Some((kind, name)) = &pod.workload {
        let key = match kind {
            WorkloadKind::Deployment => resource::K8S_DEPLOYMENT_NAME,
            WorkloadKind::ReplicaSet => resource::K8S_REPLICASET_NAME,
            WorkloadKind::StatefulSet => resource::K8S_STATEFULSET_NAME,
            WorkloadKind::DaemonSet => resource::K8S_DAEMONSET_NAME,
            WorkloadKind::Job => resource::K8S_JOB_NAME,
            WorkloadKind::CronJob => resource::K8S_CRONJOB_NAME,
        };
        attrs.push(KeyValue::new(key, name.to_string()));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::Key;

    use super::*;
    use crate::enrichment::ContainerInfo;

    fn process(otel_service_name: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            executable_name: "python3".into(),
            command: Some("python3".into()),
            command_line: None,
            container: ContainerInfo { container_id: Some("c1".into()), pod_uid: Some("uid-1".into()) },
            otel_service_name: otel_service_name.map(str::to_owned),
            otel_resource_attributes: vec![("team".into(), "from-env".into())],
            creation_time: None,
        }
    }

    fn pod(annotations: &[(&str, &str)]) -> PodIdentity {
        PodIdentity {
            namespace: Arc::from("shop"),
            name: Arc::from("web-5d8f-x2x9z"),
            node: Some(Arc::from("node-7")),
            workload: Some((WorkloadKind::Deployment, Arc::from("web"))),
            replicaset: Some(Arc::from("web-5d8f")),
            containers: vec![("c1".into(), Arc::from("server"))],
            resource_annotations: annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    fn host() -> HostInfo {
        HostInfo { name: "node-7".into(), id: None, arch: "amd64", os_version: None, k8s_node_name: None }
    }

    fn get(resource: &Resource, key: &'static str) -> Option<String> {
        resource.get(&Key::from_static_str(key)).map(|v| v.as_str().into_owned())
    }

    #[test]
    fn a_pods_process_carries_its_kubernetes_names() {
        let r = workload_resource(&host(), Some(&process(None)), Some(&pod(&[])));
        for (key, value) in [
            (resource::K8S_NAMESPACE_NAME, "shop"),
            (resource::K8S_POD_NAME, "web-5d8f-x2x9z"),
            (resource::K8S_NODE_NAME, "node-7"),
            (resource::K8S_CONTAINER_NAME, "server"),
            (resource::K8S_DEPLOYMENT_NAME, "web"),
            (resource::K8S_REPLICASET_NAME, "web-5d8f"),
            (resource::SERVICE_NAMESPACE, "shop"),
            (resource::SERVICE_NAME, "web"),
            (resource::K8S_POD_UID, "uid-1"),
        ] {
            assert_eq!(get(&r, key).as_deref(), Some(value), "{key}");
        }
    }

    #[test]
    fn service_name_comes_from_the_process_then_annotations_then_owner_then_container_then_executable() {
        let annotated = pod(&[("service.name", "storefront"), ("team", "from-annotation")]);
        let r = workload_resource(&host(), Some(&process(Some("checkout"))), Some(&annotated));
        assert_eq!(get(&r, resource::SERVICE_NAME).as_deref(), Some("checkout"));
        // The process's own OTEL_RESOURCE_ATTRIBUTES win over the pod's annotations.
        assert_eq!(get(&r, "team").as_deref(), Some("from-env"));
        let r = workload_resource(&host(), Some(&process(None)), Some(&annotated));
        assert_eq!(get(&r, resource::SERVICE_NAME).as_deref(), Some("storefront"));
        let mut bare = pod(&[]);
        bare.workload = None;
        let r = workload_resource(&host(), Some(&process(None)), Some(&bare));
        assert_eq!(get(&r, resource::SERVICE_NAME).as_deref(), Some("server"));
        bare.containers.clear();
        let r = workload_resource(&host(), Some(&process(None)), Some(&bare));
        assert_eq!(get(&r, resource::SERVICE_NAME).as_deref(), Some("python3"));
    }

    #[test]
    fn annotations_cannot_override_what_flowtel_measures() {
        let liar = pod(&[("k8s.pod.name", "liar"), ("process.pid", "1"), ("service.namespace", "billing")]);
        let r = workload_resource(&host(), Some(&process(None)), Some(&liar));
        assert_eq!(get(&r, resource::K8S_POD_NAME).as_deref(), Some("web-5d8f-x2x9z"));
        assert_eq!(get(&r, resource::PROCESS_PID).as_deref(), Some("42"));
        // service.namespace is the workload's to choose; the namespace is only its default.
        assert_eq!(get(&r, resource::SERVICE_NAMESPACE).as_deref(), Some("billing"));
    }
}
