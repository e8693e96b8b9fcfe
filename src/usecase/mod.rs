//! What an order event does to couriers. The [`factory`] maps a status to one handler per
//! status family (`assign`, `cancel`, `complete`, `ignore`); each runs in one storage
//! transaction and returns a typed [`Outcome`]. Nothing here knows about Kafka.

mod assign;
mod cancel;
mod complete;
pub mod couriers;
pub mod factory;
mod handover;
mod ignore;
mod outcome;

pub use outcome::{Outcome, Release};

use crate::domain::OrderEvent;
use crate::repository::{CourierRepository, RepoError};

/// Applies order events to a repository: the one entry point the transport calls.
pub struct OrderEventProcessor<R> {
    repository: R,
}

impl<R: CourierRepository> OrderEventProcessor<R> {
    /// A processor over `repository`.
    pub fn new(repository: R) -> Self {
        Self { repository }
    }

    /// The repository, for callers that also need to read it.
    pub fn repository(&self) -> &R {
        &self.repository
    }

    /// Applies one event in one transaction. Idempotent: applying it again, or after later events
    /// of the same order, returns [`Outcome::Duplicate`] and changes nothing. A transient error
    /// leaves no trace, so the caller may retry.
    pub fn apply(&self, event: &OrderEvent) -> Result<Outcome, RepoError> {
        let handler = factory::StatusHandler::for_status(event.status);
        if handler == factory::StatusHandler::Ignore {
            return Ok(ignore::handle());
        }
        let outcome = self
            .repository
            .transaction(&mut |tx| handler.handle(tx, &event.order_id, event.created_at))?;
        if may_leave_a_gap(handler, &outcome) {
            self.pair_waiting(event.created_at);
        }
        Ok(outcome)
    }

    /// The pairing pass (see [`handover`]): after a commit that made an order wait or a courier
    /// free, and on a timer (passes skip rows other transactions hold, so two racing passes can
    /// both miss a pair; the next timed pass finds it). Its own transaction; a failure is
    /// logged, not returned: the event it follows is committed already, and the timer retries.
    pub fn pair_waiting(&self, at: chrono::DateTime<chrono::Utc>) {
        match self.repository.has_waiting_beside_available() {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => log::debug!("checking for waiting orders beside free couriers: {e}"),
        }
        match self
            .repository
            .transaction(&mut |tx| handover::pair_waiting(tx, at))
        {
            Ok(pairs) => {
                for (order, courier) in pairs {
                    log::info!(
                        "order {order} was waiting beside free courier {courier} (two commits \
                         crossed): assigned now"
                    );
                }
            }
            Err(e) => log::warn!("pairing waiting orders with free couriers failed: {e}"),
        }
    }

    /// Applies several events, in order, in one transaction (micro-batching: one commit for
    /// all). Each event sees the effects of the ones before it, exactly as if each had its own
    /// transaction. All or nothing: on error nothing is kept, and the caller may apply the
    /// events one by one to isolate the failing one.
    pub fn apply_batch(&self, events: &[&OrderEvent]) -> Result<Vec<Outcome>, RepoError> {
        let needs_storage = events.iter().any(|e| {
            factory::StatusHandler::for_status(e.status) != factory::StatusHandler::Ignore
        });
        if !needs_storage {
            return Ok(events.iter().map(|_| ignore::handle()).collect());
        }
        let outcomes = self.repository.transaction(&mut |tx| {
            events
                .iter()
                .map(|e| {
                    factory::StatusHandler::for_status(e.status).handle(
                        tx,
                        &e.order_id,
                        e.created_at,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let gap = events.iter().zip(&outcomes).rev().find(|(e, outcome)| {
            may_leave_a_gap(factory::StatusHandler::for_status(e.status), outcome)
        });
        if let Some((event, _)) = gap {
            self.pair_waiting(event.created_at);
        }
        Ok(outcomes)
    }
}

/// Whether a committed outcome may have left an order waiting beside a free courier when
/// another transaction committed at the same moment: it made an order wait (or found a waiting
/// order still without a courier), or it made a courier free.
fn may_leave_a_gap(handler: factory::StatusHandler, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Waiting => true,
        Outcome::Duplicate => handler == factory::StatusHandler::Assign,
        Outcome::Cancelled(Some(r)) | Outcome::Completed(Some(r)) => r.took.is_none(),
        _ => false,
    }
}
