//! The repository contract: every rule of docs/rules.md, written once against the
//! `CourierRepository` trait and run against the in-memory fake, PostgreSQL, and PostgreSQL
//! behind PgBouncer in transaction mode.

use crate::common;

use common::{at, courier, event, oid};
use service_courier::domain::{
    CompletedBy, CourierId, CourierRank, CourierStatus, OrderEvent, QueueKey, TransportType,
};
use service_courier::repository::{CourierRepository, OrderState, RepoError, Snapshot};
use service_courier::usecase::couriers::{self, CourierCommandError};
use service_courier::usecase::{OrderEventProcessor, Outcome, Release};

/// Applies an event and checks every invariant afterwards.
fn apply<R: CourierRepository>(p: &OrderEventProcessor<R>, e: OrderEvent) -> Outcome {
    let out = p.apply(&e).expect("event applies");
    let snap = p.repository().snapshot().expect("snapshot");
    if let Err(broken) = snap.check_invariants() {
        panic!("after {e:?} -> {out:?}: {broken}\n{snap:#?}");
    }
    out
}

fn hire<R: CourierRepository>(repo: &R, n: u32, t: TransportType, secs: i64) -> CourierId {
    couriers::add(repo, &courier(n, t), at(secs))
        .expect("hire")
        .id
}

fn snap<R: CourierRepository>(p: &OrderEventProcessor<R>) -> Snapshot {
    p.repository().snapshot().expect("snapshot")
}

fn status_of<R: CourierRepository>(p: &OrderEventProcessor<R>, id: CourierId) -> CourierStatus {
    snap(p)
        .couriers
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.status)
        .expect("courier exists")
}

fn freed(courier: CourierId, took: Option<&str>) -> Option<Release> {
    Some(Release {
        courier,
        took: took.map(oid),
    })
}

fn created_assigns_an_available_courier_with_its_deadline<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    assert_eq!(apply(&p, event("o1", "created", 10)), Outcome::Assigned(c));
    let s = snap(&p);
    assert_eq!(s.couriers[0].status, CourierStatus::Busy);
    assert_eq!(s.couriers[0].active_order, Some(oid("o1")));
    let d = &s.deliveries[&oid("o1")];
    assert_eq!(
        (d.courier, d.assigned_at, d.completed_at),
        (c, at(10), None)
    );
    assert_eq!(d.deadline, at(10 + 5 * 60));
}

fn deadlines_follow_the_transport<R: CourierRepository>(repo: R) {
    let foot = hire(&repo, 1, TransportType::OnFoot, 0);
    let scooter = hire(&repo, 2, TransportType::Scooter, 1);
    let p = OrderEventProcessor::new(repo);
    assert_eq!(
        apply(&p, event("a", "created", 10)),
        Outcome::Assigned(foot)
    );
    assert_eq!(
        apply(&p, event("b", "created", 10)),
        Outcome::Assigned(scooter)
    );
    let s = snap(&p);
    assert_eq!(s.deliveries[&oid("a")].deadline, at(10 + 30 * 60));
    assert_eq!(s.deliveries[&oid("b")].deadline, at(10 + 15 * 60));
}

fn picks_fewest_completed_then_longest_available<R: CourierRepository>(repo: R) {
    let a = hire(&repo, 1, TransportType::Car, 1);
    let b = hire(&repo, 2, TransportType::Car, 2);
    let c = hire(&repo, 3, TransportType::Car, 3);
    let p = OrderEventProcessor::new(repo);
    // All at zero deliveries: the one available longest.
    assert_eq!(apply(&p, event("o1", "created", 10)), Outcome::Assigned(a));
    apply(&p, event("o1", "completed", 20));
    // a has one delivery now: b, then c, though a is free.
    assert_eq!(apply(&p, event("o2", "created", 30)), Outcome::Assigned(b));
    assert_eq!(apply(&p, event("o3", "created", 31)), Outcome::Assigned(c));
    apply(&p, event("o3", "completed", 40));
    apply(&p, event("o2", "completed", 41));
    // All at one delivery: a has been available since 20, c since 40, b since 41.
    assert_eq!(apply(&p, event("o4", "created", 50)), Outcome::Assigned(a));
    assert_eq!(apply(&p, event("o5", "created", 51)), Outcome::Assigned(c));
    assert_eq!(apply(&p, event("o6", "created", 52)), Outcome::Assigned(b));
}

