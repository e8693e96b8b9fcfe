//! Consumer groups, codecs, transactions and added partitions against a real Apache Kafka broker
//! (3.9 or 4.x, whichever KAFKA_BROKERS points at: `scripts/test.sh` runs this file on both) and
//! real PostgreSQL, through the built binary. The `kafka`-crate scenarios run where the crate can
//! work (Kafka 3.x); on Kafka 4.x, which dropped the protocol versions it speaks, they assert
//! that it is refused at start (exit 3) instead. The rdkafka tests fail, never skip, when the binary
//! lacks the rdkafka client. Outcomes are asserted in PostgreSQL, in the group's committed
//! offsets, on the dead-letter topic and in the instances' metrics; waits are for conditions,
//! with generous deadlines, never for a fixed time.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::groups::*;
use common::{
    completed_deliveries, event, kcat_consume_isolated, kcat_consume_positions, kcat_produce,
    kcat_produce_codec, oid, wait_until, Service,
};
use service_courier::repository::{CourierRepository, OrderState, PgRepository, Snapshot};

fn json(id: &str, status: &str, secs: i64) -> String {
    event(id, status, secs).to_json()
}

fn snapshot(stand: &GroupStand) -> Snapshot {
    stand.db.repo.snapshot().expect("snapshot")
}

/// Waits until `service` has consumed something, sending no-op events (`pending` of orders
/// nobody else uses) every 2 s meanwhile: a member that got its partitions only after the
/// last events were read needs new ones to show that it consumes.
fn wait_consuming(stand: &GroupStand, service: &mut Service, what: &str) {
    let mut nudges = 0;
    let mut last = Instant::now();
    wait_until(Duration::from_secs(120), what, || {
        assert!(
            service.running(),
            "{what}: it died:\n{}",
            service.log_text()
        );
        if metric(service, "courier_events_consumed_total") > 0.0 {
            return true;
        }
        if last.elapsed() > Duration::from_secs(2) {
            let lines: Vec<String> = (0..12)
                .map(|i| json(&format!("nudge-{nudges}-{i}"), "pending", 0))
                .collect();
            kcat_produce(&stand.brokers, &stand.topic, &lines);
            nudges += 1;
            last = Instant::now();
        }
        false
    });
}

// ------------------------------------------------------------ the binary has the client ----

#[test]
fn the_binary_has_the_rdkafka_client_and_refuses_an_unknown_one() {
    require_rdkafka();
    let (code, log) = run_briefly(&[
        ("KAFKA_CLIENT", "sarama"),
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/x"),
    ]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("KAFKA_CLIENT"), "{log}");
}

// ------------------------------------------------------------------------- scale-out ----

/// Orders per chunk of the stream, and chunks.
const CHUNK: usize = 150;
const CHUNKS: usize = 8;

/// Chunk `k` of the stream: `created` and `cooking` of its orders, then the endings of the
/// previous chunk's orders (completed 2 in 3, else cancelled). Chunk `CHUNKS` holds only the
/// last endings.
fn chunk(k: usize) -> Vec<String> {
    let mut lines = Vec::new();
    if k < CHUNKS {
        for i in k * CHUNK..(k + 1) * CHUNK {
            let id = format!("o-{i}");
            lines.push(json(&id, "created", i as i64));
            lines.push(json(&id, "cooking", i as i64 + 1));
        }
    }
    if k > 0 {
        for i in (k - 1) * CHUNK..k * CHUNK {
            lines.push(json(&format!("o-{i}"), ending(i), i as i64 + 2));
        }
    }
    lines
}

fn ending(i: usize) -> &'static str {
    if i % 3 == 2 {
        "cancelled"
    } else {
        "completed"
    }
}

