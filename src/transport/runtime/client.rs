//! The seam between the poller's loop and a Kafka client library. The loop (routing, offset
//! tracking, dead letters, commits, revocations, shutdown) is written once against these two
//! small traits; `kafka_client` (the `kafka` crate: static partition split) and
//! `rdkafka_client` (librdkafka: consumer groups with rebalancing) implement them, and the
//! poller's unit tests drive the loop through a fake.

use std::fmt;
use std::time::Duration;

use super::dead_letter::DeadLetter;

/// What one poll brought, in the order it happened: ownership changes come before the records
/// that follow them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// One message of the order topic.
    Record {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its key, when it has one (events have none; a dead letter keeps it).
        key: Option<Vec<u8>>,
        /// Its value (an empty value when the message has none).
        value: Vec<u8>,
    },
    /// These partitions are now this instance's: records follow from their committed offsets.
    /// Sent again for partitions it already owns after a client rebuild (the `kafka` crate);
    /// their in-flight offsets are then recognised when redelivered.
    Assigned(Vec<i32>),
    /// These partitions are being taken away. The loop stops routing them, lets their queued
    /// and in-flight events finish within a bound, commits their finished prefix and then calls
    /// [`ConsumerClient::release`]; until then the group waits for them.
    Revoked(Vec<i32>),
    /// This partition cannot be read from `offset` for now (an undecodable batch, or offsets the
    /// client cannot account for): the loop reports it on `/healthz` and in
    /// `courier_partition_stalled`, and logs it (rate-limited) with what to do. The client keeps
    /// the other partitions flowing and retries this one now and then; it may send this again
    /// for the same stall (the loop treats repeats as a reminder).
    Stalled {
        /// The partition.
        partition: i32,
        /// The first offset that cannot be read.
        offset: i64,
        /// Why, in words a person can act on.
        cause: String,
    },
    /// A stalled partition is read again (the batch became readable, or the group's committed
    /// offset was moved past it).
    Resumed(i32),
    /// Every offset of this partition below `to` that the client did not deliver holds no
    /// record: transaction markers (the `kafka` client finds them: Fetch v0 leaves them out).
    /// The client has read up to `to`, so the loop's commit point may reach it once every
    /// record delivered below it is finished: a fully read transactional partition then shows
    /// lag 0, not the marker's 1 (issue #21; docs/operations.md, "Lag").
    Passed {
        /// The partition.
        partition: i32,
        /// The offset after the last marker passed: the next offset that can hold a record.
        to: i64,
    },
    /// Offsets `from..to` of this partition left the log (retention, DeleteRecords) before they
    /// were read: reading resumes at `to`. The loop logs and counts them; they are gone.
    Skipped {
        /// The partition.
        partition: i32,
        /// The first offset skipped (the committed offset).
        from: i64,
        /// The offset reading resumes at (the log start).
        to: i64,
    },
    /// The partition's log is a new one (the topic was deleted and created again): the loop must
    /// forget every offset it tracks for it (and never commit one of them); records of the new
    /// log follow from its start.
    Recreated {
        /// The partition.
        partition: i32,
        /// How it was detected.
        reason: String,
    },
}

/// Why connecting did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The broker or topic is not there (yet): back off and retry.
    Retry(String),
    /// The configuration does not match the cluster: stop with exit code 2.
    Misconfigured(String),
}

/// When the loop pauses partitions whose records it holds back (their workers' queues are full).
/// A pause that costs nothing pauses at once; one that throws away what the client fetched ahead
/// (librdkafka) waits until it spares more than it repeats, or until the workers are stuck.
/// The default pauses at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PauseBound {
    /// Records held (all partitions together) past which their partitions are paused.
    pub held: usize,
    /// How long the workers may take none of the held records before their partitions are
    /// paused whatever their number (the database is down, say).
    pub stuck_after: Duration,
}

