//! Real PostgreSQL under concurrency: 8 threads apply `created` for 2,000 distinct orders
//! against 100 couriers. Exactly 100 are assigned, 1,900 wait in arrival order, no courier is
//! taken twice; completing the 100 hands the couriers the next 100 in FIFO order.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use common::{at, courier, event, TestDb};
use service_courier::domain::{CourierStatus, OrderId, TransportType};
use service_courier::repository::{CourierRepository, OrderState};
use service_courier::usecase::{couriers, OrderEventProcessor, Outcome, Release};

const THREADS: usize = 8;
const ORDERS: usize = 2000;
const COURIERS: u32 = 100;

#[test]
fn eight_threads_2000_orders_100_couriers() {
    let Some(db) = TestDb::new(THREADS as u32) else {
        return;
    };
    for n in 0..COURIERS {
        couriers::add(
            &db.repo,
            &courier(n, TransportType::ALL[n as usize % 3]),
            at(n as i64),
        )
        .expect("hire");
    }
    let p = Arc::new(OrderEventProcessor::new(db.repo.clone()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                // Each thread sends its orders in its own arrival order.
                (0..ORDERS)
                    .filter(|i| i % THREADS == t)
                    .map(|i| {
                        let e = event(&format!("o{i:04}"), "created", 1000 + i as i64);
                        let out = p.apply(&e).expect("apply");
                        (e.order_id, out)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut outcomes: Vec<(OrderId, Outcome)> = Vec::new();
    for h in handles {
        outcomes.extend(h.join().expect("thread"));
    }

    let assigned: Vec<_> = outcomes
        .iter()
        .filter_map(|(o, out)| match out {
            Outcome::Assigned(c) => Some((o.clone(), *c)),
            _ => None,
        })
        .collect();
    let waiting = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Waiting)
        .count();
    assert_eq!(assigned.len(), COURIERS as usize);
    assert_eq!(waiting, ORDERS - COURIERS as usize);
    let distinct: BTreeSet<_> = assigned.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        distinct.len(),
        COURIERS as usize,
        "a courier was taken twice"
    );

    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    assert!(snap
        .couriers
        .iter()
        .all(|c| c.status == CourierStatus::Busy));
    assert_eq!(snap.waiting.len(), ORDERS - COURIERS as usize);
    // Arrival order: each thread's orders wait in the order that thread sent them.
    let place: HashMap<&OrderId, usize> = snap
        .waiting
        .iter()
        .enumerate()
        .map(|(i, o)| (o, i))
        .collect();
    for t in 0..THREADS {
        let mine: Vec<usize> = (0..ORDERS)
            .filter(|i| i % THREADS == t)
            .filter_map(|i| place.get(&common::oid(&format!("o{i:04}"))).copied())
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "thread {t}'s orders wait out of order"
        );
    }

    // Completing the 100 assigned hands each courier the next waiting order, first come first.
    let queue = snap.waiting.clone();
    for (k, (order, courier)) in assigned.iter().enumerate() {
        let out = p
            .apply(&event(order.as_str(), "completed", 5000 + k as i64))
            .expect("complete");
        assert_eq!(
            out,
            Outcome::Completed(Some(Release {
                courier: *courier,
                took: Some(queue[k].clone())
            }))
        );
    }
    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    assert_eq!(snap.waiting, queue[COURIERS as usize..].to_vec());
    for o in &queue[..COURIERS as usize] {
        assert!(
            matches!(snap.orders[o], OrderState::Assigned(_)),
            "{o} not assigned"
        );
    }
    assert_eq!(snap.statistics().values().sum::<i64>(), COURIERS as i64);
}

#[test]
fn concurrent_releases_and_waits_never_strand_an_order() {
    // Orders arrive while others complete: an order must never wait beside a free courier.
    let Some(db) = TestDb::new(THREADS as u32) else {
        return;
    };
    for n in 0..10 {
        couriers::add(&db.repo, &courier(n, TransportType::Car), at(0)).expect("hire");
    }
    let p = Arc::new(OrderEventProcessor::new(db.repo.clone()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                for i in 0..60 {
                    let id = format!("t{t}-{i}");
                    p.apply(&event(&id, "created", 10 + i)).expect("create");
                    if i >= 2 {
                        let old = format!("t{t}-{}", i - 2);
                        let status = if i % 3 == 0 { "cancelled" } else { "completed" };
                        p.apply(&event(&old, status, 10 + i)).expect("end");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
}
