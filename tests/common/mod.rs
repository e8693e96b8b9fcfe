//! Shared test helpers: a private PostgreSQL schema per test, and event builders.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod groups;

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use service_courier::domain::{NewCourier, OrderEvent, OrderId, OrderStatus, Phone, TransportType};
use service_courier::repository::PgRepository;

/// Whether we run in CI, where a missing service is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// DATABASE_URL, or `None` outside CI (the test then says it skipped). In CI a missing
/// DATABASE_URL fails the test loudly.
pub fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!(
            "DATABASE_URL is not set but CI is: PostgreSQL tests must run in CI (see .ci/run)"
        ),
        _ => {
            eprintln!("SKIPPED: DATABASE_URL is not set; run scripts/postgres.sh start first");
            None
        }
    }
}

/// A PostgreSQL repository in a fresh schema of its own, dropped at the end of the test, so
/// tests run in parallel without seeing each other.
pub struct TestDb {
    /// The repository, migrated.
    pub repo: PgRepository,
    /// The schema's name.
    pub schema: String,
    /// Connection settings pointing at the schema (for extra pools or the binary).
    pub config: postgres::Config,
    /// DATABASE_URL with the schema selected through `options`.
    pub url: String,
    base: postgres::Config,
}

static NEXT_SCHEMA: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A migrated repository with a pool of `pool_size`, or `None` when skipping (see
    /// [`database_url`]).
    pub fn new(pool_size: u32) -> Option<Self> {
        let url = database_url()?;
        let base: postgres::Config = url.parse().expect("DATABASE_URL parses");
        let schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_subsec_micros()
        );
        let mut admin = base
            .connect(postgres::NoTls)
            .expect("PostgreSQL answers at DATABASE_URL");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("create test schema");
        let mut config = base.clone();
        config.options(&format!("-c search_path={schema}"));
        let repo = PgRepository::new(config.clone(), pool_size);
        repo.migrate().expect("schema.sql applies");
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        Some(Self {
            repo,
            schema,
            config,
            url,
            base,
        })
    }

    /// A plain client on the test schema, for assertions in SQL.
    pub fn client(&self) -> postgres::Client {
        self.config.connect(postgres::NoTls).expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = self.base.connect(postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// 2025-08-06T12:00:00Z plus `secs` seconds: test events are stamped from here.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 8, 6, 12, 0, 0)
        .single()
        .expect("valid date")
        + chrono::Duration::seconds(secs)
}

/// An event for order `id` with `status` at `secs`.
pub fn event(id: &str, status: &str, secs: i64) -> OrderEvent {
    OrderEvent {
        order_id: OrderId::parse(id).expect("test order id"),
        status: OrderStatus::parse(status).expect("test status"),
        created_at: at(secs),
    }
}

/// A courier to hire, with a phone derived from `n`.
pub fn courier(n: u32, transport: TransportType) -> NewCourier {
    NewCourier::parse(
        &format!("Courier {n}"),
        Phone::parse(&format!("+7{:010}", n)).expect("test phone"),
        transport,
    )
    .expect("test courier")
}

/// An order id.
pub fn oid(id: &str) -> OrderId {
    OrderId::parse(id).expect("test order id")
}

// ---------------------------------------------------------------- Kafka and the binary ----

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// KAFKA_BROKERS, or `None` outside CI (the test then says it skipped); in CI a missing broker
/// fails the test.
pub fn kafka_brokers() -> Option<String> {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if in_ci() => panic!("KAFKA_BROKERS is not set but CI is: Kafka tests must run in CI"),
        _ => {
            eprintln!("SKIPPED: KAFKA_BROKERS is not set; run scripts/kafka.sh start first");
            None
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique to this test run: topics and groups never collide between tests or runs.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed),
        Utc::now().timestamp_millis() % 100_000_000
    )
}

