//! Where the `kafka` crate (0.10) is unsafe at the edges, and what makes it safe: each piece is
//! self-contained and called from the poller's loop around the crate's `Consumer`.
//!
//! - [`gap`]: the crate drops uncompressed messages that precede a gzip/snappy wrapper in one
//!   fetch response; a jump in offsets is read again in small fetches, or proved empty.
//! - [`probe`]: any undecodable partition fails the whole `Consumer::poll`; fetching each
//!   partition alone says which one, where and why, in words a person can act on.
//! - [`watermarks`]: a topic deleted and recreated, or a committed offset that left the log,
//!   decided from log start and high watermark (pure functions).
//! - [`read`]: one partition fetched alone, with owned messages and typed failures; every
//!   partition's watermarks.
//!
//! Where they belong in the `kafka`-crate client (it owns the crate's `Consumer`, whose
//! `client_mut()` lends the low-level client these functions take):
//!
//! - at connect, before `Consumer::create`: [`read::read_watermarks`] and, per partition,
//!   [`watermarks::check_position`] against the group's committed offset. The crate falls back
//!   to `KAFKA_FALLBACK_OFFSET` without a word when a committed offset is out of range, so this
//!   is the only place the skipped offsets can be named (and, with `latest`, the place to
//!   commit the log start first so the backlog is not skipped too);
//! - in `poll`, per message set: when its first offset is above the partition's next expected
//!   offset, [`gap::fill_gap`] first; its messages go out before the set's. On a
//!   [`gap::GapError`] the recovered messages go out and the consumer is rebuilt (it has
//!   already moved past the gap), so nothing past `stuck_at` is delivered or committed. Offsets
//!   inside one set can repeat (Kafka repeats a batch after a transaction marker): the offset
//!   tracker drops the repeats;
//! - when `poll` fails: [`probe::probe_partitions`] with each partition's next offset, before
//!   the consumer is dropped, to name the stuck partition (and to leave it out of the next
//!   consumer, so the others move on);
//! - every few seconds: [`read::read_watermarks`] and the group's committed offsets into
//!   [`watermarks::check_recreated`]; on a verdict, reset that partition's tracking and read it
//!   from its log start.

pub mod gap;
pub mod probe;
pub mod read;
pub mod watermarks;
