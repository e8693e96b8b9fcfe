//! librdkafka behind the client seam (`KAFKA_CLIENT=rdkafka`), through the `rdkafka` crate's
//! blocking `BaseConsumer` and `BaseProducer` (no async runtime). Instances join one consumer
//! group with the cooperative-sticky assignor and Kafka moves partitions between them; records
//! of aborted transactions are never delivered (read_committed); every codec decodes.
//!
//! Rebalances: librdkafka announces them inside `poll`. An assignment is taken at once (from
//! the committed offsets). A revocation is only recorded there: the poller's loop gets it as
//! [`Polled::Revoked`], lets the partition's events finish, commits its prefix and then calls
//! [`ConsumerClient::release`], which hands the partition back (librdkafka's group waits for
//! that call).
//!
//! Where a partition starts is decided here, not left to librdkafka's `auto.offset.reset`: at
//! the group's committed offset; at the log's start when that offset left the log (the skipped
//! offsets are reported, [`Polled::Skipped`]) or lies past the log's end (a new log,
//! [`Polled::Recreated`]); without a commit, at `KAFKA_FALLBACK_OFFSET`, except that a
//! partition no member ever committed beside others that were is new data and starts at its
//! log's start. While reading, an offset lower than the last one read means the log was
//! replaced (the topic deleted and created again): reported as [`Polled::Recreated`]; a jump
//! forward past the log's start means offsets left the log unread: reported as
//! [`Polled::Skipped`]. A new log already written past the old position shows neither; the
//! topic's id (`topic_id`), read every few seconds, does, and the partitions are then read
//! again from the new log's start (docs/rules.md, "Delivery semantics").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use super::bounded_commit;
use super::rdkafka_ends;
use super::recreated::{check_recreated, Evidence};
use super::runtime::client::{
    ClientError, ConnectError, ConsumerClient, DeadLetterProducer, ErrorKind, PauseBound, Polled,
};
use super::runtime::dead_letter::{self, DeadLetter};
use super::start::{Start, Watermarks};
use super::topic_id::{self, TopicId};
use crate::config::{FallbackOffset, KafkaAccess, KafkaSettings, SaslMechanism};
use crate::ops::log_throttle::{LogThrottle, SUMMARY_EVERY};

/// Most records taken from librdkafka's queue in one poll: keeps commits and rebalances near.
const MAX_BATCH: usize = 512;
/// librdkafka's `queued.min.messages`: how many messages of a partition it keeps fetched ahead.
const QUEUED_MIN_MESSAGES: usize = 10_000;
/// Most error reports taken from librdkafka's queue in one poll (an outage leaves many).
const MAX_ERRORS_PER_POLL: usize = 1000;
/// How long the metadata request after error reports may take: are the brokers back?
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a commit may take before the loop goes on without it (its offsets stay open).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a metadata, offsets or commit request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the topic's id is read: a topic deleted and created again is found within this.
const TOPIC_ID_CHECK: Duration = Duration::from_secs(5);
/// The bounds of how often librdkafka reports its statistics, which carry each partition's
/// last stable offset (`rdkafka_ends`): the lag's end, read without a broker round trip.
/// Between them, as often as offsets are committed (KAFKA_COMMIT_INTERVAL_MS), so a committed
/// offset is never fresher than the end it is shown against by more than one interval (issue
/// #21).
const STATISTICS_EVERY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// How often librdkafka refreshes the topic's metadata: partitions added to the topic are
/// assigned within this (plus a rebalance).
const METADATA_REFRESH: Duration = Duration::from_secs(10);

/// The connection settings every librdkafka client here shares: brokers, TLS, SASL, logging.
pub fn client_config(brokers: &[String], access: &KafkaAccess, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers.join(","))
        .set("client.id", client_id)
        .set("security.protocol", access.security.protocol.as_str())
        // An idle connection closed by the broker is normal; librdkafka reconnects by itself.
        .set("log.connection.close", "false")
        .set_log_level(RDKafkaLogLevel::Info);
    if let Some(sasl) = &access.security.sasl {
        config
            .set(
                "sasl.mechanism",
                match sasl.mechanism {
                    SaslMechanism::Plain => "PLAIN",
                    SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                    SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
                },
            )
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    if let Some(ca) = &access.security.ssl_ca_location {
        config.set("ssl.ca.location", ca);
    }
    config
}

