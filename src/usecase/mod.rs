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
        self.repository
            .transaction(&mut |tx| handler.handle(tx, &event.order_id, event.created_at))
    }
}