/// What kind of failure a client call met, from the Kafka error code behind it: the loop
/// decides on it (a refused commit during a rebalance is not an outage; bad credentials need a
/// person, not retries). Both clients map their library's codes with the same meaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth trying again as it is: a timeout, a broker gone, a leader moving, no code at all.
    #[default]
    Retriable,
    /// This member's generation is over (expelled from the group, or fenced by a newer
    /// member): its commits are refused until it joins again, and its partitions move.
    Fenced,
    /// The group is rebalancing: a commit is refused for now, and the partitions may move.
    RebalanceInProgress,
    /// The topic or partition does not exist (or the broker does not know it yet).
    UnknownTopicOrPartition,
    /// Authentication or authorization failed: credentials or ACLs need fixing.
    Auth,
    /// librdkafka's fatal error: the client cannot go on as it is (logged as an error).
    Fatal,
}

impl ErrorKind {
    /// What a person can do about it, for a log line; empty when waiting is the answer.
    pub fn hint(self) -> &'static str {
        match self {
            Self::Retriable | Self::Fatal => "",
            Self::Fenced | Self::RebalanceInProgress => {
                " (the group is moving partitions: what is not committed is read again by their \
                 next owner)"
            }
            Self::UnknownTopicOrPartition => {
                " (create the topic, e.g. scripts/kafka.sh topic NAME PARTITIONS, or check its \
                 name)"
            }
            Self::Auth => {
                " (check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD and the topic and group \
                 ACLs)"
            }
        }
    }
}

/// A failed client call: its kind, and a description for a log line (never holding a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub message: String,
}

impl ClientError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A failure worth retrying, or one without a Kafka error code.
    pub fn retriable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retriable, message)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.message, self.kind.hint())
    }
}

/// A consumer of the order topic, as the poller's loop needs it. Every method is called from
/// the polling thread only.
pub trait ConsumerClient {
    /// Whether a session is up. The `kafka` client drops its session after any failed call (the
    /// crate keeps dead connections and stale metadata), and the loop then connects again.
    fn is_connected(&self) -> bool;

    /// Builds the session: metadata loaded, topic checked, partitions taken or subscribed to.
    fn connect(&mut self) -> Result<(), ConnectError>;

    /// Waits up to about `timeout` for records and ownership changes.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Polled>, ClientError>;

    /// Stops fetching these partitions (backpressure) while polls go on, so the group keeps
    /// this member (librdkafka's max.poll.interval.ms). Records a poll has already returned
    /// are the loop's to keep; records fetched and not yet returned are fetched again after
    /// [`ConsumerClient::resume`], from the offset after the last one returned.
    fn pause(&mut self, partitions: &[i32]) -> Result<(), ClientError>;

    /// Fetches these paused partitions again, from the offset after the last record returned.
    fn resume(&mut self, partitions: &[i32]) -> Result<(), ClientError>;

    /// When the loop pauses the partitions of the records it holds back.
    fn pause_bound(&self) -> PauseBound;

    /// Why the calls the client makes by itself inside `poll` besides fetching (metadata,
    /// watermark and group-offset reads) fail: `Some` while the latest call of a kind failed,
    /// `None` once each has worked again. The loop's readiness follows it.
    fn background_failure(&self) -> Option<ClientError>;

    /// Commits, synchronously, the next offset to read of each `(partition, offset)`.
    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), ClientError>;

    /// Hands revoked partitions back to the group, after their last commit.
    fn release(&mut self, partitions: &[i32]) -> Result<(), ClientError>;

    /// The end of each partition it reads, as newest seen: the last stable offset under
    /// read_committed (open transactions are not lag yet), else the high watermark. From what
    /// the client already holds (its fetch responses, librdkafka's statistics): no broker round
    /// trip, so the loop reads it with every commit and shows committed offset and end from one
    /// view (docs/operations.md, "Lag").
    fn high_watermarks(&mut self) -> Result<Vec<(i32, i64)>, ClientError>;

    /// The group's committed offsets of `partitions` (those without one are left out), for the
    /// committed-offset gauge.
    fn committed_offsets(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, ClientError>;

    /// Leaves the group (after the final commit).
    fn close(&mut self);
}

/// A producer for the dead-letter topic.
pub trait DeadLetterProducer {
    /// The topic written to.
    fn topic(&self) -> &str;

    /// Sends one letter and waits until all in-sync replicas have it.
    fn send(&mut self, letter: &DeadLetter) -> Result<(), ClientError>;
}
