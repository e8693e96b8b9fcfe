//! What an order event does to couriers. The [`factory`] maps a status to one handler per
//! status family (`assign`, `cancel`, `complete`, `ignore`); each runs in one storage
//! transaction and returns a typed [`Outcome`]. The [`deadline`] pass completes deliveries that
//! outlived their deadline. Nothing here knows about Kafka.

mod assign;
mod cancel;
mod complete;
pub mod couriers;
pub mod deadline;
pub mod delivery;
pub mod factory;
mod handover;
mod ignore;
mod outcome;

pub use deadline::DeadlineCompletion;
pub use outcome::{Outcome, Release};

use crossbeam_channel::Sender;

use crate::domain::OrderEvent;
use crate::repository::{BatchOutline, BatchStep, CourierRepository, RepoError, StepKind};

/// Applies order events to a repository: the one entry point the transport calls.
pub struct OrderEventProcessor<R> {
    repository: R,
    /// Where a commit that may have left an order waiting beside a free courier asks for the
    /// pairing pass; without it, the committing thread runs the pass itself.
    pairing_requests: Option<Sender<()>>,
}

impl<R: CourierRepository> OrderEventProcessor<R> {
    /// A processor over `repository` that runs the pairing pass itself after such commits.
    pub fn new(repository: R) -> Self {
        Self {
            repository,
            pairing_requests: None,
        }
    }

    /// Leaves the pairing pass to a thread that receives on the other end of `requests` (the
    /// service's `passes` thread): workers don't wait for it, and the requests of many commits
    /// coalesce into one pass. A full channel means a pass is requested already.
    pub fn with_pairing_requests(mut self, requests: Sender<()>) -> Self {
        self.pairing_requests = Some(requests);
        self
    }

    /// The repository, for callers that also need to read it.
    pub fn repository(&self) -> &R {
        &self.repository
    }

    /// Applies one event in one transaction. Idempotent: applying it again, or after later events
    /// of the same order, returns [`Outcome::Duplicate`] and changes nothing. A transient error
    /// leaves no trace, so the caller may retry.
    pub fn apply(&self, event: &OrderEvent) -> Result<Outcome, RepoError> {
        let mut outcomes = self.apply_batch(&[event])?;
        outcomes
            .pop()
            .ok_or_else(|| RepoError::Unexpected("a batch of one gave no outcome".into()))
    }

    /// The pairing pass (see [`handover`]): after a commit that made an order wait or a courier
    /// free (see [`OrderEventProcessor::with_pairing_requests`]), and on a timer (passes skip rows other transactions hold, so two racing passes can
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
        let outline = outline(events);
        let outcomes = self.repository.transaction(&mut |tx| {
            tx.lock_batch(&outline)?;
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
            self.ask_for_pairing(event.created_at);
        }
        Ok(outcomes)
    }

    /// One round of the deadline pass's work (see [`deadline`]): completes up to `limit`
    /// deliveries due at or before `now` in one transaction. The caller repeats while a round
    /// comes back full.
    pub fn complete_overdue(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeadlineCompletion>, RepoError> {
        let completed = self
            .repository
            .transaction(&mut |tx| deadline::complete_overdue(tx, now, limit))?;
        // A courier freed with no order to take may have missed one that waited meanwhile.
        if completed.iter().any(|c| c.release.took.is_none()) {
            self.ask_for_pairing(now);
        }
        Ok(completed)
    }

    /// Asks for the pairing pass: of the passes thread when there is one, else runs it here.
    fn ask_for_pairing(&self, at: chrono::DateTime<chrono::Utc>) {
        match &self.pairing_requests {
            Some(requests) => {
                let _ = requests.try_send(());
            }
            None => self.pair_waiting(at),
        }
    }
}

/// What a batch will touch: its orders, and the events among them that may take or free a
/// courier.
fn outline(events: &[&OrderEvent]) -> BatchOutline {
    let mut steps = Vec::with_capacity(events.len());
    for event in events {
        let kind = match factory::StatusHandler::for_status(event.status) {
            factory::StatusHandler::Ignore => continue,
            factory::StatusHandler::Assign => StepKind::Assign,
            factory::StatusHandler::Cancel | factory::StatusHandler::Complete => StepKind::End,
        };
        steps.push(BatchStep {
            order: event.order_id.clone(),
            kind,
        });
    }
    BatchOutline::of_steps(steps)
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
