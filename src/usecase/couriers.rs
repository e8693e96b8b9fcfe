//! Managing couriers by hand (the CLI): hire, pause, resume. Hiring and resuming hand the new
//! courier the longest-waiting order, so no order waits beside a free courier.

use std::fmt;

use chrono::{DateTime, Utc};

use super::handover;
use crate::domain::{CourierId, CourierStatus, NewCourier, OrderId};
use crate::repository::{CourierRecord, CourierRepository, RepoError, StorageTx};

/// Why a courier command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CourierCommandError {
    /// No courier has this id.
    NotFound(CourierId),
    /// Storage said no.
    Repository(RepoError),
}

impl fmt::Display for CourierCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(id) => write!(f, "no courier has id {id}"),
            Self::Repository(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CourierCommandError {}

impl From<RepoError> for CourierCommandError {
    fn from(e: RepoError) -> Self {
        Self::Repository(e)
    }
}

/// What a courier command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourierChange {
    /// The courier concerned.
    pub id: CourierId,
    /// Their status afterwards.
    pub status: CourierStatus,
    /// The waiting order they took, if any.
    pub took: Option<OrderId>,
}

/// Hires a courier; they take the longest-waiting order at once, if there is one.
pub fn add(
    repo: &impl CourierRepository,
    courier: &NewCourier,
    at: DateTime<Utc>,
) -> Result<CourierChange, CourierCommandError> {
    let change = repo.transaction(&mut |tx| {
        let record = tx.insert_courier(courier, at)?;
        let took = handover::offer(tx, &record, at)?;
        Ok(changed(record.id, took))
    })?;
    close_gap(repo, &change, at);
    Ok(change)
}

/// Hires a courier who starts paused (off shift): they take no order until resumed.
pub fn add_paused(
    repo: &impl CourierRepository,
    courier: &NewCourier,
    at: DateTime<Utc>,
) -> Result<CourierChange, CourierCommandError> {
    let record = repo.transaction(&mut |tx| tx.insert_courier(courier, at))?;
    Ok(CourierChange {
        id: record.id,
        status: CourierStatus::Paused,
        took: None,
    })
}

/// A courier made available may have missed an order that started waiting at the same moment:
/// run the pairing pass (see [`handover`]).
fn close_gap(repo: &impl CourierRepository, change: &CourierChange, at: DateTime<Utc>) {
    if change.status == CourierStatus::Available
        && repo.has_waiting_beside_available().unwrap_or(true)
    {
        if let Err(e) = repo.transaction(&mut |tx| handover::pair_waiting(tx, at)) {
            log::warn!("pairing waiting orders with free couriers failed: {e}");
        }
    }
}

/// Pauses a courier: no new orders; an order they carry stays theirs. Idempotent.
pub fn pause(
    repo: &impl CourierRepository,
    id: CourierId,
    at: DateTime<Utc>,
) -> Result<CourierChange, CourierCommandError> {
    with_courier(repo, id, &mut |tx, record| {
        if record.status != CourierStatus::Paused {
            tx.set_courier_status(id, CourierStatus::Paused, at)?;
        }
        Ok(CourierChange {
            id,
            status: CourierStatus::Paused,
            took: None,
        })
    })
}

/// Resumes a paused courier: busy again if they carry an order, else they take the
/// longest-waiting order or become available. Idempotent.
pub fn resume(
    repo: &impl CourierRepository,
    id: CourierId,
    at: DateTime<Utc>,
) -> Result<CourierChange, CourierCommandError> {
    with_courier(repo, id, &mut |tx, record| {
        if record.status != CourierStatus::Paused {
            return Ok(CourierChange {
                id,
                status: record.status,
                took: None,
            });
        }
        if record.active_order.is_some() {
            tx.set_courier_status(id, CourierStatus::Busy, at)?;
            return Ok(CourierChange {
                id,
                status: CourierStatus::Busy,
                took: None,
            });
        }
        let took = handover::offer(tx, &record, at)?;
        Ok(changed(id, took))
    })
    .inspect(|change| close_gap(repo, change, at))
}

/// Runs `change` in one transaction on courier `id`, locked; `NotFound` when there is none.
fn with_courier(
    repo: &impl CourierRepository,
    id: CourierId,
    change: &mut dyn FnMut(&mut dyn StorageTx, CourierRecord) -> Result<CourierChange, RepoError>,
) -> Result<CourierChange, CourierCommandError> {
    repo.transaction(&mut |tx| match tx.lock_courier(id)? {
        Some(record) => change(tx, record).map(Some),
        None => Ok(None),
    })?
    .ok_or(CourierCommandError::NotFound(id))
}

fn changed(id: CourierId, took: Option<OrderId>) -> CourierChange {
    CourierChange {
        id,
        status: if took.is_some() {
            CourierStatus::Busy
        } else {
            CourierStatus::Available
        },
        took,
    }
}
