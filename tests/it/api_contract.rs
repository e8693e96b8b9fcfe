//! The repository's reads and edits for people (the HTTP API and the operator's page), written
//! once against the `FleetDirectory` trait (with `CourierRepository`'s usecases to set the scene)
//! and run against the in-memory fake, PostgreSQL, and PostgreSQL behind PgBouncer.

use crate::common;

use common::{at, courier, event, oid};
use service_courier::domain::{CourierId, CourierStatus, Phone, TransportType};
use service_courier::repository::{
    CourierPatch, CourierRemoval, CourierRepository, FleetDirectory, OrderState, RepoError,
};
use service_courier::usecase::delivery::{self, AssignError, UnassignError};
use service_courier::usecase::OrderEventProcessor;
use service_courier::usecase::{couriers, Release};

fn hire<R: CourierRepository>(repo: &R, n: u32, t: TransportType, secs: i64) -> CourierId {
    couriers::add(repo, &courier(n, t), at(secs))
        .expect("hire")
        .id
}

fn apply<R: CourierRepository>(p: &OrderEventProcessor<R>, id: &str, status: &str, secs: i64) {
    p.apply(&event(id, status, secs)).expect("event applies");
}

fn one_order_shows_its_state_and_delivery<R: CourierRepository + FleetDirectory>(repo: R) {
    let c = hire(&repo, 1, TransportType::Scooter, 0);
    let p = OrderEventProcessor::new(repo);
    apply(&p, "o1", "created", 10);
    apply(&p, "o2", "created", 11);
    let repo = p.repository();
    let o1 = repo.order(&oid("o1")).expect("read").expect("o1 exists");
    assert_eq!(o1.state, OrderState::Assigned(c));
    let d = o1.delivery.expect("o1 has a delivery");
    assert_eq!(
        (d.courier, d.assigned_at, d.completed_at),
        (c, at(10), None)
    );
    assert_eq!(
        d.deadline,
        at(10) + TransportType::Scooter.delivery_window()
    );
    let o2 = repo.order(&oid("o2")).expect("read").expect("o2 exists");
    assert_eq!((o2.state, o2.delivery), (OrderState::Waiting, None));
    assert_eq!(repo.order(&oid("nope")).expect("read"), None);
    apply(&p, "o1", "completed", 100);
    let o1 = p.repository().order(&oid("o1")).expect("read").expect("o1");
    assert_eq!(o1.state, OrderState::Completed(Some(c)));
    assert_eq!(o1.delivery.and_then(|d| d.completed_at), Some(at(100)));
}

fn deliveries_are_latest_first_and_limited<R: CourierRepository + FleetDirectory>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let other = hire(&repo, 2, TransportType::Car, 1);
    let p = OrderEventProcessor::new(repo);
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let t = 10 * (i as i64 + 1);
        apply(&p, id, "created", t);
        apply(&p, id, "completed", t + 1);
    }
    let repo = p.repository();
    let mine: Vec<_> = repo.deliveries(c, 10).expect("read");
    let theirs: Vec<_> = repo.deliveries(other, 10).expect("read");
    // Both couriers share the three orders by the picking rule; together they have all three.
    let all: Vec<String> = mine
        .iter()
        .chain(&theirs)
        .map(|d| d.order.to_string())
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    for list in [&mine, &theirs] {
        assert!(list
            .windows(2)
            .all(|w| w[0].delivery.assigned_at >= w[1].delivery.assigned_at));
    }
    assert!(mine.iter().all(|d| d.delivery.courier == c));
    let first = repo.deliveries(c, 1).expect("read");
    assert_eq!(first.len(), 1.min(mine.len()));
    assert_eq!(first.first(), mine.first());
    assert!(repo
        .deliveries(CourierId(999), 10)
        .expect("read")
        .is_empty());
}

fn the_queue_is_oldest_first_with_its_count<R: CourierRepository + FleetDirectory>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    for (i, id) in ["w1", "w2", "w3"].iter().enumerate() {
        apply(&p, id, "created", i as i64);
    }
    let q = p.repository().queue(2).expect("read");
    assert_eq!(q.count, 3);
    let ids: Vec<String> = q.orders.iter().map(|w| w.order.to_string()).collect();
    assert_eq!(ids, ["w1", "w2"]);
    assert!(q.orders[0].since <= q.orders[1].since);
    hire(p.repository(), 1, TransportType::Car, 10);
    let q = p.repository().queue(10).expect("read");
    assert_eq!(q.count, 2);
    assert_eq!(q.orders[0].order, oid("w2"));
}

