//! A courier becomes free (released, hired or resumed): the longest-waiting order goes to them
//! at once; only when none waits do they become available.

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
        .ok_or_else(|| RepoError::Permanent(format!("courier {courier} does not exist")))?;
    let took = if record.status == CourierStatus::Paused {
        None
    } else {
        offer(tx, &record, at)?
    };
    Ok(Release { courier, took })
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
