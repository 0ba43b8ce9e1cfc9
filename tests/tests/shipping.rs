//! What users deploy, checked: the compose file (Debian's docker-compose, no engine
//! needed), the Kubernetes manifests, the collector configs, the Grafana dashboards,
//! and the compose topology run natively (flowtel -> rotel -> receiver) with the
//! compose file's own environment.
#![allow(clippy::float_cmp, reason = "byte totals are integers carried as f64, compared exactly on purpose")]
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use flowtel_e2e::{
    DOCUMENTED_CAPABILITIES,
    agent::Agent,
    collector::Rotel,
    netns::Link,
    privileged_or_skip,
    query::{matching, points},
    receiver::Receiver,
    traffic::{eventually, tcp_exchange},
};
use serde::Deserialize as _;
use serde_yaml::Value;

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value.and_then(Value::as_sequence).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .{ext} files in {dir}");
    out
}

#[test]
fn compose_file_passes_docker_compose_config() {
    let file = repo("examples/docker-compose/docker-compose.yaml");
    let out = Command::new("docker-compose").arg("-f").arg(&file).args(["config", "-q"]).output();
    let out = match out {
        Ok(out) => out,
        Err(err) => {
            assert!(std::env::var("CI").is_err(), "docker-compose missing under CI: {err}");
            eprintln!("\n!!!!!!!! SKIPPED: docker-compose not installed (apt install docker-compose) !!!!!!!!\n");
            return;
        }
    };
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    let compose = &yaml_docs(&file)[0];
    let flowtel = at(compose, &["services", "flowtel"]).expect("a flowtel service");
    assert_eq!(str_at(flowtel, &["pid"]), Some("host"));
    assert_eq!(strings(flowtel.get("cap_drop")), ["ALL"]);
    assert_eq!(strings(flowtel.get("cap_add")), DOCUMENTED_CAPABILITIES);
    for service in ["otel-collector", "prometheus", "jaeger", "grafana", "app"] {
        assert!(at(compose, &["services", service]).is_some(), "compose lacks {service}");
    }
}

/// The Kubernetes versions whose API schemas every manifest is checked against (README
/// "Run it on Kubernetes"): each release `kubernetes-validate` bundles.
const KUBERNETES_VERSIONS: [&str; 13] =
    ["1.25", "1.26", "1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37"];

#[test]
fn kubernetes_manifests_validate_strictly_against_the_api_schemas() {
    let manifests = files("examples/kubernetes", "yaml");
    for version in KUBERNETES_VERSIONS {
        let out =
            Command::new("kubernetes-validate").args(["--strict", "--quiet", "-k", version]).args(&manifests).output();
        let out = match out {
            Ok(out) => out,
            Err(err) => {
                assert!(std::env::var("CI").is_err(), "kubernetes-validate missing under CI: {err}");
                eprintln!(
                    "\n!!!!!!!! SKIPPED: kubernetes-validate not installed (pip install kubernetes-validate) !!!!!!!!\n"
                );
                return;
            }
        };
        assert!(
            out.status.success(),
            "Kubernetes {version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kubernetes_manifests_have_what_the_daemonset_needs() {
    let docs: Vec<Value> = files("examples/kubernetes", "yaml").iter().flat_map(|p| yaml_docs(p)).collect();
    let by_kind = |kind: &str| docs.iter().filter(|d| str_at(d, &["kind"]) == Some(kind)).collect::<Vec<_>>();
    for doc in &docs {
        assert!(str_at(doc, &["apiVersion"]).is_some() && str_at(doc, &["metadata", "name"]).is_some(), "{doc:?}");
    }
    let daemonset = by_kind("DaemonSet");
    assert_eq!(daemonset.len(), 1);
    let pod = at(daemonset[0], &["spec", "template", "spec"]).unwrap();
    assert_eq!(at(pod, &["hostPID"]).and_then(Value::as_bool), Some(true));
    let account = str_at(pod, &["serviceAccountName"]).unwrap();
    assert!(by_kind("ServiceAccount").iter().any(|sa| str_at(sa, &["metadata", "name"]) == Some(account)));
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(strings(at(security, &["capabilities", "add"])), DOCUMENTED_CAPABILITIES);
    assert_eq!(strings(at(security, &["capabilities", "drop"])), ["ALL"]);
    assert_ne!(at(security, &["privileged"]).and_then(Value::as_bool), Some(true), "no privileged: least privilege");
    let env: BTreeMap<&str, &Value> =
        container["env"].as_sequence().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e)).collect();
    assert_eq!(str_at(env["K8S_NODE_NAME"], &["valueFrom", "fieldRef", "fieldPath"]), Some("spec.nodeName"));
    assert!(env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"));
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(at(container, &["resources", kind, resource]).is_some(), "resources.{kind}.{resource}");
        }
    }

    let role = by_kind("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role[0]["rules"].as_sequence().unwrap() {
        assert!(strings(rule.get("verbs")).iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())), "{rule:?}");
        granted.extend(strings(rule.get("resources")));
    }
    let expected: BTreeSet<String> =
        ["pods", "services", "endpointslices", "replicasets", "namespaces"].map(String::from).into();
    assert_eq!(granted, expected);
    let binding = by_kind("ClusterRoleBinding");
    assert_eq!(str_at(binding[0], &["roleRef", "name"]), str_at(role[0], &["metadata", "name"]));
    assert_eq!(str_at(&binding[0]["subjects"][0], &["name"]), Some(account));
}

