//! `completed`, `delivered`: the delivery stays and counts for the courier.

use chrono::{DateTime, Utc};

use super::{handover, Outcome};
use crate::domain::{CompletedBy, OrderId};
use crate::repository::{OrderState, RepoError, StorageTx};

/// Completes an order, counting the delivery and releasing the courier.
pub fn handle(
    tx: &mut dyn StorageTx,
    order: &OrderId,
    at: DateTime<Utc>,
) -> Result<Outcome, RepoError> {
    match tx.lock_order(order)? {
        // Done without a courier of ours (never seen, or still waiting): remember it, count
        // nothing, and let a late `created` do nothing.
        OrderState::Unseen | OrderState::Waiting => {
            tx.set_order_state(order, &OrderState::Completed(None), at)?;
            Ok(Outcome::Completed(None))
        }
        OrderState::Assigned(courier) => {
            tx.finish_delivery(order, courier, at, CompletedBy::Event)?;
            let release = handover::release(tx, courier, at)?;
            Ok(Outcome::Completed(Some(release)))
        }
        // Terminal states win.
        OrderState::Completed(_) | OrderState::Cancelled => Ok(Outcome::Duplicate),
    }
}
