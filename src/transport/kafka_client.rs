//! The `kafka` crate behind the client seam (`KAFKA_CLIENT=kafka`, the default). The crate has
//! no group membership: this instance reads a static share of the partitions (all of them,
//! KAFKA_PARTITIONS, or INSTANCE_INDEX of INSTANCE_COUNT) and uses the group only to store
//! offsets.
//!
//! It keeps each partition's next offset itself and fetches with the crate's low-level
//! `KafkaClient` (the crate's `Consumer` fails every partition when one cannot be decoded, and
//! drops messages silently: see `kafka_edge`). So it can:
//! - isolate a partition holding a batch the crate cannot decode (lz4, zstd): stall it, report
//!   it ([`Polled::Stalled`]), keep the others flowing, retry it every
//!   [`STALL_RETRY_EVERY`], and resume when it reads again or the group's committed offset was
//!   moved past it (docs/operations.md, "Troubleshooting");
//! - fill a jump in offsets (the crate drops uncompressed messages in front of a gzip/snappy
//!   wrapper) with `kafka_edge::gap`, and stall rather than skip what it cannot explain;
//! - refresh the metadata every [`METADATA_EVERY`] and start partitions added to the topic;
//! - read the watermarks every [`WATERMARKS_EVERY`] (lag gauges, also while a partition is
//!   stalled) and find a topic deleted and created again ([`Polled::Recreated`]);
//! - say which offsets left the log before they were read ([`Polled::Skipped`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka::client::{CommitOffset, FetchOffset, FetchPartition, GroupOffsetStorage, KafkaClient};
use kafka::error::KafkaCode;

use super::kafka_edge::gap::fill_gap;
use super::kafka_edge::probe::{probe_partitions, ProbeState, UNDECODABLE_ADVICE};
use super::kafka_edge::read::{fetch_partition, owned_from, OwnedMessage};
use super::recreated::{check_recreated, vanished_partitions, Evidence, Seen};
use super::runtime::client::{
    ClientError, ConnectError, ConsumerClient, ErrorKind, PauseBound, Polled,
};
use super::start::{check_position, Resume, Start, Watermarks};
use crate::config::KafkaSettings;

/// How often the topic's partitions are read again (new partitions start within this).
pub const METADATA_EVERY: Duration = Duration::from_secs(10);
/// How often the watermarks (lag, recreated topics) are read.
pub const WATERMARKS_EVERY: Duration = Duration::from_secs(5);
/// How often a stalled partition is tried again.
pub const STALL_RETRY_EVERY: Duration = Duration::from_secs(30);
/// How often the watermarks are read while a partition's log is in doubt (its fetch failed).
const SUSPECT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a partition is not fetched for now.
#[derive(Debug, Clone)]
struct Stall {
    offset: i64,
    retry_at: Instant,
}

/// What this client knows of one partition of its share.
#[derive(Debug, Clone, Default)]
struct Tracked {
    /// The next offset to fetch: every offset below it was delivered to the loop (or left the
    /// log and was reported skipped).
    next: i64,
    highest_received: Option<i64>,
    /// The watermarks read last time.
    marks: Option<Watermarks>,
    /// The high watermark last seen (by a fetch or a watermark read), for the lag gauge.
    high: Option<i64>,
    /// The offset the group held when the partition was started, or the last this process
    /// committed.
    committed: Option<i64>,
    stall: Option<Stall>,
    /// Its fetch failed in a way a deleted topic causes: not fetched nor committed until its
    /// watermarks and the group's offset have been checked.
    suspect: bool,
}

/// A consumer of the static share with positions of its own.
pub struct KafkaCrateConsumer {
    settings: KafkaSettings,
    client: Option<KafkaClient>,
    /// The partitions of the share started so far.
    share: BTreeMap<i32, Tracked>,
    /// The topic's partitions at the last metadata read.
    known: Vec<i32>,
    /// Ownership changes and records to hand out with the next poll.
    pending: Vec<Polled>,
    /// Partitions the loop paused (backpressure): left out of fetches until resumed.
    paused: BTreeSet<i32>,
    /// The calls `poll` makes besides fetching, by kind, whose latest attempt failed: why.
    failing: BTreeMap<&'static str, String>,
    last_metadata: Instant,
    last_marks: Option<Instant>,
    /// What one fetch asks of each partition: KAFKA_FETCH_MAX_BYTES_PER_PARTITION, capped at
    /// [`FETCH_WINDOW`].
    fetch_window: i32,
    /// KAFKA_FETCH_MAX_BYTES_PER_PARTITION: a partition whose next message does not fit the
    /// window is read alone with this many bytes.
    fetch_bytes: i32,
    /// The most a single message may need (a too-large one is read so it can be dead-lettered).
    fetch_limit: i32,
}

