//! The integration tests, one crate: each module is one subject's scenarios against the real
//! binary, real PostgreSQL and real Kafka (docs/tests.md says which needs what). One crate
//! rather than a binary per file, so `tests/it/common` and the service crate are compiled and
//! linked once. Run one module with `cargo test --test it kafka_service::` (a filter on the
//! module path), or everything with `scripts/test.sh`.

#[macro_use]
mod common;

mod api;
mod api_contract;
mod cli;
mod compose;
mod contract;
mod contract_event_time;
mod dead_letters;
mod deadlines;
mod dlq_replay;
mod env_sample;
mod fair_batches;
mod faults;
mod kafka_edge;
mod kafka_edge_service;
mod kafka_groups;
mod kafka_service;
mod lag;
mod migrations;
mod migrations_restart;
mod observability;
mod ops;
mod page;
mod pg_concurrency;
mod randomized;
mod reliability_db;
mod reliability_kafka;
mod security;
mod stand;