/// Every pipeline names components the config defines, every defined component is used,
/// and `memory_limiter` comes first, as the collector's docs ask.
fn check_collector(name: &str, config: &Value) {
    const KNOWN: [(&str, &[&str]); 3] = [
        ("receivers", &["otlp"]),
        ("processors", &["memory_limiter", "batch", "resource"]),
        ("exporters", &["otlp", "otlphttp", "prometheusremotewrite", "prometheus", "debug"]),
    ];
    let pipelines = at(config, &["service", "pipelines"]).and_then(Value::as_mapping).expect("service.pipelines");
    assert!(!pipelines.is_empty(), "{name}: no pipelines");
    for (section, types) in KNOWN {
        let defined: BTreeSet<String> = config[section]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: no {section}"))
            .keys()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let mut used = BTreeSet::new();
        for (pipeline, body) in pipelines {
            for component in strings(body.get(section)) {
                assert!(defined.contains(&component), "{name}: {pipeline:?} uses undefined {section} {component}");
                used.insert(component);
            }
        }
        assert_eq!(used, defined, "{name}: {section} defined but unused");
        for component in &defined {
            let kind = component.split('/').next().unwrap();
            assert!(types.contains(&kind), "{name}: unknown {section} type {kind}");
        }
    }
    for (pipeline, body) in pipelines {
        let processors = strings(body.get("processors"));
        assert_eq!(processors.first().map(String::as_str), Some("memory_limiter"), "{name}: {pipeline:?}");
        assert!(processors.iter().any(|p| p == "batch"), "{name}: {pipeline:?} has no batch");
    }
}

#[test]
fn collector_configs_wire_receivers_to_exporters() {
    for path in files("otel-collector", "yaml") {
        check_collector(&path.display().to_string(), &yaml_docs(&path)[0]);
    }
    let manifest = repo("examples/kubernetes/otel-collector.yaml");
    let map = yaml_docs(&manifest).into_iter().find(|d| str_at(d, &["kind"]) == Some("ConfigMap")).unwrap();
    let config: Value = serde_yaml::from_str(str_at(&map, &["data", "config.yaml"]).unwrap()).unwrap();
    check_collector("examples/kubernetes/otel-collector.yaml", &config);
}

/// Each metric's instrument, from the README's telemetry table (`| `name` | Counter |`).
fn instruments() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let rows = readme.lines().filter_map(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
        let instrument = cells.get(2)?;
        let known = ["Counter", "Histogram", "Gauge"].iter().any(|kind| instrument.starts_with(kind));
        known.then(|| (name.to_owned(), (*instrument).to_owned()))
    });
    rows.collect()
}

/// Prometheus names of every semconv metric, as the collector's Prometheus exporters
/// write them: dots to underscores, the unit as a suffix (`By` bytes, `s` seconds,
/// `{...}` nothing), then by instrument: `_total` on counters, nothing on gauges,
/// `_bucket`/`_sum`/`_count` on explicit-bucket histograms, the bare name (a native
/// histogram) with `_sum`/`_count` on exponential ones.
fn prometheus_names() -> BTreeSet<String> {
    let instruments = instruments();
    let mut names = BTreeSet::new();
    for m in flowtel_semconv::metric::ALL {
        let unit = match m.unit {
            "By" => "_bytes",
            "s" => "_seconds",
            _ => "",
        };
        let base = format!("{}{unit}", m.name.replace('.', "_"));
        let instrument = instruments.iter().find(|(name, _)| name == m.name).map(|(_, kind)| kind.as_str());
        let suffixes: &[&str] = match instrument {
            Some("Counter") => &["_total"],
            Some("Gauge") => &[""],
            Some(kind) if kind.contains("exponential") => &["", "_sum", "_count"],
            Some(kind) if kind.starts_with("Histogram") => &["_bucket", "_sum", "_count"],
            _ => panic!("{} is not in the README's telemetry table with its instrument", m.name),
        };
        names.extend(suffixes.iter().map(|suffix| format!("{base}{suffix}")));
    }
    names
}

