//! `service-courier dlq replay` against real Kafka and the running service: events the
//! service dead-letters are published to the order topic again by the replay, once each; a
//! dry run publishes nothing; letters whose payload was cut cannot be replayed and are
//! reported; the filter leaves letters out.

use crate::common;

use std::time::Duration;

use common::kafka_edge::run_binary;
use common::{
    create_topic, kafka_brokers, kcat_consume_all, kcat_produce, offsets, unique, wait_until,
    Service, TestDb,
};

/// An event with an unsupported status: the service dead-letters it as `unsupported_status`.
fn teleported(id: &str) -> String {
    format!(r#"{{"order_id":"{id}","status":"teleported","created_at":"2025-08-06T12:00:00Z"}}"#)
}

#[test]
fn dead_letters_are_replayed_once_dry_runs_publish_nothing_and_cut_payloads_are_reported() {
    let Some(db) = TestDb::new(2) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("replay");
    let dlq = format!("{topic}.dlq");
    let group = unique("group");
    create_topic(&topic, 1);
    create_topic(&dlq, 2);
    let env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", dlq.clone()),
        ("KAFKA_GROUP_ID", group.clone()),
        ("KAFKA_COMMIT_INTERVAL_MS", "100".into()),
        ("KAFKA_FETCH_MAX_BYTES_PER_PARTITION", "65536".into()),
    ];
    let mut service = Service::start(&env);
    let bad: Vec<String> = ["r-1", "r-2", "r-3"]
        .iter()
        .map(|id| teleported(id))
        .collect();
    // Over the fetch size and over the envelope's 64 KiB: dead-lettered as too_large, cut.
    let big = format!(
        r#"{{"order_id":"r-big","status":"created","created_at":"2025-08-06T12:00:00Z","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let mut lines = bad.clone();
    lines.push("not json".into());
    lines.push(big);
    kcat_produce(&brokers, &topic, &lines);
    wait_until(Duration::from_secs(60), "five dead letters", || {
        kcat_consume_all(&brokers, &dlq).len() == 5
    });
    // Stopped, so the replayed events are not dead-lettered again while the test counts.
    assert_eq!(service.terminate(Duration::from_secs(20)), Some(0));
    let before = kcat_consume_all(&brokers, &topic);
    assert_eq!(before.len(), 5);

    let dlq_env: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("KAFKA_"))
        .cloned()
        .collect();
    let run = |args: &[&str]| {
        let out = run_binary(args, &dlq_env);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "$ service-courier {}\n{stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "exit {:?}", out.status.code());
        stdout
    };
    let replay_group = format!("{group}.dlq-replay");

    // Dry run: says what it would do, publishes and commits nothing.
    let dry = run(&["dlq", "replay", "--dry-run"]);
    assert!(
        dry.contains("would replay 4, skipped by filter 0, not replayable 1"),
        "{dry}"
    );
    assert!(dry.contains("its payload was cut"), "{dry}");
    assert_eq!(
        kcat_consume_all(&brokers, &topic).len(),
        5,
        "dry run published"
    );
    assert!(
        offsets(&brokers, &replay_group, &dlq)
            .values()
            .all(|&(committed, _)| committed < 0),
        "dry run committed"
    );

    // Replay the unsupported statuses: the three original payloads, once.
    let first = run(&["dlq", "replay", "--reason", "unsupported_status"]);
    assert!(
        first.contains("replayed 3, skipped by filter 2, not replayable 0"),
        "{first}"
    );
    let after = kcat_consume_all(&brokers, &topic);
    assert_eq!(after.len(), 8);
    let mut replayed = after[5..].to_vec();
    replayed.sort();
    assert_eq!(replayed, bad, "the original payloads, byte for byte");

    // Again: nothing new to replay, nothing published.
    let second = run(&["dlq", "replay"]);
    assert!(
        second.contains("replayed 0, skipped by filter 0, not replayable 0"),
        "{second}"
    );
    assert_eq!(kcat_consume_all(&brokers, &topic).len(), 8);

    // A dead-letter topic that does not exist: exit 1, saying so.
    let mut missing = dlq_env.clone();
    missing.retain(|(k, _)| *k != "KAFKA_DLQ_TOPIC");
    missing.push(("KAFKA_DLQ_TOPIC", format!("{dlq}.missing")));
    let out = run_binary(&["dlq", "replay"], &missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    // A bad --since is a usage error.
    let out = run_binary(&["dlq", "replay", "--since", "yesterday"], &dlq_env);
    assert_eq!(out.status.code(), Some(2));
}