/// The most one fetch asks of a partition. A fetch's records live three times over until they
/// are handed out (the crate's response buffer, its parsed message sets, and our copies), so the
/// window, times the partitions read, sets the peak memory of a drain: six partitions of 1 MiB
/// took 22 MB of heap; of 256 KiB, under 6 MB (docs/performance.md, "Memory"). A window holds
/// thousands of typical events, so fetches stay few. Messages larger than the window are read
/// by [`KafkaCrateConsumer::fetch_alone`].
const FETCH_WINDOW: i32 = 256 << 10;

/// The most offsets in a row taken to be transaction markers when a fetch returns nothing
/// below the high watermark. Markers follow one another only when several transactions end
/// with nothing between them (one per producer, in practice); a longer run is a batch the
/// fetch could not hold, and the partition stalls instead of passing it unread.
const MAX_MARKERS_IN_A_ROW: i64 = 64;

impl KafkaCrateConsumer {
    /// A client that connects on the loop's first call to `connect`.
    pub fn new(settings: KafkaSettings) -> Self {
        let fetch_bytes = i32::try_from(settings.fetch_max_bytes_per_partition).unwrap_or(i32::MAX);
        Self {
            settings,
            client: None,
            share: BTreeMap::new(),
            known: Vec::new(),
            pending: Vec::new(),
            paused: BTreeSet::new(),
            failing: BTreeMap::new(),
            last_metadata: Instant::now(),
            last_marks: None,
            fetch_window: fetch_bytes.min(FETCH_WINDOW),
            fetch_bytes,
            // A message over the fetch size would block its partition: fetch that partition
            // alone with up to this many bytes, so it can be dead-lettered as too large.
            fetch_limit: fetch_bytes.saturating_mul(4).max(64 << 20),
        }
    }

    fn client(&mut self) -> Result<&mut KafkaClient, ClientError> {
        self.client
            .as_mut()
            .ok_or_else(|| ClientError::retriable("not connected"))
    }

    /// Log start and high watermark of every partition of the topic.
    fn watermarks(&mut self) -> Result<BTreeMap<i32, Watermarks>, ClientError> {
        let topic = self.settings.topic.clone();
        let client = self.client()?;
        let read = |client: &mut KafkaClient, at: FetchOffset| {
            client
                .fetch_topic_offsets(&topic, at)
                .map_err(|e| client_error(&e, format!("watermarks of {topic} unavailable: {e}")))
        };
        let starts = read(client, FetchOffset::Earliest)?;
        let highs = read(client, FetchOffset::Latest)?;
        Ok(starts
            .into_iter()
            .filter_map(|s| {
                let high = highs.iter().find(|h| h.partition == s.partition)?.offset;
                Some((
                    s.partition,
                    Watermarks {
                        log_start: s.offset,
                        high,
                    },
                ))
            })
            .collect())
    }

    /// The group's committed offsets of the topic (partitions without one left out).
    fn group_offsets(&mut self) -> Result<BTreeMap<i32, i64>, ClientError> {
        let (group, topic) = (self.settings.group.clone(), self.settings.topic.clone());
        let committed = self
            .client()?
            .fetch_group_topic_offset(&group, &topic)
            .map_err(|e| client_error(&e, format!("committed offsets unavailable: {e}")))?;
        Ok(committed
            .into_iter()
            .filter(|c| c.offset >= 0)
            .map(|c| (c.partition, c.offset))
            .collect())
    }

