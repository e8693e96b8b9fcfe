//! The poller's loop driven through a scripted client ([`crate::transport::runtime::fake`]): poll
//! errors, redeliveries, revocations and dead letters, with real workers over the in-memory
//! repository behind a gate that holds transactions back on demand.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

use super::{Clients, Poller, PollerExit, RunSummary, Telemetry};
use crate::config::{
    ClientKind, FallbackOffset, GroupSettings, KafkaAccess, KafkaSettings, PartitionSelection,
    SecurityProtocol, SecuritySettings,
};
use crate::dispatch::{worker_for, PoolSettings, WorkerContext, WorkerPool};
use crate::ops::{Health, Metrics};
use crate::repository::{
    CourierRepository, FleetGauges, MemoryRepository, RepoError, Snapshot, StorageTx,
};
use crate::shutdown::Shutdown;
use crate::transport::runtime::client::{ErrorKind, PauseBound, Polled};
use crate::transport::runtime::dead_letter_backlog::DEFAULT_MAX_LETTERS;
use crate::transport::runtime::fake::{Call, Fake, Step};
use crate::usecase::OrderEventProcessor;

/// Holds transactions back: open, or a number of transactions still allowed through; and
/// apart from that, the workers (by thread name, `worker-N`) held back or failing for good.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    permits: Option<u64>,
    closed_workers: BTreeSet<String>,
    failing_workers: BTreeSet<String>,
    /// Transactions failed so far.
    failures: u64,
}

impl Gate {
    /// Waits until this transaction may go on; `Err` when this worker's transactions fail.
    fn pass(&self) -> Result<(), RepoError> {
        let me = std::thread::current().name().unwrap_or_default().to_owned();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.permits == Some(0) || state.closed_workers.contains(&me) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(n) = state.permits.as_mut() {
            *n -= 1;
        }
        if state.failing_workers.contains(&me) {
            state.failures += 1;
            return Err(RepoError::Rejected(format!("{me} fails every event")));
        }
        Ok(())
    }

    fn update(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }

    fn failures(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
    }

    fn set(&self, permits: Option<u64>) {
        self.update(|s| s.permits = permits);
    }

    /// Holds worker `index` back (`closed`) or lets it through.
    fn close_worker(&self, index: usize, closed: bool) {
        let name = format!("worker-{index}");
        self.update(|s| {
            if closed {
                s.closed_workers.insert(name);
            } else {
                s.closed_workers.remove(&name);
            }
        });
    }

    /// Makes every transaction of worker `index` fail for good from now on.
    fn fail_worker(&self, index: usize) {
        let name = format!("worker-{index}");
        self.update(|s| {
            s.failing_workers.insert(name);
        });
    }
}

/// The in-memory repository, each transaction waiting at the gate first.
struct Gated {
    inner: MemoryRepository,
    gate: Arc<Gate>,
}

impl CourierRepository for Gated {
    fn transaction<T>(
        &self,
        work: &mut dyn FnMut(&mut dyn StorageTx) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.gate.pass()?;
        self.inner.transaction(work)
    }
    fn snapshot(&self) -> Result<Snapshot, RepoError> {
        self.inner.snapshot()
    }
    fn fleet(&self) -> Result<FleetGauges, RepoError> {
        self.inner.fleet()
    }
    fn count_overdue(&self, now: chrono::DateTime<chrono::Utc>) -> Result<i64, RepoError> {
        self.inner.count_overdue(now)
    }
    fn has_waiting_beside_available(&self) -> Result<bool, RepoError> {
        self.inner.has_waiting_beside_available()
    }
}

/// A poller running on its own thread over a fake broker.
struct Harness {
    fake: Fake,
    gate: Arc<Gate>,
    processor: Arc<OrderEventProcessor<Gated>>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    thread: Option<JoinHandle<(PollerExit, RunSummary)>>,
}

const LIMIT: Duration = Duration::from_secs(30);

fn settings(revoke_drain: Duration) -> KafkaSettings {
    KafkaSettings {
        brokers: vec!["fake:9092".into()],
        access: KafkaAccess {
            client: ClientKind::Rdkafka,
            security: SecuritySettings {
                protocol: SecurityProtocol::Plaintext,
                sasl: None,
                ssl_ca_location: None,
            },
        },
        membership: GroupSettings {
            session_timeout: Duration::from_secs(45),
            max_poll_interval: Duration::from_secs(300),
            instance_id: None,
        },
        topic: "orders".into(),
        group: "g".into(),
        fallback_offset: FallbackOffset::Earliest,
        fetch_max_bytes_per_partition: 4096,
        fetch_max_wait: Duration::from_millis(10),
        commit_interval: Duration::from_millis(10),
        dlq_topic: "orders.dlq".into(),
        partitions: PartitionSelection::All,
        revoke_drain,
    }
}

/// The workers of a harness: how many, and how many jobs each queue holds.
#[derive(Clone, Copy)]
struct Workers {
    count: usize,
    capacity: usize,
}

