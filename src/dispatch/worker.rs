//! One worker: takes jobs from its queue in order, applies each through the status factory in a
//! database transaction, retries transient failures with capped backoff (never skips), fails an
//! event the database refused as data (a dead letter), stalls on any other failure (a few
//! retries, then slow retries with the reason on `/healthz`, never a dead letter), and reports
//! every job back to the poller. Once stopping, the first transient failure (or the end
//! of the drain budget) leaves this job and every later one for redelivery, so a stop with the
//! database down costs no wait per queued event. Each database call is marked on [`Health`], so
//! the watchdog sees a worker stuck inside one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Completion, Job, JobResult};
use crate::ops::{Health, Metrics};
use crate::repository::CourierRepository;
use crate::repository::RepoError;
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
        // Set once stopping made this worker leave a job: every later one is left too, so an
        // order's events are never applied past one of them that was not.
        let mut gave_up = false;
        while let Ok(first) = self.jobs.recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let results = if gave_up || self.shutdown.stopping_longer_than(self.drain_budget) {
                gave_up = true;
                vec![JobResult::Abandoned; batch.len()]
            } else {
                self.apply_batch(&batch, &mut gave_up)
            };
            for (job, result) in batch.drain(..).zip(results) {
                self.health.event_finished();
                let done = Completion {
                    position: job.position,
                    order_id: job.event.order_id,
                    family: job.event.status.family(),
                    key: job.key,
                    payload: job.payload,
                    result,
                    latency: job.received.elapsed(),
                    age: (chrono::Utc::now() - job.event.created_at)
                        .to_std()
                        .unwrap_or_default(),
                    reported: Instant::now(),
                };
                if self.completions.send(done).is_err() {
                    return; // the poller is gone: nothing left to report to
                }
            }
        }
    }

    /// One transaction for the whole batch; if it fails, one by one, so a bad event fails
    /// alone and a transient failure is retried event by event. Sets `gave_up` when stopping
    /// made it leave a job (and so every job after it).
    fn apply_batch(&self, batch: &[Job], gave_up: &mut bool) -> Vec<JobResult> {
        if batch.len() > 1 {
            let events: Vec<&crate::domain::OrderEvent> = batch.iter().map(|j| &j.event).collect();
            match self.in_database(|| self.processor.apply_batch(&events)) {
                Ok(outcomes) => return outcomes.into_iter().map(JobResult::Applied).collect(),
                Err(e) if e.is_transient() && self.shutdown.is_shutdown() => {
                    self.metrics.db_error();
                    self.leave(&batch[0], &e, batch.len());
                    *gave_up = true;
                    return vec![JobResult::Abandoned; batch.len()];
                }
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
        batch
            .iter()
            .map(|job| {
                if *gave_up || self.shutdown.stopping_longer_than(self.drain_budget) {
                    *gave_up = true;
                    return JobResult::Abandoned;
                }
                let result = self.apply(job);
                *gave_up = result == JobResult::Abandoned;
                result
            })
            .collect()
    }

    /// Runs one database call, marked on [`Health`] while it lasts; a call that succeeds is
    /// an answer from PostgreSQL, for `/readyz` (so a long pass that delays the sampler does
    /// not make a busy database look silent).
    fn in_database<T, E>(&self, call: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.health.worker_busy(self.index);
        let out = call();
        self.health.worker_idle(self.index);
        if out.is_ok() {
            self.health.database_answered();
        }
        out
    }

    /// Says, once, that stopping leaves `count` jobs from `first` on for redelivery.
    fn leave(&self, first: &Job, e: &crate::repository::RepoError, count: usize) {
        log::warn!(
            "worker {}: giving up on {count} queued event(s) from order {} at partition {} \
             offset {} while stopping ({e}); they stay uncommitted and will be delivered again",
            self.index,
            first.event.order_id,
            first.position.partition,
            first.position.offset
        );
    }

    fn apply(&self, job: &Job) -> JobResult {
        let mut backoff = Backoff::new(RETRY_CAP);
        let mut attempts = 0u32;
        let mut unexpected = 0u32;
        let result = loop {
            let e = match self.in_database(|| self.processor.apply(&job.event)) {
                Ok(outcome) => {
                    if attempts > 0 {
                        log::info!(
                            "worker {}: order {} applied after {attempts} retries",
                            self.index,
                            job.event.order_id
                        );
                    }
                    break JobResult::Applied(outcome);
                }
                // The event's own data was refused: it always will be.
                Err(e) if e.is_bad_input() => {
                    self.metrics.db_error();
                    break JobResult::Failed(e);
                }
                Err(e) => e,
            };
            attempts += 1;
            self.metrics.db_error();
            if self.shutdown.is_shutdown() {
                self.leave(job, &e, 1);
                break JobResult::Abandoned;
            }
            if matches!(e, RepoError::Unexpected(_)) {
                unexpected += 1;
            }
            let delay = backoff.next_delay();
            if unexpected == UNEXPECTED_RETRIES {
                let what = format!(
                    "order {} at partition {} offset {} keeps failing ({e}); retried every \
                     {RETRY_CAP:?}, never dead-lettered",
                    job.event.order_id, job.position.partition, job.position.offset,
                );
                log::error!("worker {}: {what}", self.index);
                self.health.worker_stalled(self.index, Some(what));
            } else if unexpected < UNEXPECTED_RETRIES {
                log::warn!(
                    "worker {}: order {} at partition {} offset {}: {e}; retry {attempts} in {delay:?}",
                    self.index,
                    job.event.order_id,
                    job.position.partition,
                    job.position.offset
                );
            }
            self.metrics.db_retry();
            self.shutdown.sleep(delay);
        };
        if unexpected >= UNEXPECTED_RETRIES {
            self.health.worker_stalled(self.index, None);
        }
        result
    }
}

/// The longest wait between two attempts at one event.
const RETRY_CAP: Duration = Duration::from_secs(5);

/// Failures of a kind nobody classified (`RepoError::Unexpected`) an event gets before its
/// worker reports a stall; it goes on retrying every [`RETRY_CAP`] after that.
pub(super) const UNEXPECTED_RETRIES: u32 = 5;
