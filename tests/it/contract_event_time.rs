//! Contract rules about what an event's fields mean for the queue (docs/rules.md), run
//! against both the in-memory fake and PostgreSQL: waiting orders are served by when they were
//! created (the `created` event's `created_at`), ties by arrival; whitespace around an order id
//! is not part of it.

use crate::common;

use common::{at, courier, event, oid};
use service_courier::domain::{CourierId, OrderEvent, TransportType};
use service_courier::repository::CourierRepository;
use service_courier::usecase::couriers;
use service_courier::usecase::{OrderEventProcessor, Outcome, Release};

fn apply<R: CourierRepository>(p: &OrderEventProcessor<R>, e: OrderEvent) -> Outcome {
    let out = p.apply(&e).expect("event applies");
    let snap = p.repository().snapshot().expect("snapshot");
    if let Err(broken) = snap.check_invariants() {
        panic!("after {e:?} -> {out:?}: {broken}\n{snap:#?}");
    }
    out
}

fn waiting<R: CourierRepository>(p: &OrderEventProcessor<R>) -> Vec<String> {
    p.repository()
        .snapshot()
        .expect("snapshot")
        .waiting
        .iter()
        .map(|o| o.as_str().to_owned())
        .collect()
}

fn freed(courier: CourierId, took: &str) -> Option<Release> {
    Some(Release {
        courier,
        took: Some(oid(took)),
    })
}

/// Events arrive out of creation order (an unkeyed backlog over several partitions); couriers
/// come afterwards and take orders oldest first, ties by arrival.
fn waiting_orders_are_served_by_creation_then_arrival<R: CourierRepository>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    for (id, secs) in [
        ("c", 30),
        ("a", 10),
        ("tie-1", 20),
        ("d", 40),
        ("tie-2", 20),
    ] {
        assert_eq!(apply(&p, event(id, "created", secs)), Outcome::Waiting);
    }
    assert_eq!(waiting(&p), ["a", "tie-1", "tie-2", "c", "d"]);
    let c1 = couriers::add(p.repository(), &courier(1, TransportType::Car), at(100))
        .expect("hire")
        .id;
    assert_eq!(waiting(&p), ["tie-1", "tie-2", "c", "d"]);
    assert_eq!(
        apply(&p, event("a", "completed", 110)),
        Outcome::Completed(freed(c1, "tie-1"))
    );
    assert_eq!(
        apply(&p, event("tie-1", "cancelled", 111)),
        Outcome::Cancelled(freed(c1, "tie-2"))
    );
    // A late arrival created before everyone still waiting goes first.
    assert_eq!(apply(&p, event("early", "created", 5)), Outcome::Waiting);
    assert_eq!(
        apply(&p, event("tie-2", "delivered", 112)),
        Outcome::Completed(freed(c1, "early"))
    );
    assert_eq!(waiting(&p), ["c", "d"]);
    let s = p.repository().snapshot().expect("snapshot");
    assert_eq!(s.deliveries[&oid("early")].assigned_at, at(112));
}

/// The same inside one transaction: orders queued by the batch and orders already queued are
/// served in one creation order.
fn a_batch_serves_old_and_new_waiting_orders_by_creation<R: CourierRepository>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    let c1 = couriers::add(p.repository(), &courier(1, TransportType::Car), at(0))
        .expect("hire")
        .id;
    assert_eq!(
        apply(&p, event("busy", "created", 1)),
        Outcome::Assigned(c1)
    );
    assert_eq!(apply(&p, event("stored", "created", 20)), Outcome::Waiting);
    let batch = [
        event("fresh-late", "created", 30),
        event("fresh-early", "created", 10),
        event("busy", "completed", 40),
        event("fresh-early", "completed", 41),
    ];
    let refs: Vec<&OrderEvent> = batch.iter().collect();
    let outcomes = p.apply_batch(&refs).expect("batch applies");
    assert_eq!(
        outcomes,
        vec![
            Outcome::Waiting,
            Outcome::Waiting,
            Outcome::Completed(freed(c1, "fresh-early")),
            Outcome::Completed(freed(c1, "stored")),
        ]
    );
    assert_eq!(waiting(&p), ["fresh-late"]);
}

/// `" 42 "` and `42` are one order: its events find each other.
fn whitespace_around_an_order_id_is_the_same_order<R: CourierRepository>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    let c1 = couriers::add(p.repository(), &courier(1, TransportType::Car), at(0))
        .expect("hire")
        .id;
    let padded = OrderEvent::parse(
        br#"{"order_id":"  42 ","status":"created","created_at":"2025-08-06T12:00:10Z"}"#,
    )
    .expect("a padded id parses");
    assert_eq!(apply(&p, padded.clone()), Outcome::Assigned(c1));
    assert_eq!(apply(&p, padded), Outcome::Duplicate);
    let plain = OrderEvent::parse(
        br#"{"order_id":42,"status":"delivered","created_at":"2025-08-06T12:00:20Z"}"#,
    )
    .expect("parses");
    assert_eq!(
        apply(&p, plain),
        Outcome::Completed(Some(Release {
            courier: c1,
            took: None
        }))
    );
    let s = p.repository().snapshot().expect("snapshot");
    assert_eq!(s.orders.len(), 1);
    assert!(s.deliveries.contains_key(&oid("42")));
    assert_eq!(s.couriers[0].completed_deliveries, 1);
}

contract!(
    waiting_orders_are_served_by_creation_then_arrival,
    a_batch_serves_old_and_new_waiting_orders_by_creation,
    whitespace_around_an_order_id_is_the_same_order,
);