/// Three instances in one group on 6 partitions of unkeyed events; one is SIGKILLed mid-stream
/// and a fourth starts mid-stream. With rdkafka the group moves the dead member's partitions to
/// the others (after KAFKA_SESSION_TIMEOUT_MS) and hands some to the newcomer; with the `kafka`
/// crate the split is static, so the fourth is the dead instance's replacement (same
/// INSTANCE_INDEX). Either way every order ends as its events say, nothing takes effect twice,
/// and no courier ever holds two orders.
fn scale_out(client: Client) {
    let couriers_n = 20;
    let Some(stand) = GroupStand::for_client(client, 6, couriers_n) else {
        return;
    };
    let split = |i: usize| -> Vec<(&'static str, String)> {
        match client {
            Client::Kafka => vec![
                ("INSTANCE_COUNT", "3".into()),
                ("INSTANCE_INDEX", i.to_string()),
            ],
            Client::Rdkafka => vec![],
        }
    };
    let mut first: Vec<Service> = (0..3).map(|i| stand.start(client, &split(i))).collect();
    let sampler_repo = PgRepository::new(stand.db.config.clone(), 1);
    let stop = AtomicBool::new(false);
    let taken = AtomicUsize::new(0);

    let (samples, mut fourth, killed_consumed) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(&sampler_repo, &stop, &taken));
        // Stops the sampler however this closure ends: a failed assertion must not leave the
        // scope waiting for it forever.
        let stop_sampler = StopOnDrop(&stop);
        kcat_produce(&stand.brokers, &stand.topic, &chunk(0));
        for (i, s) in first.iter_mut().enumerate() {
            wait_consuming(&stand, s, &format!("instance {i} consuming"));
        }
        kcat_produce(&stand.brokers, &stand.topic, &chunk(1));

        // SIGKILL: no shutdown, no final commit, no leaving the group.
        let killed_consumed = metric(&first[0], "courier_events_consumed_total");
        first[0].child.kill().expect("SIGKILL");
        let _ = first[0].child.wait();
        for k in 2..5 {
            kcat_produce(&stand.brokers, &stand.topic, &chunk(k));
        }
        let (_, rest) = first.split_at_mut(1);
        let (a, b) = rest.split_at_mut(1);
        let (second, third) = (&mut a[0], &mut b[0]);
        if client == Client::Rdkafka {
            // The two survivors alone commit every partition to its end: the killed member's
            // partitions moved to them once the group gave up on it (KAFKA_SESSION_TIMEOUT_MS).
            stand.wait_drained(&mut [&mut *second, &mut *third], Duration::from_secs(240));
        }

        // A fourth instance mid-stream: with rdkafka the group rebalances and hands it
        // partitions; with the `kafka` crate it replaces the killed one (same INSTANCE_INDEX).
        let mut fourth = stand.start(client, &split(0));
        for k in 5..=CHUNKS {
            kcat_produce(&stand.brokers, &stand.topic, &chunk(k));
        }
        wait_consuming(&stand, &mut fourth, "the fourth instance consuming");
        stand.wait_drained(
            &mut [&mut *second, &mut *third, &mut fourth],
            Duration::from_secs(240),
        );
        // A busy machine may drain faster than it samples: the instances stay up until the
        // sampler has read the database often enough to mean something.
        wait_until(
            Duration::from_secs(120),
            "10 samples of the database",
            || taken.load(Ordering::SeqCst) >= 10,
        );
        drop(stop_sampler);
        (sampler.join().expect("sampler"), fourth, killed_consumed)
    });

    for s in first.iter_mut().skip(1).chain(std::iter::once(&mut fourth)) {
        assert_eq!(
            s.terminate(Duration::from_secs(30)),
            Some(0),
            "{}",
            s.log_text()
        );
    }
    assert!(
        killed_consumed > 0.0,
        "the killed instance had consumed nothing"
    );
    assert!(samples.taken >= 10, "too few samples: {samples:?}");
    assert_eq!(samples.double_assigned, 0, "a courier held two orders");
    assert!(
        samples.broken.is_empty(),
        "inconsistent: {:?}",
        samples.broken
    );

    let s = snapshot(&stand);
    s.check_invariants().expect("invariants at the end");
    for i in 0..CHUNK * CHUNKS {
        let id = format!("o-{i}");
        let st = s.orders.get(&oid(&id));
        match ending(i) {
            "cancelled" => assert_eq!(st, Some(&OrderState::Cancelled), "{id}"),
            _ => assert!(matches!(st, Some(OrderState::Completed(_))), "{id}: {st:?}"),
        }
    }
    assert!(s.waiting.is_empty(), "waiting: {:?}", s.waiting);
    assert!(s.couriers.iter().all(|c| c.active_order.is_none()));
    // Nothing took effect twice: each courier counts exactly the deliveries it completed.
    let completed_by_courier = completed_deliveries(&s);
    assert_eq!(s.deliveries.len(), completed_by_courier);
    assert!(completed_by_courier > couriers_n as usize, "few deliveries");
    assert!(stand.dead_letters().is_empty(), "dead letters appeared");
}

per_client!(scale_out:
    kafka_crate_static_split_survives_a_sigkill_and_a_replacement,
    rdkafka_group_moves_a_killed_members_partitions_and_takes_in_a_fourth);

