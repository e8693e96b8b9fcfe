//! The deadline pass (docs/rules.md, `DEADLINE_POLICY`) in the running service, against real
//! PostgreSQL and Kafka. A "short deadline" is made by moving a delivery's `assigned_at` and
//! `deadline` back in SQL, as if its minutes had passed.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::groups::{hire, metric, GroupStand};
use common::*;
use service_courier::domain::{OrderEvent, OrderId, OrderStatus};
use service_courier::repository::{CourierRepository, OrderState};
use service_courier::usecase::OrderEventProcessor;

const LIMIT: Duration = Duration::from_secs(60);

/// An event of `order` created `ago` seconds before now (the service refuses a `created_at`
/// in the future).
fn line(order: &str, status: &str, ago: i64) -> String {
    let at = (Utc::now() - chrono::Duration::seconds(ago)).to_rfc3339();
    format!(r#"{{"order_id":"{order}","status":"{status}","created_at":"{at}"}}"#)
}

/// Moves the active deliveries of `orders` an hour back, as if the hour had passed: the
/// deadline, and the time the service made the assignment.
fn overdue(db: &TestDb, orders: &[&str]) {
    let ids: Vec<String> = orders.iter().map(|o| o.to_string()).collect();
    let moved = db
        .client()
        .execute(
            "UPDATE courier_orders
             SET assigned_at = assigned_at - interval '1 hour',
                 deadline = deadline - interval '1 hour',
                 assigned_on = assigned_on - interval '1 hour'
             WHERE order_id = ANY($1) AND completed_at IS NULL",
            &[&ids],
        )
        .expect("move deadlines back");
    assert_eq!(
        moved as usize,
        orders.len(),
        "active deliveries of {orders:?}"
    );
}

fn state(db: &TestDb, order: &str) -> Option<OrderState> {
    db.repo
        .snapshot()
        .expect("snapshot")
        .orders
        .get(&oid(order))
        .cloned()
}

/// (completed_at = deadline, completed_by) of a delivery.
fn completion(db: &TestDb, order: &str) -> (bool, Option<String>) {
    let row = db
        .client()
        .query_one(
            "SELECT completed_at IS NOT DISTINCT FROM deadline, completed_by
             FROM courier_orders WHERE order_id = $1",
            &[&order],
        )
        .expect("delivery row");
    (row.get(0), row.get(1))
}

/// Test 1 and "the stand never gets stuck": couriers hold orders nobody will end (the order
/// service stopped). With `report` nothing changes and the gauge shows them; restarted with
/// `complete`, the first pass completes them at their deadlines, the couriers take the waiting
/// orders in created order (not arrival order), and the statistics count them.
/// Test 2: a later `cancelled` of a deadline-completed order does nothing.
#[test]
fn overdue_deliveries_are_completed_at_their_deadline_and_the_queue_flows_again() {
    let Some(stand) = GroupStand::new(1, 2) else {
        return;
    };
    let client = Client::of_run();
    let report = [
        ("DEADLINE_POLICY", "report".to_owned()),
        ("DEADLINE_CHECK_MS", "200".to_owned()),
    ];
    let mut service = stand.start(client, &report);
    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[line("held-1", "created", 60), line("held-2", "created", 50)],
    );
    wait_until(LIMIT, "both couriers busy", || {
        matches!(state(&stand.db, "held-2"), Some(OrderState::Assigned(_)))
            && matches!(state(&stand.db, "held-1"), Some(OrderState::Assigned(_)))
    });
    // Waiting orders, arriving youngest first: the queue serves them oldest first.
    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[
            line("wait-young", "created", 10),
            line("wait-mid", "created", 20),
            line("wait-old", "created", 30),
        ],
    );
    wait_until(LIMIT, "three orders waiting", || {
        stand.db.repo.snapshot().expect("snapshot").waiting.len() == 3
    });

    // Report: the deliveries are overdue, shown, and left alone.
    overdue(&stand.db, &["held-1", "held-2"]);
    wait_until(LIMIT, "courier_deliveries_overdue 2", || {
        metric(&service, "courier_deliveries_overdue") == 2.0
    });
    assert_eq!(metric(&service, "courier_deadline_completions_total"), 0.0);
    assert!(matches!(
        state(&stand.db, "held-1"),
        Some(OrderState::Assigned(_))
    ));
    assert_eq!(service.terminate(LIMIT), Some(0));

    // Complete: down and up again, and the stand flows within one check.
    let complete = [("DEADLINE_CHECK_MS", "200".to_owned())];
    let service = stand.start(client, &complete);
    wait_until(
        LIMIT,
        "the held orders completed by the deadline pass",
        || {
            state(&stand.db, "held-1").is_some_and(|s| s.is_terminal())
                && state(&stand.db, "held-2").is_some_and(|s| s.is_terminal())
        },
    );
    for order in ["held-1", "held-2"] {
        assert!(matches!(
            state(&stand.db, order),
            Some(OrderState::Completed(Some(_)))
        ));
        assert_eq!(
            completion(&stand.db, order),
            (true, Some("deadline".to_owned())),
            "{order}: completed at its deadline, by the deadline pass"
        );
    }
    // The two freed couriers took the two oldest waiting orders; the youngest still waits.
    let snapshot = stand.db.repo.snapshot().expect("snapshot");
    assert!(matches!(
        snapshot.orders[&oid("wait-old")],
        OrderState::Assigned(_)
    ));
    assert!(matches!(
        snapshot.orders[&oid("wait-mid")],
        OrderState::Assigned(_)
    ));
    assert_eq!(snapshot.waiting, vec![oid("wait-young")]);
    let counted: i64 = snapshot
        .couriers
        .iter()
        .map(|c| c.completed_deliveries)
        .sum();
    assert_eq!(counted, 2, "deadline completions count in the statistics");
    wait_until(LIMIT, "courier_deadline_completions_total 2", || {
        metric(&service, "courier_deadline_completions_total") == 2.0
    });
    // The HTTP API says who completed it.
    let api = common::api::api_addr(&service);
    let (code, body) = common::api::call(&api, "GET", "/orders/held-1", &[], None);
    assert_eq!(code, 200, "{body}");
    let order: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(order["completed_by"], "deadline", "{order}");
    assert_eq!(order["completed_at"], order["deadline"], "{order}");

    // Test 2: later events of a deadline-completed order follow the rules: terminal wins.
    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[
            line("held-1", "cancelled", 0),
            line("held-2", "delivered", 0),
        ],
    );
    let mut alive = service;
    stand.wait_drained(&mut [&mut alive], LIMIT);
    let after = stand.db.repo.snapshot().expect("snapshot");
    assert_eq!(after.orders, snapshot.orders);
    assert_eq!(after.deliveries, snapshot.deliveries);
    assert_eq!(after.couriers, snapshot.couriers);
    assert_eq!(
        completion(&stand.db, "held-1").1.as_deref(),
        Some("deadline")
    );
    after.check_invariants().expect("invariants");
}

