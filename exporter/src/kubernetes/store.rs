//! The watchers' records, kept per resource, and the view built from them. A relist
//! replaces a resource's records whole (objects deleted while the watch was down
//! disappear); each resource is bounded, and objects past the bound are counted.
use std::{collections::HashMap, sync::Arc};

use super::{
    objects::{EndpointSliceRecord, ObjectKey, OwnerKind, PodRecord, ReplicaSetRecord, ServiceRecord},
    view::{ClusterView, PeerIdentity, PodIdentity, WorkloadKind},
};

/// One change from a watcher.
#[derive(Debug)]
pub enum Update {
    Pod(Change<PodRecord>),
    Service(Change<ServiceRecord>),
    EndpointSlice(Change<EndpointSliceRecord>),
    ReplicaSet(Change<ReplicaSetRecord>),
}

#[derive(Debug)]
pub enum Change<R> {
    Applied(R),
    Deleted(ObjectKey),
    /// A full list: everything the resource holds now.
    Relisted(Vec<R>),
}

/// Records of one resource, at most `max`.
struct Records<R> {
    by_key: HashMap<ObjectKey, R>,
    max: usize,
    /// Objects not kept because the resource was full, since the start.
    refused: u64,
}

/// A record's place in its resource.
pub trait Keyed {
    fn key(&self) -> &ObjectKey;
}

impl<R: Keyed> Records<R> {
    fn new(max: usize) -> Self {
        Self { by_key: HashMap::new(), max, refused: 0 }
    }

    fn apply(&mut self, change: Change<R>) {
        match change {
            Change::Applied(record) => {
                let key = record.key().clone();
                if self.by_key.len() < self.max || self.by_key.contains_key(&key) {
                    self.by_key.insert(key, record);
                } else {
                    self.refused += 1;
                }
            }
            Change::Deleted(key) => {
                self.by_key.remove(&key);
            }
            Change::Relisted(records) => {
                self.by_key.clear();
                for record in records {
                    self.apply(Change::Applied(record));
                }
            }
        }
    }
}

pub struct Store {
    pods: Records<PodRecord>,
    services: Records<ServiceRecord>,
    slices: Records<EndpointSliceRecord>,
    replicasets: Records<ReplicaSetRecord>,
}

/// How many objects of each resource the store holds, and how many it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub pods: usize,
    pub services: usize,
    pub endpointslices: usize,
    pub replicasets: usize,
    pub refused: u64,
}

macro_rules! keyed {
    ($($record:ty),*) => {$(
        impl Keyed for $record {
            fn key(&self) -> &ObjectKey {
                &self.key
            }
        }
    )*};
}
keyed!(PodRecord, ServiceRecord, EndpointSliceRecord, ReplicaSetRecord);

