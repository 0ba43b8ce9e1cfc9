//! A stage: reads a probe's ring buffer as it fills, pairs its records (query with
//! answer, request with response, and times out the unanswered) in `aggregation`, and
//! hands what is finished to the export loop through a bounded channel. DNS and HTTP
//! are two stages of this one kind.
//!
//! Guarantees: the ring buffer is read on every wake-up, so the kernel drops records
//! only when the agent falls behind for longer than the buffer lasts (counted by the
//! probe). A sweep comes only after the ring was read empty (or, under a flood that
//! never empties it, a second late): what a sweep ends (a connection whose end came
//! before its last response was read, say) cannot be waiting unread in the ring. A
//! batch the export loop cannot take in time is dropped and counted (`channel_full`),
//! never queued without bound. Losses found while pairing travel with the next batch
//! that is delivered. At shutdown the stage hands over all its ring holds, counts what
//! is still unanswered (`at_exit`), then ends.
use std::time::Duration;

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::events::{ReadError, monotonic_now_ns};

/// Batches waiting for the export loop, at most.
const BATCHES_QUEUED: usize = 256;
/// How often unanswered records are checked against their timeout.
const SWEEP: Duration = Duration::from_millis(250);
/// How long a due sweep waits for the ring to be read empty, at most.
const SWEEP_DEFERRED_AT_MOST: Duration = Duration::from_secs(1);

/// Where records come from: a probe's ring buffer reader.
pub trait Source: Send + 'static {
    type Record: Send;
    /// Records read per wake-up, at most.
    const PER_BATCH: usize;
    /// Waits for records and reads up to `max`; returns how many could not be decoded.
    fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Self::Record>,
    ) -> impl Future<Output = Result<u64, ReadError>> + Send;
    /// Up to `max` records already there, without waiting; returns how many could not
    /// be decoded.
    fn read_now(&mut self, max: usize, out: &mut Vec<Self::Record>) -> u64;
    /// Takes back a record once paired (to reuse its buffers).
    fn recycle(&mut self, _record: Self::Record) {}
}

/// What pairs records into finished items.
pub trait Pairing: Send + 'static {
    type Record: Send;
    type Item: Send + 'static;
    type Losses: Copy + Default + PartialEq + Send + std::ops::AddAssign + 'static;
    fn record(&mut self, record: &Self::Record, out: &mut Vec<Self::Item>);
    fn expire(&mut self, now_ns: u64, out: &mut Vec<Self::Item>);
    fn take_losses(&mut self) -> Self::Losses;
    /// What it holds now, unfinished (queries awaiting answers, connections in flight).
    fn held(&self) -> usize;
    /// At shutdown, after the last read: counts what is still unanswered as lost and
    /// forgets it.
    fn abandon(&mut self);
}

/// What the export loop receives from a stage.
#[derive(Debug)]
pub struct Batch<I, L> {
    pub items: Vec<I>,
    pub losses: StageLosses<L>,
    /// Unfinished records held when the batch was sent.
    pub held: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageLosses<L> {
    /// Found while pairing.
    pub pairing: L,
    /// Ring buffer records the agent could not decode (a newer probe object).
    pub undecodable: u64,
    /// Items in batches dropped because the export loop did not take them.
    pub channel_full: u64,
}

impl<L: std::ops::AddAssign> std::ops::AddAssign for StageLosses<L> {
    fn add_assign(&mut self, other: Self) {
        self.pairing += other.pairing;
        self.undecodable += other.undecodable;
        self.channel_full += other.channel_full;
    }
}

pub struct Stage<P: Pairing> {
    pub batches: mpsc::Receiver<Batch<P::Item, P::Losses>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl<P: Pairing> Stage<P> {
    pub fn spawn<S: Source<Record = P::Record>>(source: S, pairing: P) -> Self {
        let (tx, batches) = mpsc::channel(BATCHES_QUEUED);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(source, pairing, tx, stopped));
        Self { batches, stop: Some(stop), task }
    }

    /// At shutdown: the stage reads what its ring holds at once, sends it and ends;
    /// returns every batch not yet taken, waiting at most `grace`. Records still unpaired
    /// (a query whose answer has not come) are counted lost (`at_exit`).
    pub async fn finish(&mut self, grace: Duration) -> Vec<Batch<P::Item, P::Losses>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = Instant::now() + grace;
        let mut taken = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.batches.recv()).await {
                Ok(Some(batch)) => taken.push(batch),
                // Its sender went with the stage's task: everything was sent.
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(?grace, "a stage did not finish in time: what it held is not delivered");
                    break;
                }
            }
        }
        taken
    }

    /// Every batch already sent, without waiting for more.
    pub fn ready_batches(&mut self) -> Vec<Batch<P::Item, P::Losses>> {
        std::iter::from_fn(|| self.batches.try_recv().ok()).collect()
    }
}

impl<P: Pairing> Drop for Stage<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<S: Source, P: Pairing<Record = S::Record>>(
    mut source: S,
    mut pairing: P,
    tx: mpsc::Sender<Batch<P::Item, P::Losses>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut next_sweep = Instant::now() + SWEEP;
    let mut records = Vec::with_capacity(S::PER_BATCH);
    let mut carried = StageLosses::<P::Losses>::default();
    loop {
        let mut items = Vec::new();
        let mut losses = StageLosses::<P::Losses>::default();
        let ring_read_empty;
        tokio::select! {
            // A stop first (what it reads last is everything the ring holds), then the
            // ring: its read takes what is there at once, and only when there was
            // nothing does the sweep's timer get a look.
            biased;
            _ = &mut stopped => {
                let last = last_batch(&mut source, &mut pairing, std::mem::take(&mut carried));
                // The loop is taking batches while it finishes: wait for room.
                let _ = tx.send(last).await;
                return;
            }
            read = source.next_batch(S::PER_BATCH, &mut records) => match read {
                Ok(undecodable) => {
                    ring_read_empty = records.len() < S::PER_BATCH;
                    losses.undecodable = undecodable;
                    for record in records.drain(..) {
                        pairing.record(&record, &mut items);
                        source.recycle(record);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "observation stopped: a ring buffer cannot be read");
                    return;
                }
            },
            () = tokio::time::sleep_until(next_sweep) => ring_read_empty = true,
        }
        let now = Instant::now();
        if now >= next_sweep && (ring_read_empty || now >= next_sweep + SWEEP_DEFERRED_AT_MOST) {
            pairing.expire(monotonic_now_ns(), &mut items);
            next_sweep = now + SWEEP;
        }
        losses.pairing = pairing.take_losses();
        losses += std::mem::take(&mut carried);
        if items.is_empty() && losses == StageLosses::default() {
            continue;
        }
        let batch = Batch { items, losses, held: pairing.held() };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                carried = batch.losses;
                carried.channel_full += batch.items.len() as u64;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Everything the ring holds now, paired, with the losses still to report.
fn last_batch<S: Source, P: Pairing<Record = S::Record>>(
    source: &mut S,
    pairing: &mut P,
    carried: StageLosses<P::Losses>,
) -> Batch<P::Item, P::Losses> {
    let mut items = Vec::new();
    let mut losses = carried;
    let mut records = Vec::with_capacity(S::PER_BATCH);
    loop {
        losses.undecodable += source.read_now(S::PER_BATCH, &mut records);
        let read = records.len();
        for record in records.drain(..) {
            pairing.record(&record, &mut items);
        }
        if read < S::PER_BATCH {
            break;
        }
    }
    pairing.abandon();
    losses.pairing += pairing.take_losses();
    Batch { items, losses, held: pairing.held() }
}

#[cfg(test)]
mod tests;
