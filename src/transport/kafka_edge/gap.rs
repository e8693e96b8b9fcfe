//! Filling a jump in offsets. The `kafka` crate 0.10 decodes a fetch response's message set
//! in `MessageSet::from_slice`, and when it meets a gzip or snappy wrapper it returns the
//! wrapper's inner messages alone: uncompressed messages before the wrapper in the same
//! response (and everything after it) are dropped. The consumer then moves past the wrapper,
//! so the dropped ones before it would be lost without a word.
//!
//! So when a poll returns offset F for a partition whose next expected offset is E < F, the
//! poller calls [`fill_gap`] before applying F: it reads [E, F) again in fetches small enough
//! that no response holds an uncompressed message and a wrapper after it, and accounts for
//! every offset of [E, F): read back, or proved absent (compacted away, a transaction marker,
//! which message format v0 does not carry). If it cannot, the caller must not commit past the
//! offset [`GapError::stuck_at`] names.
//!
//! Why small fetches prove absence: Kafka 3.9 answers a Fetch v0 by slicing `max_bytes` of the
//! log from the batch holding the fetch offset and down-converting the complete record batches
//! in the slice to message format v0 (measured with raw Fetch v0 requests): the first converted
//! batch is sent whole even when it outgrows `max_bytes` (5 messages, 160 bytes, for
//! `max_bytes` 150); later ones are cut at the slice's size, and the cut message (or an
//! offset -1 filler) is padding the crate skips. A slice too small for the first batch returns
//! nothing. Transaction markers are dropped. So growing `max_bytes` one byte at a time adds at
//! most one batch; at the smallest size that returns anything, the answer is exactly the first
//! batch holding an offset at or after the fetch offset, and whatever lies between the fetch
//! offset and its first message is not in the log.
//!
//! Two more things the broker does: a fetch that starts on a transaction marker gets the next
//! batch's messages twice in one answer (so offsets are taken once here), and an uncompressed
//! batch is converted to single messages while a gzip, snappy or lz4 batch becomes one wrapper.

use std::fmt;
use std::ops::Range;

use kafka::client::KafkaClient;

use super::read::{fetch_partition, OwnedMessage, ReadError};

/// The first fetch size tried from each offset: about one small record batch.
const FIRST_FETCH_BYTES: i32 = 128;

/// How every offset of a gap was accounted for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapFill {
    /// The messages of the gap, in offset order, each once.
    pub messages: Vec<OwnedMessage>,
    /// Offset ranges proved to hold no message (compacted, transaction markers, …).
    pub absent: Vec<Range<i64>>,
}

impl GapFill {
    fn absent_range(&mut self, range: Range<i64>) {
        if range.is_empty() {
            return;
        }
        match self.absent.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.absent.push(range),
        }
    }
}

impl fmt::Display for GapFill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "recovered {} messages", self.messages.len())?;
        if self.absent.is_empty() {
            return Ok(());
        }
        let ranges: Vec<String> = self
            .absent
            .iter()
            .map(|r| format!("{}..{}", r.start, r.end - 1))
            .collect();
        write!(
            f,
            "; explained: no message at offsets {}",
            ranges.join(", ")
        )
    }
}

/// A gap that could not be accounted for: the caller must not commit past `stuck_at`.
#[derive(Debug)]
pub struct GapError {
    /// The first offset not accounted for; every offset below it is in `recovered`.
    pub stuck_at: i64,
    /// What was accounted for before the failure (offsets below `stuck_at`).
    pub recovered: GapFill,
    /// Why reading on from `stuck_at` failed.
    pub cause: String,
}

impl fmt::Display for GapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offsets from {} on could not be read again ({}); do not commit past {}",
            self.stuck_at, self.cause, self.stuck_at
        )
    }
}

impl std::error::Error for GapError {}

/// Accounts for every offset in `expected..first_seen` of `topic`/`partition`: the messages
/// there, in order, and the ranges proved empty. `max_bytes` bounds one fetch (use the
/// consumer's largest fetch size: a batch bigger than that cannot be read).
pub fn fill_gap(
    client: &mut KafkaClient,
    topic: &str,
    partition: i32,
    expected: i64,
    first_seen: i64,
    max_bytes: i32,
) -> Result<GapFill, GapError> {
    let mut fill = GapFill::default();
    let mut next = expected;
    while next < first_seen {
        let batch = match first_batch_from(client, topic, partition, next, max_bytes) {
            Ok(b) => b,
            Err(cause) => {
                return Err(GapError {
                    stuck_at: next,
                    recovered: fill,
                    cause,
                })
            }
        };
        let mut any = false;
        for m in batch.into_iter().filter(|m| m.offset < first_seen) {
            // Kafka 3.9 repeats messages in a down-converted answer whose fetch offset falls
            // on a transaction marker: take each offset once.
            if m.offset < next {
                continue;
            }
            fill.absent_range(next..m.offset);
            next = m.offset + 1;
            fill.messages.push(m);
            any = true;
        }
        if !any {
            // The first message at or after `next` lies at or past the end of the gap.
            fill.absent_range(next..first_seen);
            next = first_seen;
        }
    }
    Ok(fill)
}