/// Creates a topic on the local broker with the project's script.
pub fn create_topic(name: &str, partitions: u32) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/kafka.sh"))
        .args(["topic", name, &partitions.to_string()])
        .output()
        .expect("scripts/kafka.sh runs");
    assert!(
        out.status.success(),
        "creating topic {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Produces lines with Debian's kcat, unkeyed (librdkafka spreads them over partitions).
pub fn kcat_produce(brokers: &str, topic: &str, lines: &[String]) {
    let mut child = Command::new("kcat")
        // Sticky partitioning off: each unkeyed message picks a random partition, as sarama does.
        .args(["-P", "-b", brokers, "-t", topic])
        .args([
            "-X",
            "queue.buffering.max.ms=5",
            "-X",
            "sticky.partitioning.linger.ms=0",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat runs (scripts/deps.sh installs it)");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to kcat");
        }
    }
    assert!(child.wait().expect("kcat").success(), "kcat -P failed");
}

/// Produces raw values with the `kafka` crate's producer, optionally keyed and to one partition.
pub fn crate_produce(brokers: &str, topic: &str, values: &[(Option<String>, Vec<u8>)]) {
    use kafka::producer::{Producer, Record, RequiredAcks};
    let mut p = Producer::from_hosts(brokers.split(',').map(str::to_owned).collect())
        .with_ack_timeout(Duration::from_secs(5))
        .with_required_acks(RequiredAcks::All)
        .create()
        .expect("producer");
    for chunk in values.chunks(500) {
        let records: Vec<Record<'_, &[u8], &[u8]>> = chunk
            .iter()
            .map(|(k, v)| Record {
                key: k.as_deref().map_or(&[][..], str::as_bytes),
                value: v.as_slice(),
                topic,
                partition: -1,
            })
            .collect();
        p.send_all(&records).expect("produce");
    }
}

/// Every message value on a topic, read with kcat from the beginning.
pub fn kcat_consume_all(brokers: &str, topic: &str) -> Vec<String> {
    kcat_consume_positions(brokers, topic)
        .into_iter()
        .map(|(_, _, v)| v)
        .collect()
}

/// Every message on a topic as (partition, offset, value), read with kcat.
pub fn kcat_consume_positions(brokers: &str, topic: &str) -> Vec<(i32, i64, String)> {
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%p %o %s\n"])
        .output()
        .expect("kcat runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let p = parts.next()?.parse().ok()?;
            let o = parts.next()?.parse().ok()?;
            Some((p, o, parts.next()?.to_owned()))
        })
        .collect()
}

/// Per partition: (group's committed offset or -1, high watermark).
pub fn offsets(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    use kafka::client::{FetchOffset, GroupOffsetStorage, KafkaClient};
    let mut c = KafkaClient::new(brokers.split(',').map(str::to_owned).collect());
    c.set_group_offset_storage(Some(GroupOffsetStorage::Kafka));
    c.load_metadata_all().expect("metadata");
    let latest = c
        .fetch_topic_offsets(topic, FetchOffset::Latest)
        .expect("latest offsets");
    let committed = c
        .fetch_group_topic_offset(group, topic)
        .expect("group offsets");
    latest
        .iter()
        .map(|l| {
            let done = committed
                .iter()
                .find(|c| c.partition == l.partition)
                .map_or(-1, |c| c.offset);
            (l.partition, (done, l.offset))
        })
        .collect()
}

use std::collections::BTreeMap;

/// Waits up to `limit` for `cond`, polling every 100 ms.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The service binary running as a child process, its log in a file.
pub struct Service {
    pub child: Child,
    pub log: PathBuf,
}

impl Service {
    /// Starts `service-courier run` with `env` (nothing inherited but PATH and KAFKA_CLIENT).
    pub fn start(env: &[(&str, String)]) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("{}.log", unique("service")));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_service-courier"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(file);
        // Several services run at once in tests: each takes a free port for its endpoint.
        cmd.env("METRICS_ADDR", "127.0.0.1:0");
        // The Kafka client under test (`KAFKA_CLIENT=rdkafka scripts/test.sh ...`) reaches
        // every service; a test's own `env` still wins.
        if let Ok(client) = std::env::var("KAFKA_CLIENT") {
            cmd.env("KAFKA_CLIENT", client);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("service starts"),
            log,
        }
    }

    /// Where its /metrics, /healthz and /readyz listen (from its log), once it is up.
    pub fn http_addr(&self) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(30), "the http endpoint", || {
            found = self
                .log_text()
                .lines()
                .find_map(|l| l.split("on http://").nth(1).map(|a| a.trim().to_owned()));
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// GET `path` from its endpoint: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_addr(), path)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(limit)
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "service did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("endpoint reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