/// The worker an order goes to in a pool of `workers`.
fn worker_of(order: &str, workers: usize) -> usize {
    let order = crate::domain::OrderId::parse(order).expect("an order id");
    worker_for(&order, workers).expect("a worker")
}

/// `n` order ids of the form `{prefix}-{i}` that go to `worker` of `workers`.
fn orders_of_worker(prefix: &str, worker: usize, workers: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|o| worker_of(o, workers) == worker)
        .take(n)
        .collect()
}

impl Harness {
    /// One worker taking one event per transaction, so the gate counts events.
    fn start(fake: Fake, revoke_drain: Duration, gate_open: bool) -> Self {
        let workers = Workers {
            count: 1,
            capacity: 64,
        };
        Self::start_with(fake, revoke_drain, gate_open, workers)
    }

    fn start_with(fake: Fake, revoke_drain: Duration, gate_open: bool, workers: Workers) -> Self {
        let gate = Arc::new(Gate::default());
        gate.set(if gate_open { None } else { Some(0) });
        let shutdown = Shutdown::new();
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let processor = Arc::new(OrderEventProcessor::new(Gated {
            inner: MemoryRepository::new(),
            gate: gate.clone(),
        }));
        let thread = {
            let (fake, processor, shutdown, metrics, health) = (
                fake.clone(),
                processor.clone(),
                shutdown.clone(),
                metrics.clone(),
                health.clone(),
            );
            std::thread::spawn(move || {
                let (tx, completions) = unbounded();
                let context = WorkerContext {
                    processor,
                    completions: tx,
                    shutdown: shutdown.clone(),
                    metrics: metrics.clone(),
                    health: health.clone(),
                };
                let pool_settings = PoolSettings {
                    workers: workers.count,
                    capacity: workers.capacity,
                    drain_budget: Duration::from_secs(10),
                    batch_max: 1,
                };
                let pool = WorkerPool::start(pool_settings, context).expect("workers start");
                let settings = settings(revoke_drain);
                let clients = Clients {
                    consumer: fake.consumer(),
                    dead_letters: fake.producer(),
                };
                let telemetry = Telemetry { metrics, health };
                Poller::new(&settings, clients, pool, completions, shutdown, telemetry).run()
            })
        };
        Self {
            fake,
            gate,
            processor,
            shutdown,
            metrics,
            health,
            thread: Some(thread),
        }
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < LIMIT,
                "timed out waiting for {what}; calls: {:?}",
                self.fake.state().calls
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the loop has taken every scripted step and handled the last one (it polled
    /// again after it).
    fn wait_script_taken(&self) {
        self.wait_for("the script to be taken", |h| {
            h.fake.state().script.is_empty()
        });
        let polls = self.fake.state().polls;
        self.wait_for("one more poll", |h| h.fake.state().polls > polls + 1);
    }

    fn committed(&self, partition: i32) -> Option<i64> {
        self.fake.state().committed.get(&partition).copied()
    }

    /// Events the workers applied (stale ones included), from the metrics.
    fn applied(&self) -> u64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("courier_events_applied_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits for `n` more polls (each idle poll waits a few milliseconds).
    fn wait_polls(&self, n: u64) {
        let polls = self.fake.state().polls;
        self.wait_for("more polls", |h| h.fake.state().polls > polls + n);
    }

    fn stop(self) -> (PollerExit, RunSummary) {
        self.gate.set(None);
        self.shutdown.trigger();
        self.join()
    }

    fn join(mut self) -> (PollerExit, RunSummary) {
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the poller thread ends")
    }
}

fn created(order: &str) -> String {
    format!(r#"{{"order_id":"{order}","status":"created","created_at":"2025-08-06T12:00:00Z"}}"#)
}

fn records(partition: i32, offsets: std::ops::Range<i64>) -> Vec<Polled> {
    offsets
        .map(|o| Polled::Record {
            partition,
            offset: o,
            key: None,
            value: created(&format!("p{partition}-o{o}")).into_bytes(),
        })
        .collect()
}

/// Commit points of `partition`, in the order they were committed.
fn commits_of(calls: &[Call], partition: i32) -> Vec<i64> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Commit(points) => points.iter().find(|(p, _)| *p == partition).map(|x| x.1),
            _ => None,
        })
        .collect()
}

#[test]
fn after_a_poll_error_the_client_reconnects_and_redelivered_offsets_are_not_applied_twice() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    fake.then(Step::Deliver(records(0, 0..5)));
    fake.then(Step::Fail("poll failed: broker gone".into()));
    // The rebuilt session starts again from the last commit (none): 0..5 come again, still in
    // flight behind the closed gate, followed by new offsets.
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    fake.then(Step::Deliver(records(0, 0..8)));
    let h = Harness::start(fake, Duration::from_secs(5), false);
    h.wait_script_taken();
    assert_eq!(h.committed(0), None, "nothing finished, nothing committed");
    h.gate.set(None);
    h.wait_for("offset 8 committed", |h| h.committed(0) == Some(8));
    let connects = h
        .fake
        .state()
        .calls
        .iter()
        .filter(|c| **c == Call::Connect)
        .count();
    assert_eq!(connects, 2, "one connect, one after the poll error");
    let (exit, summary) = h.stop();
    assert_eq!(exit, PollerExit::Stopped);
    // Each order applied once: a second application would show as `duplicate`.
    assert_eq!(
        summary.outcomes.into_iter().collect::<Vec<_>>(),
        vec![("waiting", 8)]
    );
}

