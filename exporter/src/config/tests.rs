use std::collections::HashMap;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The error as `main` prints it: the message, then each cause once.
fn message(err: ConfigError) -> String {
    format!("{:#}", anyhow::Error::from(err))
}

fn file(text: &str) -> tempfile_lite::TempFile {
    tempfile_lite::TempFile::with(text)
}

/// A file that removes itself; enough for these tests without a dependency.
mod tempfile_lite {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn with(text: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("flowtel-config-{}-{n}.yaml", std::process::id()));
            let mut f = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
            Self(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn defaults_without_file_or_env() {
    assert_eq!(Config::load(None, &[]).unwrap(), Config::default());
}

#[test]
fn file_then_env_wins() {
    let f = file("probes:\n  flow_table_entries: 1000\ntelemetry:\n  cardinality_limit: 50\n");
    let env = vars(&[("FLOWTEL_TELEMETRY_CARDINALITY_LIMIT", "70"), ("FLOWTEL_PROBES_ATTACH_MODE", "kprobes")]);
    let config = Config::load(Some(&f.0), &env).unwrap();
    assert_eq!(config.probes.flow_table_entries, 1000);
    assert_eq!(config.telemetry.cardinality_limit, 70);
    assert_eq!(config.probes.attach_mode, AttachMode::Kprobes);
}

#[test]
fn empty_file_is_defaults() {
    let f = file("");
    assert_eq!(Config::load(Some(&f.0), &[]).unwrap(), Config::default());
}

#[test]
fn unknown_key_in_file_is_named() {
    let f = file("probes:\n  flow_tabel_entries: 10\n");
    let err = Config::load(Some(&f.0), &[]).map(drop).map_err(message).unwrap_err();
    assert!(err.contains("flow_tabel_entries") && err.contains("flow_table_entries"), "{err}");
}

#[test]
fn bad_values_are_named_with_what_is_accepted() {
    let f = file("probes:\n  attach_mode: sometimes\n");
    let err = Config::load(Some(&f.0), &[]).map(drop).map_err(message).unwrap_err();
    assert!(err.contains("sometimes") && err.contains("tracepoints"), "{err}");

    let err = Config::load(None, &vars(&[("FLOWTEL_PROBES_FLOW_TABLE_ENTRIES", "lots")]))
        .map(drop)
        .map_err(message)
        .unwrap_err();
    assert!(err.starts_with("environment variable FLOWTEL_PROBES_FLOW_TABLE_ENTRIES"), "{err}");

    let err = Config::load(None, &vars(&[("FLOWTEL_PROBES_FLOW_TABLE_ENTRIES", "3")]))
        .map(drop)
        .map_err(message)
        .unwrap_err();
    assert_eq!(err, "probes.flow_table_entries = 3: must be between 64 and 4194304");

    let err = Config::load(None, &vars(&[("FLOWTEL_LOG_LEVEL", "loud[")])).map(drop).map_err(message).unwrap_err();
    assert!(err.starts_with("log.level = loud["), "{err}");
}

#[test]
fn unknown_flowtel_variable_is_an_error_but_config_path_is_not() {
    let err = Config::load(None, &vars(&[("FLOWTEL_PROBE_MODE", "x")])).map(drop).map_err(message).unwrap_err();
    assert!(err.contains("FLOWTEL_PROBE_MODE") && err.contains("FLOWTEL_PROBES_ATTACH_MODE"), "{err}");
    assert!(Config::load(None, &vars(&[("FLOWTEL_CONFIG", "/x.yaml")])).is_ok());
}

#[test]
fn unreadable_and_unparsable_files() {
    let err = message(Config::load(Some(std::path::Path::new("/nonexistent/flowtel.yaml")), &[]).unwrap_err());
    assert_eq!(err, "cannot read config file /nonexistent/flowtel.yaml: No such file or directory (os error 2)");
    let f = file("probes: [unclosed\n");
    assert!(matches!(Config::load(Some(&f.0), &[]), Err(ConfigError::Parse { .. })));
}

#[test]
fn every_setting_has_a_variable() {
    let names: Vec<String> = env::settings().into_iter().map(|(_, var)| var).collect();
    for expected in [
        "FLOWTEL_PROBES_ATTACH_MODE",
        "FLOWTEL_PROBES_FLOW_TABLE_ENTRIES",
        "FLOWTEL_PROBES_SOCKET_TABLE_ENTRIES",
        "FLOWTEL_PROBES_RTT_SAMPLE_INTERVAL_US",
        "FLOWTEL_TELEMETRY_CARDINALITY_LIMIT",
        "FLOWTEL_TELEMETRY_IDLE_INTERVALS",
        "FLOWTEL_HOST_NAME",
        "FLOWTEL_LOG_LEVEL",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

fn otel(pairs: &[(&str, &str)]) -> Result<OtelSettings, ConfigError> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    otel_from_env(|name| map.get(name).cloned())
}

#[test]
fn otel_defaults_and_choices() {
    let s = otel(&[]).unwrap();
    assert_eq!(s.sink, crate::telemetry::SinkKind::OtlpGrpc);
    assert_eq!(s.export_interval, std::time::Duration::from_mins(1));
    assert_eq!(
        otel(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap().sink,
        crate::telemetry::SinkKind::OtlpHttp
    );
    assert_eq!(otel(&[("OTEL_METRICS_EXPORTER", "console")]).unwrap().sink, crate::telemetry::SinkKind::Console);
    assert_eq!(otel(&[("OTEL_SDK_DISABLED", "true")]).unwrap().sink, crate::telemetry::SinkKind::None);
    let delta = otel(&[("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta")]).unwrap();
    assert_eq!(delta.temporality, opentelemetry_sdk::metrics::Temporality::Delta);
    assert_eq!(otel(&[("OTEL_METRIC_EXPORT_INTERVAL", "1500")]).unwrap().export_interval.as_millis(), 1500);
}

#[test]
fn otel_bad_values_are_named() {
    let err = otel(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).map(drop).map_err(message).unwrap_err();
    assert_eq!(
        err,
        "environment variable OTEL_EXPORTER_OTLP_PROTOCOL: \"http/json\" is not one of: grpc, http/protobuf"
    );
    assert!(otel(&[("OTEL_METRICS_EXPORTER", "prometheus")]).is_err());
    assert!(otel(&[("OTEL_METRIC_EXPORT_INTERVAL", "0")]).is_err());
    assert!(otel(&[("OTEL_METRIC_EXPORT_INTERVAL", "5s")]).is_err());
    assert!(otel(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "ten")]).is_err());
    assert!(otel(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).is_err());
    assert!(otel(&[("OTEL_SDK_DISABLED", "maybe")]).is_err());
}

#[test]
fn dns_ports_from_env_list_and_yaml() {
    let config = Config::load(None, &vars(&[("FLOWTEL_DNS_PORTS", "53, 5353")])).unwrap();
    assert_eq!(config.dns.ports, vec![53, 5353]);
    let f = file("dns:\n  ports: [5300]\n  question_name: false\n");
    let config = Config::load(Some(&f.0), &[]).unwrap();
    assert_eq!((config.dns.ports.as_slice(), config.dns.question_name), (&[5300][..], false));
    let off = Config::load(None, &vars(&[("FLOWTEL_DNS_PORTS", "")])).unwrap();
    assert!(off.dns.ports.is_empty());
}

#[test]
fn bad_dns_values_name_their_key() {
    let err = |pairs: &[(&str, &str)]| Config::load(None, &vars(pairs)).map(drop).map_err(message).unwrap_err();
    assert!(err(&[("FLOWTEL_DNS_PORTS", "53,dns")]).contains("\"dns\" is not a port number"));
    assert!(err(&[("FLOWTEL_DNS_PORTS", "1,2,3,4,5")]).contains("dns.ports"));
    assert!(err(&[("FLOWTEL_DNS_PORTS", "0")]).contains("dns.ports"));
    assert!(err(&[("FLOWTEL_DNS_RING_BUFFER_KIB", "1000")]).contains("power of two"));
    assert!(err(&[("FLOWTEL_DNS_TIMEOUT_MS", "5")]).contains("dns.timeout_ms"));
}

#[test]
fn cgroup_root_must_be_a_cgroup2_directory() {
    let err =
        Config::load(None, &vars(&[("FLOWTEL_PROBES_CGROUP_ROOT", "/tmp")])).map(drop).map_err(message).unwrap_err();
    assert!(err.contains("probes.cgroup_root") && err.contains("not a cgroup v2 directory"), "{err}");
    if let Some(root) = crate::mounts::cgroup2_root() {
        let config = Config::load(None, &vars(&[("FLOWTEL_PROBES_CGROUP_ROOT", root.to_str().unwrap())])).unwrap();
        assert_eq!(config.probes.cgroup_root, Some(root));
    }
}

#[test]
fn a_hybrid_hosts_cgroup_directory_means_its_unified_child() {
    let hybrid = std::env::temp_dir().join(format!("flowtel-hybrid-{}", std::process::id()));
    std::fs::create_dir_all(hybrid.join("unified")).unwrap();
    assert_eq!(crate::mounts::cgroup2_dir(&hybrid), None);
    std::fs::write(hybrid.join("unified/cgroup.controllers"), "cpu memory\n").unwrap();
    assert_eq!(crate::mounts::cgroup2_dir(&hybrid), Some(hybrid.join("unified")));
    let config = Config::load(None, &vars(&[("FLOWTEL_PROBES_CGROUP_ROOT", hybrid.to_str().unwrap())]));
    assert!(config.is_ok(), "a hybrid host's /sys/fs/cgroup is accepted");
    std::fs::write(hybrid.join("cgroup.controllers"), "").unwrap();
    assert_eq!(crate::mounts::cgroup2_dir(&hybrid), Some(hybrid.clone()), "the directory itself comes first");
    std::fs::remove_dir_all(&hybrid).unwrap();
}

#[test]
fn http_settings_from_env_and_yaml() {
    let config = Config::load(
        None,
        &vars(&[("FLOWTEL_HTTP_ROUTES", "/users/{id}, /orders/{id}/items"), ("FLOWTEL_HTTP_CAPTURE_BYTES", "0")]),
    )
    .unwrap();
    assert_eq!(config.http.routes, vec!["/users/{id}".to_owned(), "/orders/{id}/items".to_owned()]);
    assert_eq!(config.http.capture_bytes, 0);
    let f = file("http:\n  routes: ['/a/{x}']\n  tls: false\n  query_string: true\n");
    let config = Config::load(Some(&f.0), &[]).unwrap();
    assert_eq!((config.http.routes.len(), config.http.tls, config.http.query_string), (1, false, true));
    let traces = otel(&[("OTEL_TRACES_EXPORTER", "none"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")]);
    assert_eq!(traces.unwrap().traces_sink, crate::telemetry::SinkKind::None);
    let http = otel(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")]).unwrap();
    assert_eq!(
        (http.traces_sink, http.sink),
        (crate::telemetry::SinkKind::OtlpHttp, crate::telemetry::SinkKind::OtlpGrpc)
    );
}

#[test]
fn bad_http_values_name_their_key() {
    let err = |pairs: &[(&str, &str)]| Config::load(None, &vars(pairs)).map(drop).map_err(message).unwrap_err();
    assert!(err(&[("FLOWTEL_HTTP_CAPTURE_BYTES", "9000")]).contains("http.capture_bytes"));
    assert!(err(&[("FLOWTEL_HTTP_RING_BUFFER_KIB", "3000")]).contains("power of two"));
    assert!(err(&[("FLOWTEL_HTTP_ROUTES", "users/{id}")]).contains("http.routes"));
    assert!(err(&[("FLOWTEL_HTTP_TIMEOUT_MS", "10")]).contains("http.timeout_ms"));
    assert!(err(&[("FLOWTEL_HTTP_SPANS", "maybe")]).contains("FLOWTEL_HTTP_SPANS"));
    assert!(otel(&[("OTEL_TRACES_EXPORTER", "zipkin")]).is_err());
}

#[test]
fn a_wrong_type_in_the_file_names_its_key_and_line() {
    let f = file("dns:\n  timeout_ms: five seconds\n");
    let err = message(Config::load(Some(&f.0), &[]).unwrap_err());
    assert!(err.contains("dns.timeout_ms: invalid type") && err.contains("line 2 column 15"), "{err}");
    let f = file("# only a comment\n");
    assert_eq!(Config::load(Some(&f.0), &[]).unwrap(), Config::default());
}

#[test]
fn ports_out_of_range_say_what_a_port_is() {
    let err = |pairs: &[(&str, &str)]| Config::load(None, &vars(pairs)).map(drop).map_err(message).unwrap_err();
    let out_of_range = err(&[("FLOWTEL_DNS_PORTS", "70000")]);
    assert!(
        out_of_range.contains("FLOWTEL_DNS_PORTS") && out_of_range.contains("70000 is not a port (1-65535)"),
        "{out_of_range}"
    );
    assert!(err(&[("FLOWTEL_DNS_PORTS", "53,70000")]).contains("70000 is not a port (1-65535)"));
    assert!(err(&[("FLOWTEL_DNS_PORTS", "-1")]).contains("-1 is not a port"));
    let f = file("dns:\n  ports: [53, 99999]\n");
    let in_file = message(Config::load(Some(&f.0), &[]).unwrap_err());
    assert!(in_file.contains("dns.ports") && in_file.contains("99999 is not a port (1-65535)"), "{in_file}");
}

#[test]
fn where_spans_go_follows_the_specification() {
    let target = |pairs: &[(&str, &str)]| otel(pairs).unwrap().traces_target.expect("OTLP");
    let grpc = target(&[]);
    assert_eq!((grpc.grpc, grpc.endpoint.as_str(), grpc.gzip), (true, "http://localhost:4317", false));
    let http = target(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
    assert_eq!((http.grpc, http.endpoint.as_str()), (false, "http://localhost:4318/v1/traces"));
    let general = target(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]);
    assert_eq!((general.endpoint.as_str(), general.gzip), ("http://collector:4318/v1/traces", true));
    let own = target(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20abc, x-tenant=a"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=b"),
    ]);
    assert_eq!(own.endpoint, "http://traces:4317");
    let headers = vec![("authorization".to_owned(), "Basic abc".to_owned()), ("x-tenant".to_owned(), "b".to_owned())];
    assert_eq!(own.headers, headers);
    assert!(otel(&[("OTEL_TRACES_EXPORTER", "console")]).unwrap().traces_target.is_none());
}

#[test]
fn bad_span_destinations_are_named() {
    let err = |pairs: &[(&str, &str)]| otel(pairs).map(drop).map_err(message).unwrap_err();
    assert!(
        err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")])
            .contains("TLS to the collector is not built in")
    );
    assert!(err(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317")]).contains("needs http://"));
    assert!(err(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).contains("is not key=value"));
    assert!(err(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=%zz")]).contains("bad percent-encoding"));
    assert!(err(&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")]).contains("gzip, none"));
}
