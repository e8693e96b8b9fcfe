//! The reliability suite: the real binary, a real Apache Kafka 3.9 broker and a real PostgreSQL,
//! with faults injected on purpose. What it proves:
//!
//! - `faults_harness`: a fixed-seed stream of order lifecycles on one partition, drained by one
//!   worker while the service is SIGKILLed and restarted, PostgreSQL is stopped abruptly
//!   (`pg_ctl stop -m immediate`) and started again, and the broker is stopped and started
//!   again, ends in exactly the state an in-memory model reaches from the same events: nothing
//!   lost, nothing applied twice, every invariant held.
//! - `poison_input`: thousands of malformed payloads mixed into valid traffic on three
//!   partitions each reach the dead-letter topic with their reason, every valid event is
//!   applied, no partition stalls, the process never restarts and its memory stays bounded.
//! - `two_instances_never_double_assign`: two processes splitting six partitions between them,
//!   eight workers each, twenty couriers: sampled every ~100 ms, no courier ever holds two
//!   orders and every committed state is consistent (an order may wait beside a free courier
//!   only for the moment two commits cross); at rest every invariant holds and every event was
//!   applied exactly once.
//!
//! Each test starts its own PostgreSQL and broker (`common::Stack`: scripts/postgres.sh and
//! scripts/kafka.sh in a private state dir under `CARGO_TARGET_TMPDIR`), because it stops them
//! abruptly while other tests use the shared ones; the stack stops them again, even on panic.
//! The tests of this file run one at a time (a lock), so three brokers never compete for a
//! small CI machine.
//!
//! `FAULTS=long` selects the long version (20,000 orders, 20+ kills, 10,000 bad payloads);
//! the default is the short one that `cargo test` runs in CI. `FAULTS_SEED` changes the seed
//! of the fault schedule. Run it with `scripts/faults.sh [short|long]`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::database::pg_ctl;
use common::{
    at, backlog, courier, dead_letters, in_ci, offsets, produce_to, unique, wait_drained,
    wait_until, Client, Instance, Stack,
};
use serde_json::{json, Value};
use service_courier::domain::{
    CourierStatus, NewCourier, OrderEvent, OrderId, OrderStatus, StatusFamily, TransportType,
};
use service_courier::repository::{
    CourierRepository, MemoryRepository, OrderState, PgRepository, Snapshot,
};
use service_courier::simulate::{lifecycle, Rng};
use service_courier::usecase::{couriers, OrderEventProcessor, Outcome};

// ------------------------------------------------------------------------------ sizes ----

/// Which version of the suite runs: `FAULTS=long`, else short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Short,
    Long,
}

fn size() -> Size {
    match std::env::var("FAULTS").as_deref() {
        Ok("long") => Size::Long,
        Ok("short") | Ok("") | Err(_) => Size::Short,
        Ok(other) => panic!("FAULTS={other:?}: expected short or long"),
    }
}

fn pick<T>(short: T, long: T) -> T {
    match size() {
        Size::Short => short,
        Size::Long => long,
    }
}

/// Seed of the fault schedule (kill moments, outage lengths): `FAULTS_SEED` or a fixed one.
fn fault_seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_250_806)
}

// ------------------------------------------------------------ one test at a time ----