#[test]
fn a_revoked_partition_commits_only_its_finished_prefix_before_it_is_handed_back() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0, 1])]));
    let mut first = records(0, 0..3);
    first.extend(records(1, 0..2));
    fake.then(Step::Deliver(first));
    let h = Harness::start(fake, Duration::from_millis(200), true);
    h.wait_for("the first commits", |h| {
        h.committed(0) == Some(3) && h.committed(1) == Some(2)
    });

    // 0@3..6 stay in flight behind the gate; the revocation arrives with a record of the
    // revoked partition after it (never routed) and one of partition 1.
    h.gate.set(Some(0));
    h.fake.then(Step::Deliver(records(0, 3..6)));
    let mut revoke = vec![Polled::Revoked(vec![0])];
    revoke.extend(records(0, 6..7));
    revoke.extend(records(1, 2..3));
    h.fake.then(Step::Deliver(revoke));
    h.wait_for("partition 0 handed back", |h| {
        h.fake.state().calls.contains(&Call::Release(vec![0]))
    });
    {
        let calls = h.fake.state().calls.clone();
        let release = calls
            .iter()
            .position(|c| *c == Call::Release(vec![0]))
            .expect("released");
        assert_eq!(commits_of(&calls[..release], 0), vec![3], "{calls:?}");
    }

    // Ours again at once, from the committed offset: 0@3..6 are received anew while their
    // first copies still wait at the gate.
    h.fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    h.fake.then(Step::Deliver(records(0, 3..6)));
    h.wait_script_taken();
    // The first copies finish now (1@2 is next in the queue and keeps the new copies waiting):
    // their completions belong to the old assignment and must not move the commit point.
    h.gate.set(Some(3));
    h.wait_for("the first copies applied", |h| h.applied() == 8);
    h.wait_polls(20); // many commit intervals
    assert_eq!(h.committed(0), Some(3), "{:?}", h.fake.state().calls);

    h.gate.set(None);
    h.wait_for("everything committed", |h| {
        h.committed(0) == Some(6) && h.committed(1) == Some(3)
    });
    let calls = h.fake.state().calls.clone();
    assert_eq!(commits_of(&calls, 0), vec![3, 6], "{calls:?}");
    let (_, summary) = h.stop();
    // The late first copies were applied (outcome `waiting`), the new ones found them done.
    assert_eq!(summary.outcomes.get("duplicate"), Some(&3));
    assert_eq!(summary.outcomes.get("waiting"), Some(&9));
    assert_eq!(summary.abandoned, 3);
}

#[test]
fn events_of_a_revoked_partition_that_finish_within_the_bound_are_committed_first() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![1])]));
    fake.then(Step::Deliver(records(1, 0..3)));
    let h = Harness::start(fake, Duration::from_secs(30), false);
    h.wait_script_taken();
    h.fake.then(Step::Deliver(vec![Polled::Revoked(vec![1])]));
    h.wait_for("the revocation to be taken", |h| {
        h.fake.state().script.is_empty()
    });
    // The loop is draining partition 1 now: let its queued events through.
    h.gate.set(None);
    h.wait_for("partition 1 handed back", |h| {
        h.fake.state().calls.contains(&Call::Release(vec![1]))
    });
    let calls = h.fake.state().calls.clone();
    let release = calls
        .iter()
        .position(|c| *c == Call::Release(vec![1]))
        .expect("released");
    assert_eq!(calls[release - 1], Call::Commit(vec![(1, 3)]), "{calls:?}");
    let (_, summary) = h.stop();
    assert_eq!(summary.abandoned, 0);
    assert_eq!(summary.outcomes.get("waiting"), Some(&3));
}

#[test]
fn a_dead_letter_that_fails_to_send_holds_the_commit_until_it_is_sent() {
    let fake = Fake::new();
    fake.state().refuse_dead_letters = 2;
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let mut batch = records(0, 0..1);
    batch.push(Polled::Record {
        partition: 0,
        offset: 1,
        key: Some(b"k1".to_vec()),
        value: b"{not json".to_vec(),
    });
    batch.extend(records(0, 2..3));
    fake.then(Step::Deliver(batch));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("offset 3 committed", |h| h.committed(0) == Some(3));
    let calls = h.fake.state().calls.clone();
    let sent = calls
        .iter()
        .position(|c| *c == Call::DeadLetter(0, 1))
        .expect("dead-lettered");
    assert!(
        commits_of(&calls[..sent], 0).iter().all(|o| *o <= 1),
        "committed past an unsent dead letter: {calls:?}"
    );
    let letter = h.fake.state().dead_letters[0].clone();
    assert_eq!(letter.reason, "invalid_json");
    assert_eq!(
        (letter.key.as_deref(), letter.value.as_slice()),
        (Some(&b"k1"[..]), &b"{not json"[..]),
        "the original key and value, whole"
    );
    let (_, summary) = h.stop();
    assert_eq!(summary.dead_letters.get("invalid_json"), Some(&1));
}

