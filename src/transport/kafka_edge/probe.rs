//! Which partition makes `Consumer::poll` fail. The `kafka` crate fails a whole fetch response
//! when one partition in it cannot be decoded (an lz4 batch: `Unsupported compression format`)
//! or carries an error code (a zstd batch, which Kafka cannot down-convert to message format
//! v0: the broker answers UNSUPPORTED_COMPRESSION_TYPE, code 76, which the crate does not know
//! and prints as `Kafka Error (Unknown)`). After a failed poll the poller calls
//! [`probe_partitions`]: each partition is fetched alone from its next offset, so the healthy
//! ones can be told apart from the stuck one, and the stuck one is named with its offset and
//! a cause a person can act on.

use std::collections::BTreeMap;
use std::fmt;

use kafka::client::KafkaClient;
use kafka::error::KafkaCode;

use super::read::{fetch_partition, ReadError};

/// What was found on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProbe {
    /// The partition.
    pub partition: i32,
    /// The offset it was fetched from (its next offset to read).
    pub offset: i64,
    /// What the fetch found.
    pub state: ProbeState,
}

/// Whether a partition can be read from its next offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    /// The fetch decoded: `messages` complete messages came back.
    Readable {
        /// Messages the probe fetch returned (0 when the partition is caught up).
        messages: usize,
        /// The partition's high watermark.
        high_watermark: i64,
    },
    /// Offsets remain below the high watermark, but a fetch of [`MARKER_CHECK_BYTES`] returns
    /// no message: they are transaction markers (message format v0 has none) and nothing
    /// follows them yet. The crate's consumer takes this for a message too large, grows its
    /// fetch to its limit and then fails every poll with `MessageSizeTooLarge`, until a
    /// message is written after the markers.
    OnlyMarkers {
        /// The partition's high watermark.
        high_watermark: i64,
    },
    /// The data cannot be decoded by the `kafka` crate, and will not be on a retry.
    Undecodable {
        /// Why.
        cause: Undecodable,
        /// The first offset that cannot be read: the messages from the probe's offset up to
        /// it can be (each alone or in small fetches), the batch holding it cannot.
        at: i64,
    },
    /// The fetch failed for another reason (leader moved, offset out of range, network, …):
    /// possibly passing.
    Failed(String),
}

/// Why a partition cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    /// A batch compressed with lz4.
    Lz4,
    /// A batch compressed with zstd (the broker answers UNSUPPORTED_COMPRESSION_TYPE).
    Zstd,
}

impl Undecodable {
    /// The cause in words.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Lz4 => {
                "a record batch compressed with lz4, which the kafka crate cannot decode \
                 (it reads none, gzip and snappy)"
            }
            Self::Zstd => {
                "a record batch compressed with zstd, which Kafka cannot down-convert for the \
                 kafka crate's Fetch v0 (the broker answers UNSUPPORTED_COMPRESSION_TYPE, \
                 which the crate prints as `Kafka Error (Unknown)`)"
            }
        }
    }
}

impl PartitionProbe {
    /// Whether this partition blocks the consumer for good (not a passing failure).
    pub fn is_undecodable(&self) -> bool {
        matches!(self.state, ProbeState::Undecodable { .. })
    }
}

/// The fetch size that tells transaction markers from a large message: Kafka refuses
/// messages over 1 MB by default, so a fetch this big that returns nothing returns no message.
pub const MARKER_CHECK_BYTES: i32 = 64 << 20;

/// What to do about an undecodable partition.
pub const UNDECODABLE_ADVICE: &str = "have the producer use gzip, snappy or no compression, \
     and read this partition with a client that decodes lz4 and zstd (librdkafka)";

impl fmt::Display for PartitionProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, o) = (self.partition, self.offset);
        match &self.state {
            ProbeState::Readable {
                messages,
                high_watermark,
            } => write!(
                f,
                "partition {p} at offset {o}: readable ({messages} messages fetched, high \
                 watermark {high_watermark})"
            ),
            ProbeState::Undecodable { cause, at } => write!(
                f,
                "partition {p} is stuck at offset {at} (read from {o}): undecodable: {}; \
                 {UNDECODABLE_ADVICE}",
                cause.cause()
            ),
            ProbeState::Failed(e) => write!(f, "partition {p} at offset {o}: fetch failed: {e}"),
            ProbeState::OnlyMarkers { high_watermark } => write!(
                f,
                "partition {p} at offset {o}: offsets {o}..{} hold transaction markers and no \
                 message; the kafka crate's consumer reports MessageSizeTooLarge here until a \
                 message follows them (nothing is lost)",
                high_watermark - 1
            ),
        }
    }
}

