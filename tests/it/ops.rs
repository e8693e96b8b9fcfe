//! Operations against the real binary, real Kafka and real PostgreSQL: /metrics counts what
//! happened, /healthz and /readyz answer, the watchdog exits on a stalled poller, and two
//! instances split one topic between them.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use service_courier::domain::TransportType;
use service_courier::repository::{CourierRepository, OrderState};
use service_courier::usecase::couriers;

fn json(id: &str, status: &str, secs: i64) -> String {
    event(id, status, secs).to_json()
}

/// The samples of a Prometheus text exposition: "name{labels}" -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn base_env(db: &TestDb, brokers: &str, topic: &str, group: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("KAFKA_ORDER_TOPIC", topic.to_owned()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_GROUP_ID", group.to_owned()),
        ("KAFKA_COMMIT_INTERVAL_MS", "100".into()),
    ]
}

#[test]
fn metrics_count_a_known_stream_and_probes_answer() {
    let Some(db) = TestDb::new(1) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("metrics");
    create_topic(&topic, 1);
    create_topic(&format!("{topic}.dlq"), 1);
    for n in 0..3 {
        couriers::add(&db.repo, &courier(n, TransportType::Car), at(n as i64)).expect("hire");
    }
    let group = unique("group");
    // One worker: the stream's outcomes (who waits) must not depend on how workers interleave.
    let mut env = base_env(&db, &brokers, &topic, &group);
    env.push(("WORKERS", "1".into()));
    let service = Service::start(&env);
    wait_until(Duration::from_secs(60), "/readyz 200", || {
        service.get("/readyz").0 == 200
    });
    assert_eq!(service.get("/healthz").0, 200);
    assert_eq!(service.get("/nope").0, 404);
    // What is not a request at all is refused in JSON here too (src/ops/http1), then closed.
    let mut garbage = std::net::TcpStream::connect(service.http_addr()).expect("connect");
    garbage
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::io::Write::write_all(&mut garbage, b"GARBAGE\r\n\r\n").expect("send");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut garbage, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("Content-Type: application/json\r\n")
            && answer.ends_with("\r\n\r\n{\"error\":\"malformed request head: invalid token\"}"),
        "{answer}"
    );

    let lines = vec![
        json("a", "created", 1),
        json("b", "created", 2),
        json("c", "created", 3),
        json("d", "created", 4),   // no courier left: waits
        json("a", "completed", 5), // a's courier takes d
        json("b", "cancelled", 6),
        json("x", "pending", 7),
        json("a", "completed", 8), // duplicate
        "{not json".to_owned(),
    ];
    kcat_produce(&brokers, &topic, &lines);
    wait_until(Duration::from_secs(60), "all committed", || {
        offsets(&brokers, &group, &topic)
            .values()
            .all(|(c, hw)| *c == *hw && *hw == 9)
    });
    let mut m = BTreeMap::new();
    // The fleet gauges are sampled every 2 s: they catch up after the commits.
    wait_until(Duration::from_secs(60), "metrics to catch up", || {
        m = samples(&service.get("/metrics").1);
        m.get("courier_committed_offset{partition=\"0\"}") == Some(&9.0)
            && m.get("courier_couriers{status=\"busy\"}") == Some(&2.0)
    });
    let expect = [
        ("courier_events_consumed_total", 9.0),
        (
            "courier_events_applied_total{family=\"assign\",outcome=\"assigned\"}",
            3.0,
        ),
        (
            "courier_events_applied_total{family=\"assign\",outcome=\"waiting\"}",
            1.0,
        ),
        (
            "courier_events_applied_total{family=\"complete\",outcome=\"completed\"}",
            1.0,
        ),
        (
            "courier_events_applied_total{family=\"complete\",outcome=\"duplicate\"}",
            1.0,
        ),
        (
            "courier_events_applied_total{family=\"cancel\",outcome=\"cancelled\"}",
            1.0,
        ),
        (
            "courier_events_applied_total{family=\"ignore\",outcome=\"ignored\"}",
            1.0,
        ),
        ("courier_dead_letters_total{reason=\"invalid_json\"}", 1.0),
        ("courier_event_processing_seconds_count", 8.0),
        ("courier_committed_offset{partition=\"0\"}", 9.0),
        ("courier_orders_waiting", 0.0),
        ("courier_couriers{status=\"busy\"}", 2.0),
        ("courier_couriers{status=\"available\"}", 1.0),
        ("courier_couriers{status=\"paused\"}", 0.0),
        ("courier_db_errors_total", 0.0),
    ];
    for (name, value) in expect {
        assert_eq!(m.get(name), Some(&value), "{name} in\n{m:#?}");
    }
    for name in [
        "courier_worker_queue_depth{worker=\"0\"}",
        "courier_db_retries_total",
    ] {
        assert!(m.contains_key(name), "{name} missing");
    }
    let mut service = service;
    assert_eq!(service.terminate(Duration::from_secs(60)), Some(0));
}

