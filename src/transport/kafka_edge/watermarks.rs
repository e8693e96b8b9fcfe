//! Decisions over a partition's watermarks (log start offset, high watermark), pure so they
//! can be tested alone. The poller reads the watermarks every few seconds (ListOffsets
//! earliest and latest) and asks two questions:
//!
//! - [`check_recreated`]: was the topic deleted and created again under the same name? A log
//!   never shrinks: a high watermark at or below an offset already received, a log start that
//!   moved backwards, or fewer partitions than before mean a new log, whose offsets restart at
//!   0. Deleting a topic also deletes the offsets groups committed for it, so a commit of ours
//!   that the group no longer holds says the same, even once the new log has grown past the
//!   old one (Metadata v0 has no topic id to compare). The partition's tracking (offsets seen,
//!   in flight, committed) must then be reset, or the new events would be taken for
//!   redeliveries and dropped.
//! - [`check_position`]: is the offset the consumer resumes from (the group's commit) still in
//!   the log? When retention or `DeleteRecords` removed it, reading starts at the log start
//!   and the offsets in between are skipped for good: say which, and count them.

use std::fmt;

/// A partition's watermarks at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The first offset still in the log (ListOffsets earliest).
    pub log_start: i64,
    /// The offset the next message will get (ListOffsets latest).
    pub high: i64,
}

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

/// Where reading resumes, given the offset the group committed (or the poller would read next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The offset is in the log (or at its end): read from it.
    InLog(i64),
    /// The offset left the log (retention, DeleteRecords): the offsets `from..to` are gone;
    /// read from `to`, the log start. Log it and count `to - from` skipped offsets.
    LeftLog {
        /// The committed offset.
        from: i64,
        /// The log start.
        to: i64,
    },
    /// The offset is past the log's end: the log is not the one that offset was committed
    /// for (recreated). Read from the log start.
    PastEnd {
        /// The committed offset.
        committed: i64,
        /// The log start to read from.
        log_start: i64,
        /// The high watermark.
        high: i64,
    },
}

impl Resume {
    /// The offset to read from.
    pub fn offset(self) -> i64 {
        match self {
            Self::InLog(o) => o,
            Self::LeftLog { to, .. } => to,
            Self::PastEnd { log_start, .. } => log_start,
        }
    }

    /// How many offsets are skipped for good.
    pub fn skipped(self) -> i64 {
        match self {
            Self::LeftLog { from, to } => to - from,
            Self::InLog(_) | Self::PastEnd { .. } => 0,
        }
    }
}

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InLog(o) => write!(f, "resuming at offset {o}"),
            Self::LeftLog { from, to } => write!(
                f,
                "committed offset {from} left the log (log start {to}); skipping offsets \
                 {from}..{} ({} offsets)",
                to - 1,
                to - from
            ),
            Self::PastEnd {
                committed,
                log_start,
                high,
            } => write!(
                f,
                "committed offset {committed} is past the log's end {high} (the topic was \
                 recreated); reading from the log start {log_start}"
            ),
        }
    }
}

/// Where to resume reading a partition whose group committed `committed`.
pub fn check_position(committed: i64, now: Watermarks) -> Resume {
    if committed < now.log_start {
        Resume::LeftLog {
            from: committed,
            to: now.log_start,
        }
    } else if committed > now.high {
        Resume::PastEnd {
            committed,
            log_start: now.log_start,
            high: now.high,
        }
    } else {
        Resume::InLog(committed)
    }
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

    #[test]
    fn a_committed_offset_inside_the_log_resumes_there() {
        assert_eq!(check_position(5, marks(0, 10)), Resume::InLog(5));
        assert_eq!(
            check_position(10, marks(0, 10)),
            Resume::InLog(10),
            "at the end"
        );
        assert_eq!(
            check_position(3, marks(3, 10)),
            Resume::InLog(3),
            "at the start"
        );
        assert_eq!(check_position(5, marks(0, 10)).skipped(), 0);
    }

    #[test]
    fn a_committed_offset_below_the_log_start_skips_to_it_and_says_how_many() {
        let r = check_position(5, marks(12, 20));
        assert_eq!(r, Resume::LeftLog { from: 5, to: 12 });
        assert_eq!(r.offset(), 12);
        assert_eq!(r.skipped(), 7);
        assert_eq!(
            r.to_string(),
            "committed offset 5 left the log (log start 12); skipping offsets 5..11 (7 offsets)"
        );
    }

    #[test]
    fn a_committed_offset_past_the_end_reads_the_new_log_from_its_start() {
        let r = check_position(60, marks(0, 30));
        assert_eq!(
            r,
            Resume::PastEnd {
                committed: 60,
                log_start: 0,
                high: 30
            }
        );
        assert_eq!(r.offset(), 0);
        assert_eq!(r.skipped(), 0);
    }
}
