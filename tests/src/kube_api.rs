//! A stand-in Kubernetes API server (`scripts/k8s_api.py`: list and watch with real
//! object JSON, resourceVersions, bookmarks, 410 Gone) and a kubeconfig pointing at it.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use serde_json::{Value, json};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s_api.py")
}

pub struct KubeApi {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl KubeApi {
    /// Serves `objects` from the start; resourceVersions begin after `first_version`.
    /// `port` 0 picks a free one.
    pub fn start(tag: &str, port: u16, objects: &[Value], first_version: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("flowtel-kube-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let state = dir.join("objects.json");
        std::fs::write(&state, serde_json::to_vec(objects).expect("json")).expect("write objects");
        let mut child = Command::new("python3")
            .arg(script())
            .args([port.to_string(), state.display().to_string(), first_version.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the API server stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect("listening PORT");
        let api = Self { child, port, dir };
        std::fs::write(api.kubeconfig(), kubeconfig_text(api.port)).expect("write kubeconfig");
        api
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn post(&self, path: &str, body: &Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let out =
            Command::new("curl").args(["-sf", "-XPOST", &url, "-d", &body.to_string()]).output().expect("run curl");
        assert!(out.status.success(), "POST {path} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Adds or changes an object (watchers see ADDED or MODIFIED).
    pub fn apply(&self, object: &Value) {
        self.post("/test/apply", object);
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.post("/test/delete", &json!({"kind": kind, "namespace": namespace, "name": name}));
    }

    /// Every list answers only after `seconds`.
    pub fn slow(&self, seconds: f64) {
        self.post("/test/slow", &json!({"seconds": seconds}));
    }

    /// Ends every watch and forgets the history: resuming gets 410 Gone, then a relist.
    pub fn expire(&self) {
        self.post("/test/expire", &json!({}));
    }
}

/// A kubeconfig for an API server at `http://127.0.0.1:<port>`, without credentials.
pub fn kubeconfig_text(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n\
         users:\n- name: test\n  user: {{}}\n"
    )
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running pod as the API server returns it.
pub fn pod(namespace: &str, name: &str, uid: &str, ip: &str, owner: Option<(&str, &str)>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "example"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    });
    if let Some((kind, owner_name)) = owner {
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": kind, "name": owner_name, "uid": format!("{owner_name}-uid"),
            "controller": true
        }]);
    }
    pod
}

pub fn replicaset(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": "d-uid", "controller": true
        }]},
        "spec": {"selector": {}}
    })
}

pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [{"port": 80}]}
    })
}

pub fn endpoint_slice(namespace: &str, service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses.iter().map(|a| json!({"addresses": [a]})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-x1"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints
    })
}
