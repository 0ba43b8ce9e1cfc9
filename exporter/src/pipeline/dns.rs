//! The DNS stage (see stage.rs): the DNS probe's packets, paired into lookups.
use super::stage::{Pairing, Source};
use crate::{
    aggregation::{DnsLookup, DnsTracker, TrackerLosses},
    events::{CapturedPacket, DnsPacketReader, ReadError},
};

impl Source for DnsPacketReader {
    type Record = CapturedPacket;
    const PER_BATCH: usize = 1_024;

    fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<CapturedPacket>,
    ) -> impl Future<Output = Result<u64, ReadError>> + Send {
        DnsPacketReader::next_batch(self, max, out)
    }

    fn read_now(&mut self, max: usize, out: &mut Vec<CapturedPacket>) -> u64 {
        DnsPacketReader::read_now(self, max, out)
    }
}

impl Pairing for DnsTracker {
    type Record = CapturedPacket;
    type Item = DnsLookup;
    type Losses = TrackerLosses;

    fn record(&mut self, packet: &CapturedPacket, out: &mut Vec<DnsLookup>) {
        self.packet(packet, out);
    }

    fn expire(&mut self, now_ns: u64, out: &mut Vec<DnsLookup>) {
        DnsTracker::expire(self, now_ns, out);
    }

    fn take_losses(&mut self) -> TrackerLosses {
        DnsTracker::take_losses(self)
    }

    fn held(&self) -> usize {
        self.pending()
    }

    fn abandon(&mut self) {
        DnsTracker::abandon(self);
    }
}