/// The consumer's settings: group, cooperative rebalancing, manual commits, read_committed, and
/// a bounded prefetch.
fn consumer_config(s: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(&s.brokers, &s.access, "service-courier");
    let per_partition = s.fetch_max_bytes_per_partition.max(1024);
    // One fetch response: at least the broker's default message size limit (librdkafka wants
    // fetch.max.bytes >= message.max.bytes), a few partitions' worth at most.
    let fetch_max = per_partition.max(1 << 20);
    // The prefetch queue (all partitions together): two full fetches, at least 4 MiB. Its
    // default is 64 MiB, which would set the peak RSS of a full drain.
    let queued_kbytes = (2 * fetch_max / 1024).max(4096);
    config
        // Only reached when a position leaves the log while reading (retention, or the topic
        // deleted and created again): read what the log still has, reported by `poll`. The
        // start of an assigned partition, KAFKA_FALLBACK_OFFSET included, is set explicitly
        // (`Start`).
        .set("auto.offset.reset", "earliest")
        .set("group.id", &s.group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set(
            "session.timeout.ms",
            s.membership.session_timeout.as_millis().to_string(),
        )
        // The loop polls on while it holds partitions back (it pauses them), so this bounds a
        // stuck loop, not a slow database.
        .set(
            "max.poll.interval.ms",
            s.membership.max_poll_interval.as_millis().to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            s.fetch_max_wait.as_millis().to_string(),
        )
        .set("max.partition.fetch.bytes", per_partition.to_string())
        .set("fetch.max.bytes", fetch_max.to_string())
        .set("queued.max.messages.kbytes", queued_kbytes.to_string())
        .set("queued.min.messages", QUEUED_MIN_MESSAGES.to_string())
        // With a small queue a full queue is common: fetch again soon after it drains, not 1 s
        // later (librdkafka's default).
        .set(
            "fetch.queue.backoff.ms",
            s.fetch_max_wait.as_millis().to_string(),
        )
        .set(
            "topic.metadata.refresh.interval.ms",
            METADATA_REFRESH.as_millis().to_string(),
        )
        .set(
            "statistics.interval.ms",
            s.commit_interval
                .clamp(STATISTICS_EVERY.0, STATISTICS_EVERY.1)
                .as_millis()
                .to_string(),
        );
    if let Some(id) = &s.membership.instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// librdkafka's log lines and errors, at levels that suit this service (its "errors" are mostly
/// connection failures it retries by itself, so they are warnings here), and throttled: during
/// a broker outage it reports every failed connection attempt (973 `AllBrokersDown` errors in
/// 70 s were seen, up to 230 a second). Each kind (an error code, a log facility) logs its first
/// line in full, then at most one summary a minute (`ops::log_throttle`).
#[derive(Debug)]
struct LibrdkafkaLog(Mutex<LogThrottle>);

impl Default for LibrdkafkaLog {
    fn default() -> Self {
        Self(Mutex::new(LogThrottle::new(
            "librdkafka lines",
            SUMMARY_EVERY,
        )))
    }
}

impl LibrdkafkaLog {
    fn line(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let level = match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                log::Level::Error
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => log::Level::Warn,
            RDKafkaLogLevel::Notice => log::Level::Info,
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                // Shown only with LOG_LEVEL=debug, when every line is wanted.
                log::debug!(target: "librdkafka", "librdkafka: {facility} {message}");
                return;
            }
        };
        self.note(facility, level, format!("librdkafka: {facility} {message}"));
    }

    fn error(&self, error: &KafkaError, reason: &str) {
        let kind = match error.rdkafka_error_code() {
            Some(code) => format!("{code:?}"),
            None => "error".to_owned(),
        };
        self.note(
            &kind,
            log::Level::Warn,
            format!("librdkafka: {error}: {reason}"),
        );
    }

    fn note(&self, kind: &str, level: log::Level, line: String) {
        let mut throttle = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        throttle.note(kind, level, line);
    }
}

/// A group change seen inside `poll`, for the loop.
#[derive(Debug)]
enum Change {
    /// Partitions taken, with where each starts (empty when it could not be decided: then
    /// librdkafka starts them at the committed offset, else at the log's start).
    Assigned(Vec<i32>, Vec<(i32, Start)>),
    Revoked(Vec<i32>),
}

/// The consumer's context: takes assignments, records revocations for the loop, keeps the
/// latest statistics of the order topic's partitions.
struct GroupContext {
    /// Where partitions without a committed offset start (KAFKA_FALLBACK_OFFSET).
    fallback: FallbackOffset,
    /// The order topic, whose partitions' statistics are kept.
    topic: String,
    /// The partitions' ends from statistics not yet taken by `poll`.
    ends: Mutex<Option<BTreeMap<i32, i64>>>,
    /// Changes since the loop last looked.
    changes: Mutex<Vec<Change>>,
    /// Closing: revocations are handed back at once (the final commit is done).
    closing: std::sync::atomic::AtomicBool,
    /// librdkafka's lines, throttled.
    log: LibrdkafkaLog,
}

impl GroupContext {
    fn new(fallback: FallbackOffset, topic: String) -> Self {
        Self {
            fallback,
            topic,
            ends: Mutex::default(),
            changes: Mutex::default(),
            closing: Default::default(),
            log: LibrdkafkaLog::default(),
        }
    }