// ---------------------------------------------------------------------------- codecs ----

/// Orders per batch; each order's `created` and `completed` travel in the same batch.
const PER_BATCH: usize = 20;

/// Produces one batch per (partition, codec) in that order, as a backlog, then lets one instance
/// drain it: every event is applied exactly once (consumed and applied counters equal the events
/// sent, no duplicates), every order is completed by a courier, and the committed offsets reach
/// the end.
fn codecs(client: Client, batches: &[(i32, &str)]) {
    let orders = batches.len() * PER_BATCH;
    // A courier per order: nobody waits, so every order ends completed by a courier.
    let Some(stand) = GroupStand::for_client(client, 2, orders as u32) else {
        return;
    };
    for (b, (partition, codec)) in batches.iter().enumerate() {
        let mut lines = Vec::new();
        for i in 0..PER_BATCH {
            let id = format!("{codec}-{b}-{i}");
            lines.push(json(&id, "created", i as i64));
            lines.push(json(&id, "completed", i as i64 + 1));
        }
        kcat_produce_codec(&stand.brokers, &stand.topic, *partition, codec, &lines);
    }
    let events = (orders * 2) as f64;
    let mut service = stand.start(client, &[]);
    stand.wait_drained(&mut [&mut service], Duration::from_secs(120));
    assert_eq!(metric(&service, "courier_events_consumed_total"), events);
    assert_eq!(metric(&service, "courier_events_applied_total"), events);
    assert_eq!(
        metric_where(
            &service,
            "courier_events_applied_total",
            "outcome=\"duplicate\""
        ),
        0.0
    );
    assert_eq!(
        service.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        service.log_text()
    );
    let s = snapshot(&stand);
    s.check_invariants().expect("invariants");
    for (b, (_, codec)) in batches.iter().enumerate() {
        for i in 0..PER_BATCH {
            let id = format!("{codec}-{b}-{i}");
            let st = s.orders.get(&oid(&id));
            assert!(
                matches!(st, Some(OrderState::Completed(Some(_)))),
                "{id}: {st:?}"
            );
        }
    }
    assert_eq!(s.statistics().values().sum::<i64>() as usize, orders);
    assert!(stand.dead_letters().is_empty(), "dead letters appeared");
}

#[test]
fn rdkafka_applies_lz4_zstd_gzip_snappy_and_mixed_batches_once() {
    codecs(
        Client::Rdkafka,
        &[
            (0, "lz4"),
            (0, "zstd"),
            (0, "gzip"),
            (0, "snappy"),
            // Uncompressed batches between compressed ones on one partition.
            (1, "none"),
            (1, "gzip"),
            (1, "none"),
            (1, "snappy"),
            (1, "none"),
        ],
    );
}

#[test]
fn kafka_crate_applies_gzip_and_snappy_batches_once() {
    // The crate decodes neither lz4 nor zstd, and drops uncompressed records that share a fetch
    // with compressed ones (docs/kafka-clients.md): one codec per partition.
    codecs(
        Client::Kafka,
        &[(0, "gzip"), (0, "gzip"), (1, "snappy"), (1, "snappy")],
    );
}

// ---------------------------------------------------------------------- transactions ----

