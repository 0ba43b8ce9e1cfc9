//! flowtel in its image under a real Docker engine, started with exactly the README's
//! `docker run` command, watching an nginx container that serves HTTP and HTTPS through
//! its own libssl and a curl container calling it: exact bytes, Docker's own container
//! ids on both workloads, HTTPS spans, `flowtel status` inside the container. Then the
//! compose example, made local (`local_compose` says how), brought up and down.
#![allow(clippy::float_cmp, reason = "byte totals are integers carried as f64, compared exactly on purpose")]
use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use flowtel_e2e::{
    docker::{APP_IMAGE, Container, FLOWTEL_IMAGE, docker, docker_output, engine_or_skip, images},
    query::{points, spans, spans_matching, total},
    receiver::Receiver,
    servers::self_signed,
    traffic::eventually,
};

const HTTP_PORT: u16 = 18080;
const HTTPS_PORT: u16 = 18443;
/// The file the client fetches, of a length no header can be confused with.
const BODY_LEN: usize = 7_777;

fn repo(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// The README's `docker run` command (between the `container-run` markers), as words:
/// the tests run exactly that, with only the collector's address made the receiver's.
fn readme_run_command(name: &str, endpoint: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = readme.find("<!-- container-run -->").expect("README: <!-- container-run --> marker");
    let end = readme.find("<!-- /container-run -->").expect("README: <!-- /container-run --> marker");
    let command = readme[start..end].replace("\\\n", " ");
    let line = command.lines().find(|l| l.trim_start().starts_with("docker run")).expect("a docker run line");
    let words: Vec<String> = line.split_whitespace().skip(2).map(str::to_owned).collect();
    assert_eq!(words.last().map(String::as_str), Some(FLOWTEL_IMAGE), "the README runs {FLOWTEL_IMAGE}");
    let mut out: Vec<String> = words
        .iter()
        .map(|w| match w.split_once('=') {
            Some(("OTEL_EXPORTER_OTLP_ENDPOINT", _)) => format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}"),
            _ if w == "flowtel" => name.to_owned(),
            _ => w.clone(),
        })
        .collect();
    assert!(out.iter().any(|w| w.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT=")), "the README names the collector");
    // Export every second instead of every minute: the only setting a test adds.
    out.splice(out.len() - 1..out.len() - 1, ["-e".to_owned(), "OTEL_METRIC_EXPORT_INTERVAL=1000".to_owned()]);
    out
}

/// nginx (one process, no master) with a plain and a TLS server on the host network,
/// its configuration, file and certificate in `dir`.
fn nginx_container(dir: &std::path::Path) -> Container {
    let (cert, key) = self_signed(dir);
    std::fs::write(dir.join("file"), "x".repeat(BODY_LEN)).unwrap();
    let conf = format!(
        "master_process off;\npid /tmp/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 64; }}\n\
         http {{ access_log off; root /conf; client_body_temp_path /tmp; proxy_temp_path /tmp;\n\
           fastcgi_temp_path /tmp; uwsgi_temp_path /tmp; scgi_temp_path /tmp;\n\
           server {{ listen 127.0.0.1:{HTTP_PORT}; location = /file {{ }} }}\n\
           server {{ listen 127.0.0.1:{HTTPS_PORT} ssl; ssl_certificate /conf/{c}; ssl_certificate_key /conf/{k};\n\
             location = /file {{ }} location = /fail {{ return 500; }} }} }}\n",
        c = file_name(&cert),
        k = file_name(&key)
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let volume = format!("{}:/conf:ro", dir.display());
    let nginx = ["nginx", "-c", "/conf/nginx.conf", "-g", "daemon off;"];
    let server = Container::run(&[&["--network", "host", "-v", &volume, APP_IMAGE][..], &nginx].concat());
    let up = eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", HTTPS_PORT)).is_ok());
    assert!(up, "nginx did not listen; its log:\n{}", server.logs());
    server
}

fn file_name(path: &str) -> String {
    std::path::Path::new(path).file_name().unwrap().to_string_lossy().into_owned()
}

/// curl in a container of its own, one request per URL, a second apart (`--rate`): curl
/// lives long enough for the agent to read its cgroup from /proc, which is where a
/// container's id comes from on a cgroup v1 or hybrid host such as CI's (there the
/// engine gives containers no cgroup v2 directory of their own). Returns the
/// container's id and what curl measured per request: bytes sent, header and body
/// bytes received.
fn curl_container(dir: &std::path::Path, urls: &[String]) -> (String, Vec<(u64, u64, u64)>) {
    let cidfile = dir.join("curl.cid");
    let _ = std::fs::remove_file(&cidfile);
    let cid_arg = format!("--cidfile={}", cidfile.display());
    let mut args = vec!["run", "--rm", &cid_arg, "--network", "host", APP_IMAGE, "curl", "-sk", "--rate", "1/s"];
    args.extend(["-w", "%{size_request} %{size_header} %{size_download}\\n"]);
    for url in urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = docker(&args);
    let id = std::fs::read_to_string(&cidfile).unwrap().trim().to_owned();
    let sizes = out
        .lines()
        .map(|l| {
            let n: Vec<u64> = l.split_whitespace().map(|w| w.parse().unwrap()).collect();
            (n[0], n[1], n[2])
        })
        .collect();
    (id, sizes)
}

#[test]
fn in_its_image_it_names_containers_by_dockers_ids_and_decodes_their_own_libssl() {
    if !engine_or_skip("in_its_image_it_names_containers_by_dockers_ids_and_decodes_their_own_libssl") {
        return;
    }
    images();
    let dir = std::env::temp_dir().join(format!("flowtel-containers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let receiver = Receiver::grpc("127.0.0.1:0");
    let name = format!("flowtel-test-{}", std::process::id());
    let command = readme_run_command(&name, &format!("http://{}", receiver.addr));
    let words: Vec<&str> = command.iter().map(String::as_str).collect();
    let _ = docker_output(&["rm", "-f", &name]);
    assert_eq!(words[0], "-d", "the README's command runs detached");
    let agent = Container::run(&words[1..]);
    let observing = eventually(Duration::from_mins(1), || agent.logs().contains("flowtel is observing"));
    assert!(observing, "flowtel did not start in its container:\n{}", agent.logs());

    let server = nginx_container(&dir);
    let server_pid = server.pid();
    let http = format!("http://127.0.0.1:{HTTP_PORT}/file");
    let https = |path: &str| format!("https://127.0.0.1:{HTTPS_PORT}{path}");
    let (client, sizes) = curl_container(&dir, &[http, https("/file"), https("/fail")]);

    let server_res = [("container.id", server.id.as_str())];
    let client_res = [("container.id", client.as_str())];
    let to_http = [("network.peer.port", "18080"), ("network.io.direction", "transmit")];
    let (sent, header, body) = sizes[0];
    assert_eq!(body, BODY_LEN as u64);
    let delivered = eventually(Duration::from_secs(30), || {
        let got = spans(&receiver.traces.snapshot());
        total(&points(&receiver.received.snapshot(), "flowtel.network.io"), &client_res, &to_http) == sent as f64
            && spans_matching(&got, &server_res, &[("url.scheme", "https")]).len() >= 2
            && spans_matching(&got, &client_res, &[("url.scheme", "https")]).len() >= 2
    });
    let got = receiver.received.snapshot();
    let io = points(&got, "flowtel.network.io");
    assert!(delivered, "io: {io:#?}\nflowtel's log:\n{}", agent.logs());

    // Clear text, exact at both ends: what curl counted is what each side's socket moved.
    let client_tx = total(&io, &client_res, &[("network.peer.port", "18080"), ("network.io.direction", "transmit")]);
    let client_rx = total(&io, &client_res, &[("network.peer.port", "18080"), ("network.io.direction", "receive")]);
    let server_rx = total(&io, &server_res, &[("network.local.port", "18080"), ("network.io.direction", "receive")]);
    let server_tx = total(&io, &server_res, &[("network.local.port", "18080"), ("network.io.direction", "transmit")]);
    assert_eq!((client_tx, client_rx), (sent as f64, (header + body) as f64), "client container's bytes");
    assert_eq!((server_rx, server_tx), (sent as f64, (header + body) as f64), "nginx container's bytes");

    // HTTPS through the container's own libssl: a file of the image's layers, not the host's.
    let theirs = std::fs::metadata(format!("/proc/{server_pid}/root/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
    let ours = std::fs::metadata("/usr/lib/x86_64-linux-gnu/libssl.so.3").unwrap();
    assert_ne!((theirs.dev(), theirs.ino()), (ours.dev(), ours.ino()), "the container shares the host's libssl");
    let traces = spans(&receiver.traces.snapshot());
    let served = spans_matching(&traces, &server_res, &[("url.scheme", "https")]);
    let called = spans_matching(&traces, &client_res, &[("url.scheme", "https")]);
    let census = |rows: &[&flowtel_e2e::query::SpanRow]| {
        let mut v: Vec<(String, String)> = rows
            .iter()
            .map(|s| {
                (s.attrs["url.path"].clone(), s.attrs.get("http.response.status_code").cloned().unwrap_or_default())
            })
            .collect();
        v.sort();
        v
    };
    let want = vec![("/fail".to_owned(), "500".to_owned()), ("/file".to_owned(), "200".to_owned())];
    assert_eq!(census(&served), want, "nginx's HTTPS spans");
    assert_eq!(census(&called), want, "curl's HTTPS spans");
    assert!(served.iter().all(|s| s.kind == "SERVER") && called.iter().all(|s| s.kind == "CLIENT"));

    // `flowtel status` inside the running container.
    let status = docker_output(&["exec", &agent.id, "/usr/local/bin/flowtel", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "flowtel status failed in the container: {text}");
    let feature = |name: &str| text.lines().any(|l| l.trim_start().starts_with(name) && l.contains("attached: "));
    assert!(feature("tls"), "status:\n{text}");
    // The cgroup probes found the host's v2 hierarchy through the mounted cgroup root
    // (on a hybrid host such as CI's, its unified/ beneath).
    assert!(feature("dns") && feature("udp_peers"), "status:\n{text}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped compose example made local, service by service, so that the two cannot
/// drift apart: every service on the host network (this engine has no bridge), the
/// public images replaced by local ones (the app and client by the app image, flowtel
/// by `flowtel:local`, the collector by rotel, a third-party collector, in the app
/// image), names resolved through `extra_hosts`, the collector's port a free one, and
/// `BPF`/`PERFMON` granted as `SYS_ADMIN`, which Debian's 20.10 engine needs (README).
/// Prometheus, Jaeger and Grafana have no local images and are left out.
fn local_compose(shipped: &serde_yaml::Value, collector_port: u16, rotel: &str, receiver: &str) -> serde_yaml::Value {
    use serde_yaml::Value;
    let mut compose = shipped.clone();
    let services = compose.get_mut("services").and_then(Value::as_mapping_mut).expect("services");
    for gone in ["prometheus", "jaeger", "grafana"] {
        services.remove(gone);
    }
    let kept: Vec<String> = services.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
    let yaml = |text: &str| serde_yaml::from_str::<Value>(text).unwrap();
    for (name, service) in services.iter_mut() {
        let service = service.as_mapping_mut().unwrap();
        service.remove("ports");
        service.remove("build");
        service.insert("network_mode".into(), "host".into());
        if let Some(Value::Sequence(deps)) = service.get_mut("depends_on") {
            deps.retain(|d| d.as_str().is_some_and(|d| kept.iter().any(|k| k == d)));
        }
        let image: Value = match name.as_str().unwrap() {
            "app" => {
                service.insert("command".into(), yaml(r#"["nginx", "-g", "daemon off;"]"#));
                APP_IMAGE.into()
            }
            "client" => {
                service.insert("extra_hosts".into(), yaml(r#"["app:127.0.0.1"]"#));
                APP_IMAGE.into()
            }
            "flowtel" => {
                service.insert("extra_hosts".into(), yaml(r#"["otel-collector:127.0.0.1"]"#));
                let caps = service.get_mut("cap_add").and_then(Value::as_sequence_mut).expect("cap_add");
                assert!(caps.iter().any(|c| c == "BPF") && caps.iter().any(|c| c == "PERFMON"), "{caps:?}");
                caps.retain(|c| c != "BPF" && c != "PERFMON");
                caps.push("SYS_ADMIN".into());
                let env = service.get_mut("environment").and_then(Value::as_mapping_mut).expect("environment");
                let endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(Value::as_str).unwrap().to_owned();
                let endpoint = endpoint.replace(":4317", &format!(":{collector_port}"));
                env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into());
                FLOWTEL_IMAGE.into()
            }
            "otel-collector" => {
                let command = format!(
                    "[rotel-agent, start, --otlp-grpc-endpoint, '127.0.0.1:{collector_port}', --otlp-http-endpoint, \
                     '127.0.0.1:{}', --exporter, otlp, --otlp-exporter-endpoint, '{receiver}', --batch-timeout, 200ms]",
                    collector_port + 1
                );
                service.insert("command".into(), yaml(&command));
                service.insert("volumes".into(), yaml(&format!("['{rotel}:/usr/local/bin/rotel-agent:ro']")));
                APP_IMAGE.into()
            }
            other => panic!("the compose example has a service '{other}' this test does not know"),
        };
        service.insert("image".into(), image);
    }
    compose
}

fn free_port_pair() -> u16 {
    (20000..30000)
        .step_by(2)
        .find(|p| {
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        })
        .expect("a free pair of ports")
}

/// Runs `docker-compose args` for the project; panics with its output when it fails.
fn compose(file: &std::path::Path, project: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project, "-f", &file.display().to_string()])
        .args(args)
        .output()
        .expect("docker-compose (apt install docker-compose)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docker-compose {args:?} failed: {text}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Takes a compose project down (containers and volumes) whatever the assertions say.
struct Down<'a>(&'a std::path::Path, &'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker-compose")
            .args(["-p", self.1, "-f", &self.0.display().to_string(), "down", "-v", "-t", "2"])
            .output();
    }
}

#[test]
fn the_compose_example_runs_under_compose_with_local_images() {
    if !engine_or_skip("the_compose_example_runs_under_compose_with_local_images") {
        return;
    }
    images();
    let shipped: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("examples/docker-compose/docker-compose.yaml")).unwrap())
            .unwrap();
    let receiver = Receiver::grpc("127.0.0.1:0");
    let rotel = flowtel_e2e::collector::rotel_binary();
    let local = local_compose(&shipped, free_port_pair(), &rotel, &format!("http://{}", receiver.addr));
    let dir = std::env::temp_dir().join(format!("flowtel-compose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("docker-compose.yaml");
    std::fs::write(&file, serde_yaml::to_string(&local).unwrap()).unwrap();
    let project = format!("flowteltest{}", std::process::id());
    compose(&file, &project, &["up", "-d", "--no-build"]);
    let _down = Down(&file, &project);
    let app = compose(&file, &project, &["ps", "-q", "app"]);
    let app_res = [("container.id", app.as_str())];
    // The example exports every 10 s; the client calls / and /missing once a second.
    let arrived = eventually(Duration::from_mins(1), || {
        let got = spans(&receiver.traces.snapshot());
        let io = points(&receiver.received.snapshot(), "flowtel.network.io");
        total(&io, &app_res, &[("network.io.direction", "receive")]) > 0.0
            && !spans_matching(&got, &app_res, &[("url.path", "/missing"), ("http.response.status_code", "404")])
                .is_empty()
    });
    let logs = || compose(&file, &project, &["logs", "--no-color", "flowtel", "otel-collector"]);
    assert!(arrived, "nothing from the app container arrived through the compose collector:\n{}", logs());
    let io = points(&receiver.received.snapshot(), "flowtel.network.io");
    let point = io.iter().find(|p| p.resource.get("container.id").is_some_and(|id| *id == app)).unwrap();
    assert_eq!(point.resource["host.name"], "demo-host");
    assert_eq!(point.resource["deployment.environment.name"], "demo");
    let traces = spans(&receiver.traces.snapshot());
    let ok = spans_matching(&traces, &app_res, &[("url.path", "/"), ("http.response.status_code", "200")]);
    assert!(ok.iter().all(|s| s.kind == "SERVER") && !ok.is_empty(), "the app's spans: {traces:#?}");
}