fn without_couriers_orders_wait_in_fifo_order<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Scooter, 0);
    let p = OrderEventProcessor::new(repo);
    assert_eq!(apply(&p, event("o1", "created", 10)), Outcome::Assigned(c));
    assert_eq!(apply(&p, event("o2", "created", 11)), Outcome::Waiting);
    assert_eq!(apply(&p, event("o3", "created", 12)), Outcome::Waiting);
    assert_eq!(apply(&p, event("o4", "created", 13)), Outcome::Waiting);
    assert_eq!(snap(&p).waiting, vec![oid("o2"), oid("o3"), oid("o4")]);
    // The freed courier takes the first in line, whatever frees them.
    assert_eq!(
        apply(&p, event("o1", "completed", 20)),
        Outcome::Completed(freed(c, Some("o2")))
    );
    assert_eq!(
        apply(&p, event("o2", "cancelled", 21)),
        Outcome::Cancelled(freed(c, Some("o3")))
    );
    assert_eq!(snap(&p).waiting, vec![oid("o4")]);
    let d = &snap(&p).deliveries[&oid("o3")];
    assert_eq!((d.courier, d.assigned_at), (c, at(21)));
}

fn a_new_or_resumed_courier_takes_the_first_waiting_order<R: CourierRepository>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    assert_eq!(apply(&p, event("o1", "created", 10)), Outcome::Waiting);
    assert_eq!(apply(&p, event("o2", "created", 11)), Outcome::Waiting);
    let added =
        couriers::add(p.repository(), &courier(1, TransportType::Car), at(20)).expect("add");
    assert_eq!(
        (added.status, added.took),
        (CourierStatus::Busy, Some(oid("o1")))
    );
    let second = hire(p.repository(), 2, TransportType::Car, 21);
    assert_eq!(status_of(&p, second), CourierStatus::Busy);
    assert_eq!(snap(&p).deliveries[&oid("o2")].courier, second);

    // A paused courier gets nothing; resuming hands them the first waiting order.
    let third = hire(p.repository(), 3, TransportType::Car, 22);
    couriers::pause(p.repository(), third, at(23)).expect("pause");
    assert_eq!(apply(&p, event("o3", "created", 24)), Outcome::Waiting);
    let resumed = couriers::resume(p.repository(), third, at(25)).expect("resume");
    assert_eq!(resumed.took, Some(oid("o3")));
    assert!(snap(&p).check_invariants().is_ok());
}

fn pause_and_resume_are_idempotent_and_keep_the_active_order<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    apply(&p, event("o1", "created", 10));
    apply(&p, event("o2", "created", 11));
    // Paused while carrying o1: o1 stays theirs; completing it frees them but they stay paused
    // and the waiting o2 is not theirs.
    couriers::pause(p.repository(), c, at(12)).expect("pause");
    couriers::pause(p.repository(), c, at(13)).expect("pause twice");
    assert_eq!(
        apply(&p, event("o1", "completed", 14)),
        Outcome::Completed(freed(c, None))
    );
    assert_eq!(status_of(&p, c), CourierStatus::Paused);
    assert_eq!(snap(&p).waiting, vec![oid("o2")]);
    let r = couriers::resume(p.repository(), c, at(15)).expect("resume");
    assert_eq!(r.took, Some(oid("o2")));
    let again = couriers::resume(p.repository(), c, at(16)).expect("resume twice");
    assert_eq!((again.status, again.took), (CourierStatus::Busy, None));
    // Resuming a paused courier who still carries an order makes them busy, not available.
    couriers::pause(p.repository(), c, at(17)).expect("pause");
    let r = couriers::resume(p.repository(), c, at(18)).expect("resume");
    assert_eq!(r.status, CourierStatus::Busy);
    assert!(snap(&p).check_invariants().is_ok());
}

