//! Which offsets may be committed. Events of one partition finish out of order across workers,
//! so a partition's commit point is the end of its contiguous prefix of finished offsets (the
//! idea behind Confluent's Parallel Consumer): never past an event whose transaction has not
//! committed. Offsets are tracked as received, so gaps left by compaction or transaction
//! markers never hold the prefix back.

use std::collections::{BTreeMap, HashMap};

/// Offsets of one partition between the committed point and the newest received.
#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Received and not yet below the commit point: offset -> finished?
    open: BTreeMap<i64, bool>,
    /// Every offset below this one is finished (the next offset to read after a restart).
    finished_below: Option<i64>,
    /// The last commit point sent to Kafka.
    committed: Option<i64>,
}

impl PartitionOffsets {
    fn advance(&mut self) {
        while let Some(entry) = self.open.first_entry() {
            if !*entry.get() {
                break;
            }
            let offset = *entry.key();
            entry.remove();
            self.finished_below = Some(offset + 1);
        }
    }
}

/// Per-partition bookkeeping of received, finished and committed offsets.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
    /// Received and not finished, over all partitions (kept, not counted: read every loop).
    in_flight: usize,
}

impl OffsetTracker {
    /// An empty tracker (a new process or a rebuilt consumer starts from Kafka's committed
    /// offsets).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a received offset. Returns `false` when it was seen before (still in flight, or
    /// finished): a rebuilt consumer re-reads from the last commit, and those events must not
    /// be applied twice while their first copy is still queued.
    pub fn receive(&mut self, partition: i32, offset: i64) -> bool {
        let p = self.partitions.entry(partition).or_default();
        if p.finished_below.is_some_and(|below| offset < below) || p.open.contains_key(&offset) {
            return false;
        }
        p.open.insert(offset, false);
        self.in_flight += 1;
        true
    }

