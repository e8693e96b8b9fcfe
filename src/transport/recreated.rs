//! Whether a partition's log is still the one being read, or a new one (the topic was deleted
//! and created again under the same name): one decision for both clients, pure, from whatever
//! evidence the client has. A new log's offsets start again at 0, so the partition's tracking
//! (offsets seen, in flight, committed) must be reset and it is read from its log start, or
//! the new events would be taken for redeliveries and dropped.
//!
//! The evidence, strongest first: the topic's id changed (KIP-516; librdkafka reads it, the
//! `kafka` crate's Metadata v0 has none); an offset was read below the one expected next; a
//! log never shrinks, so a high watermark at or below an offset already received, a committed
//! offset past the log's end, a log start that moved backwards, or a falling high watermark;
//! deleting a topic deletes the offsets groups committed for it, so a commit of ours that the
//! group no longer holds, even once the new log has grown past the old one; and a topic cannot
//! lose partitions. Where a partition starts is `transport::start`'s.

use std::fmt;

use super::start::Watermarks;
use super::topic_id::TopicId;

/// What the poller knew of a partition before reading its watermarks again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// The highest offset received from it, if any.
    pub highest_received: Option<i64>,
    /// The watermarks read last time, if any.
    pub previous: Option<Watermarks>,
    /// The last offset this process committed for the partition, if any.
    pub committed: Option<i64>,
}

/// What a client can tell about a partition's log now, each piece when it has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The topic's id when it was read before, and now.
    pub topic_id: Option<(TopicId, TopicId)>,
    /// An offset just read, and the offset expected next (one past the last one read).
    pub read: Option<(i64, i64)>,
    /// What was known of the partition before its watermarks were read again.
    pub seen: Seen,
    /// Its watermarks, just read.
    pub now: Option<Watermarks>,
    /// The offset the group holds for it, just read (`Some(None)`: it holds none).
    pub group_committed: Option<Option<i64>>,
}

/// Why a partition's log is not the one that was being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recreated {
    /// The topic's id changed.
    TopicIdChanged {
        /// The id before.
        before: TopicId,
        /// The id now.
        now: TopicId,
    },
    /// An offset was read below the one expected next: the log started again.
    OffsetWentBack {
        /// The offset read.
        offset: i64,
        /// The offset expected.
        expected: i64,
    },
    /// The high watermark fell below an offset already received.
    HighWatermarkBelowReceived {
        /// The highest offset received.
        received: i64,
        /// The high watermark now.
        high: i64,
    },
    /// The group's committed offset lies past the log's end (found at assignment).
    CommittedPastEnd {
        /// The committed offset.
        committed: i64,
        /// The log's end.
        high: i64,
    },
    /// The log start moved backwards.
    LogStartMovedBack {
        /// The log start before.
        before: i64,
        /// The log start now.
        now: i64,
    },
    /// The group no longer holds the offset this process committed (deleting a topic deletes
    /// its committed offsets).
    CommitVanished {
        /// The offset committed before.
        committed: i64,
    },
    /// The high watermark fell (nothing received yet to compare with).
    HighWatermarkFell {
        /// The high watermark before.
        before: i64,
        /// The high watermark now.
        now: i64,
    },
}

impl fmt::Display for Recreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TopicIdChanged { before, now } => {
                write!(f, "the topic's id changed from {before} to {now}")
            }
            Self::OffsetWentBack { offset, expected } => write!(
                f,
                "offset {offset} was read after offset {}: the log started again",
                expected - 1
            ),
            Self::HighWatermarkBelowReceived { received, high } => write!(
                f,
                "the high watermark is {high} but offset {received} was already received"
            ),
            Self::CommittedPastEnd { committed, high } => write!(
                f,
                "the group's committed offset {committed} lies past the log's end {high}"
            ),
            Self::LogStartMovedBack { before, now } => {
                write!(f, "the log start moved back from {before} to {now}")
            }
            Self::CommitVanished { committed } => write!(
                f,
                "the group no longer holds the committed offset {committed}"
            ),
            Self::HighWatermarkFell { before, now } => {
                write!(f, "the high watermark fell from {before} to {now}")
            }
        }
    }
}

/// Whether the partition's log is a new one: then reset the partition's tracking and read it
/// from its log start. `None`: the same log, as far as the evidence goes.
pub fn check_recreated(evidence: &Evidence) -> Option<Recreated> {
    if let Some((before, now)) = evidence.topic_id {
        if before != now {
            return Some(Recreated::TopicIdChanged { before, now });
        }
    }
    if let Some((offset, expected)) = evidence.read {
        if offset < expected {
            return Some(Recreated::OffsetWentBack { offset, expected });
        }
    }
    let seen = evidence.seen;
    let now = evidence.now?;
    if let Some(received) = seen.highest_received {
        if now.high <= received {
            return Some(Recreated::HighWatermarkBelowReceived {
                received,
                high: now.high,
            });
        }
    }
    if let (Some(committed), Some(None)) = (seen.committed, evidence.group_committed) {
        return Some(Recreated::CommitVanished { committed });
    }
    let previous = seen.previous?;
    if now.log_start < previous.log_start {
        return Some(Recreated::LogStartMovedBack {
            before: previous.log_start,
            now: now.log_start,
        });
    }
    if now.high < previous.high {
        return Some(Recreated::HighWatermarkFell {
            before: previous.high,
            now: now.high,
        });
    }
    None
}

