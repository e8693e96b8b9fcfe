//! From the poller to the workers and back. Each event goes to worker `hash(order id) % N`
//! through that worker's bounded channel, so one order's events stay in order while the pool
//! runs in parallel (one shared channel would let two workers race on one order). Workers report
//! every event back on one completion channel; the poller turns those into commit points.

mod worker;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};

use crate::domain::{OrderEvent, OrderId, StatusFamily};
use crate::ops::{Health, Metrics};
use crate::repository::{CourierRepository, RepoError};
use crate::shutdown::Shutdown;
use crate::usecase::{OrderEventProcessor, Outcome};

/// Where an event came from, so its completion can be matched to its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within it.
    pub offset: i64,
    /// Which of the partition's assignments (or logs) the offset belongs to, as the poller
    /// numbers them: an offset alone is ambiguous once a partition was handed back and taken
    /// again, or its log replaced. Workers carry it back untouched.
    pub epoch: u64,
}

/// One event for a worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where it came from.
    pub position: Position,
    /// The parsed event.
    pub event: OrderEvent,
    /// The message key as it arrived (events have none): a dead letter keeps it.
    pub key: Option<Vec<u8>>,
    /// The message value as it arrived: what a `processing_failed` dead letter carries.
    pub payload: Vec<u8>,
    /// When the poller received it (for latency figures).
    pub received: Instant,
}

/// Why [`WorkerPool::try_submit`] gave a job back.
#[derive(Debug)]
pub enum Refused {
    /// Its worker's queue is full: try again once the worker has taken some.
    Full(Box<Job>),
    /// Stopping: nothing more is queued.
    Stopping(Box<Job>),
    /// Its worker is gone (it died, or the pool was closed).
    Gone(Box<Job>),
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// Its transaction committed (or it needed none).
    Applied(Outcome),
    /// It failed for good (not a transient failure): it goes to the dead-letter topic.
    Failed(RepoError),
    /// Stopping while the database was unavailable: not applied, not committed; Kafka will
    /// deliver it again.
    Abandoned,
}

/// A worker's report on one job.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The job's position.
    pub position: Position,
    /// The job's order.
    pub order_id: OrderId,
    /// The job's status family (for metrics).
    pub family: StatusFamily,
    /// The job's message key as it arrived (for a dead letter).
    pub key: Option<Vec<u8>>,
    /// The job's message value as it arrived (for a dead letter).
    pub payload: Vec<u8>,
    /// What happened.
    pub result: JobResult,
    /// Time from receipt to completion.
    pub latency: Duration,
    /// Time from the event's `created_at` (its send time) to completion: end-to-end latency.
    pub age: Duration,
    /// When the worker sent this report: the poller adds the time until it takes it, so
    /// that the event's age covers the poller's part too.
    pub reported: Instant,
}

/// How the pool is sized and how it stops.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Worker threads.
    pub workers: usize,
    /// Jobs each worker's queue holds.
    pub capacity: usize,
    /// Once stopping, how long queued jobs are still applied; the rest are abandoned
    /// (uncommitted, delivered again after the restart).
    pub drain_budget: Duration,
    /// Most queued jobs a worker applies in one transaction (1 = one transaction per event).
    pub batch_max: usize,
}

/// What every worker shares.
pub struct WorkerContext<R> {
    /// The status factory and the repository.
    pub processor: Arc<OrderEventProcessor<R>>,
    /// Where workers report.
    pub completions: Sender<Completion>,
    /// The stop flag.
    pub shutdown: Shutdown,
    /// Retry and error counters.
    pub metrics: Arc<Metrics>,
    /// Progress marks for `/healthz`.
    pub health: Arc<Health>,
}

/// How long past the drain budget a stop still waits for workers: a batch that was committing
/// when the budget ran out gets to report.
const JOIN_GRACE: Duration = Duration::from_millis(250);

/// The fixed pool of workers, each with its own bounded queue.
pub struct WorkerPool {
    queues: Vec<Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
    /// Bounds the wait for workers once stopping.
    shutdown: Shutdown,
    /// Once stopping, how long workers may still apply queued events.
    drain_budget: Duration,
}

/// The worker of `order` in a pool of `workers` (`None` for none): a hash of the order id, so
/// an order's events always meet the same worker, in the order they were read.
pub fn worker_for(order: &OrderId, workers: usize) -> Option<usize> {
    let workers = u64::try_from(workers).ok().filter(|n| *n > 0)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    order.hash(&mut h);
    usize::try_from(h.finish() % workers).ok()
}

