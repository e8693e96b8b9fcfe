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
}

/// Why connecting did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The broker or topic is not there (yet): back off and retry.
    Retry(String),
    /// The configuration does not match the cluster: stop with exit code 2.
    Misconfigured(String),
}

/// A failed client call, described for a log line (never holding a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError(pub String);

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

    /// Commits, synchronously, the next offset to read of each `(partition, offset)`.
    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), ClientError>;

    /// Hands revoked partitions back to the group, after their last commit.
    fn release(&mut self, partitions: &[i32]) -> Result<(), ClientError>;

    /// The high watermark (offset after the newest record) of each partition it knows, for the
    /// lag gauge.
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