/// Whether the topic lost partitions: a topic cannot shrink, so fewer partitions than before
/// means it was deleted and created again. Returns the partitions that vanished.
pub fn vanished_partitions(before: &[i32], now: &[i32]) -> Vec<i32> {
    before
        .iter()
        .copied()
        .filter(|p| !now.contains(p))
        .collect()
}

/// Partitions that appeared since the last metadata read: read them from their log start (a
/// partition no member of the group ever committed is new data, not history).
pub fn new_partitions(before: &[i32], now: &[i32]) -> Vec<i32> {
    now.iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(log_start: i64, high: i64) -> Watermarks {
        Watermarks { log_start, high }
    }

    /// What the `kafka` client knows every few seconds: what it saw, the watermarks and the
    /// group's offset just read.
    fn watermarks(seen: Seen, now: Watermarks, group: Option<i64>) -> Option<Recreated> {
        check_recreated(&Evidence {
            seen,
            now: Some(now),
            group_committed: Some(group),
            ..Evidence::default()
        })
    }

    #[test]
    fn a_growing_log_is_the_same_log() {
        let seen = Seen {
            highest_received: Some(41),
            previous: Some(marks(0, 42)),
            committed: Some(40),
        };
        assert_eq!(watermarks(seen, marks(0, 42), Some(40)), None);
        assert_eq!(
            watermarks(seen, marks(10, 90), Some(42)),
            None,
            "retention moved the start"
        );
    }

    #[test]
    fn a_high_watermark_at_or_below_a_received_offset_is_a_new_log() {
        let seen = Seen {
            highest_received: Some(29),
            previous: Some(marks(0, 30)),
            committed: None,
        };
        assert_eq!(
            watermarks(seen, marks(0, 29), None),
            Some(Recreated::HighWatermarkBelowReceived {
                received: 29,
                high: 29
            })
        );
        assert_eq!(
            watermarks(seen, marks(0, 0), None),
            Some(Recreated::HighWatermarkBelowReceived {
                received: 29,
                high: 0
            })
        );
    }

    #[test]
    fn a_log_start_moving_back_is_a_new_log() {
        let seen = Seen {
            highest_received: None,
            previous: Some(marks(100, 150)),
            committed: None,
        };
        assert_eq!(
            watermarks(seen, marks(0, 200), None),
            Some(Recreated::LogStartMovedBack {
                before: 100,
                now: 0
            })
        );
    }

    #[test]
    fn a_falling_high_watermark_is_a_new_log_even_with_nothing_received() {
        let seen = Seen {
            highest_received: None,
            previous: Some(marks(0, 50)),
            committed: None,
        };
        assert_eq!(
            watermarks(seen, marks(0, 3), None),
            Some(Recreated::HighWatermarkFell { before: 50, now: 3 })
        );
        assert_eq!(watermarks(Seen::default(), marks(0, 3), None), None);
    }

    #[test]
    fn a_recreated_log_that_outgrew_the_old_one_is_found_by_its_vanished_commit() {
        // 30 events read and committed; the topic recreated and refilled with 60: the
        // watermarks alone look like growth, but the group lost our commit.
        let seen = Seen {
            highest_received: Some(29),
            previous: Some(marks(0, 30)),
            committed: Some(30),
        };
        assert_eq!(watermarks(seen, marks(0, 60), Some(30)), None);
        assert_eq!(
            watermarks(seen, marks(0, 60), None),
            Some(Recreated::CommitVanished { committed: 30 })
        );
        assert_eq!(
            Recreated::CommitVanished { committed: 30 }.to_string(),
            "the group no longer holds the committed offset 30"
        );
    }

    #[test]
    fn a_changed_topic_id_or_an_offset_read_again_is_a_new_log_whatever_the_rest_says() {
        let id = |low| TopicId::from_parts(1, low);
        let by_id = |before, now| {
            check_recreated(&Evidence {
                topic_id: Some((id(before), id(now))),
                now: Some(marks(0, 100)),
                ..Evidence::default()
            })
        };
        assert_eq!(by_id(7, 7), None);
        assert_eq!(
            by_id(7, 8),
            Some(Recreated::TopicIdChanged {
                before: id(7),
                now: id(8)
            })
        );
        let read = |offset, expected| {
            check_recreated(&Evidence {
                read: Some((offset, expected)),
                ..Evidence::default()
            })
        };
        assert_eq!(read(10, 10), None);
        assert_eq!(
            read(12, 10),
            None,
            "a jump forward is markers or compaction"
        );
        assert_eq!(
            read(0, 10).map(|r| r.to_string()),
            Some("offset 0 was read after offset 9: the log started again".into())
        );
    }

    #[test]
    fn partitions_that_vanish_or_appear() {
        assert_eq!(vanished_partitions(&[0, 1, 2, 3], &[0, 1]), vec![2, 3]);
        assert_eq!(vanished_partitions(&[0, 1], &[0, 1, 2]), Vec::<i32>::new());
        assert_eq!(new_partitions(&[0, 1], &[0, 1, 2, 3]), vec![2, 3]);
        assert_eq!(new_partitions(&[0, 1], &[0, 1]), Vec::<i32>::new());
    }
}
