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

pub struct HttpChunkReader {
    ring: RingReader,
    /// `HTTP_READER`: set while this reader lives, so the flow probes send socket
    /// teardowns only to a ring that is drained.
    reading: Array<MapData, u32>,
}

impl HttpChunkReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        let ring = RingReader::new(ebpf, "HTTP_CHUNKS", "waiting for HTTP payloads")?;
        let mut reading: Array<MapData, u32> = take(ebpf, "HTTP_READER")?;
        reading.set(0, 1, 0).map_err(|cause| ReadError::Map { map: "HTTP_READER", cause })?;
        Ok(Self { ring, reading })
    }

    /// Waits until chunks are there, then reads up to `max` of them; returns how many
    /// records could not be decoded.
    pub async fn next_batch(&mut self, max: usize, out: &mut Vec<HttpChunk>) -> Result<u64, ReadError> {
        self.ring.next_batch(max, out, decode).await
    }

    /// Up to `max` records already there, without waiting (at shutdown).
    pub fn read_now(&mut self, max: usize, out: &mut Vec<HttpChunk>) -> u64 {
        self.ring.drain(max, out, &decode)
    }
}

impl Drop for HttpChunkReader {
    fn drop(&mut self) {
        let _ = self.reading.set(0, 0, 0);
    }
}

pub fn decode(bytes: &[u8]) -> Option<HttpChunk> {
    let (header, rest) = split_record::<RawChunk>(bytes)?;
    let payload = rest.get(..header.captured_len as usize)?;
    if payload.len() > http::CAPTURE_MAX {
        return None;
    }
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
        payload: payload.to_vec(),
    })
}
