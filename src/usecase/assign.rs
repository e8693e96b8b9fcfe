//! `created`: give the order the best available courier, or put it in the queue.

use chrono::{DateTime, Utc};

use super::Outcome;
use crate::domain::OrderId;
use crate::repository::{OrderState, RepoError, StorageTx};

/// Assigns a courier to a new order, or makes it wait.
pub fn handle(
    tx: &mut dyn StorageTx,
    order: &OrderId,
    at: DateTime<Utc>,
) -> Result<Outcome, RepoError> {
    match tx.lock_order(order)? {
        OrderState::Unseen => match tx.take_available_courier()? {
            Some(courier) => {
                tx.start_delivery(order, &courier, at)?;
                Ok(Outcome::Assigned(courier.id))
            }
            None => {
                tx.set_order_state(order, &OrderState::Waiting, at)?;
                Ok(Outcome::Waiting)
            }
        },
        // A repeated `created` for a waiting order looks once more: a courier released while
        // this order's row was locked by another of its events may have skipped it.
        OrderState::Waiting => match tx.take_available_courier()? {
            Some(courier) => {
                tx.start_delivery(order, &courier, at)?;
                Ok(Outcome::Assigned(courier.id))
            }
            None => Ok(Outcome::Duplicate),
        },
        // Already assigned, or a late `created` after the order ended: nothing to do.
        OrderState::Assigned(_) | OrderState::Completed(_) | OrderState::Cancelled => {
            Ok(Outcome::Duplicate)
        }
    }
}