fn unknown_couriers_and_taken_phones_are_refused<R: CourierRepository>(repo: R) {
    hire(&repo, 1, TransportType::Car, 0);
    assert!(matches!(
        couriers::add(&repo, &courier(1, TransportType::OnFoot), at(1)),
        Err(CourierCommandError::Repository(RepoError::Conflict(_)))
    ));
    assert_eq!(
        couriers::pause(&repo, CourierId(999), at(2)),
        Err(CourierCommandError::NotFound(CourierId(999)))
    );
    assert_eq!(
        couriers::resume(&repo, CourierId(999), at(2)),
        Err(CourierCommandError::NotFound(CourierId(999)))
    );
    assert_eq!(repo.snapshot().expect("snapshot").couriers.len(), 1);
}

fn terminal_states_win<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    apply(&p, event("done", "created", 10));
    assert_eq!(
        apply(&p, event("done", "delivered", 11)),
        Outcome::Completed(freed(c, None))
    );
    for late in [
        "cancelled",
        "canceled",
        "deleted",
        "created",
        "completed",
        "pending",
    ] {
        let out = apply(&p, event("done", late, 12));
        assert!(
            matches!(out, Outcome::Duplicate | Outcome::Ignored),
            "{late}: {out:?}"
        );
    }
    apply(&p, event("gone", "created", 20));
    assert_eq!(
        apply(&p, event("gone", "deleted", 21)),
        Outcome::Cancelled(freed(c, None))
    );
    for late in ["completed", "delivered", "created", "cancelled"] {
        assert_eq!(
            apply(&p, event("gone", late, 22)),
            Outcome::Duplicate,
            "{late}"
        );
    }
    let s = snap(&p);
    assert_eq!(s.orders[&oid("done")], OrderState::Completed(Some(c)));
    assert_eq!(s.orders[&oid("gone")], OrderState::Cancelled);
    assert_eq!(s.statistics()[&c], 1);
}

fn cancel_or_complete_before_created_is_remembered<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    assert_eq!(
        apply(&p, event("x", "canceled", 10)),
        Outcome::Cancelled(None)
    );
    assert_eq!(apply(&p, event("x", "created", 5)), Outcome::Duplicate);
    assert_eq!(
        apply(&p, event("y", "completed", 10)),
        Outcome::Completed(None)
    );
    assert_eq!(apply(&p, event("y", "created", 5)), Outcome::Duplicate);
    let s = snap(&p);
    assert_eq!(s.couriers[0].status, CourierStatus::Available);
    assert!(s.deliveries.is_empty());
    assert_eq!(s.statistics()[&c], 0);
    assert_eq!(s.orders[&oid("x")], OrderState::Cancelled);
    assert_eq!(s.orders[&oid("y")], OrderState::Completed(None));
}

fn a_waiting_order_can_end_without_a_courier<R: CourierRepository>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    apply(&p, event("w1", "created", 10));
    apply(&p, event("w2", "created", 11));
    assert_eq!(
        apply(&p, event("w1", "cancelled", 12)),
        Outcome::Cancelled(None)
    );
    assert_eq!(
        apply(&p, event("w2", "completed", 13)),
        Outcome::Completed(None)
    );
    assert!(snap(&p).waiting.is_empty());
    // A courier hired now finds nothing to take.
    let c = hire(p.repository(), 1, TransportType::Car, 20);
    assert_eq!(status_of(&p, c), CourierStatus::Available);
}

fn duplicates_change_nothing<R: CourierRepository>(repo: R) {
    hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    let events = [
        event("a", "created", 10),
        event("b", "created", 11),
        event("a", "cooking", 12),
        event("a", "completed", 13),
        event("b", "cancelled", 14),
        event("c", "created", 15),
    ];
    for e in events {
        apply(&p, e.clone());
        let before = snap(&p);
        let again = apply(&p, e.clone());
        assert!(
            matches!(again, Outcome::Duplicate | Outcome::Ignored),
            "{e:?} twice gave {again:?}"
        );
        assert_eq!(snap(&p), before, "{e:?} twice changed the state");
    }
}