/// Metric selectors in a `PromQL` expression: the dashboards always write `name{...}`.
fn selectors(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'{' {
            continue;
        }
        let start = bytes[..i].iter().rposition(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b':'));
        let name = &expr[start.map_or(0, |s| s + 1)..i];
        if !name.is_empty() {
            out.push(name.to_owned());
        }
    }
    out
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboards_query_only_metrics_flowtel_emits() {
    let known = prometheus_names();
    let datasources = yaml_docs(&repo("examples/docker-compose/grafana/provisioning/datasources/datasources.yaml"));
    let uids: BTreeSet<String> = datasources[0]["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|d| d["uid"].as_str().map(str::to_owned))
        .collect();
    for path in files("examples/docker-compose/grafana/dashboards", "json") {
        let text = std::fs::read_to_string(&path).unwrap();
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(dashboard["uid"].is_string() && dashboard["title"].is_string(), "{}", path.display());
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty());
        for panel in panels {
            let uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(uids.contains(uid), "{}: panel {} uses datasource {uid:?}", path.display(), panel["title"]);
        }
        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        assert!(!all.is_empty(), "{}: no queries", path.display());
        for expr in all {
            let names = selectors(&expr);
            assert!(!names.is_empty(), "{}: query without a metric selector: {expr}", path.display());
            for name in names {
                assert!(known.contains(&name), "{}: {name} is not a flowtel metric ({expr})", path.display());
            }
        }
    }
}

/// A dashboard's queries as Prometheus gets them: Grafana's interval variables as
/// `5m`, each template variable as every value it offers (its `query` list).
fn expanded_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    let variables: Vec<(String, Vec<String>)> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let options = v["query"].as_str()?.split(',').map(|o| o.trim().to_owned()).collect();
            Some((format!("${}", v["name"].as_str()?), options))
        })
        .collect();
    let mut out = Vec::new();
    for expr in all {
        let expr = ["$__rate_interval", "$__range", "$__interval"].iter().fold(expr, |e, v| e.replace(v, "5m"));
        let mut variants = vec![expr];
        for (name, options) in &variables {
            variants = variants
                .iter()
                .flat_map(|e| {
                    if e.contains(name.as_str()) {
                        options.iter().map(|o| e.replace(name.as_str(), o)).collect()
                    } else {
                        vec![e.clone()]
                    }
                })
                .collect();
        }
        out.extend(variants);
    }
    out
}

