//! What flowtel keeps of each Kubernetes object: a few names and addresses, taken out of
//! the API object as soon as it arrives (a full Pod is kilobytes; this is a few
//! hundred bytes).
use std::{net::IpAddr, sync::Arc};

use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use super::view::WorkloadKind;

/// Annotations with this prefix become Resource attributes (the OpenTelemetry
/// Operator's convention): `resource.opentelemetry.io/service.name: cart`.
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";
/// At most this many such annotations are taken per pod, values cut to this length.
const ANNOTATIONS_MAX: usize = 32;
const ANNOTATION_VALUE_MAX: usize = 256;

/// An object's place: namespace and name.
pub type ObjectKey = (Arc<str>, Arc<str>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub key: ObjectKey,
    pub uid: Arc<str>,
    pub node: Option<Arc<str>>,
    /// Empty for host-network pods: their address is the node's, not theirs.
    pub addresses: Vec<IpAddr>,
    pub owner: Option<(OwnerKind, Arc<str>)>,
    pub containers: Vec<(Box<str>, Arc<str>)>,
    pub resource_annotations: Vec<(Box<str>, Box<str>)>,
}

/// A pod's controller as its owner reference names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    /// Resolved to its Deployment, when it has one, through the `ReplicaSet` records.
    ReplicaSet,
    Workload(WorkloadKind),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub key: ObjectKey,
    pub cluster_ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceRecord {
    pub key: ObjectKey,
    pub service: Option<Arc<str>>,
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSetRecord {
    pub key: ObjectKey,
    pub deployment: Option<Arc<str>>,
}

fn key(meta: &ObjectMeta) -> ObjectKey {
    (Arc::from(meta.namespace.as_deref().unwrap_or_default()), Arc::from(meta.name.as_deref().unwrap_or_default()))
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first())
}

fn addresses<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = texts.into_iter().filter_map(|t| t.parse().ok()).collect();
    out.dedup();
    out
}

/// `containerd://0123abcd…` → `0123abcd…`, as the cgroup path names the container.
fn container_id(status_id: &str) -> &str {
    status_id.split_once("://").map_or(status_id, |(_, id)| id)
}

fn cut(text: &str, max: usize) -> Box<str> {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

impl From<&Pod> for PodRecord {
    fn from(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let addresses = if host_network {
            Vec::new()
        } else {
            let listed = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|ip| ip.ip.as_str());
            let primary = status.and_then(|s| s.pod_ip.as_deref());
            addresses(primary.into_iter().chain(listed))
        };
        let owner = controller(meta).and_then(|o| {
            let kind = match o.kind.as_str() {
                "ReplicaSet" => OwnerKind::ReplicaSet,
                "StatefulSet" => OwnerKind::Workload(WorkloadKind::StatefulSet),
                "DaemonSet" => OwnerKind::Workload(WorkloadKind::DaemonSet),
                "Job" => OwnerKind::Workload(WorkloadKind::Job),
                "CronJob" => OwnerKind::Workload(WorkloadKind::CronJob),
                "Deployment" => OwnerKind::Workload(WorkloadKind::Deployment),
                _ => return None,
            };
            Some((kind, Arc::from(o.name.as_str())))
        });
        let containers = status
            .into_iter()
            .flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()))
            .filter_map(|c| Some((container_id(c.container_id.as_deref()?).into(), Arc::from(c.name.as_str()))))
            .collect();
        let resource_annotations = meta
            .annotations
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(RESOURCE_ANNOTATION_PREFIX)?;
                (!key.is_empty() && !v.is_empty()).then(|| (key.into(), cut(v, ANNOTATION_VALUE_MAX)))
            })
            .take(ANNOTATIONS_MAX)
            .collect();
        Self {
            key: key(meta),
            uid: Arc::from(meta.uid.as_deref().unwrap_or_default()),
            node: spec.and_then(|s| s.node_name.as_deref()).map(Arc::from),
            addresses,
            owner,
            containers,
            resource_annotations,
        }
    }
}

impl From<&Service> for ServiceRecord {
    fn from(service: &Service) -> Self {
        let spec = service.spec.as_ref();
        let listed = spec.and_then(|s| s.cluster_ips.as_ref()).into_iter().flatten().map(String::as_str);
        let primary = spec.and_then(|s| s.cluster_ip.as_deref());
        // "None" (headless) does not parse as an address and drops out.
        Self { key: key(&service.metadata), cluster_ips: addresses(primary.into_iter().chain(listed)) }
    }
}

