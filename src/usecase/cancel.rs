//! `cancelled`, `canceled`, `deleted`: the delivery disappears and never counts.

use chrono::{DateTime, Utc};

use super::{handover, Outcome};
use crate::domain::OrderId;
use crate::repository::{OrderState, RepoError, StorageTx};

/// Cancels an order, releasing its courier if it had one.
pub fn handle(
    tx: &mut dyn StorageTx,
    order: &OrderId,
    at: DateTime<Utc>,
) -> Result<Outcome, RepoError> {
    match tx.lock_order(order)? {
        // Never seen, or still waiting: remember the cancellation so a late `created` is ignored.
        OrderState::Unseen | OrderState::Waiting => {
            tx.set_order_state(order, &OrderState::Cancelled, at)?;
            Ok(Outcome::Cancelled(None))
        }
        OrderState::Assigned(courier) => {
            tx.drop_delivery(order, at)?;
            let release = handover::release(tx, courier, at)?;
            Ok(Outcome::Cancelled(Some(release)))
        }
        // Terminal states win.
        OrderState::Completed(_) | OrderState::Cancelled => Ok(Outcome::Duplicate),
    }
}
