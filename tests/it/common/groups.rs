//! Scaffolding for the consumer-group tests (`tests/it/kafka_groups.rs`): a topic, a group and a
//! database schema of their own, several instances of the binary with a chosen Kafka client,
//! producing with a chosen codec or inside Kafka transactions, raising a topic's partition count,
//! reading an instance's metrics, and sampling the database while instances run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use service_courier::repository::{CourierRepository, PgRepository};

use super::{create_topic, kafka_brokers, repo_root, unique, wait_until, Service, TestDb};

/// Which Kafka client the spawned binary uses (`KAFKA_CLIENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The `kafka` crate: static partition split, no codecs beyond gzip/snappy.
    Kafka,
    /// librdkafka: consumer-group membership, every codec, read_committed.
    Rdkafka,
}

impl Client {
    /// The client of this test run: `KAFKA_CLIENT` as `scripts/test.sh` sets it per phase
    /// (`Service::start` hands it to the binary), `kafka` when unset (the binary's default).
    pub fn of_run() -> Self {
        match std::env::var("KAFKA_CLIENT").as_deref() {
            Ok("rdkafka") => Client::Rdkafka,
            _ => Client::Kafka,
        }
    }

    /// The value of `KAFKA_CLIENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Client::Kafka => "kafka",
            Client::Rdkafka => "rdkafka",
        }
    }
}

/// Session timeout of the group members: low, so a killed member's partitions move soon; the
/// broker's minimum (group.min.session.timeout.ms) is 6 s.
pub const SESSION_TIMEOUT_MS: &str = "6000";

/// A topic (and its dead-letter topic), a group and a database schema of one test.
pub struct GroupStand {
    /// The test's schema, with couriers hired.
    pub db: TestDb,
    /// KAFKA_BROKERS.
    pub brokers: String,
    /// The order topic.
    pub topic: String,
    /// The dead-letter topic.
    pub dlq: String,
    /// The consumer group every instance joins.
    pub group: String,
}

impl GroupStand {
    /// A fresh topic of `partitions`, its dead-letter topic and `couriers` hired couriers; `None`
    /// when skipping outside CI (see `database_url`).
    /// [`GroupStand::new`] for a scenario of `client`, or `None` when the `kafka` crate is on
    /// Kafka 4.x, where [`kafka_crate_refused`] has asserted its refusal at start instead.
    pub fn for_client(client: Client, partitions: u32, couriers: u32) -> Option<Self> {
        let stand = Self::new(partitions, couriers)?;
        if client == Client::Kafka && kafka_crate_refused(&stand) {
            return None;
        }
        Some(stand)
    }

    pub fn new(partitions: u32, couriers: u32) -> Option<Self> {
        let db = TestDb::new(2)?;
        let brokers = kafka_brokers()?;
        let topic = unique("groups");
        let dlq = format!("{topic}.dlq");
        create_topic(&topic, partitions);
        create_topic(&dlq, 1);
        hire(&db, couriers);
        Some(Self {
            db,
            brokers,
            topic,
            dlq,
            group: unique("group"),
        })
    }

    /// The environment of one instance with `client`, plus `extra` (which wins).
    pub fn env(
        &self,
        client: Client,
        extra: &[(&'static str, String)],
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATABASE_URL", self.db.url.clone()),
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("KAFKA_CLIENT", client.as_str().to_owned()),
            ("KAFKA_ORDER_TOPIC", self.topic.clone()),
            ("KAFKA_DLQ_TOPIC", self.dlq.clone()),
            ("KAFKA_GROUP_ID", self.group.clone()),
            ("KAFKA_COMMIT_INTERVAL_MS", "200".into()),
            ("WORKERS", "2".into()),
            ("LOG_LEVEL", "info".into()),
        ];
        if client == Client::Rdkafka {
            env.push(("KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.into()));
        }
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, v.clone()));
        }
        env
    }

