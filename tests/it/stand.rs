//! The local stand, as a newcomer uses it: `scripts/stand.sh up` brings PostgreSQL, Kafka, the
//! service and the simulator up; N simulated orders end up in the database with couriers
//! assigned and freed; `restart` replaces the service alone, with the caller's environment;
//! `down` leaves nothing running; `reset` wipes the stand's state, so the next `up` starts
//! empty, and leaves a state dir outside STAND_DIR alone.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::scripts::env_file;
use common::{http_get, kcat_consume_all, repo_root, wait_until};

/// A token for `restart` to pass on (API_TOKEN wants 16+ printable characters).
const TOKEN: &str = "stand-restart-token-0123456789";

fn stand(dir: &Path, action: &str, orders: u32) -> Output {
    stand_with(dir, action, orders, &[])
}

/// `scripts/stand.sh ACTION` on the stand in `dir`, with `extra` in its environment.
fn stand_with(dir: &Path, action: &str, orders: u32, extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/stand.sh"))
        .arg(action)
        .env("STAND_DIR", dir)
        .env("PG_STATE_DIR", dir.join("postgres"))
        .env("KAFKA_STATE_DIR", dir.join("kafka"))
        .env("STAND_BIN", env!("CARGO_BIN_EXE_service-courier"))
        .env("STAND_ORDERS", orders.to_string())
        .env("STAND_RATE", "burst")
        .env("STAND_COURIERS", "15")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .env_remove("API_TOKEN");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("stand.sh runs")
}

