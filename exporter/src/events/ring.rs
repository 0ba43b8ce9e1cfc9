//! A probe's ring buffer, read as it fills. The probes wake the reader only when a
//! quarter of the buffer is in use (a wake-up per record would cost more than the probe
//! itself), so the reader also looks every [`POLL`]; the buffer only has to cover the
//! time between two reads. What did not fit was counted by the probe.
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::io::{Interest, unix::AsyncFd};

use super::flows::{ReadError, take};

/// How often the ring buffer is looked at when the probe has not woken the reader.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    what: &'static str,
}

impl RingReader {
    /// `what` names the records in errors ("DNS packets").
    pub fn new(ebpf: &mut Ebpf, map: &'static str, what: &'static str) -> Result<Self, ReadError> {
        let ring: RingBuf<MapData> = take(ebpf, map)?;
        // SAFETY: the ring buffer owns its map's fd for as long as it lives, and moves
        // into the AsyncFd, so the fd stays open and the same while it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| ReadError::Io { what: "watching a ring buffer", cause: err.into() })?;
        Ok(Self { ring, what })
    }

    /// Waits until records are there, then decodes up to `max` of them. Returns how
    /// many could not be decoded (a probe object newer than the agent).
    pub async fn next_batch<T>(
        &mut self,
        max: usize,
        out: &mut Vec<T>,
        mut decode: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<u64, ReadError> {
        loop {
            let undecodable = self.drain(max, out, &mut decode);
            if !out.is_empty() || undecodable > 0 {
                return Ok(undecodable);
            }
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.map_err(|cause| ReadError::Io { what: self.what, cause })?;
                    guard.clear_ready();
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Decodes up to `max` records already there, without waiting; returns how many
    /// could not be decoded.
    pub fn drain<T>(&mut self, max: usize, out: &mut Vec<T>, decode: &mut impl FnMut(&[u8]) -> Option<T>) -> u64 {
        let ring = self.ring.get_mut();
        let mut undecodable = 0;
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            match decode(&item) {
                Some(record) => out.push(record),
                None => undecodable += 1,
            }
        }
        undecodable
    }
}

/// A record's fixed header, read unaligned (the ring buffer aligns records to 8 bytes
/// only), and the bytes after it.
pub fn split_record<H: Copy>(bytes: &[u8]) -> Option<(H, &[u8])> {
    let header_bytes = bytes.get(..size_of::<H>())?;
    // SAFETY: H is one of the probes' plain-old-data headers, exactly this many bytes.
    let header: H = unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast()) };
    Some((header, &bytes[size_of::<H>()..]))
}
