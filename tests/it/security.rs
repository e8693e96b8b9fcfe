//! Security basics: SQL is always parameterized, hostile order ids are data, and the database
//! password never reaches a log line or an error message.

use crate::common;

use std::time::Duration;

use common::{at, courier, event, oid, Service, TestDb};
use service_courier::domain::{OrderEvent, OrderId, OrderStatus, TransportType};
use service_courier::repository::CourierRepository;
use service_courier::usecase::{couriers, OrderEventProcessor, Outcome};

/// Every Rust file under src/.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source readable");
                out.push((path.display().to_string(), text));
            }
        }
    }
    out
}

#[test]
fn no_sql_is_built_from_strings() {
    const KEYWORDS: [&str; 6] = [
        "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH ", " WHERE ",
    ];
    for (path, text) in sources() {
        // The one exception: each transaction's opener (`BEGIN; SELECT set_config(…)`) is
        // built once from constant setting names and the integer bounds of TransactionLimits,
        // never from data; checked here by the types it is built from.
        let opener = path.ends_with("repository/postgres/session.rs");
        if opener {
            for typed in [
                "pub fn new(limits: TransactionLimits, pooler: Pooler) -> Self",
                "pub statement_ms: u64",
                "pub lock_ms: u64",
                "pub idle_in_transaction_ms: u64",
                "const INDEX_PLANS: &[(&str, &str)]",
                "const WHOLE_TABLE_PLANS: &[(&str, &str)]",
            ] {
                assert!(text.contains(typed), "{path}: {typed}");
            }
        }
        for (n, line) in text.lines().enumerate().filter(|_| !opener) {
            if line.contains("format!(") && KEYWORDS.iter().any(|k| line.to_uppercase().contains(k))
            {
                panic!("{path}:{}: SQL built with format!: {line}", n + 1);
            }
        }
        // Statements are constants and values go in as parameters: no `query(&format!(…))`.
        for call in [
            ".query(&format!",
            ".execute(&format!",
            ".prepare(&format!",
            ".query_one(&format!",
        ] {
            assert!(!text.contains(call), "{path}: {call}");
        }
    }
}

#[test]
fn hostile_order_ids_are_stored_as_data() {
    let Some(db) = TestDb::new(2) else { return };
    couriers::add(&db.repo, &courier(1, TransportType::Car), at(0)).expect("hire");
    let p = OrderEventProcessor::new(db.repo.clone());
    let hostile = [
        "x'); DROP TABLE couriers; --",
        "1 OR 1=1",
        "$1",
        "\\\\'\"; SELECT pg_sleep(10); --",
    ];
    for (i, id) in hostile.iter().enumerate() {
        let e = OrderEvent {
            order_id: OrderId::parse(*id).expect("a valid id"),
            status: OrderStatus::Created,
            created_at: at(10 + i as i64),
        };
        p.apply(&e).expect("applied");
        p.apply(&event(id, "cancelled", 20 + i as i64))
            .expect("cancelled");
    }
    let s = db
        .repo
        .snapshot()
        .expect("snapshot, so the tables are still there");
    for id in hostile {
        assert!(s.orders.contains_key(&oid(id)), "{id} not stored as given");
    }
    assert_eq!(s.couriers.len(), 1);
    assert_eq!(
        p.apply(&event("after", "created", 99))
            .expect("still works"),
        Outcome::Assigned(s.couriers[0].id)
    );
}

#[test]
fn the_database_password_never_reaches_the_logs() {
    // Nothing listens on port 1: the service retries and logs why, naming the host only.
    let secret = "pa55-w0rd-never-logged";
    let mut service = Service::start(&[
        (
            "DATABASE_URL",
            format!("postgres://courier:{secret}@127.0.0.1:1/courier"),
        ),
        ("KAFKA_BROKERS", "127.0.0.1:1".into()),
        ("LOG_LEVEL", "debug".into()),
    ]);
    common::wait_until(Duration::from_secs(60), "a retry line", || {
        service.log_text().contains("retrying in")
    });
    assert_eq!(service.terminate(Duration::from_secs(60)), Some(0));
    let log = service.log_text();
    assert!(log.contains("127.0.0.1:1/courier"), "{log}");
    assert!(!log.contains(secret), "the password leaked:\n{log}");
}
