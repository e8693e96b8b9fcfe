//! Issue 20's restart test: three instances in one consumer group (rdkafka) with events
//! flowing, one of them restarted 5 times. A start on a current database only reads
//! `schema_migrations`, so while the others keep writing: nothing waits on a relation lock
//! (`pg_locks`, sampled every few milliseconds through the whole run), and PostgreSQL detects
//! no deadlock (`pg_stat_database.deadlocks` of the test's own database, which counts every
//! "deadlock detected" the server logs for it).

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::groups::{rdkafka_produce, require_rdkafka, SESSION_TIMEOUT_MS};
use common::{create_topic, event, kafka_brokers, unique, wait_until, PrivateDatabase, Service};
use service_courier::repository::PgRepository;

/// Lines of /metrics: the value of an unlabelled counter.
fn metric(service: &Service, name: &str) -> f64 {
    service
        .get("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Produces order lifecycles until `stop`: each round, 30 orders `created` and the previous
/// round's orders `completed` (or `cancelled`), so couriers are taken and freed all along.
fn produce_until(brokers: String, topic: String, stop: Arc<AtomicBool>) -> u64 {
    let mut round = 0i64;
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut values = Vec::new();
        for i in 0..30 {
            let id = format!("r{round}-{i}");
            values.push((None, event(&id, "created", round).to_json().into_bytes()));
            if round > 0 {
                let prev = format!("r{}-{i}", round - 1);
                let end = if i % 4 == 0 { "cancelled" } else { "completed" };
                values.push((None, event(&prev, end, round).to_json().into_bytes()));
            }
        }
        rdkafka_produce(&brokers, &topic, &values);
        sent += values.len() as u64;
        round += 1;
        // Pacing, not waiting for anything: a steady stream rather than one burst.
        std::thread::sleep(Duration::from_millis(50));
    }
    sent
}

/// Samples `pg_locks` of the database until `stop`: every wait for a relation lock seen (the
/// relation and the waiting statement), and how many samples were taken.
fn sample_lock_waits(url: String, stop: Arc<AtomicBool>) -> (Vec<String>, u64) {
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let mut waits = Vec::new();
    let mut samples = 0;
    while !stop.load(Ordering::Relaxed) {
        for row in client
            .query(
                "SELECT coalesce(l.relation::regclass::text, '?') || ' ' || l.mode || ': ' \
                     || coalesce(a.query, '') \
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND l.locktype = 'relation' \
                   AND l.database = (SELECT oid FROM pg_database \
                                     WHERE datname = current_database())",
                &[],
            )
            .expect("pg_locks")
        {
            waits.push(row.get(0));
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    (waits, samples)
}

#[test]
fn restarting_an_instance_under_load_waits_on_no_relation_lock_and_deadlocks_nothing() {
    let Some(db) = PrivateDatabase::new() else {
        return;
    };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    require_rdkafka();
    PgRepository::new(db.url.parse().expect("url"), 1)
        .migrate()
        .expect("migrate");
    db.client()
        .execute(
            "INSERT INTO couriers (name, phone, status, transport_type)
             SELECT 'c' || g, '+7' || lpad(g::text, 10, '0'), 'available', 'car'
             FROM generate_series(1, 20) g",
            &[],
        )
        .expect("hire");
    let topic = unique("restart");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 6);
    create_topic(&dlq, 1);
    let env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_CLIENT", "rdkafka".to_owned()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", dlq),
        ("KAFKA_GROUP_ID", unique("group")),
        ("KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_owned()),
        ("KAFKA_COMMIT_INTERVAL_MS", "200".to_owned()),
        ("WORKERS", "2".to_owned()),
    ];

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (url, stop) = (db.url.clone(), Arc::clone(&stop_sampling));
        std::thread::spawn(move || sample_lock_waits(url, stop))
    };
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = Arc::clone(&stop_producing);
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || produce_until(brokers, topic, stop))
    };

    let mut instances: Vec<Service> = (0..3).map(|_| Service::start(&env)).collect();
    for s in &mut instances {
        wait_consuming(s);
    }
    for restart in 1..=5 {
        let started = Instant::now();
        assert_eq!(
            instances[0].terminate(Duration::from_secs(60)),
            Some(0),
            "{}",
            instances[0].log_text()
        );
        instances[0] = Service::start(&env);
        wait_consuming(&mut instances[0]);
        let log = instances[0].log_text();
        assert!(log.contains("schema at migration 2"), "{log}");
        assert!(
            !log.contains("migrated"),
            "restart {restart} migrated:\n{log}"
        );
        eprintln!(
            "restart {restart}: consuming again after {:?}",
            started.elapsed()
        );
        for s in &mut instances[1..] {
            assert!(s.running(), "an instance died:\n{}", s.log_text());
        }
    }

    stop_producing.store(true, Ordering::Relaxed);
    let sent = producer.join().expect("producer");
    stop_sampling.store(true, Ordering::Relaxed);
    let (waits, samples) = sampler.join().expect("sampler");
    let mut logs = String::new();
    for s in &mut instances {
        s.terminate(Duration::from_secs(60));
        logs.push_str(&s.log_text());
    }
    eprintln!("{sent} events sent, {samples} pg_locks samples");
    assert!(samples > 100, "the sampler ran {samples} times only");
    assert!(waits.is_empty(), "waits on relation locks: {waits:#?}");
    assert!(!logs.contains("deadlock detected"), "{logs}");

    // The instances' sessions are gone (their statistics are flushed when they end); then the
    // database's deadlock count is final.
    let mut client = db.client();
    wait_until(
        Duration::from_secs(30),
        "the instances' sessions to end",
        || {
            let others: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .expect("pg_stat_activity")
                .get(0);
            others == 0
        },
    );
    let deadlocks: i64 = client
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .expect("pg_stat_database")
        .get(0);
    assert_eq!(deadlocks, 0, "PostgreSQL detected deadlocks");
}

/// Waits until `service` has consumed events (the stream keeps flowing, so a member that got
/// partitions soon shows it).
fn wait_consuming(service: &mut Service) {
    wait_until(Duration::from_secs(120), "an instance consuming", || {
        assert!(service.running(), "it died:\n{}", service.log_text());
        metric(service, "courier_events_consumed_total") > 0.0
    });
}