#[test]
fn an_unreachable_broker_is_retried_and_a_misconfiguration_stops_the_loop() {
    let fake = Fake::new();
    fake.state().refuse_connects = 2;
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    fake.then(Step::Deliver(records(0, 0..2)));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("offset 2 committed", |h| h.committed(0) == Some(2));
    let (exit, _) = h.stop();
    assert_eq!(exit, PollerExit::Stopped);

    let fake = Fake::new();
    fake.state().misconfigured = Some("KAFKA_PARTITIONS: partition 9 does not exist".into());
    let h = Harness::start(fake, Duration::from_secs(5), true);
    let (exit, _) = h.join();
    assert_eq!(
        exit,
        PollerExit::Misconfigured("KAFKA_PARTITIONS: partition 9 does not exist".into())
    );
}

/// The value of one gauge or counter line, from the metrics.
fn metric(h: &Harness, line_start: &str) -> Option<u64> {
    h.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_stalled_partition_shows_in_the_gauge_until_it_resumes_and_skipped_offsets_are_counted() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![
        Polled::Assigned(vec![0, 1]),
        Polled::Stalled {
            partition: 1,
            offset: 4,
            cause: "a record batch compressed with lz4".into(),
        },
    ]));
    fake.then(Step::Deliver(records(0, 0..2)));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("offset 2 of the healthy partition committed", |h| {
        h.committed(0) == Some(2)
    });
    assert_eq!(
        metric(&h, "courier_partition_stalled{partition=\"1\"}"),
        Some(1)
    );
    h.fake.then(Step::Deliver(vec![
        Polled::Skipped {
            partition: 1,
            from: 4,
            to: 9,
        },
        Polled::Resumed(1),
    ]));
    h.fake.then(Step::Deliver(records(1, 9..10)));
    h.wait_for("the resumed partition committed", |h| {
        h.committed(1) == Some(10)
    });
    assert_eq!(
        metric(&h, "courier_partition_stalled{partition=\"1\"}"),
        Some(0)
    );
    assert_eq!(
        metric(&h, "courier_offsets_skipped_total{partition=\"1\"}"),
        Some(5)
    );
    h.stop();
}

#[test]
fn a_recreated_log_is_read_from_its_start_and_no_offset_of_the_old_log_is_committed() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    // Three events of the old log, still queued (the gate is closed) when the log is replaced.
    fake.then(Step::Deliver(records(0, 0..3)));
    let h = Harness::start(fake, Duration::from_millis(100), false);
    h.wait_script_taken();
    let mut new_log = vec![Polled::Recreated {
        partition: 0,
        reason: "the high watermark is 2 but offset 2 was already received".into(),
    }];
    new_log.extend(records(0, 0..2).into_iter().map(|r| match r {
        Polled::Record {
            partition, offset, ..
        } => Polled::Record {
            partition,
            offset,
            key: None,
            value: created(&format!("new-{offset}")).into_bytes(),
        },
        other => other,
    }));
    h.fake.then(Step::Deliver(new_log));
    h.wait_script_taken();
    h.gate.set(None);
    h.wait_for("all five events applied", |h| h.applied() == 5);
    h.wait_for("the new log committed", |h| h.committed(0) == Some(2));
    h.wait_polls(20);
    let calls = h.fake.state().calls.clone();
    assert!(
        commits_of(&calls, 0).iter().all(|o| *o <= 2),
        "an offset of the old log was committed: {calls:?}"
    );
    assert_eq!(h.committed(0), Some(2));
    h.stop();
}

