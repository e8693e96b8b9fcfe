//! The database sampler: every [`SAMPLE_EVERY`] it reads the fleet gauges (couriers by status,
//! waiting orders) into [`Metrics`], which `/metrics` serves from memory, and tells [`Health`]
//! whether PostgreSQL answered, which `/readyz` reports.
//!
//! It runs on the passes thread (`app::start_passes`), between passes, not on a thread of its
//! own: every thread costs about 2 MB of peak RSS (its malloc arena; docs/performance.md). A
//! pass or a sample that waits on a frozen server cannot delay `/readyz`: readiness also fails
//! when PostgreSQL has given no answer for [`super::health::DATABASE_SILENT_AFTER`], whatever
//! the thread that asked is doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{FleetGauges, Health, Metrics};
use crate::repository::RepoError;

/// How often the gauges are read and PostgreSQL is asked whether it answers.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Reads the fleet gauges: one short read-only transaction.
pub type FleetRead = Box<dyn Fn() -> Result<FleetGauges, RepoError> + Send>;

/// Samples on its own cadence, when its owner's loop asks ([`DatabaseSampler::run_if_due`]).
pub struct DatabaseSampler {
    /// The read (on a one-connection pool of its own, so no worker waits for it).
    read: FleetRead,
    /// Where the gauges go.
    metrics: Arc<Metrics>,
    /// Where the answer (or its absence) goes.
    health: Arc<Health>,
    /// When the next sample is due.
    due: Instant,
    /// Whether the last sample reached the database: a change is logged once, not every sample.
    reached: bool,
}

impl DatabaseSampler {
    /// A sampler whose first sample is due at once.
    pub fn new(read: FleetRead, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            read,
            metrics,
            health,
            due: Instant::now(),
            reached: true,
        }
    }

    /// From now on silence from the database counts against readiness: call once the loop
    /// that calls [`DatabaseSampler::run_if_due`] runs.
    pub fn start(&self) {
        self.health.watch_database();
    }

    /// How long until the next sample is due (zero when it is).
    pub fn due_in(&self) -> Duration {
        self.due.saturating_duration_since(Instant::now())
    }

    /// Samples if due.
    pub fn run_if_due(&mut self) {
        if Instant::now() >= self.due {
            self.run_once();
            self.due = Instant::now() + SAMPLE_EVERY;
        }
    }

    /// One sample. A transient failure (refused, lost, timed out) makes the database
    /// unreachable; a permanent one is an answer (the server refused a read: a schema problem,
    /// which the log says) and only the gauges go.
    fn run_once(&mut self) {
        match (self.read)() {
            Ok(fleet) => {
                self.health.database_answered();
                self.metrics.fleet_sampled(Some(fleet));
                if !self.reached {
                    log::info!("sampler: PostgreSQL answers again");
                }
                self.reached = true;
            }
            Err(e) if e.is_transient() => {
                self.metrics.fleet_sampled(None);
                self.health.database_unreachable(&e.to_string());
                if self.reached {
                    log::warn!("sampler: PostgreSQL unreachable ({e}); /readyz says so");
                }
                self.reached = false;
            }
            Err(e) => {
                self.metrics.fleet_sampled(None);
                self.health.database_answered();
                log::warn!("sampler: reading the fleet gauges failed: {e}");
                self.reached = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn sampler(answers: Vec<Result<FleetGauges, RepoError>>) -> (DatabaseSampler, Arc<Health>) {
        let answers = Mutex::new(answers.into_iter());
        let read: FleetRead = Box::new(move || {
            answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next()
                .unwrap_or(Err(RepoError::Transient("no more answers".into())))
        });
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        health.kafka_ready(true);
        let s = DatabaseSampler::new(read, Arc::new(Metrics::default()), Arc::clone(&health));
        (s, health)
    }

    fn fleet(available: i64) -> FleetGauges {
        FleetGauges {
            available,
            ..FleetGauges::default()
        }
    }

    #[test]
    fn a_transient_failure_is_unreachable_until_the_next_answer_and_drops_the_gauges() {
        let (mut s, health) = sampler(vec![
            Ok(fleet(2)),
            Err(RepoError::Transient("connection refused".into())),
            Ok(fleet(3)),
        ]);
        s.run_once();
        assert_eq!(health.readiness(), Ok(()));
        assert!(s
            .metrics
            .render()
            .contains("courier_couriers{status=\"available\"} 2"));
        s.run_once();
        let refused = health.readiness();
        assert!(
            refused.as_ref().is_err_and(
                |e| e.starts_with("database unreachable:") && e.contains("connection refused")
            ),
            "{refused:?}"
        );
        assert!(!s.metrics.render().contains("courier_couriers"));
        s.run_once();
        assert_eq!(health.readiness(), Ok(()));
        assert!(s
            .metrics
            .render()
            .contains("courier_couriers{status=\"available\"} 3"));
    }

    #[test]
    fn a_permanent_failure_is_an_answer() {
        let (mut s, health) = sampler(vec![Err(RepoError::Unexpected("no such table".into()))]);
        s.run_once();
        assert_eq!(health.readiness(), Ok(()));
        assert!(!s.metrics.render().contains("courier_couriers"));
    }

    #[test]
    fn samples_on_its_own_cadence() {
        let (mut s, _) = sampler(vec![Ok(fleet(1)), Ok(fleet(9))]);
        assert_eq!(s.due_in(), Duration::ZERO);
        s.run_if_due();
        assert!(s.due_in() > SAMPLE_EVERY / 2, "{:?}", s.due_in());
        s.run_if_due(); // not due: the second answer stays unread
        assert!(s
            .metrics
            .render()
            .contains("courier_couriers{status=\"available\"} 1"));
    }
}
