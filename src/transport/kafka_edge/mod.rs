//! Where the `kafka` crate (0.10) is unsafe at the edges, and what makes it safe: each piece is
//! self-contained and called by the `kafka`-crate client around the crate's fetches.
//!
//! - [`gap`]: the crate drops uncompressed messages that precede a gzip/snappy wrapper in one
//!   fetch response; a jump in offsets is read again in small fetches, or proved empty.
//! - [`probe`]: any undecodable partition fails a whole multi-partition fetch; fetching each
//!   partition alone says which one, where and why, in words a person can act on.
//! - [`read`]: one partition fetched alone, with owned messages and typed failures; every
//!   partition's watermarks.
//!
//! Where they are used in the `kafka`-crate client (`transport::kafka_client`), which fetches
//! with the crate's low-level `KafkaClient` and keeps each partition's next offset itself:
//!
//! - at connect and for a partition added later: [`read::read_watermarks`] and
//!   `transport::start::check_position` against the group's committed offset (the only place the
//!   offsets that left the log before they were read can be named; with `latest`, where the log
//!   start is committed first so the backlog is not skipped too);
//! - per fetched message set: when its first offset is above the partition's next offset,
//!   [`gap::fill_gap`] first, its messages ahead of the set's; on a [`gap::GapError`] the
//!   recovered messages go out and the partition stalls at `stuck_at`, so nothing past it is
//!   delivered or committed. Offsets inside one set can repeat (Kafka repeats a batch after a
//!   transaction marker): the client drops the repeats;
//! - when a fetch fails to decode: [`probe::probe_partitions`] names the partition, offset and
//!   codec; what precedes the bad batch is read with [`gap::fill_gap`], and that partition
//!   stalls while the others flow;
//! - every few seconds: [`read::read_watermarks`] and the group's committed offsets into
//!   `transport::recreated::check_recreated` (the rule both clients share); on a verdict, that partition is read again from its log
//!   start.

pub mod gap;
pub mod probe;
pub mod read;
