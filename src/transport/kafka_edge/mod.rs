//! Where the `kafka` crate (0.10) is unsafe at the edges, and what makes it safe: each piece is
//! self-contained and called from the poller's loop around the crate's `Consumer`.
//!
//! - [`gap`]: the crate drops uncompressed messages that precede a gzip/snappy wrapper in one
//!   fetch response; a jump in offsets is read again in small fetches, or proved empty.
//! - [`probe`]: any undecodable partition fails the whole `Consumer::poll`; fetching each
//!   partition alone says which one, where and why, in words a person can act on.
//! - [`watermarks`]: a topic deleted and recreated, or a committed offset that left the log,
//!   decided from log start and high watermark (pure functions).
//! - [`read`]: one partition fetched alone, with owned messages and typed failures.

pub mod gap;
pub mod probe;
pub mod read;
pub mod watermarks;