#[test]
fn rdkafka_applies_committed_transactions_and_never_aborted_ones() {
    let Some(stand) = GroupStand::new(2, 50) else {
        return;
    };
    let mut service = stand.start(Client::Rdkafka, &[]);
    let ids = |prefix: &str, range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("{prefix}-{i}")).collect()
    };
    let on = |p: i32, ids: &[String], status: &str| -> Vec<(i32, String)> {
        ids.iter().map(|id| (p, json(id, status, 10))).collect()
    };
    let (c0, c1) = (ids("c", 0..10), ids("c", 10..20));
    let (a0, a1, a2) = (ids("a", 0..10), ids("a", 10..20), ids("a", 20..30));
    let late = ids("late", 0..5);

    let tx1 = [on(0, &c0, "created"), on(1, &c1, "created")].concat();
    // Aborted: new orders, cancels of committed ones, and a bad payload that must never reach
    // the dead-letter topic.
    let tx2 = [
        on(0, &a0, "created"),
        on(0, &c0[..5], "cancelled"),
        vec![(1, "aborted garbage".to_string())],
        on(1, &a1, "created"),
    ]
    .concat();
    let tx3 = [
        on(0, &c0, "completed"),
        on(1, &c1[..5], "cancelled"),
        vec![(1, "committed garbage".to_string())],
    ]
    .concat();
    let tx4 = [on(0, &c1[5..], "cancelled"), on(1, &a2, "created")].concat();
    let tx5 = on(1, &late, "created");
    let report = txproduce(
        &stand.brokers,
        &stand.topic,
        &[
            Tx::Commit(&tx1),
            Tx::Abort(&tx2),
            Tx::Commit(&tx3),
            Tx::Abort(&tx4),
            Tx::Commit(&tx5),
        ],
    );
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            "committed 20",
            "aborted 26",
            "committed 16",
            "aborted 15",
            "committed 5"
        ]
    );

    // The aborted records are in the log; a read_committed reader skips them.
    let committed = kcat_consume_positions(&stand.brokers, &stand.topic);
    let everything = kcat_consume_isolated(&stand.brokers, &stand.topic, "read_uncommitted");
    assert_eq!(committed.len(), 41);
    assert_eq!(everything.len(), 41 + 41);
    // Done when the group's commits cover every committed record (the last offsets of a
    // partition may be transaction markers, which no consumer is handed).
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _) in &committed {
        let e = last.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
    wait_until(
        Duration::from_secs(120),
        "committed records committed by the group",
        || {
            assert!(service.running(), "died:\n{}", service.log_text());
            let offsets = stand.offsets();
            last.iter().all(|(p, o)| offsets[p].0 > *o)
        },
    );
    assert_eq!(
        service.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        service.log_text()
    );

    let s = snapshot(&stand);
    s.check_invariants().expect("invariants");
    let state = |id: &String| s.orders.get(&oid(id)).cloned();
    for id in &c0 {
        assert!(
            matches!(state(id), Some(OrderState::Completed(Some(_)))),
            "{id}: {:?}",
            state(id)
        );
    }
    for id in &c1[..5] {
        assert_eq!(state(id), Some(OrderState::Cancelled), "{id}");
    }
    for id in c1[5..].iter().chain(&late) {
        assert!(
            matches!(state(id), Some(OrderState::Assigned(_))),
            "{id}: {:?}",
            state(id)
        );
    }
    for id in a0.iter().chain(&a1).chain(&a2) {
        assert_eq!(state(id), None, "aborted {id} was applied");
    }
    let letters = stand.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["reason"], "invalid_json");
    assert_eq!(letters[0]["value"], "committed garbage");
    assert_eq!(letters[0]["source"]["partition"], 1);
}

// ------------------------------------------------------------------ added partitions ----

#[test]
fn rdkafka_consumes_partitions_added_while_running() {
    let Some(stand) = GroupStand::new(2, 10) else {
        return;
    };
    let mut service = stand.start(Client::Rdkafka, &[]);
    for p in 0..2 {
        kcat_produce_codec(
            &stand.brokers,
            &stand.topic,
            p,
            "none",
            &[json(&format!("before-{p}"), "created", 0)],
        );
    }
    stand.wait_drained(&mut [&mut service], Duration::from_secs(90));

    add_partitions(&stand.topic, 4);
    for p in 2..4 {
        kcat_produce_codec(
            &stand.brokers,
            &stand.topic,
            p,
            "none",
            &[
                json(&format!("added-{p}"), "created", 0),
                json(&format!("added-{p}"), "completed", 1),
            ],
        );
    }
    // The issue asks for pick-up within 60 s; waiting twice that keeps a busy machine from
    // failing the test, which asserts the outcome, not the time.
    wait_until(
        Duration::from_secs(120),
        "the added partitions consumed and committed",
        || {
            assert!(service.running(), "died:\n{}", service.log_text());
            let offsets = stand.offsets();
            offsets.len() == 4 && offsets.values().all(|(c, hw)| (*c).max(0) == *hw)
        },
    );
    assert_eq!(
        service.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        service.log_text()
    );
    let s = snapshot(&stand);
    s.check_invariants().expect("invariants");
    for p in 0..2 {
        let id = format!("before-{p}");
        assert!(
            matches!(s.orders.get(&oid(&id)), Some(OrderState::Assigned(_))),
            "{id}"
        );
    }
    for p in 2..4 {
        let id = format!("added-{p}");
        assert!(
            matches!(
                s.orders.get(&oid(&id)),
                Some(OrderState::Completed(Some(_)))
            ),
            "{id}: {:?}",
            s.orders.get(&oid(&id))
        );
    }
    assert_eq!(s.statistics().values().sum::<i64>(), 2);
}
