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
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("{key} = {value}: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub probes: ProbesConfig,
    pub telemetry: TelemetryConfig,
    pub host: HostConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// `auto` (tracepoints, kprobes where they are missing), `tracepoints`, `kprobes`.
    pub attach_mode: AttachMode,
    /// Distinct flows (process × endpoints × direction) the kernel holds per interval.
    pub flow_table_entries: u32,
    /// TCP sockets tracked at once (owner and open state of each connection), and
    /// sockets with traffic per interval (the per-socket byte tables).
    pub socket_table_entries: u32,
    /// Minimum gap between two RTT samples of one flow, in microseconds.
    pub rtt_sample_interval_us: u64,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            attach_mode: AttachMode::Auto,
            flow_table_entries: 8_192,
            socket_table_entries: 32_768,
            rtt_sample_interval_us: 1_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Series per instrument and workload before the SDK's overflow series takes over.
    pub cardinality_limit: usize,
    /// Export intervals an exited process's workload is kept without new data.
    pub idle_intervals: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { cardinality_limit: 2_000, idle_intervals: 2 }
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
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                let parse = |source| ConfigError::Parse { path: path.display().to_string(), source };
                let mut value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(parse)?;
                if value.is_null() {
                    value = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
                }
                // Deserialize once straight from the file, so errors name the file's keys.
                Self::deserialize(value.clone()).map_err(parse)?;
                value
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
        range("telemetry.cardinality_limit", self.telemetry.cardinality_limit as u64, 1, 1_000_000)?;
        range("telemetry.idle_intervals", self.telemetry.idle_intervals.into(), 0, 1_000)?;
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                value: self.log.level.clone(),
                reason: err.to_string(),
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

#[cfg(test)]
mod tests;