#[test]
fn two_instances_split_one_topic_and_apply_every_event_once() {
    let Some(db) = TestDb::new(1) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("split");
    create_topic(&topic, 4);
    create_topic(&format!("{topic}.dlq"), 1);
    for n in 0..30 {
        couriers::add(&db.repo, &courier(n, TransportType::Scooter), at(0)).expect("hire");
    }
    let group = unique("group");
    // `kafka`: a static split by INSTANCE_INDEX/INSTANCE_COUNT. `rdkafka`: both join the group
    // and Kafka splits the partitions; the events go out once both have theirs, so no
    // rebalance moves an event between them.
    let client = Client::of_run();
    let mut instances: Vec<Service> = (0..2)
        .map(|i| {
            let mut env = base_env(&db, &brokers, &topic, &group);
            if client == Client::Kafka {
                env.push(("INSTANCE_INDEX", i.to_string()));
                env.push(("INSTANCE_COUNT", "2".into()));
            }
            Service::start(&env)
        })
        .collect();
    if client == Client::Rdkafka {
        wait_until(
            Duration::from_secs(120),
            "both instances own two partitions",
            || instances.iter().all(|s| s.owned_partitions() == 2),
        );
    }
    let orders = 300;
    let mut lines = Vec::new();
    for i in 0..orders {
        lines.push(json(&format!("s{i}"), "created", i));
    }
    for i in 0..orders {
        lines.push(json(
            &format!("s{i}"),
            if i % 4 == 0 { "deleted" } else { "delivered" },
            orders + i,
        ));
    }
    kcat_produce(&brokers, &topic, &lines);
    wait_until(
        Duration::from_secs(90),
        "both instances drained the topic",
        || drained(&offsets(&brokers, &group, &topic)),
    );
    // Each instance consumed its own partitions; together every message exactly once.
    let consumed: Vec<f64> = instances
        .iter()
        .map(|s| samples(&s.get("/metrics").1)["courier_events_consumed_total"])
        .collect();
    assert!(
        consumed.iter().all(|c| *c > 0.0),
        "an instance got nothing: {consumed:?}"
    );
    assert_eq!(consumed.iter().sum::<f64>(), (2 * orders) as f64);
    if client == Client::Kafka {
        let logs: Vec<String> = instances.iter().map(Service::log_text).collect();
        assert!(logs[0].contains("partitions [0, 2]"), "{}", logs[0]);
        assert!(logs[1].contains("partitions [1, 3]"), "{}", logs[1]);
    }
    for s in &mut instances {
        assert_eq!(s.terminate(Duration::from_secs(60)), Some(0));
    }
    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    assert_eq!(snap.orders.len(), orders as usize);
    for (id, state) in &snap.orders {
        let n: i64 = id.as_str()[1..].parse().expect("id");
        match n % 4 {
            0 => assert_eq!(*state, OrderState::Cancelled, "{id}"),
            _ => assert!(matches!(state, OrderState::Completed(_)), "{id}: {state:?}"),
        }
    }
}