fn waiting_created_twice_is_a_duplicate<R: CourierRepository>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    assert_eq!(apply(&p, event("w", "created", 10)), Outcome::Waiting);
    assert_eq!(apply(&p, event("w", "created", 10)), Outcome::Duplicate);
    assert_eq!(snap(&p).waiting, vec![oid("w")]);
}

fn cancelled_leaves_no_delivery_and_completed_counts<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    apply(&p, event("k", "created", 10));
    apply(&p, event("k", "completed", 11));
    apply(&p, event("x", "created", 12));
    apply(&p, event("x", "cancelled", 13));
    let s = snap(&p);
    assert_eq!(s.deliveries.len(), 1);
    assert_eq!(s.deliveries[&oid("k")].completed_at, Some(at(11)));
    assert!(!s.deliveries.contains_key(&oid("x")));
    assert_eq!(s.couriers[0].completed_deliveries, 1);
    assert_eq!(s.couriers[0].status, CourierStatus::Available);
    assert_eq!(s.statistics()[&c], 1);
}

fn progress_statuses_are_ignored_and_store_nothing<R: CourierRepository>(repo: R) {
    hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    let before = snap(&p);
    for s in [
        "pending",
        "confirmed",
        "cooking",
        "delivering",
        "updated",
        "PENDING",
    ] {
        assert_eq!(apply(&p, event("p", s, 10)), Outcome::Ignored);
    }
    assert_eq!(snap(&p), before);
}

/// One batch in which the only courier completes a delivery stored earlier, takes the waiting
/// order, completes that too and takes a new one: each step sees the one before it, and the
/// written result holds one active delivery for the courier (the database writes a batch's
/// changes together, so this checks they land in a valid order).
fn one_batch_frees_and_reassigns_a_courier_twice<R: CourierRepository>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    assert_eq!(apply(&p, event("a", "created", 10)), Outcome::Assigned(c));
    assert_eq!(apply(&p, event("b", "created", 11)), Outcome::Waiting);
    let batch = [
        event("a", "completed", 20),
        event("b", "delivered", 21),
        event("c", "created", 22),
        event("c", "cooking", 23),
        event("d", "created", 24),
        event("c", "canceled", 25),
    ];
    let refs: Vec<&OrderEvent> = batch.iter().collect();
    let outcomes = p.apply_batch(&refs).expect("batch applies");
    assert_eq!(
        outcomes,
        vec![
            Outcome::Completed(freed(c, Some("b"))),
            Outcome::Completed(freed(c, None)),
            Outcome::Assigned(c),
            Outcome::Ignored,
            Outcome::Waiting,
            Outcome::Cancelled(freed(c, Some("d"))),
        ]
    );
    let s = snap(&p);
    s.check_invariants().expect("invariants");
    assert_eq!(s.couriers[0].completed_deliveries, 2);
    assert_eq!(s.couriers[0].active_order, Some(oid("d")));
    assert_eq!(s.deliveries[&oid("b")].assigned_at, at(20));
    assert_eq!(s.deliveries[&oid("d")].assigned_at, at(25));
    assert!(!s.deliveries.contains_key(&oid("c")));
}