    /// Where each partition of `tpl` starts: one metadata request, one committed-offsets
    /// request for every partition of the topic, one watermarks request per assigned partition.
    fn starts(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Result<Vec<(i32, Start)>, KafkaError> {
        let Some(topic) = tpl.elements().first().map(|e| e.topic().to_owned()) else {
            return Ok(Vec::new());
        };
        let metadata = consumer.fetch_metadata(Some(&topic), REQUEST_TIMEOUT)?;
        let mut all: std::collections::BTreeSet<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        all.extend(partitions_of(tpl));
        let mut everything = TopicPartitionList::new();
        for p in &all {
            everything.add_partition(&topic, *p);
        }
        let committed: HashMap<i32, i64> =
            offsets_of(&consumer.committed_offsets(everything, REQUEST_TIMEOUT)?).collect();
        let group_committed = !committed.is_empty();
        let mut starts = Vec::new();
        for p in partitions_of(tpl) {
            let (log_start, high) = consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT)?;
            let start = Start::decide(
                committed.get(&p).copied(),
                Watermarks { log_start, high },
                group_committed,
                self.fallback,
            );
            starts.push((p, start));
        }
        Ok(starts)
    }

    fn push(&self, change: Change) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
    }

    fn take(&self) -> Vec<Change> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The partitions' ends from statistics that arrived since the last call.
    fn take_ends(&self) -> Option<BTreeMap<i32, i64>> {
        self.ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.line(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }

    /// Served inside `poll`, in queue order with the records: keeps the order topic's part.
    fn stats_raw(&self, statistics: &[u8]) {
        match rdkafka_ends::parse(statistics, &self.topic) {
            Ok(ends) => {
                *self.ends.lock().unwrap_or_else(PoisonError::into_inner) = Some(ends);
            }
            Err(e) => self.log.note("statistics", log::Level::Warn, e),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    partitions.sort_unstable();
    partitions
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Each partition starts where `Start` says; if that cannot be found out now,
                // librdkafka starts it at the committed offset, else at the log's start
                // (auto.offset.reset): nothing is skipped either way.
                let starts = match self.starts(consumer, tpl) {
                    Ok(starts) => starts,
                    Err(e) => {
                        log::warn!(
                            "kafka: cannot read the committed offsets and watermarks of \
                             assigned partitions {:?} ({e}); they start at the committed \
                             offset, or at the log's start without one",
                            partitions_of(tpl)
                        );
                        Vec::new()
                    }
                };
                if let Some(topic) = tpl.elements().first().map(|e| e.topic().to_owned()) {
                    for (p, start) in &starts {
                        let offset = Offset::Offset(start.offset());
                        if let Err(e) = tpl.set_partition_offset(&topic, *p, offset) {
                            log::warn!("kafka: start of partition {p}: {e}");
                        }
                    }
                }
                let taken = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match taken {
                    Ok(()) => self.push(Change::Assigned(partitions_of(tpl), starts)),
                    Err(e) => log::error!("kafka: cannot take assigned partitions: {e}"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = partitions_of(tpl);
                if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(e) = hand_back(consumer, tpl) {
                        log::warn!("kafka: handing back {partitions:?} while closing: {e}");
                    }
                } else {
                    if consumer.assignment_lost() {
                        log::warn!(
                            "kafka: partitions {partitions:?} were lost (this member was \
                             fenced out of the group, or the topic is gone); their events in \
                             flight stay uncommitted"
                        );
                    }
                    self.push(Change::Revoked(partitions));
                }
            }
            other => log::warn!("kafka: rebalance error: {}", RDKafkaErrorCode::from(other)),
        }
    }
}

/// Hands partitions back: incrementally under the cooperative protocol, all at once otherwise.
fn hand_back(
    consumer: &BaseConsumer<GroupContext>,
    partitions: &TopicPartitionList,
) -> Result<(), KafkaError> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
        _ => consumer.unassign(),
    }
}

/// A group member reading the order topic.
pub struct RdkafkaConsumer {
    settings: KafkaSettings,
    consumer: Option<BaseConsumer<GroupContext>>,
    /// Subscribed: the topic exists and the group is joined (or being joined).
    subscribed: bool,
    /// A fatal error (e.g. another member took this KAFKA_GROUP_INSTANCE_ID): the consumer is
    /// unusable; once its partitions are handed back it is dropped and the loop joins again.
    fenced: bool,
    /// The partitions announced to the loop as assigned and not yet as revoked.
    announced: std::collections::BTreeSet<i32>,
    /// The offset expected next on each partition read: a record below it means a new log, one
    /// above it may mean offsets that left the log unread.
    next: HashMap<i32, i64>,
    /// Each partition's last stable offset, from the latest statistics: the lag's end.
    ends: BTreeMap<i32, i64>,
    /// The topic's id when last read, and when that was.
    topic_id: Option<TopicId>,
    topic_id_read: Option<Instant>,
    /// Why the latest read of the topic's id failed, while it does.
    topic_id_failure: Option<String>,
}

impl RdkafkaConsumer {
    /// A member that joins on the loop's first call to `connect`.
    pub fn new(settings: KafkaSettings) -> Self {
        Self {
            settings,
            consumer: None,
            subscribed: false,
            fenced: false,
            announced: Default::default(),
            next: HashMap::new(),
            ends: BTreeMap::new(),
            topic_id: None,
            topic_id_read: None,
            topic_id_failure: None,
        }
    }

