//! The local stand, as a newcomer uses it: `scripts/stand.sh up` brings PostgreSQL, Kafka, the
//! service and the simulator up; N simulated orders end up in the database with couriers
//! assigned and freed; `down` leaves nothing running.

mod common;

use std::process::Command;
use std::time::Duration;

use common::scripts::env_file;
use common::{repo_root, wait_until};

fn stand(dir: &std::path::Path, action: &str, orders: u32) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/stand.sh"))
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
        .output()
        .expect("stand.sh runs")
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

#[test]
fn stand_up_simulated_orders_down() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(common::unique("stand"));
    std::fs::create_dir_all(&dir).expect("stand dir");
    let orders = 300;
    let up = stand(&dir, "up", orders);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    if !up.status.success() {
        let _ = stand(&dir, "down", orders);
        panic!("stand.sh up failed:\n{out}");
    }
    assert!(out.contains("The stand is up."), "{out}");
    let pids: Vec<String> = ["service.pid", "simulator.pid"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect();
    let kafka_pid = std::fs::read_to_string(dir.join("kafka/kafka.pid")).unwrap_or_default();

    let url = env_file(&dir, "DATABASE_URL");
    let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("stand database");
    let count = |db: &mut postgres::Client, sql: &str| -> i64 {
        db.query_one(sql, &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
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
    }));

    let down = stand(&dir, "down", orders);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    if let Err(panic) = result {
        let log = std::fs::read_to_string(dir.join("service.log")).unwrap_or_default();
        eprintln!("service log:\n{log}");
        std::panic::resume_unwind(panic);
    }
    // Nothing left running.
    for pid in pids
        .iter()
        .chain(std::iter::once(&kafka_pid))
        .filter(|p| !p.trim().is_empty())
    {
        assert!(!alive(pid), "pid {pid} still running after down");
    }
    assert!(
        postgres::Client::connect(&url, postgres::NoTls).is_err(),
        "PostgreSQL still up"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