fn a_courier_is_read_and_patched<R: CourierRepository + FleetDirectory>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let taken = hire(&repo, 2, TransportType::Car, 0);
    let before = repo.courier(c).expect("read").expect("exists");
    assert_eq!(
        (before.name.as_str(), before.transport),
        ("Courier 1", TransportType::Car)
    );
    assert_eq!(repo.courier(CourierId(999)).expect("read"), None);

    let patch = CourierPatch {
        name: Some("Ann".into()),
        phone: Some(Phone::parse("+79990000001").expect("phone")),
        transport: Some(TransportType::OnFoot),
    };
    let after = repo
        .update_courier(c, &patch)
        .expect("update")
        .expect("exists");
    assert_eq!(after.name, "Ann");
    assert_eq!(after.phone.as_str(), "+79990000001");
    assert_eq!(after.transport, TransportType::OnFoot);
    assert_eq!(after.status, before.status);
    assert_eq!(repo.courier(c).expect("read"), Some(after.clone()));

    // Only the given fields change.
    let name_only = CourierPatch {
        name: Some("Bea".into()),
        ..CourierPatch::default()
    };
    let renamed = repo
        .update_courier(c, &name_only)
        .expect("update")
        .expect("exists");
    assert_eq!(
        (renamed.name.as_str(), renamed.phone.as_str()),
        ("Bea", "+79990000001")
    );

    // Another courier's phone is a conflict and changes nothing.
    let theirs = repo.courier(taken).expect("read").expect("exists").phone;
    let clash = CourierPatch {
        name: Some("Zed".into()),
        phone: Some(theirs),
        ..CourierPatch::default()
    };
    assert!(matches!(
        repo.update_courier(c, &clash),
        Err(RepoError::Conflict(_))
    ));
    assert_eq!(
        repo.courier(c).expect("read").map(|v| v.name),
        Some("Bea".into())
    );
    assert_eq!(
        repo.update_courier(CourierId(999), &name_only)
            .expect("update"),
        None
    );
}

fn a_courier_carrying_an_order_is_not_removed<R: CourierRepository + FleetDirectory>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    apply(&p, "o1", "created", 10);
    let repo = p.repository();
    assert_eq!(
        repo.remove_courier(c).expect("remove"),
        CourierRemoval::Carrying(oid("o1"))
    );
    assert!(repo.courier(c).expect("read").is_some());
    // Paused, they still carry it.
    couriers::pause(repo, c, at(11)).expect("pause");
    assert_eq!(
        repo.remove_courier(c).expect("remove"),
        CourierRemoval::Carrying(oid("o1"))
    );
    apply(&p, "o1", "completed", 20);
    let repo = p.repository();
    assert_eq!(
        repo.remove_courier(c).expect("remove"),
        CourierRemoval::Removed
    );
    assert_eq!(repo.courier(c).expect("read"), None);
    assert_eq!(
        repo.remove_courier(c).expect("remove"),
        CourierRemoval::NotFound
    );
    // Their completed order counts for nobody now; the store is still consistent.
    let o1 = repo.order(&oid("o1")).expect("read").expect("o1");
    assert_eq!(o1.state, OrderState::Completed(None));
    let snap = repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants hold");
    assert!(snap.deliveries.is_empty());
}

fn a_paused_hire_takes_nothing_until_resumed<R: CourierRepository + FleetDirectory>(repo: R) {
    let p = OrderEventProcessor::new(repo);
    apply(&p, "w1", "created", 0);
    let repo = p.repository();
    let change = couriers::add_paused(repo, &courier(1, TransportType::Car), at(1)).expect("hire");
    assert_eq!((change.status, change.took), (CourierStatus::Paused, None));
    assert_eq!(repo.queue(10).expect("read").count, 1);
    let resumed = couriers::resume(repo, change.id, at(2)).expect("resume");
    assert_eq!(resumed.took, Some(oid("w1")));
    assert_eq!(repo.queue(10).expect("read").count, 0);
}

