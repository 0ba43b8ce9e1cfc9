//! The cluster as the pipeline reads it: one immutable snapshot, rebuilt by the store
//! when the watchers report changes and handed over whole. The export loop's lookups
//! are one hash probe and an `Arc` clone: no allocation, no lock.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

/// The kind of controller that owns a pod, as named on the Resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

/// The pod a local process runs in: what its workload Resource says about Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub node: Option<Arc<str>>,
    /// The owning workload (a Deployment through its `ReplicaSet`), when there is one.
    pub workload: Option<(WorkloadKind, Arc<str>)>,
    /// The `ReplicaSet` between a pod and its Deployment.
    pub replicaset: Option<Arc<str>>,
    /// Container id (as in the cgroup path, without the runtime prefix) to container name.
    pub containers: Vec<(Box<str>, Arc<str>)>,
    /// The pod's `resource.opentelemetry.io/<key>` annotations, as (key, value).
    pub resource_annotations: Vec<(Box<str>, Box<str>)>,
}

impl PodIdentity {
    pub fn container_name(&self, container_id: &str) -> Option<&Arc<str>> {
        self.containers.iter().find(|(id, _)| &**id == container_id).map(|(_, name)| name)
    }
}

/// A peer address's Kubernetes identity: a pod (and the Service whose endpoint it is),
/// or a Service's cluster IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub namespace: Arc<str>,
    pub pod: Option<Arc<str>>,
    pub deployment: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
}

#[derive(Debug, Default)]
pub struct ClusterView {
    pub(super) pods: HashMap<Arc<str>, Arc<PodIdentity>>,
    pub(super) peers: HashMap<IpAddr, Arc<PeerIdentity>>,
}

impl ClusterView {
    /// The pod with this uid (as found in a kubepods cgroup path).
    pub fn pod(&self, uid: &str) -> Option<&Arc<PodIdentity>> {
        self.pods.get(uid)
    }

    /// Who has this address in the cluster.
    pub fn peer(&self, address: IpAddr) -> Option<&Arc<PeerIdentity>> {
        self.peers.get(&address)
    }
}
