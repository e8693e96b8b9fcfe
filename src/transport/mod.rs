//! Kafka, and nothing about couriers: connect (after checking the broker speaks the crate's
//! protocol), poll, decode, hand events to the dispatch layer, dead-letter bad ones, and commit
//! offsets only behind events whose transactions committed.

pub mod broker;
pub mod dead_letter;
pub mod dead_letter_backlog;
pub mod decode;
pub mod dlq_replay;
pub mod kafka_edge;
pub mod offsets;
mod poller;

pub use poller::{Poller, PollerExit, RunSummary, Telemetry};
