//! The polling thread: the one owner of the Kafka consumer, the offset tracker and the
//! dead-letter producer. It polls, decodes, routes each event to its order's worker, takes the
//! workers' completions back, and commits every partition's finished prefix periodically and at
//! shutdown. Any poll error rebuilds the consumer (the crate keeps dead connections and never
//! refreshes metadata on its own); redelivered offsets are recognised and not applied twice.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use kafka::client::{FetchOffset, GroupOffsetStorage, KafkaClient};
use kafka::consumer::Consumer;

use super::dead_letter::{DeadLetter, DeadLetterQueue};
use super::decode::decode;
use super::offsets::OffsetTracker;
use crate::config::{FallbackOffset, KafkaSettings};
use crate::dispatch::{Completion, Job, JobResult, Position, WorkerPool};
use crate::ops::{Health, LogThrottle, Metrics};
use crate::shutdown::{Backoff, Shutdown};
use std::sync::Arc;

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
    /// Events given up while stopping (left uncommitted for redelivery).
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

/// The poller. Borrows the pool so the caller decides when to close it.
pub struct Poller<'a> {
    settings: &'a KafkaSettings,
    pool: WorkerPool,
    completions: Receiver<Completion>,
    shutdown: Shutdown,
    consumer: Option<Consumer>,
    tracker: OffsetTracker,
    dead_letters: DeadLetterQueue,
    /// Dead letters not yet accepted by Kafka: their offsets stay uncommitted until they are.
    unsent: VecDeque<DeadLetter>,
    next_dead_letter_try: Instant,
    dead_letter_backoff: Backoff,
    /// Dead letters are logged once per reason, then summarised at most once a minute.
    dead_letter_log: LogThrottle,
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
    /// A poller feeding `pool`, hearing back on `completions`.
    pub fn new(
        settings: &'a KafkaSettings,
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
            consumer: None,
            tracker: OffsetTracker::new(),
            dead_letters: DeadLetterQueue::new(
                settings.brokers.clone(),
                settings.dlq_topic.clone(),
            ),
            unsent: VecDeque::new(),
            next_dead_letter_try: Instant::now(),
            dead_letter_backoff: Backoff::new(Duration::from_secs(10)),
            dead_letter_log: LogThrottle::new(
                "dead letters",
                crate::ops::log_throttle::SUMMARY_EVERY,
            ),
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
            self.dead_letter_log.tick();
            self.commit_if_due();
            self.log_progress();
            self.observe();
            if self.consumer.is_none() {
                match self.connect() {
                    Ok(consumer) => {
                        self.consumer = Some(consumer);
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
            let Some(consumer) = self.consumer.as_mut() else {
                continue;
            };
            match consumer.poll() {
                Ok(sets) => {
                    backoff.reset();
                    for set in sets.iter() {
                        for m in set.messages() {
                            self.receive(set.partition(), m.offset, m.value);
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "kafka: poll failed on {}: {e}; rebuilding the consumer in {delay:?}",
                        self.settings.topic
                    );
                    self.drop_consumer();
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

    fn drop_consumer(&mut self) {
        self.consumer = None;
        self.health.kafka_ready(false);
    }

    /// Refreshes the gauges: in-flight count, queue depths, and every few seconds the high
    /// watermarks (for the lag).
    fn observe(&mut self) {
        self.health.in_flight(self.tracker.in_flight());
        self.metrics.queue_depths(self.pool.queue_depths());
        if self.last_watermarks.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_watermarks = Instant::now();
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        match consumer
            .client_mut()
            .fetch_topic_offsets(&self.settings.topic, FetchOffset::Latest)
        {
            Ok(offsets) => {
                for o in offsets {
                    self.metrics.high_watermark(o.partition, o.offset);
                }
            }
            Err(e) => log::debug!("kafka: high watermarks unavailable: {e}"),
        }
    }

    /// One message: skip redeliveries, route events, dead-letter bad input.
    fn receive(&mut self, partition: i32, offset: i64, value: &[u8]) {
        if !self.tracker.receive(partition, offset) {
            return;
        }
        self.metrics.consumed();
        let position = Position { partition, offset };
        match decode(value, self.settings.fetch_max_bytes_per_partition) {
            Ok(event) => {
                let job = Job {
                    position,
                    event,
                    payload: value.to_vec(),
                    received: Instant::now(),
                };
                // Refused only when stopping: the offset stays open, so it is never committed.
                let health = &self.health;
                let _ = self
                    .pool
                    .submit(job, &self.shutdown, || health.poller_beat());
            }
            Err(bad) => {
                self.dead_letter_log.note(
                    bad.code(),
                    log::Level::Warn,
                    format!(
                        "bad event at {}/{partition}@{offset}: {bad}; sent to {}",
                        self.settings.topic,
                        self.dead_letters.topic()
                    ),
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
            let Position { partition, offset } = done.position;
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
                    self.tracker.finish(partition, offset);
                }
                JobResult::Failed(e) => {
                    self.dead_letter_log.note(
                        "processing_failed",
                        log::Level::Error,
                        format!(
                            "order {} at {}/{partition}@{offset} failed for good: {e}; sent to {}",
                            done.order_id,
                            self.settings.topic,
                            self.dead_letters.topic()
                        ),
                    );
                    self.unsent.push_back(DeadLetter::new(
                        "processing_failed",
                        e.to_string(),
                        &self.settings.topic,
                        partition,
                        offset,
                        &done.payload,
                    ));
                }
                JobResult::Abandoned => self.summary.abandoned += 1,
            }
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
        if ready.is_empty() {
            return;
        }
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        let topic = &self.settings.topic;
        for &(partition, next) in &ready {
            if let Err(e) = consumer.consume_message(topic, partition, next - 1) {
                log::warn!("kafka: cannot mark {topic}/{partition}@{}: {e}", next - 1);
            }
        }
        match consumer.commit_consumed() {
            Ok(()) => {
                for &(partition, next) in &ready {
                    self.tracker.committed(partition, next);
                    self.metrics.committed(partition, next);
                }
                log::debug!("committed {topic} offsets {ready:?}");
            }
            Err(e) => {
                log::warn!("kafka: commit of {topic} offsets failed: {e}; rebuilding the consumer");
                self.drop_consumer();
            }
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

    /// Stop polling, let the workers drain, take their last reports, commit, say what was done.
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
        self.dead_letter_log.flush();
        if self.consumer.is_none() && !self.tracker.ready_to_commit().is_empty() {
            // The consumer broke just before stopping: one attempt to reconnect for the commit.
            if let Ok(c) = self.connect() {
                self.consumer = Some(c);
            }
        }
        self.commit();
        let committed: Vec<String> = self
            .partitions()
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

    fn partitions(&self) -> Vec<i32> {
        let mut partitions = self
            .consumer
            .as_ref()
            .and_then(|c| c.subscriptions().remove(&self.settings.topic))
            .unwrap_or_default();
        partitions.sort_unstable();
        partitions
    }

    /// Builds a consumer on a fresh client: metadata loaded, topic and partitions checked.
    fn connect(&self) -> Result<Consumer, ConnectError> {
        let s = self.settings;
        let mut client = KafkaClient::new(s.brokers.clone());
        client.set_client_id("service-courier".into());
        // The crate retries coordinator errors for two minutes by default; fail fast and let our
        // own backoff (which watches for shutdown) retry instead.
        client.set_retry_max_attempts(20);
        client.load_metadata_all().map_err(|e| {
            ConnectError::Retry(format!("cannot load metadata from {:?}: {e}", s.brokers))
        })?;
        let existing: Vec<i32> = match client.topics().partitions(&s.topic) {
            Some(p) => p.iter().map(|p| p.id()).collect(),
            None => {
                return Err(ConnectError::Retry(format!(
                    "topic {} does not exist (yet); waiting for it (create it with e.g. \
                     scripts/kafka.sh topic {} 6)",
                    s.topic, s.topic
                )))
            }
        };
        let partitions = s
            .partitions
            .resolve(&existing)
            .map_err(|e| ConnectError::Misconfigured(format!("{e} (topic {})", s.topic)))?;
        // Start the committed-offset gauges (and so the lag) from what the group has committed.
        client.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
        if let Ok(committed) = client.fetch_group_topic_offset(&s.group, &s.topic) {
            for c in committed.iter().filter(|c| c.offset >= 0) {
                if partitions.contains(&c.partition) {
                    self.metrics.committed(c.partition, c.offset);
                }
            }
        }
        let fetch = i32::try_from(s.fetch_max_bytes_per_partition).unwrap_or(i32::MAX);
        Consumer::from_client(client)
            .with_group(s.group.clone())
            .with_offset_storage(Some(GroupOffsetStorage::Kafka))
            .with_topic_partitions(s.topic.clone(), &partitions)
            .with_fallback_offset(match s.fallback_offset {
                FallbackOffset::Earliest => FetchOffset::Earliest,
                FallbackOffset::Latest => FetchOffset::Latest,
            })
            .with_fetch_max_wait_time(s.fetch_max_wait)
            .with_fetch_min_bytes(1)
            .with_fetch_max_bytes_per_partition(fetch)
            // A message over the fetch size would block its partition: let the crate grow the
            // fetch for that partition until it arrives, so it can be dead-lettered as too large.
            .with_retry_max_bytes_limit(fetch.saturating_mul(4).max(64 << 20))
            .create()
            .inspect(|_| {
                log::info!(
                    "kafka: consuming {} partitions {partitions:?} as group {}",
                    s.topic,
                    s.group
                );
            })
            .map_err(|e| ConnectError::Retry(format!("cannot create the consumer: {e}")))
    }
}

enum ConnectError {
    Retry(String),
    Misconfigured(String),
}
