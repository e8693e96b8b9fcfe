//! The `kafka` crate behind the client seam (`KAFKA_CLIENT=kafka`, the default). The crate has
//! no group membership: this instance reads a static share of the partitions (all of them,
//! KAFKA_PARTITIONS, or INSTANCE_INDEX of INSTANCE_COUNT) and uses the group only to store
//! offsets. Any failed call drops the consumer, and the poller's loop connects again: the crate
//! keeps dead connections and never refreshes metadata on its own.

use std::time::Duration;

use kafka::client::{FetchOffset, GroupOffsetStorage, KafkaClient};
use kafka::consumer::Consumer;

use super::client::{ClientError, ConnectError, ConsumerClient, Polled};
use crate::config::{FallbackOffset, KafkaSettings};

/// A consumer of the static share, rebuilt after any failure.
pub struct KafkaCrateConsumer {
    settings: KafkaSettings,
    consumer: Option<Consumer>,
    /// The share, resolved against the topic at the last connect.
    partitions: Vec<i32>,
    /// The next poll announces the share (after every connect).
    announce: bool,
}

impl KafkaCrateConsumer {
    /// A client that connects on the loop's first call to `connect`.
    pub fn new(settings: KafkaSettings) -> Self {
        Self {
            settings,
            consumer: None,
            partitions: Vec::new(),
            announce: false,
        }
    }

    fn consumer(&mut self) -> Result<&mut Consumer, ClientError> {
        self.consumer
            .as_mut()
            .ok_or_else(|| ClientError("not connected".into()))
    }
}

impl ConsumerClient for KafkaCrateConsumer {
    fn is_connected(&self) -> bool {
        self.consumer.is_some()
    }

    /// Builds a consumer on a fresh client: metadata loaded, topic and partitions checked.
    fn connect(&mut self) -> Result<(), ConnectError> {
        let s = &self.settings;
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
        let fetch = i32::try_from(s.fetch_max_bytes_per_partition).unwrap_or(i32::MAX);
        let consumer = Consumer::from_client(client)
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
            .map_err(|e| ConnectError::Retry(format!("cannot create the consumer: {e}")))?;
        log::info!(
            "kafka: consuming {} partitions {partitions:?} as group {}",
            s.topic,
            s.group
        );
        self.consumer = Some(consumer);
        self.partitions = partitions;
        self.announce = true;
        Ok(())
    }

    /// One fetch (the broker holds it up to KAFKA_FETCH_MAX_WAIT_MS; `timeout` is not used).
    fn poll(&mut self, _timeout: Duration) -> Result<Vec<Polled>, ClientError> {
        let mut polled = Vec::new();
        if std::mem::take(&mut self.announce) {
            polled.push(Polled::Assigned(self.partitions.clone()));
        }
        let topic = self.settings.topic.clone();
        match self.consumer()?.poll() {
            Ok(sets) => {
                for set in sets.iter() {
                    for m in set.messages() {
                        polled.push(Polled::Record {
                            partition: set.partition(),
                            offset: m.offset,
                            value: m.value.to_vec(),
                        });
                    }
                }
                Ok(polled)
            }
            Err(e) => {
                self.consumer = None;
                Err(ClientError(format!(
                    "poll failed on {topic}: {e}; rebuilding the consumer"
                )))
            }
        }
    }

    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), ClientError> {
        let topic = self.settings.topic.clone();
        let consumer = self.consumer()?;
        for &(partition, next) in offsets {
            if let Err(e) = consumer.consume_message(&topic, partition, next - 1) {
                log::warn!("kafka: cannot mark {topic}/{partition}@{}: {e}", next - 1);
            }
        }
        consumer.commit_consumed().map_err(|e| {
            self.consumer = None;
            ClientError(format!(
                "commit of {topic} offsets failed: {e}; rebuilding the consumer"
            ))
        })
    }

    /// Nothing to hand back: the share is static.
    fn release(&mut self, _partitions: &[i32]) -> Result<(), ClientError> {
        Ok(())
    }

    fn high_watermarks(&mut self) -> Result<Vec<(i32, i64)>, ClientError> {
        let topic = self.settings.topic.clone();
        let offsets = self
            .consumer()?
            .client_mut()
            .fetch_topic_offsets(&topic, FetchOffset::Latest)
            .map_err(|e| ClientError(format!("high watermarks unavailable: {e}")))?;
        Ok(offsets
            .into_iter()
            .map(|o| (o.partition, o.offset))
            .collect())
    }

    fn committed_offsets(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, ClientError> {
        let (group, topic) = (self.settings.group.clone(), self.settings.topic.clone());
        let client = self.consumer()?.client_mut();
        client.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
        let committed = client
            .fetch_group_topic_offset(&group, &topic)
            .map_err(|e| ClientError(format!("committed offsets unavailable: {e}")))?;
        Ok(committed
            .into_iter()
            .filter(|c| c.offset >= 0 && partitions.contains(&c.partition))
            .map(|c| (c.partition, c.offset))
            .collect())
    }

    fn close(&mut self) {
        self.consumer = None;
    }
}