/// Each test runs a broker JVM, a PostgreSQL and the service; on a 2-core CI machine three at
/// once would only make every timing worse. The tests of this binary take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked poisons the lock; the next one may still run.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The tools the scripts need. Missing ones fail the test in CI and skip it (loudly) outside.
fn tools_present() -> bool {
    let missing: Vec<&str> = ["java", "kcat", "bash"]
        .into_iter()
        .filter(|t| !on_path(t))
        .chain(pg_ctl().is_none().then_some("pg_ctl"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "the fault suite needs {} (scripts/deps.sh installs kcat; a JDK and PostgreSQL \
         binaries are expected on the machine)",
        missing.join(", ")
    );
    assert!(!in_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

fn service_env(
    stack: &Stack,
    topic: &str,
    group: &str,
    workers: usize,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", stack.pg.url.clone()),
        ("KAFKA_BROKERS", stack.brokers()),
        ("KAFKA_ORDER_TOPIC", topic.to_owned()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_GROUP_ID", group.to_owned()),
        ("KAFKA_COMMIT_INTERVAL_MS", "500".into()),
        ("WORKERS", workers.to_string()),
        ("LOG_LEVEL", "info".into()),
    ]
}

// ------------------------------------------------------------------- events, model ----

/// A fixed-seed stream of service-order lifecycles (`simulate::lifecycle`: created, pending,
/// confirmed, ..., then completed, delivered, cancelled, canceled or deleted), `concurrency`
/// orders in progress at once, interleaved at random. Stamped one second apart from
/// 2025-08-06T12:00:00Z, not by the wall clock, so the model and the database see the same
/// instants.
fn lifecycles(seed: u64, orders: usize, concurrency: usize) -> Vec<OrderEvent> {
    let mut rng = Rng::new(seed);
    let mut active: Vec<(OrderId, VecDeque<OrderStatus>)> = Vec::new();
    let mut started = 0;
    let mut events = Vec::new();
    loop {
        while active.len() < concurrency && started < orders {
            let id = OrderId::parse(format!("o{seed}-{started}")).expect("order id");
            active.push((id, lifecycle(&mut rng, 0.3).into()));
            started += 1;
        }
        if active.is_empty() {
            return events;
        }
        let k = rng.below(active.len());
        let (id, statuses) = &mut active[k];
        let status = statuses.pop_front().expect("a lifecycle is never empty");
        events.push(OrderEvent {
            order_id: id.clone(),
            status,
            created_at: at(events.len() as i64),
        });
        if statuses.is_empty() {
            active.swap_remove(k);
        }
    }
}

/// `n` couriers with distinct phones and mixed transport.
fn crew(n: u32) -> Vec<NewCourier> {
    (1..=n)
        .map(|i| courier(i, TransportType::ALL[i as usize % 3]))
        .collect()
}

/// Hires the crew an hour before the first event, one second apart: the same calls, the same
/// times, in the database and in the model.
fn hire(repo: &impl CourierRepository, crew: &[NewCourier]) {
    for (i, c) in crew.iter().enumerate() {
        couriers::add(repo, c, at(i as i64 - 3600)).expect("hire");
    }
}

/// What the database must end up as: the in-memory fake fed the same events in order. Also
/// how many orders had to wait for a courier on the way.
fn model(crew: &[NewCourier], events: &[OrderEvent]) -> (Snapshot, usize) {
    let repo = MemoryRepository::new();
    hire(&repo, crew);
    let p = OrderEventProcessor::new(repo);
    let mut waited = 0;
    for e in events {
        let outcome = p.apply(e).expect("the model applies every event");
        waited += usize::from(outcome == Outcome::Waiting);
    }
    let snapshot = p.repository().snapshot().expect("model snapshot");
    (snapshot, waited)
}

/// Every way two snapshots differ, one line each.
fn differences(db: &Snapshot, model: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..db.couriers.len().max(model.couriers.len()) {
        let (d, m) = (db.couriers.get(i), model.couriers.get(i));
        if d != m {
            out.push(format!("courier #{i}: database {d:?}, model {m:?}"));
        }
    }
    let orders: BTreeSet<&OrderId> = db.orders.keys().chain(model.orders.keys()).collect();
    for o in orders {
        let (d, m) = (db.orders.get(o), model.orders.get(o));
        if d != m {
            out.push(format!("order {o}: database {d:?}, model {m:?}"));
        }
    }
    let deliveries: BTreeSet<&OrderId> = db
        .deliveries
        .keys()
        .chain(model.deliveries.keys())
        .collect();
    for o in deliveries {
        let (d, m) = (db.deliveries.get(o), model.deliveries.get(o));
        if d != m {
            out.push(format!("delivery of {o}: database {d:?}, model {m:?}"));
        }
    }
    if db.waiting != model.waiting {
        let at = db
            .waiting
            .iter()
            .zip(&model.waiting)
            .position(|(a, b)| a != b)
            .unwrap_or(db.waiting.len().min(model.waiting.len()));
        out.push(format!(
            "waiting queue: {} in the database, {} in the model, first difference at #{at}",
            db.waiting.len(),
            model.waiting.len()
        ));
    }
    out
}

/// Couriers carrying more than one active delivery (never allowed).
fn couriers_with_two_orders(s: &Snapshot) -> usize {
    let mut active: HashMap<_, usize> = HashMap::new();
    for d in s.deliveries.values().filter(|d| d.completed_at.is_none()) {
        *active.entry(d.courier).or_default() += 1;
    }
    active.values().filter(|n| **n > 1).count()
}

fn completed_total(s: &Snapshot) -> i64 {
    s.statistics().values().sum()
}

/// The family of each order's last event: its terminal state, whatever the interleaving.
fn last_family(events: &[OrderEvent]) -> BTreeMap<OrderId, StatusFamily> {
    let mut last = BTreeMap::new();
    for e in events {
        last.insert(e.order_id.clone(), e.status.family());
    }
    last
}

/// Orders whose state is not what their last event's family says: cancelled, completed, or
/// (an order that never ended) with a courier or waiting for one.
fn wrong_states(s: &Snapshot, events: &[OrderEvent]) -> Vec<String> {
    let ended: BTreeSet<&OrderId> = events
        .iter()
        .filter(|e| {
            matches!(
                e.status.family(),
                StatusFamily::Cancel | StatusFamily::Complete
            )
        })
        .map(|e| &e.order_id)
        .collect();
    last_family(events)
        .into_iter()
        .filter_map(|(o, family)| {
            let st = s.orders.get(&o);
            let ok = match family {
                StatusFamily::Cancel => st == Some(&OrderState::Cancelled),
                StatusFamily::Complete => matches!(st, Some(OrderState::Completed(_))),
                // Reordered: a progress status or a late `created` after the end does nothing.
                _ if ended.contains(&o) => {
                    matches!(st, Some(OrderState::Cancelled | OrderState::Completed(_)))
                }
                _ => matches!(st, Some(OrderState::Assigned(_) | OrderState::Waiting)),
            };
            (!ok).then(|| format!("order {o}: last event {family:?}, state {st:?}"))
        })
        .collect()
}

fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\n{title}");
    println!("  {}", "-".repeat(width + 14));
    for (k, v) in rows {
        println!("  {k:<width$}  {v:>10}");
    }
    println!("  {}", "-".repeat(width + 14));
}

// ------------------------------------------------------------------ 1. the harness ----

/// What can go wrong while the backlog drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL the service and start it again.
    Kill,
    /// `pg_ctl stop -m immediate`, 5-10 s down, start again.
    PostgresOutage,
    /// scripts/kafka.sh stop, then start.
    BrokerRestart,
}

/// The faults in a seeded random order.
fn fault_schedule(rng: &mut Rng, kills: usize, outages: usize, restarts: usize) -> Vec<Fault> {
    let mut faults = vec![Fault::Kill; kills];
    faults.extend(vec![Fault::PostgresOutage; outages]);
    faults.extend(vec![Fault::BrokerRestart; restarts]);
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.below(i + 1));
    }
    faults
}