/// The deadline pass (docs/rules.md): overdue deliveries, earliest deadline first and at
/// most `limit` a round, are completed at their deadline; their couriers take the oldest
/// waiting orders, stamped with the pass's clock; events complete with `completed_by = event`.
/// Overdue means past the deadline and held for the whole window since the store made the
/// assignment (its own clock: the times here are relative to now).
fn the_deadline_pass_completes_overdue_deliveries_at_their_deadline<R: CourierRepository>(repo: R) {
    // Whole seconds: PostgreSQL keeps microseconds.
    let start =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 60, 0).expect("a time");
    let t = |secs: i64| start + chrono::Duration::seconds(secs);
    let ev = |id: &str, status: &str, secs: i64| OrderEvent {
        created_at: t(secs),
        ..event(id, status, 0)
    };
    let car = hire(&repo, 1, TransportType::Car, 0);
    let scooter = hire(&repo, 2, TransportType::Scooter, 1);
    let foot = hire(&repo, 3, TransportType::OnFoot, 2);
    let p = OrderEventProcessor::new(repo);
    assert_eq!(apply(&p, ev("c", "created", 10)), Outcome::Assigned(car));
    assert_eq!(
        apply(&p, ev("s", "created", 10)),
        Outcome::Assigned(scooter)
    );
    assert_eq!(apply(&p, ev("f", "created", 10)), Outcome::Assigned(foot));
    assert_eq!(apply(&p, ev("w2", "created", 30)), Outcome::Waiting);
    assert_eq!(apply(&p, ev("w1", "created", 20)), Outcome::Waiting);
    assert_eq!(
        apply(&p, ev("f", "delivered", 40)),
        Outcome::Completed(freed(foot, Some("w1")))
    );

    // Nothing is due before the car's 5 minutes.
    assert!(p
        .complete_overdue(t(10 + 4 * 60), 10)
        .expect("pass")
        .is_empty());
    // Both due at 17 min: one a round, the earliest deadline first.
    let first = p.complete_overdue(t(17 * 60), 1).expect("pass");
    assert_eq!(first.len(), 1);
    assert_eq!(
        (
            first[0].order.clone(),
            first[0].deadline,
            first[0].release.clone()
        ),
        (
            oid("c"),
            t(10 + 5 * 60),
            Release {
                courier: car,
                took: Some(oid("w2"))
            }
        )
    );
    let second = p.complete_overdue(t(17 * 60), 10).expect("pass");
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].release,
        Release {
            courier: scooter,
            took: None
        }
    );
    assert!(p.complete_overdue(t(17 * 60), 10).expect("pass").is_empty());

    let s = snap(&p);
    s.check_invariants().expect("invariants");
    let by = |o: &str| s.deliveries[&oid(o)].completed_by;
    assert_eq!(by("c"), Some(CompletedBy::Deadline));
    assert_eq!(by("s"), Some(CompletedBy::Deadline));
    assert_eq!(by("f"), Some(CompletedBy::Event));
    assert_eq!(by("w2"), None);
    assert_eq!(s.deliveries[&oid("s")].completed_at, Some(t(10 + 15 * 60)));
    assert_eq!(s.deliveries[&oid("w2")].assigned_at, t(17 * 60));
    assert_eq!(s.orders[&oid("c")], OrderState::Completed(Some(car)));
    assert_eq!(status_of(&p, scooter), CourierStatus::Available);
    assert_eq!(s.statistics()[&car], 1);
    // Terminal states win: a later event of a deadline-completed order does nothing.
    assert_eq!(apply(&p, ev("c", "cancelled", 2000)), Outcome::Duplicate);
    assert_eq!(snap(&p), s);
    assert_eq!(p.repository().count_overdue(t(17 * 60)).expect("count"), 0);
    // w1 (foot, 30 min from 40 s) and w2 (car, 5 min from 17 min).
    assert_eq!(p.repository().count_overdue(t(60 * 60)).expect("count"), 2);
}