#[test]
fn unsent_dead_letters_past_the_bound_pause_every_partition_while_polling_goes_on() {
    let fake = Fake::new();
    fake.state().refuse_dead_letters = u32::MAX;
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0, 1])]));
    let bad: Vec<Polled> = (0..DEFAULT_MAX_LETTERS as i64)
        .map(|o| Polled::Record {
            partition: 0,
            offset: o,
            key: None,
            value: b"{not json".to_vec(),
        })
        .collect();
    fake.then(Step::Deliver(bad));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("fetching paused", |h| {
        metric(h, "courier_fetching_paused") == Some(1)
    });
    assert_eq!(
        metric(&h, "courier_dead_letter_backlog"),
        Some(DEFAULT_MAX_LETTERS as u64)
    );
    h.wait_for("both partitions paused", |h| {
        h.fake.state().paused == BTreeSet::from([0, 1])
    });
    // Paused, not stopped: the loop polls on (librdkafka's max.poll.interval.ms).
    h.wait_polls(20);
    assert_eq!(h.committed(0), None);
    h.fake.state().refuse_dead_letters = 0;
    h.wait_for("both partitions resumed", |h| {
        h.fake.state().paused.is_empty()
    });
    let after = DEFAULT_MAX_LETTERS as i64;
    h.fake.then(Step::Deliver(records(0, after..after + 1)));
    h.wait_for("every letter sent and the next event committed", |h| {
        h.committed(0) == Some(after + 1)
    });
    assert_eq!(metric(&h, "courier_fetching_paused"), Some(0));
    assert_eq!(h.fake.state().dead_letters.len(), DEFAULT_MAX_LETTERS);
    h.stop();
}

#[test]
fn polls_wait_briefly_while_events_are_in_flight_and_long_when_idle() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start(fake, Duration::from_secs(5), false);
    let last_waits = |h: &Harness, n: usize| -> Vec<Duration> {
        let s = h.fake.state();
        s.poll_waits.iter().rev().take(n).copied().collect()
    };
    // Idle: each poll may block for the long wait (no spinning).
    h.wait_polls(5);
    assert!(
        last_waits(&h, 5).iter().all(|w| *w == super::POLL_WAIT),
        "{:?}",
        last_waits(&h, 5)
    );
    // An event in flight (held at the gate): polls are short, so its completion is taken
    // as soon as it comes.
    h.fake.then(Step::Deliver(records(0, 0..1)));
    h.wait_script_taken();
    h.wait_polls(5);
    assert!(
        last_waits(&h, 5)
            .iter()
            .all(|w| *w == super::IN_FLIGHT_POLL_WAIT),
        "{:?}",
        last_waits(&h, 5)
    );
    h.gate.set(None);
    h.wait_for("the event committed", |h| h.committed(0) == Some(1));
    h.wait_polls(5);
    assert!(
        last_waits(&h, 5).iter().all(|w| *w == super::POLL_WAIT),
        "{:?}",
        last_waits(&h, 5)
    );
    h.stop();
}

/// Records of `partition` from `first` on, one per order of `orders`, in order.
fn records_of(partition: i32, first: i64, orders: &[String]) -> Vec<Polled> {
    orders
        .iter()
        .zip(first..)
        .map(|(order, offset)| Polled::Record {
            partition,
            offset,
            key: None,
            value: created(order).into_bytes(),
        })
        .collect()
}

/// The waiting orders, first in line first, of those in `orders`.
fn waiting_among(h: &Harness, orders: &[String]) -> Vec<String> {
    let snapshot = h.processor.repository().snapshot().expect("snapshot");
    snapshot
        .waiting
        .iter()
        .map(|o| o.as_str().to_owned())
        .filter(|o| orders.contains(o))
        .collect()
}

#[test]
fn a_full_worker_queue_pauses_exactly_its_partitions_and_polling_goes_on() {
    // Two workers, four jobs per queue; worker 0 is held back. Partition 0's orders all go to
    // worker 0, partition 1's (fewer than a queue holds) to worker 1.
    let workers = Workers {
        count: 2,
        capacity: 4,
    };
    let slow = orders_of_worker("slow", 0, 2, 10);
    let fast = orders_of_worker("fast", 1, 2, 3);
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0, 1])]));
    let h = Harness::start_with(fake, Duration::from_secs(5), true, workers);
    h.gate.close_worker(0, true);
    h.fake.then(Step::Deliver(records_of(0, 0, &slow[..6])));
    h.wait_for("partition 0 paused", |h| {
        h.fake.state().calls.contains(&Call::Pause(vec![0]))
    });
    // A poll in progress may still return records of a paused partition: they are held
    // behind the others, in order.
    h.fake.then(Step::Deliver(records_of(0, 6, &slow[6..])));
    h.fake.then(Step::Deliver(records_of(1, 0, &fast)));
    h.wait_for("partition 1 applied and committed", |h| {
        h.committed(1) == Some(3)
    });
    // The loop polls on while partition 0 is held back, and pauses nothing else.
    h.wait_polls(20);
    {
        let s = h.fake.state();
        assert_eq!(s.paused, BTreeSet::from([0]), "{:?}", s.calls);
        assert!(
            s.calls
                .iter()
                .all(|c| !matches!(c, Call::Pause(p) if p.contains(&1))),
            "{:?}",
            s.calls
        );
    }
    assert_eq!(h.committed(0), None, "nothing of partition 0 finished");
    h.gate.close_worker(0, false);
    h.wait_for("partition 0 resumed", |h| {
        h.fake.state().calls.contains(&Call::Resume(vec![0]))
    });
    h.wait_for("partition 0 committed", |h| h.committed(0) == Some(10));
    assert!(h.fake.state().paused.is_empty());
    // Nothing lost, nothing applied twice, each partition in offset order.
    assert_eq!(waiting_among(&h, &slow), slow);
    assert_eq!(waiting_among(&h, &fast), fast);
    let (_, summary) = h.stop();
    assert_eq!(
        summary.outcomes.into_iter().collect::<Vec<_>>(),
        vec![("waiting", 13)]
    );
}

