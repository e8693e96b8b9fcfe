//! Kafka, and nothing about couriers: connect (after checking the broker speaks the chosen
//! client's protocol), poll, decode, hand events to the dispatch layer, dead-letter bad ones,
//! and commit offsets only behind events whose transactions committed.
//!
//! - `runtime`: the loop, written once against the client seam, with its offsets,
//!   backpressure and dead-letter backlog; start there.
//! - The clients behind the seam: `kafka_client` (the `kafka` crate, with its workarounds in
//!   `kafka_edge`) and `rdkafka_client` (librdkafka; `topic_id`, `bounded_commit` and
//!   `rdkafka_ends` are what it needs beyond the `rdkafka` crate's API). The rules both share:
//!   where a partition starts (`start`) and whether its log is a new one (`recreated`).
//! - `decode` (bytes to an order event or a bad event), `broker` (the protocol check at
//!   start), and `dlq_replay` (the `dlq replay` command).

pub mod bounded_commit;
pub mod broker;
pub mod decode;
pub mod dlq_replay;
pub mod kafka_client;
pub mod kafka_edge;
mod librdkafka_owned;
pub mod rdkafka_client;
pub mod rdkafka_ends;
pub mod recreated;
pub mod runtime;
pub mod start;
pub mod topic_id;