    /// Leaves the group and drops the consumer; the loop connects again.
    fn drop_consumer(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            consumer
                .context()
                .closing
                .store(true, std::sync::atomic::Ordering::SeqCst);
            drop(consumer);
        }
        self.subscribed = false;
        self.fenced = false;
        self.next.clear();
        self.ends.clear();
    }

    /// Reads the topic's id when due. A new id means the topic was deleted and created again:
    /// every partition owned is reported as a new log and read again from its start (events of
    /// the new log already read come again; the handlers are idempotent).
    fn check_topic_id(&mut self) -> Vec<Polled> {
        if self
            .topic_id_read
            .is_some_and(|at| at.elapsed() < TOPIC_ID_CHECK)
        {
            return Vec::new();
        }
        self.topic_id_read = Some(Instant::now());
        let Some(consumer) = self.consumer.as_ref() else {
            return Vec::new();
        };
        let topic = &self.settings.topic;
        let now = match topic_id::read(consumer.client(), topic, Duration::from_secs(2)) {
            Ok(id) => id,
            Err(e) => {
                let why = format!("the id of topic {topic} is unavailable: {e}");
                log::debug!("kafka: {why}");
                self.topic_id_failure = Some(why);
                return Vec::new();
            }
        };
        self.topic_id_failure = None;
        let Some(before) = self.topic_id.replace(now) else {
            return Vec::new();
        };
        let Some(why) = check_recreated(&Evidence {
            topic_id: Some((before, now)),
            ..Evidence::default()
        }) else {
            return Vec::new();
        };
        let mut reports = Vec::new();
        for &partition in &self.announced {
            self.next.remove(&partition);
            if let Err(e) = consumer.seek(topic, partition, Offset::Beginning, REQUEST_TIMEOUT) {
                log::warn!("kafka: cannot move {topic}/{partition} to its new log's start: {e}");
            }
            reports.push(Polled::Recreated {
                partition,
                reason: why.to_string(),
            });
        }
        reports
    }

    /// Transaction markers passed after the last record handed out, as [`Polled::Passed`].
    /// librdkafka serves a marker inside its poll without handing it out and moves the
    /// consumer's position past it (`rd_kafka_position`: the application's position, which a
    /// control message moves only once the records before it were handed out). Asked when a
    /// poll brought no record, so a fully read transactional partition is committed past its
    /// trailing marker and shows lag 0 (docs/operations.md, "Lag").
    fn passed_markers(&mut self) -> Vec<Polled> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Vec::new();
        };
        let Ok(positions) = consumer.position() else {
            return Vec::new();
        };
        let mut passed = Vec::new();
        for e in positions.elements_for_topic(&self.settings.topic) {
            let (partition, Offset::Offset(to)) = (e.partition(), e.offset()) else {
                continue;
            };
            if let Some(next) = self.next.get_mut(&partition).filter(|next| to > **next) {
                *next = to;
                passed.push(Polled::Passed { partition, to });
            }
        }
        passed
    }

    /// The reports a record at `offset` of `partition` calls for before it is handed on: the
    /// log was replaced (the offset went back), or offsets left it unread (the offset jumped
    /// past the log's start). A jump the log's start does not explain is a transaction marker,
    /// an aborted transaction or compaction: nothing is missing.
    fn check_position(
        consumer: &BaseConsumer<GroupContext>,
        topic: &str,
        next: Option<i64>,
        partition: i32,
        offset: i64,
    ) -> Option<Polled> {
        let expected = next?;
        if let Some(why) = check_recreated(&Evidence {
            read: Some((offset, expected)),
            ..Evidence::default()
        }) {
            return Some(Polled::Recreated {
                partition,
                reason: why.to_string(),
            });
        }
        if offset == expected {
            return None;
        }
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(2)) {
            Ok((log_start, _)) if log_start > expected => Some(Polled::Skipped {
                partition,
                from: expected,
                to: log_start.min(offset),
            }),
            Ok(_) => None,
            Err(e) => {
                log::warn!(
                    "kafka: {topic}/{partition} jumped from offset {expected} to {offset}; its \
                     log start is unavailable ({e}), so whether offsets left the log unread is \
                     unknown"
                );
                None
            }
        }
    }

    fn consumer(&self) -> Result<&BaseConsumer<GroupContext>, ClientError> {
        self.consumer
            .as_ref()
            .ok_or_else(|| ClientError::retriable("not connected"))
    }

    /// These partitions of the topic, as librdkafka lists them.
    fn partition_list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.settings.topic, *p);
        }
        tpl
    }

    fn offsets(&self, points: &[(i32, i64)]) -> Result<TopicPartitionList, ClientError> {
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in points {
            tpl.add_partition_offset(&self.settings.topic, partition, Offset::Offset(offset))
                .map_err(|e| client_error(&e, format!("offset {offset} of {partition}: {e}")))?;
        }
        Ok(tpl)
    }
}

impl ConsumerClient for RdkafkaConsumer {
    fn is_connected(&self) -> bool {
        self.subscribed
    }

