//! Dead letters you can act on, and logs you can read, against the real binary, a real Kafka 3.9
//! broker and real PostgreSQL: a `processing_failed` letter carries the original payload; dead
//! letters are logged once per reason and then summarised; a `created_at` far in the future is
//! dead-lettered as `invalid_created_at`; `LOG_LEVEL=debug` shows our lines, not the SQL of the
//! `postgres` crate.

use crate::common;

use std::time::Duration;

use common::*;
use service_courier::domain::TransportType;
use service_courier::repository::{CourierRepository, OrderState};

/// One partition, its dead-letter topic, `couriers_n` couriers on cars; 2 workers.
struct Stand(ServiceStand);

impl std::ops::Deref for Stand {
    type Target = ServiceStand;
    fn deref(&self) -> &ServiceStand {
        &self.0
    }
}

impl Stand {
    fn new(couriers_n: u32) -> Option<Self> {
        let stand = ServiceStand::new("dl", 1, true)?;
        stand.hire(couriers_n, |_| TransportType::Car);
        Some(Self(stand))
    }

    fn start(&self, log_level: &str) -> Service {
        Service::start(&self.0.env(2, &[("LOG_LEVEL", log_level)]))
    }

    fn wait_drained(&self, service: &mut Service) {
        self.0.wait_drained(service, Duration::from_secs(90));
    }

    fn letters(&self) -> Vec<serde_json::Value> {
        dead_letters(&self.brokers, &self.dlq)
    }
}

#[test]
fn processing_failed_letters_carry_the_original_payload() {
    let Some(stand) = Stand::new(3) else {
        return;
    };
    // A schema rule the service does not know: its transaction for this order fails for good.
    stand
        .db
        .client()
        .batch_execute("ALTER TABLE orders ADD CONSTRAINT test_poison CHECK (order_id <> 'poison')")
        .expect("add the poison rule");
    let original = r#"{"order_id":"poison","status":"created","created_at":"2025-08-06T12:00:00Z","note":"kept as sent"}"#;
    let lines = vec![
        event("fine-1", "created", 1).to_json(),
        original.to_owned(),
        event("fine-2", "created", 2).to_json(),
    ];
    kcat_produce(&stand.brokers, &stand.topic, &lines);
    let mut service = stand.start("info");
    stand.wait_drained(&mut service);
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));

    let letters = stand.letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["reason"], "processing_failed");
    assert_eq!(letter["value"], original, "the value as it was sent");
    assert_eq!(letter["key"], serde_json::Value::Null, "sent without a key");
    assert_eq!(letter["source"]["topic"], stand.topic.as_str());
    assert_eq!(letter["source"]["offset"], 1);
    assert!(
        letter["detail"]
            .as_str()
            .is_some_and(|d| d.contains("test_poison")),
        "{letter}"
    );
    let time = letter["time"].as_str().expect("dlq.time");
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    let snap = stand.db.repo.snapshot().expect("snapshot");
    assert_eq!(snap.deliveries.len(), 2, "the other orders were applied");
}

#[test]
fn dead_letters_are_logged_once_per_reason_then_summarised() {
    let Some(stand) = Stand::new(2) else {
        return;
    };
    const BAD: usize = 150;
    let mut lines: Vec<String> = (0..BAD).map(|i| format!("{{\"order_id\":{i}")).collect();
    lines.extend((0..BAD).map(|i| {
        format!(r#"{{"order_id":"{i}","status":"shipped","created_at":"2025-08-06T12:00:00Z"}}"#)
    }));
    // Far in the future: dead-lettered with its own reason, the courier left alone.
    lines.push(
        r#"{"order_id":"future","status":"created","created_at":"2125-08-06T12:00:00Z"}"#.into(),
    );
    // A padded id and the plain one are one order.
    lines.push(
        r#"{"order_id":" padded ","status":"created","created_at":"2025-08-06T12:00:00Z"}"#.into(),
    );
    lines.push(event("padded", "delivered", 5).to_json());
    kcat_produce(&stand.brokers, &stand.topic, &lines);
    let mut service = stand.start("info");
    stand.wait_drained(&mut service);
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));

    let letters = stand.letters();
    let count = |reason: &str| letters.iter().filter(|l| l["reason"] == reason).count();
    assert_eq!(count("invalid_json"), BAD);
    assert_eq!(count("unsupported_status"), BAD);
    assert_eq!(count("invalid_created_at"), 1);
    assert_eq!(letters.len(), 2 * BAD + 1);

    let log = service.log_text();
    let lines_with = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    // One line each for the first of a reason; the rest in one summary (logged at stop here,
    // since the test does not wait for the minute to pass).
    let first_lines = log
        .lines()
        .filter(|l| l.contains("bad event at") && !l.contains("more dead letters"))
        .count();
    assert_eq!(first_lines, 3, "{log}");
    assert_eq!(
        lines_with(&format!("{} more dead letters (invalid_json)", BAD - 1)),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&format!(
            "{} more dead letters (unsupported_status)",
            BAD - 1
        )),
        1,
        "{log}"
    );

    let snap = stand.db.repo.snapshot().expect("snapshot");
    assert!(!snap.orders.contains_key(&oid("future")));
    assert!(matches!(
        snap.orders.get(&oid("padded")),
        Some(OrderState::Completed(Some(_)))
    ));
    assert_eq!(snap.orders.len(), 1, "{:?}", snap.orders);
    assert!(snap.couriers.iter().all(|c| c.active_order.is_none()));
}

#[test]
fn log_level_debug_shows_our_lines_not_the_sql_of_other_crates() {
    let Some(stand) = Stand::new(1) else {
        return;
    };
    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[event("dbg-1", "created", 1).to_json()],
    );
    let mut service = stand.start("debug");
    stand.wait_drained(&mut service);
    assert_eq!(service.terminate(Duration::from_secs(30)), Some(0));
    let log = service.log_text();
    // Our per-event debug line is there.
    assert!(
        log.lines()
            .any(|l| l.contains("[DEBUG]") && l.contains("order dbg-1 at")),
        "{log}"
    );
    // tokio_postgres logs every statement at debug ("preparing query", "executing statement",
    // "executing simple query"); none of it shows below trace.
    for sql_line in [
        "preparing query",
        "executing statement",
        "executing simple query",
    ] {
        assert!(!log.contains(sql_line), "{sql_line:?} in the log:\n{log}");
    }
    assert!(
        !log.lines()
            .any(|l| l.contains("[DEBUG]") && l.contains("SELECT")),
        "{log}"
    );
}