    /// Starts one instance with `client` and `extra` settings.
    pub fn start(&self, client: Client, extra: &[(&'static str, String)]) -> Service {
        if client == Client::Rdkafka {
            require_rdkafka();
        }
        Service::start(&self.env(client, extra))
    }

    /// Per partition: (committed offset, or a negative "none", high watermark).
    pub fn offsets(&self) -> BTreeMap<i32, (i64, i64)> {
        group_offsets(&self.brokers, &self.group, &self.topic)
            .unwrap_or_else(|e| panic!("offsets of {}: {e}", self.topic))
    }

    /// Waits until the group has committed every partition up to its high watermark, while
    /// every service in `alive` keeps running.
    pub fn wait_drained(&self, alive: &mut [&mut Service], limit: Duration) {
        wait_until(limit, "every partition committed to its end", || {
            for s in alive.iter_mut() {
                assert!(s.running(), "an instance died:\n{}", s.log_text());
            }
            self.offsets().values().all(|(c, hw)| (*c).max(0) == *hw)
        });
    }

    /// Every letter on the dead-letter topic, described by [`super::dead_letters`].
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        super::dead_letters(&self.brokers, &self.dlq)
    }
}

/// Per partition of `topic` (as the broker knows it now, added partitions included): the
/// group's committed offset (-1 when none) and the high watermark. Read with librdkafka, which
/// speaks Kafka 3.x and 4.x alike (the `kafka` crate's ListOffsets v0 is gone from Kafka 4).
/// The reader never joins the group: it only asks for the group's offsets.
pub fn group_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    let timeout = Duration::from_secs(15);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = reader
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = reader
        .committed_offsets(list, timeout)
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for p in partitions {
        let (_, high) = reader
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| e.to_string())?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        };
        out.insert(p, (done, high));
    }
    Ok(out)
}

/// Produces raw values, optionally keyed, with librdkafka's producer, on Kafka 3.x and 4.x
/// alike (Kafka 4 refuses the `kafka` crate's Produce v0).
pub fn rdkafka_produce(brokers: &str, topic: &str, values: &[(Option<String>, Vec<u8>)]) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("log_level", "3")
        .create()
        .expect("producer");
    for (key, value) in values {
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(value.as_slice());
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(100));
                    record = back;
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
}

/// Hires `n` couriers in one statement (ids 1..=n).
pub fn hire(db: &TestDb, n: u32) {
    db.client()
        .execute(
            "INSERT INTO couriers (name, phone, status, transport_type)
             SELECT 'c' || g, '+7' || lpad(g::text, 10, '0'), 'available', 'car'
             FROM generate_series(1, $1) g",
            &[&(n as i32)],
        )
        .expect("hire");
}

/// Runs `service-courier run` with only `env` (and PATH) until it exits, at most 30 s (then it is
/// killed): its exit code (`None` when killed) and its log.
pub fn run_briefly(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}.log", unique("probe")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_service-courier"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("METRICS_ADDR", "")
        .env("HTTP_ADDR", "")
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("the binary runs");
    let start = std::time::Instant::now();
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

/// Fails the test unless the binary has the rdkafka client: with it, `KAFKA_PARTITIONS` is a
/// configuration error (exit 2 naming the variable, issue "Modern Kafka"); a binary that ignores
/// `KAFKA_CLIENT` would run the `kafka` crate instead and could pass a group test by accident.
pub fn require_rdkafka() {
    let (code, log) = run_briefly(&[
        ("KAFKA_CLIENT", "rdkafka"),
        ("KAFKA_PARTITIONS", "0"),
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/x"),
    ]);
    assert!(
        code == Some(2) && log.contains("KAFKA_PARTITIONS"),
        "the binary has no rdkafka client: KAFKA_CLIENT=rdkafka with KAFKA_PARTITIONS must exit 2 \
         naming the variable, got {code:?}:\n{log}"
    );
}