#[test]
fn a_client_whose_pause_drops_what_it_fetched_ahead_holds_records_up_to_its_bound_first() {
    // librdkafka's pause drops the partition's prefetched messages (rdkafka_client says to hold
    // up to twice them first); here the bound is 5 held records. Worker 0 is held back: the
    // first 6 records fill its queue with one or two left over, under the bound; 6 more go over.
    let workers = Workers {
        count: 2,
        capacity: 4,
    };
    let slow = orders_of_worker("slow", 0, 2, 12);
    let fake = Fake::new();
    // Never stuck here: worker 0 is held back on purpose, and only the number may pause.
    fake.state().pause_bound = PauseBound {
        held: 5,
        stuck_after: Duration::from_secs(3600),
    };
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start_with(fake, Duration::from_secs(5), true, workers);
    h.gate.close_worker(0, true);
    h.fake.then(Step::Deliver(records_of(0, 0, &slow[..6])));
    h.wait_script_taken();
    h.wait_polls(20);
    assert!(
        h.fake
            .state()
            .calls
            .iter()
            .all(|c| !matches!(c, Call::Pause(_))),
        "paused under the bound: {:?}",
        h.fake.state().calls
    );
    h.fake.then(Step::Deliver(records_of(0, 6, &slow[6..])));
    h.wait_for("partition 0 paused over the bound", |h| {
        h.fake.state().calls.contains(&Call::Pause(vec![0]))
    });
    h.gate.close_worker(0, false);
    h.wait_for("partition 0 resumed", |h| {
        h.fake.state().calls.contains(&Call::Resume(vec![0]))
    });
    h.wait_for("partition 0 committed", |h| h.committed(0) == Some(12));
    assert_eq!(waiting_among(&h, &slow), slow, "in offset order, each once");
    let (_, summary) = h.stop();
    assert_eq!(
        summary.outcomes.into_iter().collect::<Vec<_>>(),
        vec![("waiting", 12)]
    );
}

#[test]
fn held_records_the_workers_take_none_of_pause_their_partition_under_the_bound() {
    let workers = Workers {
        count: 2,
        capacity: 4,
    };
    let slow = orders_of_worker("stuck", 0, 2, 6);
    let fake = Fake::new();
    fake.state().pause_bound = PauseBound {
        held: 1000,
        stuck_after: Duration::from_millis(200),
    };
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start_with(fake, Duration::from_secs(5), true, workers);
    h.gate.close_worker(0, true);
    h.fake.then(Step::Deliver(records_of(0, 0, &slow)));
    h.wait_for("partition 0 paused: the workers took nothing", |h| {
        h.fake.state().calls.contains(&Call::Pause(vec![0]))
    });
    h.gate.close_worker(0, false);
    h.wait_for("partition 0 committed", |h| h.committed(0) == Some(6));
    assert!(h.fake.state().calls.contains(&Call::Resume(vec![0])));
    assert_eq!(waiting_among(&h, &slow), slow);
    h.stop();
}

#[test]
fn a_completion_of_a_replaced_log_marks_nothing_of_the_new_one_nor_dead_letters_under_it() {
    // Offset 0 of the old log (an order of worker 0) is still with worker 0 when the log is
    // replaced; offset 0 of the new log (an order of worker 1) finishes first. The old job
    // then fails for good: it must not be dead-lettered, nor mark anything of the new log.
    let workers = Workers {
        count: 2,
        capacity: 8,
    };
    let old = orders_of_worker("old", 0, 2, 1);
    let new = orders_of_worker("new", 1, 2, 2);
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start_with(fake, Duration::from_millis(100), true, workers);
    h.gate.close_worker(0, true);
    h.fake.then(Step::Deliver(records_of(0, 0, &old)));
    h.wait_script_taken();
    let mut new_log = vec![Polled::Recreated {
        partition: 0,
        reason: "the topic's id changed".into(),
    }];
    new_log.extend(records_of(0, 0, &new));
    h.fake.then(Step::Deliver(new_log));
    h.wait_for("the new log committed", |h| h.committed(0) == Some(2));
    h.gate.fail_worker(0);
    h.gate.close_worker(0, false);
    h.wait_for("the old job failed", |h| h.gate.failures() == 1);
    // The new log goes on from where it is: offset 2 finishes and is committed.
    h.fake.then(Step::Deliver(records_of(
        0,
        2,
        &orders_of_worker("more", 1, 2, 1),
    )));
    h.wait_for("offset 2 of the new log committed", |h| {
        h.committed(0) == Some(3)
    });
    // Stopping takes every report left; the old job's failure is among them.
    let fake = h.fake.clone();
    let (_, summary) = h.stop();
    assert!(summary.dead_letters.is_empty(), "{summary:?}");
    let calls = fake.state().calls.clone();
    assert!(
        calls.iter().all(|c| !matches!(c, Call::DeadLetter(..))),
        "{calls:?}"
    );
    assert_eq!(commits_of(&calls, 0).last(), Some(&3), "{calls:?}");
}
#[test]
fn a_client_that_connects_and_then_fails_every_poll_backs_off_further_each_time() {
    // Each failed poll drops the session and the loop connects again at once; the connect
    // must not reset the backoff, or the client is rebuilt every 100 ms forever.
    let fake = Fake::new();
    for _ in 0..4 {
        fake.then(Step::Fail("fetch failed".into()));
    }
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    fake.then(Step::Deliver(records(0, 0..1)));
    let started = Instant::now();
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("offset 1 committed", |h| h.committed(0) == Some(1));
    // 100 + 200 + 400 + 800 ms at least (a lower bound: a slow machine only adds to it).
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "backed off only {:?} over four failed polls",
        started.elapsed()
    );
    let connects = h
        .fake
        .state()
        .calls
        .iter()
        .filter(|c| **c == Call::Connect)
        .count();
    assert_eq!(connects, 5, "one connect per failed poll, and the first");
    h.stop();
}

