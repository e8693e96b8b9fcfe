//! Long random streams (fixed seeds, so failures replay): duplicates, reordering within and
//! across orders, events for unknown orders, fewer couriers than orders, couriers paused, resumed
//! and hired mid-stream. PostgreSQL is compared against the in-memory model, one transaction per
//! event: it must return the same outcome for every step (and for every event of a batch),
//! hold every invariant after every step, and end in the same state; batched, also behind
//! PgBouncer in transaction mode.
//!
//! The model is never compared with itself: in memory a batch is the same handlers on the same
//! store (`StorageTx::lock_batch` does nothing there), so only PostgreSQL, whose batches lock
//! rows up front and write set-based, can disagree with it.

use crate::common;

use common::{at, courier, oid, TestDb};
use service_courier::domain::{CourierId, OrderEvent, OrderStatus, TransportType};
use service_courier::repository::{CourierRepository, MemoryRepository};
use service_courier::simulate::Rng;
use service_courier::usecase::couriers;
use service_courier::usecase::OrderEventProcessor;

#[derive(Debug, Clone)]
enum Step {
    Event(OrderEvent),
    Hire(u32, TransportType, i64),
    Pause(i64, i64),
    Resume(i64, i64),
}

/// A stream for `orders` orders and `couriers` couriers hired up front.
fn stream(seed: u64, orders: usize, couriers: u32) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut steps: Vec<Step> = (0..couriers)
        .map(|n| Step::Hire(n + 1, TransportType::ALL[n as usize % 3], n as i64))
        .collect();
    // Each order's lifecycle as service-order sends it.
    let mut lifecycles: Vec<Vec<OrderEvent>> = (0..orders)
        .map(|i| {
            let id = format!("ord-{seed}-{i}");
            let t0 = 100 + rng.below(1000) as i64;
            let mut statuses = vec![OrderStatus::Created];
            for s in [
                OrderStatus::Pending,
                OrderStatus::Confirmed,
                OrderStatus::Cooking,
            ] {
                if rng.chance(0.4) {
                    statuses.push(s);
                }
            }
            let end = rng.below(100);
            if end < 55 {
                statuses.push(OrderStatus::Delivering);
                statuses.push(if rng.chance(0.5) {
                    OrderStatus::Completed
                } else {
                    OrderStatus::Delivered
                });
            } else if end < 85 {
                statuses.push(
                    [
                        OrderStatus::Cancelled,
                        OrderStatus::Canceled,
                        OrderStatus::Deleted,
                    ][rng.below(3)],
                );
            } // else: still open at the end of the stream
            statuses
                .into_iter()
                .enumerate()
                .map(|(k, status)| OrderEvent {
                    order_id: oid(&id),
                    status,
                    created_at: at(t0 + 10 * k as i64),
                })
                .collect()
        })
        .collect();
    // Reorder within an order now and then (unkeyed events on several partitions).
    for life in &mut lifecycles {
        if life.len() > 1 && rng.chance(0.25) {
            let i = rng.below(life.len() - 1);
            life.swap(i, i + 1);
        }
    }
    // Interleave orders randomly, duplicating some events.
    let mut cursors = vec![0usize; lifecycles.len()];
    let mut open: Vec<usize> = (0..lifecycles.len()).collect();
    let mut clock = 2000;
    while !open.is_empty() {
        let k = rng.below(open.len());
        let o = open[k];
        let e = lifecycles[o][cursors[o]].clone();
        steps.push(Step::Event(e.clone()));
        if rng.chance(0.1) {
            steps.push(Step::Event(e));
        }
        cursors[o] += 1;
        if cursors[o] == lifecycles[o].len() {
            open.swap_remove(k);
        }
        clock += 1;
        // Now and then: an event for an order never created, or a courier change.
        match rng.below(100) {
            0..=2 => steps.push(Step::Event(OrderEvent {
                order_id: oid(&format!("ghost-{seed}-{clock}")),
                status: [
                    OrderStatus::Cancelled,
                    OrderStatus::Completed,
                    OrderStatus::Updated,
                ][rng.below(3)],
                created_at: at(clock),
            })),
            3..=4 => steps.push(Step::Pause(1 + rng.below(couriers as usize) as i64, clock)),
            5..=7 => steps.push(Step::Resume(1 + rng.below(couriers as usize) as i64, clock)),
            8 => steps.push(Step::Hire(1000 + clock as u32, TransportType::Car, clock)),
            _ => {}
        }
    }
    // A replayed tail, as after a crash before the commit of offsets.
    let n = steps.len();
    let tail: Vec<Step> = steps[n - n / 10..].to_vec();
    steps.extend(tail.into_iter().filter(|s| matches!(s, Step::Event(_))));
    steps
}

