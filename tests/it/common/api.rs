//! Scaffolding for the HTTP API's tests: the real binary against real PostgreSQL and Kafka, its
//! API on a free port, a plain HTTP client, and `simulate` traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use service_courier::repository::CourierRepository;

use super::{create_topic, kafka_brokers, unique, wait_until, Service, TestDb};

/// A running service with its own database schema and topics.
pub struct ApiStand {
    /// The service process.
    pub service: Service,
    /// Its database schema (dropped at the end).
    pub db: TestDb,
    /// Kafka brokers.
    pub brokers: String,
    /// Its order topic.
    pub topic: String,
    /// Where the API listens (host:port).
    pub addr: String,
}

impl ApiStand {
    /// Starts the service on a fresh schema and fresh topics (`partitions` of them), with
    /// `extra` settings; `None` when skipping outside CI.
    pub fn start(partitions: u32, extra: &[(&str, String)]) -> Option<Self> {
        let db = TestDb::new(2)?;
        let brokers = kafka_brokers()?;
        let topic = unique("api");
        create_topic(&topic, partitions);
        create_topic(&format!("{topic}.dlq"), 1);
        let mut env = vec![
            ("DATABASE_URL", db.url.clone()),
            ("KAFKA_BROKERS", brokers.clone()),
            ("KAFKA_ORDER_TOPIC", topic.clone()),
            ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
            ("KAFKA_GROUP_ID", unique("group")),
            ("KAFKA_COMMIT_INTERVAL_MS", "200".into()),
            ("HTTP_ADDR", "127.0.0.1:0".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let service = Service::start(&env);
        let addr = api_addr(&service);
        Some(Self {
            service,
            db,
            brokers,
            topic,
            addr,
        })
    }

    /// Sends a request: (status code, body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        call(&self.addr, method, path, &[], body.map(str::as_bytes))
    }

    /// GET `path` and parse its JSON body, expecting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.call("GET", path, None);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Runs `service-courier simulate` against its topic in the background.
    /// With the run's KAFKA_CLIENT, as the service has (on Kafka 4 only `rdkafka` produces).
    pub fn simulate(&self, orders: usize, rate: f64, seed: u64) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_service-courier"));
        cmd.args(["simulate", "--orders", &orders.to_string()])
            .args(["--rate", &rate.to_string(), "--seed", &seed.to_string()])
            .args(["--concurrency", "20"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_ORDER_TOPIC", &self.topic);
        if let Ok(client) = std::env::var("KAFKA_CLIENT") {
            cmd.env("KAFKA_CLIENT", client);
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("simulate starts")
    }

    /// Waits until every simulated order has ended (no order assigned or waiting).
    pub fn wait_all_ended(&self, orders: usize, limit: Duration) {
        wait_until(limit, "every simulated order to end", || {
            let snap = match self.db.repo.snapshot() {
                Ok(s) => s,
                Err(_) => return false,
            };
            snap.orders.len() >= orders
                && snap.orders.values().all(|s| s.is_terminal())
                && snap.waiting.is_empty()
        });
    }
}

/// The API's address, from the service's log line.
pub fn api_addr(service: &Service) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(30), "the API to listen", || {
        found = service.log_text().lines().find_map(|l| {
            l.split("operator's page at http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .map(str::to_owned)
        });
        found.is_some()
    });
    found.unwrap_or_default()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): (status code, body).
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let (code, _, body) = call_with_head(addr, method, path, headers, body);
    (code, body)
}

/// Like [`call`], with the response's head too: (status code, head, body). Header names in the
/// head keep the server's spelling; use [`header`] to read one.
pub fn call_with_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("API reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    if let Some(b) = body {
        // A peer that refuses a large body may close early: that is an answer too.
        let _ = stream.write_all(b);
    }
    read_response_with_head(&mut stream)
}

/// The value of header `name` (case-insensitive) in a response head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Reads a whole response until the server closes: (status code, body).
pub fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let (code, _, body) = read_response_with_head(stream);
    (code, body)
}

/// Reads a whole response until the server closes: (status code, head, body).
pub fn read_response_with_head(stream: &mut TcpStream) -> (u16, String, String) {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or((text.clone(), String::new()));
    (code, head, body)
}
