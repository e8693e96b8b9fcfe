//! The rows one PostgreSQL transaction holds locks on, and what it has changed in them but not
//! yet written. Steps read and change these rows in memory; [`HeldRows::take_changes`] nets the
//! changes into a few arrays that `PgTx` writes with set-based statements. Sound because every
//! row here is locked by the transaction: nobody else can change it in the meantime.
//!
//! Picks ("the best free courier", "the longest-waiting order") are answered here only while the
//! rows locked up front provably contain the answer (see [`Coverage`]); otherwise `PgTx` asks
//! the database, after writing what is pending so the answer sees this transaction's changes.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::{CompletedBy, CourierId, CourierStatus, OrderId, TransportType};
use crate::repository::{CourierRecord, OrderState, RepoError};

/// An order row as this transaction sees it.
#[derive(Debug, Clone)]
pub(super) struct HeldOrder {
    /// Its state.
    pub state: OrderState,
    /// Its place in the waiting queue, while waiting.
    pub queue: QueuePlace,
    /// When it was created, while waiting: the queue's first key.
    pub since: Option<DateTime<Utc>>,
    /// Changed since last written.
    pub dirty: bool,
    /// Has a row in the database (else it is inserted when written).
    pub stored: bool,
}

/// When a waiting order arrived in the FIFO queue: the tie-break between orders created at the
/// same instant (the first key is when the order was created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum QueuePlace {
    /// Already queued in the database (`waiting_seq`). Arrived before every fresh place.
    Stored(i64),
    /// Queued by this transaction, in this order; numbered from the sequence when written.
    Fresh(u64),
}

/// A courier row as this transaction sees it.
#[derive(Debug, Clone)]
pub(super) struct HeldCourier {
    /// Status, transport and the order they carry.
    pub record: CourierRecord,
    /// First key of "which courier is next".
    pub completed_deliveries: i64,
    /// Second key of "which courier is next".
    pub available_since: DateTime<Utc>,
    /// Changed since last written.
    pub dirty: bool,
}

impl HeldCourier {
    fn rank(&self) -> (i64, DateTime<Utc>, CourierId) {
        (
            self.completed_deliveries,
            self.available_since,
            self.record.id,
        )
    }
}

/// A pending change to `courier_orders`, netted over the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeliveryChange {
    /// A new row (perhaps already completed within the transaction).
    Insert(NewDelivery),
    /// An existing active row gets its completion stamp.
    Complete {
        courier: CourierId,
        at: DateTime<Utc>,
        by: CompletedBy,
    },
    /// An existing row disappears.
    Delete,
}

/// A `courier_orders` row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewDelivery {
    /// Who carries it.
    pub courier: CourierId,
    /// When it was assigned.
    pub assigned_at: DateTime<Utc>,
    /// When it is due.
    pub deadline: DateTime<Utc>,
    /// When it was completed, if already.
    pub completed_at: Option<DateTime<Utc>>,
    /// What completed it, if already.
    pub completed_by: Option<CompletedBy>,
}

/// How far the rows locked up front answer a kind of pick without asking the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coverage {
    /// Nothing was locked up front: ask the database.
    Unknown,
    /// The next `n` picks are answered here: `n` rows were asked for and `n` came, and any row
    /// not locked ranks after all of them.
    Next(usize),
    /// Fewer rows came than were asked for: every row there is to pick is held.
    All,
}

impl Coverage {
    /// The coverage after asking for `asked` rows and getting `got`.
    pub fn after_asking(asked: usize, got: usize) -> Self {
        if got < asked {
            Self::All
        } else if asked == 0 {
            Self::Unknown
        } else {
            Self::Next(asked)
        }
    }