/// Every dashboard query, with each value of its variables, parses in a real
/// Prometheus (Debian's 2.42, started here): its query API answers `bad_data` for an
/// expression that does not parse.
#[test]
fn dashboard_queries_parse_in_prometheus() {
    let binary = Path::new("/usr/bin/prometheus");
    if !binary.exists() {
        assert!(std::env::var("CI").is_err(), "prometheus missing under CI (scripts/setup.sh installs it)");
        eprintln!("\n!!!!!!!! SKIPPED: prometheus not installed (apt install prometheus) !!!!!!!!\n");
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowtel-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), "global: {}\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let mut server = Command::new(binary)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={address}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    let query = |expr: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "--data-urlencode"])
            .arg(format!("query={expr}"))
            .arg(format!("http://{address}/api/v1/query"))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let ready = eventually(Duration::from_secs(30), || query("1")["status"] == "success");
    let mut checked = 0;
    let mut failures = Vec::new();
    if ready {
        assert_eq!(query("sum(rate(x[5m])")["errorType"], "bad_data", "a broken query must be refused");
        for path in files("examples/docker-compose/grafana/dashboards", "json") {
            let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for expr in expanded_exprs(&dashboard) {
                let answer = query(&expr);
                checked += 1;
                if answer["status"] != "success" {
                    failures.push(format!("{}: {expr}: {}", path.display(), answer["error"]));
                }
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ready, "prometheus did not start on {address}");
    assert!(checked > 0 && failures.is_empty(), "{checked} queries, refused: {failures:#?}");
}

/// Where scripts/setup.sh installs `@grafana/schema` and TypeScript from npm.
const GRAFANA_SCHEMA: &str = "/var/cache/flowtel-test/grafana-schema";

/// Every dashboard, as an object literal, `satisfies` `@grafana/schema`'s `Dashboard`
/// under `tsc --strict`: an unknown or mistyped field anywhere fails.
#[test]
fn dashboards_satisfy_grafanas_dashboard_schema() {
    let tsc = Path::new(GRAFANA_SCHEMA).join("node_modules/.bin/tsc");
    if !tsc.exists() {
        assert!(std::env::var("CI").is_err(), "{} missing under CI (scripts/setup.sh installs it)", tsc.display());
        eprintln!("\n!!!!!!!! SKIPPED: @grafana/schema not installed (scripts/setup.sh) !!!!!!!!\n");
        return;
    }
    // Inside the install, so that `@grafana/schema` resolves from its node_modules.
    let dir = Path::new(GRAFANA_SCHEMA).join(format!("check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dashboards = files("examples/docker-compose/grafana/dashboards", "json");
    for (i, path) in dashboards.iter().enumerate() {
        let json = std::fs::read_to_string(path).unwrap();
        let ts = format!(
            "// {}\nimport type {{ Dashboard }} from '@grafana/schema';\nexport const dashboard{i} = ({json}) satisfies Dashboard;\n",
            path.display()
        );
        std::fs::write(dir.join(format!("dashboard{i}.ts")), ts).unwrap();
    }
    let config = r#"{ "compilerOptions": { "strict": true, "noEmit": true, "module": "esnext",
        "moduleResolution": "bundler", "target": "es2022", "skipLibCheck": true }, "include": ["*.ts"] }"#;
    std::fs::write(dir.join("tsconfig.json"), config).unwrap();
    let out = Command::new(&tsc).arg("-p").arg(&dir).output().expect("run tsc");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!dashboards.is_empty());
    assert!(
        out.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose file's flowtel service, run natively: the same environment variables,
/// with only the two values that name container paths and hosts mapped to this host
/// (the collector's address, the host cgroup mount), exporting through rotel.
#[test]
fn the_compose_environment_runs_natively_through_a_third_party_collector() {
    if !privileged_or_skip("the_compose_environment_runs_natively_through_a_third_party_collector") {
        return;
    }
    let compose = &yaml_docs(&repo("examples/docker-compose/docker-compose.yaml"))[0];
    let environment = at(compose, &["services", "flowtel", "environment"]).and_then(Value::as_mapping).unwrap();
    let receiver = Receiver::grpc("127.0.0.1:0");
    let rotel = Rotel::start(&format!("http://{}", receiver.addr));
    let cgroup_root = Command::new("findmnt").args(["-n", "-t", "cgroup2", "-o", "TARGET"]).output().unwrap();
    let cgroup_root = String::from_utf8_lossy(&cgroup_root.stdout).lines().next().unwrap_or_default().to_owned();
    let env: Vec<(String, String)> = environment
        .iter()
        .map(|(k, v)| {
            let key = k.as_str().unwrap().to_owned();
            let value = v.as_str().map_or_else(|| serde_yaml::to_string(v).unwrap().trim().to_owned(), str::to_owned);
            let value = match key.as_str() {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                    value.replace("otel-collector:4317", &format!("127.0.0.1:{}", rotel.grpc_port))
                }
                "FLOWTEL_PROBES_CGROUP_ROOT" => cgroup_root.clone(),
                _ => value,
            };
            (key, value)
        })
        .collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::start(&env_refs);
    let link = Link::new("compose", 24);
    let (_, client) = tcp_exchange(&link, false, 9700, 1, 321, 654);
    let client_res = [("process.pid", client.as_str())];
    // The compose file's export interval is 10 s.
    let delivered = eventually(Duration::from_secs(40), || {
        let io = points(&receiver.received.snapshot(), "flowtel.network.io");
        !matching(&io, &client_res, &[("network.io.direction", "transmit")]).is_empty()
    });
    assert!(delivered, "nothing arrived through rotel; agent log:\n{}", agent.log());
    let io = points(&receiver.received.snapshot(), "flowtel.network.io");
    let point = matching(&io, &client_res, &[("network.io.direction", "transmit")])[0];
    assert_eq!(point.value, 321.0);
    assert_eq!(point.resource["host.name"], "demo-host");
    assert_eq!(point.resource["deployment.environment.name"], "demo");
}
