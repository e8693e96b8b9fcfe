//! The running service against a real Apache Kafka 3.9 broker and real PostgreSQL: the binary as
//! a child process, events produced with Debian's kcat, with the `kafka` crate and with
//! `service-courier simulate`; also with PostgreSQL behind PgBouncer in transaction mode.

use crate::common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use service_courier::domain::{OrderEvent, OrderId, OrderStatus, TransportType};
use service_courier::repository::{CourierRepository, MemoryRepository, OrderState, Snapshot};
use service_courier::usecase::{couriers, OrderEventProcessor};

/// A stand whose service runs with 4 workers and a fetch limit of 64 KiB (so a 100 KB event is
/// too large), enough couriers hired.
struct Stand(ServiceStand);

impl std::ops::Deref for Stand {
    type Target = ServiceStand;
    fn deref(&self) -> &ServiceStand {
        &self.0
    }
}

impl Stand {
    fn new(partitions: u32, couriers_n: u32) -> Option<Self> {
        let stand = ServiceStand::new("svc", partitions, true)?;
        stand.hire(couriers_n, |n| TransportType::ALL[n as usize % 3]);
        Some(Self(stand))
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.0
            .env(4, &[("KAFKA_FETCH_MAX_BYTES_PER_PARTITION", "65536")])
    }

    fn start(&self) -> Service {
        Service::start(&self.env())
    }
}

fn json(id: &str, status: &str, secs: i64) -> String {
    event(id, status, secs).to_json()
}

/// Order states with courier ids erased: what stays the same whichever courier took an order.
fn shapes(s: &Snapshot) -> BTreeMap<OrderId, &'static str> {
    s.orders
        .iter()
        .map(|(o, st)| {
            let shape = match st {
                OrderState::Completed(Some(_)) => "completed with courier",
                OrderState::Completed(None) => "completed without courier",
                other => other.as_str(),
            };
            (o.clone(), shape)
        })
        .collect()
}

