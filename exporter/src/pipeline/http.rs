//! The HTTP stage (see stage.rs): the HTTP probes' chunks, paired into exchanges.
use super::stage::{Pairing, Source};
use crate::{
    aggregation::{HttpExchange, HttpLosses, HttpTracker},
    events::{HttpChunk, HttpChunkReader, ReadError},
};

impl Source for HttpChunkReader {
    type Record = HttpChunk;
    const PER_BATCH: usize = 2_048;

    fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<HttpChunk>,
    ) -> impl Future<Output = Result<u64, ReadError>> + Send {
        HttpChunkReader::next_batch(self, max, out)
    }

    fn read_now(&mut self, max: usize, out: &mut Vec<HttpChunk>) -> u64 {
        HttpChunkReader::read_now(self, max, out)
    }

    fn recycle(&mut self, chunk: HttpChunk) {
        HttpChunkReader::recycle(self, chunk);
    }
}

impl Pairing for HttpTracker {
    type Record = HttpChunk;
    type Item = HttpExchange;
    type Losses = HttpLosses;

    fn record(&mut self, chunk: &HttpChunk, out: &mut Vec<HttpExchange>) {
        self.chunk(chunk, out);
    }

    fn expire(&mut self, now_ns: u64, out: &mut Vec<HttpExchange>) {
        HttpTracker::expire(self, now_ns, out);
    }

    fn take_losses(&mut self) -> HttpLosses {
        HttpTracker::take_losses(self)
    }

    fn held(&self) -> usize {
        self.connections()
    }

    fn abandon(&mut self) {
        HttpTracker::abandon(self);
    }
}
