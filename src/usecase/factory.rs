//! The status factory: the one place that maps an order status to the handler that applies it.

use chrono::{DateTime, Utc};

use super::{assign, cancel, complete, ignore, Outcome};
use crate::domain::{OrderId, OrderStatus, StatusFamily};
use crate::repository::{RepoError, StorageTx};

/// One handler per status family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusHandler {
    /// `created`.
    Assign,
    /// `cancelled`, `canceled`, `deleted`.
    Cancel,
    /// `completed`, `delivered`.
    Complete,
    /// `pending`, `confirmed`, `cooking`, `delivering`, `updated`.
    Ignore,
}

impl StatusHandler {
    /// The handler for a status.
    pub fn for_status(status: OrderStatus) -> Self {
        match status.family() {
            StatusFamily::Assign => Self::Assign,
            StatusFamily::Cancel => Self::Cancel,
            StatusFamily::Complete => Self::Complete,
            StatusFamily::Ignore => Self::Ignore,
        }
    }

    /// Applies the handler to `order` inside the transaction `tx`, stamping effects with `at`.
    pub fn handle(
        self,
        tx: &mut dyn StorageTx,
        order: &OrderId,
        at: DateTime<Utc>,
    ) -> Result<Outcome, RepoError> {
        match self {
            Self::Assign => assign::handle(tx, order, at),
            Self::Cancel => cancel::handle(tx, order, at),
            Self::Complete => complete::handle(tx, order, at),
            Self::Ignore => Ok(ignore::handle()),
        }
    }
}