#[test]
fn every_status_alias_and_bad_payload_kind_through_kcat_and_the_crate() {
    // Enough couriers for every order: workers apply different orders concurrently, so with
    // fewer couriers which order waits would depend on the interleaving.
    let Some(stand) = Stand::new(1, 10) else {
        return;
    };
    let mut service = stand.start();

    // Every status and alias, through kcat (one partition: the order of events is the order sent).
    let mut lines = vec![];
    for (id, lifecycle) in [
        (
            "a",
            &[
                "created",
                "pending",
                "confirmed",
                "cooking",
                "delivering",
                "completed",
            ][..],
        ),
        ("b", &["created", "updated", "delivered"][..]),
        ("c", &["created", "cancelled"][..]),
        ("d", &["CREATED", "canceled"][..]),
        ("e", &["created", "deleted"][..]),
        ("f", &["created"][..]),
        ("g", &["completed", "created"][..]),
    ] {
        for (k, s) in lifecycle.iter().enumerate() {
            lines.push(json(id, s, k as i64));
        }
    }
    lines.push(r#"{"order_id":42,"status":"created","created_at":"2025-08-06T12:00:00.123+03:00","extra":[1,{"x":null}]}"#.into());
    // One bad payload of each kind a text line can carry.
    let bad_lines = [
        ("invalid_json", r#"{"order_id":"#.to_string()),
        ("not_an_object", "[1,2,3]".to_string()),
        (
            "missing_field",
            r#"{"status":"created","created_at":"2025-08-06T12:00:00Z"}"#.to_string(),
        ),
        (
            "invalid_field",
            r#"{"order_id":"x","status":"created","created_at":"yesterday"}"#.to_string(),
        ),
        (
            "invalid_field",
            r#"{"order_id":"","status":"created","created_at":"2025-08-06T12:00:00Z"}"#.to_string(),
        ),
        (
            "unsupported_status",
            json("h", "created", 0).replace("\"created\"", "\"lost\""),
        ),
    ];
    lines.extend(bad_lines.iter().map(|(_, l)| l.clone()));
    kcat_produce(&stand.brokers, &stand.topic, &lines);
    // Payloads a text line can't carry, through the crate's producer.
    rdkafka_produce(
        &stand.brokers,
        &stand.topic,
        &[
            (None, vec![0xff, 0xfe, 0x00, 0x7b]),
            (None, format!(r#"{{"order_id":"big","status":"created","created_at":"2025-08-06T12:00:00Z","pad":"{}"}}"#, "x".repeat(100_000)).into_bytes()),
            (Some("key".into()), json("i", "created", 0).into_bytes()),
        ],
    );
    stand.wait_drained(&mut service, Duration::from_secs(60));
    assert!(service.running(), "the service must survive bad input");

    let s = stand.snapshot();
    s.check_invariants().expect("invariants");
    let state = |id: &str| s.orders.get(&oid(id)).cloned();
    assert!(matches!(state("a"), Some(OrderState::Completed(Some(_)))));
    assert!(matches!(state("b"), Some(OrderState::Completed(Some(_)))));
    for id in ["c", "d", "e"] {
        assert_eq!(state(id), Some(OrderState::Cancelled), "{id}");
        assert!(!s.deliveries.contains_key(&oid(id)), "{id} left a delivery");
    }
    // f, 42 and i hold a courier; g was completed before it was created.
    assert_eq!(state("g"), Some(OrderState::Completed(None)));
    let active = ["f", "42", "i"]
        .iter()
        .filter(|id| matches!(state(id), Some(OrderState::Assigned(_))))
        .count();
    let waiting = ["f", "42", "i"]
        .iter()
        .filter(|id| state(id) == Some(OrderState::Waiting))
        .count();
    assert_eq!((active, waiting), (3, 0));
    assert_eq!(s.statistics().values().sum::<i64>(), 2);
    assert_eq!(state("big"), None);

    let letters = dead_letters(&stand.brokers, &stand.dlq);
    let reasons: Vec<&str> = letters
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    let mut expected: Vec<&str> = bad_lines.iter().map(|(r, _)| *r).collect();
    expected.extend(["not_utf8", "too_large"]);
    let mut got = reasons.clone();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "dead letters: {letters:#?}");
    for l in &letters {
        assert_eq!(l["source"]["topic"], stand.topic.as_str());
        assert!(l["source"]["offset"].as_i64().is_some());
    }
    let log = service.log_text();
    assert!(
        log.contains(&format!("bad event at {}/0@", stand.topic)),
        "{log}"
    );
    assert_eq!(
        service.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        service.log_text()
    );
}

/// Lifecycles of `n` orders in send order: created, a no-op, then completed (2 in 3) or
/// cancelled.
fn lifecycles(prefix: &str, n: usize) -> Vec<OrderEvent> {
    let mut events = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        events.push(event(&id, "created", i as i64));
        events.push(event(&id, "cooking", i as i64 + 1));
    }
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let end = if i % 3 == 2 { "cancelled" } else { "completed" };
        events.push(event(&id, end, (n + i) as i64));
    }
    events
}

fn model_with(events: &[OrderEvent], couriers_n: u32) -> Snapshot {
    let repo = MemoryRepository::new();
    for n in 1..=couriers_n {
        couriers::add(&repo, &courier(n, TransportType::Car), at(0)).expect("hire");
    }
    let p = OrderEventProcessor::new(repo);
    for e in events {
        p.apply(e).expect("model applies");
    }
    p.repository().snapshot().expect("snapshot")
}

#[test]
fn sigterm_mid_stream_commits_what_was_applied_and_a_restart_continues() {
    // As many couriers as orders: no order waits, so an order's final state does not depend on
    // how workers interleave different orders, and the model can be compared order by order.
    let orders = 2000;
    let Some(stand) = Stand::new(3, 0) else {
        return;
    };
    // Ids 1..=n, like the model's.
    common::groups::hire(&stand.db, orders);
    let mut events = Vec::new();
    for i in 0..orders {
        let id = format!("s-{i}");
        let end = if i % 3 == 2 { "cancelled" } else { "completed" };
        for (k, status) in ["created", "cooking", end].iter().enumerate() {
            events.push(event(&id, status, i as i64 * 10 + k as i64));
        }
    }
    // Keyed by order so each order's events share a partition and stay in order.
    let values: Vec<(Option<String>, Vec<u8>)> = events
        .iter()
        .map(|e| (Some(e.order_id.to_string()), e.to_json().into_bytes()))
        .collect();
    let mut env = stand.env();
    env.push(("QUEUE_CAPACITY", "16".into()));
    // Long enough to apply whatever is queued at the stop once the held order is let go.
    env.push(("SHUTDOWN_DRAIN_MS", "60000".into()));
    let mut service = Service::start(&env);
    // Ready: its schema migration (which would wait on our lock below) is behind it.
    wait_until(Duration::from_secs(60), "/readyz 200", || {
        service.get("/readyz").0 == 200
    });

    // Hold one early order: our uncommitted row with its id makes the service's write of that
    // order wait for our transaction. Its partition cannot be committed past it, and once its
    // worker's queue is full the poller waits too, so the stream provably stops short of its
    // end however fast the machine is. SIGTERM lands while it waits.
    let held = "s-200";
    let mut holder = stand.db.client();
    let mut hold = holder.transaction().expect("begin");
    hold.execute(
        "INSERT INTO orders (order_id, state) VALUES ($1, 'cancelled')",
        &[&held],
    )
    .expect("hold the order");
    let holder_pid: i32 = hold
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    rdkafka_produce(&stand.brokers, &stand.topic, &values);
    let mut watcher = stand.db.client();
    wait_until(
        Duration::from_secs(60),
        "the service to wait on the held order",
        || {
            assert!(service.running(), "service died:\n{}", service.log_text());
            watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
                    &[&holder_pid],
                )
                .map(|r| r.get::<_, i64>(0))
                .expect("pg_stat_activity")
                > 0
        },
    );
    wait_until(Duration::from_secs(60), "some orders applied", || {
        !stand.snapshot().orders.is_empty()
    });
    service.signal_term();
    service.wait_for_log(Duration::from_secs(60), "stop requested");
    hold.rollback().expect("let the order go");
    assert_eq!(
        service.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        service.log_text()
    );
    let log = service.log_text();
    let committed = offsets(&stand.brokers, &stand.group, &stand.topic);
    // The summary line names the committed offsets; Kafka holds exactly those.
    let named: Vec<String> = committed
        .iter()
        .filter(|(_, (c, _))| *c >= 0)
        .map(|(p, (c, _))| format!("{p}={c}"))
        .collect();
    assert!(
        log.contains(&format!("[{}]", named.join(", "))),
        "log:\n{log}\ncommitted {committed:?}"
    );
    assert!(
        committed.values().any(|(c, hw)| c < hw),
        "stopped after the end, although an order was held: {committed:?}"
    );

    // Every event below the committed offsets was applied: the orders whose events all lie
    // there are exactly as the model fed those events says.
    let mut below: Vec<OrderEvent> = Vec::new();
    let mut above: std::collections::BTreeSet<OrderId> = Default::default();
    for (p, o, v) in kcat_consume_positions(&stand.brokers, &stand.topic) {
        let e = OrderEvent::parse(v.as_bytes()).expect("our own event");
        if o < committed[&p].0 {
            below.push(e);
        } else {
            above.insert(e.order_id);
        }
    }
    assert!(!below.is_empty(), "nothing was committed before the stop");
    let after_stop = stand.snapshot();
    after_stop
        .check_invariants()
        .expect("invariants after stop");
    let prefix = shapes(&model_with(&below, orders));
    let got = shapes(&after_stop);
    let mut checked = 0;
    for (order, shape) in &prefix {
        if !above.contains(order) {
            assert_eq!(
                got.get(order),
                Some(shape),
                "order {order} below the commit point"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no order was entirely below the commit point");

    let mut again = stand.start();
    stand.wait_drained(&mut again, Duration::from_secs(120));
    assert_eq!(
        again.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        again.log_text()
    );
    let end = stand.snapshot();
    end.check_invariants().expect("invariants at the end");
    // None lost, none applied twice: every order in the model's state, the same deliveries and
    // statistics, every courier free again.
    let full = model_with(&events, orders);
    let (got, want) = (shapes(&end), shapes(&full));
    let wrong: Vec<String> = want
        .iter()
        .filter(|(o, shape)| got.get(*o) != Some(*shape))
        .map(|(o, shape)| format!("{o}: {:?}, model {shape}", got.get(o)))
        .collect();
    assert!(wrong.is_empty() && got.len() == want.len(), "{wrong:?}");
    assert_eq!(end.deliveries.len(), full.deliveries.len());
    assert_eq!(
        end.statistics().values().sum::<i64>(),
        full.statistics().values().sum::<i64>()
    );
    assert!(end.couriers.iter().all(|c| c.active_order.is_none()));
}

/// The `kafka` client reads at most 256 KiB of a partition per fetch (the memory bound of
/// docs/performance.md, "Memory"). An event larger than that window but within
/// KAFKA_FETCH_MAX_BYTES_PER_PARTITION is applied, not dead-lettered, and the events around it
/// on its partition are applied in the order sent. (With `rdkafka` the same events must pass
/// too.)
#[test]
fn events_larger_than_one_fetch_window_are_applied_in_order() {
    // A courier for every order: workers apply different orders concurrently.
    let Some(stand) = Stand::new(1, 10) else {
        return;
    };
    let env = stand
        .0
        .env(4, &[("KAFKA_FETCH_MAX_BYTES_PER_PARTITION", "1048576")]);
    let mut service = Service::start(&env);
    let pad = "p".repeat(600 * 1024);
    let big = |id: &str, status: &str, secs: i64| {
        let small = json(id, status, secs);
        let open = small.len() - 1;
        format!(r#"{},"pad":"{pad}"}}"#, &small[..open]).into_bytes()
    };
    let small = |id: &str, status: &str, secs: i64| json(id, status, secs).into_bytes();
    // Small events fill the first window; then two large events, each followed by events of
    // its own order and of others that only apply if they come after it.
    let mut values: Vec<Vec<u8>> = (0..3_000)
        .map(|i| small(&format!("fill-{i}"), "cooking", 0))
        .collect();
    values.extend([
        small("w1", "created", 1),
        big("w2", "created", 2),
        small("w2", "completed", 3),
        small("w1", "completed", 4),
        big("w3", "created", 5),
        small("w4", "created", 6),
        small("w3", "cancelled", 7),
    ]);
    assert!(values.iter().map(Vec::len).sum::<usize>() > 4 * (256 << 10));
    let values: Vec<(Option<String>, Vec<u8>)> = values.into_iter().map(|v| (None, v)).collect();
    rdkafka_produce(&stand.brokers, &stand.topic, &values);
    stand.wait_drained(&mut service, Duration::from_secs(120));

    let s = stand.snapshot();
    s.check_invariants().expect("invariants");
    let state = |id: &str| s.orders.get(&oid(id)).cloned();
    assert!(
        matches!(state("w1"), Some(OrderState::Completed(Some(_)))),
        "{:?}",
        state("w1")
    );
    assert!(
        matches!(state("w2"), Some(OrderState::Completed(Some(_)))),
        "{:?}",
        state("w2")
    );
    assert_eq!(state("w3"), Some(OrderState::Cancelled));
    assert!(
        matches!(state("w4"), Some(OrderState::Assigned(_))),
        "{:?}",
        state("w4")
    );
    assert_eq!(s.statistics().values().sum::<i64>(), 2);
    let letters = dead_letters(&stand.brokers, &stand.dlq);
    assert!(letters.is_empty(), "dead letters: {}", letters.len());
    assert_eq!(
        service.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        service.log_text()
    );
}

#[test]
fn six_partitions_of_unkeyed_events_end_in_a_correct_state() {
    let couriers_n = 20;
    let Some(stand) = Stand::new(6, couriers_n) else {
        return;
    };
    let events = lifecycles("u", 400);
    // All created/cooking first (so reordering is across partitions), then the endings.
    let lines: Vec<String> = events.iter().map(OrderEvent::to_json).collect();
    let mut service = stand.start();
    kcat_produce(&stand.brokers, &stand.topic, &lines);
    stand.wait_drained(&mut service, Duration::from_secs(90));
    let per_partition = offsets(&stand.brokers, &stand.group, &stand.topic);
    assert!(
        per_partition.values().filter(|(_, hw)| *hw > 0).count() >= 4,
        "kcat spread: {per_partition:?}"
    );
    assert_eq!(service.terminate(Duration::from_secs(60)), Some(0));

    let s = stand.snapshot();
    s.check_invariants().expect("invariants");
    // Whatever the interleaving: every order ended as its last event says, nobody waits, every
    // courier is free, and the statistics count exactly the deliveries completed by a courier.
    for e in events
        .iter()
        .filter(|e| e.status != OrderStatus::Created && e.status != OrderStatus::Cooking)
    {
        let st = &s.orders[&e.order_id];
        match e.status {
            OrderStatus::Cancelled => assert_eq!(*st, OrderState::Cancelled, "{}", e.order_id),
            _ => assert!(
                matches!(st, OrderState::Completed(_)),
                "{}: {st:?}",
                e.order_id
            ),
        }
    }
    assert!(s.waiting.is_empty());
    assert!(s.couriers.iter().all(|c| c.active_order.is_none()));
    let completed_by_courier = completed_deliveries(&s);
    assert!(
        completed_by_courier > couriers_n as usize,
        "few deliveries: {completed_by_courier}"
    );
}

#[test]
fn a_missing_topic_is_awaited_with_a_clear_log_line() {
    let Some(db) = TestDb::new(1) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("late");
    let group = unique("group");
    let mut service = Service::start(&[
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", group.clone()),
    ]);
    wait_until(Duration::from_secs(60), "the waiting line", || {
        service
            .log_text()
            .contains(&format!("topic {topic} does not exist (yet)"))
    });
    create_topic(&topic, 2);
    kcat_produce(&brokers, &topic, &[json("late-1", "cancelled", 0)]);
    wait_until(Duration::from_secs(60), "the event applied", || {
        db.repo
            .snapshot()
            .expect("snapshot")
            .orders
            .contains_key(&oid("late-1"))
    });
    assert_eq!(
        service.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        service.log_text()
    );
}

#[test]
fn an_incompatible_broker_is_refused_at_start() {
    let Some(db) = TestDb::new(1) else { return };
    // A broker that answers ApiVersions like Kafka 4.0: Fetch v4+, Produce v3+, ...
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten().take(5) {
            let mut stream = stream;
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let ranges: [(i16, i16, i16); 8] = [
                (0, 3, 12),
                (1, 4, 17),
                (2, 1, 10),
                (3, 0, 13),
                (8, 2, 9),
                (9, 1, 9),
                (10, 0, 6),
                (18, 0, 4),
            ];
            let mut body = 1i32.to_be_bytes().to_vec();
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&(ranges.len() as i32).to_be_bytes());
            for (k, min, max) in ranges {
                for v in [k, min, max] {
                    body.extend_from_slice(&v.to_be_bytes());
                }
            }
            let mut frame = (body.len() as i32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let _ = stream.write_all(&frame);
        }
    });
    let mut service = Service::start(&[
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", addr.to_string()),
    ]);
    assert_eq!(
        service.wait(Duration::from_secs(60)),
        Some(3),
        "{}",
        service.log_text()
    );
    let log = service.log_text();
    if std::env::var("KAFKA_CLIENT").is_ok_and(|c| c == "rdkafka") {
        // librdkafka needs other versions than the crate (Fetch v4+ is fine for it), but this
        // broker lacks the consumer-group APIs, and the message names those instead.
        assert!(log.contains("JoinGroup v5+ (broker: none)"), "{log}");
    } else {
        assert!(log.contains("Fetch v0 (broker: v4-v17)"), "{log}");
        assert!(log.contains("Apache Kafka 3.9 or older"), "{log}");
    }
}

#[test]
fn bad_configuration_names_the_variable_and_exits_2() {
    let mut service = Service::start(&[
        ("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/x".into()),
        ("KAFKA_BROKERS", "127.0.0.1:9092".into()),
        ("WORKERS", "many".into()),
    ]);
    assert_eq!(service.wait(Duration::from_secs(60)), Some(2));
    assert!(
        service.log_text().contains("WORKERS: \"many\" is not"),
        "{}",
        service.log_text()
    );
    let mut service = Service::start(&[("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/x".into())]);
    assert_eq!(service.wait(Duration::from_secs(60)), Some(2));
    assert!(
        service.log_text().contains("KAFKA_BROKERS: is not set"),
        "{}",
        service.log_text()
    );
}

#[test]
fn a_failed_dead_letter_holds_the_commit_until_it_is_sent() {
    let Some(db) = TestDb::new(1) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("held");
    let dlq = format!("{topic}.dlq"); // not created yet: producing to it fails
    let group = unique("group");
    create_topic(&topic, 2);
    let mut service = Service::start(&[
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", dlq.clone()),
        ("KAFKA_GROUP_ID", group.clone()),
        ("KAFKA_COMMIT_INTERVAL_MS", "100".into()),
    ]);
    kcat_produce_to(
        &brokers,
        &topic,
        0,
        &[
            json("h-1", "created", 0),
            "not json".into(),
            json("h-2", "cancelled", 1),
        ],
    );
    // The valid events around the bad one are applied, but the commit stops before it.
    wait_until(Duration::from_secs(60), "both valid events applied", || {
        let s = db.repo.snapshot().expect("snapshot");
        s.orders.contains_key(&oid("h-1")) && s.orders.contains_key(&oid("h-2"))
    });
    // A positive signal that a commit ran after h-2 was done: a later event of h-2 on the other
    // partition goes to h-2's worker, which reports it after h-2, and every commit covers every
    // partition. Once it is committed, partition 0 had its chance to move past the bad event.
    kcat_produce_to(&brokers, &topic, 1, &[json("h-2", "completed", 2)]);
    wait_until(Duration::from_secs(60), "the later event committed", || {
        offsets(&brokers, &group, &topic)[&1].0 == 1
    });
    let held = offsets(&brokers, &group, &topic)[&0].0;
    assert!(held <= 1, "committed past an unsent dead letter: {held}");
    assert!(service
        .log_text()
        .contains("their offsets stay uncommitted"));

    create_topic(&dlq, 1);
    wait_until(
        Duration::from_secs(60),
        "the letter sent and the offsets committed",
        || offsets(&brokers, &group, &topic)[&0].0 == 3,
    );
    let letters = dead_letters(&brokers, &dlq);
    assert!(!letters.is_empty() && letters.iter().all(|l| l["reason"] == "invalid_json"));
    assert_eq!(service.terminate(Duration::from_secs(60)), Some(0));
}

/// docs/postgresql.md, "PgBouncer and other poolers": behind PgBouncer in transaction mode
/// (`DB_POOLER=transaction`), simulated service-order traffic ends in a correct state, with no
/// dead letter and no storage error logged.
#[test]
fn simulated_traffic_through_pgbouncer_in_transaction_mode() {
    let Some(pooled) = common::pgbouncer::PooledDb::new() else {
        return;
    };
    let brokers = kafka_brokers().expect("Kafka (CI has it when it has PostgreSQL)");
    let topic = unique("pooled-orders");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 3);
    create_topic(&dlq, 1);
    for n in 0..8 {
        couriers::add(
            &pooled.repo,
            &courier(n, TransportType::ALL[n as usize % 3]),
            at(n as i64),
        )
        .expect("hire through the bouncer");
    }
    let group = unique("pooled-group");
    let mut service = Service::start(&[
        ("DATABASE_URL", pooled.url.clone()),
        ("DB_POOLER", "transaction".into()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", dlq.clone()),
        ("KAFKA_GROUP_ID", group.clone()),
        ("KAFKA_COMMIT_INTERVAL_MS", "200".into()),
        ("WORKERS", "4".into()),
        ("LOG_LEVEL", "info".into()),
    ]);
    let orders = 150;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_service-courier"));
    cmd.args(["simulate", "--orders", &orders.to_string(), "--burst"])
        .args(["--seed", "20", "--concurrency", "30"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", &brokers)
        .env("KAFKA_ORDER_TOPIC", &topic);
    if let Ok(client) = std::env::var("KAFKA_CLIENT") {
        cmd.env("KAFKA_CLIENT", client);
    }
    let sent = cmd.output().expect("simulate runs");
    assert!(
        sent.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    wait_drained(&brokers, &group, &topic, Duration::from_secs(120), || {
        assert!(
            service.running(),
            "service died:\n{}\nbouncer:\n{}",
            service.log_text(),
            pooled.log_text()
        );
    });
    assert_eq!(service.terminate(Duration::from_secs(60)), Some(0));
    let log = service.log_text();
    assert!(!log.contains("SQLSTATE"), "storage errors logged:\n{log}");
    assert!(dead_letters(&brokers, &dlq).is_empty(), "dead letters");
    // Checked directly on the database, not through the bouncer.
    let direct =
        service_courier::repository::PgRepository::new(pooled.db.url.parse().expect("url"), 1);
    let s = direct.snapshot().expect("snapshot");
    s.check_invariants().expect("invariants");
    assert_eq!(s.orders.len(), orders, "every simulated order is stored");
    assert!(s.orders.values().all(|o| o.is_terminal()), "{:?}", s.orders);
    assert!(s.waiting.is_empty());
    assert!(s.couriers.iter().all(|c| c.active_order.is_none()));
    let completed = s
        .orders
        .values()
        .filter(|o| matches!(o, OrderState::Completed(Some(_))))
        .count();
    assert!(completed > 0, "some deliveries completed");
    assert_eq!(s.statistics().values().sum::<i64>() as usize, completed);
}