/// stdout and stderr of a run.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The HTTP API's address from the summary `up` and `restart` print.
fn api_addr(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_once("HTTP API: http://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(addr, _)| addr.to_owned())
        .unwrap_or_else(|| panic!("no HTTP API address in:\n{stdout}"))
}

/// `/about`'s `token_required`.
fn token_required(addr: &str) -> bool {
    let (code, body) = http_get(addr, "/about");
    assert_eq!(code, 200, "{body}");
    let about: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/about: {e}: {body}"));
    about["token_required"]
        .as_bool()
        .unwrap_or_else(|| panic!("/about: {body}"))
}

/// A pid file's pid ("" when there is none).
fn pid_in(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The stand's PostgreSQL postmaster pid (scripts/postgres.sh names its cluster dir).
fn postgres_pid(dir: &Path) -> String {
    let cluster = std::fs::read_to_string(dir.join("postgres/cluster_dir")).expect("cluster_dir");
    pid_in(&Path::new(cluster.trim()).join("data/postmaster.pid"))
}

/// Whether a process runs (a zombie waiting for its reaper does not count).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The cluster id the stand's Kafka data dir was formatted with.
fn kafka_cluster_id(dir: &Path) -> String {
    let meta = std::fs::read_to_string(dir.join("kafka/data/meta.properties"))
        .expect("Kafka's meta.properties");
    meta.lines()
        .find_map(|l| l.strip_prefix("cluster.id="))
        .expect("a cluster.id")
        .to_owned()
}

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

#[test]
fn stand_up_simulated_orders_restart_down_reset_up_empty() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(common::unique("stand"));
    std::fs::create_dir_all(&dir).expect("stand dir");
    let orders = 300;
    let up = stand(&dir, "up", orders);
    let out = text(&up);
    if !up.status.success() {
        let _ = stand(&dir, "down", orders);
        panic!("stand.sh up failed:\n{out}");
    }
    assert!(out.contains("The stand is up."), "{out}");
    let url = env_file(&dir, "DATABASE_URL");
    let brokers = env_file(&dir, "KAFKA_BROKERS");
    let mut pids: Vec<String> = Vec::new();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("stand database");
        // Every simulated order reaches the database and ends (its last event is terminal).
        wait_until(
            Duration::from_secs(120),
            "all simulated orders ended",
            || {
                count(
                    &mut db,
                    "SELECT count(*) FROM orders WHERE state IN ('completed', 'cancelled')",
                ) == i64::from(orders)
            },
        );
        assert_eq!(count(&mut db, "SELECT count(*) FROM couriers"), 15);
        // Couriers were assigned and freed: deliveries counted, nobody still busy.
        assert!(
            count(
                &mut db,
                "SELECT coalesce(sum(completed_deliveries), 0)::bigint FROM couriers"
            ) > 0
        );
        wait_until(Duration::from_secs(60), "every courier free", || {
            count(
                &mut db,
                "SELECT count(*) FROM couriers WHERE status <> 'available'",
            ) == 0
        });

        // restart: a new service process with the caller's API_TOKEN; PostgreSQL, Kafka and the
        // simulator stay the same processes.
        assert!(!token_required(&api_addr(&up)), "up ran without API_TOKEN");
        let service = pid_in(&dir.join("service.pid"));
        let simulator = pid_in(&dir.join("simulator.pid"));
        let pg = postgres_pid(&dir);
        let kafka = pid_in(&dir.join("kafka/kafka.pid"));
        assert!(alive(&service) && alive(&pg) && alive(&kafka));
        pids.extend([service.clone(), simulator.clone()]);
        let restart = stand_with(&dir, "restart", orders, &[("API_TOKEN", TOKEN)]);
        assert!(restart.status.success(), "restart:\n{}", text(&restart));
        let restarted = pid_in(&dir.join("service.pid"));
        pids.push(restarted.clone());
        assert_ne!(restarted, service, "restart kept the service's pid");
        assert!(!alive(&service), "the old service {service} still runs");
        assert!(
            alive(&restarted),
            "the new service {restarted} does not run"
        );
        assert_eq!(postgres_pid(&dir), pg, "restart touched PostgreSQL");
        assert!(alive(&pg));
        assert_eq!(
            pid_in(&dir.join("kafka/kafka.pid")),
            kafka,
            "restart touched Kafka"
        );
        assert!(alive(&kafka));
        assert_eq!(
            pid_in(&dir.join("simulator.pid")),
            simulator,
            "restart touched the simulator"
        );
        let api = api_addr(&restart);
        assert!(
            token_required(&api),
            "API_TOKEN did not reach the restarted service"
        );
        // The restarted service works on the same database.
        assert_eq!(
            count(&mut db, "SELECT count(*) FROM orders"),
            i64::from(orders)
        );
        pids.extend([pg, kafka]);
    }));

    let down = stand(&dir, "down", orders);
    assert!(down.status.success(), "{}", text(&down));
    if let Err(panic) = result {
        let log = std::fs::read_to_string(dir.join("service.log")).unwrap_or_default();
        eprintln!("service log:\n{log}");
        std::panic::resume_unwind(panic);
    }
    // Nothing left running.
    for pid in pids.iter().filter(|p| !p.is_empty()) {
        assert!(!alive(pid), "pid {pid} still running after down");
    }
    assert!(
        postgres::Client::connect(&url, postgres::NoTls).is_err(),
        "PostgreSQL still up"
    );

    // reset wipes the stand's own state dirs; the next `up` has an empty database (couriers
    // seeded anew, no orders) and empty topics.
    let cluster = kafka_cluster_id(&dir);
    let reset = stand(&dir, "reset", orders);
    assert!(reset.status.success(), "reset:\n{}", text(&reset));
    for state in ["postgres", "kafka", "env", "service.log"] {
        assert!(!dir.join(state).exists(), "{state} survived reset");
    }
    let again = stand(&dir, "up", 0);
    if !again.status.success() {
        let _ = stand(&dir, "reset", 0);
        panic!("stand.sh up after reset failed:\n{}", text(&again));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let url = env_file(&dir, "DATABASE_URL");
        let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("stand database");
        assert_eq!(count(&mut db, "SELECT count(*) FROM orders"), 0);
        assert_eq!(count(&mut db, "SELECT count(*) FROM couriers"), 15);
        // A new Kafka cluster (its data formatted anew), whose order topic holds nothing.
        assert_ne!(
            kafka_cluster_id(&dir),
            cluster,
            "Kafka's data survived reset"
        );
        let brokers_again = env_file(&dir, "KAFKA_BROKERS");
        let events = kcat_consume_all(&brokers_again, "order.status.changed");
        assert!(
            events.is_empty(),
            "{} events survived reset (brokers {brokers} then {brokers_again})",
            events.len()
        );
    }));
    // reset of a running stand stops it too.
    let service = pid_in(&dir.join("service.pid"));
    let kafka = pid_in(&dir.join("kafka/kafka.pid"));
    let reset = stand(&dir, "reset", 0);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(reset.status.success(), "reset:\n{}", text(&reset));
    assert!(!alive(&service) && !alive(&kafka), "{}", text(&reset));
    assert!(!dir.join("postgres").exists() && !dir.join("kafka").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PG_STATE_DIR or KAFKA_STATE_DIR outside STAND_DIR is not the stand's to wipe: reset
/// leaves it, and fails saying so.
#[test]
fn reset_leaves_state_outside_the_stand_dir_alone() {
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(common::unique("reset"));
    let dir = root.join("stand");
    let pg = root.join("elsewhere-postgres");
    let kafka = root.join("elsewhere-kafka");
    for d in [&dir, &pg, &kafka] {
        std::fs::create_dir_all(d).expect("dir");
        std::fs::write(d.join("keep"), "data").expect("marker");
    }
    let pg_dir = pg.display().to_string();
    let kafka_dir = kafka.display().to_string();
    let reset = stand_with(
        &dir,
        "reset",
        0,
        &[("PG_STATE_DIR", &pg_dir), ("KAFKA_STATE_DIR", &kafka_dir)],
    );
    let out = text(&reset);
    assert!(!reset.status.success(), "{out}");
    assert!(out.contains("left alone"), "{out}");
    assert!(
        pg.join("keep").exists() && kafka.join("keep").exists(),
        "{out}"
    );
    // The stand's own dir itself stays; only named state dirs inside it go.
    assert!(dir.join("keep").exists(), "{out}");
    let _ = std::fs::remove_dir_all(&root);
}
