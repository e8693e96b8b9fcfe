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

use crate::domain::{OrderEvent, OrderId};
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
    /// What happened.
    pub result: JobResult,
    /// Time from receipt to completion.
    pub latency: Duration,
}

/// The fixed pool of workers, each with its own bounded queue.
pub struct WorkerPool {
    queues: Vec<Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `workers` threads applying events through `processor`, each reading a queue of
    /// `capacity` jobs and reporting on `completions`. Once stopping, queued events are still
    /// applied for `drain_budget`; the rest are reported abandoned (uncommitted, redelivered).
    pub fn start<R: CourierRepository + 'static>(
        workers: usize,
        capacity: usize,
        drain_budget: Duration,
        processor: Arc<OrderEventProcessor<R>>,
        completions: Sender<Completion>,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let (tx, rx): (Sender<Job>, Receiver<Job>) = bounded(capacity.max(1));
            let worker = worker::Worker {
                index,
                jobs: rx,
                completions: completions.clone(),
                processor: Arc::clone(&processor),
                shutdown: shutdown.clone(),
                drain_budget,
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("worker-{index}"))
                    .spawn(move || worker.run())?,
            );
            queues.push(tx);
        }
        Ok(Self { queues, handles })
    }

    /// A pool with no workers, left behind once the real one has been closed.
    pub fn empty() -> Self {
        Self {
            queues: Vec::new(),
            handles: Vec::new(),
        }
    }

    /// The worker that owns an order: stable for the life of the process.
    pub fn route(&self, order: &OrderId) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        order.hash(&mut h);
        (h.finish() % self.queues.len() as u64) as usize
    }

    /// Queues a job on its order's worker, waiting while that queue is full. Gives the job back
    /// if stopping (it stays uncommitted and is delivered again after a restart).
    pub fn submit(&self, job: Job, shutdown: &Shutdown) -> Result<(), Box<Job>> {
        let queue = &self.queues[self.route(&job.event.order_id)];
        let mut job = job;
        loop {
            match queue.send_timeout(job, Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(j)) if !shutdown.is_shutdown() => job = j,
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
    pub fn close_and_join(self) -> usize {
        drop(self.queues);
        self.handles
            .into_iter()
            .map(JoinHandle::join)
            .filter(Result::is_err)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;
    use crate::repository::MemoryRepository;
    use crossbeam_channel::unbounded;

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
            received: Instant::now(),
        }
    }

    #[test]
    fn one_order_always_goes_to_one_worker_and_keeps_its_order() {
        let (tx, rx) = unbounded();
        let shutdown = Shutdown::new();
        let processor = Arc::new(OrderEventProcessor::new(MemoryRepository::new()));
        let pool = WorkerPool::start(
            4,
            8,
            Duration::from_secs(1),
            processor,
            tx,
            shutdown.clone(),
        )
        .expect("start");
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
                pool.submit(job(&id, status, offset), &shutdown)
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
        let (tx, rx) = unbounded();
        let shutdown = Shutdown::new();
        let processor = Arc::new(OrderEventProcessor::new(MemoryRepository::new()));
        let pool = WorkerPool::start(1, 100, Duration::ZERO, processor, tx, shutdown.clone())
            .expect("start");
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

    #[test]
    fn spreads_orders_over_workers() {
        let (tx, _rx) = unbounded();
        let processor = Arc::new(OrderEventProcessor::new(MemoryRepository::new()));
        let pool = WorkerPool::start(4, 1, Duration::from_secs(1), processor, tx, Shutdown::new())
            .expect("start");
        let mut used = [0usize; 4];
        for i in 0..1000 {
            used[pool.route(&OrderId::parse(format!("{i}")).expect("id"))] += 1;
        }
        assert!(used.iter().all(|n| *n > 150), "{used:?}");
        pool.close_and_join();
    }
}
