//! Helpers for the tests of `transport::kafka_edge` and `dlq replay`: produce batches with a
//! chosen compression to one partition, read watermarks, and run the binary's one-shot
//! subcommands.

use std::process::{Command, Output};

use kafka::client::KafkaClient;

/// A client with metadata for all topics.
pub fn client(brokers: &str) -> KafkaClient {
    let mut c = KafkaClient::new(brokers.split(',').map(str::to_owned).collect());
    c.load_metadata_all().expect("metadata");
    c
}

/// (log start, high watermark) of one partition, read with librdkafka (Kafka 3.x and 4.x).
pub fn watermarks(brokers: &str, topic: &str, partition: i32) -> (i64, i64) {
    try_watermarks(brokers, topic, partition)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
}

/// [`watermarks`], or why they cannot be read now (e.g. a topic still being created).
pub fn try_watermarks(brokers: &str, topic: &str, partition: i32) -> Result<(i64, i64), String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    consumer
        .fetch_watermarks(topic, partition, std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())
}

/// Runs the binary with `args` and `env` only (plus PATH, and the run's KAFKA_CLIENT as the
/// service gets it from `Service::start`; `env` wins): its output.
pub fn run_binary(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_service-courier"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(client) = std::env::var("KAFKA_CLIENT") {
        cmd.env("KAFKA_CLIENT", client);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// Produces `values` to partition 0 of `topic` in one committed transaction, with librdkafka:
/// the values, then a transaction marker that takes an offset of its own and that message
/// format v0 (the `kafka` crate's) does not carry.
pub fn produce_transaction(brokers: &str, topic: &str, transactional_id: &str, values: &[String]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::Duration;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", transactional_id)
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(60))
        .expect("init transactions");
    producer.begin_transaction().expect("begin");
    for v in values {
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(0)
                    .payload(v.as_str()),
            )
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer
        .commit_transaction(Duration::from_secs(60))
        .expect("commit");
}

/// Runs a Kafka command-line tool class with the jars scripts/kafka.sh fetched (its cache is one
/// folder per version, `.cache/kafka/libs-VERSION`; the admin tools of any version will do).
pub fn kafka_tool(class: &str, args: &[&str]) -> Output {
    let libs = std::env::var("KAFKA_LIBS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = super::repo_root().join(".cache/kafka");
            let preferred = cache.join("libs-3.9.1");
            if preferred.join(".complete").exists() {
                return preferred;
            }
            std::fs::read_dir(&cache)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libs-"))
                        && p.join(".complete").exists()
                })
                .unwrap_or(preferred)
        });
    Command::new("java")
        .arg("-Xmx256m")
        .arg("-cp")
        .arg(libs.join("*"))
        .arg(class)
        .args(args)
        .output()
        .expect("java runs the Kafka tools (scripts/kafka.sh fetched them)")
}

/// Deletes a topic and waits until the broker no longer lists it.
pub fn delete_topic(brokers: &str, topic: &str) {
    let out = kafka_tool(
        "org.apache.kafka.tools.TopicCommand",
        &["--bootstrap-server", brokers, "--delete", "--topic", topic],
    );
    assert!(
        out.status.success(),
        "deleting {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    super::wait_until(std::time::Duration::from_secs(60), "the topic gone", || {
        let mut c = KafkaClient::new(brokers.split(',').map(str::to_owned).collect());
        c.load_metadata_all().is_ok() && !c.topics().contains(topic)
    });
}

/// Deletes the records of `topic`/`partition` below `offset` (Kafka's DeleteRecords, as
/// retention would): the log start moves to `offset`.
pub fn delete_records(brokers: &str, topic: &str, partition: i32, offset: i64) {
    let spec = std::env::temp_dir().join(format!("{}.json", super::unique("delete-records")));
    std::fs::write(
        &spec,
        format!(
            r#"{{"partitions":[{{"topic":"{topic}","partition":{partition},"offset":{offset}}}],"version":1}}"#
        ),
    )
    .expect("write the offsets file");
    let spec_path = spec.to_string_lossy().into_owned();
    let out = kafka_tool(
        "org.apache.kafka.tools.DeleteRecordsCommand",
        &[
            "--bootstrap-server",
            brokers,
            "--offset-json-file",
            &spec_path,
        ],
    );
    let _ = std::fs::remove_file(&spec);
    assert!(
        out.status.success(),
        "DeleteRecords failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
