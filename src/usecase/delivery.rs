//! Assigning and unassigning by hand (the course's `POST /delivery/assign` and
//! `/delivery/unassign`). They are the `created` and `cancelled` usecases under another name:
//! the same ranking (`take_available_courier`), the same state machine (`lock_order`,
//! `start_delivery`, `drop_delivery` and [`handover::release`]), one transaction each. Two
//! differences, both the course's contract: with no courier free, assign refuses and writes
//! nothing (an event would queue the order), and each refusal is typed so the API can say why.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};

use super::{handover, Release};
use crate::domain::{CourierId, OrderId, TransportType};
use crate::repository::{CourierRepository, OrderState, RepoError};

/// A courier who took an order by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Who carries it now.
    pub courier: CourierId,
    /// How they travel: it set the deadline.
    pub transport: TransportType,
    /// When they took it (the wall clock of the call).
    pub assigned_at: DateTime<Utc>,
    /// `assigned_at` plus the transport's delivery window.
    pub deadline: DateTime<Utc>,
}

/// Why an assignment was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignError {
    /// Every courier is busy or paused. The order is not queued: a later `created` event for
    /// it takes the usual path.
    NoAvailableCourier,
    /// The order already has this courier.
    AlreadyAssigned(CourierId),
    /// The order is completed or cancelled: terminal states win.
    Ended(OrderState),
    /// Storage said no.
    Repository(RepoError),
}

/// Why an unassignment was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnassignError {
    /// The order has no delivery to undo: never seen, waiting, or cancelled.
    NoDelivery(OrderState),
    /// The order is completed: its delivery is done and counts.
    Completed,
    /// Storage said no.
    Repository(RepoError),
}

impl From<RepoError> for AssignError {
    fn from(e: RepoError) -> Self {
        Self::Repository(e)
    }
}

impl From<RepoError> for UnassignError {
    fn from(e: RepoError) -> Self {
        Self::Repository(e)
    }
}