/// Counters for the table.
#[derive(Debug, Default)]
struct Survived {
    kills: usize,
    outages: usize,
    restarts: usize,
    /// Per kill: events applied past the last commit, delivered again after the restart.
    replayed: Vec<i64>,
    /// Events not yet committed when each fault hit.
    backlog_at_fault: Vec<i64>,
    /// Seconds PostgreSQL was down, per outage.
    pg_down: Vec<f64>,
    /// Seconds the broker was down, per restart.
    broker_down: Vec<f64>,
}

#[test]
fn faults_harness() {
    let _turn = take_turn();
    if !tools_present() {
        return;
    }
    let started = Instant::now();
    let (orders, couriers_n, kills, outages, restarts) =
        pick((1_500, 50, 3, 1, 1), (20_000, 50, 24, 3, 3));
    let stack = Stack::start("faults-harness");
    let topic = unique("harness");
    let group = unique("group");
    stack.kafka.topic(&topic, 1);
    stack.kafka.topic(&format!("{topic}.dlq"), 1);

    // The same couriers, hired the same way, in the database and in the model. Many more
    // orders in progress than couriers, so a good share of them wait in the queue.
    let crew = crew(couriers_n);
    {
        let repo = stack.pg.repo(1);
        repo.migrate().expect("schema");
        hire(&repo, &crew);
    } // the pool closes here, before any outage
    let events = lifecycles(5, orders, 4 * couriers_n as usize);
    let t_model = Instant::now();
    let (expected, waited) = model(&crew, &events);
    println!(
        "faults_harness: {} events of {orders} orders, model built in {:.1}s",
        events.len(),
        t_model.elapsed().as_secs_f64()
    );
    let values: Vec<(i32, Vec<u8>)> = events
        .iter()
        .map(|e| (0, e.to_json().into_bytes()))
        .collect();
    let total = events.len() as i64;

    // One worker: processing order is partition order, so the end state is deterministic.
    let mut service = Instance::start("service", service_env(&stack, &topic, &group, 1));
    let seed = fault_seed();
    let mut rng = Rng::new(seed);
    let schedule = fault_schedule(&mut rng, kills, outages, restarts);
    let mut survived = Survived::default();
    let mut first_event = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        first_event
            .entry(e.order_id.to_string())
            .or_insert(i as i64);
    }
    let stream = Stream {
        stack: &stack,
        group: &group,
        topic: &topic,
        first_event,
    };
    // The stream goes out in one chunk per fault (and a last one). The service drains fast,
    // so a stream produced up front would be gone before the faults; instead each fault hits
    // a fresh chunk a few hundred ms after it was produced, while it is being applied.
    let per_chunk = values.len().div_ceil(schedule.len() + 1);
    let mut chunks = values.chunks(per_chunk);
    let limit = Duration::from_secs(pick(300, 1200));
    for (i, fault) in schedule.into_iter().enumerate() {
        // Caught up: the previous fault is behind it, and it commits again.
        let brokers = stack.brokers();
        wait_drained(&brokers, &group, &topic, limit, || service.assert_alive());
        produce_to(&brokers, &topic, chunks.next().expect("a chunk per fault"));
        std::thread::sleep(Duration::from_millis(50 + rng.below(250) as u64));
        let o = offsets(&brokers, &group, &topic);
        survived.backlog_at_fault.push(backlog(&o));
        println!(
            "  fault {}: {fault:?} with {} of {} events uncommitted",
            i + 1,
            backlog(&o),
            o[&0].1,
        );
        inject(fault, &stream, &mut service, &mut rng, &mut survived);
    }
    let brokers = stack.brokers();
    for rest in chunks {
        produce_to(&brokers, &topic, rest);
    }
    wait_drained(&brokers, &group, &topic, limit, || service.assert_alive());
    let exit = service.terminate();
    assert_eq!(exit, Some(0), "SIGTERM after draining: exit code");

    let db = stack.pg.repo(1).snapshot().expect("database snapshot");
    let diffs = differences(&db, &expected);
    let lost = expected
        .orders
        .keys()
        .filter(|o| !db.orders.contains_key(*o))
        .count()
        + (completed_total(&expected) - completed_total(&db)).max(0) as usize;
    let twice = (completed_total(&db) - completed_total(&expected)).max(0);
    let doubled = couriers_with_two_orders(&db);
    let backlog_max = survived.backlog_at_fault.iter().max().copied().unwrap_or(0);
    let backlog_min = survived.backlog_at_fault.iter().min().copied().unwrap_or(0);
    print_table(
        &format!("faults_harness ({:?}, fault seed {seed})", size()),
        &[
            ("events", total.to_string()),
            ("orders", orders.to_string()),
            ("couriers", couriers_n.to_string()),
            ("orders that had to wait", waited.to_string()),
            ("kills survived", survived.kills.to_string()),
            ("PostgreSQL outages survived", survived.outages.to_string()),
            ("broker restarts survived", survived.restarts.to_string()),
            ("uncommitted at a fault, min", backlog_min.to_string()),
            ("uncommitted at a fault, max", backlog_max.to_string()),
            (
                "applied past the commit at kills",
                survived.replayed.iter().sum::<i64>().to_string(),
            ),
            ("PostgreSQL down, s (total)", secs(&survived.pg_down)),
            ("broker down, s (total)", secs(&survived.broker_down)),
            ("mismatches", diffs.len().to_string()),
            ("lost", lost.to_string()),
            ("applied twice", twice.to_string()),
            ("couriers holding two orders", doubled.to_string()),
            ("completed deliveries", completed_total(&db).to_string()),
            (
                "elapsed, s",
                format!("{:.1}", started.elapsed().as_secs_f64()),
            ),
        ],
    );
    assert!(
        diffs.is_empty(),
        "the database differs from the model in {} places, first ones:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
    assert_eq!(db, expected);
    db.check_invariants()
        .expect("invariants of the final state");
    assert_eq!((lost, twice, doubled), (0, 0, 0));
    assert_eq!(
        (survived.kills, survived.outages, survived.restarts),
        (kills, outages, restarts)
    );
}