impl Store {
    /// `max_objects` bounds each resource separately.
    pub fn new(max_objects: usize) -> Self {
        Self {
            pods: Records::new(max_objects),
            services: Records::new(max_objects),
            slices: Records::new(max_objects),
            replicasets: Records::new(max_objects),
        }
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Pod(change) => self.pods.apply(change),
            Update::Service(change) => self.services.apply(change),
            Update::EndpointSlice(change) => self.slices.apply(change),
            Update::ReplicaSet(change) => self.replicasets.apply(change),
        }
    }

    pub fn counts(&self) -> StoreCounts {
        StoreCounts {
            pods: self.pods.by_key.len(),
            services: self.services.by_key.len(),
            endpointslices: self.slices.by_key.len(),
            replicasets: self.replicasets.by_key.len(),
            refused: self.pods.refused + self.services.refused + self.slices.refused + self.replicasets.refused,
        }
    }

    /// The view of everything held now. A pod's Deployment comes through its
    /// `ReplicaSet`; an address that is both a pod's and a Service endpoint's names both.
    pub fn view(&self) -> ClusterView {
        let mut view = ClusterView::default();
        view.pods.reserve(self.pods.by_key.len());
        for pod in self.pods.by_key.values() {
            let identity = Arc::new(self.pod_identity(pod));
            let deployment = match &identity.workload {
                Some((WorkloadKind::Deployment, name)) => Some(Arc::clone(name)),
                _ => None,
            };
            for &address in &pod.addresses {
                let peer = PeerIdentity {
                    namespace: Arc::clone(&pod.key.0),
                    pod: Some(Arc::clone(&pod.key.1)),
                    deployment: deployment.clone(),
                    service: None,
                };
                view.peers.insert(address, Arc::new(peer));
            }
            view.pods.insert(Arc::clone(&pod.uid), identity);
        }
        // Endpoints name the Service of the pods behind them (the first slice seen wins
        // for an address behind several Services).
        for slice in self.slices.by_key.values() {
            let Some(service) = &slice.service else { continue };
            for address in &slice.addresses {
                let entry = view.peers.entry(*address).or_insert_with(|| {
                    Arc::new(PeerIdentity { namespace: Arc::clone(&slice.key.0), ..PeerIdentity::default() })
                });
                if entry.service.is_none() {
                    Arc::make_mut(entry).service = Some(Arc::clone(service));
                }
            }
        }
        for service in self.services.by_key.values() {
            for &address in &service.cluster_ips {
                let peer = PeerIdentity {
                    namespace: Arc::clone(&service.key.0),
                    service: Some(Arc::clone(&service.key.1)),
                    ..PeerIdentity::default()
                };
                view.peers.insert(address, Arc::new(peer));
            }
        }
        view
    }

    fn pod_identity(&self, pod: &PodRecord) -> PodIdentity {
        let (workload, replicaset) = match &pod.owner {
            Some((OwnerKind::ReplicaSet, rs)) => {
                let key = (Arc::clone(&pod.key.0), Arc::clone(rs));
                match self.replicasets.by_key.get(&key).and_then(|r| r.deployment.clone()) {
                    Some(deployment) => (Some((WorkloadKind::Deployment, deployment)), Some(Arc::clone(rs))),
                    None => (Some((WorkloadKind::ReplicaSet, Arc::clone(rs))), Some(Arc::clone(rs))),
                }
            }
            Some((OwnerKind::Workload(kind), name)) => (Some((*kind, Arc::clone(name))), None),
            None => (None, None),
        };
        PodIdentity {
            namespace: Arc::clone(&pod.key.0),
            name: Arc::clone(&pod.key.1),
            node: pod.node.clone(),
            workload,
            replicaset,
            containers: pod.containers.clone(),
            resource_annotations: pod.resource_annotations.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn key(ns: &str, name: &str) -> ObjectKey {
        (Arc::from(ns), Arc::from(name))
    }

    fn pod(name: &str, uid: &str, address: &str, rs: &str) -> PodRecord {
        PodRecord {
            key: key("shop", name),
            uid: Arc::from(uid),
            node: Some(Arc::from("node-1")),
            addresses: vec![address.parse().unwrap()],
            owner: Some((OwnerKind::ReplicaSet, Arc::from(rs))),
            containers: vec![("c1".into(), Arc::from("web"))],
            resource_annotations: Vec::new(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pods_are_named_with_their_deployment_and_service() {
        let mut store = Store::new(100);
        store.apply(Update::Pod(Change::Applied(pod("web-1", "u1", "10.0.0.1", "web-5d8f"))));
        let view = store.view();
        // The ReplicaSet is not known yet: it is the workload.
        assert_eq!(view.pod("u1").unwrap().workload, Some((WorkloadKind::ReplicaSet, Arc::from("web-5d8f"))));
        store.apply(Update::ReplicaSet(Change::Applied(ReplicaSetRecord {
            key: key("shop", "web-5d8f"),
            deployment: Some(Arc::from("web")),
        })));
        store.apply(Update::EndpointSlice(Change::Applied(EndpointSliceRecord {
            key: key("shop", "web-abcde"),
            service: Some(Arc::from("web-svc")),
            addresses: vec![ip("10.0.0.1")],
        })));
        store.apply(Update::Service(Change::Applied(ServiceRecord {
            key: key("shop", "web-svc"),
            cluster_ips: vec![ip("10.96.0.5")],
        })));
        let view = store.view();
        let identity = view.pod("u1").unwrap();
        assert_eq!(identity.workload, Some((WorkloadKind::Deployment, Arc::from("web"))));
        assert_eq!(identity.replicaset.as_deref(), Some("web-5d8f"));
        assert_eq!(identity.container_name("c1").map(|n| &**n), Some("web"));
        let peer = view.peer(ip("10.0.0.1")).unwrap();
        assert_eq!(
            (peer.pod.as_deref(), peer.deployment.as_deref(), peer.service.as_deref()),
            (Some("web-1"), Some("web"), Some("web-svc"))
        );
        let cluster_ip = view.peer(ip("10.96.0.5")).unwrap();
        assert_eq!((cluster_ip.pod.as_deref(), cluster_ip.service.as_deref()), (None, Some("web-svc")));
    }

    #[test]
    fn deletes_and_relists_remove_what_is_gone() {
        let mut store = Store::new(100);
        store.apply(Update::Pod(Change::Applied(pod("a", "ua", "10.0.0.1", "rs"))));
        store.apply(Update::Pod(Change::Applied(pod("b", "ub", "10.0.0.2", "rs"))));
        store.apply(Update::Pod(Change::Deleted(key("shop", "a"))));
        assert!(store.view().pod("ua").is_none());
        store.apply(Update::Pod(Change::Relisted(vec![pod("c", "uc", "10.0.0.3", "rs")])));
        let view = store.view();
        assert!(view.pod("ub").is_none() && view.peer(ip("10.0.0.2")).is_none());
        assert_eq!(view.peer(ip("10.0.0.3")).unwrap().pod.as_deref(), Some("c"));
    }

    #[test]
    fn each_resource_is_bounded_and_refusals_are_counted() {
        let mut store = Store::new(2);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            store.apply(Update::Pod(Change::Applied(pod(name, name, &format!("10.0.0.{i}"), "rs"))));
        }
        // An update of a held object is not refused.
        store.apply(Update::Pod(Change::Applied(pod("a", "a", "10.0.0.9", "rs"))));
        let counts = store.counts();
        assert_eq!((counts.pods, counts.refused), (2, 1));
        assert!(store.view().peer(ip("10.0.0.9")).is_some());
    }
}