    /// Starts these partitions of the share: from the group's committed offset (or the log
    /// start, when it left the log), else from the earliest offset; KAFKA_FALLBACK_OFFSET=latest
    /// applies only when the group has committed nothing for the topic at all (a partition no
    /// member ever committed, beside others that were, is new data, not history).
    fn start(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let marks = self.watermarks()?;
        let group = self.group_offsets()?;
        let group_committed = !group.is_empty();
        let mut started = Vec::new();
        let mut reports = Vec::new();
        for &p in partitions {
            let Some(&now) = marks.get(&p) else {
                log::debug!("kafka: no watermarks for partition {p} yet; starting it later");
                continue;
            };
            let committed = group.get(&p).copied();
            let start = Start::decide(
                committed,
                now,
                group_committed,
                self.settings.fallback_offset,
            );
            reports.extend(start.report(p));
            self.share.insert(
                p,
                Tracked {
                    next: start.offset(),
                    marks: Some(now),
                    high: Some(now.high),
                    committed,
                    ..Tracked::default()
                },
            );
            started.push(p);
        }
        if !started.is_empty() {
            log::info!(
                "kafka: consuming {} partitions {started:?} as group {}",
                self.settings.topic,
                self.settings.group
            );
            self.pending.push(Polled::Assigned(started));
        }
        // As with librdkafka: the assignment first, then what the starts found.
        self.pending.extend(reports);
        Ok(())
    }

    /// Reads the topic's partitions again: starts new ones of the share; a topic with fewer
    /// partitions than before was deleted and created again.
    fn refresh_metadata(&mut self) -> Result<(), ClientError> {
        self.last_metadata = Instant::now();
        let topic = self.settings.topic.clone();
        let client = self.client()?;
        client
            .load_metadata_all()
            .map_err(|e| client_error(&e, format!("cannot load metadata: {e}")))?;
        let now: Vec<i32> = match client.topics().partitions(&topic) {
            Some(p) => p.iter().map(|p| p.id()).collect(),
            None => {
                log::warn!("kafka: topic {topic} is missing from the metadata (deleted?)");
                for t in self.share.values_mut() {
                    t.suspect = true;
                }
                return Ok(());
            }
        };
        let vanished = vanished_partitions(&self.known, &now);
        if !vanished.is_empty() {
            let reason = format!(
                "the topic has partitions {now:?}, fewer than before ({:?}): it was created again",
                self.known
            );
            let marks = self.watermarks().unwrap_or_default();
            let ours: Vec<i32> = self.share.keys().copied().collect();
            for p in ours {
                let m = marks.get(&p).copied();
                self.recreated(p, reason.clone(), m);
                if vanished.contains(&p) {
                    self.share.remove(&p);
                }
            }
        }
        self.known.clone_from(&now);
        let share = match self.settings.partitions.resolve(&now) {
            Ok(share) => share,
            Err(e) => {
                log::warn!("kafka: partitions of {topic} now {now:?}: {e}");
                return Ok(());
            }
        };
        let added: Vec<i32> = share
            .into_iter()
            .filter(|p| !self.share.contains_key(p))
            .collect();
        if !added.is_empty() {
            log::info!("kafka: partitions {added:?} of {topic} appeared; starting them");
        }
        self.start(&added)
    }

    /// Forgets a partition's log: reading starts again at the new log's start.
    fn recreated(&mut self, partition: i32, reason: String, marks: Option<Watermarks>) {
        let was_stalled = self
            .share
            .get(&partition)
            .is_some_and(|t| t.stall.is_some());
        if was_stalled {
            self.pending.push(Polled::Resumed(partition));
        }
        self.share.insert(
            partition,
            Tracked {
                next: marks.map_or(0, |m| m.log_start),
                marks,
                high: marks.map(|m| m.high),
                ..Tracked::default()
            },
        );
        self.pending.push(Polled::Recreated { partition, reason });
    }

    /// Reads the watermarks (lag) and the group's offsets, and finds recreated logs.
    fn check_logs(&mut self) {
        let suspect = self.share.values().any(|t| t.suspect);
        let every = if suspect {
            SUSPECT_CHECK_EVERY
        } else {
            WATERMARKS_EVERY
        };
        if self.last_marks.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.last_marks = Some(Instant::now());
        if suspect {
            if let Ok(client) = self.client() {
                let loaded = client
                    .load_metadata_all()
                    .map_err(|e| client_error(&e, format!("cannot load metadata: {e}")));
                if self.note("metadata", loaded).is_none() {
                    return;
                }
            }
        }
        let marks = self.watermarks();
        let group = self.group_offsets();
        let (Some(marks), Some(group)) = (
            self.note("watermarks", marks),
            self.note("committed offsets", group),
        ) else {
            return;
        };
        let ours: Vec<i32> = self.share.keys().copied().collect();
        for p in ours {
            let Some(&now) = marks.get(&p) else { continue };
            let Some(t) = self.share.get_mut(&p) else {
                continue;
            };
            let seen = Seen {
                highest_received: t.highest_received,
                previous: t.marks,
                committed: t.committed,
            };
            let evidence = Evidence {
                seen,
                now: Some(now),
                group_committed: Some(group.get(&p).copied()),
                ..Evidence::default()
            };
            match check_recreated(&evidence) {
                Some(why) => self.recreated(p, why.to_string(), Some(now)),
                None => {
                    t.marks = Some(now);
                    t.high = Some(now.high);
                    t.suspect = false;
                }
            }
        }
    }