fn secs(v: &[f64]) -> String {
    format!("{:.1}", v.iter().sum::<f64>())
}

/// Where the stream stands: the service's group, topic and database, and the first event of
/// each order (to tell how far the database got).
struct Stream<'a> {
    stack: &'a Stack,
    group: &'a str,
    topic: &'a str,
    first_event: HashMap<String, i64>,
}

impl Stream<'_> {
    fn committed(&self) -> i64 {
        let o = offsets(&self.stack.brokers(), self.group, self.topic);
        o.get(&0).map_or(0, |(c, _)| (*c).max(0))
    }

    /// How many events the database reflects, at least: with one worker applying the partition
    /// in order, the orders present are exactly those whose first event lies below that point.
    fn applied(&self) -> i64 {
        let mut db = postgres::Client::connect(&self.stack.pg.url, postgres::NoTls)
            .expect("PostgreSQL answers");
        db.query("SELECT order_id FROM orders", &[])
            .expect("orders")
            .iter()
            .filter_map(|r| self.first_event.get(r.get::<_, &str>(0)))
            .max()
            .map_or(0, |i| i + 1)
    }
}

fn inject(fault: Fault, stream: &Stream, service: &mut Instance, rng: &mut Rng, s: &mut Survived) {
    let stack = stream.stack;
    match fault {
        Fault::Kill => {
            service.kill();
            // Dead, it can neither apply nor commit: what it applied past its last commit
            // comes again after the restart and must change nothing.
            let replayed = stream.applied() - stream.committed();
            println!("    {replayed} events applied past the last commit: they come again");
            s.replayed.push(replayed);
            service.spawn();
            s.kills += 1;
        }
        Fault::PostgresOutage => {
            let down = Instant::now();
            stack.pg.crash();
            std::thread::sleep(Duration::from_millis(5_000 + rng.below(5_000) as u64));
            // The service keeps retrying meanwhile; it must not give up and exit.
            service.assert_alive();
            let attempts = stack.pg.start_again();
            s.pg_down.push(down.elapsed().as_secs_f64());
            println!(
                "    PostgreSQL down {:.1}s (started again at attempt {attempts})",
                down.elapsed().as_secs_f64()
            );
            s.outages += 1;
        }
        Fault::BrokerRestart => {
            let down = Instant::now();
            stack.kafka.stop();
            std::thread::sleep(Duration::from_millis(rng.below(3_000) as u64));
            service.assert_alive();
            let attempts = stack.kafka.start_again();
            // The broker answers before its partition has a leader again; the next events are
            // produced once it has (else the producer is refused: NotLeaderForPartition).
            wait_until(Duration::from_secs(120), "the topic's leader back", || {
                common::kafka_edge::try_watermarks(&stack.brokers(), stream.topic, 0).is_ok()
            });
            s.broker_down.push(down.elapsed().as_secs_f64());
            println!(
                "    broker down {:.1}s (started again at attempt {attempts})",
                down.elapsed().as_secs_f64()
            );
            s.restarts += 1;
        }
    }
}

// ---------------------------------------------------------------- 2. poison input ----

/// The fetch limit the service runs with here: values above it are dead-lettered as too large.
const FETCH_LIMIT: usize = 65_536;

/// One generated bad payload and the dead-letter reason it must get.
struct Bad {
    reason: &'static str,
    payload: Vec<u8>,
}

/// An event object with the three fields as given (`None` = absent).
fn object(order_id: Option<Value>, status: Option<Value>, created_at: Option<Value>) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("order_id", order_id),
        ("status", status),
        ("created_at", created_at),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    }
    Value::Object(m).to_string().into_bytes()
}

fn good_id(n: usize) -> Option<Value> {
    Some(json!(format!("bad-{n}")))
}

fn good_status() -> Option<Value> {
    Some(json!("created"))
}