/// The ranking and the queue order, with ties on every key but the last, are exactly the
/// domain's `CourierRank` and `QueueKey` (which the SQL's `ORDER BY` names too: see the unit
/// test in `repository/postgres/tx.rs`): picked one transaction at a time (PostgreSQL sorts) and
/// several in one batch (the rows a transaction holds are sorted in memory).
fn picks_and_serves_by_the_domain_keys<R: CourierRepository>(repo: R) {
    // Hired in pairs at the same instant: ties on both keys but the id.
    let ids: Vec<CourierId> = (0..8u32)
        .map(|n| hire(&repo, n, TransportType::Car, i64::from(n / 2)))
        .collect();
    let p = OrderEventProcessor::new(repo);
    for (k, o) in ["d0", "d1", "d2", "d3"].iter().enumerate() {
        assert_eq!(
            apply(&p, event(o, "created", 100)),
            Outcome::Assigned(ids[k])
        );
    }
    // d0 and d1 completed at the same instant, d2 earlier; d3 cancelled (never counts).
    apply(&p, event("d0", "completed", 200));
    apply(&p, event("d1", "completed", 200));
    apply(&p, event("d2", "completed", 150));
    apply(&p, event("d3", "cancelled", 120));
    let rank = |k: usize, deliveries: i64, since: i64| CourierRank {
        completed_deliveries: deliveries,
        available_since: at(since),
        id: ids[k],
    };
    let mut expected = [
        rank(0, 1, 200),
        rank(1, 1, 200),
        rank(2, 1, 150),
        rank(3, 0, 120),
        rank(4, 0, 2),
        rank(5, 0, 2),
        rank(6, 0, 3),
        rank(7, 0, 3),
    ];
    expected.sort();
    let expected: Vec<CourierId> = expected.iter().map(|r| r.id).collect();
    let mut picked = Vec::new();
    for k in 0..3 {
        match apply(&p, event(&format!("o{k}"), "created", 300)) {
            Outcome::Assigned(c) => picked.push(c),
            other => panic!("o{k}: {other:?}"),
        }
    }
    let rest: Vec<OrderEvent> = (3..8)
        .map(|k| event(&format!("o{k}"), "created", 300))
        .collect();
    for outcome in p
        .apply_batch(&rest.iter().collect::<Vec<_>>())
        .expect("batch")
    {
        match outcome {
            Outcome::Assigned(c) => picked.push(c),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(picked, expected, "couriers picked out of CourierRank order");

    // Waiting orders created at colliding instants, arriving out of creation order: two alone,
    // three in one batch.
    let arrivals = [
        ("w-a", 500),
        ("w-b", 490),
        ("w-c", 500),
        ("w-d", 490),
        ("w-e", 480),
    ];
    for (o, t) in &arrivals[..2] {
        assert_eq!(apply(&p, event(o, "created", *t)), Outcome::Waiting);
    }
    let batch: Vec<OrderEvent> = arrivals[2..]
        .iter()
        .map(|(o, t)| event(o, "created", *t))
        .collect();
    let outcomes = p
        .apply_batch(&batch.iter().collect::<Vec<_>>())
        .expect("batch");
    assert!(outcomes.iter().all(|o| *o == Outcome::Waiting));
    let mut queue: Vec<(QueueKey<usize>, &str)> = arrivals
        .iter()
        .enumerate()
        .map(|(arrival, (o, t))| {
            (
                QueueKey {
                    created_at: at(*t),
                    arrival,
                },
                *o,
            )
        })
        .collect();
    queue.sort();
    let queue: Vec<_> = queue.iter().map(|(_, o)| oid(o)).collect();
    assert_eq!(
        snap(&p).waiting,
        queue,
        "the queue is out of QueueKey order"
    );
    // Freed couriers serve it: one alone, four in one batch.
    let mut served = Vec::new();
    let mut took = |out: Outcome| match out {
        Outcome::Completed(Some(Release { took: Some(o), .. })) => served.push(o),
        other => panic!("{other:?}"),
    };
    took(apply(&p, event("o0", "completed", 600)));
    let ends: Vec<OrderEvent> = (1..5)
        .map(|k| event(&format!("o{k}"), "completed", 600))
        .collect();
    for out in p
        .apply_batch(&ends.iter().collect::<Vec<_>>())
        .expect("batch")
    {
        took(out);
    }
    assert_eq!(served, queue, "waiting orders served out of QueueKey order");
}

contract!(
    picks_and_serves_by_the_domain_keys,
    created_assigns_an_available_courier_with_its_deadline,
    deadlines_follow_the_transport,
    picks_fewest_completed_then_longest_available,
    without_couriers_orders_wait_in_fifo_order,
    a_new_or_resumed_courier_takes_the_first_waiting_order,
    pause_and_resume_are_idempotent_and_keep_the_active_order,
    unknown_couriers_and_taken_phones_are_refused,
    terminal_states_win,
    cancel_or_complete_before_created_is_remembered,
    a_waiting_order_can_end_without_a_courier,
    duplicates_change_nothing,
    waiting_created_twice_is_a_duplicate,
    cancelled_leaves_no_delivery_and_completed_counts,
    progress_statuses_are_ignored_and_store_nothing,
    one_batch_frees_and_reassigns_a_courier_twice,
    the_deadline_pass_completes_overdue_deliveries_at_their_deadline,
);