    /// Records how the latest call of a kind ended (for [`ConsumerClient::background_failure`])
    /// and passes its value on.
    fn note<T>(&mut self, kind: &'static str, result: Result<T, ClientError>) -> Option<T> {
        match result {
            Ok(value) => {
                self.failing.remove(kind);
                Some(value)
            }
            Err(e) => {
                log::debug!("kafka: {e}");
                self.failing.insert(kind, e.to_string());
                None
            }
        }
    }

    /// Marks a partition stalled at `offset`.
    fn stall(&mut self, partition: i32, offset: i64, cause: String) {
        if let Some(t) = self.share.get_mut(&partition) {
            t.next = offset;
            t.stall = Some(Stall {
                offset,
                retry_at: Instant::now() + STALL_RETRY_EVERY,
            });
        }
        self.pending.push(Polled::Stalled {
            partition,
            offset,
            cause,
        });
    }

    /// Tries the stalled partitions that are due: resumed when the group's committed offset
    /// was moved past the stall (an operator skipped the batch), or when it reads again.
    fn retry_stalled(&mut self) {
        let now = Instant::now();
        let due: Vec<(i32, i64)> = self
            .share
            .iter()
            .filter_map(|(p, t)| {
                t.stall
                    .as_ref()
                    .filter(|s| s.retry_at <= now)
                    .map(|s| (*p, s.offset))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let group = self.group_offsets();
        let group = self.note("committed offsets", group).unwrap_or_default();
        let topic = self.settings.topic.clone();
        for (p, offset) in due {
            if let Some(&moved) = group.get(&p).filter(|c| **c > offset) {
                log::warn!(
                    "kafka: {topic}/{p}: the group's committed offset was moved to {moved}, past \
                     the stall at {offset}; resuming there"
                );
                if let Some(t) = self.share.get_mut(&p) {
                    t.stall = None;
                    t.next = moved;
                    t.committed = Some(moved);
                }
                self.pending.push(Polled::Skipped {
                    partition: p,
                    from: offset,
                    to: moved,
                });
                self.pending.push(Polled::Resumed(p));
                continue;
            }
            // Probed again from the stall: what precedes a bad batch is read, the batch (if
            // still there) stalls it again; a partition that reads is fetched with the others.
            if let Some(t) = self.share.get_mut(&p) {
                t.stall = None;
            }
            if self.isolate(BTreeMap::from([(p, offset)])) == 0 {
                self.pending.push(Polled::Resumed(p));
            }
        }
    }

    /// Hands out `messages` of `partition` (in offset order, from its next offset on), first
    /// filling a jump in offsets the crate may have left; stalls the partition at an offset
    /// the gap filling could not account for.
    fn deliver(&mut self, partition: i32, messages: Vec<OwnedMessage>) {
        let Some(first) = messages.first().map(|m| m.offset) else {
            return;
        };
        let Some(next) = self.share.get(&partition).map(|t| t.next) else {
            return;
        };
        let topic = self.settings.topic.clone();
        let mut ordered = Vec::new();
        if first > next {
            let limit = self.fetch_limit;
            let Ok(client) = self.client() else { return };
            match fill_gap(client, &topic, partition, next, first, limit) {
                Ok(fill) => {
                    if !fill.messages.is_empty() {
                        log::warn!(
                            "kafka: {topic}/{partition}: offsets {next}..{} were missing from a \
                             fetch (the kafka crate drops uncompressed messages in front of a \
                             compressed batch); read again: {fill}",
                            first - 1
                        );
                    }
                    ordered.extend(fill.messages);
                }
                Err(gap) => {
                    let (stuck, cause) = (gap.stuck_at, gap.to_string());
                    self.push_records(partition, gap.recovered.messages);
                    self.stall(partition, stuck, cause);
                    return;
                }
            }
        }
        ordered.extend(messages);
        self.push_records(partition, ordered);
    }

    fn push_records(&mut self, partition: i32, messages: Vec<OwnedMessage>) {
        let Some(t) = self.share.get_mut(&partition) else {
            return;
        };
        for m in messages {
            if m.offset < t.next {
                continue;
            }
            t.next = m.offset + 1;
            t.highest_received = Some(m.offset);
            self.pending.push(Polled::Record {
                partition,
                offset: m.offset,
                key: (!m.key.is_empty()).then_some(m.key),
                value: m.value,
            });
        }
    }

    /// Finds the partitions that cannot be decoded among `partitions` (partition -> next
    /// offset), reads what precedes the bad batch, and stalls them. Returns how many stalled.
    fn isolate(&mut self, partitions: BTreeMap<i32, i64>) -> usize {
        let topic = self.settings.topic.clone();
        let limit = self.fetch_limit;
        let Ok(client) = self.client() else { return 0 };
        let probes = probe_partitions(client, &topic, &partitions, limit);
        let mut stalled = 0;
        for probe in probes {
            let ProbeState::Undecodable { cause, at } = probe.state else {
                continue;
            };
            stalled += 1;
            let p = probe.partition;
            if at > probe.offset {
                // The messages in front of the bad batch can be read.
                let Ok(client) = self.client() else {
                    return stalled;
                };
                match fill_gap(client, &topic, p, probe.offset, at, limit) {
                    Ok(fill) => self.push_records(p, fill.messages),
                    Err(gap) => {
                        let (stuck, cause) = (gap.stuck_at, gap.to_string());
                        self.push_records(p, gap.recovered.messages);
                        self.stall(p, stuck, cause);
                        continue;
                    }
                }
            }
            self.stall(p, at, format!("{}; {UNDECODABLE_ADVICE}", cause.cause()));
        }
        stalled
    }

    /// The committed offset left the log (or the log is a new one): say so and move on.
    fn out_of_range(&mut self, partition: i32) {
        let marks = match self.watermarks() {
            Ok(m) => m,
            Err(e) => {
                log::debug!("kafka: {e}");
                return;
            }
        };
        let (Some(&now), Some(next)) = (
            marks.get(&partition),
            self.share.get(&partition).map(|t| t.next),
        ) else {
            return;
        };
        match check_position(next, now) {
            Resume::LeftLog { from, to } => {
                self.pending.push(Polled::Skipped {
                    partition,
                    from,
                    to,
                });
                if let Some(t) = self.share.get_mut(&partition) {
                    t.next = to;
                    t.marks = Some(now);
                }
            }
            r @ Resume::PastEnd { .. } => self.recreated(partition, r.to_string(), Some(now)),
            Resume::InLog(_) => {}
        }
    }

    /// One fetch of every partition of the share that is not stalled nor in doubt. Paused
    /// partitions ride along asking for 1 byte (0 means the client's default to the crate): too
    /// little for a message, but the answer carries their high watermark (Fetch v0 sends it for
    /// every partition asked), so their lag stays current while they are held back, without a
    /// request of their own.
    fn fetch(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let readable: BTreeMap<i32, i64> = self
            .share
            .iter()
            .filter(|(_, t)| t.stall.is_none() && !t.suspect)
            .map(|(p, t)| (*p, t.next))
            .collect();
        let (paused, active): (BTreeMap<i32, i64>, BTreeMap<i32, i64>) = readable
            .into_iter()
            .partition(|(p, _)| self.paused.contains(p));
        if active.is_empty() {
            std::thread::sleep(timeout);
            return Ok(());
        }
        let topic = self.settings.topic.clone();
        let requests: Vec<FetchPartition<'_>> = active
            .iter()
            .map(|(p, o)| FetchPartition::new(&topic, *p, *o).with_max_bytes(self.fetch_window))
            .chain(
                paused
                    .iter()
                    .map(|(p, o)| FetchPartition::new(&topic, *p, *o).with_max_bytes(1)),
            )
            .collect();
        type Answer = Result<(i64, Vec<OwnedMessage>), Option<KafkaCode>>;
        let mut answers: Vec<(i32, Answer)> = Vec::new();
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| ClientError::retriable("not connected"))?;
        match client.fetch_messages(&requests) {
            Ok(responses) => {
                for t in responses.iter().flat_map(|r| r.topics()) {
                    if t.topic() != topic {
                        continue;
                    }
                    for part in t.partitions() {
                        let p = part.partition();
                        let from = active.get(&p).copied().unwrap_or(0);
                        let answer = match part.data() {
                            Ok(d) => Ok((d.highwatermark_offset(), owned_from(d, from))),
                            Err(e) => Err(match &*e {
                                kafka::Error::Kafka(code) => Some(*code),
                                _ => None,
                            }),
                        };
                        answers.push((p, answer));
                    }
                }
            }
            Err(kafka::Error::UnsupportedCompression) => {
                // One partition holds an lz4 batch and the whole answer failed: find it.
                if self.isolate(active) == 0 {
                    return Err(ClientError::retriable(format!(
                        "a fetch of {topic} could not be decoded, and no partition alone fails"
                    )));
                }
                return Ok(());
            }
            Err(e) => {
                self.client = None;
                return Err(client_error(
                    &e,
                    format!("fetch from {topic} failed: {e}; reconnecting"),
                ));
            }
        }
        for (p, answer) in answers {
            if paused.contains_key(&p) {
                // Asked for its high watermark only; anything else waits for its resume.
                if let (Ok((high, _)), Some(t)) = (&answer, self.share.get_mut(&p)) {
                    t.high = Some(*high);
                }
                continue;
            }
            match answer {
                Ok((high, messages)) => {
                    if let Some(t) = self.share.get_mut(&p) {
                        t.high = Some(high);
                    }
                    let next = active.get(&p).copied().unwrap_or(0);
                    if messages.is_empty() && next < high {
                        self.fetch_alone(p, next);
                    } else {
                        self.deliver(p, messages);
                    }
                }
                // The crate names codes up to 35; from a 3.x broker the one it cannot name on
                // a Fetch v0 is UNSUPPORTED_COMPRESSION_TYPE (a zstd batch).
                Err(Some(KafkaCode::Unknown)) => {
                    self.isolate(BTreeMap::from([(p, active.get(&p).copied().unwrap_or(0))]));
                }
                Err(Some(KafkaCode::OffsetOutOfRange)) => self.out_of_range(p),
                Err(code) => {
                    log::debug!("kafka: fetch of {topic}/{p}: {code:?}; checking its log");
                    if let Some(t) = self.share.get_mut(&p) {
                        t.suspect = true;
                    }
                    self.last_metadata = Instant::now() - METADATA_EVERY;
                }
            }
        }
        Ok(())
    }

    /// Nothing came back although offsets remain: a message larger than the window (or than
    /// any accepted event), or only transaction markers. Fetch the partition alone: first with
    /// KAFKA_FETCH_MAX_BYTES_PER_PARTITION, then, if even that brought nothing, with room for
    /// the largest message. Still nothing below the high watermark: Fetch v0 leaves control
    /// batches (commit and abort markers) out of its down-converted answer and hands out every
    /// other record, so what lies between is markers only: the partition has been read up to
    /// the high watermark ([`Polled::Passed`]), and its commit point follows, so a fully read
    /// transactional partition shows lag 0 and is not fetched again and again. A batch larger
    /// than the whole limit (the broker's `message.max.bytes` above 64 MiB) looks the same, so
    /// a gap longer than [`MAX_MARKERS_IN_A_ROW`] stalls the partition instead, saying why.
    fn fetch_alone(&mut self, partition: i32, next: i64) {
        let topic = self.settings.topic.clone();
        let window = self.fetch_window;
        let sizes = [self.fetch_bytes, self.fetch_limit];
        let Ok(client) = self.client() else { return };
        let mut empty_below = None;
        for size in sizes.into_iter().filter(|size| *size > window) {
            match fetch_partition(client, &topic, partition, next, size) {
                Ok(read) if read.messages.is_empty() && next < read.high_watermark => {
                    empty_below = Some(read.high_watermark);
                }
                Ok(read) => return self.deliver(partition, read.messages),
                Err(e) => return log::debug!("kafka: {topic}/{partition}@{next}: {e}"),
            }
        }
        match empty_below {
            Some(high) if high - next <= MAX_MARKERS_IN_A_ROW => self.pass(partition, high),
            Some(high) => self.stall(
                partition,
                next,
                format!(
                    "nothing readable at offset {next} although the log holds {} offsets up to \
                     {high}: a batch larger than {} bytes (the broker's message.max.bytes above \
                     it) or a run of transaction markers longer than {MAX_MARKERS_IN_A_ROW}; \
                     move the group's committed offset past it once its events are handled \
                     (docs/operations.md, \"Troubleshooting\")",
                    high - next,
                    self.fetch_limit
                ),
            ),
            None => {}
        }
    }

    /// `partition` holds no record from its next offset up to `to` (markers only): reading goes
    /// on from `to`, and the loop hears it.
    fn pass(&mut self, partition: i32, to: i64) {
        let Some(t) = self.share.get_mut(&partition) else {
            return;
        };
        if to <= t.next {
            return;
        }
        log::debug!(
            "kafka: {}/{partition}: offsets {}..{to} hold only transaction markers; read past them",
            self.settings.topic,
            t.next
        );
        t.next = to;
        t.high = Some(t.high.map_or(to, |h| h.max(to)));
        self.pending.push(Polled::Passed { partition, to });
    }
}

impl ConsumerClient for KafkaCrateConsumer {
    fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// Builds a fresh client: metadata loaded, topic and partitions checked; partitions of the
    /// share not started yet start from the group's committed offsets. Partitions already
    /// started keep their positions (nothing delivered is fetched twice).
    fn connect(&mut self) -> Result<(), ConnectError> {
        let s = &self.settings;
        let mut client = KafkaClient::new(s.brokers.clone());
        client.set_client_id("service-courier".into());
        // The crate retries coordinator errors for two minutes by default; fail fast and let our
        // own backoff (which watches for shutdown) retry instead.
        client.set_retry_max_attempts(20);
        client.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
        client
            .set_fetch_max_wait_time(s.fetch_max_wait)
            .map_err(|e| ConnectError::Misconfigured(format!("KAFKA_FETCH_MAX_WAIT_MS: {e}")))?;
        client.set_fetch_min_bytes(1);
        client.set_fetch_max_bytes_per_partition(self.fetch_bytes);
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
        let share = s
            .partitions
            .resolve(&existing)
            .map_err(|e| ConnectError::Misconfigured(format!("{e} (topic {})", s.topic)))?;
        self.client = Some(client);
        self.known = existing;
        self.last_metadata = Instant::now();
        let new: Vec<i32> = share
            .into_iter()
            .filter(|p| !self.share.contains_key(p))
            .collect();
        if let Err(e) = self.start(&new) {
            self.client = None;
            return Err(ConnectError::Retry(e.to_string()));
        }
        Ok(())
    }

