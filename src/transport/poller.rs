//! The polling thread: the one owner of the consumer client, the offset tracker and the
//! dead-letter producer. It polls, decodes, routes each event to its order's worker, takes the
//! workers' completions back, and commits every partition's finished prefix periodically, before
//! a partition is handed back to the group, and at shutdown. The client sits behind
//! [`ConsumerClient`]; whichever it is, redelivered offsets are recognised and not applied twice.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::client::{ConnectError, ConsumerClient, DeadLetterProducer, Polled};
use super::dead_letter::DeadLetter;
use super::decode::decode;
use super::offsets::OffsetTracker;
use crate::config::KafkaSettings;
use crate::dispatch::{Completion, Job, JobResult, Position, WorkerPool};
use crate::ops::{Health, Metrics};
use crate::shutdown::{Backoff, Shutdown};

/// How long one poll may wait for records when none are there (the `kafka` crate's fetch waits
/// KAFKA_FETCH_MAX_WAIT_MS at the broker instead). Short, so commits, gauges and a stop request
/// are never far away.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How the poller ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollerExit {
    /// Stopped on request; final offsets committed.
    Stopped,
    /// Could not start: the configuration does not match the cluster (exit 2).
    Misconfigured(String),
}

/// Counters for the progress and summary log lines.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// Applied events by outcome label.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Events given up while stopping, or when their partition was handed back before they
    /// finished (left uncommitted for redelivery).
    pub abandoned: u64,
}

impl RunSummary {
    /// Events applied or dead-lettered.
    pub fn total(&self) -> u64 {
        self.outcomes.values().sum::<u64>() + self.dead_letters.values().sum::<u64>()
    }

    fn describe(&self) -> String {
        let join = |m: &BTreeMap<&'static str, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} events ({}); dead letters {} ({}); abandoned {}",
            self.total(),
            join(&self.outcomes),
            self.dead_letters.values().sum::<u64>(),
            join(&self.dead_letters),
            self.abandoned
        )
    }
}

/// The two Kafka clients the poller drives.
pub struct Clients {
    /// Reads the order topic.
    pub consumer: Box<dyn ConsumerClient>,
    /// Writes the dead-letter topic.
    pub dead_letters: Box<dyn DeadLetterProducer>,
}

/// The poller. Borrows the pool so the caller decides when to close it.
pub struct Poller<'a> {
    settings: &'a KafkaSettings,
    pool: WorkerPool,
    completions: Receiver<Completion>,
    shutdown: Shutdown,
    client: Box<dyn ConsumerClient>,
    /// The partitions this instance owns now: records of any other are not routed.
    owned: BTreeSet<i32>,
    tracker: OffsetTracker,
    /// Jobs still queued or running when their partition was handed back: their completions
    /// belong to an assignment that is over and must not mark anything finished.
    stale: HashSet<(i32, i64)>,
    dead_letters: Box<dyn DeadLetterProducer>,
    /// Dead letters not yet accepted by Kafka: their offsets stay uncommitted until they are.
    unsent: VecDeque<DeadLetter>,
    next_dead_letter_try: Instant,
    dead_letter_backoff: Backoff,
    summary: RunSummary,
    last_commit: Instant,
    last_progress: (Instant, u64),
    last_watermarks: Instant,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// What the poller reports to: metrics and progress marks.
pub struct Telemetry {
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Progress marks for `/healthz`, `/readyz` and the watchdog.
    pub health: Arc<Health>,
}

