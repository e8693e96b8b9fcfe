//! # service-courier
//!
//! Assigns couriers to orders in response to order-status events read from Apache Kafka, and
//! keeps the truth in PostgreSQL. A tour, in the order one event travels (config → transport →
//! dispatch → usecase → repository):
//!
//! - [`domain`]: types that parse (`OrderId`, `OrderStatus`, `OrderEvent`, `Phone`, …); once you
//!   hold one, it is valid.
//! - [`usecase`]: what an event does to couriers. A factory maps each status to one handler
//!   (`assign`, `cancel`, `complete`, `ignore`); each runs in one transaction and returns an
//!   `Outcome`. Idempotent and tolerant of reordering: every order has a state, and terminal
//!   states win.
//! - [`repository`]: the only door to storage, two traits (the event path's
//!   `CourierRepository`, the people's `FleetDirectory`) with two implementations that pass the
//!   same contract tests: PostgreSQL (r2d2 pool, blocking transactions) and an in-memory fake.
//! - [`config`]: typed settings from `.env` and the environment, checked once.
//! - [`transport`]: Kafka and nothing about couriers: the poller decodes, dead-letters bad
//!   input and commits each partition's finished prefix of offsets ([`transport::runtime::offsets`]).
//! - [`dispatch`]: routes each event by `hash(order id)` to one worker's bounded queue, so an
//!   order's events stay in order while the pool runs in parallel.
//! - [`shutdown`]: SIGINT/SIGTERM stop polling; workers drain for at most the drain budget,
//!   whatever the database does; final offsets are committed.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz`, the watchdog (a stuck poller, or a worker stuck
//!   inside one database call), and rate-limited log lines.
//! - [`api`]: the course's courier HTTP API and the operator's page, for people (`HTTP_ADDR`).
//! - [`app`]: the wiring, in one place. [`cli`]: the command line (run, migrate, couriers,
//!   stats, simulate). [`simulate`]: a stand-in for service-order, off the event path.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod ops;
pub mod repository;
pub mod shutdown;
pub mod simulate;
pub mod transport;
pub mod usecase;
