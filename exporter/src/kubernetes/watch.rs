//! One kube-rs watcher per resource, each turning API events into compact records for
//! the store; and the store's task, which publishes a new view at most every
//! `REBUILD_EVERY`. A watcher that fails backs off and resumes (a relist when its
//! resourceVersion has expired); the last view stays in use meanwhile.
use std::{
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use super::{
    Snapshot,
    objects::ObjectKey,
    store::{Change, Store, Update},
};

/// A busy cluster changes every few milliseconds; the view is rebuilt at most this often
/// (36 ms for 10,000 pods and 5,000 Services: `cargo bench -p flowtel --bench identity`).
const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// Updates waiting for the store; a full channel makes the watchers wait.
const UPDATES_QUEUED: usize = 1_024;

/// Failed API requests per resource, in `RESOURCES` order.
pub type WatchErrors = Arc<[AtomicU64; 4]>;

/// The watched resources, as named in the agent's metrics.
pub const RESOURCES: [&str; 4] = ["pods", "services", "endpointslices", "replicasets"];

pub fn spawn(client: &Client, max_objects: usize) -> (watch::Receiver<Arc<Snapshot>>, WatchErrors) {
    use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice};

    let (updates, received) = mpsc::channel(UPDATES_QUEUED);
    let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let errors: WatchErrors = Arc::default();
    tokio::spawn(keep_view(received, Store::new(max_objects), publish));
    let watcher = |index: usize| Watcher { updates: updates.clone(), errors: Arc::clone(&errors), index };
    tokio::spawn(watcher(0).run(Api::<Pod>::all(client.clone()), Update::Pod));
    tokio::spawn(watcher(1).run(Api::<Service>::all(client.clone()), Update::Service));
    tokio::spawn(watcher(2).run(Api::<EndpointSlice>::all(client.clone()), Update::EndpointSlice));
    tokio::spawn(watcher(3).run(Api::<ReplicaSet>::all(client.clone()), Update::ReplicaSet));
    (snapshots, errors)
}

struct Watcher {
    updates: mpsc::Sender<Update>,
    errors: WatchErrors,
    index: usize,
}

impl Watcher {
    async fn run<K, R>(self, api: Api<K>, wrap: fn(Change<R>) -> Update)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        R: for<'a> From<&'a K> + Send,
    {
        // Lists are paged (kube's 500 objects a request): the agent's memory stays
        // bounded on a big cluster. `any_semantic` would let the API server answer from
        // its cache, but in one response holding the whole cluster: about 100 MiB more
        // peak RSS at 10,000 pods, measured with `bench -- identity`.
        let config = watcher::Config::default();
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut relisted: Vec<R> = Vec::new();
        let mut failing = false;
        let resource = RESOURCES[self.index];
        while let Some(event) = events.next().await {
            let change = match event {
                Err(err) => {
                    self.errors[self.index].fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(resource, %err, "Kubernetes watch failed; retrying with backoff");
                    }
                    failing = true;
                    continue;
                }
                Ok(watcher::Event::Init) => {
                    relisted.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(object)) => {
                    relisted.push(R::from(&object));
                    continue;
                }
                Ok(watcher::Event::InitDone) => Change::Relisted(std::mem::take(&mut relisted)),
                Ok(watcher::Event::Apply(object)) => Change::Applied(R::from(&object)),
                Ok(watcher::Event::Delete(object)) => Change::Deleted(key_of(&object)),
            };
            if failing {
                tracing::info!(resource, "Kubernetes watch resumed");
                failing = false;
            }
            if self.updates.send(wrap(change)).await.is_err() {
                return; // the agent is stopping
            }
        }
    }
}

fn key_of<K: Resource>(object: &K) -> ObjectKey {
    (Arc::from(object.namespace().unwrap_or_default()), Arc::from(object.name_any()))
}

async fn keep_view(mut updates: mpsc::Receiver<Update>, mut store: Store, publish: watch::Sender<Arc<Snapshot>>) {
    let mut rebuild = tokio::time::interval(REBUILD_EVERY);
    rebuild.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changed = false;
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Some(update) => {
                    store.apply(update);
                    changed = true;
                }
                None => return,
            },
            _ = rebuild.tick(), if changed => {
                let snapshot = Snapshot { view: Arc::new(store.view()), counts: store.counts() };
                changed = false;
                if publish.send(Arc::new(snapshot)).is_err() {
                    return;
                }
            }
        }
    }
}
