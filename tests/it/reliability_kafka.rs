//! Rules a real producer exposes, against the real binary, a real Kafka broker and real
//! PostgreSQL: a backlog that arrives out of creation order is served by creation time; the same
//! `created` read by two instances at once is applied once and never dead-lettered.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use service_courier::domain::{OrderId, TransportType};
use service_courier::repository::{CourierRepository, OrderState};
use service_courier::usecase::couriers;

fn env(
    db: &TestDb,
    brokers: &str,
    topic: &str,
    group: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("KAFKA_ORDER_TOPIC", topic.to_owned()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_GROUP_ID", group.to_owned()),
        ("KAFKA_COMMIT_INTERVAL_MS", "200".into()),
        ("WORKERS", "4".into()),
        ("LOG_LEVEL", "info".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

fn wait_drained(brokers: &str, group: &str, topic: &str, services: &mut [&mut Service]) {
    wait_until(Duration::from_secs(120), "all offsets committed", || {
        for s in services.iter_mut() {
            assert!(s.running(), "service died:\n{}", s.log_text());
        }
        offsets(brokers, group, topic)
            .values()
            .all(|(c, hw)| (*c).max(0) == *hw)
    });
}

#[test]
fn a_scrambled_backlog_is_served_by_creation_time() {
    let Some(db) = TestDb::new(2) else {
        return;
    };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("fifo-orders");
    create_topic(&topic, 3);
    create_topic(&format!("{topic}.dlq"), 1);
    let group = unique("fifo-group");
    // 120 orders; order i was created at second (i * 37) mod 120, so arrival says nothing about
    // creation. Ties: "tie-a" and "tie-b" share a creation time; "tie-b" arrives once everything
    // before it is applied, so it is certainly later (events of one partition may be applied by
    // different workers in any order).
    const N: i64 = 120;
    let mut created: BTreeMap<OrderId, i64> = BTreeMap::new();
    let mut by_partition: Vec<Vec<String>> = vec![Vec::new(); 3];
    for i in 0..N {
        let id = format!("s{i}");
        let secs = (i * 37) % N * 10;
        created.insert(oid(&id), secs);
        by_partition[(i % 3) as usize].push(event(&id, "created", secs).to_json());
    }
    created.insert(oid("tie-a"), 605);
    by_partition[1].push(event("tie-a", "created", 605).to_json());
    for (p, lines) in by_partition.iter().enumerate().rev() {
        kcat_produce_to(&brokers, &topic, p as i32, lines);
    }
    let mut service = Service::start(&env(&db, &brokers, &topic, &group, &[]));
    wait_drained(&brokers, &group, &topic, &mut [&mut service]);
    created.insert(oid("tie-b"), 605);
    kcat_produce_to(
        &brokers,
        &topic,
        0,
        &[event("tie-b", "created", 605).to_json()],
    );
    wait_drained(&brokers, &group, &topic, &mut [&mut service]);

    let mut oldest_first: Vec<(i64, OrderId)> =
        created.iter().map(|(o, s)| (*s, o.clone())).collect();
    oldest_first.sort(); // "tie-a" < "tie-b": arrival order, as the rule says
    let expected: Vec<OrderId> = oldest_first.into_iter().map(|(_, o)| o).collect();
    let snap = db.repo.snapshot().expect("snapshot");
    assert_eq!(snap.waiting, expected, "the queue is in creation order");

    // Couriers arrive afterwards: each takes the oldest order still waiting.
    for n in 0..10u32 {
        let hired =
            couriers::add(&db.repo, &courier(n, TransportType::Car), at(2_000)).expect("hire");
        let snap = db.repo.snapshot().expect("snapshot");
        assert_eq!(
            snap.orders[&expected[n as usize]],
            OrderState::Assigned(hired.id),
            "courier {n} takes order {}",
            expected[n as usize]
        );
    }
    let snap = db.repo.snapshot().expect("snapshot");
    assert_eq!(snap.waiting, expected[10..]);
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn the_same_created_read_by_two_instances_at_once_is_applied_once_never_dead_lettered() {
    let Some(db) = TestDb::new(2) else {
        return;
    };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("dup-orders");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 2);
    create_topic(&dlq, 1);
    let group = unique("dup-group");
    const ORDERS: u32 = 300;
    for n in 0..ORDERS + 20 {
        couriers::add(&db.repo, &courier(n, TransportType::Scooter), at(0)).expect("hire");
    }
    // One transaction per event (BATCH_MAX=1), so the instances meet on many orders. Each
    // order's `created` on both partitions, as an unkeyed producer that retried would
    // leave it; the two instances read one partition each, at the same time.
    // The `kafka` client splits the partitions by KAFKA_PARTITIONS, `rdkafka` by the group;
    // the events go out once each instance owns its partition.
    let split = Client::of_run() == Client::Kafka;
    let start = |partition: &'static str| {
        let mut extra = vec![("BATCH_MAX", "1")];
        if split {
            extra.push(("KAFKA_PARTITIONS", partition));
        }
        Service::start(&env(&db, &brokers, &topic, &group, &extra))
    };
    let mut first = start("0");
    let mut second = start("1");
    wait_until(
        Duration::from_secs(120),
        "each instance owns one partition",
        || first.owned_partitions() == 1 && second.owned_partitions() == 1,
    );
    let lines: Vec<String> = (0..ORDERS)
        .map(|i| event(&format!("d{i}"), "created", i64::from(i)).to_json())
        .collect();
    kcat_produce_to(&brokers, &topic, 0, &lines);
    kcat_produce_to(&brokers, &topic, 1, &lines);
    wait_drained(&brokers, &group, &topic, &mut [&mut first, &mut second]);
    assert_eq!(first.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));

    let letters = dead_letters(&brokers, &dlq);
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    assert_eq!(snap.orders.len(), ORDERS as usize);
    assert!(snap
        .orders
        .values()
        .all(|s| matches!(s, OrderState::Assigned(_))));
    assert_eq!(snap.deliveries.len(), ORDERS as usize);
    let carriers: BTreeSet<_> = snap.deliveries.values().map(|d| d.courier).collect();
    assert_eq!(carriers.len(), ORDERS as usize, "every order assigned once");
    let retried = [&first, &second]
        .iter()
        .map(|s| {
            s.log_text()
                .matches("wrote one of these orders meanwhile")
                .count()
        })
        .sum::<usize>();
    eprintln!("duplicate created across two instances: {retried} transient conflicts retried");
}
