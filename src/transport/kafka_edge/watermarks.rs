//! Decisions over a partition's watermarks (log start offset, high watermark), pure so they
//! can be tested alone. The poller reads the watermarks every few seconds (ListOffsets
//! earliest and latest) and asks:
//!
//! - [`check_recreated`]: was the topic deleted and created again under the same name? A log
//!   never shrinks: a high watermark at or below an offset already received, a log start that
//!   moved backwards, or fewer partitions than before mean a new log, whose offsets restart at
//!   0. Deleting a topic also deletes the offsets groups committed for it, so a commit of ours
//!   that the group no longer holds says the same, even once the new log has grown past the
//!   old one (Metadata v0 has no topic id to compare). The partition's tracking (offsets seen,
//!   in flight, committed) must then be reset, or the new events would be taken for
//!   redeliveries and dropped.
//!
//! Where a partition starts, and whether an offset is still in the log, is decided once for both
//! clients in `transport::start`.

use std::fmt;

pub use crate::transport::start::Watermarks;

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

/// Why a partition's log is not the one the poller was reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recreated {
    /// The high watermark fell below an offset already received.
    HighWatermarkBelowReceived {
        /// The highest offset received.
        received: i64,
        /// The high watermark now.
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
            Self::HighWatermarkBelowReceived { received, high } => write!(
                f,
                "the high watermark is {high} but offset {received} was already received"
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

/// Whether the partition's log is a new one (the topic was deleted and created again): then
/// reset the partition's tracking and read it from its log start. `None`: the same log.
/// `group_committed` is the offset the group holds now (OffsetFetch; `None` when it holds none).
pub fn check_recreated(
    seen: Seen,
    now: Watermarks,
    group_committed: Option<i64>,
) -> Option<Recreated> {
    if let Some(received) = seen.highest_received {
        if now.high <= received {
            return Some(Recreated::HighWatermarkBelowReceived {
                received,
                high: now.high,
            });
        }
    }
    if let (Some(committed), None) = (seen.committed, group_committed) {
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

    #[test]
    fn a_growing_log_is_the_same_log() {
        let seen = Seen {
            highest_received: Some(41),
            previous: Some(marks(0, 42)),
            committed: Some(40),
        };
        assert_eq!(check_recreated(seen, marks(0, 42), Some(40)), None);
        assert_eq!(
            check_recreated(seen, marks(10, 90), Some(42)),
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
            check_recreated(seen, marks(0, 29), None),
            Some(Recreated::HighWatermarkBelowReceived {
                received: 29,
                high: 29
            })
        );
        assert_eq!(
            check_recreated(seen, marks(0, 0), None),
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
            check_recreated(seen, marks(0, 200), None),
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
            check_recreated(seen, marks(0, 3), None),
            Some(Recreated::HighWatermarkFell { before: 50, now: 3 })
        );
        assert_eq!(check_recreated(Seen::default(), marks(0, 3), None), None);
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
        assert_eq!(check_recreated(seen, marks(0, 60), Some(30)), None);
        assert_eq!(
            check_recreated(seen, marks(0, 60), None),
            Some(Recreated::CommitVanished { committed: 30 })
        );
        assert_eq!(
            Recreated::CommitVanished { committed: 30 }.to_string(),
            "the group no longer holds the committed offset 30"
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
