//! A courier becomes free (released, hired or resumed): the longest-waiting order goes to them
//! at once; only when none waits do they become available.
//!
//! Under concurrency one gap remains: a transaction that makes an order wait and one that makes
//! a courier available, committing at the same moment, cannot see each other's change. So after
//! committing either, the caller runs [`pair_waiting`]: whichever of the two commits last sees
//! both, and hands the order to the courier. No lock serialises the workers for it.

use chrono::{DateTime, Utc};

use super::Release;
use crate::domain::{CourierId, CourierStatus, OrderId};
use crate::repository::{CourierRecord, RepoError, StorageTx};

/// Releases a courier whose delivery just ended. A paused courier stays paused.
pub fn release(
    tx: &mut dyn StorageTx,
    courier: CourierId,
    at: DateTime<Utc>,
) -> Result<Release, RepoError> {
    let record = tx
        .lock_courier(courier)?
        .ok_or_else(|| RepoError::Unexpected(format!("courier {courier} does not exist")))?;
    let took = if record.status == CourierStatus::Paused {
        None
    } else {
        offer(tx, &record, at)?
    };
    Ok(Release { courier, took })
}

/// Hands waiting orders to available couriers, first come first served, until one side runs
/// out; returns the pairs made. Finds nothing when no commit raced another (the usual case).
pub fn pair_waiting(
    tx: &mut dyn StorageTx,
    at: DateTime<Utc>,
) -> Result<Vec<(OrderId, CourierId)>, RepoError> {
    let mut pairs = Vec::new();
    while let Some(order) = tx.next_waiting_order()? {
        let Some(courier) = tx.take_available_courier()? else {
            break;
        };
        tx.start_delivery(&order, &courier, at)?;
        pairs.push((order, courier.id));
    }
    Ok(pairs)
}

/// Gives a free courier the longest-waiting order, or makes them available.
pub fn offer(
    tx: &mut dyn StorageTx,
    courier: &CourierRecord,
    at: DateTime<Utc>,
) -> Result<Option<OrderId>, RepoError> {
    match tx.next_waiting_order()? {
        Some(order) => {
            tx.start_delivery(&order, courier, at)?;
            Ok(Some(order))
        }
        None => {
            tx.set_courier_status(courier.id, CourierStatus::Available, at)?;
            Ok(None)
        }
    }
}