fn assigning_by_hand_ranks_couriers_as_created_does<R: CourierRepository + FleetDirectory>(
    repo: R,
) {
    let veteran = hire(&repo, 1, TransportType::Car, 0);
    let fresh = hire(&repo, 2, TransportType::OnFoot, 1);
    let p = OrderEventProcessor::new(repo);
    apply(&p, "old", "created", 2);
    apply(&p, "old", "completed", 3);
    let repo = p.repository();
    // Fewest completed deliveries first: the fresh courier, though the veteran waited longer.
    let a = delivery::assign(repo, &oid("h1"), at(10)).expect("assigned");
    assert_eq!((a.courier, a.transport), (fresh, TransportType::OnFoot));
    assert_eq!(
        (a.assigned_at, a.deadline),
        (at(10), at(10) + chrono::Duration::minutes(30))
    );
    let o = repo.order(&oid("h1")).expect("read").expect("h1");
    assert_eq!(o.state, OrderState::Assigned(fresh));
    assert_eq!(o.delivery.map(|d| d.deadline), Some(a.deadline));
    assert_eq!(
        delivery::assign(repo, &oid("h1"), at(11)),
        Err(AssignError::AlreadyAssigned(fresh))
    );
    assert_eq!(
        delivery::assign(repo, &oid("h2"), at(12)).map(|a| a.courier),
        Ok(veteran)
    );
    // Nobody free: refused, and the order is not even remembered.
    assert_eq!(
        delivery::assign(repo, &oid("h3"), at(13)),
        Err(AssignError::NoAvailableCourier)
    );
    assert_eq!(repo.order(&oid("h3")).expect("read"), None);
    assert_eq!(repo.queue(10).expect("read").count, 0);
    assert_eq!(
        delivery::assign(repo, &oid("old"), at(14)),
        Err(AssignError::Ended(OrderState::Completed(Some(veteran))))
    );
    repo.snapshot()
        .expect("snapshot")
        .check_invariants()
        .expect("invariants");
}

fn a_waiting_order_may_be_assigned_by_hand<R: CourierRepository + FleetDirectory>(repo: R) {
    let c = hire(&repo, 1, TransportType::Scooter, 0);
    // Waiting beside a free courier: the moment between two crossed commits that the pairing
    // pass closes. The route may close it too.
    repo.transaction(&mut |tx| {
        tx.lock_order(&oid("w"))?;
        tx.set_order_state(&oid("w"), &OrderState::Waiting, at(1))
    })
    .expect("waiting");
    assert_eq!(repo.queue(10).expect("read").count, 1);
    let a = delivery::assign(&repo, &oid("w"), at(2)).expect("assigned");
    assert_eq!(a.courier, c);
    assert_eq!(repo.queue(10).expect("read").count, 0);
    repo.snapshot()
        .expect("snapshot")
        .check_invariants()
        .expect("invariants");
}

fn unassigning_by_hand_is_a_cancellation<R: CourierRepository + FleetDirectory>(repo: R) {
    let c = hire(&repo, 1, TransportType::Car, 0);
    let p = OrderEventProcessor::new(repo);
    let repo = p.repository();
    delivery::assign(repo, &oid("x"), at(1)).expect("assigned");
    apply(&p, "y", "created", 2);
    assert_eq!(
        delivery::unassign(repo, &oid("x"), at(3)),
        Ok(Release {
            courier: c,
            took: Some(oid("y"))
        })
    );
    let x = repo.order(&oid("x")).expect("read").expect("x");
    assert_eq!((x.state, x.delivery), (OrderState::Cancelled, None));
    assert_eq!(
        repo.order(&oid("y")).expect("read").map(|o| o.state),
        Some(OrderState::Assigned(c))
    );
    assert_eq!(
        delivery::unassign(repo, &oid("x"), at(4)),
        Err(UnassignError::NoDelivery(OrderState::Cancelled))
    );
    apply(&p, "x", "cancelled", 5);
    apply(&p, "y", "completed", 6);
    assert_eq!(
        delivery::unassign(repo, &oid("y"), at(7)),
        Err(UnassignError::Completed)
    );
    // Freed with nothing waiting: available again.
    delivery::assign(repo, &oid("z"), at(8)).expect("assigned");
    assert_eq!(
        delivery::unassign(repo, &oid("z"), at(9)),
        Ok(Release {
            courier: c,
            took: None
        })
    );
    let view = repo.courier(c).expect("read").expect("c");
    assert_eq!(
        (view.status, view.completed_deliveries),
        (CourierStatus::Available, 1)
    );
    repo.snapshot()
        .expect("snapshot")
        .check_invariants()
        .expect("invariants");
}

contract!(
    one_order_shows_its_state_and_delivery,
    deliveries_are_latest_first_and_limited,
    the_queue_is_oldest_first_with_its_count,
    a_courier_is_read_and_patched,
    a_courier_carrying_an_order_is_not_removed,
    a_paused_hire_takes_nothing_until_resumed,
    assigning_by_hand_ranks_couriers_as_created_does,
    a_waiting_order_may_be_assigned_by_hand,
    unassigning_by_hand_is_a_cancellation,
);