/// Test 3: two instances run the pass at once over the same overdue deliveries: each is
/// completed exactly once, and each freed courier takes at most one waiting order.
#[test]
fn two_instances_complete_each_overdue_delivery_exactly_once() {
    const COURIERS: u32 = 120;
    const WAITING: usize = 40;
    let Some(stand) = GroupStand::new(2, 0) else {
        return;
    };
    hire(&stand.db, COURIERS);
    let processor = OrderEventProcessor::new(stand.db.repo.clone());
    let now = Utc::now();
    let event = |n: usize| OrderEvent {
        order_id: OrderId::parse(format!("o{n}")).expect("order id"),
        status: OrderStatus::Created,
        created_at: now - chrono::Duration::seconds(60) + chrono::Duration::milliseconds(n as i64),
    };
    let events: Vec<OrderEvent> = (0..COURIERS as usize + WAITING).map(event).collect();
    for chunk in events.chunks(64) {
        processor
            .apply_batch(&chunk.iter().collect::<Vec<_>>())
            .expect("applied");
    }
    let busy: Vec<String> = (0..COURIERS as usize).map(|n| format!("o{n}")).collect();
    overdue(
        &stand.db,
        &busy.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Both start at once; each runs the pass at start, in rounds of 8. With the `kafka` client
    // each reads one partition of its own; with rdkafka the group splits them.
    let client = Client::of_run();
    let env = |partition: &str| {
        let mut env = vec![
            ("DEADLINE_CHECK_MS", "100".to_owned()),
            ("BATCH_MAX", "8".to_owned()),
        ];
        if client == Client::Kafka {
            env.push(("KAFKA_PARTITIONS", partition.to_owned()));
        }
        env
    };
    let mut a = stand.start(client, &env("0"));
    let mut b = stand.start(client, &env("1"));
    wait_until(LIMIT, "every overdue delivery completed", || {
        assert!(a.running() && b.running(), "an instance exited");
        stand.db.repo.count_overdue(Utc::now()).expect("count") == 0
    });
    let snapshot = stand.db.repo.snapshot().expect("snapshot");
    snapshot.check_invariants().expect("invariants");
    let by_deadline = snapshot
        .deliveries
        .values()
        .filter(|d| d.completed_by == Some(service_courier::domain::CompletedBy::Deadline))
        .count();
    assert_eq!(by_deadline, COURIERS as usize);
    let counted: i64 = snapshot
        .couriers
        .iter()
        .map(|c| c.completed_deliveries)
        .sum();
    assert_eq!(counted, i64::from(COURIERS), "each delivery counted once");
    assert!(snapshot
        .couriers
        .iter()
        .all(|c| c.completed_deliveries == 1));
    // The waiting orders went to freed couriers, all of them, once each.
    assert!(snapshot.waiting.is_empty());
    let taken = (COURIERS as usize..COURIERS as usize + WAITING)
        .filter(|n| {
            matches!(
                snapshot.orders[&oid(&format!("o{n}"))],
                OrderState::Assigned(_)
            )
        })
        .count();
    assert_eq!(taken, WAITING);
    let (done_a, done_b) = (
        metric(&a, "courier_deadline_completions_total"),
        metric(&b, "courier_deadline_completions_total"),
    );
    assert_eq!(
        done_a + done_b,
        f64::from(COURIERS),
        "completions counted by the two instances ({done_a} + {done_b})"
    );
    println!("deadline completions: instance a {done_a}, instance b {done_b}");
    assert_eq!(a.terminate(LIMIT), Some(0));
    assert_eq!(b.terminate(LIMIT), Some(0));
}