impl fmt::Display for AssignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAvailableCourier => write!(f, "No available couriers"),
            Self::AlreadyAssigned(c) => write!(f, "the order is already assigned to courier {c}"),
            Self::Ended(state) => write!(f, "the order is {}", state.as_str()),
            Self::Repository(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for UnassignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDelivery(OrderState::Unseen) => write!(f, "order not found"),
            Self::NoDelivery(state) => {
                write!(f, "the order has no courier: it is {}", state.as_str())
            }
            Self::Completed => write!(f, "the order is completed: its delivery counts"),
            Self::Repository(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AssignError {}
impl std::error::Error for UnassignError {}

/// Gives `order` the best available courier, as a `created` event would, stamped `at` (the
/// caller's wall clock, kept to the microsecond as PostgreSQL keeps it). A waiting order may be
/// assigned this way; an unseen one too, and then it is assigned, never queued.
pub fn assign(
    repo: &impl CourierRepository,
    order: &OrderId,
    at: DateTime<Utc>,
) -> Result<Assignment, AssignError> {
    let at = at.trunc_subsecs(6);
    repo.transaction(&mut |tx| {
        match tx.lock_order(order)? {
            OrderState::Unseen | OrderState::Waiting => {}
            OrderState::Assigned(c) => return Ok(Err(AssignError::AlreadyAssigned(c))),
            ended @ (OrderState::Completed(_) | OrderState::Cancelled) => {
                return Ok(Err(AssignError::Ended(ended)))
            }
        }
        let Some(courier) = tx.take_available_courier()? else {
            return Ok(Err(AssignError::NoAvailableCourier));
        };
        tx.start_delivery(order, &courier, at)?;
        Ok(Ok(Assignment {
            courier: courier.id,
            transport: courier.transport,
            assigned_at: at,
            deadline: at + courier.transport.delivery_window(),
        }))
    })?
}

/// Takes `order` from its courier, as a `cancelled` event would: the delivery row goes, the
/// order is cancelled (it never counts, and later events of it do nothing), and the courier is
/// freed and takes the longest-waiting order at once. Stamped `at` (the caller's wall clock).
pub fn unassign(
    repo: &impl CourierRepository,
    order: &OrderId,
    at: DateTime<Utc>,
) -> Result<Release, UnassignError> {
    let at = at.trunc_subsecs(6);
    let release = repo.transaction(&mut |tx| match tx.lock_order(order)? {
        OrderState::Assigned(courier) => {
            tx.drop_delivery(order, at)?;
            Ok(Ok(handover::release(tx, courier, at)?))
        }
        OrderState::Completed(_) => Ok(Err(UnassignError::Completed)),
        other => Ok(Err(UnassignError::NoDelivery(other))),
    })??;
    if release.took.is_none() {
        close_gap(repo, at);
    }
    Ok(release)
}

/// A courier freed with nothing to take may have missed an order that started waiting at the
/// same moment: run the pairing pass, as `couriers::close_gap` does (see [`handover`]).
fn close_gap(repo: &impl CourierRepository, at: DateTime<Utc>) {
    if repo.has_waiting_beside_available().unwrap_or(true) {
        if let Err(e) = repo.transaction(&mut |tx| handover::pair_waiting(tx, at)) {
            log::warn!("pairing waiting orders with free couriers failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewCourier, OrderEvent, OrderStatus, Phone};
    use crate::repository::MemoryRepository;
    use crate::usecase::{couriers, OrderEventProcessor};

    fn oid(s: &str) -> OrderId {
        OrderId::parse(s).expect("order id")
    }

    fn hire(repo: &MemoryRepository, n: u32, t: TransportType) -> CourierId {
        let c = NewCourier::parse(
            &format!("C{n}"),
            Phone::parse(&format!("+7999000000{n}")).expect("phone"),
            t,
        )
        .expect("courier");
        couriers::add(repo, &c, Utc::now()).expect("hire").id
    }

    fn event(id: &str, status: &str) -> OrderEvent {
        OrderEvent {
            order_id: oid(id),
            status: OrderStatus::parse(status).expect("status"),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn assign_refuses_without_a_courier_and_writes_nothing() {
        let repo = MemoryRepository::new();
        let before = repo.snapshot().expect("snapshot");
        assert_eq!(
            assign(&repo, &oid("a"), Utc::now()),
            Err(AssignError::NoAvailableCourier)
        );
        assert_eq!(repo.snapshot().expect("snapshot"), before);
    }

    #[test]
    fn assign_then_unassign_frees_the_courier_for_the_queue() {
        let repo = MemoryRepository::new();
        let c = hire(&repo, 1, TransportType::Car);
        let now = Utc::now();
        let a = assign(&repo, &oid("a"), now).expect("assigned");
        assert_eq!((a.courier, a.transport), (c, TransportType::Car));
        assert_eq!(a.deadline - a.assigned_at, chrono::Duration::minutes(5));
        assert_eq!(
            assign(&repo, &oid("a"), now),
            Err(AssignError::AlreadyAssigned(c))
        );
        let p = OrderEventProcessor::new(repo);
        p.apply(&event("b", "created")).expect("b waits");
        let release = unassign(p.repository(), &oid("a"), Utc::now()).expect("unassigned");
        assert_eq!(release.courier, c);
        assert_eq!(release.took, Some(oid("b")));
        assert_eq!(
            unassign(p.repository(), &oid("a"), Utc::now()),
            Err(UnassignError::NoDelivery(OrderState::Cancelled))
        );
        assert_eq!(
            assign(p.repository(), &oid("a"), Utc::now()),
            Err(AssignError::Ended(OrderState::Cancelled))
        );
        p.apply(&event("b", "completed")).expect("b completed");
        assert_eq!(
            unassign(p.repository(), &oid("b"), Utc::now()),
            Err(UnassignError::Completed)
        );
        assert_eq!(
            unassign(p.repository(), &oid("never"), Utc::now()),
            Err(UnassignError::NoDelivery(OrderState::Unseen))
        );
        p.repository()
            .snapshot()
            .expect("snapshot")
            .check_invariants()
            .expect("invariants");
    }
}
