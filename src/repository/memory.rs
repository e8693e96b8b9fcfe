//! The in-memory fake: the same contract as PostgreSQL, for `cargo test` without services and
//! as the model the fault harness compares the database with. One mutex serialises
//! transactions; each runs on a copy of the state that replaces the original only on success.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::{
    BatchOutline, CourierDelivery, CourierPatch, CourierRecord, CourierRemoval, CourierRepository,
    CourierView, DeliveryView, FleetDirectory, FleetGauges, OrderState, OrderView, OverdueDelivery,
    QueueView, RepoError, Snapshot, StorageTx, WaitingOrder,
};
use crate::domain::{
    CompletedBy, CourierId, CourierRank, CourierStatus, NewCourier, OrderId, QueueKey,
};

/// The fake repository. Cheap to create; starts empty.
#[derive(Debug, Default)]
pub struct MemoryRepository {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Clone)]
struct CourierRow {
    view: CourierView,
    available_since: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct OrderRow {
    state: OrderState,
    /// Place in the waiting queue while `state` is `Waiting`: when the order was created, then
    /// its arrival.
    waiting_seq: Option<QueueKey<u64>>,
}

#[derive(Debug, Clone, Default)]
struct MemoryState {
    couriers: BTreeMap<CourierId, CourierRow>,
    orders: HashMap<OrderId, OrderRow>,
    deliveries: BTreeMap<OrderId, DeliveryView>,
    /// The last courier id handed out.
    next_courier_id: i64,
    /// The last place in the waiting queue handed out.
    next_waiting_seq: u64,
    /// When each delivery was assigned by the wall clock (PostgreSQL: `assigned_on`).
    assigned_on: HashMap<OrderId, DateTime<Utc>>,
}

impl MemoryState {
    /// Whether an active delivery is overdue at `now` (see
    /// `StorageTx::lock_overdue_deliveries`).
    fn overdue(&self, order: &OrderId, d: &DeliveryView, now: DateTime<Utc>) -> bool {
        let held_since = self
            .assigned_on
            .get(order)
            .copied()
            .unwrap_or(d.assigned_at);
        d.completed_at.is_none()
            && d.deadline <= now
            && held_since + (d.deadline - d.assigned_at) <= now
    }
}

impl MemoryRepository {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A panic inside a test transaction poisons the mutex; the state it guards was a copy,
        // so the original is still consistent and safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CourierRepository for MemoryRepository {
    fn transaction<T>(
        &self,
        work: &mut dyn FnMut(&mut dyn StorageTx) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let mut guard = self.lock();
        let mut copy = guard.clone();
        let result = work(&mut copy)?;
        *guard = copy;
        Ok(result)
    }

    fn snapshot(&self) -> Result<Snapshot, RepoError> {
        let state = self.lock();
        let mut waiting: Vec<(QueueKey<u64>, OrderId)> = state
            .orders
            .iter()
            .filter_map(|(id, row)| row.waiting_seq.map(|seq| (seq, id.clone())))
            .collect();
        waiting.sort();
        Ok(Snapshot {
            couriers: state.couriers.values().map(|c| c.view.clone()).collect(),
            orders: state
                .orders
                .iter()
                .filter(|(_, row)| row.state != OrderState::Unseen)
                .map(|(id, row)| (id.clone(), row.state.clone()))
                .collect(),
            deliveries: state.deliveries.clone(),
            waiting: waiting.into_iter().map(|(_, id)| id).collect(),
        })
    }

    fn fleet(&self) -> Result<FleetGauges, RepoError> {
        Ok(self.lock().fleet())
    }

    fn count_overdue(&self, now: DateTime<Utc>) -> Result<i64, RepoError> {
        let state = self.lock();
        let n = state
            .deliveries
            .values()
            .filter(|d| d.completed_at.is_none() && d.deadline <= now)
            .count();
        Ok(n as i64)
    }

    fn has_waiting_beside_available(&self) -> Result<bool, RepoError> {
        let f = self.lock().fleet();
        Ok(f.waiting_orders > 0 && f.available > 0)
    }
}

impl FleetDirectory for MemoryRepository {
    fn couriers(&self) -> Result<Vec<CourierView>, RepoError> {
        Ok(self
            .lock()
            .couriers
            .values()
            .map(|c| c.view.clone())
            .collect())
    }

    fn courier(&self, id: CourierId) -> Result<Option<CourierView>, RepoError> {
        Ok(self.lock().couriers.get(&id).map(|c| c.view.clone()))
    }

    fn order(&self, order: &OrderId) -> Result<Option<OrderView>, RepoError> {
        let state = self.lock();
        Ok(state
            .orders
            .get(order)
            .filter(|row| row.state != OrderState::Unseen)
            .map(|row| OrderView {
                state: row.state.clone(),
                delivery: state.deliveries.get(order).cloned(),
            }))
    }

