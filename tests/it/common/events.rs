//! Events, couriers and names for tests: stamped from a fixed instant, never the wall clock, so
//! a model fed the same events writes exactly the same times.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use service_courier::domain::{NewCourier, OrderEvent, OrderId, OrderStatus, Phone, TransportType};

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

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test run: schemas, topics and groups never collide between tests or
/// runs.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        Utc::now().timestamp_millis() % 100_000_000
    )
}
