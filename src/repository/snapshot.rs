//! The whole stored state in one comparable value, and the invariants it must always satisfy.
//! Tests compare PostgreSQL with the in-memory fake through it; the fault harness compares the
//! database with a model fed the same events.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::{CourierView, OrderState};
use crate::domain::{CompletedBy, CourierId, CourierStatus, OrderId};

/// One row of `courier_orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryView {
    /// Who carries (or carried) the order.
    pub courier: CourierId,
    /// When the courier took it.
    pub assigned_at: DateTime<Utc>,
    /// `assigned_at` plus the courier's transport window.
    pub deadline: DateTime<Utc>,
    /// When it was delivered; `None` while active.
    pub completed_at: Option<DateTime<Utc>>,
    /// What completed it; `None` while active.
    pub completed_by: Option<CompletedBy>,
}

/// Everything that is stored, ordered so two snapshots compare with `==`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every courier, by id.
    pub couriers: Vec<CourierView>,
    /// Every order seen, with its state.
    pub orders: BTreeMap<OrderId, OrderState>,
    /// Every delivery (active or completed), by order.
    pub deliveries: BTreeMap<OrderId, DeliveryView>,
    /// Waiting orders, first in line first.
    pub waiting: Vec<OrderId>,
}

impl Snapshot {
    /// Checks every invariant of docs/rules.md; the error lists the first broken one. For a
    /// store at rest: under concurrent writers, "no order waits beside an available courier"
    /// may be false for the moment between two commits (see `usecase::handover`); sample
    /// [`Snapshot::check_consistency`] instead.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_consistency()?;
        let any_available = self
            .couriers
            .iter()
            .any(|c| c.status == CourierStatus::Available);
        if any_available && !self.waiting.is_empty() {
            return Err(format!(
                "{} orders wait while a courier is available",
                self.waiting.len()
            ));
        }
        Ok(())
    }

    /// The invariants that hold in every committed state, even with concurrent writers: a busy
    /// courier has exactly one active order and an available one none, no order has two
    /// couriers, deliveries match order states, counts match deliveries, the queue matches the
    /// waiting orders.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut active_by_courier: BTreeMap<CourierId, Vec<&OrderId>> = BTreeMap::new();
        let mut completed_by_courier: BTreeMap<CourierId, i64> = BTreeMap::new();
        for (order, d) in &self.deliveries {
            let state = self.orders.get(order);
            if d.completed_at.is_some() != d.completed_by.is_some() {
                return Err(format!(
                    "delivery of {order} completed at {:?} by {:?}",
                    d.completed_at, d.completed_by
                ));
            }
            // The deadline pass stamps its completions with the deadline.
            if d.completed_by == Some(CompletedBy::Deadline) && d.completed_at != Some(d.deadline) {
                return Err(format!(
                    "delivery of {order} completed by its deadline {} at {:?}",
                    d.deadline, d.completed_at
                ));
            }
            match d.completed_at {
                None => {
                    active_by_courier.entry(d.courier).or_default().push(order);
                    if state != Some(&OrderState::Assigned(d.courier)) {
                        return Err(format!(
                            "active delivery of {order} by courier {} but the order is {state:?}",
                            d.courier
                        ));
                    }
                }
                Some(_) => {
                    *completed_by_courier.entry(d.courier).or_default() += 1;
                    if state != Some(&OrderState::Completed(Some(d.courier))) {
                        return Err(format!(
                            "completed delivery of {order} but the order is {state:?}"
                        ));
                    }
                }
            }
        }
        for (order, state) in &self.orders {
            let delivery = self.deliveries.get(order);
            let ok = match state {
                OrderState::Assigned(c) => {
                    delivery.is_some_and(|d| d.courier == *c && d.completed_at.is_none())
                }
                OrderState::Completed(Some(c)) => {
                    delivery.is_some_and(|d| d.courier == *c && d.completed_at.is_some())
                }
                _ => delivery.is_none(),
            };
            if !ok {
                return Err(format!(
                    "order {order} is {state:?} but its delivery is {delivery:?}"
                ));
            }
        }
        for c in &self.couriers {
            let active = active_by_courier.get(&c.id).map_or(0, Vec::len);
            let expected = match c.status {
                CourierStatus::Busy => active == 1,
                CourierStatus::Available => active == 0,
                CourierStatus::Paused => active <= 1,
            };
            if !expected {
                return Err(format!(
                    "courier {} is {} with {active} active orders",
                    c.id, c.status
                ));
            }
            if c.active_order.as_ref()
                != active_by_courier
                    .get(&c.id)
                    .and_then(|v| v.first().copied())
            {
                return Err(format!("courier {} reports a wrong active order", c.id));
            }
            let due = c
                .active_order
                .as_ref()
                .and_then(|o| self.deliveries.get(o))
                .map(|d| d.deadline);
            if c.deadline != due {
                return Err(format!("courier {} reports a wrong deadline", c.id));
            }
            let done = completed_by_courier.get(&c.id).copied().unwrap_or(0);
            if c.completed_deliveries != done {
                return Err(format!(
                    "courier {} counts {} deliveries, {done} are completed",
                    c.id, c.completed_deliveries
                ));
            }
        }
        let waiting: BTreeSet<&OrderId> = self
            .orders
            .iter()
            .filter(|(_, s)| **s == OrderState::Waiting)
            .map(|(o, _)| o)
            .collect();
        if waiting != self.waiting.iter().collect() || waiting.len() != self.waiting.len() {
            return Err("the waiting queue does not match the waiting orders".into());
        }
        Ok(())
    }

    /// Completed deliveries per courier id: the statistics.
    pub fn statistics(&self) -> BTreeMap<CourierId, i64> {
        self.couriers
            .iter()
            .map(|c| (c.id, c.completed_deliveries))
            .collect()
    }
}
