//! The consumer runtime: the loop and what it keeps, written once for both clients and knowing
//! nothing of couriers. The poller's loop polls through the client seam (`client`: a
//! `ConsumerClient` and a `DeadLetterProducer`), hands each event to the dispatch layer's
//! workers, holds records back and pauses their partitions when the workers' queues are full,
//! keeps the dead letters Kafka has not accepted yet (`dead_letter_backlog`), and commits each
//! partition's finished prefix (`offsets`) only behind events whose transactions committed.
//! The client implementations (`transport::kafka_client`, `transport::rdkafka_client`) and the
//! `dlq replay` command live beside it, in `transport`; its unit tests drive it through a
//! scripted client (`fake`).

pub mod client;
pub mod dead_letter;
pub mod dead_letter_backlog;
#[cfg(test)]
pub(crate) mod fake;
pub mod offsets;
mod poller;

pub use poller::{Clients, Poller, PollerExit, RunSummary, Telemetry};
