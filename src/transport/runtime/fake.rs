//! A scripted stand-in for a Kafka client, for unit tests of the poller's loop: the test queues
//! what each poll returns (records, assignments, revocations, errors) and afterwards reads what
//! the loop did with the client (commits, hand-backs, dead letters), in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::client::{
    ClientError, ConnectError, ConsumerClient, DeadLetterProducer, ErrorKind, PauseBound, Polled,
};
use super::dead_letter::DeadLetter;

/// What one poll does.
#[derive(Debug, Clone)]
pub enum Step {
    /// Returns these.
    Deliver(Vec<Polled>),
    /// Fails; like the `kafka` client, the session is then dropped and the loop reconnects.
    Fail(String),
}

/// A call the loop made, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `connect`.
    Connect,
    /// `commit` of these points.
    Commit(Vec<(i32, i64)>),
    /// `release` of these partitions.
    Release(Vec<i32>),
    /// `pause` of these partitions.
    Pause(Vec<i32>),
    /// `resume` of these partitions.
    Resume(Vec<i32>),
    /// A dead letter accepted for this source position.
    DeadLetter(i32, i64),
    /// `close`.
    Close,
}

/// The broker's side, shared between the test and the fake clients.
#[derive(Debug, Default)]
pub struct FakeBroker {
    /// What the next polls return; an empty script returns nothing after a short wait.
    pub script: VecDeque<Step>,
    /// Polls so far.
    pub polls: u64,
    /// How long each poll was allowed to wait, the latest last (the last 1000).
    pub poll_waits: VecDeque<Duration>,
    /// Every call but `poll`, in order.
    pub calls: Vec<Call>,
    /// The group's committed offsets.
    pub committed: BTreeMap<i32, i64>,
    /// Connect attempts to refuse (as "broker not reachable") before one succeeds.
    pub refuse_connects: u32,
    /// When set, every connect fails with this misconfiguration.
    pub misconfigured: Option<String>,
    /// Dead letters accepted.
    pub dead_letters: Vec<DeadLetter>,
    /// Dead-letter sends to fail before one succeeds.
    pub refuse_dead_letters: u32,
    /// Commits to fail before one succeeds.
    pub refuse_commits: u32,
    /// How they fail (by default: on the way, as with the broker gone).
    pub commit_refusal: ErrorKind,
    /// High-watermark reads to fail before one succeeds.
    pub refuse_watermarks: u32,
    /// Each partition's end as the client has seen it: what `high_watermarks` returns.
    pub ends: BTreeMap<i32, i64>,
    /// Committed-offset reads to fail before one succeeds.
    pub refuse_committed_offsets: u32,
    /// What `background_failure` reports (a failing metadata read inside `poll`, say).
    pub background_failure: Option<String>,
    /// What `pause_bound` says (by default: pause as soon as a record is held, like `kafka`).
    pub pause_bound: PauseBound,
    /// Partitions paused now (the script still delivers what it holds: a poll in progress
    /// returns records of a partition paused meanwhile).
    pub paused: BTreeSet<i32>,
    connected: bool,
}

/// A handle on a shared [`FakeBroker`].
#[derive(Debug, Clone, Default)]
pub struct Fake(Arc<Mutex<FakeBroker>>);

impl Fake {
    /// A broker with an empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// The broker's state.
    pub fn state(&self) -> MutexGuard<'_, FakeBroker> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a poll result.
    pub fn then(&self, step: Step) {
        self.state().script.push_back(step);
    }

    /// A consumer client on this broker.
    pub fn consumer(&self) -> Box<dyn ConsumerClient> {
        Box::new(self.clone())
    }

    /// A dead-letter producer on this broker.
    pub fn producer(&self) -> Box<dyn DeadLetterProducer> {
        Box::new(self.clone())
    }
}

impl ConsumerClient for Fake {
    fn is_connected(&self) -> bool {
        self.state().connected
    }

