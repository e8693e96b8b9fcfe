//! What applying an event did, so the caller can log it once and count it.

use std::fmt;

use crate::domain::{CourierId, OrderId};

/// A courier let go by a cancel or a complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The courier who carried the order.
    pub courier: CourierId,
    /// The waiting order they took at once, if one was waiting (and they are not paused).
    pub took: Option<OrderId>,
}

/// The result of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A courier took the new order.
    Assigned(CourierId),
    /// No courier was free: the order joined the end of the queue.
    Waiting,
    /// The order is cancelled; its courier, if it had one, was released.
    Cancelled(Option<Release>),
    /// The order is completed; its courier, if it had one, was released.
    Completed(Option<Release>),
    /// The status has no effect on couriers.
    Ignored,
    /// Nothing to do: a duplicate, or a stale event for an order already past it.
    Duplicate,
}

impl Outcome {
    /// A short name for logs and metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Assigned(_) => "assigned",
            Self::Waiting => "waiting",
            Self::Cancelled(_) => "cancelled",
            Self::Completed(_) => "completed",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let release = |f: &mut fmt::Formatter<'_>, r: &Option<Release>| match r {
            None => Ok(()),
            Some(Release {
                courier,
                took: None,
            }) => write!(f, ", courier {courier} freed"),
            Some(Release {
                courier,
                took: Some(next),
            }) => write!(f, ", courier {courier} took waiting order {next}"),
        };
        match self {
            Self::Assigned(c) => write!(f, "assigned to courier {c}"),
            Self::Waiting => write!(f, "waiting for a courier"),
            Self::Cancelled(r) => {
                write!(f, "cancelled")?;
                release(f, r)
            }
            Self::Completed(r) => {
                write!(f, "completed")?;
                release(f, r)
            }
            Self::Ignored => write!(f, "ignored (no effect on couriers)"),
            Self::Duplicate => write!(f, "duplicate or stale, nothing to do"),
        }
    }
}
