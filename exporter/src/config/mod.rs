//! flowtel's own settings: a YAML file (`--config` or `FLOWTEL_CONFIG`), then
//! `FLOWTEL_*` variables over it (environment wins), then one `validate()`. The
//! standard `OTEL_*` variables are checked in `otel.rs`. Nothing is loaded before the
//! whole configuration is known to be good.
mod env;
mod otel;

use std::path::Path;

use serde::{Deserialize, Serialize};

#[cfg(test)]
pub use env::settings;
pub use otel::{OtelSettings, otel_from_env};

use crate::probes::AttachMode;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("config file {path}: {cause}")]
    Parse { path: String, cause: serde_yaml::Error },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("{key} = {value}: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub probes: ProbesConfig,
    pub dns: DnsConfig,
    pub http: HttpConfig,
    pub geo: GeoConfig,
    pub kubernetes: KubernetesConfig,
    pub telemetry: TelemetryConfig,
    pub host: HostConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// `auto` (tracepoints, else fentry, else kprobes), `tracepoints`, `fentry`, `kprobes`.
    pub attach_mode: AttachMode,
    /// Distinct flows (process × endpoints × direction) the kernel holds per interval.
    pub flow_table_entries: u32,
    /// TCP sockets tracked at once (owner and open state of each connection), and
    /// sockets with traffic per interval (the per-socket byte tables).
    pub socket_table_entries: u32,
    /// Minimum gap between two RTT samples of one flow, in microseconds.
    pub rtt_sample_interval_us: u64,
    /// The host's cgroup v2 root, where the cgroup probes attach; `None`: the first
    /// cgroup2 mount. Set it in a container with its own cgroup namespace.
    pub cgroup_root: Option<std::path::PathBuf>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            attach_mode: AttachMode::Auto,
            flow_table_entries: 8_192,
            socket_table_entries: 32_768,
            rtt_sample_interval_us: 1_000,
            cgroup_root: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Ports whose UDP and TCP traffic is DNS (at most 4); empty turns DNS observation off.
    /// A YAML list, or in the environment a comma-separated list (`53,5353`).
    #[serde(deserialize_with = "ports::deserialize")]
    pub ports: Vec<u16>,
    /// A query without an answer after this long is a `TIMEOUT` lookup.
    pub timeout_ms: u64,
    /// Whether DNS metrics carry `dns.question.name` (capped by the cardinality limit).
    pub question_name: bool,
    /// Queries awaiting their answer at once (and TCP DNS streams being reassembled).
    pub max_pending: usize,
    /// Size of the kernel's DNS packet ring buffer, in KiB (a power of two).
    pub ring_buffer_kib: u32,
    /// Addresses remembered from DNS answers to name flow peers (least recent evicted).
    pub names_capacity: usize,
    /// An answer names its addresses for at least this long, even with a shorter TTL.
    pub name_ttl_floor_s: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            ports: vec![53],
            timeout_ms: 5_000,
            question_name: true,
            max_pending: 65_536,
            ring_buffer_kib: 4_096,
            names_capacity: 65_536,
            name_ttl_floor_s: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[allow(clippy::struct_excessive_bools, reason = "each is one documented on/off setting of the file format")]
pub struct HttpConfig {
    /// Bytes of each clear-text HTTP message start copied from the kernel (request line
    /// and headers); 0 turns clear-text HTTP off. Longer heads are marked
    /// `flowtel.http.truncated`.
    pub capture_bytes: u16,
    /// Whether to attach uprobes to OpenSSL for HTTPS.
    pub tls: bool,
    /// Whether the OpenSSL uprobes go on instructions the kernel emulates, found by
    /// disassembling each function (x86-64; about 25x cheaper per call where a
    /// single-step is costly); off: the function's entry and a uretprobe.
    pub tls_emulated_probes: bool,
    /// Whether to export spans (the `http.*.request.duration` metrics are always on).
    pub spans: bool,
    /// A request without a response after this long ends with `error.type=timeout`.
    pub timeout_ms: u64,
    /// Whether spans carry `url.query` (off: query strings often hold secrets).
    pub query_string: bool,
    /// Route templates for `http.route`, like `/users/{id}` (a `{...}` segment matches
    /// any one segment). A YAML list, or in the environment comma-separated.
    #[serde(deserialize_with = "strings::deserialize")]
    pub routes: Vec<String>,
    /// When no template matches: collapse numeric, UUID and long hex segments into
    /// `{id}` and use that as `http.route`.
    pub route_heuristic: bool,
    /// Connections with an exchange in progress, at most (least recent dropped, counted).
    pub max_connections: usize,
    /// Spans held for the next export, at most (more are dropped and counted).
    pub max_spans: usize,
    /// Size of the kernel's HTTP ring buffer, in KiB (a power of two).
    pub ring_buffer_kib: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            capture_bytes: 2_048,
            tls: true,
            tls_emulated_probes: true,
            spans: true,
            timeout_ms: 30_000,
            query_string: false,
            routes: Vec::new(),
            route_heuristic: true,
            max_connections: 65_536,
            max_spans: 65_536,
            ring_buffer_kib: 8_192,
        }
    }
}