    fn connect(&mut self) -> Result<(), ConnectError> {
        let mut s = self.state();
        s.calls.push(Call::Connect);
        if let Some(m) = s.misconfigured.clone() {
            return Err(ConnectError::Misconfigured(m));
        }
        if s.refuse_connects > 0 {
            s.refuse_connects -= 1;
            return Err(ConnectError::Retry("fake broker not reachable".into()));
        }
        s.connected = true;
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Polled>, ClientError> {
        let step = {
            let mut s = self.state();
            s.polls += 1;
            if s.poll_waits.len() == 1000 {
                s.poll_waits.pop_front();
            }
            s.poll_waits.push_back(timeout);
            s.script.pop_front()
        };
        match step {
            Some(Step::Deliver(polled)) => Ok(polled),
            Some(Step::Fail(m)) => {
                self.state().connected = false;
                Err(ClientError::retriable(m))
            }
            None => {
                std::thread::sleep(timeout.min(Duration::from_millis(5)));
                Ok(Vec::new())
            }
        }
    }

    fn pause(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        let mut s = self.state();
        s.calls.push(Call::Pause(partitions.to_vec()));
        s.paused.extend(partitions.iter().copied());
        Ok(())
    }

    fn resume(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        let mut s = self.state();
        s.calls.push(Call::Resume(partitions.to_vec()));
        for p in partitions {
            s.paused.remove(p);
        }
        Ok(())
    }

    fn background_failure(&self) -> Option<ClientError> {
        self.state()
            .background_failure
            .clone()
            .map(ClientError::retriable)
    }

    fn pause_bound(&self) -> PauseBound {
        self.state().pause_bound
    }

    fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), ClientError> {
        let mut s = self.state();
        s.calls.push(Call::Commit(offsets.to_vec()));
        if s.refuse_commits > 0 {
            s.refuse_commits -= 1;
            let kind = s.commit_refusal;
            // Like the `kafka` client, a commit that failed on the way drops the session; one
            // the group refused does not.
            if kind == ErrorKind::Retriable {
                s.connected = false;
            }
            return Err(ClientError::new(kind, "fake commit refused"));
        }
        s.committed.extend(offsets.iter().copied());
        Ok(())
    }

    fn release(&mut self, partitions: &[i32]) -> Result<(), ClientError> {
        self.state().calls.push(Call::Release(partitions.to_vec()));
        Ok(())
    }

    fn high_watermarks(&mut self) -> Result<Vec<(i32, i64)>, ClientError> {
        let mut s = self.state();
        if s.refuse_watermarks > 0 {
            s.refuse_watermarks -= 1;
            return Err(ClientError::retriable("fake high watermarks unavailable"));
        }
        Ok(s.ends.iter().map(|(p, end)| (*p, *end)).collect())
    }

    fn committed_offsets(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, ClientError> {
        let mut s = self.state();
        if s.refuse_committed_offsets > 0 {
            s.refuse_committed_offsets -= 1;
            return Err(ClientError::retriable("fake committed offsets unavailable"));
        }
        Ok(partitions
            .iter()
            .filter_map(|p| s.committed.get(p).map(|o| (*p, *o)))
            .collect())
    }

    fn close(&mut self) {
        let mut s = self.state();
        s.calls.push(Call::Close);
        s.connected = false;
    }
}

impl DeadLetterProducer for Fake {
    fn topic(&self) -> &str {
        "fake.dlq"
    }

    fn send(&mut self, letter: &DeadLetter) -> Result<(), ClientError> {
        let mut s = self.state();
        if s.refuse_dead_letters > 0 {
            s.refuse_dead_letters -= 1;
            return Err(ClientError::new(
                ErrorKind::UnknownTopicOrPartition,
                "fake dead-letter topic unavailable",
            ));
        }
        s.calls
            .push(Call::DeadLetter(letter.partition, letter.offset));
        s.dead_letters.push(letter.clone());
        Ok(())
    }
}