/// Whether `/readyz` would say Kafka is missing.
fn kafka_missing(h: &Harness) -> bool {
    h.health
        .readiness()
        .is_err_and(|why| why.contains("not connected to Kafka"))
}

#[test]
fn readiness_drops_when_a_commit_finds_the_broker_gone_and_reconnects_fail() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    fake.then(Step::Deliver(records(0, 0..1)));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("the first event committed", |h| h.committed(0) == Some(1));
    assert!(!kafka_missing(&h), "{:?}", h.health.readiness());
    // The broker goes away: the next commit is the first call to notice, and every reconnect
    // fails (polls never get a chance to fail).
    {
        let mut s = h.fake.state();
        s.refuse_commits = 1;
        s.refuse_connects = u32::MAX;
    }
    let connects = |h: &Harness| {
        let calls = h.fake.state().calls.clone();
        calls.iter().filter(|c| **c == Call::Connect).count()
    };
    let before = connects(&h);
    h.fake.then(Step::Deliver(records(0, 1..2)));
    h.wait_for("two reconnects refused", |h| connects(h) >= before + 2);
    assert!(kafka_missing(&h), "{:?}", h.health.readiness());
    h.fake.state().refuse_connects = 0;
    h.wait_for("the second event committed", |h| h.committed(0) == Some(2));
    h.wait_for("ready again", |h| !kafka_missing(h));
    h.stop();
}

#[test]
fn a_commit_the_group_refuses_while_it_rebalances_keeps_readiness_and_is_tried_again() {
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    fake.then(Step::Deliver(records(0, 0..1)));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    h.wait_for("the first event committed", |h| h.committed(0) == Some(1));
    let commits = |h: &Harness| {
        let calls = h.fake.state().calls.clone();
        calls
            .iter()
            .filter(|c| matches!(c, Call::Commit(_)))
            .count()
    };
    for kind in [ErrorKind::RebalanceInProgress, ErrorKind::Fenced] {
        let (before, connects_before) = {
            let mut s = h.fake.state();
            s.refuse_commits = u32::MAX;
            s.commit_refusal = kind;
            let connects = s.calls.iter().filter(|c| **c == Call::Connect).count();
            drop(s);
            (commits(&h), connects)
        };
        let next = h.committed(0).unwrap_or(0);
        h.fake.then(Step::Deliver(records(0, next..next + 1)));
        h.wait_for("three commits refused", |h| commits(h) >= before + 3);
        // Kafka answered each time: not an outage, and no reconnect.
        assert!(!kafka_missing(&h), "{kind:?}: {:?}", h.health.readiness());
        let connects = h
            .fake
            .state()
            .calls
            .iter()
            .filter(|c| **c == Call::Connect)
            .count();
        assert_eq!(connects, connects_before, "{kind:?}: no reconnect");
        h.fake.state().refuse_commits = 0;
        h.wait_for("committed once the group lets it", |h| {
            h.committed(0) == Some(next + 1)
        });
    }
    h.stop();
}

