//! Export on a task of its own: the loop hands an interval's metrics (or a flush of
//! spans) to a courier and goes back to the kernel tables and the DNS and HTTP stages,
//! so a slow or black-holed collector never holds back collection. One job is on its
//! way at a time; while it is, the loop does not collect again (the SDK keeps the
//! totals, so the next export carries them) and spans stay held (bounded by
//! `http.max_spans`, past which they are counted lost).
use std::time::Duration;

use opentelemetry_sdk::{Resource, metrics::data::ResourceMetrics, trace::SpanData};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::telemetry::{ExportOutcome, MetricsSink, SpanSink};

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

/// Failed export requests and spans not delivered.
pub type SpanOutcome = (u64, u64);

impl Deliver for SpanSink {
    type Job = Vec<(Resource, Vec<SpanData>)>;
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
    task: JoinHandle<D>,
}

impl<D: Deliver> Courier<D> {
    pub fn spawn(mut sink: D) -> Self {
        let (jobs, mut incoming) = mpsc::channel::<D::Job>(1);
        let (done, outcomes) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            while let Some(job) = incoming.recv().await {
                let outcome = sink.deliver(job).await;
                if done.send(outcome).await.is_err() {
                    break;
                }
            }
            sink
        });
        Self { jobs: Some(jobs), outcomes, in_flight: false, task }
    }

    /// No job on its way: the next one can go.
    pub fn is_idle(&self) -> bool {
        !self.in_flight
    }

    /// Hands `job` over; the caller checked `is_idle`.
    pub fn send(&mut self, job: D::Job) {
        debug_assert!(!self.in_flight, "one job at a time");
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.try_send(job).is_ok());
        self.in_flight = sent;
    }

    /// The outcome of the job on its way; pending while there is none (for `select!`:
    /// dropping it before it is ready loses nothing).
    pub async fn outcome(&mut self) -> D::Outcome {
        if !self.in_flight {
            return std::future::pending().await;
        }
        match self.outcomes.recv().await {
            Some(outcome) => {
                self.in_flight = false;
                outcome
            }
            None => std::future::pending().await,
        }
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

    /// Stops taking jobs and shuts the sink down once the one on its way is done (at
    /// most `grace`).
    pub async fn close(mut self, grace: Duration) {
        self.jobs = None;
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(Ok(mut sink)) => tokio::task::block_in_place(|| sink.shutdown()),
            _ => self.task.abort(),
        }
    }
}