    /// Marks a received offset finished: its transaction committed, or it went to the
    /// dead-letter topic.
    pub fn finish(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            if let Some(done) = p.open.get_mut(&offset) {
                if !*done {
                    *done = true;
                    self.in_flight -= 1;
                }
                p.advance();
            }
        }
    }

    /// The client read `partition` up to `to`: every offset below it not received holds no
    /// record (transaction markers, aborted records left out by read_committed), so the commit
    /// point may reach `to` once every received offset below it is finished. Offsets below
    /// `to` received later are taken for redeliveries.
    pub fn pass(&mut self, partition: i32, to: i64) {
        let p = self.partitions.entry(partition).or_default();
        if p.finished_below.is_some_and(|below| below >= to) || to <= 0 {
            return;
        }
        // The last offset below `to` stands for all of them, finished: the prefix moves past
        // it once what precedes it is finished.
        p.open.entry(to - 1).or_insert(true);
        p.advance();
    }

    /// Partitions whose commit point moved since the last commit: `(partition, next offset to
    /// read)`, ascending by partition.
    pub fn ready_to_commit(&self) -> Vec<(i32, i64)> {
        let mut ready: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(&partition, p)| match (p.finished_below, p.committed) {
                (Some(next), Some(done)) if next <= done => None,
                (Some(next), _) => Some((partition, next)),
                (None, _) => None,
            })
            .collect();
        ready.sort_unstable();
        ready
    }

    /// Records that Kafka accepted a commit point.
    pub fn committed(&mut self, partition: i32, next: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.committed = Some(p.committed.map_or(next, |c| c.max(next)));
    }

    /// The last commit point of a partition.
    pub fn committed_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.committed)
    }

    /// Events received and not yet finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events of one partition received and not yet finished.
    pub fn in_flight_of(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.open.values().filter(|done| !**done).count())
    }

    /// Drops everything known about a partition handed back to the group, so that a later
    /// assignment starts cleanly from Kafka's committed offset. Returns its unfinished offsets
    /// (abandoned: never to be committed by this assignment).
    pub fn forget(&mut self, partition: i32) -> Vec<i64> {
        let Some(p) = self.partitions.remove(&partition) else {
            return Vec::new();
        };
        let unfinished: Vec<i64> = p
            .open
            .into_iter()
            .filter(|(_, done)| !*done)
            .map(|(offset, _)| offset)
            .collect();
        self.in_flight -= unfinished.len();
        unfinished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_commit_until_the_first_offset_finishes() {
        let mut t = OffsetTracker::new();
        assert!(t.receive(0, 10));
        assert!(t.receive(0, 11));
        t.finish(0, 11);
        assert_eq!(t.ready_to_commit(), vec![]);
        t.finish(0, 10);
        assert_eq!(t.ready_to_commit(), vec![(0, 12)]);
    }

    #[test]
    fn out_of_order_completion_commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        for o in 0..6 {
            t.receive(3, o);
        }
        for o in [5, 1, 0, 3] {
            t.finish(3, o);
        }
        assert_eq!(t.ready_to_commit(), vec![(3, 2)]);
        assert_eq!(t.in_flight(), 2);
        t.finish(3, 2);
        assert_eq!(t.ready_to_commit(), vec![(3, 4)]);
        t.finish(3, 4);
        assert_eq!(t.ready_to_commit(), vec![(3, 6)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_block() {
        // Compacted topics and transaction markers leave holes: only received offsets count.
        let mut t = OffsetTracker::new();
        for o in [100, 105, 230] {
            t.receive(1, o);
        }
        t.finish(1, 105);
        t.finish(1, 100);
        assert_eq!(t.ready_to_commit(), vec![(1, 106)]);
        t.finish(1, 230);
        assert_eq!(t.ready_to_commit(), vec![(1, 231)]);
    }

    #[test]
    fn offsets_passed_by_the_client_move_the_commit_point_once_what_precedes_is_finished() {
        // Records 10 and 11, then a commit marker at 12: the client has read up to 13.
        let mut t = OffsetTracker::new();
        t.receive(0, 10);
        t.receive(0, 11);
        t.pass(0, 13);
        t.finish(0, 11);
        assert_eq!(t.ready_to_commit(), vec![], "10 is not finished");
        t.finish(0, 10);
        assert_eq!(t.ready_to_commit(), vec![(0, 13)]);
        assert_eq!(t.in_flight(), 0, "a marker is never in flight");
        assert!(!t.receive(0, 12), "below the pass: not a record of ours");
        assert!(t.receive(0, 13));
        // Only markers since the assignment (nothing received): straight to the pass.
        t.pass(4, 7);
        assert_eq!(t.ready_to_commit(), vec![(0, 13), (4, 7)]);
        // A pass at or below the commit point changes nothing.
        t.committed(4, 7);
        t.pass(4, 5);
        t.pass(4, 7);
        assert_eq!(t.ready_to_commit(), vec![(0, 13)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.receive(0, 0);
        t.receive(1, 0);
        t.receive(1, 1);
        t.finish(1, 0);
        t.finish(1, 1);
        assert_eq!(t.ready_to_commit(), vec![(1, 2)]);
        t.finish(0, 0);
        assert_eq!(t.ready_to_commit(), vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn committed_points_are_not_offered_again() {
        let mut t = OffsetTracker::new();
        t.receive(0, 7);
        t.finish(0, 7);
        assert_eq!(t.ready_to_commit(), vec![(0, 8)]);
        t.committed(0, 8);
        assert_eq!(t.ready_to_commit(), vec![]);
        assert_eq!(t.committed_offset(0), Some(8));
        t.receive(0, 8);
        t.finish(0, 8);
        assert_eq!(t.ready_to_commit(), vec![(0, 9)]);
    }

    #[test]
    fn redelivery_after_a_consumer_rebuild_is_recognised() {
        // A rebuilt consumer re-reads from the last commit: offsets still in flight or already
        // finished are not received twice; new ones are.
        let mut t = OffsetTracker::new();
        for o in 0..4 {
            assert!(t.receive(0, o));
        }
        t.finish(0, 0);
        t.finish(0, 2);
        t.committed(0, 1);
        for o in 1..4 {
            assert!(!t.receive(0, o), "offset {o} seen twice");
        }
        assert!(!t.receive(0, 0));
        assert!(t.receive(0, 4));
    }

    #[test]
    fn a_restart_starts_empty_and_resumes_from_kafka() {
        // A new process knows nothing; Kafka hands it events from the committed offset on.
        let mut t = OffsetTracker::new();
        assert!(t.receive(0, 42));
        t.finish(0, 42);
        assert_eq!(t.ready_to_commit(), vec![(0, 43)]);
    }

    #[test]
    fn in_flight_counts_received_minus_finished() {
        let mut t = OffsetTracker::new();
        for o in 0..5 {
            t.receive(0, o);
        }
        t.receive(1, 0);
        t.finish(0, 3);
        t.finish(0, 3); // twice: counted once
        t.finish(1, 0);
        assert_eq!(t.in_flight(), 4);
        assert!(!t.receive(0, 3)); // a redelivery adds nothing
        assert_eq!(t.in_flight(), 4);
    }

    #[test]
    fn a_forgotten_partition_starts_again_from_scratch() {
        let mut t = OffsetTracker::new();
        for o in 0..4 {
            t.receive(2, o);
        }
        t.receive(5, 0);
        t.finish(2, 0);
        t.finish(2, 2);
        t.committed(2, 1);
        assert_eq!(t.in_flight_of(2), 2);
        assert_eq!(t.forget(2), vec![1, 3]);
        assert_eq!((t.in_flight(), t.in_flight_of(2)), (1, 0));
        assert_eq!(t.committed_offset(2), None);
        // Assigned again later: offsets from the group's commit point are new events.
        assert!(t.receive(2, 1));
        t.finish(2, 1);
        assert_eq!(t.ready_to_commit(), vec![(2, 2)]);
        assert_eq!(t.forget(9), Vec::<i64>::new());
    }

    #[test]
    fn finishing_unknown_offsets_is_harmless() {
        let mut t = OffsetTracker::new();
        t.finish(9, 1);
        t.receive(0, 1);
        t.finish(0, 2);
        assert_eq!(t.ready_to_commit(), vec![]);
        assert_eq!(t.in_flight(), 1);
    }
}
