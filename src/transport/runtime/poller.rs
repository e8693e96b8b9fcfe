//! The polling thread: the one owner of the consumer client, the offset tracker and the
//! dead-letter producer. It polls, decodes, routes each event to its order's worker, takes the
//! workers' completions back, and commits every partition's finished prefix periodically, before
//! a partition is handed back to the group, and at shutdown. The client sits behind
//! [`ConsumerClient`]; whichever it is, redelivered offsets are recognised and not applied twice.
//!
//! It never stops polling (librdkafka drops a member that does not poll within
//! max.poll.interval.ms): backpressure pauses partitions instead. A record whose worker's queue
//! is full is held here, in offset order with the rest of its partition, and that partition is
//! paused until the held records are queued; a dead-letter backlog past its bound pauses every
//! partition. Each assignment of a partition, and each new log of it, gets an epoch, carried in
//! the job's [`Position`]: a completion of an older epoch never touches the current one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::client::{ConnectError, ConsumerClient, DeadLetterProducer, ErrorKind, Polled};
use super::dead_letter::DeadLetter;
use super::dead_letter_backlog::{
    BacklogState, DeadLetterBacklog, DEFAULT_MAX_BYTES, DEFAULT_MAX_LETTERS,
};
use super::offsets::OffsetTracker;
use crate::config::KafkaSettings;
use crate::dispatch::{Completion, Job, JobResult, Position, Refused, WorkerPool};
use crate::ops::{Health, LogThrottle, Metrics};
use crate::shutdown::{Backoff, Shutdown};
use crate::transport::decode::decode;

