//! One partition fetched alone with the low-level `KafkaClient`: owned messages (the crate's
//! borrow its response) and a failure that says whether the broker refused the partition, the
//! crate could not decode the answer, or the request itself failed.

use std::collections::BTreeMap;
use std::fmt;

use kafka::client::{FetchOffset, FetchPartition, KafkaClient};
use kafka::error::KafkaCode;

use crate::transport::start::Watermarks;

/// A message read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key (empty when none).
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// The messages of a partition's fetched data at or after `from`, copied out of the response
/// (a message set can start before the offset asked for).
pub fn owned_from(data: &kafka::client::fetch::Data, from: i64) -> Vec<OwnedMessage> {
    data.messages()
        .iter()
        .filter(|m| m.offset >= from)
        .map(|m| OwnedMessage {
            offset: m.offset,
            key: m.key.to_vec(),
            value: m.value.to_vec(),
        })
        .collect()
}

/// What one fetch of one partition returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRead {
    /// The partition's high watermark as the broker reported it.
    pub high_watermark: i64,
    /// The complete messages at or after the requested offset, in offset order.
    pub messages: Vec<OwnedMessage>,
}

/// Why a fetch of one partition failed.
#[derive(Debug)]
pub enum ReadError {
    /// The broker answered with an error code for this partition.
    Broker(KafkaCode),
    /// The broker answered, but the crate cannot decode the compression used (for a Fetch v0
    /// answer, that is lz4: the only codec of message format v0 beyond gzip and snappy).
    UnsupportedCompression,
    /// The metadata names no leader for the partition, so no request was sent.
    NoLeader,
    /// Anything else: connection, timeout, a malformed answer.
    Client(kafka::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broker(code) => write!(f, "broker error {code:?}"),
            Self::UnsupportedCompression => f.write_str("unsupported compression"),
            Self::NoLeader => f.write_str("no leader known for the partition"),
            Self::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Fetches `topic`/`partition` from `offset` with at most `max_bytes` (the broker may send a
/// little more: see the gap module), alone in its request, so no other partition's data can
/// fail it.
pub fn fetch_partition(
    client: &mut KafkaClient,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
) -> Result<PartitionRead, ReadError> {
    let request = FetchPartition::new(topic, partition, offset).with_max_bytes(max_bytes);
    let responses = client
        .fetch_messages_for_partition(&request)
        .map_err(|e| match e {
            kafka::Error::UnsupportedCompression => ReadError::UnsupportedCompression,
            kafka::Error::Kafka(code) => ReadError::Broker(code),
            other => ReadError::Client(other),
        })?;
    let found = responses
        .iter()
        .flat_map(|r| r.topics())
        .filter(|t| t.topic() == topic)
        .flat_map(|t| t.partitions())
        .find(|p| p.partition() == partition);
    if let Some(p) = found {
        let data = p.data().map_err(|e| match &*e {
            kafka::Error::Kafka(code) => ReadError::Broker(*code),
            kafka::Error::UnsupportedCompression => ReadError::UnsupportedCompression,
            other => ReadError::Client(kafka::Error::Io(std::io::Error::other(other.to_string()))),
        })?;
        return Ok(PartitionRead {
            high_watermark: data.highwatermark_offset(),
            messages: owned_from(data, offset),
        });
    }
    Err(ReadError::NoLeader)
}

/// Every partition's watermarks (ListOffsets earliest and latest), for the decisions of
/// [`super::watermarks`]. A partition missing from either answer is left out.
pub fn read_watermarks(
    client: &mut KafkaClient,
    topic: &str,
) -> Result<BTreeMap<i32, Watermarks>, kafka::Error> {
    let starts = client.fetch_topic_offsets(topic, FetchOffset::Earliest)?;
    let ends = client.fetch_topic_offsets(topic, FetchOffset::Latest)?;
    Ok(starts
        .iter()
        .filter_map(|s| {
            let end = ends.iter().find(|e| e.partition == s.partition)?;
            Some((
                s.partition,
                Watermarks {
                    log_start: s.offset,
                    high: end.offset,
                },
            ))
        })
        .collect())
}