    /// Creates the consumer once, waits for the topic to exist, subscribes.
    fn connect(&mut self) -> Result<(), ConnectError> {
        if self.consumer.is_none() {
            let consumer: BaseConsumer<GroupContext> = consumer_config(&self.settings)
                .create_with_context(GroupContext::new(
                    self.settings.fallback_offset,
                    self.settings.topic.clone(),
                ))
                .map_err(|e| {
                    ConnectError::Misconfigured(format!("cannot create the rdkafka consumer: {e}"))
                })?;
            self.consumer = Some(consumer);
        }
        let s = &self.settings;
        let consumer = self
            .consumer
            .as_ref()
            .ok_or_else(|| ConnectError::Retry("the consumer is gone".into()))?;
        let metadata = consumer
            .fetch_metadata(Some(&s.topic), REQUEST_TIMEOUT)
            .map_err(|e| {
                ConnectError::Retry(format!("cannot load metadata from {:?}: {e}", s.brokers))
            })?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == s.topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(ConnectError::Retry(format!(
                "topic {} does not exist (yet); waiting for it (create it with e.g. \
                 scripts/kafka.sh topic {} 6)",
                s.topic, s.topic
            )));
        }
        consumer
            .subscribe(&[&s.topic])
            .map_err(|e| ConnectError::Retry(format!("cannot subscribe to {}: {e}", s.topic)))?;
        log::info!(
            "kafka: joined group {} for {} with librdkafka {} (cooperative-sticky{})",
            s.group,
            s.topic,
            rdkafka::util::get_rdkafka_version().1,
            s.membership
                .instance_id
                .as_deref()
                .map(|id| format!(", static member {id}"))
                .unwrap_or_default()
        );
        self.subscribed = true;
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Polled>, ClientError> {
        let mut polled = self.check_topic_id();
        let consumer = self
            .consumer
            .as_ref()
            .ok_or_else(|| ClientError::retriable("not connected"))?;
        let mut fatal = false;
        let mut revoked = false;
        let mut errors = 0;
        let mut last_error = None;

        let mut wait = timeout;
        while polled.len() < MAX_BATCH {
            let next = consumer.poll(wait);
            wait = Duration::ZERO;
            // Statistics and group changes were served before the record this poll returned.
            let ends = consumer.context().take_ends();
            let changes = consumer.context().take();
            let changed = !changes.is_empty();
            for change in changes {
                match change {
                    Change::Assigned(p, starts) => {
                        self.announced.extend(p.iter().copied());
                        for partition in &p {
                            self.next.remove(partition);
                        }
                        polled.push(Polled::Assigned(p));
                        for (partition, start) in starts {
                            self.next.insert(partition, start.offset());
                            if let Start::Uncommitted(offset) = start {
                                log::info!(
                                    "kafka: {}/{partition} has no committed offset; reading \
                                     from offset {offset}",
                                    self.settings.topic
                                );
                            }
                            polled.extend(start.report(partition));
                        }
                    }
                    Change::Revoked(p) => {
                        for partition in &p {
                            self.announced.remove(partition);
                            self.next.remove(partition);
                            self.ends.remove(partition);
                        }
                        revoked = true;
                        polled.push(Polled::Revoked(p));
                    }
                }
            }
            for (partition, stable) in ends.into_iter().flatten() {
                self.ends.insert(partition, stable);
            }
            match next {
                Some(Ok(m)) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    polled.extend(Self::check_position(
                        consumer,
                        &self.settings.topic,
                        self.next.get(&partition).copied(),
                        partition,
                        offset,
                    ));
                    self.next.insert(partition, offset + 1);
                    polled.push(Polled::Record {
                        partition,
                        offset,
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    // Every partition is lost: the loop forgets them (their unfinished events
                    // stay uncommitted), and `release` then drops this consumer.
                    log::error!(
                        "kafka: fatal consumer error ({code}); leaving the group and joining \
                         again"
                    );
                    fatal = true;
                    break;
                }
                // librdkafka queues one of these per failed connection attempt and recovers
                // by itself: drain them here, so that a backlog left by an outage never delays
                // reading (one per poll, each followed by the loop's backoff, took minutes).
                Some(Err(e)) => {
                    errors += 1;
                    last_error = Some(e);
                    if errors >= MAX_ERRORS_PER_POLL {
                        break;
                    }
                }
                None if !changed => break,
                None => {}
            }
            // A revocation waits for the loop: hand it over now.
            if revoked {
                break;
            }
        }
        if let (Some(e), true) = (last_error, polled.is_empty()) {
            // Old news or a broker that is down? One metadata request tells: only when no
            // broker answers is it the loop's business (it backs off and /readyz says so).
            if let Err(now) = consumer.fetch_metadata(Some(&self.settings.topic), PROBE_TIMEOUT) {
                return Err(client_error(
                    &now,
                    format!(
                        "consuming {}: {e}; no broker answers ({now})",
                        self.settings.topic
                    ),
                ));
            }
            log::debug!(
                "kafka: {errors} errors reported by librdkafka since the last poll (the last: \
                 {e}); the brokers answer again"
            );
        }
        if !fatal && !polled.iter().any(|p| matches!(p, Polled::Record { .. })) {
            polled.extend(self.passed_markers());
        }
        if fatal {
            self.next.clear();
            let lost: Vec<i32> = std::mem::take(&mut self.announced).into_iter().collect();
            self.fenced = true;
            if lost.is_empty() {
                self.drop_consumer();
            } else {
                polled.push(Polled::Revoked(lost));
            }
        }
        Ok(polled)
    }

    /// librdkafka's pause: the partition's fetched and not yet returned messages are dropped
    /// (a version barrier), and resume fetches again from the offset after the last one
    /// returned by a poll.
    fn pause(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        let tpl = self.partition_list(partitions);
        self.consumer()?
            .pause(&tpl)
            .map_err(|e| client_error(&e, format!("cannot pause partitions {partitions:?}: {e}")))
    }

    fn resume(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        let tpl = self.partition_list(partitions);
        self.consumer()?
            .resume(&tpl)
            .map_err(|e| client_error(&e, format!("cannot resume partitions {partitions:?}: {e}")))
    }

    /// librdkafka drops a paused partition's prefetched messages (up to
    /// [`QUEUED_MIN_MESSAGES`]) and fetches them again on resume: the loop holds twice that
    /// before pausing, so a pause repeats at most half the work it spares (pausing as soon as
    /// a record was held took a one-partition drain from 31,000 to 3,000 events/s), unless the
    /// workers take nothing for a second.
    fn pause_bound(&self) -> PauseBound {
        PauseBound {
            held: 2 * QUEUED_MIN_MESSAGES,
            stuck_after: Duration::from_secs(1),
        }
    }

    /// librdkafka refreshes metadata and reconnects by itself and reports failures through
    /// `poll`; the one read of its own here is the topic's id.
    fn background_failure(&self) -> Option<ClientError> {
        self.topic_id_failure.clone().map(ClientError::retriable)
    }

    /// Synchronous, and bounded by COMMIT_TIMEOUT (librdkafka alone would wait for an
    /// unreachable coordinator as long as it takes); not tried at all for partitions this
    /// member lost (the group refuses the commit).
    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), ClientError> {
        let tpl = self.offsets(offsets)?;
        let consumer = self.consumer()?;
        let topic = &self.settings.topic;
        if consumer.assignment_lost() {
            return Err(ClientError::new(
                ErrorKind::Fenced,
                format!("{topic} offsets not committed: this member lost its partitions"),
            ));
        }
        bounded_commit::commit(consumer.client(), &tpl, COMMIT_TIMEOUT).map_err(|e| {
            ClientError::new(
                e.code.map_or(ErrorKind::Retriable, kind_of_code),
                format!("commit of {topic} offsets failed: {e}"),
            )
        })
    }