#[test]
fn readiness_follows_every_failed_kafka_call_and_comes_back_when_they_work() {
    let fake = Fake::new();
    fake.state().refuse_committed_offsets = 1;
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    // The committed offset read at the assignment fails; it is read again with the
    // watermarks, a few seconds later.
    h.wait_for("a failed committed-offset read shown", kafka_missing);
    h.wait_for("ready once it is read", |h| !kafka_missing(h));

    // A read the client makes by itself inside `poll` (metadata, say) fails, then works.
    h.fake.state().background_failure = Some("cannot load metadata: broker gone".into());
    h.wait_for("a failed metadata read shown", kafka_missing);
    let why = h.health.readiness().expect_err("not ready");
    assert!(why.contains("not connected to Kafka"), "{why}");
    h.fake.state().background_failure = None;
    h.wait_for("ready once it works", |h| !kafka_missing(h));

    // A high-watermark read fails, then the next one (a few seconds later) works.
    h.fake.state().refuse_watermarks = 1;
    h.wait_for("a failed high-watermark read shown", kafka_missing);
    h.wait_for("ready once it works", |h| !kafka_missing(h));

    // A fetch fails and the reconnects fail too.
    {
        let mut s = h.fake.state();
        s.refuse_connects = u32::MAX;
        s.script
            .push_back(Step::Fail("fetch failed: broker gone".into()));
    }
    h.wait_for("a failed fetch shown", kafka_missing);
    let connects = |h: &Harness| {
        let calls = h.fake.state().calls.clone();
        calls.iter().filter(|c| **c == Call::Connect).count()
    };
    let before = connects(&h);
    h.wait_for("two reconnects refused", |h| connects(h) >= before + 2);
    assert!(kafka_missing(&h), "{:?}", h.health.readiness());
    h.fake.state().refuse_connects = 0;
    h.fake.then(Step::Deliver(records(0, 0..1)));
    h.wait_for("the event committed", |h| h.committed(0) == Some(1));
    h.wait_for("ready again", |h| !kafka_missing(h));
    h.stop();
}

/// Partition 0's committed offset, end and lag as `/partitions` shows them.
fn reading(h: &Harness) -> Option<(Option<i64>, Option<i64>, Option<i64>)> {
    h.metrics
        .partition_readings()
        .into_iter()
        .find(|r| r.partition == 0)
        .map(|r| (r.committed, r.high_watermark, r.lag()))
}

#[test]
fn the_end_is_read_with_every_commit_and_a_commit_is_never_shown_past_it() {
    // Issue #21: ends read every 5 s against commits every second showed committed offsets
    // above the high watermark and lag 0 while events waited.
    let fake = Fake::new();
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start(fake, Duration::from_secs(5), true);
    for k in 1..=5 {
        let end = 10 * k;
        // As a client sees it: the end arrives with the records it fetched.
        h.fake.state().ends.insert(0, end);
        h.fake.then(Step::Deliver(records(0, end - 10..end)));
        h.wait_for("the batch committed", |h| h.committed(0) == Some(end));
        // Shown by the next commit tick (10 ms here), not by a slower refresh.
        let shown = Instant::now();
        h.wait_for("the end shown with the commit", |h| {
            reading(h) == Some((Some(end), Some(end), Some(0)))
        });
        assert!(
            shown.elapsed() < Duration::from_secs(1),
            "the end of batch {k} took {:?} to show",
            shown.elapsed()
        );
    }
    // The client's end a moment older than the records it handed out (librdkafka's
    // statistics come once a second): the commit is shown at the end, never above it.
    h.fake.then(Step::Deliver(records(0, 50..58)));
    h.wait_for("the batch committed", |h| h.committed(0) == Some(58));
    h.wait_polls(3);
    assert_eq!(reading(&h), Some((Some(50), Some(50), Some(0))));
    h.fake.state().ends.insert(0, 60);
    h.wait_for("the newer end shown", |h| {
        reading(h) == Some((Some(58), Some(60), Some(2)))
    });
    assert_eq!(
        metric(&h, "courier_consumer_lag{partition=\"0\"}"),
        Some(2),
        "the gauge shows what /partitions shows"
    );
    h.stop();
}

#[test]
fn offsets_the_client_passed_are_committed_so_a_fully_read_transaction_shows_lag_0() {
    // Records 0..3 of a transaction, its commit marker at 3: the client read up to 4.
    let fake = Fake::new();
    fake.state().ends.insert(0, 4);
    fake.then(Step::Deliver(vec![Polled::Assigned(vec![0])]));
    let h = Harness::start(fake, Duration::from_secs(5), false);
    h.fake.then(Step::Deliver(records(0, 0..3)));
    h.fake.then(Step::Deliver(vec![Polled::Passed {
        partition: 0,
        to: 4,
    }]));
    h.wait_script_taken();
    assert_eq!(h.committed(0), None, "the records are not finished yet");
    h.gate.set(None);
    h.wait_for("the marker committed past", |h| h.committed(0) == Some(4));
    h.wait_for("lag 0 shown", |h| {
        reading(h) == Some((Some(4), Some(4), Some(0)))
    });
    // Only markers since (a second transaction aborted, say): straight to the pass.
    h.fake.state().ends.insert(0, 9);
    h.fake.then(Step::Deliver(vec![Polled::Passed {
        partition: 0,
        to: 9,
    }]));
    h.wait_for("the markers committed past", |h| h.committed(0) == Some(9));
    h.wait_for("lag 0 shown", |h| {
        reading(h) == Some((Some(9), Some(9), Some(0)))
    });
    h.stop();
}