impl<'a> Poller<'a> {
    /// A poller reading through `clients`, feeding `pool`, hearing back on `completions`.
    pub fn new(
        settings: &'a KafkaSettings,
        clients: Clients,
        pool: WorkerPool,
        completions: Receiver<Completion>,
        shutdown: Shutdown,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            settings,
            pool,
            completions,
            shutdown,
            client: clients.consumer,
            owned: BTreeSet::new(),
            tracker: OffsetTracker::new(),
            stale: HashSet::new(),
            dead_letters: clients.dead_letters,
            unsent: VecDeque::new(),
            next_dead_letter_try: Instant::now(),
            dead_letter_backoff: Backoff::new(Duration::from_secs(10)),
            summary: RunSummary::default(),
            last_commit: Instant::now(),
            last_progress: (Instant::now(), 0),
            last_watermarks: Instant::now(),
            metrics: telemetry.metrics,
            health: telemetry.health,
        }
    }

    /// Polls until stopping, then drains the workers and commits. Returns the counters.
    pub fn run(mut self) -> (PollerExit, RunSummary) {
        let mut backoff = Backoff::new(Duration::from_secs(10));
        let exit = loop {
            if self.shutdown.is_shutdown() {
                break PollerExit::Stopped;
            }
            self.health.poller_beat();
            self.take_completions();
            self.send_dead_letters();
            self.commit_if_due();
            self.log_progress();
            self.observe();
            if !self.client.is_connected() {
                match self.client.connect() {
                    Ok(()) => {
                        self.health.kafka_ready(true);
                        backoff.reset();
                    }
                    Err(ConnectError::Misconfigured(m)) => break PollerExit::Misconfigured(m),
                    Err(ConnectError::Retry(m)) => {
                        let delay = backoff.next_delay();
                        log::warn!("kafka: {m}; retrying in {delay:?}");
                        self.pause(delay);
                        continue;
                    }
                }
            }
            match self.client.poll(POLL_WAIT) {
                Ok(polled) => {
                    backoff.reset();
                    self.health.kafka_ready(true);
                    for p in polled {
                        // Stopping: route no more (each refused job would wait for a full
                        // queue first); what is left is read again after the restart.
                        if self.shutdown.is_shutdown() {
                            break;
                        }
                        match p {
                            Polled::Record {
                                partition,
                                offset,
                                value,
                            } => self.receive(partition, offset, &value),
                            Polled::Assigned(partitions) => self.assigned(&partitions),
                            Polled::Revoked(partitions) => self.revoke(&partitions),
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!("kafka: {e}; polling again in {delay:?}");
                    self.health.kafka_ready(false);
                    self.pause(delay);
                }
            }
        };
        self.stop();
        (exit, self.summary)
    }

    /// Waits, showing the watchdog that the poller is alive (backing off is not a stall).
    fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && self.shutdown.sleep(Duration::from_millis(200).min(d)) {
            self.health.poller_beat();
        }
    }

    /// Refreshes the gauges: in-flight count, queue depths, and every few seconds the high
    /// watermarks (for the lag).
    fn observe(&mut self) {
        self.health.in_flight(self.tracker.in_flight());
        self.metrics.queue_depths(self.pool.queue_depths());
        if self.last_watermarks.elapsed() < Duration::from_secs(5) || !self.client.is_connected() {
            return;
        }
        self.last_watermarks = Instant::now();
        match self.client.high_watermarks() {
            Ok(offsets) => {
                for (partition, offset) in offsets {
                    if self.owned.contains(&partition) {
                        self.metrics.high_watermark(partition, offset);
                    }
                }
            }
            Err(e) => log::debug!("kafka: {e}"),
        }
    }

    /// Partitions now ours: route their records; start their committed-offset gauges (and so
    /// the lag) from what the group has committed.
    fn assigned(&mut self, partitions: &[i32]) {
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.owned.contains(p))
            .collect();
        if !new.is_empty() {
            self.owned.extend(new.iter().copied());
            log::info!(
                "kafka: assigned partitions {new:?} of {}; now reading {:?}",
                self.settings.topic,
                self.owned
            );
        }
        match self.client.committed_offsets(partitions) {
            Ok(committed) => {
                for (partition, next) in committed {
                    self.metrics.committed(partition, next);
                }
            }
            Err(e) => log::debug!("kafka: {e}"),
        }
    }

    /// Partitions being taken away: stop routing them, give their queued and in-flight events
    /// up to SHUTDOWN_DRAIN_MS to finish, commit their finished prefix, forget them (what is
    /// unfinished stays uncommitted, for the next owner), and hand them back.
    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.owned.remove(p);
        }
        let open =
            |t: &OffsetTracker| -> usize { partitions.iter().map(|p| t.in_flight_of(*p)).sum() };
        let deadline = Instant::now() + self.settings.revoke_drain;
        log::info!(
            "kafka: partitions {partitions:?} of {} revoked; finishing their {} events in flight",
            self.settings.topic,
            open(&self.tracker)
        );
        loop {
            self.take_completions();
            self.send_dead_letters();
            let now = Instant::now();
            if open(&self.tracker) == 0 || now >= deadline {
                break;
            }
            self.health.poller_beat();
            match self
                .completions
                .recv_timeout((deadline - now).min(Duration::from_millis(50)))
            {
                Ok(done) => self.complete(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let ready: Vec<(i32, i64)> = self
            .tracker
            .ready_to_commit()
            .into_iter()
            .filter(|(p, _)| partitions.contains(p))
            .collect();
        self.commit_points(&ready);
        let mut abandoned = 0;
        for &p in partitions {
            let held: HashSet<i64> = self
                .unsent
                .iter()
                .filter(|l| l.partition == p)
                .map(|l| l.offset)
                .collect();
            for offset in self.tracker.forget(p) {
                abandoned += 1;
                // A held dead letter is dropped below; anything else is still with a worker.
                if !held.contains(&offset) {
                    self.stale.insert((p, offset));
                }
            }
            self.metrics.forget_partition(p);
        }
        self.unsent.retain(|l| !partitions.contains(&l.partition));
        if abandoned > 0 {
            self.summary.abandoned += abandoned;
            log::warn!(
                "kafka: {abandoned} events of partitions {partitions:?} were unfinished after                  {:?}; handed back uncommitted (the next owner reads them again)",
                self.settings.revoke_drain
            );
        }
        match self.client.release(partitions) {
            Ok(()) => log::info!("kafka: partitions {partitions:?} handed back"),
            Err(e) => log::warn!("kafka: handing back partitions {partitions:?}: {e}"),
        }
    }

    /// One message: skip redeliveries and partitions not ours, route events, dead-letter bad
    /// input.
    fn receive(&mut self, partition: i32, offset: i64, value: &[u8]) {
        if !self.owned.contains(&partition) || !self.tracker.receive(partition, offset) {
            return;
        }
        self.metrics.consumed();
        let position = Position { partition, offset };
        match decode(value, self.settings.fetch_max_bytes_per_partition) {
            Ok(event) => {
                let job = Job {
                    position,
                    event,
                    received: Instant::now(),
                };
                // Refused only when stopping: the offset stays open, so it is never committed.
                let health = &self.health;
                let _ = self
                    .pool
                    .submit(job, &self.shutdown, || health.poller_beat());
            }
            Err(bad) => {
                log::warn!(
                    "bad event at {}/{partition}@{offset}: {bad}; sent to {}",
                    self.settings.topic,
                    self.dead_letters.topic()
                );
                self.unsent.push_back(DeadLetter::new(
                    bad.code(),
                    bad.to_string(),
                    &self.settings.topic,
                    partition,
                    offset,
                    value,
                ));
            }
        }
    }

    /// Applies the workers' reports to the tracker and the counters.
    fn take_completions(&mut self) {
        while let Ok(done) = self.completions.try_recv() {
            self.complete(done);
        }
    }

    /// One worker report.
    fn complete(&mut self, done: Completion) {
        let Position { partition, offset } = done.position;
        // A job of a partition handed back before it finished: it counts, but it no longer
        // moves that partition's commit point (the offset may be ours again by now, received
        // anew and queued behind it on the same worker).
        let stale = self.stale.remove(&(partition, offset));
        match done.result {
            JobResult::Applied(outcome) => {
                log::debug!(
                    "order {} at {}/{partition}@{offset}: {outcome} ({:?})",
                    done.order_id,
                    self.settings.topic,
                    done.latency
                );
                *self.summary.outcomes.entry(outcome.label()).or_default() += 1;
                self.metrics
                    .applied(done.family.as_str(), outcome.label(), done.latency);
                self.metrics.event_age(done.age);
                if !stale {
                    self.tracker.finish(partition, offset);
                }
            }
            JobResult::Failed(e) if stale => log::warn!(
                "order {} at {}/{partition}@{offset} failed after its partition was handed                  back: {e}; left to the partition's next owner",
                done.order_id,
                self.settings.topic
            ),
            JobResult::Failed(e) => {
                log::error!(
                    "order {} at {}/{partition}@{offset} failed for good: {e}; sent to {}",
                    done.order_id,
                    self.settings.topic,
                    self.dead_letters.topic()
                );
                let payload = serde_json::json!({"order_id": done.order_id.as_str()}).to_string();
                self.unsent.push_back(DeadLetter::new(
                    "processing_failed",
                    e.to_string(),
                    &self.settings.topic,
                    partition,
                    offset,
                    payload.as_bytes(),
                ));
            }
            JobResult::Abandoned if stale => {}
            JobResult::Abandoned => self.summary.abandoned += 1,
        }
    }

    /// Sends waiting dead letters; on failure keeps them (and their offsets open) for later.
    fn send_dead_letters(&mut self) {
        if self.unsent.is_empty() || Instant::now() < self.next_dead_letter_try {
            return;
        }
        while let Some(letter) = self.unsent.front() {
            match self.dead_letters.send(letter) {
                Ok(()) => {
                    *self.summary.dead_letters.entry(letter.reason).or_default() += 1;
                    self.metrics.dead_lettered(letter.reason);
                    self.tracker.finish(letter.partition, letter.offset);
                    self.unsent.pop_front();
                    self.dead_letter_backoff.reset();
                }
                Err(e) => {
                    let delay = self.dead_letter_backoff.next_delay();
                    log::error!(
                        "dead-letter topic {}: {e}; {} letters held, their offsets stay \
                         uncommitted; retrying in {delay:?}",
                        self.dead_letters.topic(),
                        self.unsent.len()
                    );
                    self.next_dead_letter_try = Instant::now() + delay;
                    return;
                }
            }
        }
    }

    fn commit_if_due(&mut self) {
        if self.last_commit.elapsed() >= self.settings.commit_interval {
            self.commit();
            self.last_commit = Instant::now();
        }
    }

    /// Commits every partition's finished prefix.
    fn commit(&mut self) {
        let ready = self.tracker.ready_to_commit();
        self.commit_points(&ready);
    }

    /// Commits these `(partition, next offset)` points, synchronously.
    fn commit_points(&mut self, ready: &[(i32, i64)]) {
        if ready.is_empty() || !self.client.is_connected() {
            return;
        }
        let topic = &self.settings.topic;
        match self.client.commit(ready) {
            Ok(()) => {
                for &(partition, next) in ready {
                    self.tracker.committed(partition, next);
                    self.metrics.committed(partition, next);
                }
                log::debug!("committed {topic} offsets {ready:?}");
            }
            Err(e) => log::warn!("kafka: {e}"),
        }
    }

    fn log_progress(&mut self) {
        let (since, before) = self.last_progress;
        if since.elapsed() < Duration::from_secs(10) {
            return;
        }
        let total = self.summary.total();
        if total != before {
            let rate = (total - before) as f64 / since.elapsed().as_secs_f64();
            log::info!(
                "progress: {rate:.0} events/s; {}; in flight {}",
                self.summary.describe(),
                self.tracker.in_flight()
            );
        }
        self.last_progress = (Instant::now(), total);
    }

    /// Stop polling, let the workers drain, take their last reports, commit, leave the group,
    /// say what was done.
    fn stop(&mut self) {
        log::info!("stopping: polling stopped, workers finishing queued events");
        let pool = std::mem::replace(&mut self.pool, WorkerPool::empty());
        let panicked = pool.close_and_join();
        if panicked > 0 {
            log::error!("{panicked} worker(s) panicked; their events stay uncommitted");
        }
        self.take_completions();
        // A last chance for held dead letters; what still fails stays uncommitted.
        self.next_dead_letter_try = Instant::now();
        self.send_dead_letters();
        if !self.client.is_connected() && !self.tracker.ready_to_commit().is_empty() {
            // The consumer broke just before stopping: one attempt to reconnect for the commit.
            let _ = self.client.connect();
        }
        self.commit();
        self.client.close();
        let committed: Vec<String> = self
            .owned
            .iter()
            .filter_map(|p| {
                self.tracker
                    .committed_offset(*p)
                    .map(|o| format!("{p}={o}"))
            })
            .collect();
        log::info!(
            "stopped: {}; committed offsets of {}: [{}]",
            self.summary.describe(),
            self.settings.topic,
            committed.join(", ")
        );
    }
}

#[cfg(test)]
mod tests;