    fn deliveries(
        &self,
        courier: CourierId,
        limit: usize,
    ) -> Result<Vec<CourierDelivery>, RepoError> {
        let state = self.lock();
        let mut mine: Vec<CourierDelivery> = state
            .deliveries
            .iter()
            .filter(|(_, d)| d.courier == courier)
            .map(|(order, d)| CourierDelivery {
                order: order.clone(),
                delivery: d.clone(),
            })
            .collect();
        // The latest first; the order id breaks ties, as in SQL.
        mine.sort_by(|a, b| {
            (b.delivery.assigned_at, &b.order).cmp(&(a.delivery.assigned_at, &a.order))
        });
        mine.truncate(limit);
        Ok(mine)
    }

    fn queue(&self, limit: usize) -> Result<QueueView, RepoError> {
        let state = self.lock();
        let mut waiting: Vec<(QueueKey<u64>, WaitingOrder)> = state
            .orders
            .iter()
            .filter_map(|(id, row)| {
                let place = row.waiting_seq?;
                Some((
                    place,
                    WaitingOrder {
                        order: id.clone(),
                        since: place.created_at,
                    },
                ))
            })
            .collect();
        waiting.sort_by_key(|(seq, _)| *seq);
        Ok(QueueView {
            count: waiting.len() as i64,
            orders: waiting.into_iter().take(limit).map(|(_, w)| w).collect(),
        })
    }

    fn update_courier(
        &self,
        id: CourierId,
        patch: &CourierPatch,
    ) -> Result<Option<CourierView>, RepoError> {
        let mut state = self.lock();
        if let Some(phone) = &patch.phone {
            if state
                .couriers
                .values()
                .any(|c| c.view.id != id && &c.view.phone == phone)
            {
                return Err(RepoError::Conflict(format!(
                    "phone {phone} belongs to another courier"
                )));
            }
        }
        let Some(row) = state.couriers.get_mut(&id) else {
            return Ok(None);
        };
        if let Some(name) = &patch.name {
            row.view.name = name.clone();
        }
        if let Some(phone) = &patch.phone {
            row.view.phone = phone.clone();
        }
        if let Some(transport) = patch.transport {
            row.view.transport = transport;
        }
        Ok(Some(row.view.clone()))
    }

    fn remove_courier(&self, id: CourierId) -> Result<CourierRemoval, RepoError> {
        let mut state = self.lock();
        let Some(row) = state.couriers.get(&id) else {
            return Ok(CourierRemoval::NotFound);
        };
        if let Some(order) = &row.view.active_order {
            return Ok(CourierRemoval::Carrying(order.clone()));
        }
        state.couriers.remove(&id);
        state.deliveries.retain(|_, d| d.courier != id);
        for row in state.orders.values_mut() {
            if row.state == OrderState::Completed(Some(id)) {
                row.state = OrderState::Completed(None);
            }
        }
        Ok(CourierRemoval::Removed)
    }
}

impl MemoryState {
    fn fleet(&self) -> FleetGauges {
        let mut f = FleetGauges {
            waiting_orders: self
                .orders
                .values()
                .filter(|o| o.waiting_seq.is_some())
                .count() as i64,
            ..FleetGauges::default()
        };
        for c in self.couriers.values() {
            *match c.view.status {
                CourierStatus::Available => &mut f.available,
                CourierStatus::Busy => &mut f.busy,
                CourierStatus::Paused => &mut f.paused,
            } += 1;
        }
        f
    }

    fn record(&self, id: CourierId) -> Option<CourierRecord> {
        self.couriers.get(&id).map(|c| CourierRecord {
            id,
            status: c.view.status,
            transport: c.view.transport,
            active_order: c.view.active_order.clone(),
        })
    }

    fn courier_mut(&mut self, id: CourierId) -> Result<&mut CourierRow, RepoError> {
        self.couriers
            .get_mut(&id)
            .ok_or_else(|| RepoError::Unexpected(format!("courier {id} does not exist")))
    }

    /// Stores an order's state; `Waiting` joins the queue as created at `at`.
    fn put_order(&mut self, order: &OrderId, state: OrderState, at: DateTime<Utc>) {
        let waiting_seq = if state == OrderState::Waiting {
            self.next_waiting_seq += 1;
            Some(QueueKey {
                created_at: at,
                arrival: self.next_waiting_seq,
            })
        } else {
            None
        };
        self.orders
            .insert(order.clone(), OrderRow { state, waiting_seq });
    }
}

impl StorageTx for MemoryState {
    /// Nothing to lock: the transaction holds the store's one mutex from its first step to its
    /// last (see [`MemoryRepository`]), so no other transaction can touch what it outlines.
    fn lock_batch(&mut self, _outline: &BatchOutline) -> Result<(), RepoError> {
        Ok(())
    }

    fn lock_order(&mut self, order: &OrderId) -> Result<OrderState, RepoError> {
        Ok(self
            .orders
            .get(order)
            .map_or(OrderState::Unseen, |row| row.state.clone()))
    }