impl HttpConfig {
    fn validate(
        &self,
        range: impl Fn(&'static str, u64, u64, u64) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        range("http.capture_bytes", self.capture_bytes.into(), 0, flowtel_probes_abi::http::CAPTURE_MAX as u64)?;
        range("http.timeout_ms", self.timeout_ms, 100, 3_600_000)?;
        range("http.max_connections", self.max_connections as u64, 16, 1 << 22)?;
        range("http.max_spans", self.max_spans as u64, 16, 1 << 24)?;
        range("http.ring_buffer_kib", self.ring_buffer_kib.into(), 4, 1 << 20)?;
        if !self.ring_buffer_kib.is_power_of_two() {
            return Err(ConfigError::Invalid {
                key: "http.ring_buffer_kib",
                value: self.ring_buffer_kib.to_string(),
                reason: "must be a power of two (the kernel's ring buffer requires it)".into(),
            });
        }
        if let Some(bad) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(ConfigError::Invalid {
                key: "http.routes",
                value: bad.clone(),
                reason: "a route template starts with '/', like /users/{id}".into(),
            });
        }
        Ok(())
    }
}

mod strings {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Strings {
        List(Vec<String>),
        Text(String),
        Empty(()),
    }

    /// A list, or a comma-separated string (as an environment variable gives).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        Ok(match Strings::deserialize(deserializer)? {
            Strings::List(list) => list,
            Strings::Text(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            Strings::Empty(()) => Vec::new(),
        })
    }
}

mod ports {
    use std::fmt;

    use serde::{
        Deserializer,
        de::{Error, SeqAccess, Visitor},
    };

    const ACCEPTED: &str = "a port (1-65535), a list of ports, or a comma-separated string of them";