    fn release(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        if self.fenced {
            self.drop_consumer();
            return Ok(());
        }
        let tpl = self.partition_list(partitions);
        hand_back(self.consumer()?, &tpl).map_err(|e| client_error(&e, e.to_string()))
    }

    /// The last stable offsets of the latest statistics (read_committed: an open transaction
    /// is not lag yet): no broker round trip, so the loop reads them with every commit.
    fn high_watermarks(&mut self) -> Result<Vec<(i32, i64)>, ClientError> {
        self.consumer()?;
        Ok(self
            .ends
            .iter()
            .filter(|(p, _)| self.announced.contains(p))
            .map(|(p, end)| (*p, *end))
            .collect())
    }

    fn committed_offsets(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, ClientError> {
        let tpl = self.partition_list(partitions);
        let consumer = self.consumer()?;
        let committed = consumer
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .map_err(|e| client_error(&e, format!("committed offsets unavailable: {e}")))?;
        Ok(offsets_of(&committed).collect())
    }

    /// Leaves the group: what is still assigned is handed back at once (the final commit is
    /// done), then the consumer closes.
    fn close(&mut self) {
        self.drop_consumer();
    }
}

/// The producer's context: remembers the outcome of the last deliveries for `send`.
#[derive(Default)]
pub struct DeliveryContext {
    failures: Mutex<Vec<KafkaError>>,
    /// librdkafka's lines, throttled.
    log: LibrdkafkaLog,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.line(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e.clone());
        }
    }
}

/// A blocking producer: `send` queues, `flush` waits for every delivery report.
pub struct RdkafkaProducer {
    producer: BaseProducer<DeliveryContext>,
    /// How long a record may take to be acknowledged.
    timeout: Duration,
}

impl RdkafkaProducer {
    /// A producer with `acks` (`all` or `1`), giving up on a message after `timeout`.
    pub fn new(
        brokers: &[String],
        access: &KafkaAccess,
        client_id: &str,
        acks: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::with_config(client_config(brokers, access, client_id), acks, timeout)
    }

    /// A producer for dead letters: whole messages up to what a broker accepts in one request
    /// (its `socket.request.max.bytes` default), so only the topic's own limit refuses one.
    fn for_dead_letters(
        brokers: &[String],
        access: &KafkaAccess,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut config = client_config(brokers, access, "service-courier-dlq");
        config.set("message.max.bytes", DEAD_LETTER_MAX_BYTES.to_string());
        // A letter whose acknowledgement was lost and that is sent again is written once.
        config.set("enable.idempotence", "true");
        Self::with_config(config, "all", timeout)
    }