    /// Metadata and watermark checks when due, stalled partitions retried when due, then one
    /// fetch of the others (the broker holds it up to KAFKA_FETCH_MAX_WAIT_MS).
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Polled>, ClientError> {
        if self.client.is_none() {
            return Err(ClientError::retriable("not connected"));
        }
        let result = (|| {
            if self.last_metadata.elapsed() >= METADATA_EVERY {
                self.refresh_metadata()?;
            }
            self.check_logs();
            self.retry_stalled();
            self.fetch(timeout)
        })();
        match result {
            Ok(()) => Ok(std::mem::take(&mut self.pending)),
            Err(e) => {
                // What was gathered stays for the next poll: its positions have moved on.
                self.client = None;
                Err(e)
            }
        }
    }

    /// Leaves them out of fetches; what this client already fetched is handed out with the
    /// next poll (at most one fetch's worth), and fetching resumes at the next offset after it.
    fn pause(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        self.paused.extend(partitions.iter().copied());
        Ok(())
    }

    fn resume(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        for p in partitions {
            self.paused.remove(p);
        }
        Ok(())
    }

    /// A paused partition is only left out of the next fetches: nothing fetched is dropped, so
    /// a partition is paused as soon as one of its records is held.
    fn pause_bound(&self) -> PauseBound {
        PauseBound {
            held: 0,
            stuck_after: Duration::ZERO,
        }
    }