/// The label that ties an `EndpointSlice` to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl From<&EndpointSlice> for EndpointSliceRecord {
    fn from(slice: &EndpointSlice) -> Self {
        let meta = &slice.metadata;
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(|s| Arc::from(s.as_str()));
        // FQDN slices hold names, which do not parse and drop out.
        let texts = slice.endpoints.iter().flat_map(|e| e.addresses.iter()).map(String::as_str);
        Self { key: key(meta), service, addresses: addresses(texts) }
    }
}

impl From<&ReplicaSet> for ReplicaSetRecord {
    fn from(replicaset: &ReplicaSet) -> Self {
        let meta = &replicaset.metadata;
        let deployment = controller(meta).filter(|o| o.kind == "Deployment").map(|o| Arc::from(o.name.as_str()));
        Self { key: key(meta), deployment }
    }
}

#[cfg(test)]
impl PodRecord {
    /// A pod of namespace `shop` owned by a Deployment named `deployment` directly (tests).
    pub fn test_pod(name: &str, uid: &str, address: &str, deployment: &str) -> Self {
        Self {
            key: (Arc::from("shop"), Arc::from(name)),
            uid: Arc::from(uid),
            node: Some(Arc::from("node-1")),
            addresses: vec![address.parse().expect("an address")],
            owner: Some((OwnerKind::Workload(WorkloadKind::Deployment), Arc::from(deployment))),
            containers: vec![("c1".into(), Arc::from("app"))],
            resource_annotations: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-5d8f-x2x9z", "namespace": "shop", "uid": "5a1e-uid",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
                                     "uid": "rs-uid", "controller": true}],
                "annotations": {"resource.opentelemetry.io/service.name": "storefront",
                                "resource.opentelemetry.io/team": "payments", "other": "x"}
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
            "status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}],
                       "containerStatuses": [{"name": "web", "containerID": "containerd://abc123", "image": "i",
                                              "imageID": "", "ready": true, "restartCount": 0}]}
        })
    }

    #[test]
    fn a_pod_keeps_its_names_addresses_owner_containers_and_resource_annotations() {
        let pod: Pod = serde_json::from_value(pod_json()).unwrap();
        let record = PodRecord::from(&pod);
        assert_eq!((&*record.key.0, &*record.key.1, &*record.uid), ("shop", "web-5d8f-x2x9z", "5a1e-uid"));
        assert_eq!(record.node.as_deref(), Some("node-1"));
        assert_eq!(record.addresses, ["10.1.2.3".parse::<IpAddr>().unwrap(), "fd00::3".parse().unwrap()]);
        assert_eq!(record.owner, Some((OwnerKind::ReplicaSet, Arc::from("web-5d8f"))));
        assert_eq!(record.containers, [(Box::from("abc123"), Arc::from("web"))]);
        let mut annotations = record.resource_annotations.clone();
        annotations.sort();
        assert_eq!(annotations, [("service.name".into(), "storefront".into()), ("team".into(), "payments".into())]);
    }

    #[test]
    fn a_host_network_pod_has_no_address_of_its_own() {
        let mut json = pod_json();
        json["spec"]["hostNetwork"] = true.into();
        let pod: Pod = serde_json::from_value(json).unwrap();
        assert!(PodRecord::from(&pod).addresses.is_empty());
    }

    #[test]
    fn services_slices_and_replicasets() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"]}
        }))
        .unwrap();
        let record = ServiceRecord::from(&service);
        assert_eq!(record.cluster_ips.len(), 2);
        let headless: Service =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}))
                .unwrap();
        assert!(ServiceRecord::from(&headless).cluster_ips.is_empty());
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.2.3"]}, {"addresses": ["10.1.2.4"]}]
        }))
        .unwrap();
        let record = EndpointSliceRecord::from(&slice);
        assert_eq!(record.service.as_deref(), Some("web"));
        assert_eq!(record.addresses.len(), 2);
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-5d8f", "namespace": "shop",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": "d", "controller": true}]}
        }))
        .unwrap();
        assert_eq!(ReplicaSetRecord::from(&rs).deployment.as_deref(), Some("web"));
    }

    #[test]
    fn long_annotation_values_are_cut_on_a_character_boundary() {
        assert_eq!(&*cut("ééé", 3), "é");
        assert_eq!(&*cut("abc", 10), "abc");
    }
}