fn good_time() -> Option<Value> {
    Some(json!("2025-08-06T12:00:00Z"))
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// `[[[ ... ]]]` nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A bad payload of a random kind. `n` makes ids distinct.
fn bad_payload(rng: &mut Rng, n: usize) -> Bad {
    let (reason, payload) = match rng.below(15) {
        // Random bytes with at least one byte that never occurs in UTF-8.
        0 => {
            let len = 1 + rng.below(300);
            let mut b = random_bytes(rng, len);
            let i = rng.below(b.len());
            b[i] = 0xff;
            ("not_utf8", b)
        }
        // An event cut short anywhere.
        1 => {
            let full = object(good_id(n), good_status(), good_time());
            let cut = 1 + rng.below(full.len() - 1);
            ("invalid_json", full[..cut].to_vec())
        }
        // Wrong JSON types for each field.
        2 => {
            let v = [
                json!(true),
                json!([1, 2]),
                json!({"id": 1}),
                json!(1.5),
                json!(1e30),
            ];
            let v = v[rng.below(v.len())].clone();
            ("invalid_field", object(Some(v), good_status(), good_time()))
        }
        3 => {
            let v = [
                json!(5),
                json!(false),
                json!(["created"]),
                json!({"s": "created"}),
            ];
            let v = v[rng.below(v.len())].clone();
            ("invalid_field", object(good_id(n), Some(v), good_time()))
        }
        4 => {
            let v = [
                json!(1754481600),
                json!(true),
                json!([2025, 8, 6]),
                json!({}),
            ];
            let v = v[rng.below(v.len())].clone();
            ("invalid_field", object(good_id(n), good_status(), Some(v)))
        }
        // Nulls and absent fields.
        5 => {
            let mut fields = [good_id(n), good_status(), good_time()];
            let i = rng.below(3);
            fields[i] = if rng.chance(0.5) {
                Some(Value::Null)
            } else {
                None
            };
            let [a, b, c] = fields;
            ("missing_field", object(a, b, c))
        }
        // Nested garbage: a deep array where an object should be (valid JSON, just not an
        // event), nesting deeper than the parser allows inside a field, or an object where
        // the id should be.
        6 => match rng.below(3) {
            0 => ("not_an_object", nested(200 + rng.below(5_000)).into_bytes()),
            1 => {
                let deep = nested(200 + rng.below(2_000));
                let p = format!(
                    r#"{{"order_id":{deep},"status":"created","created_at":"2025-08-06T12:00:00Z"}}"#
                );
                ("invalid_json", p.into_bytes())
            }
            _ => {
                let v = json!({"a": [{"b": null}, [1, [2, [3]]]], "c": {"d": "e"}});
                ("invalid_field", object(Some(v), good_status(), good_time()))
            }
        },
        // Empty and blank ids.
        7 => {
            let v = ["", " ", "\t  "][rng.below(3)];
            (
                "invalid_field",
                object(Some(json!(v)), good_status(), good_time()),
            )
        }
        // A 10 KB id.
        8 => {
            let v = "x".repeat(10_240 + rng.below(100));
            (
                "invalid_field",
                object(Some(json!(v)), good_status(), good_time()),
            )
        }
        // Dates that are not RFC 3339.
        9 => {
            let v = [
                "yesterday",
                "2025-13-45T99:99:99Z",
                "2025-08-06",
                "2025-08-06T12:00:00",
                "",
                "06/08/2025 12:00",
            ];
            let v = v[rng.below(v.len())];
            (
                "invalid_field",
                object(good_id(n), good_status(), Some(json!(v))),
            )
        }
        // Statuses service-order never sends.
        10 => {
            let long = "z".repeat(5_000);
            let v = ["lost", "shipped", "created!", "", "CREATED_", long.as_str()];
            let v = v[rng.below(v.len())];
            (
                "unsupported_status",
                object(good_id(n), Some(json!(v)), good_time()),
            )
        }
        // Valid JSON that is not an object.
        11 => {
            let v = ["42", "\"created\"", "[1,2,3]", "null", "true", "-0.5e3"];
            ("not_an_object", v[rng.below(v.len())].as_bytes().to_vec())
        }
        // Empty and blank values.
        12 => ("empty", [&b""[..], b" ", b"\n\t "][rng.below(3)].to_vec()),
        // A control character in the id.
        13 => {
            let v = format!("bad\u{1}{n}");
            (
                "invalid_field",
                object(Some(json!(v)), good_status(), good_time()),
            )
        }
        // Not UTF-8 inside an otherwise fine event.
        _ => {
            let mut p = object(good_id(n), good_status(), good_time());
            let i = 2 + rng.below(8);
            p[i] = 0xc3; // a lead byte followed by ASCII: invalid
            ("not_utf8", p)
        }
    };
    Bad { reason, payload }
}

/// A value over the fetch limit: a valid event padded past it, or random bytes.
fn oversized(rng: &mut Rng, n: usize) -> Bad {
    let size = 100 * 1024 + rng.below(10 * 1024);
    let payload = if n % 2 == 0 {
        let pad = "p".repeat(size);
        format!(
            r#"{{"order_id":"big-{n}","status":"created","created_at":"2025-08-06T12:00:00Z","pad":"{pad}"}}"#
        )
        .into_bytes()
    } else {
        random_bytes(rng, size)
    };
    Bad {
        reason: "too_large",
        payload,
    }
}

/// What a message on the topic is meant to be.
enum Meant {
    Valid,
    Bad(&'static str),
}

#[test]
fn poison_input() {
    let _turn = take_turn();
    if !tools_present() {
        return;
    }
    let started = Instant::now();
    let (bad_n, big_n, orders) = pick((1_000, 3, 300), (10_000, 10, 2_000));
    let partitions = 3;
    let stack = Stack::start("faults-poison");
    let topic = unique("poison");
    let dlq = format!("{topic}.dlq");
    let group = unique("group");
    stack.kafka.topic(&topic, partitions);
    stack.kafka.topic(&dlq, 1);
    {
        let repo = stack.pg.repo(1);
        repo.migrate().expect("schema");
        hire(&repo, &crew(10));
    }

    // Valid lifecycles, each order on one partition (so its events stay in order), with bad
    // payloads scattered among them on random partitions.
    let mut rng = Rng::new(77);
    let valid = lifecycles(11, orders, 40);
    let mut bad: Vec<Bad> = (0..bad_n - big_n)
        .map(|n| bad_payload(&mut rng, n))
        .collect();
    bad.extend((0..big_n).map(|n| oversized(&mut rng, n)));
    for i in (1..bad.len()).rev() {
        bad.swap(i, rng.below(i + 1));
    }
    // The generator's idea of each reason must be the parser's, or the check below means
    // nothing: a disagreement here is a generator bug (or a parser one worth a look).
    for b in &bad {
        let got = if b.payload.len() > FETCH_LIMIT {
            "too_large"
        } else {
            OrderEvent::parse(&b.payload).map_or_else(|e| e.code(), |_| "valid")
        };
        assert_eq!(
            got,
            b.reason,
            "generated payload {:?}",
            String::from_utf8_lossy(&b.payload[..b.payload.len().min(200)])
        );
    }
    let mut messages: Vec<(i32, Vec<u8>, Meant)> = Vec::new();
    let mut bad_iter = bad.into_iter();
    let per_valid = bad_n as f64 / valid.len() as f64;
    let mut owed = 0.0;
    for e in &valid {
        owed += per_valid;
        while owed >= 1.0 {
            owed -= 1.0;
            if let Some(b) = bad_iter.next() {
                let p = rng.below(partitions as usize) as i32;
                messages.push((p, b.payload, Meant::Bad(b.reason)));
            }
        }
        let p = (fnv1a(e.order_id.as_str()) % partitions as u64) as i32;
        messages.push((p, e.to_json().into_bytes(), Meant::Valid));
    }
    for b in bad_iter {
        let p = rng.below(partitions as usize) as i32;
        messages.push((p, b.payload, Meant::Bad(b.reason)));
    }

    let mut env = service_env(&stack, &topic, &group, 4);
    env.push((
        "KAFKA_FETCH_MAX_BYTES_PER_PARTITION",
        FETCH_LIMIT.to_string(),
    ));
    let mut service = Instance::start("service", env);
    let pid = service.pid();
    // Produced while it runs, in chunks: bad input arrives mixed into live traffic.
    let mut positions: Vec<(i32, i64)> = Vec::with_capacity(messages.len());
    let values: Vec<(i32, Vec<u8>)> = messages.iter().map(|(p, v, _)| (*p, v.clone())).collect();
    for chunk in values.chunks(1_000) {
        positions.extend(produce_to(&stack.brokers(), &topic, chunk));
        service.assert_alive();
    }
    wait_drained(
        &stack.brokers(),
        &group,
        &topic,
        Duration::from_secs(pick(180, 900)),
        || service.assert_alive(),
    );
    service.assert_alive();
    assert_eq!(service.pid(), pid, "the service restarted");
    let peak_kb = service.peak_rss_kb();
    let stalled = offsets(&stack.brokers(), &group, &topic)
        .values()
        .filter(|(c, hw)| (*c).max(0) != *hw)
        .count();

    // Every bad offset on the dead-letter topic with its reason; no valid one there.
    let meant: HashMap<(i32, i64), &Meant> = positions
        .iter()
        .copied()
        .zip(messages.iter().map(|(_, _, m)| m))
        .collect();
    let mut letters: HashMap<(i32, i64), Vec<String>> = HashMap::new();
    for v in dead_letters(&stack.brokers(), &dlq) {
        assert_eq!(
            v["source"]["topic"],
            topic.as_str(),
            "{:.300}",
            v.to_string()
        );
        let src = (
            v["source"]["partition"].as_i64().expect("partition") as i32,
            v["source"]["offset"].as_i64().expect("offset"),
        );
        let reason = v["reason"].as_str().expect("reason").to_owned();
        letters.entry(src).or_default().push(reason);
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (pos, m) in &meant {
        match (m, letters.get(pos)) {
            (Meant::Bad(r), None) => missing.push(format!("{pos:?} ({r})")),
            (Meant::Bad(r), Some(got)) if got.iter().any(|g| g != r) => {
                wrong.push(format!("{pos:?}: expected {r}, got {got:?}"))
            }
            (Meant::Bad(r), Some(_)) => *by_reason.entry(r).or_default() += 1,
            (Meant::Valid, Some(got)) => {
                wrong.push(format!("valid {pos:?} dead-lettered: {got:?}"))
            }
            (Meant::Valid, None) => {}
        }
    }
    let strays: Vec<_> = letters.keys().filter(|p| !meant.contains_key(p)).collect();
    let duplicates = letters.values().filter(|v| v.len() > 1).count();

    // Every valid order in the state of its last event; nothing else in the database.
    let db = stack.pg.repo(1).snapshot().expect("snapshot");
    let misplaced = wrong_states(&db, &valid);
    let exit = service.terminate();

    let mut rows: Vec<(&str, String)> = vec![
        ("messages", messages.len().to_string()),
        ("valid events", valid.len().to_string()),
        ("bad payloads", bad_n.to_string()),
        (
            "dead-lettered with the right reason",
            by_reason.values().sum::<usize>().to_string(),
        ),
        (
            "missing from the dead-letter topic",
            missing.len().to_string(),
        ),
        (
            "wrong reason or valid dead-lettered",
            wrong.len().to_string(),
        ),
        ("dead letters duplicated", duplicates.to_string()),
        ("orders applied", db.orders.len().to_string()),
        ("orders in a wrong state", misplaced.len().to_string()),
        ("stalled partitions", stalled.to_string()),
        ("service restarts", "0".into()),
        (
            "peak RSS (VmHWM), MB",
            format!("{:.1}", peak_kb as f64 / 1024.0),
        ),
        (
            "elapsed, s",
            format!("{:.1}", started.elapsed().as_secs_f64()),
        ),
    ];
    let per_reason: Vec<(String, String)> = by_reason
        .iter()
        .map(|(r, n)| (format!("  {r}"), n.to_string()))
        .collect();
    rows.extend(per_reason.iter().map(|(r, n)| (r.as_str(), n.clone())));
    print_table(&format!("poison_input ({:?})", size()), &rows);

    assert!(
        missing.is_empty(),
        "not dead-lettered: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(20)]);
    assert!(
        strays.is_empty(),
        "dead letters for offsets never produced: {strays:?}"
    );
    assert_eq!(by_reason.values().sum::<usize>(), bad_n);
    assert!(
        misplaced.is_empty(),
        "{:?}",
        &misplaced[..misplaced.len().min(20)]
    );
    assert_eq!(
        db.orders.len(),
        orders,
        "only the valid orders reach the database"
    );
    db.check_invariants().expect("invariants");
    assert_eq!(stalled, 0);
    assert!(
        peak_kb < 512 * 1024,
        "peak RSS {peak_kb} kB: memory is not bounded"
    );
    assert_eq!(exit, Some(0), "SIGTERM: exit code");
}

/// A small stable hash (FNV-1a) to put each order on one partition.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ------------------------------------------------------ 3. two instances, one database ----

/// What the sampler saw while the instances ran.
#[derive(Debug, Default)]
struct Samples {
    taken: usize,
    /// Snapshots where a courier held two active orders.
    double_assigned: usize,
    /// Broken consistency (`Snapshot::check_consistency`), first ones.
    broken: Vec<String>,
    /// Snapshots where an order waited beside an available courier: allowed for the moment
    /// between two commits that crossed, until the pairing pass after them (usecase::handover).
    gaps: usize,
    /// The longest time one order was seen waiting beside an available courier.
    longest_gap: Duration,
    /// Snapshots that could not be read.
    errors: usize,
    max_waiting: usize,
    max_busy: usize,
}

/// The longest a crossing may leave an order waiting beside a free courier. The pairing pass
/// runs right after such a commit and every second anyway, so a gap this old means passes were
/// missed, not that the machine was slow (a deadline, generous on purpose, not a timing).
const GAP_LIMIT: Duration = Duration::from_secs(30);

/// Reads a consistent snapshot (one REPEATABLE READ transaction) every ~100 ms until `stop`.
/// Every committed state must be consistent and no courier may ever hold two orders. Whether an
/// order waits beside a free courier is only counted and timed here: two commits that cross may
/// leave that for a moment; it must close quickly and hold at rest (checked at the end).
fn sample(repo: &PgRepository, stop: &AtomicBool) -> Samples {
    let mut s = Samples::default();
    // The order at the head of the queue during the current gap, and since when.
    let mut gap: Option<(OrderId, Instant)> = None;
    while !stop.load(Ordering::SeqCst) {
        match repo.snapshot() {
            Ok(snap) => {
                s.taken += 1;
                if couriers_with_two_orders(&snap) > 0 {
                    s.double_assigned += 1;
                }
                if let Err(e) = snap.check_consistency() {
                    if s.broken.len() < 10 {
                        s.broken.push(e);
                    }
                }
                let available = snap
                    .couriers
                    .iter()
                    .any(|c| c.status == CourierStatus::Available);
                let head = snap.waiting.first().filter(|_| available).cloned();
                gap = match (head, gap.take()) {
                    (None, _) => None,
                    (Some(o), Some((same, since))) if o == same => {
                        s.gaps += 1;
                        s.longest_gap = s.longest_gap.max(since.elapsed());
                        Some((same, since))
                    }
                    (Some(o), _) => {
                        s.gaps += 1;
                        Some((o, Instant::now()))
                    }
                };
                s.max_waiting = s.max_waiting.max(snap.waiting.len());
                let busy = snap
                    .couriers
                    .iter()
                    .filter(|c| c.active_order.is_some())
                    .count();
                s.max_busy = s.max_busy.max(busy);
            }
            Err(_) => s.errors += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

/// The event count of an instance's final summary line (`stopped: N events (...)`).
fn events_in_summary(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("stopped: "))?;
    let rest = &line[line.find("stopped: ")? + "stopped: ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn summary_count(n: Option<u64>) -> String {
    n.map_or_else(|| "no summary".into(), |n| n.to_string())
}

#[test]
fn two_instances_never_double_assign() {
    let _turn = take_turn();
    if !tools_present() {
        return;
    }
    let started = Instant::now();
    let orders = pick(2_000, 6_000);
    let couriers_n = 20;
    let stack = Stack::start("faults-two");
    let topic = unique("two");
    let dlq = format!("{topic}.dlq");
    let group = unique("group");
    stack.kafka.topic(&topic, 6);
    stack.kafka.topic(&dlq, 1);
    {
        let repo = stack.pg.repo(1);
        repo.migrate().expect("schema");
        hire(&repo, &crew(couriers_n));
    }
    // Unkeyed, as service-order sends them: each event on a random partition, so one order's
    // events are read by both instances, in any order. The last tenth of the orders never end:
    // at rest they wait and every courier must be busy; a courier freed at the end who missed
    // a waiting order (two commits crossed, and no pairing pass made up for it) would show.
    let all = lifecycles(23, orders, 200);
    let mut by_start: Vec<&OrderId> = Vec::new();
    for e in &all {
        if e.status == OrderStatus::Created {
            by_start.push(&e.order_id);
        }
    }
    let never_ending: BTreeSet<OrderId> = by_start[orders - orders / 10..]
        .iter()
        .map(|o| (*o).clone())
        .collect();
    let events: Vec<OrderEvent> = all
        .iter()
        .filter(|e| {
            !never_ending.contains(&e.order_id)
                || !matches!(
                    e.status.family(),
                    StatusFamily::Cancel | StatusFamily::Complete
                )
        })
        .cloned()
        .collect();
    let open = never_ending.len();
    let mut rng = Rng::new(29);
    let values: Vec<(i32, Vec<u8>)> = events
        .iter()
        .map(|e| (rng.below(6) as i32, e.to_json().into_bytes()))
        .collect();

    // `kafka`: a static split. `rdkafka`: one group, and Kafka splits the partitions; the
    // events go out once each instance owns three, so that the counts below stay exact (the
    // rebalances of a group under load are `kafka_groups`' subject).
    let split = Client::of_run() == Client::Kafka;
    let mut a = Instance::start("instance A", {
        let mut env = service_env(&stack, &topic, &group, 8);
        if split {
            env.push(("KAFKA_PARTITIONS", "0,2,4".into()));
        }
        env
    });
    let mut b = Instance::start("instance B", {
        let mut env = service_env(&stack, &topic, &group, 8);
        if split {
            env.push(("KAFKA_PARTITIONS", "1,3,5".into()));
        }
        env
    });
    if !split {
        wait_until(
            Duration::from_secs(120),
            "each instance owns three partitions",
            || a.service().owned_partitions() == 3 && b.service().owned_partitions() == 3,
        );
    }
    let stop = AtomicBool::new(false);
    let sampler_repo = stack.pg.repo(1);
    let samples = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(&sampler_repo, &stop));
        // Produced in chunks while both run, so the sampler sees the busy middle of the run.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for chunk in values.chunks(400) {
                produce_to(&stack.brokers(), &topic, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
            wait_drained(
                &stack.brokers(),
                &group,
                &topic,
                Duration::from_secs(pick(180, 600)),
                || {
                    a.assert_alive();
                    b.assert_alive();
                },
            );
        }));
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.join().expect("sampler");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        samples
    });
    drop(sampler_repo);
    let (exit_a, exit_b) = (a.terminate(), b.terminate());
    let applied: Vec<Option<u64>> = [a.log_text(), b.log_text()]
        .iter()
        .map(|l| events_in_summary(l))
        .collect();
    let db = stack.pg.repo(1).snapshot().expect("snapshot");
    let misplaced = wrong_states(&db, &events);
    let letters = dead_letters(&stack.brokers(), &dlq);
    let busy = db
        .couriers
        .iter()
        .filter(|c| c.active_order.is_some())
        .count();
    let completed_by_courier = db
        .orders
        .values()
        .filter(|s| matches!(s, OrderState::Completed(Some(_))))
        .count() as i64;

    print_table(
        &format!("two_instances_never_double_assign ({:?})", size()),
        &[
            ("events", events.len().to_string()),
            ("orders", orders.to_string()),
            ("couriers", couriers_n.to_string()),
            ("snapshots sampled", samples.taken.to_string()),
            ("snapshots unreadable", samples.errors.to_string()),
            (
                "most orders waiting at once",
                samples.max_waiting.to_string(),
            ),
            ("most couriers busy at once", samples.max_busy.to_string()),
            (
                "courier with two orders (samples)",
                samples.double_assigned.to_string(),
            ),
            ("inconsistent (samples)", samples.broken.len().to_string()),
            (
                "order beside a free courier (samples)",
                samples.gaps.to_string(),
            ),
            (
                "longest such wait, ms",
                samples.longest_gap.as_millis().to_string(),
            ),
            ("applied by A", summary_count(applied[0])),
            ("applied by B", summary_count(applied[1])),
            ("dead letters", letters.len().to_string()),
            ("orders in a wrong state", misplaced.len().to_string()),
            ("orders that never end", open.to_string()),
            ("couriers busy at rest", busy.to_string()),
            ("orders waiting at rest", db.waiting.len().to_string()),
            ("completed deliveries", completed_total(&db).to_string()),
            (
                "elapsed, s",
                format!("{:.1}", started.elapsed().as_secs_f64()),
            ),
        ],
    );
    assert!(samples.taken >= 10, "too few samples: {samples:?}");
    assert_eq!(samples.double_assigned, 0, "a courier held two orders");
    assert!(
        samples.broken.is_empty(),
        "consistency broke mid-run: {:?}",
        samples.broken
    );
    assert!(
        samples.longest_gap < GAP_LIMIT,
        "an order waited beside a free courier for {:?}: a pairing pass was missed",
        samples.longest_gap
    );
    assert_eq!((exit_a, exit_b), (Some(0), Some(0)), "SIGTERM: exit codes");
    // Exactly once: each instance counted every event it applied, and together they applied
    // each event of the topic once (none dead-lettered, none twice).
    assert_eq!(
        applied
            .iter()
            .map(|n| n.expect("a summary line"))
            .sum::<u64>(),
        events.len() as u64,
        "events applied by both instances together"
    );
    assert!(
        letters.is_empty(),
        "dead letters: {:?}",
        &letters[..letters.len().min(5)]
    );
    assert!(
        misplaced.is_empty(),
        "{:?}",
        &misplaced[..misplaced.len().min(20)]
    );
    // At rest: no order waits beside a free courier, and the open orders have every courier.
    db.check_invariants().expect("final invariants");
    assert_eq!(busy, open.min(couriers_n as usize), "busy couriers at rest");
    assert_eq!(db.waiting.len(), open - busy, "orders waiting at rest");
    assert_eq!(completed_total(&db), completed_by_courier);
    assert_eq!(couriers_with_two_orders(&db), 0);
}
