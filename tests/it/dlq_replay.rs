//! `service-courier dlq replay` against real Kafka and the running service: events the
//! service dead-letters are Kafka-native letters (the original key and value, `dlq.*`
//! headers, read here with `kcat -J`), published to the order topic again by the replay, once
//! each, keys kept; a letter of the old JSON envelope is replayed too; a dry run publishes
//! nothing; a letter whose value was over the dead-letter topic's limit is recorded by
//! reference and reported as not replayable; the filter leaves letters out.

use crate::common;

use std::time::Duration;

use common::kafka_edge::run_binary;
use common::{
    create_topic, create_topic_with, dead_letters, kafka_brokers, kcat_consume_all, kcat_produce,
    kcat_produce_keyed, offsets, unique, wait_until, Service, TestDb,
};

/// An event with an unsupported status: the service dead-letters it as `unsupported_status`.
fn teleported(id: &str) -> String {
    format!(r#"{{"order_id":"{id}","status":"teleported","created_at":"2025-08-06T12:00:00Z"}}"#)
}

#[test]
fn dead_letters_are_replayed_once_dry_runs_publish_nothing_and_letters_by_reference_are_reported() {
    let Some(db) = TestDb::new(2) else { return };
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("replay");
    let dlq = format!("{topic}.dlq");
    let group = unique("group");
    create_topic(&topic, 1);
    // A dead-letter topic that takes smaller messages than the order topic.
    create_topic_with(&dlq, 2, &["max.message.bytes=50000"]);
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
    // Over the fetch size (too_large) and over the dead-letter topic's limit: by reference.
    let big = format!(
        r#"{{"order_id":"r-big","status":"created","created_at":"2025-08-06T12:00:00Z","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    kcat_produce_keyed(&brokers, &topic, &[format!("key-1\t{}", bad[0])]);
    let mut lines = bad[1..].to_vec();
    lines.push("not json".into());
    lines.push(big);
    kcat_produce(&brokers, &topic, &lines);
    wait_until(Duration::from_secs(60), "five dead letters", || {
        dead_letters(&brokers, &dlq).len() == 5
    });
    // Stopped, so the replayed events are not dead-lettered again while the test counts.
    assert_eq!(service.terminate(Duration::from_secs(20)), Some(0));
    let before = kcat_consume_all(&brokers, &topic);
    assert_eq!(before.len(), 5);

    // Readable by any Kafka tool: kcat -J shows the reason and the source in headers, the
    // original key and value as they were.
    let letters = dead_letters(&brokers, &dlq);
    let keyed = letters
        .iter()
        .find(|l| l["value"] == bad[0].as_str())
        .unwrap_or_else(|| panic!("the keyed letter: {letters:#?}"));
    assert_eq!(keyed["reason"], "unsupported_status");
    assert_eq!(keyed["key"], "key-1");
    assert_eq!(keyed["source"]["topic"], topic.as_str());
    let by_reference: Vec<_> = letters
        .iter()
        .filter(|l| l["by_reference"] == true)
        .collect();
    assert_eq!(by_reference.len(), 1, "{letters:#?}");
    assert_eq!(by_reference[0]["reason"], "too_large");
    assert_eq!(by_reference[0]["value"], serde_json::Value::Null);
    assert!(by_reference[0]["value_size"].as_i64() > Some(70_000));
    // A letter of the envelope the service wrote before, still on the topic.
    let old = serde_json::json!({
        "reason": "unsupported_status",
        "error": "unsupported status \"teleported\"",
        "source": {"topic": topic, "partition": 0, "offset": 0},
        "payload": teleported("r-old"),
        "payload_hex": null,
        "payload_size": teleported("r-old").len(),
        "payload_truncated": false,
        "dead_lettered_at": "2026-01-01T00:00:00.000Z",
    });
    kcat_produce(&brokers, &dlq, &[old.to_string()]);

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
        dry.contains("would replay 5, skipped by filter 0, not replayable 1"),
        "{dry}"
    );
    assert!(
        dry.contains("over the dead-letter topic's size limit"),
        "{dry}"
    );
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

    // Replay the unsupported statuses, both forms: the four original messages, once.
    let first = run(&["dlq", "replay", "--reason", "unsupported_status"]);
    assert!(
        first.contains("replayed 4, skipped by filter 2, not replayable 0"),
        "{first}"
    );
    let after = kcat_consume_all(&brokers, &topic);
    assert_eq!(after.len(), 9);
    let mut replayed = after[5..].to_vec();
    replayed.sort();
    let mut expected = bad.clone();
    expected.push(teleported("r-old"));
    assert_eq!(replayed, expected, "the original values, byte for byte");
    let keys: Vec<String> = common::kcat_consume_keys(&brokers, &topic)[5..]
        .iter()
        .filter_map(|k| k.clone())
        .collect();
    assert_eq!(keys, vec!["key-1".to_owned()], "the original key, kept");

    // Again: nothing new to replay, nothing published.
    let second = run(&["dlq", "replay"]);
    assert!(
        second.contains("replayed 0, skipped by filter 0, not replayable 0"),
        "{second}"
    );
    assert_eq!(kcat_consume_all(&brokers, &topic).len(), 9);

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