/// Messages from `offset` on, from a response in which no uncompressed message can have been
/// dropped in front of a wrapper: its first message is `offset` itself, or it is the answer to
/// the smallest fetch that returns anything (one record batch). Never empty.
fn first_batch_from(
    client: &mut KafkaClient,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
) -> Result<Vec<OwnedMessage>, String> {
    let mut fetch = |size: i32| {
        fetch_partition(client, topic, partition, offset, size).map_err(|e| describe(&e))
    };
    // Grow the fetch until something comes back; `empty_at` returned nothing.
    let mut empty_at = 0;
    let mut size = FIRST_FETCH_BYTES.min(max_bytes);
    let found = loop {
        let read = match fetch(size) {
            Ok(read) => read,
            // The slice reached a batch that cannot be decoded (lz4, zstd): the batches in
            // front of it can still be read in a smaller fetch.
            Err(cause) => {
                return first_batch_before_failure(&mut fetch, offset, empty_at, size, cause)
            }
        };
        if !read.messages.is_empty() {
            break read.messages;
        }
        if read.high_watermark <= offset {
            return Err(format!(
                "the log ends at {} before offset {offset}",
                read.high_watermark
            ));
        }
        if size >= max_bytes {
            return Err(format!(
                "no complete message within {max_bytes} bytes from offset {offset}"
            ));
        }
        empty_at = size;
        size = size.saturating_mul(2).min(max_bytes);
    };
    if found[0].offset == offset {
        return Ok(found);
    }
    // Something before the first message may have been dropped with a wrapper: find the
    // smallest fetch that returns anything, which holds one batch only.
    let (mut lo, mut hi, mut best) = (empty_at, size, found);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let read = fetch(mid)?;
        if read.messages.is_empty() {
            lo = mid;
        } else {
            hi = mid;
            best = read.messages;
        }
    }
    Ok(best)
}

/// A fetch of `failed_at` bytes from `offset` failed and one of `empty_at` returned nothing:
/// the smallest size between them that returns messages returns the first batch alone (in
/// front of the undecodable one). When no size does, the batch at `offset` itself cannot be
/// read: `cause`.
fn first_batch_before_failure(
    fetch: &mut impl FnMut(i32) -> Result<super::read::PartitionRead, String>,
    offset: i64,
    empty_at: i32,
    failed_at: i32,
    cause: String,
) -> Result<Vec<OwnedMessage>, String> {
    let (mut lo, mut hi) = (empty_at, failed_at);
    let mut best: Option<Vec<OwnedMessage>> = None;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fetch(mid) {
            Ok(read) if read.messages.is_empty() => lo = mid,
            Ok(read) => {
                hi = mid;
                best = Some(read.messages);
            }
            Err(_) => hi = mid,
        }
    }
    match best {
        Some(found) if found.first().is_some_and(|m| m.offset >= offset) => Ok(found),
        _ => Err(cause),
    }
}

fn describe(e: &ReadError) -> String {
    match e {
        ReadError::UnsupportedCompression => {
            "a batch compressed with lz4, which the kafka crate cannot decode".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_absent_ranges_merge_and_read_as_inclusive_offsets() {
        let mut fill = GapFill::default();
        fill.absent_range(3..4);
        fill.absent_range(4..6);
        fill.absent_range(6..6); // empty: ignored
        fill.absent_range(9..10);
        assert_eq!(fill.absent, vec![3..6, 9..10]);
        fill.messages.push(OwnedMessage {
            offset: 7,
            key: vec![],
            value: b"v".to_vec(),
        });
        assert_eq!(
            fill.to_string(),
            "recovered 1 messages; explained: no message at offsets 3..5, 9..9"
        );
    }

    #[test]
    fn a_gap_error_names_the_offset_not_to_commit_past() {
        let e = GapError {
            stuck_at: 12,
            recovered: GapFill::default(),
            cause: "timeout".into(),
        };
        assert_eq!(
            e.to_string(),
            "offsets from 12 on could not be read again (timeout); do not commit past 12"
        );
    }
}
