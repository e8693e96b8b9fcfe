//! One worker: takes jobs from its queue in order, applies each through the status factory in a
//! database transaction, retries transient failures with capped backoff (never skips), and
//! reports every job back to the poller.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Completion, Job, JobResult};
use crate::ops::{Health, Metrics};
use crate::repository::CourierRepository;
use crate::shutdown::{Backoff, Shutdown};
use crate::usecase::OrderEventProcessor;

/// A worker thread's state.
pub(super) struct Worker<R> {
    /// For log lines.
    pub index: usize,
    /// Its own queue: every event of the orders routed to it, in order.
    pub jobs: Receiver<Job>,
    /// Where it reports.
    pub completions: Sender<Completion>,
    /// The status factory and the repository.
    pub processor: Arc<OrderEventProcessor<R>>,
    /// Stops retries when the process is stopping.
    pub shutdown: Shutdown,
    /// How long queued events are still applied once stopping; later ones are left for
    /// redelivery, so a stop stays within its bound under any backlog.
    pub drain_budget: Duration,
    /// Retry and error counters.
    pub metrics: Arc<Metrics>,
    /// Marks each finished event, for `/healthz`.
    pub health: Arc<Health>,
    /// Most events applied in one transaction.
    pub batch_max: usize,
}

impl<R: CourierRepository> Worker<R> {
    /// Runs until the queue is closed and drained. Takes whatever is queued, up to
    /// `batch_max` jobs, into one transaction; never waits to fill a batch.
    pub fn run(self) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.batch_max);
        while let Ok(first) = self.jobs.recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let results = if self.shutdown.stopping_longer_than(self.drain_budget) {
                vec![JobResult::Abandoned; batch.len()]
            } else {
                self.apply_batch(&batch)
            };
            for (job, result) in batch.drain(..).zip(results) {
                self.health.event_finished();
                let done = Completion {
                    position: job.position,
                    order_id: job.event.order_id,
                    family: job.event.status.family(),
                    payload: job.payload,
                    result,
                    latency: job.received.elapsed(),
                    age: (chrono::Utc::now() - job.event.created_at)
                        .to_std()
                        .unwrap_or_default(),
                };
                if self.completions.send(done).is_err() {
                    return; // the poller is gone: nothing left to report to
                }
            }
        }
    }

    /// One transaction for the whole batch; if it fails, one by one, so a bad event fails
    /// alone and a transient failure is retried event by event.
    fn apply_batch(&self, batch: &[Job]) -> Vec<JobResult> {
        if batch.len() > 1 {
            let events: Vec<&crate::domain::OrderEvent> = batch.iter().map(|j| &j.event).collect();
            match self.processor.apply_batch(&events) {
                Ok(outcomes) => return outcomes.into_iter().map(JobResult::Applied).collect(),
                Err(e) => {
                    self.metrics.db_error();
                    log::debug!(
                        "worker {}: batch of {} failed ({e}); applying one by one",
                        self.index,
                        batch.len()
                    );
                }
            }
        }
        batch.iter().map(|job| self.apply(job)).collect()
    }

    fn apply(&self, job: &Job) -> JobResult {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let mut attempts = 0u32;
        loop {
            match self.processor.apply(&job.event) {
                Ok(outcome) => {
                    if attempts > 0 {
                        log::info!(
                            "worker {}: order {} applied after {attempts} retries",
                            self.index,
                            job.event.order_id
                        );
                    }
                    return JobResult::Applied(outcome);
                }
                Err(e) if e.is_transient() => {
                    attempts += 1;
                    self.metrics.db_error();
                    if self.shutdown.is_shutdown() {
                        log::warn!(
                            "worker {}: giving up on order {} at partition {} offset {} while \
                             stopping ({e}); it stays uncommitted and will be delivered again",
                            self.index,
                            job.event.order_id,
                            job.position.partition,
                            job.position.offset
                        );
                        return JobResult::Abandoned;
                    }
                    let delay = backoff.next_delay();
                    log::warn!(
                        "worker {}: order {} at partition {} offset {}: {e}; retry {attempts} in {delay:?}",
                        self.index,
                        job.event.order_id,
                        job.position.partition,
                        job.position.offset
                    );
                    self.metrics.db_retry();
                    self.shutdown.sleep(delay);
                }
                Err(e) => {
                    self.metrics.db_error();
                    return JobResult::Failed(e);
                }
            }
        }
    }
}
