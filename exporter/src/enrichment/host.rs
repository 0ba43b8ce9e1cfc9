use std::fs;

use flowtel_semconv::resource;
use opentelemetry::KeyValue;

/// The host attributes every Resource carries.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub name: String,
    pub id: Option<String>,
    pub arch: &'static str,
    pub os_version: Option<String>,
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl HostInfo {
    /// `name_override` comes from configuration (a container sees its own hostname).
    pub fn detect(name_override: Option<&str>) -> Self {
        Self {
            name: name_override
                .map(str::to_owned)
                .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
                .unwrap_or_else(|| "unknown".into()),
            id: read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id")),
            // host.arch values of the semantic conventions.
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "powerpc64" => "ppc64",
                other => other,
            },
            os_version: read_trimmed("/proc/sys/kernel/osrelease"),
        }
    }

    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new(resource::HOST_NAME, self.name.clone()),
            KeyValue::new(resource::HOST_ARCH, self.arch),
            KeyValue::new(resource::OS_TYPE, "linux"),
        ];
        if let Some(id) = &self.id {
            attrs.push(KeyValue::new(resource::HOST_ID, id.clone()));
        }
        if let Some(version) = &self.os_version {
            attrs.push(KeyValue::new(resource::OS_VERSION, version.clone()));
        }
        attrs
    }
}
