//! [`DeadLetterLog`] over librdkafka (for both clients, see the parent module): reads one
//! dead-letter partition
//! at a time with a `BaseConsumer` assigned to it (no group membership: the replay group only
//! stores offsets), from the group's committed offset to the end the partition had when the
//! replay began; publishes with the service's blocking producer (all in-sync replicas) and
//! commits synchronously, within a bound.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Chunk, DeadLetterLog, Original, StoredLetter};
use crate::config::KafkaAccess;
use crate::transport::bounded_commit;
use crate::transport::rdkafka_client::{client_config, offsets_of, RdkafkaProducer};

/// Most letters in one chunk (each chunk is published, then committed).
const CHUNK_LETTERS: usize = 500;
/// How long a request (metadata, offsets, commit) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a partition may give nothing before the replay gives up on it.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the replay stands on one dead-letter partition.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The next offset to read.
    next: i64,
    /// The end of the partition when the replay began: later letters wait for the next replay.
    end: i64,
}

/// The dead-letter topic read for a replay group, and the order topic published to.
pub struct RdkafkaDeadLetterLog {
    consumer: BaseConsumer,
    brokers: Vec<String>,
    access: KafkaAccess,
    dlq_topic: String,
    order_topic: String,
    progress: BTreeMap<i32, Progress>,
    /// The partition the consumer is assigned to now.
    reading: Option<i32>,
    producer: Option<RdkafkaProducer>,
}

impl RdkafkaDeadLetterLog {
    /// Connects, checks both topics exist, and fixes the range to replay: from the group's
    /// committed offsets (the log start where it has none, or where its offset left the log) to
    /// the current end.
    pub fn connect(
        brokers: Vec<String>,
        access: KafkaAccess,
        dlq_topic: &str,
        order_topic: &str,
        group: &str,
    ) -> Result<Self, String> {
        let consumer: BaseConsumer = client_config(&brokers, &access, "service-courier-dlq-replay")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| format!("cannot create the rdkafka consumer: {e}"))?;
        let metadata = consumer
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot load metadata from {brokers:?}: {e}"))?;
        let partitions_of = |topic: &str| -> Option<Vec<i32>> {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        };
        if partitions_of(order_topic).is_none() {
            return Err(format!("topic {order_topic} does not exist"));
        }
        let partitions =
            partitions_of(dlq_topic).ok_or_else(|| format!("topic {dlq_topic} does not exist"))?;
        let mut all = TopicPartitionList::new();
        for p in &partitions {
            all.add_partition(dlq_topic, *p);
        }
        let committed: BTreeMap<i32, i64> = offsets_of(
            &consumer
                .committed_offsets(all, REQUEST_TIMEOUT)
                .map_err(|e| format!("cannot read the offsets of group {group}: {e}"))?,
        )
        .collect();
        let mut progress = BTreeMap::new();
        for p in partitions {
            let (start, end) = consumer
                .fetch_watermarks(dlq_topic, p, REQUEST_TIMEOUT)
                .map_err(|e| format!("cannot list the offsets of {dlq_topic}/{p}: {e}"))?;
            let next = committed.get(&p).copied().unwrap_or(start).max(start);
            progress.insert(p, Progress { next, end });
        }
        Ok(Self {
            consumer,
            brokers,
            access,
            dlq_topic: dlq_topic.to_owned(),
            order_topic: order_topic.to_owned(),
            progress,
            reading: None,
            producer: None,
        })
    }

    /// Points the consumer at `partition` from `next` (once per partition: it reads on).
    fn read_from(&mut self, partition: i32, next: i64) -> Result<(), String> {
        if self.reading == Some(partition) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.dlq_topic, partition, Offset::Offset(next))
            .map_err(|e| format!("{}/{partition}@{next}: {e}", self.dlq_topic))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| format!("cannot read {}/{partition}: {e}", self.dlq_topic))?;
        self.reading = Some(partition);
        Ok(())
    }
}

impl DeadLetterLog for RdkafkaDeadLetterLog {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, String> {
        let Some((&partition, &Progress { next, end })) =
            self.progress.iter().find(|(_, p)| p.next < p.end)
        else {
            return Ok(None);
        };
        self.read_from(partition, next)?;
        let mut letters = Vec::new();
        // The partition's end (as the replay began) was reached: it is done.
        let mut at_end = false;
        let mut last_seen = Instant::now();
        while letters.len() < CHUNK_LETTERS && !at_end {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.partition() == partition => {
                    last_seen = Instant::now();
                    if m.offset() >= end {
                        at_end = true;
                    } else {
                        letters.push(StoredLetter {
                            partition,
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().unwrap_or_default().to_vec(),
                            headers: m.headers().map_or_else(Vec::new, |h| {
                                h.iter()
                                    .map(|h| {
                                        (h.key.to_owned(), h.value.unwrap_or_default().to_vec())
                                    })
                                    .collect()
                            }),
                        });
                        at_end = m.offset() + 1 >= end;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => at_end = true,
                // librdkafka retries by itself; a partition that stays silent fails below.
                Some(Err(e)) => log::debug!("dlq replay: {e}"),
                None if !letters.is_empty() => break,
                None => {}
            }
            if letters.is_empty() && !at_end && last_seen.elapsed() > READ_TIMEOUT {
                return Err(format!(
                    "no letter readable at {}/{partition}@{next} (end {end}) within {:?}",
                    self.dlq_topic, READ_TIMEOUT
                ));
            }
        }
        // Offsets up to the end that hold no message (transaction markers, compaction) are
        // passed over with the partition.
        let next = if at_end {
            end
        } else {
            letters.last().map_or(next, |l| l.offset + 1)
        };
        if let Some(p) = self.progress.get_mut(&partition) {
            p.next = next;
        }
        Ok(Some(Chunk {
            letters,
            partition,
            next,
        }))
    }

    fn publish(&mut self, messages: &[Original]) -> Result<(), String> {
        let producer = match self.producer.as_ref() {
            Some(p) => p,
            None => self.producer.insert(
                RdkafkaProducer::new(
                    &self.brokers,
                    &self.access,
                    "service-courier-dlq-replay",
                    "all",
                    Duration::from_secs(5),
                )
                .map_err(|e| e.to_string())?,
            ),
        };
        let records: Vec<(Option<&[u8]>, &[u8])> = messages
            .iter()
            .map(|m| (m.key.as_deref(), m.value.as_slice()))
            .collect();
        producer
            .send_all(&self.order_topic, &records)
            .map_err(|e| e.to_string())
    }

    fn commit(&mut self, partition: i32, next: i64) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.dlq_topic, partition, Offset::Offset(next))
            .map_err(|e| format!("{}/{partition}@{next}: {e}", self.dlq_topic))?;
        bounded_commit::commit(self.consumer.client(), &tpl, REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot commit {}/{partition}@{next}: {e}", self.dlq_topic))
    }
}
