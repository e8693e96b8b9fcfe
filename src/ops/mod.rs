//! What an on-call engineer needs: Prometheus metrics, liveness and readiness, a watchdog that
//! exits when the poller is stuck (inside the `kafka` crate, say) or a worker is stuck inside a
//! database call, so systemd or compose restarts the process (at-least-once delivery makes that
//! safe), and log lines that stay readable when the same problem repeats thousands of times.
//! The endpoint answers from memory: a sampler reads the database-backed gauges and whether
//! PostgreSQL answers ([`sampler`]), on the passes thread.

pub mod health;
pub mod http;
pub mod http1;
pub mod listener;
pub mod log_throttle;
pub mod metrics;
pub mod sampler;

pub use health::Health;
pub use log_throttle::LogThrottle;
pub use metrics::{FleetGauges, Metrics, PartitionReading};