/// Runs `scripts/kafka.sh` with `args` (the broker of the test run: KAFKA_STATE_DIR and
/// KAFKA_VERSION come from the environment, as for `create_topic`), `stdin` as its input;
/// returns its stdout, or fails the test with its stderr.
pub fn kafka_sh(args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/kafka.sh"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/kafka.sh runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("scripts/kafka.sh");
    assert!(
        out.status.success(),
        "scripts/kafka.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The major version of the test run's broker, as `scripts/kafka.sh status` reports it (the
/// broker KAFKA_STATE_DIR names, as for `create_topic`).
pub fn broker_major() -> u32 {
    let status = kafka_sh(&["status"], &[], "");
    status
        .split("Kafka ")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no version in scripts/kafka.sh status: {status}"))
}

/// On a broker without the old protocol versions the `kafka` crate speaks (Kafka 4.x dropped
/// Produce v0, Fetch v0-v3 and ListOffsets v0, KIP-896), an instance with that client must
/// refuse to start: exit 3 naming what is missing. Returns whether that is the case here, so a
/// `kafka`-crate scenario runs only where the crate can work.
pub fn kafka_crate_refused(stand: &GroupStand) -> bool {
    if broker_major() < 4 {
        return false;
    }
    let mut service = stand.start(Client::Kafka, &[]);
    let code = service.wait(Duration::from_secs(60));
    let log = service.log_text();
    assert_eq!(code, Some(3), "the kafka crate on Kafka 4.x:\n{log}");
    assert!(log.contains("Fetch v0"), "{log}");
    true
}

/// Raises `topic` to `partitions` partitions (`scripts/kafka.sh partitions`).
pub fn add_partitions(topic: &str, partitions: u32) {
    kafka_sh(&["partitions", topic, &partitions.to_string()], &[], "");
}

/// One step of a transactional script for [`txproduce`].
pub enum Tx<'a> {
    /// A transaction of (partition, payload) records, committed.
    Commit(&'a [(i32, String)]),
    /// A transaction of (partition, payload) records, written to the log, then aborted.
    Abort(&'a [(i32, String)]),
}

/// Runs the transactions in order with `scripts/kafka.sh txproduce` (scripts/kafka/TxProducer.java
/// on the kafka-clients jar); returns its report, one line per transaction.
pub fn txproduce(brokers: &str, topic: &str, txs: &[Tx<'_>]) -> String {
    let mut script = String::new();
    for tx in txs {
        let (records, end) = match tx {
            Tx::Commit(r) => (r, "commit"),
            Tx::Abort(r) => (r, "abort"),
        };
        script.push_str("begin\n");
        for (p, payload) in records.iter() {
            assert!(!payload.contains('\n'), "one payload per line");
            script.push_str(&format!("send {p} {payload}\n"));
        }
        script.push_str(end);
        script.push('\n');
    }
    kafka_sh(
        &["txproduce", topic],
        &[("KAFKA_BROKERS", brokers)],
        &script,
    )
}

/// The sum of every series of `name` on the instance's `/metrics` (0 when absent).
pub fn metric(service: &Service, name: &str) -> f64 {
    metric_where(service, name, "")
}

/// The sum of the series of `name` whose labels contain `label` (e.g. `outcome="duplicate"`).
pub fn metric_where(service: &Service, name: &str, label: &str) -> f64 {
    let (code, body) = service.get("/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == name && series.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// What the sampler saw while instances ran.
#[derive(Debug, Default)]
pub struct Samples {
    /// Snapshots read.
    pub taken: usize,
    /// Snapshots in which some courier held two active orders.
    pub double_assigned: usize,
    /// Broken consistency (`Snapshot::check_consistency`), the first ones.
    pub broken: Vec<String>,
}

/// Sets its flag when dropped: stops a [`sample`] loop however the test's scope ends.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Reads a consistent snapshot of the database every ~150 ms until `stop`, counting couriers
/// with two active orders and inconsistent states.
pub fn sample(repo: &PgRepository, stop: &AtomicBool, taken: &AtomicUsize) -> Samples {
    let mut s = Samples::default();
    while !stop.load(Ordering::SeqCst) {
        if let Ok(snap) = repo.snapshot() {
            s.taken += 1;
            taken.store(s.taken, Ordering::SeqCst);
            let mut active: BTreeMap<_, usize> = BTreeMap::new();
            for d in snap
                .deliveries
                .values()
                .filter(|d| d.completed_at.is_none())
            {
                *active.entry(d.courier).or_default() += 1;
            }
            if active.values().any(|n| *n > 1) {
                s.double_assigned += 1;
            }
            if let Err(e) = snap.check_consistency() {
                if s.broken.len() < 10 {
                    s.broken.push(e);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    s
}
