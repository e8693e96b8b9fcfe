//! Kafka, and nothing about couriers: connect (after checking the broker speaks the chosen
//! client's protocol), poll, decode, hand events to the dispatch layer, dead-letter bad ones,
//! and commit offsets only behind events whose transactions committed. The poller's loop is
//! written once against the client seam (`client`); `kafka_client` implements it with the
//! `kafka` crate, `rdkafka_client` with librdkafka (`topic_id`, `bounded_commit` and
//! `rdkafka_ends` are what it needs beyond the `rdkafka` crate's API).

pub mod bounded_commit;
pub mod broker;
pub mod client;
pub mod dead_letter;
pub mod dead_letter_backlog;
pub mod decode;
pub mod dlq_replay;
#[cfg(test)]
pub(crate) mod fake;
pub mod kafka_client;
pub mod kafka_edge;
mod librdkafka_owned;
pub mod offsets;
mod poller;
pub mod rdkafka_client;
pub mod rdkafka_ends;
pub mod start;
pub mod topic_id;

pub use poller::{Clients, Poller, PollerExit, RunSummary, Telemetry};