#[test]
fn an_impossible_partition_split_is_refused_at_start() {
    let Some(db) = TestDb::new(1) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("tiny");
    create_topic(&topic, 2);
    if Client::of_run() == Client::Rdkafka {
        // The group splits the partitions: a hand-kept split is a configuration error.
        for (key, value) in [("INSTANCE_INDEX", "1"), ("KAFKA_PARTITIONS", "0")] {
            let mut env = base_env(&db, &brokers, &topic, &unique("group"));
            env.push((key, value.into()));
            let mut service = Service::start(&env);
            assert_eq!(
                service.wait(Duration::from_secs(60)),
                Some(2),
                "{}",
                service.log_text()
            );
            assert!(service.log_text().contains(key), "{}", service.log_text());
        }
        return;
    }
    let mut env = base_env(&db, &brokers, &topic, &unique("group"));
    env.push(("INSTANCE_INDEX", "3".into()));
    env.push(("INSTANCE_COUNT", "4".into()));
    let mut service = Service::start(&env);
    assert_eq!(
        service.wait(Duration::from_secs(60)),
        Some(2),
        "{}",
        service.log_text()
    );
    assert!(service
        .log_text()
        .contains("INSTANCE_INDEX: instance 3 of 4 gets no partition"));
    let mut env = base_env(&db, &brokers, &topic, &unique("group"));
    env.push(("KAFKA_PARTITIONS", "0,5".into()));
    let mut service = Service::start(&env);
    assert_eq!(
        service.wait(Duration::from_secs(60)),
        Some(2),
        "{}",
        service.log_text()
    );
    assert!(service
        .log_text()
        .contains("KAFKA_PARTITIONS: partition 5 does not exist"));
}

#[test]
fn a_stalled_poller_turns_healthz_503_and_the_watchdog_exits() {
    let Some(db) = TestDb::new(1) else { return };
    if kafka_brokers().is_none() {
        return; // same skip rule as the other Kafka tests
    }
    // A broker of the test's own: it gets frozen.
    let broker = PrivateBroker::start("frozen");
    let topic = "orders";
    broker.topic(topic, 1);
    let mut env = base_env(&db, &broker.brokers, topic, &unique("group"));
    // The `kafka` crate, whatever the run's client: its fetch blocks on a frozen broker, which
    // stalls the poller (librdkafka's poll returns on time, so nothing would stall). The
    // broker is 3.9, which the crate speaks.
    env.push(("KAFKA_CLIENT", "kafka".into()));
    // /healthz turns 503 after 5 s without progress, the watchdog exits after 10 s: the test
    // has five seconds to see the 503, probing every 100 ms.
    env.push(("WATCHDOG_SECS", "10".into()));
    let mut service = Service::start(&env);
    wait_until(Duration::from_secs(60), "/readyz 200", || {
        service.get("/readyz").0 == 200
    });
    assert_eq!(service.get("/healthz").0, 200);
    // Freeze the broker: the poller's next fetch never gets an answer (the crate waits up to
    // two minutes), which is exactly the stall the watchdog is for.
    broker.freeze();
    let addr = service.http_addr();
    let reason = wait_for(Duration::from_secs(60), "/healthz 503", || {
        assert!(
            service.running(),
            "exited before /healthz said 503:\n{}",
            service.log_text()
        );
        match http_get(&addr, "/healthz") {
            (503, body) => Some(body),
            _ => None,
        }
    });
    assert!(reason.contains("poller made no progress"), "{reason}");
    assert_eq!(
        service.wait(Duration::from_secs(60)),
        Some(4),
        "{}",
        service.log_text()
    );
    assert!(service
        .log_text()
        .contains("watchdog: the poller made no progress"));
}