    /// Whether a pick may be answered from held rows; counts the pick if so.
    fn answers(&mut self) -> bool {
        match self {
            Self::All => true,
            Self::Next(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Where a pick's answer comes from.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pick<T> {
    /// From the held rows: this, or nothing to pick.
    Held(Option<T>),
    /// The held rows can't tell: ask the database.
    AskDatabase,
}

/// When a waiting order was created (`None` when it is not waiting).
pub(super) type WaitingSince = Option<DateTime<Utc>>;

/// An active delivery to stamp completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Completion {
    /// Which order's delivery.
    pub order: OrderId,
    /// The courier who carried it (the row must still be theirs).
    pub courier: CourierId,
    /// When it was completed.
    pub at: DateTime<Utc>,
    /// What completed it.
    pub by: CompletedBy,
}

/// Net changes, ready to be written as arrays.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// `courier_orders` rows to delete.
    pub deleted: Vec<OrderId>,
    /// Active deliveries to stamp completed.
    pub completed: Vec<Completion>,
    /// Deliveries to insert.
    pub inserted: Vec<(OrderId, NewDelivery)>,
    /// Couriers to write: id, status, completed deliveries, available since.
    pub couriers: Vec<(CourierId, CourierStatus, i64, DateTime<Utc>)>,
    /// Orders to update: id, state, stored queue place (None when fresh or not waiting), when
    /// created (while waiting).
    pub orders: Vec<(OrderId, OrderState, Option<i64>, WaitingSince)>,
    /// Orders seen for the first time, to insert: id, state, when created (while waiting).
    pub new_orders: Vec<(OrderId, OrderState, WaitingSince)>,
    /// Orders that joined the queue, in queue order: numbered from the sequence on write.
    pub fresh_waiting: Vec<OrderId>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.deleted.is_empty()
            && self.completed.is_empty()
            && self.inserted.is_empty()
            && self.couriers.is_empty()
            && self.orders.is_empty()
            && self.new_orders.is_empty()
    }
}

/// The rows a transaction holds, and its unwritten changes.
#[derive(Debug)]
pub(super) struct HeldRows {
    orders: HashMap<OrderId, HeldOrder>,
    couriers: BTreeMap<CourierId, HeldCourier>,
    deliveries: BTreeMap<OrderId, DeliveryChange>,
    next_fresh: u64,
    /// Free couriers locked up front.
    pub free_couriers: Coverage,
    /// Waiting orders locked up front.
    pub waiting_orders: Coverage,
}

impl Default for HeldRows {
    fn default() -> Self {
        Self {
            orders: HashMap::new(),
            couriers: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            next_fresh: 0,
            free_couriers: Coverage::Unknown,
            waiting_orders: Coverage::Unknown,
        }
    }
}

fn not_locked(order: &OrderId) -> RepoError {
    RepoError::Unexpected(format!(
        "order {order} was not locked before it was changed"
    ))
}

impl HeldRows {
    /// Holds an order as read from the database. A row already held is kept as it is: it may
    /// carry changes, and the database can't have changed it.
    pub fn hold_order(
        &mut self,
        id: OrderId,
        state: OrderState,
        waiting_seq: Option<i64>,
        waiting_since: Option<DateTime<Utc>>,
    ) {
        self.orders.entry(id).or_insert(HeldOrder {
            // Read only while the order waits, and a waiting row always has its place.
            queue: QueuePlace::Stored(waiting_seq.unwrap_or(i64::MAX)),
            since: waiting_since,
            state,
            dirty: false,
            stored: true,
        });
    }

    /// Holds an order the database has no row for: [`OrderState::Unseen`] until a step sets
    /// its state, inserted when written. (Nobody else holds it either: if another transaction
    /// inserts it meanwhile, writing it fails and the batch is retried.)
    pub fn hold_new_order(&mut self, id: OrderId) {
        self.orders.entry(id).or_insert(HeldOrder {
            state: OrderState::Unseen,
            queue: QueuePlace::Stored(i64::MAX),
            since: None,
            dirty: false,
            stored: false,
        });
    }

    /// Holds a courier as read from the database (kept as is if already held).
    pub fn hold_courier(
        &mut self,
        record: CourierRecord,
        completed_deliveries: i64,
        available_since: DateTime<Utc>,
    ) {
        self.couriers.entry(record.id).or_insert(HeldCourier {
            record,
            completed_deliveries,
            available_since,
            dirty: false,
        });
    }

    /// An order's state, if held.
    pub fn order(&self, id: &OrderId) -> Option<&OrderState> {
        self.orders.get(id).map(|o| &o.state)
    }

    /// A courier, if held.
    pub fn courier(&self, id: CourierId) -> Option<&CourierRecord> {
        self.couriers.get(&id).map(|c| &c.record)
    }

