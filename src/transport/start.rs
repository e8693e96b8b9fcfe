//! Where a partition is read from: one decision for both clients. When this instance takes a
//! partition ([`Start::decide`]: the group's committed offset against the log's watermarks, or
//! KAFKA_FALLBACK_OFFSET), and when an offset must be checked against the log again mid-stream
//! ([`check_position`]). The inputs differ by client (librdkafka hands over the committed
//! offsets at assignment, the `kafka` client reads them itself); the rule is this file's, pure
//! and unit-tested. What a start reports to the loop ([`Start::report`]) is the same for both:
//! offsets that left the log unread, or a log that is a new one.

use std::fmt;

use super::recreated::Recreated;
use super::runtime::client::Polled;
use crate::config::FallbackOffset;

/// A partition's watermarks at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The first offset still in the log (ListOffsets earliest).
    pub log_start: i64,
    /// The offset the next message will get (ListOffsets latest).
    pub high: i64,
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
                "{}: the topic was recreated; reading from the log start {log_start}",
                Recreated::CommittedPastEnd { committed, high }
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

/// Where a newly assigned partition starts reading, decided from the group's committed offsets
/// and the partition's log (its start and end offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the group's committed offset.
    Committed(i64),
    /// Nothing committed for it: at the log's start or end (KAFKA_FALLBACK_OFFSET); always at
    /// its start when the group committed other partitions of the topic (a partition added to
    /// the topic holds new data, not history).
    Uncommitted(i64),
    /// The committed offset left the log (retention, DeleteRecords): at the log's start;
    /// offsets `committed..log_start` are gone unread.
    LeftTheLog { committed: i64, log_start: i64 },
    /// The committed offset lies past the log's end: the log is a new one (the topic was deleted
    /// and created again, or the log truncated): at its start.
    PastTheEnd {
        committed: i64,
        log_start: i64,
        log_end: i64,
    },
}

impl Start {
    /// The start of one partition: `committed` is the group's offset for it, `marks` its
    /// watermarks, `group_committed` whether the group committed any partition of the topic.
    pub fn decide(
        committed: Option<i64>,
        marks: Watermarks,
        group_committed: bool,
        fallback: FallbackOffset,
    ) -> Self {
        match committed.map(|c| check_position(c, marks)) {
            Some(Resume::InLog(c)) => Start::Committed(c),
            Some(Resume::LeftLog { from, to }) => Start::LeftTheLog {
                committed: from,
                log_start: to,
            },
            Some(Resume::PastEnd {
                committed,
                log_start,
                high,
            }) => Start::PastTheEnd {
                committed,
                log_start,
                log_end: high,
            },
            None if group_committed => Start::Uncommitted(marks.log_start),
            None => Start::Uncommitted(match fallback {
                FallbackOffset::Earliest => marks.log_start,
                FallbackOffset::Latest => marks.high,
            }),
        }
    }

    /// The offset reading starts at.
    pub fn offset(self) -> i64 {
        match self {
            Start::Committed(o) | Start::Uncommitted(o) => o,
            Start::LeftTheLog { log_start, .. } | Start::PastTheEnd { log_start, .. } => log_start,
        }
    }

    /// What the loop must hear about it besides the assignment.
    pub fn report(self, partition: i32) -> Option<Polled> {
        match self {
            Start::Committed(_) | Start::Uncommitted(_) => None,
            Start::LeftTheLog {
                committed,
                log_start,
            } => Some(Polled::Skipped {
                partition,
                from: committed,
                to: log_start,
            }),
            Start::PastTheEnd {
                committed, log_end, ..
            } => Some(Polled::Recreated {
                partition,
                reason: Recreated::CommittedPastEnd {
                    committed,
                    high: log_end,
                }
                .to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(log_start: i64, high: i64) -> Watermarks {
        Watermarks { log_start, high }
    }

    const EARLIEST: FallbackOffset = FallbackOffset::Earliest;
    const LATEST: FallbackOffset = FallbackOffset::Latest;

    #[test]
    fn a_committed_offset_inside_the_log_is_where_reading_starts() {
        for c in [5, 10, 20] {
            assert_eq!(
                Start::decide(Some(c), marks(5, 20), true, LATEST),
                Start::Committed(c)
            );
        }
        assert_eq!(Start::Committed(7).report(0), None);
    }

    #[test]
    fn a_committed_offset_that_left_the_log_is_reported_skipped_up_to_the_log_start() {
        let start = Start::decide(Some(10), marks(15, 20), true, EARLIEST);
        assert_eq!(start.offset(), 15);
        assert_eq!(
            start.report(3),
            Some(Polled::Skipped {
                partition: 3,
                from: 10,
                to: 15
            })
        );
    }

    #[test]
    fn a_committed_offset_past_the_log_end_means_a_new_log_read_from_its_start() {
        let start = Start::decide(Some(30), marks(0, 12), true, LATEST);
        assert_eq!(start.offset(), 0);
        assert!(matches!(
            start.report(0),
            Some(Polled::Recreated { partition: 0, reason }) if reason.contains("30")
        ));
    }

    #[test]
    fn without_a_commit_the_fallback_applies_only_to_a_group_that_committed_nothing() {
        assert_eq!(
            Start::decide(None, marks(4, 9), false, EARLIEST),
            Start::Uncommitted(4)
        );
        assert_eq!(
            Start::decide(None, marks(4, 9), false, LATEST),
            Start::Uncommitted(9)
        );
        // A partition added to a topic the group reads: new data, from its start.
        assert_eq!(
            Start::decide(None, marks(4, 9), true, LATEST),
            Start::Uncommitted(4)
        );
        assert_eq!(Start::Uncommitted(4).report(1), None);
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
