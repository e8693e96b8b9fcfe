//! What an on-call engineer needs: Prometheus metrics, liveness and readiness, and a watchdog
//! that exits when the poller is stuck (inside the `kafka` crate, say) so systemd or compose
//! restarts the process; at-least-once delivery makes that safe.

pub mod health;
pub mod http;
pub mod log_throttle;
pub mod metrics;

pub use health::Health;
pub use log_throttle::LogThrottle;
pub use metrics::{FleetGauges, Metrics, PartitionReading};