    /// The couriers of held orders that are assigned, and not held themselves.
    pub fn unheld_couriers_of_orders(&self) -> Vec<CourierId> {
        let mut ids: Vec<CourierId> = self
            .orders
            .values()
            .filter_map(|o| match o.state {
                OrderState::Assigned(c) if !self.couriers.contains_key(&c) => Some(c),
                _ => None,
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The best free courier held, when the held rows can tell.
    pub fn pick_free_courier(&mut self) -> Pick<CourierRecord> {
        if !self.free_couriers.answers() {
            return Pick::AskDatabase;
        }
        Pick::Held(
            self.couriers
                .values()
                .filter(|c| c.record.status == CourierStatus::Available)
                .min_by_key(|c| c.rank())
                .map(|c| c.record.clone()),
        )
    }

    /// The first waiting order in the queue held (created earliest, then arrived first), when
    /// the held rows can tell.
    pub fn pick_waiting_order(&mut self) -> Pick<OrderId> {
        if !self.waiting_orders.answers() {
            return Pick::AskDatabase;
        }
        Pick::Held(
            self.orders
                .iter()
                .filter(|(_, o)| o.state == OrderState::Waiting)
                .min_by_key(|(_, o)| (o.since, o.queue))
                .map(|(id, _)| id.clone()),
        )
    }

    fn order_mut(&mut self, id: &OrderId) -> Result<&mut HeldOrder, RepoError> {
        self.orders.get_mut(id).ok_or_else(|| not_locked(id))
    }

    fn courier_mut(&mut self, id: CourierId) -> Result<&mut HeldCourier, RepoError> {
        self.couriers
            .get_mut(&id)
            .ok_or_else(|| RepoError::Unexpected(format!("courier {id} was not locked")))
    }

    /// Records a state that involves no delivery (`Waiting` joins the queue, ranked by `at`,
    /// when the order was created).
    pub fn set_order_state(
        &mut self,
        id: &OrderId,
        state: &OrderState,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let joins_queue = *state == OrderState::Waiting;
        let fresh = self.next_fresh;
        let order = self.order_mut(id)?;
        if joins_queue {
            order.queue = QueuePlace::Fresh(fresh);
            order.since = Some(at);
        }
        order.state = state.clone();
        order.dirty = true;
        self.next_fresh += u64::from(joins_queue);
        Ok(())
    }

    /// The courier takes the order. Both must be held.
    pub fn start_delivery(
        &mut self,
        id: &OrderId,
        courier: CourierId,
        transport: TransportType,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        if matches!(self.deliveries.get(id), Some(DeliveryChange::Insert(_))) {
            return Err(RepoError::Unexpected(format!(
                "order {id} already has a delivery"
            )));
        }
        let held = self.courier_mut(courier)?;
        if let Some(carried) = &held.record.active_order {
            return Err(RepoError::Unexpected(format!(
                "courier {courier} already carries order {carried}"
            )));
        }
        held.record.status = CourierStatus::Busy;
        held.record.active_order = Some(id.clone());
        held.dirty = true;
        let order = self.order_mut(id)?;
        order.state = OrderState::Assigned(courier);
        order.dirty = true;
        self.deliveries.insert(
            id.clone(),
            DeliveryChange::Insert(NewDelivery {
                courier,
                assigned_at: at,
                deadline: at + transport.delivery_window(),
                completed_at: None,
                completed_by: None,
            }),
        );
        Ok(())
    }

    /// The delivery is done and counts for the courier. Both must be held.
    pub fn finish_delivery(
        &mut self,
        id: &OrderId,
        courier: CourierId,
        at: DateTime<Utc>,
        by: CompletedBy,
    ) -> Result<(), RepoError> {
        let order = self.order_mut(id)?;
        if order.state != OrderState::Assigned(courier) {
            return Err(RepoError::Unexpected(format!(
                "order {id} has no active delivery by courier {courier}"
            )));
        }
        order.state = OrderState::Completed(Some(courier));
        order.dirty = true;
        let held = self.courier_mut(courier)?;
        held.completed_deliveries += 1;
        held.record.active_order = None;
        held.dirty = true;
        match self.deliveries.get_mut(id) {
            Some(DeliveryChange::Insert(new)) => {
                new.completed_at = Some(at);
                new.completed_by = Some(by);
            }
            _ => {
                self.deliveries
                    .insert(id.clone(), DeliveryChange::Complete { courier, at, by });
            }
        }
        Ok(())
    }

    /// The delivery disappears and the order is cancelled. The order must be held; its courier
    /// is told they carry nothing if held (otherwise the database will say so once written).
    pub fn drop_delivery(&mut self, id: &OrderId) -> Result<(), RepoError> {
        let order = self.order_mut(id)?;
        let previous = std::mem::replace(&mut order.state, OrderState::Cancelled);
        order.dirty = true;
        if let OrderState::Assigned(courier) = previous {
            if let Some(held) = self.couriers.get_mut(&courier) {
                held.record.active_order = None;
            }
            match self.deliveries.get(id) {
                Some(DeliveryChange::Insert(_)) => {
                    self.deliveries.remove(id);
                }
                _ => {
                    self.deliveries.insert(id.clone(), DeliveryChange::Delete);
                }
            }
        }
        Ok(())
    }

    /// Sets a held courier's status; `Available` restarts their clock.
    pub fn set_courier_status(
        &mut self,
        id: CourierId,
        status: CourierStatus,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let held = self.courier_mut(id)?;
        if status == CourierStatus::Available {
            held.available_since = at;
        }
        held.record.status = status;
        held.dirty = true;
        Ok(())
    }

    /// Takes the net changes since the last call, leaving every row clean.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        for (id, change) in std::mem::take(&mut self.deliveries) {
            match change {
                DeliveryChange::Insert(new) => changes.inserted.push((id, new)),
                DeliveryChange::Complete { courier, at, by } => {
                    changes.completed.push(Completion {
                        order: id,
                        courier,
                        at,
                        by,
                    })
                }
                DeliveryChange::Delete => changes.deleted.push(id),
            }
        }
        for held in self.couriers.values_mut().filter(|c| c.dirty) {
            held.dirty = false;
            changes.couriers.push((
                held.record.id,
                held.record.status,
                held.completed_deliveries,
                held.available_since,
            ));
        }
        let mut fresh: Vec<(u64, OrderId)> = Vec::new();
        for (id, held) in self.orders.iter_mut().filter(|(_, o)| o.dirty) {
            held.dirty = false;
            let stored = match (&held.state, held.queue) {
                (OrderState::Waiting, QueuePlace::Stored(seq)) => Some(seq),
                (OrderState::Waiting, QueuePlace::Fresh(rank)) => {
                    fresh.push((rank, id.clone()));
                    None
                }
                _ => None,
            };
            let since = held.since.filter(|_| held.state == OrderState::Waiting);
            if held.stored {
                changes
                    .orders
                    .push((id.clone(), held.state.clone(), stored, since));
            } else {
                held.stored = true;
                changes
                    .new_orders
                    .push((id.clone(), held.state.clone(), since));
            }
        }
        fresh.sort();
        changes.fresh_waiting = fresh.into_iter().map(|(_, id)| id).collect();
        changes.orders.sort_by(|a, b| a.0.cmp(&b.0));
        changes.new_orders.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> OrderId {
        OrderId::parse(s).expect("id")
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time")
    }

    fn courier(rows: &mut HeldRows, n: i64, completed: i64, since: i64) {
        rows.hold_courier(
            CourierRecord {
                id: CourierId(n),
                status: CourierStatus::Available,
                transport: TransportType::Car,
                active_order: None,
            },
            completed,
            at(since),
        );
    }

    #[test]
    fn picks_the_courier_with_fewest_deliveries_then_longest_free() {
        let mut rows = HeldRows {
            free_couriers: Coverage::after_asking(3, 3),
            ..HeldRows::default()
        };
        courier(&mut rows, 1, 2, 0);
        courier(&mut rows, 2, 1, 5);
        courier(&mut rows, 3, 1, 3);
        assert_eq!(
            rows.pick_free_courier(),
            Pick::Held(rows.courier(CourierId(3)).cloned())
        );
    }

    #[test]
    fn answers_only_as_many_picks_as_were_covered() {
        let mut rows = HeldRows {
            free_couriers: Coverage::after_asking(1, 1),
            ..HeldRows::default()
        };
        courier(&mut rows, 1, 0, 0);
        assert!(matches!(rows.pick_free_courier(), Pick::Held(Some(_))));
        assert_eq!(rows.pick_free_courier(), Pick::AskDatabase);
        let mut all = HeldRows {
            free_couriers: Coverage::after_asking(4, 1),
            ..HeldRows::default()
        };
        courier(&mut all, 1, 0, 0);
        for _ in 0..10 {
            assert!(matches!(all.pick_free_courier(), Pick::Held(Some(_))));
        }
        assert_eq!(HeldRows::default().pick_free_courier(), Pick::AskDatabase);
    }

    #[test]
    fn stored_waiting_orders_go_before_fresh_ones_in_queue_order() {
        let mut rows = HeldRows {
            waiting_orders: Coverage::All,
            ..HeldRows::default()
        };
        rows.hold_new_order(id("new-1"));
        rows.hold_new_order(id("new-2"));
        rows.set_order_state(&id("new-2"), &OrderState::Waiting, at(5))
            .expect("held");
        rows.set_order_state(&id("new-1"), &OrderState::Waiting, at(5))
            .expect("held");
        rows.hold_order(id("old"), OrderState::Waiting, Some(7), Some(at(5)));
        assert_eq!(rows.pick_waiting_order(), Pick::Held(Some(id("old"))));
        rows.set_order_state(&id("old"), &OrderState::Cancelled, at(9))
            .expect("held");
        assert_eq!(rows.pick_waiting_order(), Pick::Held(Some(id("new-2"))));
        let changes = rows.take_changes();
        assert_eq!(changes.fresh_waiting, vec![id("new-2"), id("new-1")]);
        assert_eq!(changes.orders.len(), 1);
        assert_eq!(changes.new_orders.len(), 2);
        assert!(rows.take_changes().is_empty());
    }

    #[test]
    fn the_queue_serves_the_order_created_first_whatever_its_arrival() {
        let mut rows = HeldRows {
            waiting_orders: Coverage::All,
            ..HeldRows::default()
        };
        rows.hold_order(
            id("stored-late"),
            OrderState::Waiting,
            Some(1),
            Some(at(30)),
        );
        rows.hold_order(id("stored-tie"), OrderState::Waiting, Some(2), Some(at(10)));
        for o in ["fresh-early", "fresh-tie"] {
            rows.hold_new_order(id(o));
        }
        rows.set_order_state(&id("fresh-tie"), &OrderState::Waiting, at(10))
            .expect("held");
        rows.set_order_state(&id("fresh-early"), &OrderState::Waiting, at(5))
            .expect("held");
        let mut served = Vec::new();
        while let Pick::Held(Some(next)) = rows.pick_waiting_order() {
            rows.set_order_state(&next, &OrderState::Cancelled, at(40))
                .expect("held");
            served.push(next.as_str().to_owned());
        }
        // Created at 5, then the two created at 10 by arrival (stored before fresh), then 30.
        assert_eq!(
            served,
            ["fresh-early", "stored-tie", "fresh-tie", "stored-late"]
        );
    }

    #[test]
    fn a_delivery_started_and_ended_in_one_transaction_nets_out() {
        let mut rows = HeldRows::default();
        courier(&mut rows, 1, 0, 0);
        for o in ["done", "gone"] {
            rows.hold_new_order(id(o));
        }
        rows.start_delivery(&id("done"), CourierId(1), TransportType::Car, at(10))
            .expect("start");
        assert!(rows
            .start_delivery(&id("gone"), CourierId(1), TransportType::Car, at(10))
            .is_err());
        rows.finish_delivery(&id("done"), CourierId(1), at(20), CompletedBy::Event)
            .expect("finish");
        rows.start_delivery(&id("gone"), CourierId(1), TransportType::Car, at(30))
            .expect("start");
        rows.drop_delivery(&id("gone")).expect("drop");
        let changes = rows.take_changes();
        assert_eq!(changes.inserted.len(), 1);
        assert_eq!(changes.inserted[0].1.completed_at, Some(at(20)));
        assert!(changes.deleted.is_empty() && changes.completed.is_empty());
        assert_eq!(
            changes.couriers,
            vec![(CourierId(1), CourierStatus::Busy, 1, at(0))]
        );
    }

    #[test]
    fn steps_on_rows_not_held_are_refused() {
        let mut rows = HeldRows::default();
        assert!(rows
            .set_order_state(&id("x"), &OrderState::Cancelled, at(0))
            .is_err());
        assert!(rows
            .set_courier_status(CourierId(9), CourierStatus::Paused, at(0))
            .is_err());
    }
}
