//! The HTTP probes' ring buffer into [`HttpChunk`]s: the first bytes of a send or
//! receive that starts like an HTTP message (clear text, or OpenSSL's plaintext), and
//! the end of a connection as its reader saw it or as the kernel tore its socket down.
use std::net::SocketAddr;

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use flowtel_probes_abi::{HttpChunk as RawChunk, http};

use super::{
    flows::{ReadError, take},
    ring::{RingReader, split_record},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpChunk {
    /// `CLOCK_MONOTONIC` nanoseconds, when the call finished.
    pub at_ns: u64,
    pub pid: u32,
    /// The connection's identity in the kernel (a socket, or an `SSL *`).
    pub connection: u64,
    /// The process sent these bytes (else it received them).
    pub sent: bool,
    pub tls: bool,
    /// Local and peer ends, when the socket was known.
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Bytes the call moved; `payload` holds the first of them. Empty `payload` and
    /// `len` 0: the connection ended.
    pub len: u32,
    pub payload: Vec<u8>,
}

impl HttpChunk {
    pub fn is_close(&self) -> bool {
        self.len == 0
    }
}

/// Payload buffers kept for the next records, at most, and the largest kept: a chunk's
/// payload is a fresh allocation otherwise, and those were a tenth of the HTTP stage's
/// time under load. At most 1 MiB held this way.
const SPARE_PAYLOADS: usize = 512;
const SPARE_PAYLOAD_BYTES: usize = 2_048;

pub struct HttpChunkReader {
    ring: RingReader,
    /// Emptied payload buffers of records already paired (`recycle`).
    spare: Vec<Vec<u8>>,
    /// `HTTP_READER`: set while this reader lives, so the flow probes send socket
    /// teardowns only to a ring that is drained.
    reading: Array<MapData, u32>,
}

impl HttpChunkReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        let ring = RingReader::new(ebpf, "HTTP_CHUNKS", "waiting for HTTP payloads")?;
        let mut reading: Array<MapData, u32> = take(ebpf, "HTTP_READER")?;
        reading.set(0, 1, 0).map_err(|cause| ReadError::Map { map: "HTTP_READER", cause })?;
        Ok(Self { ring, spare: Vec::with_capacity(SPARE_PAYLOADS), reading })
    }

    /// Waits until chunks are there, then reads up to `max` of them; returns how many
    /// records could not be decoded.
    pub async fn next_batch(&mut self, max: usize, out: &mut Vec<HttpChunk>) -> Result<u64, ReadError> {
        let spare = &mut self.spare;
        self.ring.next_batch(max, out, |bytes| decode_into(bytes, take_buffer(spare))).await
    }

    /// Up to `max` records already there, without waiting (at shutdown).
    pub fn read_now(&mut self, max: usize, out: &mut Vec<HttpChunk>) -> u64 {
        let spare = &mut self.spare;
        self.ring.drain(max, out, &mut |bytes| decode_into(bytes, take_buffer(spare)))
    }

    /// A record already paired gives its payload buffer back for the next ones.
    pub fn recycle(&mut self, chunk: HttpChunk) {
        let mut payload = chunk.payload;
        if self.spare.len() < SPARE_PAYLOADS && payload.capacity() <= SPARE_PAYLOAD_BYTES {
            payload.clear();
            self.spare.push(payload);
        }
    }
}

impl Drop for HttpChunkReader {
    fn drop(&mut self) {
        let _ = self.reading.set(0, 0, 0);
    }
}

/// A spare payload buffer, else a new one as large as those kept: a request's small
/// buffer reused for a response would otherwise grow (a second allocation).
pub fn take_buffer(spare: &mut Vec<Vec<u8>>) -> Vec<u8> {
    spare.pop().unwrap_or_else(|| Vec::with_capacity(SPARE_PAYLOAD_BYTES))
}

#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Option<HttpChunk> {
    decode_into(bytes, Vec::new())
}

/// One record, its payload copied into `payload` (an empty buffer, reused).
pub fn decode_into(bytes: &[u8], mut payload: Vec<u8>) -> Option<HttpChunk> {
    let (header, rest) = split_record::<RawChunk>(bytes)?;
    let captured = rest.get(..header.captured_len as usize)?;
    if captured.len() > http::CAPTURE_MAX {
        return None;
    }
    payload.extend_from_slice(captured);
    let sent = match header.direction {
        http::SEND => true,
        http::RECV => false,
        _ => return None,
    };
    let end = |raw: &[u8; 16], port: u16| {
        super::kernel_address(header.family, raw).map(|address| SocketAddr::new(address, port))
    };
    Some(HttpChunk {
        at_ns: header.timestamp_ns,
        pid: header.pid,
        connection: header.connection,
        sent,
        tls: header.tls != 0,
        local: end(&header.local_addr, header.local_port),
        peer: end(&header.peer_addr, header.peer_port),
        len: header.len,
        payload,
    })
}