/// How long one poll may wait for records when none are there (the `kafka` crate's fetch waits
/// KAFKA_FETCH_MAX_WAIT_MS at the broker instead). Short, so commits, gauges and a stop request
/// are never far away.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How long one poll may wait while events are in flight: their completions are taken between
/// polls, so this bounds what the loop adds to an event's commit (librdkafka's poll returns as
/// soon as a record is there; an idle loop waits POLL_WAIT and does not spin).
const IN_FLIGHT_POLL_WAIT: Duration = Duration::from_millis(1);
/// Longest the loop waits for room in the workers' queues before it polls again.
const ROOM_WAIT: Duration = Duration::from_millis(50);
/// How often a failed committed-offset read is tried again. (The partitions' ends are read
/// with every commit: see [`Poller::read_ends`].)
const COMMITTED_RETRY_EVERY: Duration = Duration::from_secs(5);
/// Longest the loop spends sending held dead letters before it polls and commits again.
const DEAD_LETTER_SLICE: Duration = Duration::from_secs(1);

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
    /// The epoch of each owned partition: a new one at each assignment and each new log.
    /// Completions and dead letters of another epoch mark nothing finished.
    epochs: HashMap<i32, u64>,
    /// The last epoch handed out.
    last_epoch: u64,
    tracker: OffsetTracker,
    /// Jobs whose worker's queue was full, by partition, in offset order: queued before any
    /// later record of their partition. Their partitions are paused as the client's
    /// [`PauseBound`](super::client::PauseBound) says.
    held: BTreeMap<i32, VecDeque<Job>>,
    /// When the workers last took a held job (or none was held).
    room_seen: Instant,
    /// Partitions paused in the client now.
    paused: BTreeSet<i32>,
    /// Partitions whose committed offset could not be read at assignment (tried again every
    /// [`COMMITTED_RETRY_EVERY`]).
    committed_unread: BTreeSet<i32>,
    /// Kafka calls, by kind, whose latest attempt failed: why. `/readyz` fails while any does.
    failing: BTreeMap<&'static str, String>,
    dead_letters: Box<dyn DeadLetterProducer>,
    /// Dead letters not yet accepted by Kafka: their offsets stay uncommitted until they are.
    /// Past its bound, every partition is paused (memory stays bounded while the topic is
    /// unreachable).
    unsent: DeadLetterBacklog,
    /// Whether the partitions were paused for unsent dead letters at the last look.
    fetching_paused: bool,
    next_dead_letter_try: Instant,
    dead_letter_backoff: Backoff,
    /// Dead letters are logged once per reason, then summarised at most once a minute.
    dead_letter_log: LogThrottle,
    /// Stalled partitions are logged once, then at most once a minute each kind.
    stall_log: LogThrottle,
    summary: RunSummary,
    last_commit: Instant,
    last_progress: (Instant, u64),
    /// When a failed committed-offset read was last tried again.
    last_committed_retry: Instant,
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
            epochs: HashMap::new(),
            last_epoch: 0,
            tracker: OffsetTracker::new(),
            held: BTreeMap::new(),
            room_seen: Instant::now(),
            paused: BTreeSet::new(),
            committed_unread: BTreeSet::new(),
            failing: BTreeMap::new(),
            dead_letters: clients.dead_letters,
            unsent: DeadLetterBacklog::new(DEFAULT_MAX_LETTERS, DEFAULT_MAX_BYTES),
            fetching_paused: false,
            next_dead_letter_try: Instant::now(),
            dead_letter_backoff: Backoff::new(Duration::from_secs(10)),
            dead_letter_log: LogThrottle::new(
                "dead letters",
                crate::ops::log_throttle::SUMMARY_EVERY,
            ),
            stall_log: LogThrottle::new(
                "stalled-partition reports",
                crate::ops::log_throttle::SUMMARY_EVERY,
            ),
            summary: RunSummary::default(),
            last_commit: Instant::now(),
            last_progress: (Instant::now(), 0),
            last_committed_retry: Instant::now(),
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
            self.stall_log.tick();
            self.commit_if_due();
            self.log_progress();
            self.observe();
            if !self.client.is_connected() {
                match self.client.connect() {
                    // The backoff is reset by a poll that works, not by a connect: a client
                    // that connects and then fails every poll backs off all the same.
                    Ok(()) => self.kafka_call("connect", Ok(())),
                    Err(ConnectError::Misconfigured(m)) => break PollerExit::Misconfigured(m),
                    Err(ConnectError::Retry(m)) => {
                        let delay = backoff.next_delay();
                        log::warn!("kafka: {m}; retrying in {delay:?}");
                        self.kafka_call("connect", Err(m));
                        self.wait(delay);
                        continue;
                    }
                }
            }
            self.submit_held();
            self.sync_pauses();
            let wait = if self.tracker.in_flight() > 0 {
                IN_FLIGHT_POLL_WAIT
            } else {
                POLL_WAIT
            };
            match self.client.poll(wait) {
                Ok(polled) => {
                    backoff.reset();
                    self.kafka_call("poll", Ok(()));
                    let background = self.client.background_failure().map(|e| e.to_string());
                    self.kafka_call("client", background.map_or(Ok(()), Err));
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
                                key,
                                value,
                            } => self.receive(partition, offset, key, value),
                            Polled::Assigned(partitions) => self.assigned(&partitions),
                            Polled::Revoked(partitions) => self.revoke(&partitions),
                            Polled::Stalled {
                                partition,
                                offset,
                                cause,
                            } => self.stalled(partition, offset, &cause),
                            Polled::Resumed(partition) => self.resumed(partition),
                            Polled::Skipped {
                                partition,
                                from,
                                to,
                            } => self.skipped(partition, from, to),
                            Polled::Recreated { partition, reason } => {
                                self.recreated(partition, &reason)
                            }
                            Polled::Passed { partition, to } => self.passed(partition, to),
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    // What waiting mends is a warning; what needs a person is an error.
                    let level = match e.kind {
                        ErrorKind::Retriable
                        | ErrorKind::Fenced
                        | ErrorKind::RebalanceInProgress => log::Level::Warn,
                        ErrorKind::UnknownTopicOrPartition | ErrorKind::Auth | ErrorKind::Fatal => {
                            log::Level::Error
                        }
                    };
                    log::log!(level, "kafka: {e}; polling again in {delay:?}");
                    self.kafka_call("poll", Err(e.to_string()));
                    self.wait(delay);
                }
            }
        };
        self.stop();
        (exit, self.summary)
    }

    /// Records how the latest Kafka call of a kind ended; `/readyz` says Kafka is missing
    /// while the latest call of any kind failed, and is ready again once each has worked.
    fn kafka_call(&mut self, kind: &'static str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.failing.remove(kind);
            }
            Err(why) => {
                self.failing.insert(kind, why);
            }
        }
        self.health.kafka_ready(self.failing.is_empty());
    }

    /// Waits, showing the watchdog that the poller is alive (backing off is not a stall).
    fn wait(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && self.shutdown.sleep(Duration::from_millis(200).min(d)) {
            self.health.poller_beat();
        }
    }

    /// Refreshes the gauges: in-flight count, queue depths; every few seconds tries again a
    /// committed-offset read that failed.
    fn observe(&mut self) {
        self.health.in_flight(self.tracker.in_flight());
        self.metrics.queue_depths(self.pool.queue_depths());
        if self.last_committed_retry.elapsed() < COMMITTED_RETRY_EVERY
            || !self.client.is_connected()
        {
            return;
        }
        self.last_committed_retry = Instant::now();
        self.read_committed();
    }

    /// Shows each owned partition's end as the client last saw it, beside the offset just
    /// committed. Read with every commit (the client answers from what it holds, no broker
    /// round trip), so the committed offset is never fresher than the end it is compared with:
    /// read every 5 s against commits every second, the lag read 0 while events waited (issue
    /// #21; docs/operations.md, "Lag").
    fn read_ends(&mut self) {
        if !self.client.is_connected() {
            return;
        }
        match self.client.high_watermarks() {
            Ok(ends) => {
                for (partition, end) in ends {
                    if self.owned.contains(&partition) {
                        self.metrics.high_watermark(partition, end);
                    }
                }
                self.kafka_call("watermarks", Ok(()));
            }
            Err(e) => {
                log::debug!("kafka: {e}");
                self.kafka_call("watermarks", Err(e.to_string()));
            }
        }
    }

    /// Reads the group's committed offsets of the partitions whose read failed before (and
    /// were not handed back since), for the committed-offset gauge.
    fn read_committed(&mut self) {
        let owned = &self.owned;
        self.committed_unread.retain(|p| owned.contains(p));
        if self.committed_unread.is_empty() {
            self.kafka_call("committed offsets", Ok(()));
            return;
        }
        let partitions: Vec<i32> = self.committed_unread.iter().copied().collect();
        match self.client.committed_offsets(&partitions) {
            Ok(committed) => {
                for (partition, next) in committed {
                    self.metrics.committed(partition, next);
                }
                self.committed_unread.clear();
                self.kafka_call("committed offsets", Ok(()));
            }
            Err(e) => {
                log::debug!("kafka: {e}");
                self.committed_unread.extend(partitions);
                self.kafka_call("committed offsets", Err(e.to_string()));
            }
        }
    }

    /// Queues held jobs, each partition's in offset order, waiting up to [`ROOM_WAIT`] in all
    /// for room: a drain then runs at the workers' pace with few polls, as when the loop
    /// blocked on a full queue, and the loop still polls at least that often.
    fn submit_held(&mut self) {
        let deadline = Instant::now() + ROOM_WAIT;
        for queue in self.held.values_mut() {
            while let Some(job) = queue.pop_front() {
                let wait = deadline.saturating_duration_since(Instant::now());
                match self.pool.try_submit(job, &self.shutdown, wait) {
                    Ok(()) => self.room_seen = Instant::now(),
                    Err(Refused::Full(job)) => {
                        queue.push_front(*job);
                        break;
                    }
                    // Left uncommitted: read again after the restart.
                    Err(Refused::Stopping(_)) => return,
                    Err(Refused::Gone(job)) => {
                        self.summary.abandoned += 1;
                        refused_by_a_gone_worker(&self.settings.topic, &job.position);
                    }
                }
            }
        }
        self.held.retain(|_, queue| !queue.is_empty());
        if self.held.is_empty() {
            self.room_seen = Instant::now();
        }
    }

    /// Pauses the partitions backpressure holds back and resumes the others: every one while
    /// the dead-letter backlog is past its bound; else those with held jobs once the client's
    /// [`PauseBound`](super::client::PauseBound) is passed, and a paused one until its held
    /// jobs are all queued.
    fn sync_pauses(&mut self) {
        let backlog_full = self.backlog_pauses_fetching();
        let holding: usize = self.held.values().map(VecDeque::len).sum();
        let bound = self.client.pause_bound();
        let over =
            holding > bound.held || (holding > 0 && self.room_seen.elapsed() >= bound.stuck_after);
        let wanted: BTreeSet<i32> = if backlog_full {
            self.owned.clone()
        } else {
            self.held
                .keys()
                .copied()
                .filter(|p| self.owned.contains(p) && (over || self.paused.contains(p)))
                .collect()
        };
        let pause: Vec<i32> = wanted.difference(&self.paused).copied().collect();
        let resume: Vec<i32> = self.paused.difference(&wanted).copied().collect();
        if !pause.is_empty() {
            match self.client.pause(&pause) {
                Ok(()) => {
                    log::debug!("kafka: partitions {pause:?} paused (backpressure)");
                    self.paused.extend(pause);
                }
                Err(e) => log::warn!("kafka: {e}"),
            }
        }
        if !resume.is_empty() {
            self.resume(&resume);
        }
    }

    /// Fetches these paused partitions again.
    fn resume(&mut self, partitions: &[i32]) {
        match self.client.resume(partitions) {
            Ok(()) => {
                log::debug!("kafka: partitions {partitions:?} resumed");
                for p in partitions {
                    self.paused.remove(p);
                }
            }
            Err(e) => log::warn!("kafka: {e}"),
        }
    }

    /// Drops the held jobs of `partitions` (handed back, or of a replaced log): they stay
    /// unfinished, and their partitions are resumed. Returns how many.
    fn drop_held(&mut self, partitions: &[i32]) -> usize {
        let dropped = partitions
            .iter()
            .filter_map(|p| self.held.remove(p))
            .map(|q| q.len())
            .sum();
        let paused: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| self.paused.contains(p))
            .collect();
        if !paused.is_empty() {
            self.resume(&paused);
        }
        dropped
    }

    /// A new epoch for a partition (a new assignment, or a new log).
    fn new_epoch(&mut self, partition: i32) {
        self.last_epoch += 1;
        self.epochs.insert(partition, self.last_epoch);
    }

    /// Whether a position belongs to its partition's current epoch.
    fn current(&self, partition: i32, epoch: u64) -> bool {
        self.epochs.get(&partition) == Some(&epoch)
    }

    /// Whether unsent dead letters hold fetching back; reports changes on `/healthz` and in the
    /// gauges. Letters keep being sent (with backoff), and polls and commits keep going
    /// meanwhile.
    fn backlog_pauses_fetching(&mut self) -> bool {
        let state = self.unsent.state();
        let paused = matches!(state, BacklogState::Paused { .. });
        self.metrics.dead_letter_backlog(self.unsent.len(), paused);
        if paused != self.fetching_paused {
            self.fetching_paused = paused;
            if paused {
                log::error!(
                    "kafka: {state} ({}); fetching resumes once half of them are sent",
                    self.dead_letters.topic()
                );
                self.health.fetching_paused(Some(format!(
                    "{state} (dead-letter topic {})",
                    self.dead_letters.topic()
                )));
            } else {
                log::info!("kafka: dead letters are being sent again; fetching resumes");
                self.health.fetching_paused(None);
            }
        }
        paused
    }

    /// A partition cannot be read from `offset`: shown on `/healthz` and in the gauge, logged
    /// once and then at most once a minute, with what to do.
    fn stalled(&mut self, partition: i32, offset: i64, cause: &str) {
        self.health.partition_stalled(partition, offset, cause);
        self.metrics.partition_stalled(partition, true);
        let topic = &self.settings.topic;
        self.stall_log.note(
            "partition stalled",
            log::Level::Error,
            format!(
                "kafka: partition {topic}/{partition} is stalled at offset {offset}: {cause}. \
                 The other partitions go on; this one is retried every few seconds. To read it, \
                 set KAFKA_CLIENT=rdkafka, or skip the batch: kafka-consumer-groups.sh \
                 --bootstrap-server <broker> --group {} --topic {topic}:{partition} \
                 --reset-offsets --to-offset <first offset after the batch> --execute \
                 (docs/operations.md, \"Troubleshooting\")",
                self.settings.group
            ),
        );
    }

    /// A stalled partition reads again.
    fn resumed(&mut self, partition: i32) {
        self.health.partition_resumed(partition);
        self.metrics.partition_stalled(partition, false);
        log::warn!(
            "kafka: partition {}/{partition} is read again",
            self.settings.topic
        );
    }

    /// The client read past markers (or aborted records) up to `to`: the commit point may
    /// follow, so a fully read transactional partition commits its end (lag 0), as the Java
    /// consumer's position does.
    fn passed(&mut self, partition: i32, to: i64) {
        if self.owned.contains(&partition) {
            self.tracker.pass(partition, to);
        }
    }

    /// Offsets `from..to` left the log before they were read: gone; say which and count them.
    fn skipped(&mut self, partition: i32, from: i64, to: i64) {
        let n = (to - from).max(0) as u64;
        if n == 0 {
            return;
        }
        self.metrics.offsets_skipped(partition, n);
        log::error!(
            "kafka: offsets {from}..{} of {}/{partition} left the log before they were read \
             (retention, DeleteRecords or a skipped batch): {n} offsets skipped; reading from {to}",
            to - 1,
            self.settings.topic
        );
    }

    /// The partition's log is a new one: let its events in flight finish (bounded), then
    /// forget every offset tracked for it, uncommitted: none of them may be committed on the
    /// new log, whose offsets start again.
    fn recreated(&mut self, partition: i32, reason: &str) {
        log::error!(
            "kafka: partition {}/{partition} is a new log ({reason}): the topic was deleted and \
             created again. Its tracking is reset and it is read from the new log's start; \
             offsets of the old log are never committed",
            self.settings.topic
        );
        self.health.partition_resumed(partition);
        self.metrics.partition_stalled(partition, false);
        // Held events of the old log are never queued: the old log is gone.
        let dropped = self.drop_held(&[partition]);
        self.drain(&[partition], dropped);
        self.tracker.forget(partition);
        // From here on, what the old log's jobs report and its letters still to be sent (they
        // are sent, under their old offsets) marks nothing of the new log.
        if self.owned.contains(&partition) {
            self.new_epoch(partition);
        }
        // Still ours, on a new log: its gauges start again.
        self.metrics.forget_partition(partition);
        self.metrics.partition_owned(partition);
    }

    /// Gives the queued and in-flight events of `partitions` up to SHUTDOWN_DRAIN_MS to
    /// finish; `dropped` of their unfinished offsets were held jobs, dropped unqueued (they
    /// will never finish).
    fn drain(&mut self, partitions: &[i32], dropped: usize) {
        let open = |t: &OffsetTracker| -> usize {
            let unfinished: usize = partitions.iter().map(|p| t.in_flight_of(*p)).sum();
            unfinished.saturating_sub(dropped)
        };
        let deadline = Instant::now() + self.settings.revoke_drain;
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
            for &p in &new {
                self.new_epoch(p);
                self.metrics.partition_owned(p);
            }
            log::info!(
                "kafka: assigned partitions {new:?} of {}; now reading {:?}",
                self.settings.topic,
                self.owned
            );
        }
        self.committed_unread.extend(partitions.iter().copied());
        self.read_committed();
    }

    /// Partitions being taken away: stop routing them, give their queued and in-flight events
    /// up to SHUTDOWN_DRAIN_MS to finish, commit their finished prefix, forget them (what is
    /// unfinished stays uncommitted, for the next owner), and hand them back.
    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.owned.remove(p);
        }
        // Held events were never queued: not routed now, read again by the next owner.
        let dropped = self.drop_held(partitions);
        let open: usize = partitions
            .iter()
            .map(|p| self.tracker.in_flight_of(*p))
            .sum::<usize>()
            .saturating_sub(dropped);
        log::info!(
            "kafka: partitions {partitions:?} of {} revoked; finishing their {open} events in \
             flight",
            self.settings.topic,
        );
        self.drain(partitions, dropped);
        let ready: Vec<(i32, i64)> = self
            .tracker
            .ready_to_commit()
            .into_iter()
            .filter(|(p, _)| partitions.contains(p))
            .collect();
        self.commit_points(&ready);
        let mut abandoned = 0;
        for &p in partitions {
            // What is still with a worker reports an epoch that is over from here on.
            abandoned += self.tracker.forget(p).len() as u64;
            self.epochs.remove(&p);
            self.metrics.forget_partition(p);
        }
        self.unsent.retain(|l| !partitions.contains(&l.partition));
        if abandoned > 0 {
            self.summary.abandoned += abandoned;
            log::warn!(
                "kafka: {abandoned} events of partitions {partitions:?} were unfinished after \
                 {:?}; handed back uncommitted (the next owner reads them again)",
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
    fn receive(&mut self, partition: i32, offset: i64, key: Option<Vec<u8>>, value: Vec<u8>) {
        let Some(&epoch) = self.epochs.get(&partition) else {
            return; // not ours
        };
        if !self.owned.contains(&partition) || !self.tracker.receive(partition, offset) {
            return;
        }
        self.metrics.consumed();
        let position = Position {
            partition,
            offset,
            epoch,
        };
        match decode(&value, self.settings.fetch_max_bytes_per_partition) {
            Ok(event) => {
                let job = Job {
                    position,
                    event,
                    key,
                    payload: value,
                    received: Instant::now(),
                };
                self.route(job);
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
                self.unsent.push(DeadLetter {
                    epoch,
                    ..DeadLetter::new(
                        bad.code(),
                        bad.to_string(),
                        &self.settings.topic,
                        partition,
                        offset,
                        key.as_deref(),
                        &value,
                    )
                });
            }
        }
    }

    /// Queues a job on its worker, unless that worker's queue is full or earlier records of
    /// its partition are held: then it is held too (its partition is paused before the next
    /// poll). Refused when stopping, or when the worker is gone (it died): either way the
    /// offset stays open, so it is never committed and the event is read again after a
    /// restart. Only the second is worth a word.
    fn route(&mut self, job: Job) {
        let partition = job.position.partition;
        if let Some(queue) = self.held.get_mut(&partition) {
            queue.push_back(job);
            return;
        }
        match self.pool.try_submit(job, &self.shutdown, Duration::ZERO) {
            Ok(()) | Err(Refused::Stopping(_)) => {}
            Err(Refused::Full(job)) => self.held.entry(partition).or_default().push_back(*job),
            Err(Refused::Gone(job)) => {
                self.summary.abandoned += 1;
                refused_by_a_gone_worker(&self.settings.topic, &job.position);
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
        let Position {
            partition,
            offset,
            epoch,
        } = done.position;
        // A job of an assignment that is over (its partition was handed back, or its log
        // replaced, before it finished): it counts, but it no longer moves the partition's
        // commit point (the offset may be ours again by now, received anew and queued behind
        // it on the same worker, or an offset of the new log).
        let stale = !self.current(partition, epoch);
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
                // Up to the moment the loop takes it: what the loop adds belongs to the event's
                // way to its commit.
                self.metrics.event_age(done.age + done.reported.elapsed());
                if !stale {
                    self.tracker.finish(partition, offset);
                }
            }
            JobResult::Failed(e) if stale => log::warn!(
                "order {} at {}/{partition}@{offset} failed after its partition was handed back \
                 or its log replaced: {e}; not dead-lettered (left to the partition's owner)",
                done.order_id,
                self.settings.topic
            ),
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
                self.unsent.push(DeadLetter {
                    epoch,
                    ..DeadLetter::new(
                        "processing_failed",
                        e.to_string(),
                        &self.settings.topic,
                        partition,
                        offset,
                        done.key.as_deref(),
                        &done.payload,
                    )
                });
            }
            JobResult::Abandoned if stale => {}
            JobResult::Abandoned => self.summary.abandoned += 1,
        }
    }

    /// Sends waiting dead letters; on failure keeps them (and their offsets open) for later.
    /// Each letter sent is progress for the watchdog; after DEAD_LETTER_SLICE the loop gets
    /// its turn (commits, shutdown, polls), and the rest go on the next time round.
    fn send_dead_letters(&mut self) {
        if self.unsent.is_empty() || Instant::now() < self.next_dead_letter_try {
            return;
        }
        let started = Instant::now();
        while let Some(letter) = self.unsent.front() {
            if started.elapsed() >= DEAD_LETTER_SLICE {
                return;
            }
            self.health.poller_beat();
            match self.dead_letters.send(letter) {
                Ok(()) => {
                    *self.summary.dead_letters.entry(letter.reason).or_default() += 1;
                    self.metrics.dead_lettered(letter.reason);
                    // A letter of a log that was replaced marks nothing of the new one.
                    if self.current(letter.partition, letter.epoch) {
                        self.tracker.finish(letter.partition, letter.offset);
                    }
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

    /// Commits and reads the partitions' ends, every KAFKA_COMMIT_INTERVAL_MS: both gauges from
    /// one view.
    fn commit_if_due(&mut self) {
        if self.last_commit.elapsed() >= self.settings.commit_interval {
            self.commit();
            self.read_ends();
            self.last_commit = Instant::now();
        }
    }

    /// Commits every partition's finished prefix.
    fn commit(&mut self) {
        let ready = self.tracker.ready_to_commit();
        if ready.is_empty() {
            // Nothing left to commit (what failed was committed since, or handed back): no
            // commit is failing.
            self.kafka_call("commit", Ok(()));
        }
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
                self.kafka_call("commit", Ok(()));
            }
            // Refused because the group is moving partitions: Kafka is there and answered, so
            // readiness stands. The points stay ready: the next commit covers those still ours.
            Err(e) if matches!(e.kind, ErrorKind::Fenced | ErrorKind::RebalanceInProgress) => {
                log::info!("kafka: {e}");
                self.kafka_call("commit", Ok(()));
            }
            Err(e) => {
                // Not ready until a commit works again: a commit can be the first call to find
                // the broker gone. The points stay ready, so the next commit tries them again.
                log::warn!("kafka: {e}");
                self.kafka_call("commit", Err(e.to_string()));
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
        self.dead_letter_log.flush();
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

/// Says that an event's worker is gone (it died): its offset stays uncommitted.
fn refused_by_a_gone_worker(topic: &str, position: &Position) {
    log::error!(
        "event at {topic}/{}@{} refused by the worker pool (its worker is gone); its offset \
         stays uncommitted, so {topic} is not committed past it and the event is read again \
         after a restart",
        position.partition,
        position.offset
    );
}
