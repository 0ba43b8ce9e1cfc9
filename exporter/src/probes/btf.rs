//! Just enough of a BTF reader to find member offsets in the running kernel's types
//! (`/sys/kernel/btf/vmlinux`), so the probes never depend on a build-time layout.
//! Format: <https://docs.kernel.org/bpf/btf.html>
use std::{collections::HashMap, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {cause} (flowtel needs a kernel built with CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, cause: std::io::Error },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {strukt}.{member} is a bit field, which the probes cannot read")]
    BitField { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bit_size: u32,
}

struct Type {
    kind: u32,
    name: u32,
    /// Size, or the referenced type for modifiers and typedefs.
    #[expect(clippy::struct_field_names, reason = "BTF's own name for this union field")]
    size_or_type: u32,
    members: Vec<Member>,
}

/// The parsed type table: just the structs, unions and the modifiers that lead to them.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
    /// `btf_trace_<event>` typedefs: the raw tracepoints' prototypes.
    raw_tracepoints: HashMap<String, u32>,
}

/// One argument of a raw tracepoint, as far as the probes care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    /// A pointer; the pointee struct's name, or empty for anything else.
    Pointer(String),
    /// An integer of this many bytes.
    Int(u32),
    Other,
}

impl Btf {
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|cause| BtfError::Read { path: path.display().to_string(), cause })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (big-endian kernels are not supported)"));
        }
        let field = |o| u32_at(o).map(|v| v as usize).ok_or(BtfError::Malformed("short header"));
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type { kind: 0, name: 0, size_or_type: 0, members: Vec::new() }]; // id 0 = void
        let mut pos = hdr_len + type_off;
        let end = pos + type_len;
        while pos < end {
            let name = u32_at(pos).ok_or(BtfError::Malformed("type section truncated"))?;
            let info = u32_at(pos + 4).ok_or(BtfError::Malformed("type section truncated"))?;
            let size_or_type = u32_at(pos + 8).ok_or(BtfError::Malformed("type section truncated"))?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let (name, type_id, offset) = (u32_at(m), u32_at(m + 4), u32_at(m + 8));
                        let (Some(name), Some(type_id), Some(offset)) = (name, type_id, offset) else {
                            return Err(BtfError::Malformed("type section truncated"));
                        };
                        let (bit_offset, bit_size) =
                            if kind_flag { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
                        members.push(Member { name, type_id, bit_offset, bit_size });
                    }
                    pos += vlen * 12;
                }
                KIND_FUNC_PROTO => {
                    for i in 0..vlen {
                        let p = pos + i * 8;
                        let (Some(name), Some(type_id)) = (u32_at(p), u32_at(p + 4)) else {
                            return Err(BtfError::Malformed("type section truncated"));
                        };
                        members.push(Member { name, type_id, bit_offset: 0, bit_size: 0 });
                    }
                    pos += vlen * 8;
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => pos += 4,
                KIND_ARRAY => pos += 12,
                KIND_ENUM => pos += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => pos += vlen * 12,
                _ => {}
            }
            types.push(Type { kind, name, size_or_type, members });
        }
        let mut btf = Self { types, strings, structs_by_name: HashMap::new(), raw_tracepoints: HashMap::new() };
        for (id, ty) in btf.types.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if ty.kind == KIND_STRUCT && ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                btf.structs_by_name.entry(name).or_insert(id);
            } else if ty.kind == KIND_TYPEDEF
                && let Some(event) = btf.string(ty.name).strip_prefix("btf_trace_")
            {
                let event = event.to_owned();
                btf.raw_tracepoints.insert(event, id);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..len]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = ty.size_or_type,
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `path` (members separated by dots, e.g. `__sk_common.skc_daddr`)
    /// in struct `strukt`. Anonymous structs and unions are searched through, as C does.
    /// A bit field is an error here: read those with [`Btf::bits_of`].
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        match self.bits_of(strukt, path)? {
            (bits, 0) if bits % 8 == 0 => Ok(bits / 8),
            _ => Err(BtfError::BitField { strukt: strukt.into(), member: path.into() }),
        }
    }

    /// Bit offset of `path` in struct `strukt` and its width in bits when it is a bit
    /// field (0 for an ordinary member, which starts on a byte).
    pub fn bits_of(&self, strukt: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let id = *self.structs_by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let no_member = || BtfError::NoMember { strukt: strukt.into(), member: path.into() };
        let mut ty = self.resolve(id).ok_or_else(no_member)?;
        let mut bits = 0;
        let mut width = 0;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            let (offset, size, member_ty) = self.find_member(ty, segment).ok_or_else(no_member)?;
            bits += offset;
            width = size;
            if segments.peek().is_some() {
                if size != 0 {
                    return Err(BtfError::BitField { strukt: strukt.into(), member: path.into() });
                }
                ty = member_ty.ok_or_else(no_member)?;
            }
        }
        Ok((bits, width))
    }

    /// The arguments of raw tracepoint `event` (its `TP_PROTO`), from the
    /// `btf_trace_<event>` typedef; `None` when the kernel's BTF does not describe it.
    pub fn raw_tracepoint_params(&self, event: &str) -> Option<Vec<Param>> {
        let typedef = self.types.get(*self.raw_tracepoints.get(event)? as usize)?;
        let pointer = self.types.get(typedef.size_or_type as usize).filter(|t| t.kind == KIND_PTR)?;
        let proto = self.types.get(pointer.size_or_type as usize).filter(|t| t.kind == KIND_FUNC_PROTO)?;
        // The first parameter is the tracepoint's private `void *__data`.
        let params = proto.members.iter().skip(1).map(|param| match self.resolve(param.type_id) {
            Some(t) if t.kind == KIND_PTR => Param::Pointer(
                self.resolve(t.size_or_type)
                    .filter(|p| matches!(p.kind, KIND_STRUCT | KIND_UNION))
                    .map(|p| self.string(p.name).to_owned())
                    .unwrap_or_default(),
            ),
            Some(t) if t.kind == KIND_INT => Param::Int(t.size_or_type),
            _ => Param::Other,
        });
        Some(params.collect())
    }

    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, u32, Option<&Type>)> {
        for member in &ty.members {
            let member_ty = self.resolve(member.type_id);
            if member.name == 0 {
                if let Some(inner) = member_ty.filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    && let Some((offset, size, t)) = self.find_member(inner, name)
                {
                    return Some((member.bit_offset + offset, size, t));
                }
            } else if self.string(member.name) == name {
                return Some((member.bit_offset, member.bit_size, member_ty));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's own BTF: the offsets must be the ones `pahole` would print,
    /// which we cross-check through relations that hold on every kernel.
    #[test]
    fn finds_socket_members_in_the_running_kernel() {
        let Ok(btf) = Btf::from_kernel() else {
            assert!(std::env::var_os("CI").is_none(), "CI must have /sys/kernel/btf/vmlinux");
            eprintln!("SKIPPED: no kernel BTF on this machine");
            return;
        };
        let daddr = btf.offset_of("sock", "__sk_common.skc_daddr").unwrap();
        let saddr = btf.offset_of("sock", "__sk_common.skc_rcv_saddr").unwrap();
        assert_eq!(saddr, daddr + 4, "skc_daddr and skc_rcv_saddr form skc_addrpair");
        let dport = btf.offset_of("sock", "__sk_common.skc_dport").unwrap();
        let num = btf.offset_of("sock", "__sk_common.skc_num").unwrap();
        assert_eq!(num, dport + 2, "skc_dport and skc_num form skc_portpair");
        assert!(btf.offset_of("tcp_sock", "srtt_us").unwrap() > 1000);
        // The process name the probes record: the leader's comm, within 16-bit reach.
        let leader = btf.offset_of("task_struct", "group_leader").unwrap();
        let comm = btf.offset_of("task_struct", "comm").unwrap();
        assert!(leader > 0 && comm > 0 && leader < 65_536 && comm < 65_536, "{leader} {comm}");
        assert!(matches!(btf.offset_of("sock", "no_such_member"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.offset_of("no_such_struct", "x"), Err(BtfError::NoStruct(_))));
        let send = btf.raw_tracepoint_params("sock_send_length").unwrap();
        assert_eq!(send, vec![Param::Pointer("sock".into()), Param::Int(4), Param::Int(4)]);
        let probe = btf.raw_tracepoint_params("tcp_probe").unwrap();
        assert_eq!(probe, vec![Param::Pointer("sock".into()), Param::Pointer("sk_buff".into())]);
        assert_eq!(btf.raw_tracepoint_params("no_such_event"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0]).is_err());
    }
}
