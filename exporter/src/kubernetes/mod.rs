//! The cluster around the node, from the Kubernetes API server: which pod a local
//! process runs in (name, namespace, owner workload, the `resource.opentelemetry.io/*`
//! annotations) and who a peer address is (pod, Deployment, Service).
//!
//! kube-rs watchers (`watch.rs`) turn pods, Services, `EndpointSlices` and `ReplicaSets`
//! into compact records (`objects.rs`); the store (`store.rs`) keeps them, bounded, and
//! builds an immutable view (`view.rs`) that the export loop reads without locking. The
//! API server being absent, slow or restarting only delays the view: signals flow
//! without Kubernetes names meanwhile.
mod objects;
mod store;
mod view;
mod watch;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use store::StoreCounts;
pub use view::{ClusterView, PeerIdentity, PodIdentity, WorkloadKind};
pub use watch::{RESOURCES, WatchErrors};

pub use objects::{EndpointSliceRecord, PodRecord, ReplicaSetRecord, ServiceRecord};
pub use store::{Change, Store, Update};

/// `kubernetes.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    /// On in a pod (`KUBERNETES_SERVICE_HOST` is set) or when `KUBECONFIG` names a file.
    #[default]
    Auto,
    On,
    Off,
}

/// What the watchers last published.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub view: Arc<ClusterView>,
    pub counts: StoreCounts,
}

/// The running watchers, as the export loop sees them.
pub struct Kubernetes {
    pub snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub errors: WatchErrors,
}

/// Whether `auto` finds an API server configured: in-cluster, or a kubeconfig named.
fn configured(env: impl Fn(&str) -> Option<String>) -> bool {
    env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) || env("KUBECONFIG").is_some_and(|k| !k.is_empty())
}

/// Starts the watchers when the mode and the environment say so. The standard client
/// configuration is used: the in-cluster service account, else `KUBECONFIG`. With
/// `on`, a missing configuration is an error; with `auto`, a warning.
pub async fn start(mode: KubernetesMode, max_objects: usize) -> anyhow::Result<Option<Kubernetes>> {
    let wanted = match mode {
        KubernetesMode::Off => false,
        KubernetesMode::On => true,
        KubernetesMode::Auto => configured(|name| std::env::var(name).ok()),
    };
    if !wanted {
        return Ok(None);
    }
    let (client, server) = match client().await {
        Ok(client) => client,
        Err(err) if mode == KubernetesMode::On => {
            return Err(err.context("kubernetes.mode is on, but no Kubernetes API client configuration was found"));
        }
        Err(err) => {
            tracing::warn!(%err, "no usable Kubernetes API client configuration: Kubernetes names are off");
            return Ok(None);
        }
    };
    tracing::info!(%server, "watching pods, services, endpointslices and replicasets");
    let (snapshots, errors) = watch::spawn(&client, max_objects);
    Ok(Some(Kubernetes { snapshots, errors }))
}

/// A client from the standard configuration, and the API server it talks to.
async fn client() -> anyhow::Result<(kube::Client, String)> {
    let config = kube::Config::infer().await?;
    let server = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config)?, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_turns_on_in_a_pod_or_with_a_kubeconfig() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(!configured(env(&[])));
        assert!(!configured(env(&[("KUBECONFIG", "")])));
        assert!(configured(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")])));
        assert!(configured(env(&[("KUBECONFIG", "/root/.kube/config")])));
    }
}