    fn background_failure(&self) -> Option<ClientError> {
        if self.failing.is_empty() {
            return None;
        }
        let why: Vec<String> = self.failing.values().cloned().collect();
        Some(ClientError::retriable(why.join("; ")))
    }

    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), ClientError> {
        let (group, topic) = (self.settings.group.clone(), self.settings.topic.clone());
        // Never a partition whose log is in doubt: the offset may belong to a deleted topic.
        let points: Vec<(i32, i64)> = offsets
            .iter()
            .copied()
            .filter(|(p, _)| self.share.get(p).is_some_and(|t| !t.suspect))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        let commits: Vec<CommitOffset<'_>> = points
            .iter()
            .map(|(p, o)| CommitOffset::new(&topic, *p, *o))
            .collect();
        let result = self.client()?.commit_offsets(&group, &commits);
        match result {
            Ok(()) => {
                for (p, o) in points {
                    if let Some(t) = self.share.get_mut(&p) {
                        t.committed = Some(o);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.client = None;
                let held = if group_held_by_another(&e) {
                    format!(
                        " (another member holds group {group}, and this client commits without \
                         joining it: stop that member or set another KAFKA_GROUP_ID)"
                    )
                } else {
                    String::new()
                };
                Err(client_error(
                    &e,
                    format!("commit of {topic} offsets failed: {e}{held}; reconnecting"),
                ))
            }
        }
    }

    /// Nothing to hand back: the share is static.
    fn release(&mut self, _partitions: &[i32]) -> Result<(), ClientError> {
        Ok(())
    }

    /// The high watermarks last seen (read every few seconds by `poll`, also for stalled
    /// partitions).
    fn high_watermarks(&mut self) -> Result<Vec<(i32, i64)>, ClientError> {
        Ok(self
            .share
            .iter()
            .filter_map(|(p, t)| t.high.map(|h| (*p, h)))
            .collect())
    }

    fn committed_offsets(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, ClientError> {
        let wanted: BTreeSet<i32> = partitions.iter().copied().collect();
        Ok(self
            .group_offsets()?
            .into_iter()
            .filter(|(p, _)| wanted.contains(p))
            .collect())
    }

    fn close(&mut self) {
        self.client = None;
    }
}

/// What kind of failure a `kafka` crate error is (`ClientError`'s kinds mean the same for both
/// clients): the broker's error code when it sent one, else retriable (I/O, timeouts).
fn kind_of(e: &kafka::Error) -> ErrorKind {
    let Some(code) = code_of(e) else {
        return ErrorKind::Retriable;
    };
    match code {
        // Never a passing rebalance here: the crate commits without joining the group, which
        // the broker takes only while the group has no members. These codes mean another
        // member holds KAFKA_GROUP_ID (an `rdkafka` instance, a console consumer), and every
        // commit will be refused until it leaves: an outage for this client.
        KafkaCode::UnknownMemberId
        | KafkaCode::IllegalGeneration
        | KafkaCode::RebalanceInProgress => ErrorKind::Retriable,
        KafkaCode::UnknownTopicOrPartition => ErrorKind::UnknownTopicOrPartition,
        KafkaCode::TopicAuthorizationFailed
        | KafkaCode::GroupAuthorizationFailed
        | KafkaCode::ClusterAuthorizationFailed => ErrorKind::Auth,
        _ => ErrorKind::Retriable,
    }
}

/// Whether the broker refused a commit because the group has members (see [`kind_of`]).
fn group_held_by_another(e: &kafka::Error) -> bool {
    matches!(
        code_of(e),
        Some(
            KafkaCode::UnknownMemberId
                | KafkaCode::IllegalGeneration
                | KafkaCode::RebalanceInProgress
        )
    )
}

/// The broker's error code behind a `kafka` crate error, when it sent one.
fn code_of(e: &kafka::Error) -> Option<KafkaCode> {
    match e {
        kafka::Error::Kafka(code) => Some(*code),
        kafka::Error::TopicPartitionError { error_code, .. } => Some(*error_code),
        _ => None,
    }
}

/// A `ClientError` of the kind `e` says.
fn client_error(e: &kafka::Error, message: String) -> ClientError {
    ClientError::new(kind_of(e), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_crate_errors_map_to_the_kinds_the_loop_decides_on() {
        let partition = |code| kafka::Error::TopicPartitionError {
            topic_name: "t".into(),
            partition_id: 0,
            error_code: code,
        };
        for (e, kind) in [
            // The crate never joins the group: a refusal is another member's group, for good.
            (
                partition(KafkaCode::IllegalGeneration),
                ErrorKind::Retriable,
            ),
            (partition(KafkaCode::UnknownMemberId), ErrorKind::Retriable),
            (
                kafka::Error::Kafka(KafkaCode::RebalanceInProgress),
                ErrorKind::Retriable,
            ),
            (
                partition(KafkaCode::UnknownTopicOrPartition),
                ErrorKind::UnknownTopicOrPartition,
            ),
            (
                kafka::Error::Kafka(KafkaCode::GroupAuthorizationFailed),
                ErrorKind::Auth,
            ),
            (
                partition(KafkaCode::NotLeaderForPartition),
                ErrorKind::Retriable,
            ),
            (kafka::Error::NoHostReachable, ErrorKind::Retriable),
        ] {
            assert_eq!(kind_of(&e), kind, "{e}");
        }
    }
}
