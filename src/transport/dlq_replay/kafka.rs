//! [`DeadLetterLog`] over the `kafka` crate: reads the dead-letter topic with the low-level
//! client from the replay group's committed offsets to the end the topic had when the replay
//! began, publishes with the crate's producer (all in-sync replicas), and commits the group's
//! offsets (standalone commits: the group stores offsets only).

use std::collections::BTreeMap;
use std::time::Duration;

use kafka::client::{FetchOffset, GroupOffsetStorage, KafkaClient, RequiredAcks};
use kafka::producer::{Producer, Record};

use super::{Chunk, DeadLetterLog, StoredLetter};
use crate::transport::kafka_edge::read::fetch_partition;

/// The first fetch size: envelopes are at most about 140 KiB (64 KiB of payload, hex-encoded).
const FETCH_BYTES: i32 = 1 << 20;
/// The largest fetch tried before a letter is declared unreadable.
const MAX_FETCH_BYTES: i32 = 64 << 20;

/// Where the replay stands on one dead-letter partition.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The next offset to read.
    next: i64,
    /// The end of the partition when the replay began: later letters wait for the next replay.
    end: i64,
}

/// The dead-letter topic read for a replay group, and the order topic published to.
pub struct KafkaDeadLetterLog {
    client: KafkaClient,
    brokers: Vec<String>,
    dlq_topic: String,
    order_topic: String,
    group: String,
    progress: BTreeMap<i32, Progress>,
    producer: Option<Producer>,
}

impl KafkaDeadLetterLog {
    /// Connects, checks both topics exist, and fixes the range to replay: from the group's
    /// committed offsets (the log start where it has none, or where its offset left the log) to
    /// the current end.
    pub fn connect(
        brokers: Vec<String>,
        dlq_topic: &str,
        order_topic: &str,
        group: &str,
    ) -> Result<Self, String> {
        let mut client = KafkaClient::new(brokers.clone());
        client.set_client_id("service-courier-dlq-replay".into());
        client.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
        client.set_retry_max_attempts(3);
        client
            .load_metadata_all()
            .map_err(|e| format!("cannot load metadata from {brokers:?}: {e}"))?;
        for topic in [dlq_topic, order_topic] {
            if !client.topics().contains(topic) {
                return Err(format!("topic {topic} does not exist"));
            }
        }
        let mut offsets = |at: FetchOffset| -> Result<BTreeMap<i32, i64>, String> {
            let list = client
                .fetch_topic_offsets(dlq_topic, at)
                .map_err(|e| format!("cannot list the offsets of {dlq_topic}: {e}"))?;
            Ok(list.iter().map(|p| (p.partition, p.offset)).collect())
        };
        let starts = offsets(FetchOffset::Earliest)?;
        let ends = offsets(FetchOffset::Latest)?;
        let committed: BTreeMap<i32, i64> = client
            .fetch_group_topic_offset(group, dlq_topic)
            .map_err(|e| format!("cannot read the offsets of group {group}: {e}"))?
            .iter()
            .filter(|p| p.offset >= 0)
            .map(|p| (p.partition, p.offset))
            .collect();
        let progress = ends
            .iter()
            .map(|(&p, &end)| {
                let start = starts.get(&p).copied().unwrap_or(0);
                let next = committed.get(&p).copied().unwrap_or(start).max(start);
                (p, Progress { next, end })
            })
            .collect();
        Ok(Self {
            client,
            brokers,
            dlq_topic: dlq_topic.to_owned(),
            order_topic: order_topic.to_owned(),
            group: group.to_owned(),
            progress,
            producer: None,
        })
    }
}

impl DeadLetterLog for KafkaDeadLetterLog {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, String> {
        let Some((&partition, &Progress { next, end })) =
            self.progress.iter().find(|(_, p)| p.next < p.end)
        else {
            return Ok(None);
        };
        let mut size = FETCH_BYTES;
        let read = loop {
            let read = fetch_partition(&mut self.client, &self.dlq_topic, partition, next, size)
                .map_err(|e| format!("cannot read {}/{partition}@{next}: {e}", self.dlq_topic))?;
            if !read.messages.is_empty() || size >= MAX_FETCH_BYTES {
                break read;
            }
            size = size.saturating_mul(2).min(MAX_FETCH_BYTES);
        };
        let beyond_end = read.messages.first().is_some_and(|m| m.offset >= end);
        let letters: Vec<StoredLetter> = read
            .messages
            .into_iter()
            .filter(|m| m.offset < end)
            .map(|m| StoredLetter {
                partition,
                offset: m.offset,
                value: m.value,
            })
            .collect();
        // Offsets up to the end hold no message (compacted away): the partition is done.
        let last = if beyond_end {
            Some(end - 1)
        } else {
            letters.last().map(|l| l.offset)
        };
        let Some(last) = last else {
            return Err(format!(
                "no letter readable at {}/{partition}@{next} (end {end}) within {MAX_FETCH_BYTES} \
                 bytes",
                self.dlq_topic
            ));
        };
        let next = last + 1;
        if let Some(p) = self.progress.get_mut(&partition) {
            p.next = next;
        }
        Ok(Some(Chunk {
            letters,
            partition,
            next,
        }))
    }

    fn publish(&mut self, payloads: &[Vec<u8>]) -> Result<(), String> {
        let producer = match self.producer.as_mut() {
            Some(p) => p,
            None => self.producer.insert(
                Producer::from_hosts(self.brokers.clone())
                    .with_client_id("service-courier-dlq-replay".into())
                    .with_ack_timeout(Duration::from_secs(5))
                    .with_required_acks(RequiredAcks::All)
                    .create()
                    .map_err(|e| format!("cannot create a producer: {e}"))?,
            ),
        };
        let records: Vec<Record<'_, (), &[u8]>> = payloads
            .iter()
            .map(|p| Record::from_value(&self.order_topic, p.as_slice()))
            .collect();
        let confirms = producer
            .send_all(&records)
            .map_err(|e| format!("cannot publish to {}: {e}", self.order_topic))?;
        for c in &confirms {
            for p in &c.partition_confirms {
                if let Err(code) = p.offset {
                    return Err(format!(
                        "publishing to {}/{} failed: {code:?}",
                        c.topic, p.partition
                    ));
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, partition: i32, next: i64) -> Result<(), String> {
        self.client
            .commit_offset(&self.group, &self.dlq_topic, partition, next)
            .map_err(|e| {
                format!(
                    "cannot commit {}/{partition}@{next} for group {}: {e}",
                    self.dlq_topic, self.group
                )
            })
    }
}
