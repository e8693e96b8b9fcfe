//! Honest health against the real binary, a real Kafka broker and a PostgreSQL of the test's own,
//! frozen (SIGSTOP) and then stopped: `/readyz` says "database unreachable" within 10 s and is
//! 200 again within 10 s of the database's return; `/healthz` and `/metrics` answer from memory
//! meanwhile, however many slow clients hold connections.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::private_pg::PrivatePg;
use common::*;
use service_courier::domain::TransportType;
use service_courier::repository::PgRepository;
use service_courier::usecase::couriers;

/// The target for `/readyz` to follow the database, both ways.
const READINESS_TARGET: Duration = Duration::from_secs(10);

/// A bound for a probe's answer that a busy machine keeps, and that an endpoint waiting on the
/// frozen database (a 5 s pool checkout, at least) cannot.
const PROBE_BOUND: Duration = Duration::from_secs(2);

/// GET `path` and how long the answer took.
fn timed_get(addr: &str, path: &str) -> ((u16, String), Duration) {
    let start = Instant::now();
    let answer = http_get(addr, path);
    (answer, start.elapsed())
}

/// Polls `/readyz` until `want(status, body)`; how long that took. Waits up to a generous
/// minute; the caller checks the figure against the target.
fn readyz_until(addr: &str, what: &str, want: impl Fn(u16, &str) -> bool) -> Duration {
    let start = Instant::now();
    wait_until(Duration::from_secs(60), what, || {
        let (code, body) = http_get(addr, "/readyz");
        want(code, &body)
    });
    start.elapsed()
}

fn unreachable(code: u16, body: &str) -> bool {
    code == 503 && body.contains("database unreachable")
}

/// Connections that send half a request head and then nothing, held open.
fn slow_clients(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("endpoint reachable");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc")
                .expect("half a request");
            s
        })
        .collect()
}

#[test]
fn readyz_follows_a_frozen_then_stopped_postgres_and_probes_never_wait_on_it() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("ready");
    create_topic(&topic, 1);
    create_topic(&format!("{topic}.dlq"), 1);
    let pg = PrivatePg::start("ready-pg");
    let repo = PgRepository::new(pg.url.parse().expect("url"), 1);
    repo.migrate().expect("schema applies");
    for i in 0..3 {
        couriers::add(&repo, &courier(i, TransportType::Car), at(0)).expect("hire");
    }
    drop(repo);
    let env = vec![
        ("DATABASE_URL", pg.url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_GROUP_ID", unique("ready-group")),
        ("LOG_LEVEL", "info".into()),
    ];
    let mut service = Service::start(&env);
    let addr = service.http_addr();
    readyz_until(&addr, "/readyz 200 at start", |code, _| code == 200);
    wait_until(Duration::from_secs(30), "sampled fleet gauges", || {
        http_get(&addr, "/metrics")
            .1
            .contains("courier_couriers{status=\"available\"} 3")
    });

    // Frozen: the kernel still accepts and acknowledges, nothing answers.
    let frozen = pg.freeze();
    let frozen_at = Instant::now();
    let held = slow_clients(&addr, 4);
    // A scrape sent first, its answer read after the probe's: the probe must not queue behind
    // it (before sampling, /metrics read the database inline, on the probes' only thread).
    let scrape_sent = Instant::now();
    let mut scrape = TcpStream::connect(&addr).expect("endpoint reachable");
    scrape
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    scrape
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("scrape request");
    let ((code, body), healthz) = timed_get(&addr, "/healthz");
    eprintln!(
        "frozen PostgreSQL, a scrape sent and 4 slow clients: /healthz {code} in {healthz:?}"
    );
    assert_eq!(
        code, 200,
        "liveness does not depend on the database: {body}"
    );
    assert!(healthz < PROBE_BOUND, "/healthz took {healthz:?}");
    let mut answer = String::new();
    scrape
        .read_to_string(&mut answer)
        .expect("the scrape is answered");
    let scraped = scrape_sent.elapsed();
    eprintln!("frozen PostgreSQL: /metrics answered in {scraped:?}");
    assert_eq!(answer.split_whitespace().nth(1), Some("200"), "{answer}");
    assert!(scraped < PROBE_BOUND, "/metrics took {scraped:?}");
    readyz_until(
        &addr,
        "/readyz 503 database unreachable (frozen)",
        unreachable,
    );
    let noticed = frozen_at.elapsed();
    let (_, body) = http_get(&addr, "/readyz");
    eprintln!(
        "frozen PostgreSQL: /readyz 503 after {noticed:?}: {}",
        body.trim()
    );
    // Still live, and the probes still quick, while the database stays frozen.
    let ((code, _), healthz) = timed_get(&addr, "/healthz");
    assert_eq!(code, 200);
    assert!(healthz < PROBE_BOUND, "/healthz took {healthz:?}");
    drop(held);

    pg.thaw(&frozen);
    let back = readyz_until(&addr, "/readyz 200 after the thaw", |code, _| code == 200);
    eprintln!("thawed PostgreSQL: /readyz 200 after {back:?}");
    assert!(noticed < READINESS_TARGET, "503 only after {noticed:?}");
    assert!(back < READINESS_TARGET, "200 only after {back:?}");

    // Stopped: connections refused.
    pg.crash();
    let gone = readyz_until(
        &addr,
        "/readyz 503 database unreachable (stopped)",
        unreachable,
    );
    let (_, body) = http_get(&addr, "/readyz");
    eprintln!(
        "stopped PostgreSQL: /readyz 503 after {gone:?}: {}",
        body.trim()
    );
    let ((code, _), healthz) = timed_get(&addr, "/healthz");
    assert_eq!(code, 200, "liveness does not depend on the database");
    assert!(healthz < PROBE_BOUND, "/healthz took {healthz:?}");
    pg.start_again();
    let back_again = readyz_until(&addr, "/readyz 200 after the restart", |code, _| {
        code == 200
    });
    eprintln!("restarted PostgreSQL: /readyz 200 after {back_again:?}");
    assert!(gone < READINESS_TARGET, "503 only after {gone:?}");
    assert!(
        back_again < READINESS_TARGET,
        "200 only after {back_again:?}"
    );
    wait_until(
        Duration::from_secs(30),
        "fleet gauges sampled again",
        || {
            http_get(&addr, "/metrics")
                .1
                .contains("courier_couriers{status=\"available\"} 3")
        },
    );
    assert!(service.running(), "{}", service.log_text());
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
}