    fn with_config(
        mut config: ClientConfig,
        acks: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let millis = timeout.as_millis().to_string();
        let producer = config
            .set("acks", acks)
            .set("message.timeout.ms", &millis)
            // A missing topic fails the send within the timeout too (not after librdkafka's
            // default 30 s wait for it to appear).
            .set("topic.metadata.propagation.max.ms", &millis)
            .set("linger.ms", "5")
            .create_with_context(DeliveryContext::default())
            .map_err(|e| client_error(&e, format!("cannot create the rdkafka producer: {e}")))?;
        Ok(Self { producer, timeout })
    }

    /// Fails at once when `topic` does not exist (a send would wait out its whole timeout).
    pub fn check_topic(&self, topic: &str) -> Result<(), ClientError> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| client_error(&e, format!("metadata of {topic}: {e}")))?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(ClientError::new(
                ErrorKind::UnknownTopicOrPartition,
                format!("topic {topic} does not exist"),
            )),
        }
    }

    /// Waits until every record sent is acknowledged or failed: each is, within its timeout;
    /// the margin covers the delivery reports' way back. Not `flush` with that timeout: the
    /// `rdkafka` crate then serves delivery reports in polls that last 100 ms whatever comes,
    /// which made every single-record send (a dead letter) take over 100 ms. A flush with no
    /// wait sends what lingers at once; short polls take the reports as they come.
    fn wait_delivered(&self, topic: &str) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.timeout + Duration::from_secs(5);
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    self.producer.poll(Duration::from_millis(1));
                }
                Err(e) => return Err(client_error(&e, format!("producing to {topic}: {e}"))),
            }
        }
    }

    /// Sends `(key, value)` records to `topic` and waits until each is acknowledged (or failed).
    pub fn send_all(
        &self,
        topic: &str,
        records: &[(Option<&[u8]>, &[u8])],
    ) -> Result<(), ClientError> {
        for (key, value) in records {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(*value);
            if let Some(k) = key {
                record = record.key(*k);
            }
            self.enqueue(record)
                .map_err(|e| client_error(&e, format!("producing to {topic}: {e}")))?;
        }
        self.settle(topic)?
            .map_err(|failures| failed(topic, &failures, records.len()))
    }

    /// Sends one dead letter to `topic` and waits until it is acknowledged: with its value, or
    /// (`by_reference`) without it. `Err(None)` carries no error: the letter is over the size
    /// limit (the client's or the broker's).
    fn send_letter(
        &self,
        topic: &str,
        letter: &DeadLetter,
        by_reference: bool,
    ) -> Result<(), Option<ClientError>> {
        let headers = if by_reference {
            letter.headers_by_reference()
        } else {
            letter.headers()
        };
        let headers = headers.iter().fold(
            OwnedHeaders::new_with_capacity(headers.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            },
        );
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if !by_reference {
            record = record.payload(letter.value.as_slice());
        }
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        match self.enqueue(record) {
            Err(e) if too_large(&e) => return Err(None),
            Err(e) => return Err(Some(client_error(&e, format!("producing to {topic}: {e}")))),
            Ok(()) => {}
        }
        match self.settle(topic).map_err(Some)? {
            Ok(()) => Ok(()),
            Err(failures) if failures.iter().any(too_large) => Err(None),
            Err(failures) => Err(Some(failed(topic, &failures, 1))),
        }
    }

    /// Queues one record, serving delivery reports while librdkafka's queue is full.
    fn enqueue<'a>(&self, record: BaseRecord<'a, [u8], [u8]>) -> Result<(), KafkaError> {
        let mut pending = record;
        loop {
            match self.producer.send(pending) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(10));
                    pending = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits for every queued record's report (`Err` when they did not all come); the inner
    /// `Err` holds the failed records' errors.
    fn settle(&self, topic: &str) -> Result<Result<(), Vec<KafkaError>>, ClientError> {
        self.wait_delivered(topic)?;
        let failures = std::mem::take(
            &mut *self
                .producer
                .context()
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        Ok(if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        })
    }
}

