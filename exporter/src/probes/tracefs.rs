//! Tracepoint field offsets, read from each event's `format` file in tracefs, so the
//! probes follow the running kernel's layout instead of one baked in at build time.
use std::{collections::HashMap, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0}")]
    Mount(std::io::Error),
    #[error("tracepoint {event} does not exist on this kernel")]
    NoEvent { event: String },
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("tracepoint {event} has no field {field}")]
    NoField { event: String, field: String },
}

const ROOT: &str = "/sys/kernel/tracing";

/// Mounts tracefs if the host (or container) has not; aya's attach reads event ids there.
pub fn ensure_mounted() -> Result<(), TracefsError> {
    let mounted = || PathBuf::from(ROOT).join("events").is_dir();
    if mounted() {
        return Ok(());
    }
    // SAFETY: plain mount(2) with NUL-terminated constant strings and no data.
    let rc = unsafe {
        libc::mount(c"nodev".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    let err = std::io::Error::last_os_error();
    // Another process (a second agent, `flowtel status`) may have mounted it meanwhile.
    if rc == 0 || mounted() { Ok(()) } else { Err(TracefsError::Mount(err)) }
}

pub fn event_exists(category: &str, name: &str) -> bool {
    PathBuf::from(ROOT).join("events").join(category).join(name).join("format").is_file()
}

/// The byte offsets of one tracepoint's fields, by field name.
#[derive(Debug)]
pub struct Format {
    event: String,
    offsets: HashMap<String, u16>,
}

impl Format {
    pub fn read(category: &str, name: &str) -> Result<Self, TracefsError> {
        let event = format!("{category}:{name}");
        if !event_exists(category, name) {
            return Err(TracefsError::NoEvent { event });
        }
        let path = PathBuf::from(ROOT).join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path)
            .map_err(|cause| TracefsError::Read { path: path.display().to_string(), cause })?;
        Ok(Self::parse(event, &text))
    }

    /// Parses lines like `field:const void * skaddr; offset:8; size:8; signed:0;` (tab-separated).
    pub fn parse(event: String, text: &str) -> Self {
        let mut offsets = HashMap::new();
        for line in text.lines() {
            let mut declaration = None;
            let mut offset = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(decl) = part.strip_prefix("field:") {
                    declaration = Some(decl);
                } else if let Some(value) = part.strip_prefix("offset:") {
                    offset = value.parse::<u16>().ok();
                }
            }
            if let (Some(decl), Some(offset)) = (declaration, offset) {
                // The name is the last word, without any array suffix: `__u8 saddr[4]`.
                let name = decl.rsplit([' ', '*']).next().unwrap_or(decl);
                let name = name.split('[').next().unwrap_or(name);
                offsets.insert(name.to_owned(), offset);
            }
        }
        Self { event, offsets }
    }

    pub fn offset(&self, field: &str) -> Result<u16, TracefsError> {
        self.offsets
            .get(field)
            .copied()
            .ok_or_else(|| TracefsError::NoField { event: self.event.clone(), field: field.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1525
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_pointer_array_and_scalar_fields() {
        let format = Format::parse("sock:inet_sock_set_state".into(), SET_STATE);
        assert_eq!(format.offset("skaddr").unwrap(), 8);
        assert_eq!(format.offset("newstate").unwrap(), 20);
        assert_eq!(format.offset("saddr_v6").unwrap(), 40);
        assert_eq!(format.offset("common_type").unwrap(), 0);
        let err = format.offset("nope").unwrap_err().to_string();
        assert_eq!(err, "tracepoint sock:inet_sock_set_state has no field nope");
    }
}
