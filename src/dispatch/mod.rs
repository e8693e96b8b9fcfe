//! From the poller to the workers and back. Each event goes to worker `hash(order id) % N`
//! through that worker's bounded channel, so one order's events stay in order while the pool
//! runs in parallel (one shared channel would let two workers race on one order). Workers report
//! every event back on one completion channel; the poller turns those into commit points.

mod worker;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};

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
}

/// One event for a worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where it came from.
    pub position: Position,
    /// The parsed event.
    pub event: OrderEvent,
    /// The message value as it arrived: what a `processing_failed` dead letter carries.
    pub payload: Vec<u8>,
    /// When the poller received it (for latency figures).
    pub received: Instant,
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
    /// The job's message value as it arrived (for a dead letter).
    pub payload: Vec<u8>,
    /// What happened.
    pub result: JobResult,
    /// Time from receipt to completion.
    pub latency: Duration,
    /// Time from the event's `created_at` (its send time) to completion: end-to-end latency.
    pub age: Duration,
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

    /// The worker that owns an order: stable for the life of the process.
    pub fn route(&self, order: &OrderId) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        order.hash(&mut h);
        (h.finish() % self.queues.len() as u64) as usize
    }

    /// Queues a job on its order's worker, waiting while that queue is full (calling `waiting`
    /// now and then, so the caller can show it is alive). Gives the job back if stopping (it
    /// stays uncommitted and is delivered again after a restart).
    pub fn submit(
        &self,
        job: Job,
        shutdown: &Shutdown,
        mut waiting: impl FnMut(),
    ) -> Result<(), Box<Job>> {
        let queue = &self.queues[self.route(&job.event.order_id)];
        let mut job = job;
        loop {
            match queue.send_timeout(job, Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(j)) if !shutdown.is_shutdown() => {
                    waiting();
                    job = j;
                }
                Err(SendTimeoutError::Timeout(j)) | Err(SendTimeoutError::Disconnected(j)) => {
                    return Err(Box::new(j))
                }
            }
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
            },
            event: OrderEvent {
                order_id: OrderId::parse(order).expect("id"),
                status,
                created_at: chrono::Utc::now(),
            },
            payload: Vec::new(),
            received: Instant::now(),
        }
    }

    #[test]
    fn one_order_always_goes_to_one_worker_and_keeps_its_order() {
        let (pool, rx, shutdown) = pool(4, 8, Duration::from_secs(1));
        let w = pool.route(&OrderId::parse("o-1").expect("id"));
        for _ in 0..10 {
            assert_eq!(pool.route(&OrderId::parse("o-1").expect("id")), w);
        }
        // No courier: created waits, then cancelled; in order, created must come first.
        let mut offset = 0;
        for i in 0..50 {
            let id = format!("o-{i}");
            for status in [
                OrderStatus::Created,
                OrderStatus::Cooking,
                OrderStatus::Cancelled,
            ] {
                pool.submit(job(&id, status, offset), &shutdown, || {})
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
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..10 {
            let j = job(&format!("x{i}"), OrderStatus::Created, i);
            pool.queues[0].send(j).expect("queued");
        }
        pool.close_and_join();
        let results: Vec<JobResult> = rx.try_iter().map(|c| c.result).collect();
        assert_eq!(results, vec![JobResult::Abandoned; 10]);
    }

    /// The in-memory repository, except that any transaction touching order "poison" fails
    /// for good: to see a batch fall back to one transaction per event.
    struct PoisonedRepository(MemoryRepository);

    struct PoisonedTx<'a>(&'a mut dyn crate::repository::StorageTx);

    impl crate::repository::CourierRepository for PoisonedRepository {
        fn transaction<T>(
            &self,
            work: &mut dyn FnMut(&mut dyn crate::repository::StorageTx) -> Result<T, RepoError>,
        ) -> Result<T, RepoError> {
            self.0.transaction(&mut |tx| work(&mut PoisonedTx(tx)))
        }
        fn couriers(&self) -> Result<Vec<crate::repository::CourierView>, RepoError> {
            self.0.couriers()
        }
        fn snapshot(&self) -> Result<crate::repository::Snapshot, RepoError> {
            self.0.snapshot()
        }
        fn fleet(&self) -> Result<crate::repository::FleetGauges, RepoError> {
            self.0.fleet()
        }
        fn has_waiting_beside_available(&self) -> Result<bool, RepoError> {
            self.0.has_waiting_beside_available()
        }
    }

    impl crate::repository::StorageTx for PoisonedTx<'_> {
        fn lock_order(&mut self, o: &OrderId) -> Result<crate::repository::OrderState, RepoError> {
            if o.as_str() == "poison" {
                return Err(RepoError::Permanent("poisoned".into()));
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
        ) -> Result<(), RepoError> {
            self.0.finish_delivery(o, c, at)
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
        fn couriers(&self) -> Result<Vec<crate::repository::CourierView>, RepoError> {
            Err(RepoError::Transient("down".into()))
        }
        fn snapshot(&self) -> Result<crate::repository::Snapshot, RepoError> {
            Err(RepoError::Transient("down".into()))
        }
        fn fleet(&self) -> Result<crate::repository::FleetGauges, RepoError> {
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
            pool.submit(
                job(&format!("q{i}"), OrderStatus::Created, i),
                &shutdown,
                || {},
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

    #[test]
    fn a_failing_event_in_a_batch_fails_alone() {
        let (tx, rx) = unbounded();
        let shutdown = Shutdown::new();
        let context = WorkerContext {
            processor: Arc::new(OrderEventProcessor::new(PoisonedRepository(
                MemoryRepository::new(),
            ))),
            completions: tx,
            shutdown: shutdown.clone(),
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::new(Duration::from_secs(60))),
        };
        let settings = PoolSettings {
            workers: 1,
            capacity: 16,
            drain_budget: Duration::from_secs(1),
            batch_max: 16,
        };
        let pool = WorkerPool::start(settings, context).expect("start");
        // Fill the queue before the worker can drain it, so the events form one batch.
        for (i, id) in ["a", "poison", "b"].iter().enumerate() {
            pool.queues[0]
                .send(job(id, OrderStatus::Created, i as i64))
                .expect("queued");
        }
        pool.close_and_join();
        let mut results: Vec<(i64, JobResult)> = rx
            .try_iter()
            .map(|c| (c.position.offset, c.result))
            .collect();
        results.sort_by_key(|(o, _)| *o);
        assert_eq!(results[0].1, JobResult::Applied(Outcome::Waiting));
        assert!(matches!(
            results[1].1,
            JobResult::Failed(RepoError::Permanent(_))
        ));
        assert_eq!(results[2].1, JobResult::Applied(Outcome::Waiting));
    }

    #[test]
    fn spreads_orders_over_workers() {
        let (pool, _rx, _shutdown) = pool(4, 1, Duration::from_secs(1));
        let mut used = [0usize; 4];
        for i in 0..1000 {
            used[pool.route(&OrderId::parse(format!("{i}")).expect("id"))] += 1;
        }
        assert!(used.iter().all(|n| *n > 150), "{used:?}");
        pool.close_and_join();
    }
}
