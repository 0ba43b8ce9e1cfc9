//! The protobuf wire format, as much of it as OTLP spans need: spans are written
//! straight into the bytes of an export request as they are built, with no message
//! structs in between (one buffer per workload instead of a dozen allocations a span).
//! The layout follows `opentelemetry/proto/trace/v1/trace.proto` and
//! `common/v1/common.proto`; the receivers in the tests decode it with the official
//! protos.
use opentelemetry::{Array, Value};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;
const FIXED32: u32 = 5;

#[inline]
pub fn varint(out: &mut Vec<u8>, value: u64) {
    // Field keys, small lengths and flags: one byte, the common case by far.
    if let Ok(byte @ 0..0x80) = u8::try_from(value) {
        out.push(byte);
        return;
    }
    let mut bytes = [0u8; 10];
    let n = encode_varint(&mut bytes, value);
    out.extend_from_slice(&bytes[..n]);
}

#[inline]
fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

#[inline]
pub fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LENGTH_DELIMITED);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

#[inline]
pub fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

#[inline]
pub fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, VARINT);
    varint(out, value);
}

#[inline]
pub fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

#[inline]
pub fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    key(out, field, FIXED32);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A nested message: `body` writes its fields after a two-byte slot for their length
/// (a span's, 128 bytes to 16 KiB), which is then filled in place; only a length of
/// another size moves the body to fit it.
pub fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LENGTH_DELIMITED);
    let slot = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let mut length = [0u8; 10];
    let n = encode_varint(&mut length, (out.len() - slot - 2) as u64);
    if n == 2 {
        out[slot..slot + 2].copy_from_slice(&length[..2]);
    } else {
        out.splice(slot..slot + 2, length[..n].iter().copied());
    }
}

pub fn varint_len(value: u64) -> usize {
    // 7 bits a byte; zero still takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[allow(clippy::cast_possible_truncation, reason = "each byte takes the low 7 bits on purpose")]
fn encode_varint(into: &mut [u8; 10], mut value: u64) -> usize {
    let mut n = 0;
    while value >= 0x80 {
        into[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    into[n] = value as u8;
    n + 1
}

/// `KeyValue` fields (`key` 1, `value` 2: an `AnyValue`).
pub mod attribute {
    use super::{Array, Value, fixed64, message, string, uint, varint_len};

    /// `AnyValue` fields.
    const STRING: u32 = 1;
    const BOOL: u32 = 2;
    const INT: u32 = 3;
    const DOUBLE: u32 = 4;
    const ARRAY: u32 = 5;

    pub fn str(out: &mut Vec<u8>, field: u32, name: &str, value: &str) {
        key_value(out, field, name, 1 + varint_len(value.len() as u64) + value.len(), |any| string(any, STRING, value));
    }

    pub fn int(out: &mut Vec<u8>, field: u32, name: &str, value: i64) {
        // int64 is a two's complement varint.
        let value = value.cast_unsigned();
        key_value(out, field, name, 1 + varint_len(value), |any| uint(any, INT, value));
    }

    pub fn boolean(out: &mut Vec<u8>, field: u32, name: &str, value: bool) {
        key_value(out, field, name, 2, |any| uint(any, BOOL, u64::from(value)));
    }

    /// A `KeyValue` whose `AnyValue` is `any_len` bytes long: sized up front, the
    /// attributes every span carries are written without moving a byte.
    fn key_value(out: &mut Vec<u8>, field: u32, name: &str, any_len: usize, any: impl FnOnce(&mut Vec<u8>)) {
        let key_len = 1 + varint_len(name.len() as u64) + name.len();
        let len = key_len + 1 + varint_len(any_len as u64) + any_len;
        super::key(out, field, super::LENGTH_DELIMITED);
        super::varint(out, len as u64);
        string(out, 1, name);
        super::key(out, 2, super::LENGTH_DELIMITED);
        super::varint(out, any_len as u64);
        any(out);
    }

    /// Any `OTel` value (Resource attributes carry arrays: `process.command_args`).
    pub fn value(out: &mut Vec<u8>, field: u32, name: &str, value: &Value) {
        message(out, field, |kv| {
            string(kv, 1, name);
            message(kv, 2, |any| any_value(any, value));
        });
    }

    fn any_value(any: &mut Vec<u8>, value: &Value) {
        match value {
            Value::Bool(v) => uint(any, BOOL, u64::from(*v)),
            Value::I64(v) => uint(any, INT, v.cast_unsigned()),
            Value::F64(v) => fixed64(any, DOUBLE, v.to_bits()),
            Value::String(v) => string(any, STRING, v.as_str()),
            Value::Array(array) => message(any, ARRAY, |list| match array {
                Array::Bool(items) => items.iter().for_each(|v| message(list, 1, |a| uint(a, BOOL, u64::from(*v)))),
                Array::I64(items) => items.iter().for_each(|v| message(list, 1, |a| uint(a, INT, v.cast_unsigned()))),
                Array::F64(items) => items.iter().for_each(|v| message(list, 1, |a| fixed64(a, DOUBLE, v.to_bits()))),
                Array::String(items) => items.iter().for_each(|v| message(list, 1, |a| string(a, STRING, v.as_str()))),
                _ => {}
            }),
            // Later kinds of value (maps, bytes) are not made by flowtel.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{encode_varint, message, varint_len};

    #[test]
    fn a_message_of_any_length_is_its_key_minimal_length_and_body() {
        for body_len in [0, 1, 127, 128, 16_383, 16_384, 100_000] {
            let mut out = vec![0xAA];
            message(&mut out, 1, |m| m.extend(std::iter::repeat_n(7u8, body_len)));
            let mut length = [0; 10];
            let n = encode_varint(&mut length, body_len as u64);
            assert_eq!(out[..2], [0xAA, 1 << 3 | 2], "{body_len}");
            assert_eq!(out[2..2 + n], length[..n], "{body_len}: minimal length");
            assert_eq!(out.len(), 2 + n + body_len, "{body_len}");
            assert!(out[2 + n..].iter().all(|&b| b == 7), "{body_len}");
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut bytes = [0; 10];
            assert_eq!(varint_len(value), encode_varint(&mut bytes, value), "{value}");
        }
    }
}