/// Whether a produce failed because the record is over the size limit (librdkafka's
/// `message.max.bytes`, or the topic's `max.message.bytes` on the broker).
fn too_large(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// A produce of `sent` records of which some failed, in words.
fn failed(topic: &str, failures: &[KafkaError], sent: usize) -> ClientError {
    match failures.first() {
        Some(e) => client_error(
            e,
            format!(
                "producing to {topic}: {} of {sent} records failed: {e}",
                failures.len()
            ),
        ),
        None => ClientError::retriable(format!("producing to {topic}: no delivery report")),
    }
}

/// The largest dead letter librdkafka itself lets through: a broker's default
/// `socket.request.max.bytes` (100 MiB), above every event the consumers read.
const DEAD_LETTER_MAX_BYTES: usize = 100 << 20;

/// The dead-letter topic through librdkafka (acks=all), whichever client consumes: the `kafka`
/// crate writes message format v0/v1, which has no headers (docs/operations.md, "Dead
/// letters").
pub struct RdkafkaDeadLetters {
    /// The dead-letter topic.
    topic: String,
    /// Where to connect.
    brokers: Vec<String>,
    /// The security settings (the same as the consumer's).
    access: KafkaAccess,
    /// Built on the first letter; dropped by nothing (librdkafka reconnects by itself).
    producer: Option<RdkafkaProducer>,
    /// The topic was seen to exist since the last failure.
    topic_seen: bool,
}

impl RdkafkaDeadLetters {
    /// A producer for `topic`; connects on first use.
    pub fn new(brokers: Vec<String>, access: KafkaAccess, topic: String) -> Self {
        Self {
            topic,
            brokers,
            access,
            producer: None,
            topic_seen: false,
        }
    }
}

impl DeadLetterProducer for RdkafkaDeadLetters {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn send(&mut self, letter: &DeadLetter) -> Result<(), ClientError> {
        let producer = match self.producer.as_ref() {
            Some(p) => p,
            None => self.producer.insert(RdkafkaProducer::for_dead_letters(
                &self.brokers,
                &self.access,
                Duration::from_secs(5),
            )?),
        };
        // After a failure (a missing topic, typically) ask first: the poller waits for this.
        if !self.topic_seen {
            producer.check_topic(&self.topic)?;
            self.topic_seen = true;
        }
        let sent = match producer.send_letter(&self.topic, letter, false) {
            Err(None) => {
                log::warn!(
                    "the dead letter of {}/{}@{} ({} bytes) is over {}'s size limit: sent \
                     without its value ({} = {}); the value stays at its source position",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    letter.value.len(),
                    self.topic,
                    dead_letter::VALUE,
                    dead_letter::BY_REFERENCE,
                );
                producer.send_letter(&self.topic, letter, true)
            }
            other => other,
        }
        .map_err(|e| {
            e.unwrap_or_else(|| {
                ClientError::retriable(format!("producing to {}: over the size limit", self.topic))
            })
        });
        self.topic_seen = sent.is_ok();
        sent
    }
}

/// The real offsets in a partition list, as (partition, offset): the group's committed
/// offsets, without the partitions it holds none for.
pub fn offsets_of(list: &TopicPartitionList) -> impl Iterator<Item = (i32, i64)> + '_ {
    list.elements()
        .into_iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
            _ => None,
        })
}

/// What kind of failure a librdkafka error code is (`ClientError`'s kinds mean the same for
/// both clients).
pub fn kind_of_code(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::UnknownMemberId
        | C::IllegalGeneration
        | C::FencedInstanceId
        | C::FencedMemberEpoch
        | C::StaleMemberEpoch
        | C::AssignmentLost
        | C::Fenced => ErrorKind::Fenced,
        C::RebalanceInProgress => ErrorKind::RebalanceInProgress,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            ErrorKind::UnknownTopicOrPartition
        }
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed => ErrorKind::Auth,
        C::Fatal => ErrorKind::Fatal,
        _ => ErrorKind::Retriable,
    }
}

/// A `ClientError` of the kind `e`'s code says (retriable when it has none).
fn client_error(e: &KafkaError, message: String) -> ClientError {
    ClientError::new(
        e.rdkafka_error_code()
            .map_or(ErrorKind::Retriable, kind_of_code),
        message,
    )
}

/// The broker check for librdkafka: one metadata request (librdkafka negotiates protocol
/// versions by itself). `Err` carries why no broker answered.
pub fn check_metadata(brokers: &[String], access: &KafkaAccess) -> Result<usize, String> {
    let consumer: BaseConsumer = client_config(brokers, access, "service-courier-check")
        .create()
        .map_err(|e| format!("cannot create the rdkafka client: {e}"))?;
    consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map(|m| m.brokers().len())
        .map_err(|e| format!("{brokers:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_codes_map_to_the_kinds_the_loop_decides_on() {
        use RDKafkaErrorCode as C;
        for (code, kind) in [
            (C::RebalanceInProgress, ErrorKind::RebalanceInProgress),
            (C::IllegalGeneration, ErrorKind::Fenced),
            (C::UnknownMemberId, ErrorKind::Fenced),
            (C::FencedInstanceId, ErrorKind::Fenced),
            (C::AssignmentLost, ErrorKind::Fenced),
            (
                C::UnknownTopicOrPartition,
                ErrorKind::UnknownTopicOrPartition,
            ),
            (C::UnknownTopic, ErrorKind::UnknownTopicOrPartition),
            (C::SaslAuthenticationFailed, ErrorKind::Auth),
            (C::TopicAuthorizationFailed, ErrorKind::Auth),
            (C::GroupAuthorizationFailed, ErrorKind::Auth),
            (C::Fatal, ErrorKind::Fatal),
            (C::AllBrokersDown, ErrorKind::Retriable),
            (C::RequestTimedOut, ErrorKind::Retriable),
            (C::NotCoordinator, ErrorKind::Retriable),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code:?}");
        }
        let e = client_error(
            &KafkaError::ConsumerCommit(C::RebalanceInProgress),
            "commit".into(),
        );
        assert_eq!(e.kind, ErrorKind::RebalanceInProgress);
        assert!(e.to_string().contains("next owner"), "{e}");
        let none = client_error(&KafkaError::NoMessageReceived, "poll".into());
        assert_eq!(none.kind, ErrorKind::Retriable);
    }
}
