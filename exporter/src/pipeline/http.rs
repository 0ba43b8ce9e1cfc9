//! The HTTP stage: reads the HTTP probes' ring buffer as it fills, pairs requests with
//! responses (and times out the unanswered) in `aggregation`, and hands finished
//! exchanges to the export loop through a bounded channel. Same guarantees as the DNS
//! stage: a batch the loop cannot take is counted (`channel_full`), never queued without
//! bound, and losses travel with the next batch delivered.
use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    aggregation::{HttpExchange, HttpLosses, HttpSettings, HttpTracker},
    events::{HttpChunk, HttpChunkReader, monotonic_now_ns},
};

const CHUNKS_PER_BATCH: usize = 2_048;
/// Batches waiting for the export loop, at most (about 500k exchanges under load).
const BATCHES_QUEUED: usize = 256;
/// How often waiting requests are checked against the timeout.
const SWEEP: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct HttpBatch {
    pub exchanges: Vec<HttpExchange>,
    pub losses: StageLosses,
    /// Connections tracked when the batch was sent.
    pub connections: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageLosses {
    pub tracker: HttpLosses,
    pub undecodable: u64,
    pub channel_full: u64,
}

impl StageLosses {
    fn add(&mut self, other: Self) {
        self.tracker.parse += other.tracker.parse;
        self.tracker.pending_full += other.tracker.pending_full;
        self.tracker.unpaired += other.tracker.unpaired;
        self.undecodable += other.undecodable;
        self.channel_full += other.channel_full;
    }
}

pub struct HttpStage {
    pub batches: mpsc::Receiver<HttpBatch>,
    task: JoinHandle<()>,
}

impl HttpStage {
    pub fn spawn(reader: HttpChunkReader, settings: HttpSettings) -> Self {
        let (tx, batches) = mpsc::channel(BATCHES_QUEUED);
        let task = tokio::spawn(run(reader, HttpTracker::new(settings), tx));
        Self { batches, task }
    }

    pub fn ready_batches(&mut self) -> Vec<HttpBatch> {
        std::iter::from_fn(|| self.batches.try_recv().ok()).collect()
    }
}

impl Drop for HttpStage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut reader: HttpChunkReader, mut tracker: HttpTracker, tx: mpsc::Sender<HttpBatch>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut chunks: Vec<HttpChunk> = Vec::with_capacity(CHUNKS_PER_BATCH);
    let mut carried = StageLosses::default();
    let own_pid = std::process::id();
    loop {
        let mut exchanges = Vec::new();
        let mut losses = StageLosses::default();
        tokio::select! {
            read = reader.next_batch(CHUNKS_PER_BATCH, &mut chunks) => match read {
                Ok(undecodable) => {
                    losses.undecodable = undecodable;
                    // The agent's own OTLP/HTTP exports are not the workload's traffic (and
                    // observing them would feed back into the next export).
                    for chunk in chunks.drain(..).filter(|c| c.pid != own_pid) {
                        tracker.chunk(&chunk, &mut exchanges);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "HTTP observation stopped: the ring buffer cannot be read");
                    return;
                }
            },
            _ = sweep.tick() => tracker.expire(monotonic_now_ns(), &mut exchanges),
        }
        losses.tracker = tracker.take_losses();
        losses.add(std::mem::take(&mut carried));
        if exchanges.is_empty() && losses == StageLosses::default() {
            continue;
        }
        let batch = HttpBatch { exchanges, losses, connections: tracker.connections() };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                carried = batch.losses;
                carried.channel_full += batch.exchanges.len() as u64;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
