//! What brokers and producers do to the running service (issue 12, items 1-5 and 9), with the
//! run's client (KAFKA_CLIENT; item 1 is the `kafka` crate's: librdkafka decodes every codec),
//! against the built binary, a real Kafka broker and real PostgreSQL:
//! an undecodable batch stalls only its partition and is reported until an operator skips it;
//! a mixed-compression backlog is applied whole; partitions added while running are read; a
//! topic deleted and created again is read from its new start; offsets that left the log are
//! reported and counted; unsent dead letters pause fetching within a bound.
//!
//! Waits are generous and no duration is asserted; the figures (time to detect, to recover)
//! are printed for the record.

use crate::common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::kafka_edge;
use common::*;

const LONG: Duration = Duration::from_secs(120);

/// A topic of its own, a dead-letter topic when asked for; the service with 2 workers.
struct Stand(ServiceStand);

impl std::ops::Deref for Stand {
    type Target = ServiceStand;
    fn deref(&self) -> &ServiceStand {
        &self.0
    }
}

impl Stand {
    /// A topic of `partitions`; its dead-letter topic only when `with_dlq`.
    fn new(partitions: u32, with_dlq: bool) -> Option<Self> {
        ServiceStand::new("edge", partitions, with_dlq).map(Self)
    }

    fn start(&self, extra: &[(&'static str, &str)]) -> Service {
        Service::start(&self.0.env(2, extra))
    }

    /// Whether every one of `orders` is in the database.
    fn all_applied(&self, orders: &[String]) -> bool {
        let s = self.db.repo.snapshot().expect("snapshot");
        orders.iter().all(|o| s.orders.contains_key(&oid(o)))
    }

    fn count_applied(&self, orders: &[String]) -> usize {
        let s = self.db.repo.snapshot().expect("snapshot");
        orders
            .iter()
            .filter(|o| s.orders.contains_key(&oid(o)))
            .count()
    }

    fn committed(&self, partition: i32) -> i64 {
        offsets(&self.brokers, &self.group, &self.topic)
            .get(&partition)
            .map_or(-1, |(c, _)| *c)
    }

    fn wait_applied(&self, service: &mut Service, what: &str, orders: &[String]) {
        let start = Instant::now();
        while !self.all_applied(orders) {
            assert!(service.running(), "service died:\n{}", service.log_text());
            assert!(
                start.elapsed() < LONG,
                "timed out waiting for {what}; log:\n{}",
                service.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

use service_courier::repository::CourierRepository;

/// `n` order ids, unique to this run.
fn orders(prefix: &str, n: usize) -> Vec<String> {
    let run = unique(prefix);
    (0..n).map(|i| format!("{run}-{i}")).collect()
}

/// A `created` event of each order, stamped now.
fn created(orders: &[String]) -> Vec<String> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    orders
        .iter()
        .map(|o| format!(r#"{{"order_id":"{o}","status":"created","created_at":"{now}"}}"#))
        .collect()
}

/// A Kafka command-line tool (the jars `scripts/kafka.sh` fetched): its output, asserted
/// successful.
fn kafka_tool(class: &str, args: &[&str]) -> Output {
    let out = kafka_edge::kafka_tool(class, args);
    assert!(
        out.status.success(),
        "{class} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value of the first metric line starting with `start`.
fn metric(service: &Service, start: &str) -> Option<f64> {
    service
        .get("/metrics")
        .1
        .lines()
        .find(|l| l.starts_with(start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn an_undecodable_batch_stalls_only_its_partition_is_reported_and_resumes_once_skipped() {
    let Some(stand) = Stand::new(3, true) else {
        return;
    };
    let before = orders("before", 2);
    let in_batch = orders("lz4", 3);
    let after = orders("after", 2);
    let others = orders("other", 10);
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&before));
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "lz4", &created(&in_batch));
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&after));
    kcat_produce_codec(
        &stand.brokers,
        &stand.topic,
        1,
        "none",
        &created(&others[..5]),
    );
    kcat_produce_codec(
        &stand.brokers,
        &stand.topic,
        2,
        "none",
        &created(&others[5..]),
    );

    let started = Instant::now();
    let mut service = stand.start(&[]);
    if Client::of_run() == Client::Rdkafka {
        // librdkafka decodes lz4 (and zstd): nothing stalls, every event is applied once.
        let mut all = others.clone();
        all.extend(before.iter().chain(&in_batch).chain(&after).cloned());
        stand.wait_applied(&mut service, "every event, the lz4 batch too", &all);
        wait_until(LONG, "offset 7 committed on partition 0", || {
            stand.committed(0) == 7
        });
        assert_eq!(service.get("/healthz").0, 200);
        assert_eq!(
            metric(&service, "courier_partition_stalled{partition=\"0\"}"),
            Some(0.0)
        );
        assert_eq!(
            metric(&service, "courier_events_consumed_total"),
            Some(all.len() as f64)
        );
        assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
        return;
    }
    // The other partitions, and the events in front of the batch, are applied.
    let mut expected = others.clone();
    expected.extend(before.iter().cloned());
    stand.wait_applied(&mut service, "the readable events", &expected);
    let mut health = (0, String::new());
    wait_until(LONG, "/healthz to name the stalled partition", || {
        health = service.get("/healthz");
        health.0 == 503
    });
    let detected = started.elapsed();
    assert!(
        health.1.contains("partition 0 stalled at offset 2") && health.1.contains("lz4"),
        "{health:?}"
    );
    assert_eq!(
        metric(&service, "courier_partition_stalled{partition=\"0\"}"),
        Some(1.0)
    );
    // Lag keeps being read while the partition is stalled: 5 offsets behind on partition 0.
    wait_until(LONG, "the lag of the stalled partition", || {
        metric(&service, "courier_consumer_lag{partition=\"0\"}") == Some(5.0)
    });
    // Events keep flowing on the other partitions meanwhile.
    let more = orders("more", 3);
    kcat_produce_codec(&stand.brokers, &stand.topic, 1, "none", &created(&more));
    stand.wait_applied(&mut service, "events produced while stalled", &more);
    let log = service.log_text();
    let reports = log
        .lines()
        .filter(|l| l.contains("is stalled at offset 2"))
        .count();
    assert!((1..=2).contains(&reports), "logged {reports} times:\n{log}");
    assert!(
        log.contains("KAFKA_CLIENT=rdkafka") && log.contains("--reset-offsets --to-offset"),
        "{log}"
    );
    assert!(
        !stand.all_applied(&after),
        "events behind the batch cannot have been read"
    );

    // The operator skips the batch with the documented command; the service resumes.
    let skipped_at = Instant::now();
    let partition = format!("{}:0", stand.topic);
    // The tool sometimes answers nothing at all (exit 0) while the broker is busy with other
    // tests' topics: run it until it shows the new offset.
    wait_until(LONG, "the skip command to be accepted", || {
        let reset = kafka_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &[
                "--bootstrap-server",
                &stand.brokers,
                "--group",
                &stand.group,
                "--topic",
                &partition,
                "--reset-offsets",
                "--to-offset",
                "5",
                "--execute",
            ],
        );
        String::from_utf8_lossy(&reset.stdout).contains("NEW-OFFSET")
    });
    stand.wait_applied(&mut service, "the events after the skipped batch", &after);
    wait_until(LONG, "/healthz back to 200", || {
        service.get("/healthz").0 == 200
    });
    let recovered = skipped_at.elapsed();
    assert_eq!(
        metric(&service, "courier_partition_stalled{partition=\"0\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&service, "courier_offsets_skipped_total{partition=\"0\"}"),
        Some(3.0)
    );
    wait_until(LONG, "offset 7 committed on partition 0", || {
        stand.committed(0) == 7
    });
    assert_eq!(stand.count_applied(&in_batch), 0, "the skipped batch");
    eprintln!(
        "FIGURES item 1: stall reported after {detected:?} from start; resumed {recovered:?} \
         after the skip command; events lost: 0 (the 3 skipped were skipped by the operator)"
    );
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_mixed_compression_backlog_is_applied_whole_and_committed_exactly() {
    let Some(stand) = Stand::new(1, true) else {
        return;
    };
    let all = orders("mixed", 25);
    for (i, codec) in ["none", "gzip", "none", "snappy", "none"]
        .iter()
        .enumerate()
    {
        kcat_produce_codec(
            &stand.brokers,
            &stand.topic,
            0,
            codec,
            &created(&all[i * 5..i * 5 + 5]),
        );
    }
    let started = Instant::now();
    let mut service = stand.start(&[]);
    stand.wait_applied(&mut service, "all 25 events", &all);
    wait_until(LONG, "offset 25 committed", || stand.committed(0) == 25);
    eprintln!(
        "FIGURES item 4: 25 of 25 applied, committed 25, {:?} from start; events lost: 0",
        started.elapsed()
    );
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn partitions_added_while_running_are_read_from_their_start_even_with_fallback_latest() {
    let Some(stand) = Stand::new(2, true) else {
        return;
    };
    let mut service = stand.start(&[("KAFKA_FALLBACK_OFFSET", "latest")]);
    wait_until(LONG, "the consumer to own both partitions", || {
        service.owned_partitions() == 2
    });
    // The group commits something, so later partitions are not history.
    let first = orders("first", 4);
    kcat_produce_codec(
        &stand.brokers,
        &stand.topic,
        0,
        "none",
        &created(&first[..2]),
    );
    kcat_produce_codec(
        &stand.brokers,
        &stand.topic,
        1,
        "none",
        &created(&first[2..]),
    );
    stand.wait_applied(&mut service, "the first events", &first);
    wait_until(LONG, "the first commits", || {
        stand.committed(0) == 2 && stand.committed(1) == 2
    });

    kafka_tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &stand.brokers,
            "--alter",
            "--topic",
            &stand.topic,
            "--partitions",
            "4",
        ],
    );
    let added = Instant::now();
    let new = orders("new", 20);
    kcat_produce_codec(
        &stand.brokers,
        &stand.topic,
        2,
        "none",
        &created(&new[..10]),
    );
    kcat_produce_codec(
        &stand.brokers,
        &stand.topic,
        3,
        "none",
        &created(&new[10..]),
    );
    stand.wait_applied(&mut service, "the events of the new partitions", &new);
    wait_until(LONG, "the new partitions committed", || {
        stand.committed(2) == 10 && stand.committed(3) == 10
    });
    eprintln!(
        "FIGURES item 2: 20 of 20 events of added partitions applied {:?} after the alter; \
         events lost: 0",
        added.elapsed()
    );
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_topic_deleted_and_created_again_while_running_is_read_from_its_new_start() {
    let Some(stand) = Stand::new(1, true) else {
        return;
    };
    let mut service = stand.start(&[]);
    let old = orders("old", 30);
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&old));
    stand.wait_applied(&mut service, "30 events of the old topic", &old);
    wait_until(LONG, "offset 30 committed", || stand.committed(0) == 30);

    kafka_tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &stand.brokers,
            "--delete",
            "--topic",
            &stand.topic,
        ],
    );
    let deleted = Instant::now();
    // Created again once the deletion is through (the create fails while it is pending).
    wait_until(LONG, "the topic created again", || {
        Command::new("bash")
            .arg(repo_root().join("scripts/kafka.sh"))
            .args(["topic", &stand.topic, "1"])
            .output()
            .is_ok_and(|o| o.status.success())
            && kafka_edge::try_watermarks(&stand.brokers, &stand.topic, 0) == Ok((0, 0))
    });
    let new = orders("recreated", 60);
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&new));
    stand.wait_applied(&mut service, "all 60 events of the new topic", &new);
    // Reported loudly: at once when the offsets show it, within 5 s by the topic's id
    // (`rdkafka`), so waited for.
    wait_until(LONG, "the new log reported in the log", || {
        service.log_text().contains("is a new log")
    });
    wait_until(LONG, "offset 60 committed on the new topic", || {
        stand.committed(0) == 60
    });
    eprintln!(
        "FIGURES item 3: 60 of 60 events of the recreated topic applied {:?} after the delete; \
         events lost: 0",
        deleted.elapsed()
    );
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn offsets_that_left_the_log_are_reported_and_counted() {
    let Some(stand) = Stand::new(1, true) else {
        return;
    };
    let first = orders("kept", 10);
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&first));
    let mut service = stand.start(&[]);
    stand.wait_applied(&mut service, "the first 10 events", &first);
    wait_until(LONG, "offset 10 committed", || stand.committed(0) == 10);
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));

    // While it is down: 10 more, and the first 5 of them deleted from the log.
    let later = orders("later", 10);
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&later));
    let json = std::env::temp_dir().join(format!("{}.json", unique("delete-records")));
    std::fs::write(
        &json,
        format!(
            r#"{{"partitions":[{{"topic":"{}","partition":0,"offset":15}}],"version":1}}"#,
            stand.topic
        ),
    )
    .expect("write the offsets file");
    kafka_tool(
        "org.apache.kafka.tools.DeleteRecordsCommand",
        &[
            "--bootstrap-server",
            &stand.brokers,
            "--offset-json-file",
            &json.display().to_string(),
        ],
    );
    let _ = std::fs::remove_file(&json);
    assert_eq!(
        kafka_edge::watermarks(&stand.brokers, &stand.topic, 0),
        (15, 20)
    );

    let mut service = stand.start(&[]);
    stand.wait_applied(&mut service, "the events still in the log", &later[5..]);
    wait_until(LONG, "offset 20 committed", || stand.committed(0) == 20);
    wait_until(LONG, "the skipped offsets counted", || {
        metric(&service, "courier_offsets_skipped_total{partition=\"0\"}") == Some(5.0)
    });
    let log = service.log_text();
    assert!(
        log.contains("offsets 10..14 of") && log.contains("5 offsets skipped"),
        "{log}"
    );
    eprintln!("FIGURES item 5: offsets 10..14 reported skipped and counted (5)");
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn unsent_dead_letters_pause_fetching_until_the_dead_letter_topic_takes_them() {
    // No dead-letter topic, and the broker does not create topics on demand
    // (scripts/kafka.sh sets auto.create.topics.enable=false).
    let Some(stand) = Stand::new(1, false) else {
        return;
    };
    let bad: Vec<String> = (0..3000).map(|i| format!("not json {i}")).collect();
    for chunk in bad.chunks(500) {
        kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", chunk);
    }
    let good = orders("good", 5);
    kcat_produce_codec(&stand.brokers, &stand.topic, 0, "none", &created(&good));

    let started = Instant::now();
    let mut service = stand.start(&[("KAFKA_FETCH_MAX_BYTES_PER_PARTITION", "16384")]);
    let mut health = (0, String::new());
    wait_until(LONG, "/healthz to say fetching is paused", || {
        assert!(service.running(), "service died:\n{}", service.log_text());
        health = service.get("/healthz");
        health.1.contains("fetching paused")
    });
    let detected = started.elapsed();
    assert_eq!(health.0, 503, "{health:?}");
    assert_eq!(metric(&service, "courier_fetching_paused"), Some(1.0));
    let held = metric(&service, "courier_dead_letter_backlog").unwrap_or(0.0);
    assert!(held >= 1000.0, "{held} letters held");
    // Paused means no more fetching: what was consumed stays well short of the 3005 events.
    let consumed = || metric(&service, "courier_events_consumed_total").unwrap_or(0.0);
    let at_pause = consumed();
    // Checked once the loop has provably turned meanwhile: two more sends of the held letters
    // were tried (each failure logs one line).
    let tries = || {
        service
            .log_text()
            .matches("letters held, their offsets stay uncommitted")
            .count()
    };
    let before = tries();
    wait_until(
        LONG,
        "two more dead-letter sends tried while paused",
        || tries() >= before + 2,
    );
    assert_eq!(consumed(), at_pause, "fetched while paused");
    assert!(at_pause < 3000.0, "{at_pause} consumed");
    assert_eq!(stand.committed(0), -1, "committed past unsent dead letters");

    create_topic(&stand.dlq, 1);
    let created_at = Instant::now();
    stand.wait_applied(&mut service, "the valid events behind the letters", &good);
    wait_until(LONG, "every offset committed", || {
        stand.committed(0) == 3005
    });
    wait_until(LONG, "/healthz back to 200", || {
        service.get("/healthz").0 == 200
    });
    assert_eq!(metric(&service, "courier_fetching_paused"), Some(0.0));
    assert_eq!(dead_letters(&stand.brokers, &stand.dlq).len(), 3000);
    eprintln!(
        "FIGURES item 9: paused after {detected:?} with {held} letters held ({at_pause} \
         consumed); all 3000 letters sent and 5 events applied {:?} after the topic was created; \
         events lost: 0",
        created_at.elapsed()
    );
    assert_eq!(service.terminate(Duration::from_secs(60)), Some(0));
}
