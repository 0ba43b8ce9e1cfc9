//! The DNS stage: reads the DNS probe's ring buffer as it fills, pairs queries with
//! answers (and times out the unanswered) in `aggregation`, and hands finished lookups
//! to the export loop through a bounded channel.
//!
//! Guarantees: the ring buffer is read on every wake-up, so the kernel drops packets
//! only when the agent falls behind for longer than the buffer lasts (counted by the
//! probe). A batch the export loop cannot take in time is dropped and counted
//! (`channel_full`), never queued without bound. Losses found while pairing travel
//! with the next batch that is delivered.
use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    aggregation::{DnsLookup, DnsTracker, TrackerLosses, TrackerSettings},
    events::{CapturedPacket, DnsPacketReader, monotonic_now_ns},
};

/// Packets read from the ring buffer per wake-up, at most.
const PACKETS_PER_BATCH: usize = 1_024;
/// Batches waiting for the export loop, at most (about 256k lookups under load).
const BATCHES_QUEUED: usize = 256;
/// How often unanswered queries are checked against the timeout.
const SWEEP: Duration = Duration::from_millis(250);

/// What the export loop receives from the DNS stage.
#[derive(Debug, Default)]
pub struct DnsBatch {
    pub lookups: Vec<DnsLookup>,
    pub losses: DnsLosses,
    /// Queries awaiting an answer when the batch was sent.
    pub pending: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsLosses {
    pub tracker: TrackerLosses,
    /// Ring buffer records the agent could not decode (a newer probe object).
    pub undecodable: u64,
    /// Lookups in batches dropped because the export loop did not take them.
    pub channel_full: u64,
}

impl DnsLosses {
    fn add(&mut self, other: Self) {
        self.tracker.parse += other.tracker.parse;
        self.tracker.pending_full += other.tracker.pending_full;
        self.tracker.stream_gap += other.tracker.stream_gap;
        self.undecodable += other.undecodable;
        self.channel_full += other.channel_full;
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub struct DnsStage {
    pub batches: mpsc::Receiver<DnsBatch>,
    task: JoinHandle<()>,
}

impl DnsStage {
    pub fn spawn(reader: DnsPacketReader, settings: TrackerSettings) -> Self {
        let (tx, batches) = mpsc::channel(BATCHES_QUEUED);
        let task = tokio::spawn(run(reader, DnsTracker::new(settings), tx));
        Self { batches, task }
    }

    /// Every batch already sent, without waiting for more.
    pub fn ready_batches(&mut self) -> Vec<DnsBatch> {
        std::iter::from_fn(|| self.batches.try_recv().ok()).collect()
    }
}

impl Drop for DnsStage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut reader: DnsPacketReader, mut tracker: DnsTracker, tx: mpsc::Sender<DnsBatch>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut packets: Vec<CapturedPacket> = Vec::with_capacity(PACKETS_PER_BATCH);
    let mut carried = DnsLosses::default();
    loop {
        let mut lookups = Vec::new();
        let mut losses = DnsLosses::default();
        tokio::select! {
            read = reader.next_batch(PACKETS_PER_BATCH, &mut packets) => match read {
                Ok(undecodable) => {
                    losses.undecodable = undecodable;
                    for packet in packets.drain(..) {
                        tracker.packet(&packet, &mut lookups);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "DNS observation stopped: the ring buffer cannot be read");
                    return;
                }
            },
            _ = sweep.tick() => tracker.expire(monotonic_now_ns(), &mut lookups),
        }
        losses.tracker = tracker.take_losses();
        losses.add(std::mem::take(&mut carried));
        if lookups.is_empty() && losses.is_empty() {
            continue;
        }
        let batch = DnsBatch { lookups, losses, pending: tracker.pending() };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                carried = batch.losses;
                carried.channel_full += batch.lookups.len() as u64;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
