//! What the integration tests share, so that each test reads as its scenario:
//!
//! - [`database`]: a private PostgreSQL schema per test ([`TestDb`]), or a PostgreSQL server of
//!   the test's own that it may crash ([`database::OwnPostgres`]);
//! - [`broker`]: the shared Kafka broker's address and topics, or a broker of the test's own
//!   that it may stop, restart or freeze ([`broker::OwnBroker`]); [`Stack`] is both of its own;
//! - [`kafka`]: producing, reading back, and the group's committed offsets ([`offsets`]);
//! - [`service`]: the `service-courier` binary as a child process ([`Service`]), across
//!   restarts ([`Instance`]), and its HTTP endpoint;
//! - [`wait`]: waiting for a condition with a generous deadline, never for a fixed time;
//! - [`events`]: events, couriers and names for tests.
//!
//! In CI (`CI=true`, as `scripts/test.sh` sets it) a test that needs a missing service fails; it
//! never skips. Outside CI it prints `SKIPPED` and passes.

/// The repository contract's runner: one `#[test]` per rule (a function taking a repository)
/// against the in-memory fake, PostgreSQL (a schema of its own) and PostgreSQL behind PgBouncer
/// in transaction mode (`DB_POOLER=transaction`, see [`pgbouncer`]). Used by the test files
/// that declare `#[macro_use] mod common;`.
macro_rules! contract {
    ($($rule:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $rule() {
                super::$rule(service_courier::repository::MemoryRepository::new());
            })*
        }
        mod postgres {
            $(#[test] fn $rule() {
                if let Some(db) = super::common::TestDb::new(2) {
                    super::$rule(db.repo.clone());
                }
            })*
        }
        /// Through PgBouncer in transaction mode.
        mod pgbouncer {
            $(#[test] fn $rule() {
                if let Some(db) = super::common::pgbouncer::PooledDb::new() {
                    super::$rule(db.repo.clone());
                }
            })*
        }
    };
}

/// One scenario as two tests, one per client: `per_client!(scenario: kafka_test, rdkafka_test)`
/// calls `scenario(Client::Kafka)` and `scenario(Client::Rdkafka)`.
macro_rules! per_client {
    ($scenario:ident: $kafka:ident, $rdkafka:ident) => {
        #[test]
        fn $kafka() {
            $scenario($crate::common::Client::Kafka);
        }

        #[test]
        fn $rdkafka() {
            $scenario($crate::common::Client::Rdkafka);
        }
    };
}

pub mod api;
pub mod broker;
pub mod database;
pub mod events;
pub mod groups;
pub mod kafka;
pub mod kafka_edge;
pub mod pgbouncer;
pub mod private_pg;
pub mod scripts;
pub mod service;
pub mod stand;
pub mod wait;

pub use broker::{create_topic, create_topic_with, kafka_brokers, PrivateBroker, Stack};
pub use database::{database_url, PrivateDatabase, TestDb};
pub use events::{at, courier, event, oid, repo_root, unique};
pub use groups::{rdkafka_produce, Client};
pub use kafka::{
    backlog, dead_letters, drained, kcat_consume_all, kcat_consume_isolated, kcat_consume_keys,
    kcat_consume_positions, kcat_produce, kcat_produce_codec, kcat_produce_keyed, kcat_produce_to,
    offsets, produce_to, wait_drained,
};
pub use service::{http_get, Instance, Service};
pub use stand::{completed_deliveries, ServiceStand};
pub use wait::{wait_for, wait_until};

/// Whether we run in CI, where a missing service is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}