impl WorkerPool {
    /// Starts the workers, each reading its own bounded queue and reporting every job.
    pub fn start<R: CourierRepository + 'static>(
        settings: PoolSettings,
        context: WorkerContext<R>,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::with_capacity(settings.workers);
        let mut handles = Vec::with_capacity(settings.workers);
        for index in 0..settings.workers {
            let (tx, rx): (Sender<Job>, Receiver<Job>) = bounded(settings.capacity.max(1));
            let worker = worker::Worker {
                index,
                jobs: rx,
                completions: context.completions.clone(),
                processor: Arc::clone(&context.processor),
                shutdown: context.shutdown.clone(),
                drain_budget: settings.drain_budget,
                metrics: Arc::clone(&context.metrics),
                health: Arc::clone(&context.health),
                batch_max: settings.batch_max.max(1),
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("worker-{index}"))
                    .spawn(move || worker.run())?,
            );
            queues.push(tx);
        }
        Ok(Self {
            queues,
            handles,
            shutdown: context.shutdown,
            drain_budget: settings.drain_budget,
        })
    }

    /// A pool with no workers, left behind once the real one has been closed.
    pub fn empty() -> Self {
        Self {
            queues: Vec::new(),
            handles: Vec::new(),
            shutdown: Shutdown::new(),
            drain_budget: Duration::ZERO,
        }
    }

    /// The worker that owns an order: stable for the life of the process. `None` for a pool
    /// without workers ([`WorkerPool::empty`]).
    pub fn route(&self, order: &OrderId) -> Option<usize> {
        worker_for(order, self.queues.len())
    }

    /// Queues a job on its order's worker if that queue has room within `wait` (at once when
    /// zero): the poller holds a refused job back (and pauses its partition) instead of
    /// blocking for long, so it keeps polling. Once stopping, every job is given back, also to
    /// a queue with room (it stays uncommitted and is delivered again after a restart): a
    /// refused event must not be overtaken by a later event of its order, or `completed` is
    /// applied before the `created` that was refused.
    pub fn try_submit(&self, job: Job, shutdown: &Shutdown, wait: Duration) -> Result<(), Refused> {
        let Some(queue) = self
            .route(&job.event.order_id)
            .and_then(|w| self.queues.get(w))
        else {
            return Err(Refused::Gone(Box::new(job)));
        };
        if shutdown.is_shutdown() {
            return Err(Refused::Stopping(Box::new(job)));
        }
        if wait.is_zero() {
            return match queue.try_send(job) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(j)) => Err(Refused::Full(Box::new(j))),
                Err(TrySendError::Disconnected(j)) => Err(Refused::Gone(Box::new(j))),
            };
        }
        match queue.send_timeout(job, wait) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(j)) => Err(Refused::Full(Box::new(j))),
            Err(SendTimeoutError::Disconnected(j)) => Err(Refused::Gone(Box::new(j))),
        }
    }

    /// Events waiting in each worker's queue.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.queues.iter().map(Sender::len).collect()
    }

    /// Closes the queues; workers finish what is queued and exit. Returns how many panicked.
    ///
    /// Once stopping, waits no longer than the drain budget (plus a short grace) from the stop:
    /// a worker still inside a database call then (a frozen server, say) is left behind, its
    /// events unreported and so uncommitted, to be delivered again after the restart. A stop
    /// is bounded whatever the database does.
    pub fn close_and_join(self) -> usize {
        drop(self.queues);
        let bounded = self.shutdown.is_shutdown();
        let mut handles = self.handles;
        let mut panicked = 0;
        loop {
            let (done, running): (Vec<_>, Vec<_>) =
                handles.into_iter().partition(JoinHandle::is_finished);
            panicked += done
                .into_iter()
                .map(JoinHandle::join)
                .filter(Result::is_err)
                .count();
            handles = running;
            if handles.is_empty() {
                return panicked;
            }
            if bounded
                && self
                    .shutdown
                    .stopping_longer_than(self.drain_budget + JOIN_GRACE)
            {
                log::warn!(
                    "{} worker(s) still inside a database call after the drain budget; their \
                     events stay uncommitted and will be delivered again",
                    handles.len()
                );
                return panicked;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;
    use crate::repository::MemoryRepository;
    use crossbeam_channel::unbounded;

    /// How long a test waits for room in a queue: long, for a slow machine.
    const QUEUE_WAIT: Duration = Duration::from_secs(60);

    fn pool(
        workers: usize,
        capacity: usize,
        drain: Duration,
    ) -> (WorkerPool, Receiver<Completion>, Shutdown) {
        let (tx, rx) = unbounded();
        let shutdown = Shutdown::new();
        let context = WorkerContext {
            processor: Arc::new(OrderEventProcessor::new(MemoryRepository::new())),
            completions: tx,
            shutdown: shutdown.clone(),
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::new(Duration::from_secs(60))),
        };
        let settings = PoolSettings {
            workers,
            capacity,
            drain_budget: drain,
            batch_max: 16,
        };
        (
            WorkerPool::start(settings, context).expect("start"),
            rx,
            shutdown,
        )
    }

    fn job(order: &str, status: OrderStatus, offset: i64) -> Job {
        Job {
            position: Position {
                partition: 0,
                offset,
                epoch: 1,
            },
            event: OrderEvent {
                order_id: OrderId::parse(order).expect("id"),
                status,
                created_at: chrono::Utc::now(),
            },
            key: None,
            payload: Vec::new(),
            received: Instant::now(),
        }
    }

    #[test]
    fn one_order_always_goes_to_one_worker_and_keeps_its_order() {
        let (pool, rx, shutdown) = pool(4, 8, Duration::from_secs(1));
        // No courier: created waits, then cancelled; in order, created must come first.
        let mut offset = 0;
        for i in 0..50 {
            let id = format!("o-{i}");
            for status in [
                OrderStatus::Created,
                OrderStatus::Cooking,
                OrderStatus::Cancelled,
            ] {
                pool.try_submit(job(&id, status, offset), &shutdown, QUEUE_WAIT)
                    .expect("queued");
                offset += 1;
            }
        }
        assert_eq!(pool.close_and_join(), 0);
        let done: Vec<Completion> = rx.try_iter().collect();
        assert_eq!(done.len(), 150);
        for c in &done {
            let expected = match c.position.offset % 3 {
                0 => JobResult::Applied(Outcome::Waiting),
                1 => JobResult::Applied(Outcome::Ignored),
                _ => JobResult::Applied(Outcome::Cancelled(None)),
            };
            assert_eq!(c.result, expected, "{c:?}");
        }
    }

    #[test]
    fn once_the_drain_budget_is_spent_queued_jobs_are_abandoned() {
        let (pool, rx, shutdown) = pool(1, 100, Duration::ZERO);
        shutdown.trigger();
        // The premise, waited for rather than slept for: the (zero) budget is spent.
        while !shutdown.stopping_longer_than(Duration::ZERO) {
            std::thread::yield_now();
        }
        for i in 0..10 {
            let j = job(&format!("x{i}"), OrderStatus::Created, i);
            pool.queues[0].send(j).expect("queued");
        }
        pool.close_and_join();
        let results: Vec<JobResult> = rx.try_iter().map(|c| c.result).collect();
        assert_eq!(results, vec![JobResult::Abandoned; 10]);
    }

    /// The repository reads of a test wrapper, passed on to its `inner` store.
    macro_rules! reads_from_inner {
        () => {
            fn snapshot(&self) -> Result<crate::repository::Snapshot, RepoError> {
                self.inner.snapshot()
            }
            fn fleet(&self) -> Result<crate::repository::FleetGauges, RepoError> {
                self.inner.fleet()
            }
            fn count_overdue(&self, now: chrono::DateTime<chrono::Utc>) -> Result<i64, RepoError> {
                self.inner.count_overdue(now)
            }
            fn has_waiting_beside_available(&self) -> Result<bool, RepoError> {
                self.inner.has_waiting_beside_available()
            }
        };
    }

    /// The in-memory repository, except that any transaction touching order "poison" fails
    /// for good (to see a batch fall back to one transaction per event), a transaction touching
    /// order "gate" waits until the test opens it (to hold the worker while its queue fills),
    /// and every batch's outline is recorded (to see which events formed one transaction).
    struct PoisonedRepository {
        inner: MemoryRepository,
        /// Signalled when a transaction reaches the gate.
        at_gate: Sender<()>,
        /// Received from to pass the gate.
        open_gate: Receiver<()>,
        /// The orders of every batch outline, in order.
        outlines: std::sync::Mutex<Vec<Vec<String>>>,
    }

    struct PoisonedTx<'a>(
        &'a mut dyn crate::repository::StorageTx,
        &'a PoisonedRepository,
    );

    impl crate::repository::CourierRepository for PoisonedRepository {
        fn transaction<T>(
            &self,
            work: &mut dyn FnMut(&mut dyn crate::repository::StorageTx) -> Result<T, RepoError>,
        ) -> Result<T, RepoError> {
            self.inner
                .transaction(&mut |tx| work(&mut PoisonedTx(tx, self)))
        }
        reads_from_inner!();
    }

    impl crate::repository::StorageTx for PoisonedTx<'_> {
        fn lock_batch(
            &mut self,
            outline: &crate::repository::BatchOutline,
        ) -> Result<(), RepoError> {
            let orders = outline.orders.iter().map(|o| o.to_string()).collect();
            self.1.outlines.lock().expect("outlines").push(orders);
            self.0.lock_batch(outline)
        }
        fn lock_order(&mut self, o: &OrderId) -> Result<crate::repository::OrderState, RepoError> {
            match o.as_str() {
                "poison" => return Err(RepoError::Rejected("poisoned".into())),
                "gate" => {
                    self.1.at_gate.send(()).expect("the test waits at the gate");
                    self.1.open_gate.recv().expect("the test opens the gate");
                }
                _ => {}
            }
            self.0.lock_order(o)
        }
        fn set_order_state(
            &mut self,
            o: &OrderId,
            s: &crate::repository::OrderState,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<(), RepoError> {
            self.0.set_order_state(o, s, at)
        }
        fn take_available_courier(
            &mut self,
        ) -> Result<Option<crate::repository::CourierRecord>, RepoError> {
            self.0.take_available_courier()
        }
        fn lock_courier(
            &mut self,
            id: crate::domain::CourierId,
        ) -> Result<Option<crate::repository::CourierRecord>, RepoError> {
            self.0.lock_courier(id)
        }
        fn next_waiting_order(&mut self) -> Result<Option<OrderId>, RepoError> {
            self.0.next_waiting_order()
        }
        fn lock_overdue_deliveries(
            &mut self,
            now: chrono::DateTime<chrono::Utc>,
            limit: usize,
        ) -> Result<Vec<crate::repository::OverdueDelivery>, RepoError> {
            self.0.lock_overdue_deliveries(now, limit)
        }
        fn start_delivery(
            &mut self,
            o: &OrderId,
            c: &crate::repository::CourierRecord,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<(), RepoError> {
            self.0.start_delivery(o, c, at)
        }
        fn finish_delivery(
            &mut self,
            o: &OrderId,
            c: crate::domain::CourierId,
            at: chrono::DateTime<chrono::Utc>,
            by: crate::domain::CompletedBy,
        ) -> Result<(), RepoError> {
            self.0.finish_delivery(o, c, at, by)
        }
        fn drop_delivery(
            &mut self,
            o: &OrderId,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<(), RepoError> {
            self.0.drop_delivery(o, at)
        }
        fn set_courier_status(
            &mut self,
            id: crate::domain::CourierId,
            s: crate::domain::CourierStatus,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<(), RepoError> {
            self.0.set_courier_status(id, s, at)
        }
        fn insert_courier(
            &mut self,
            c: &crate::domain::NewCourier,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<crate::repository::CourierRecord, RepoError> {
            self.0.insert_courier(c, at)
        }
    }

    /// A database that fails every transaction in a way nobody classified
    /// (`RepoError::Unexpected`) until `failures` have happened; the next transaction waits at a
    /// gate the test opens, then works.
    struct UnclassifiedRepository {
        inner: MemoryRepository,
        failures: std::sync::atomic::AtomicU32,
        at_gate: Sender<()>,
        open_gate: Receiver<()>,
    }

    impl crate::repository::CourierRepository for UnclassifiedRepository {
        fn transaction<T>(
            &self,
            work: &mut dyn FnMut(&mut dyn crate::repository::StorageTx) -> Result<T, RepoError>,
        ) -> Result<T, RepoError> {
            use std::sync::atomic::Ordering::SeqCst;
            let left = self.failures.load(SeqCst);
            if left > 0 {
                self.failures.store(left - 1, SeqCst);
                return Err(RepoError::Unexpected(
                    "relation \"orders\" does not exist".into(),
                ));
            }
            self.at_gate.send(()).expect("the test waits at the gate");
            self.open_gate.recv().expect("the test opens the gate");
            self.inner.transaction(work)
        }
        reads_from_inner!();
    }

    #[test]
    fn an_unclassified_failure_stalls_the_event_with_a_reason_and_never_dead_letters_it() {
        let (tx, rx) = unbounded();
        let (at_gate_tx, at_gate) = unbounded();
        let (open_gate, open_gate_rx) = unbounded();
        let health = Arc::new(Health::new(Duration::from_secs(3600)));
        let context = WorkerContext {
            processor: Arc::new(OrderEventProcessor::new(UnclassifiedRepository {
                inner: MemoryRepository::new(),
                failures: std::sync::atomic::AtomicU32::new(worker::UNEXPECTED_RETRIES),
                at_gate: at_gate_tx,
                open_gate: open_gate_rx,
            })),
            completions: tx,
            shutdown: Shutdown::new(),
            metrics: Arc::new(Metrics::default()),
            health: Arc::clone(&health),
        };
        let settings = PoolSettings {
            workers: 1,
            capacity: 8,
            drain_budget: Duration::from_secs(60),
            batch_max: 16,
        };
        let pool = WorkerPool::start(settings, context).expect("start");
        assert_eq!(health.liveness(), Ok(()));
        pool.queues[0]
            .send(job("stuck", OrderStatus::Created, 7))
            .expect("queued");
        // Every allowed failure has happened: the next attempt waits at the gate.
        at_gate
            .recv()
            .expect("the worker retried after its failures");
        let reason = health
            .liveness()
            .expect_err("a stalled worker fails liveness");
        assert!(
            reason.contains("worker 0 stalled: order stuck at partition 0 offset 7")
                && reason.contains("never dead-lettered"),
            "{reason}"
        );
        assert!(rx.try_recv().is_err(), "no result while stalled");
        open_gate.send(()).expect("open the gate");
        pool.close_and_join();
        let results: Vec<JobResult> = rx.try_iter().map(|c| c.result).collect();
        assert_eq!(results, vec![JobResult::Applied(Outcome::Waiting)]);
        assert_eq!(health.liveness(), Ok(()), "the stall is over");
    }

    /// A database that is down: every transaction fails as transient, and is counted.
    struct DownRepository(std::sync::atomic::AtomicUsize);

    impl crate::repository::CourierRepository for DownRepository {
        fn transaction<T>(
            &self,
            _work: &mut dyn FnMut(&mut dyn crate::repository::StorageTx) -> Result<T, RepoError>,
        ) -> Result<T, RepoError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(RepoError::Transient("down".into()))
        }
        fn snapshot(&self) -> Result<crate::repository::Snapshot, RepoError> {
            Err(RepoError::Transient("down".into()))
        }
        fn fleet(&self) -> Result<crate::repository::FleetGauges, RepoError> {
            Err(RepoError::Transient("down".into()))
        }
        fn count_overdue(&self, _: chrono::DateTime<chrono::Utc>) -> Result<i64, RepoError> {
            Err(RepoError::Transient("down".into()))
        }
        fn has_waiting_beside_available(&self) -> Result<bool, RepoError> {
            Err(RepoError::Transient("down".into()))
        }
    }

    #[test]
    fn stopping_with_the_database_down_tries_once_then_leaves_the_whole_queue() {
        let (tx, rx) = unbounded();
        let shutdown = Shutdown::new();
        let processor = Arc::new(OrderEventProcessor::new(DownRepository(
            std::sync::atomic::AtomicUsize::new(0),
        )));
        let context = WorkerContext {
            processor: Arc::clone(&processor),
            completions: tx,
            shutdown: shutdown.clone(),
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::new(Duration::from_secs(60))),
        };
        let settings = PoolSettings {
            workers: 1,
            capacity: 100,
            drain_budget: Duration::from_secs(60),
            batch_max: 16,
        };
        let pool = WorkerPool::start(settings, context).expect("start");
        for i in 0..40 {
            pool.try_submit(
                job(&format!("q{i}"), OrderStatus::Created, i),
                &shutdown,
                QUEUE_WAIT,
            )
            .expect("queued");
        }
        let calls = || {
            processor
                .repository()
                .0
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        while calls() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = calls();
        shutdown.trigger();
        pool.close_and_join();
        // At most the attempt under way and the one retry that sees the stop: not one per job.
        assert!(calls() - before <= 2, "{} more attempts", calls() - before);
        let results: Vec<JobResult> = rx.try_iter().map(|c| c.result).collect();
        assert_eq!(results, vec![JobResult::Abandoned; 40]);
    }

    /// A pool over a [`PoisonedRepository`], and the ends of its gate.
    struct Gated {
        pool: WorkerPool,
        completions: Receiver<Completion>,
        processor: Arc<OrderEventProcessor<PoisonedRepository>>,
        /// Receives once a worker is inside the gate's transaction.
        at_gate: Receiver<()>,
        /// Lets it through.
        open_gate: Sender<()>,
    }

    fn gated(workers: usize) -> Gated {
        let (tx, completions) = unbounded();
        let (at_gate_tx, at_gate) = unbounded();
        let (open_gate, open_gate_rx) = unbounded();
        let repository = PoisonedRepository {
            inner: MemoryRepository::new(),
            at_gate: at_gate_tx,
            open_gate: open_gate_rx,
            outlines: Default::default(),
        };
        let processor = Arc::new(OrderEventProcessor::new(repository));
        let context = WorkerContext {
            processor: Arc::clone(&processor),
            completions: tx,
            shutdown: Shutdown::new(),
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::new(Duration::from_secs(60))),
        };
        let settings = PoolSettings {
            workers,
            capacity: 16,
            drain_budget: Duration::from_secs(60),
            batch_max: 16,
        };
        Gated {
            pool: WorkerPool::start(settings, context).expect("start"),
            completions,
            processor,
            at_gate,
            open_gate,
        }
    }

    #[test]
    fn submit_queues_a_job_on_its_orders_worker() {
        let Gated {
            pool,
            at_gate,
            open_gate,
            ..
        } = gated(4);
        let running = Shutdown::new();
        let held = pool
            .route(&OrderId::parse("gate").expect("id"))
            .expect("a worker");
        pool.try_submit(job("gate", OrderStatus::Created, 0), &running, QUEUE_WAIT)
            .expect("queued");
        at_gate.recv().expect("the worker reached the gate");
        // Ten orders of the held worker, mixed with ten of others: exactly those ten wait.
        let route = |id: &String| {
            pool.route(&OrderId::parse(id.as_str()).expect("id"))
                .expect("a worker")
        };
        let ids: Vec<String> = (0..).map(|i| format!("o-{i}")).take(200).collect();
        let mine = ids.iter().filter(|id| route(id) == held).take(10);
        let others = ids.iter().filter(|id| route(id) != held).take(10);
        for (offset, id) in mine.zip(others).flat_map(|(a, b)| [a, b]).enumerate() {
            pool.try_submit(
                job(id, OrderStatus::Created, 1 + offset as i64),
                &running,
                QUEUE_WAIT,
            )
            .expect("queued");
        }
        assert_eq!(pool.queue_depths()[held], 10);
        open_gate.send(()).expect("open the gate");
        pool.close_and_join();
    }

    #[test]
    fn a_failing_event_in_a_batch_fails_alone() {
        let Gated {
            pool,
            completions: rx,
            processor,
            at_gate,
            open_gate,
        } = gated(1);
        // Hold the worker inside the gate's transaction while the three events queue up behind
        // it; once the gate opens, it takes all three into one batch.
        pool.queues[0]
            .send(job("gate", OrderStatus::Created, 0))
            .expect("queued");
        at_gate.recv().expect("the worker reached the gate");
        for (i, id) in ["a", "poison", "b"].iter().enumerate() {
            pool.queues[0]
                .send(job(id, OrderStatus::Created, 1 + i as i64))
                .expect("queued");
        }
        open_gate.send(()).expect("open the gate");
        pool.close_and_join();
        let mut results: Vec<(i64, JobResult)> = rx
            .try_iter()
            .map(|c| (c.position.offset, c.result))
            .collect();
        results.sort_by_key(|(o, _)| *o);
        let outlines = processor
            .repository()
            .outlines
            .lock()
            .expect("outlines")
            .clone();
        let batch: Vec<String> = ["a", "b", "poison"].map(String::from).to_vec();
        assert!(
            outlines.contains(&batch),
            "the three events never formed one batch: {outlines:?}"
        );
        assert_eq!(results.len(), 4, "{results:?}");
        assert_eq!(results[0].1, JobResult::Applied(Outcome::Waiting));
        assert_eq!(results[1].1, JobResult::Applied(Outcome::Waiting));
        assert!(
            matches!(results[2].1, JobResult::Failed(RepoError::Rejected(_))),
            "{results:?}"
        );
        assert_eq!(results[3].1, JobResult::Applied(Outcome::Waiting));
        // Only the failing event failed: the others are stored, the poisoned one is not.
        let snapshot = processor.repository().snapshot().expect("snapshot");
        let stored: Vec<&str> = snapshot.waiting.iter().map(OrderId::as_str).collect();
        assert_eq!(stored, ["gate", "a", "b"]);
    }

    #[test]
    fn once_stopping_every_job_is_given_back_even_to_a_queue_with_room() {
        let (pool, rx, shutdown) = pool(1, 16, Duration::from_secs(1));
        let running = Shutdown::new();
        pool.try_submit(job("a", OrderStatus::Created, 0), &running, QUEUE_WAIT)
            .expect("queued");
        shutdown.trigger();
        // The queue has room, but once stopping nothing more is queued: `created` of b is
        // refused, and so is its `completed`, which must never be applied ahead of it.
        for (offset, status) in [(1, OrderStatus::Created), (2, OrderStatus::Completed)] {
            let refused = pool.try_submit(job("b", status, offset), &shutdown, QUEUE_WAIT);
            assert!(refused.is_err(), "offset {offset} queued while stopping");
        }
        pool.close_and_join();
        let done: Vec<i64> = rx.try_iter().map(|c| c.position.offset).collect();
        assert_eq!(done, [0]);
    }

    #[test]
    fn try_submit_never_waits_and_says_why_it_gives_a_job_back() {
        let Gated {
            pool,
            at_gate,
            open_gate,
            ..
        } = gated(1);
        let running = Shutdown::new();
        pool.try_submit(
            job("gate", OrderStatus::Created, 0),
            &running,
            Duration::ZERO,
        )
        .expect("queued");
        at_gate.recv().expect("the worker reached the gate");
        // The worker is held: its queue (16) fills, and the next job comes back at once.
        for offset in 1..=16 {
            pool.try_submit(
                job(&format!("q{offset}"), OrderStatus::Created, offset),
                &running,
                Duration::ZERO,
            )
            .expect("room in the queue");
        }
        let full = pool.try_submit(
            job("q17", OrderStatus::Created, 17),
            &running,
            Duration::ZERO,
        );
        assert!(
            matches!(&full, Err(Refused::Full(j)) if j.position.offset == 17),
            "{full:?}"
        );
        let stopping = Shutdown::new();
        stopping.trigger();
        let refused = pool.try_submit(
            job("q18", OrderStatus::Created, 18),
            &stopping,
            Duration::ZERO,
        );
        assert!(matches!(refused, Err(Refused::Stopping(_))), "{refused:?}");
        open_gate.send(()).expect("open the gate");
        pool.close_and_join();
        let gone = WorkerPool::empty().try_submit(
            job("q19", OrderStatus::Created, 19),
            &running,
            Duration::ZERO,
        );
        assert!(matches!(gone, Err(Refused::Gone(_))), "{gone:?}");
    }

    #[test]
    fn a_pool_without_workers_gives_every_job_back() {
        let pool = WorkerPool::empty();
        let id = OrderId::parse("o-1").expect("id");
        assert_eq!(pool.route(&id), None);
        let back = pool.try_submit(
            job("o-1", OrderStatus::Created, 0),
            &Shutdown::new(),
            QUEUE_WAIT,
        );
        assert!(back.is_err(), "an empty pool takes no job");
    }

    #[test]
    fn spreads_orders_over_workers() {
        let (pool, _rx, _shutdown) = pool(4, 1, Duration::from_secs(1));
        let mut used = [0usize; 4];
        for i in 0..1000 {
            let w = pool.route(&OrderId::parse(format!("{i}")).expect("id"));
            used[w.expect("a worker")] += 1;
        }
        assert!(used.iter().all(|n| *n > 150), "{used:?}");
        pool.close_and_join();
    }
}