    /// A list, one port, or a comma-separated string (as an environment variable gives);
    /// an empty value turns DNS off. A visitor rather than an untagged enum, so a bad
    /// value is named ("70000 is not a port") instead of "did not match any variant".
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
        deserializer.deserialize_any(PortsVisitor)
    }

    fn port<E: Error>(value: u64) -> Result<u16, E> {
        u16::try_from(value)
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| E::custom(format!("{value} is not a port (1-65535)")))
    }

    struct PortsVisitor;

    impl<'de> Visitor<'de> for PortsVisitor {
        type Value = Vec<u16>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(ACCEPTED)
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(vec![port(value)?])
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<Self::Value, E> {
            match u64::try_from(value) {
                Ok(value) => self.visit_u64(value),
                Err(_) => Err(E::custom(format!("{value} is not a port (1-65535)"))),
            }
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
            text.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| match p.parse::<u64>() {
                    Ok(value) => port(value),
                    Err(_) => Err(E::custom(format!("{p:?} is not a port number (1-65535)"))),
                })
                .collect()
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ports = Vec::new();
            while let Some(value) = seq.next_element::<u64>()? {
                ports.push(port(value)?);
            }
            Ok(ports)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoConfig {
    /// A MaxMind-format City database (`GeoIP2` or `GeoLite2` City); `None`: no `geo.*`.
    pub database: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// `auto` (on in a pod, or when `KUBECONFIG` is set), `on` (an error when no API
    /// server is configured), `off`.
    pub mode: crate::kubernetes::KubernetesMode,
    /// Objects held per resource (pods, services, endpointslices, replicasets); more are
    /// counted in `flowtel.agent.events.lost` and not named.
    pub max_objects: usize,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self { mode: crate::kubernetes::KubernetesMode::Auto, max_objects: 200_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Series per instrument and workload before the SDK's overflow series takes over.
    pub cardinality_limit: usize,
    /// Export intervals an exited process's workload is kept without new data.
    pub idle_intervals: u32,
    /// `process.command_line` (the whole command line, up to 256 characters) on each
    /// workload. Off: arguments often carry secrets; `process.command` is always there.
    pub process_command_line: bool,
    /// Processes with a workload Resource of their own at once (each costs memory: see
    /// docs/performance.md); past it, new processes fold into their container's or
    /// pod's and executable's workload.
    pub max_workloads: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { cardinality_limit: 2_000, idle_intervals: 2, process_command_line: false, max_workloads: 512 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// `host.name`; defaults to the kernel's hostname (set it in a container).
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `error`, `warn`, `info`, `debug`, `trace`, or directives.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

impl Config {
    /// File (if any), then `FLOWTEL_*` overrides from `vars`, then validation.
    pub fn load(path: Option<&Path>, vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|cause| ConfigError::Read { path: path.display().to_string(), cause })?;
                let parse = |cause| ConfigError::Parse { path: path.display().to_string(), cause };
                // Straight from the text first: only then do errors carry the key's path
                // and line (`dns.timeout_ms: invalid type ... at line 2 column 15`); a
                // `Value` in between has lost both.
                let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(parse)?;
                if value.is_null() {
                    serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
                } else {
                    serde_yaml::from_str::<Self>(&text).map_err(parse)?;
                    value
                }
            }
            None => serde_yaml::Value::Mapping(serde_yaml::Mapping::new()),
        };
        env::apply_overrides(&mut tree, vars)?;
        let config = Self::deserialize(tree)
            .map_err(|source| ConfigError::Env { var: "FLOWTEL_*".into(), reason: source.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    reason: format!("must be between {min} and {max}"),
                })
            }
        };
        range("probes.flow_table_entries", self.probes.flow_table_entries.into(), 64, 1 << 22)?;
        range("probes.socket_table_entries", self.probes.socket_table_entries.into(), 64, 1 << 22)?;
        range("probes.rtt_sample_interval_us", self.probes.rtt_sample_interval_us, 0, 60_000_000)?;
        self.dns.validate(range)?;
        self.http.validate(range)?;
        range("kubernetes.max_objects", self.kubernetes.max_objects as u64, 16, 1 << 22)?;
        range("telemetry.cardinality_limit", self.telemetry.cardinality_limit as u64, 1, 1_000_000)?;
        range("telemetry.idle_intervals", self.telemetry.idle_intervals.into(), 0, 1_000)?;
        range("telemetry.max_workloads", self.telemetry.max_workloads as u64, 1, 1 << 20)?;
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                value: self.log.level.clone(),
                reason: err.to_string(),
            });
        }
        if let Some(root) = &self.probes.cgroup_root
            && crate::mounts::cgroup2_dir(root).is_none()
        {
            return Err(ConfigError::Invalid {
                key: "probes.cgroup_root",
                value: root.display().to_string(),
                reason: "not a cgroup v2 directory (no cgroup.controllers there or in unified/)".into(),
            });
        }
        if let Some(database) = &self.geo.database
            && let Err(err) = std::fs::File::open(database)
        {
            return Err(ConfigError::Invalid {
                key: "geo.database",
                value: database.display().to_string(),
                reason: format!("cannot be read: {err}"),
            });
        }
        if self.host.name.as_deref() == Some("") {
            return Err(ConfigError::Invalid {
                key: "host.name",
                value: String::new(),
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

impl DnsConfig {
    fn validate(
        &self,
        range: impl Fn(&'static str, u64, u64, u64) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let max_ports = flowtel_probes_abi::dns::PORTS_MAX;
        if self.ports.len() > max_ports || self.ports.contains(&0) {
            return Err(ConfigError::Invalid {
                key: "dns.ports",
                value: format!("{:?}", self.ports),
                reason: format!("at most {max_ports} ports, each between 1 and 65535 (an empty list turns DNS off)"),
            });
        }
        range("dns.timeout_ms", self.timeout_ms, 100, 60_000)?;
        range("dns.max_pending", self.max_pending as u64, 16, 1 << 22)?;
        range("dns.ring_buffer_kib", self.ring_buffer_kib.into(), 4, 1 << 20)?;
        if !self.ring_buffer_kib.is_power_of_two() {
            return Err(ConfigError::Invalid {
                key: "dns.ring_buffer_kib",
                value: self.ring_buffer_kib.to_string(),
                reason: "must be a power of two (the kernel's ring buffer requires it)".into(),
            });
        }
        range("dns.names_capacity", self.names_capacity as u64, 0, 1 << 24)?;
        range("dns.name_ttl_floor_s", self.name_ttl_floor_s, 0, 86_400)
    }
}

#[cfg(test)]
mod tests;