    fn set_order_state(
        &mut self,
        order: &OrderId,
        state: &OrderState,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        self.put_order(order, state.clone(), at);
        Ok(())
    }

    fn take_available_courier(&mut self) -> Result<Option<CourierRecord>, RepoError> {
        let best = self
            .couriers
            .values()
            .filter(|c| c.view.status == CourierStatus::Available)
            .min_by_key(|c| CourierRank {
                completed_deliveries: c.view.completed_deliveries,
                available_since: c.available_since,
                id: c.view.id,
            })
            .map(|c| c.view.id);
        Ok(best.and_then(|id| self.record(id)))
    }

    fn lock_overdue_deliveries(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OverdueDelivery>, RepoError> {
        let mut overdue: Vec<OverdueDelivery> = self
            .deliveries
            .iter()
            .filter(|(order, d)| self.overdue(order, d, now))
            .map(|(order, d)| OverdueDelivery {
                order: order.clone(),
                courier: d.courier,
                deadline: d.deadline,
            })
            .collect();
        overdue.sort_by(|a, b| (a.deadline, &a.order).cmp(&(b.deadline, &b.order)));
        overdue.truncate(limit);
        Ok(overdue)
    }

    fn lock_courier(&mut self, id: CourierId) -> Result<Option<CourierRecord>, RepoError> {
        Ok(self.record(id))
    }

    fn next_waiting_order(&mut self) -> Result<Option<OrderId>, RepoError> {
        Ok(self
            .orders
            .iter()
            .filter_map(|(id, row)| row.waiting_seq.map(|seq| (seq, id)))
            .min()
            .map(|(_, id)| id.clone()))
    }

    fn start_delivery(
        &mut self,
        order: &OrderId,
        courier: &CourierRecord,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        if self.deliveries.contains_key(order) {
            return Err(RepoError::Unexpected(format!(
                "order {order} already has a delivery"
            )));
        }
        let row = self.courier_mut(courier.id)?;
        if row.view.active_order.is_some() {
            return Err(RepoError::Unexpected(format!(
                "courier {} already carries an order",
                courier.id
            )));
        }
        let deadline = at + courier.transport.delivery_window();
        self.assigned_on.insert(order.clone(), Utc::now());
        let row = self.courier_mut(courier.id)?;
        row.view.status = CourierStatus::Busy;
        row.view.active_order = Some(order.clone());
        row.view.deadline = Some(deadline);
        self.deliveries.insert(
            order.clone(),
            DeliveryView {
                courier: courier.id,
                assigned_at: at,
                deadline,
                completed_at: None,
                completed_by: None,
            },
        );
        self.put_order(order, OrderState::Assigned(courier.id), at);
        Ok(())
    }

    fn finish_delivery(
        &mut self,
        order: &OrderId,
        courier: CourierId,
        at: DateTime<Utc>,
        by: CompletedBy,
    ) -> Result<(), RepoError> {
        let delivery = self
            .deliveries
            .get_mut(order)
            .ok_or_else(|| RepoError::Unexpected(format!("order {order} has no delivery")))?;
        delivery.completed_at = Some(at);
        delivery.completed_by = Some(by);
        let row = self.courier_mut(courier)?;
        row.view.completed_deliveries += 1;
        row.view.active_order = None;
        row.view.deadline = None;
        self.put_order(order, OrderState::Completed(Some(courier)), at);
        Ok(())
    }

    fn drop_delivery(&mut self, order: &OrderId, at: DateTime<Utc>) -> Result<(), RepoError> {
        if let Some(d) = self.deliveries.remove(order) {
            let row = self.courier_mut(d.courier)?;
            row.view.active_order = None;
            row.view.deadline = None;
        }
        self.put_order(order, OrderState::Cancelled, at);
        Ok(())
    }

    fn set_courier_status(
        &mut self,
        id: CourierId,
        status: CourierStatus,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let row = self.courier_mut(id)?;
        if status == CourierStatus::Available {
            row.available_since = at;
        }
        row.view.status = status;
        Ok(())
    }

    fn insert_courier(
        &mut self,
        courier: &NewCourier,
        at: DateTime<Utc>,
    ) -> Result<CourierRecord, RepoError> {
        self.next_courier_id += 1;
        let id = CourierId(self.next_courier_id);
        if self
            .couriers
            .values()
            .any(|c| c.view.phone == courier.phone)
        {
            return Err(RepoError::Conflict(format!(
                "phone {} belongs to another courier",
                courier.phone
            )));
        }
        self.couriers.insert(
            id,
            CourierRow {
                view: CourierView {
                    id,
                    name: courier.name.clone(),
                    phone: courier.phone.clone(),
                    status: CourierStatus::Paused,
                    transport: courier.transport,
                    completed_deliveries: 0,
                    active_order: None,
                    deadline: None,
                },
                available_since: at,
            },
        );
        self.record(id)
            .ok_or_else(|| RepoError::Unexpected("inserted courier vanished".into()))
    }
}