fn run<R: CourierRepository>(p: &OrderEventProcessor<R>, step: &Step) -> String {
    let repo = p.repository();
    match step {
        Step::Event(e) => format!("{:?}", p.apply(e).expect("apply")),
        Step::Hire(n, t, secs) => format!("{:?}", couriers::add(repo, &courier(*n, *t), at(*secs))),
        Step::Pause(id, secs) => format!("{:?}", couriers::pause(repo, CourierId(*id), at(*secs))),
        Step::Resume(id, secs) => {
            format!("{:?}", couriers::resume(repo, CourierId(*id), at(*secs)))
        }
    }
}

fn check_stream<R: CourierRepository>(
    seed: u64,
    orders: usize,
    couriers: u32,
    other: Option<OrderEventProcessor<R>>,
) {
    let model = OrderEventProcessor::new(MemoryRepository::new());
    let steps = stream(seed, orders, couriers);
    for (i, step) in steps.iter().enumerate() {
        let expected = run(&model, step);
        let snap = model.repository().snapshot().expect("snapshot");
        if let Err(broken) = snap.check_invariants() {
            panic!("seed {seed} step {i} {step:?}: memory broke an invariant: {broken}");
        }
        if let Some(p) = &other {
            let got = run(p, step);
            assert_eq!(
                got, expected,
                "seed {seed} step {i} {step:?}: outcomes differ"
            );
            let s = p.repository().snapshot().expect("snapshot");
            if let Err(broken) = s.check_invariants() {
                panic!("seed {seed} step {i} {step:?}: postgres broke an invariant: {broken}");
            }
        }
    }
    let m = model.repository().snapshot().expect("snapshot");
    assert!(m.orders.len() >= orders, "seed {seed}: a degenerate stream");
    if let Some(p) = &other {
        assert_eq!(
            p.repository().snapshot().expect("snapshot"),
            m,
            "seed {seed}: final states differ"
        );
    }
}

/// Applies the stream with micro-batching: runs of consecutive events of random length (1 to 20)
/// go through `apply_batch`, one transaction each. Outcomes and the final state must be exactly
/// those of one transaction per event.
fn check_stream_batched<R: CourierRepository>(
    seed: u64,
    orders: usize,
    couriers: u32,
    batched: OrderEventProcessor<R>,
) {
    let model = OrderEventProcessor::new(MemoryRepository::new());
    let steps = stream(seed, orders, couriers);
    let mut rng = Rng::new(seed ^ 0xba7c);
    let mut i = 0;
    while i < steps.len() {
        let Step::Event(_) = &steps[i] else {
            assert_eq!(
                run(&batched, &steps[i]),
                run(&model, &steps[i]),
                "seed {seed} step {i}"
            );
            i += 1;
            continue;
        };
        let want = 1 + rng.below(20);
        let mut events = Vec::new();
        while i < steps.len() && events.len() < want {
            match &steps[i] {
                Step::Event(e) => events.push(e),
                _ => break,
            }
            i += 1;
        }
        let got = batched.apply_batch(&events).expect("batch applies");
        let expected: Vec<_> = events
            .iter()
            .map(|e| model.apply(e).expect("model"))
            .collect();
        assert_eq!(got, expected, "seed {seed}: batch ending at step {i}");
        let snap = batched.repository().snapshot().expect("snapshot");
        if let Err(broken) = snap.check_invariants() {
            panic!("seed {seed} batch ending at step {i}: {broken}");
        }
    }
    assert_eq!(
        batched.repository().snapshot().expect("snapshot"),
        model.repository().snapshot().expect("snapshot"),
        "seed {seed}: final states differ"
    );
}

#[test]
fn postgres_batches_equal_the_model_one_event_at_a_time() {
    for seed in 2000..2030 {
        let Some(db) = TestDb::new(2) else { return };
        check_stream_batched(
            seed,
            40,
            1 + (seed % 4) as u32,
            OrderEventProcessor::new(db.repo.clone()),
        );
    }
}

/// The model itself: every invariant after every step of many streams (a broken handler
/// shows here first, and cheaply).
#[test]
fn the_model_holds_the_invariants_on_many_streams() {
    for seed in 0..200 {
        check_stream::<MemoryRepository>(seed, 40, 1 + (seed % 5) as u32, None);
    }
}

#[test]
fn postgres_and_the_model_agree_step_by_step() {
    for seed in 1000..1012 {
        let Some(db) = TestDb::new(2) else { return };
        check_stream(
            seed,
            40,
            1 + (seed % 4) as u32,
            Some(OrderEventProcessor::new(db.repo.clone())),
        );
    }
}

/// The same through PgBouncer in transaction mode (`DB_POOLER=transaction`): batches whose
/// transactions land on another server connection each time end as the model does.
#[test]
fn postgres_behind_pgbouncer_batches_equal_the_model() {
    for seed in 3000..3008 {
        let Some(db) = common::pgbouncer::PooledDb::new() else {
            return;
        };
        check_stream_batched(
            seed,
            40,
            1 + (seed % 4) as u32,
            OrderEventProcessor::new(db.repo.clone()),
        );
    }
}
