//! Export on a task of its own, on the export thread (`lanes.rs`): the loop hands an
//! interval's metrics (or a flush of spans) to a courier and goes back to the kernel
//! tables and the DNS and HTTP stages, so a slow or black-holed collector never holds
//! back collection. One job is on its
//! way at a time; while it is, the loop does not collect again (the SDK keeps the
//! totals, so the next export carries them) and spans stay held (bounded by
//! `http.max_spans`, past which they are counted lost).
use std::time::Duration;

use opentelemetry_sdk::{Resource, metrics::data::ResourceMetrics};
use tokio::{runtime::Handle, sync::mpsc, task::JoinHandle};

use crate::telemetry::{ExportOutcome, MetricsSink, SpanBytes, SpanOutcome, SpanSink};

/// A sink a courier delivers to.
pub trait Deliver: Send + 'static {
    type Job: Send + 'static;
    type Outcome: Send + 'static;
    fn deliver(&mut self, job: Self::Job) -> impl Future<Output = Self::Outcome> + Send;
    fn shutdown(&mut self);
}

impl Deliver for MetricsSink {
    type Job = Vec<ResourceMetrics>;
    type Outcome = ExportOutcome;
    async fn deliver(&mut self, batch: Self::Job) -> ExportOutcome {
        self.export(&batch).await
    }
    fn shutdown(&mut self) {
        MetricsSink::shutdown(self);
    }
}

impl Deliver for SpanSink {
    type Job = Vec<(Resource, SpanBytes)>;
    type Outcome = SpanOutcome;
    async fn deliver(&mut self, batches: Self::Job) -> SpanOutcome {
        self.export(batches).await
    }
    fn shutdown(&mut self) {
        SpanSink::shutdown(self);
    }
}

pub struct Courier<D: Deliver> {
    jobs: Option<mpsc::Sender<D::Job>>,
    outcomes: mpsc::Receiver<D::Outcome>,
    in_flight: bool,
    task: JoinHandle<()>,
}

impl<D: Deliver> Courier<D> {
    /// `lane`: the runtime the courier runs on, the one the sink was made in (its
    /// connection's tasks live there too).
    pub fn spawn(mut sink: D, lane: &Handle) -> Self {
        let (jobs, mut incoming) = mpsc::channel::<D::Job>(1);
        let (done, outcomes) = mpsc::channel(1);
        let task = lane.spawn(async move {
            while let Some(job) = incoming.recv().await {
                let outcome = sink.deliver(job).await;
                if done.send(outcome).await.is_err() {
                    break;
                }
            }
            sink.shutdown();
        });
        Self { jobs: Some(jobs), outcomes, in_flight: false, task }
    }

    /// No job on its way: the next one can go.
    pub fn is_idle(&self) -> bool {
        !self.in_flight
    }

    /// Hands `job` over; the caller checked `is_idle`. Gives it back when the courier
    /// cannot take it (its task ended: closed, or panicked), for the caller to count.
    pub fn send(&mut self, job: D::Job) -> Result<(), D::Job> {
        debug_assert!(!self.in_flight, "one job at a time");
        let Some(jobs) = &self.jobs else { return Err(job) };
        match jobs.try_send(job) {
            Ok(()) => {
                self.in_flight = true;
                Ok(())
            }
            Err(err) => {
                tracing::error!("an export courier is gone: its job is not delivered");
                Err(err.into_inner())
            }
        }
    }

    /// The outcome of the job on its way; pending while there is none (for `select!`:
    /// dropping it before it is ready loses nothing).
    pub async fn outcome(&mut self) -> D::Outcome {
        if !self.in_flight {
            return std::future::pending().await;
        }
        // Cleared only once the outcome is here: `select!` may drop this future first.
        let outcome = self.outcomes.recv().await;
        self.in_flight = false;
        if let Some(outcome) = outcome {
            return outcome;
        }
        // Its task ended with the job (a panic in the exporter): later jobs are refused
        // (`send` gives them back, and refused spans are counted).
        tracing::error!("an export courier ended with its job on its way: that export and later ones are lost");
        self.jobs = None;
        std::future::pending().await
    }

    /// At shutdown: the outcome of the job on its way, waiting at most `grace`.
    pub async fn settle(&mut self, grace: Duration) -> Option<D::Outcome> {
        if !self.in_flight {
            return None;
        }
        let outcome = tokio::time::timeout(grace, self.outcome()).await.ok();
        if outcome.is_none() {
            tracing::warn!(?grace, "an export still on its way at shutdown was given up");
        }
        outcome
    }

    /// Stops taking jobs; the sink shuts down once the one on its way is done (at most
    /// `grace`, then it is given up).
    pub async fn close(mut self, grace: Duration) {
        self.jobs = None;
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}