/// Fetches each partition of `topic` alone from its next offset (`next_offsets`: partition ->
/// offset) with at most `max_bytes`, and says which can be read. One request per partition,
/// in partition order.
pub fn probe_partitions(
    client: &mut KafkaClient,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
    max_bytes: i32,
) -> Vec<PartitionProbe> {
    let mut probes = Vec::with_capacity(next_offsets.len());
    for (&partition, &offset) in next_offsets {
        let state = match fetch_partition(client, topic, partition, offset, max_bytes) {
            Ok(read) if read.messages.is_empty() && offset < read.high_watermark => {
                match fetch_partition(client, topic, partition, offset, MARKER_CHECK_BYTES) {
                    Ok(big) if big.messages.is_empty() => ProbeState::OnlyMarkers {
                        high_watermark: big.high_watermark,
                    },
                    Ok(big) => ProbeState::Failed(format!(
                        "a message larger than {max_bytes} bytes (found with a fetch of {} \
                         bytes at offset {})",
                        MARKER_CHECK_BYTES,
                        big.messages.first().map_or(offset, |m| m.offset)
                    )),
                    Err(e) => ProbeState::Failed(e.to_string()),
                }
            }
            Ok(read) => ProbeState::Readable {
                messages: read.messages.len(),
                high_watermark: read.high_watermark,
            },
            Err(e) => match classify(e) {
                Ok(cause) => ProbeState::Undecodable {
                    cause,
                    at: locate(client, topic, partition, offset, max_bytes),
                },
                Err(failed) => failed,
            },
        };
        probes.push(PartitionProbe {
            partition,
            offset,
            state,
        });
    }
    probes
}

fn classify(e: ReadError) -> Result<Undecodable, ProbeState> {
    match e {
        // Message format v0 has four codecs; the crate decodes none, gzip and snappy.
        ReadError::UnsupportedCompression => Ok(Undecodable::Lz4),
        // The crate knows error codes up to 35; for a Fetch v0 from a Kafka 3.x broker the
        // code it cannot name is UNSUPPORTED_COMPRESSION_TYPE (the leader-epoch and
        // session codes above 35 belong to newer fetch versions).
        ReadError::Broker(KafkaCode::Unknown) => Ok(Undecodable::Zstd),
        other => Err(ProbeState::Failed(other.to_string())),
    }
}

/// The first offset from `from` on that cannot be read. A fetch fails when its log slice holds
/// a whole undecodable batch, whatever precedes it, so the messages in front of the batch are
/// read in fetches too small to reach it: grow the fetch until it answers, and when the answer
/// is a failure, narrow it to the smallest size that answers (one batch). Falls back to
/// `from` when the broker stops answering.
fn locate(client: &mut KafkaClient, topic: &str, partition: i32, from: i64, max_bytes: i32) -> i64 {
    // `Some(Ok(last offset))`, `Some(Err(()))` for a failure, `None` for an empty answer.
    let mut fetch = |at: i64, size: i32| -> Option<Result<i64, ()>> {
        match fetch_partition(client, topic, partition, at, size) {
            Ok(read) => read.messages.last().map(|m| Ok(m.offset)),
            Err(_) => Some(Err(())),
        }
    };
    let mut at = from;
    'batches: loop {
        let (mut empty, mut size) = (0, 128.min(max_bytes));
        loop {
            match fetch(at, size) {
                Some(Ok(last)) => {
                    at = last + 1;
                    continue 'batches;
                }
                Some(Err(())) => break,
                None if size >= max_bytes => return at,
                None => {
                    empty = size;
                    size = size.saturating_mul(2).min(max_bytes);
                }
            }
        }
        // The failing slice may hold readable messages in front of the bad batch.
        let (mut lo, mut hi) = (empty, size);
        let mut readable = None;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match fetch(at, mid) {
                None => lo = mid,
                Some(Ok(last)) => {
                    readable = Some(last);
                    break;
                }
                Some(Err(())) => hi = mid,
            }
        }
        match readable {
            Some(last) => at = last + 1,
            None => return at,
        }
    }
}
