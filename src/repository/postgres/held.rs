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

use crate::domain::{
    CompletedBy, CourierId, CourierRank, CourierStatus, OrderId, QueueKey, TransportType,
};
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
    /// Has a row in the database; else it is inserted when written (see
    /// [`HeldRows::take_changes`]).
    pub stored: bool,
}

impl HeldOrder {
    /// Its place in the queue (meaningful while it waits).
    fn queue_key(&self) -> QueueKey<QueuePlace> {
        QueueKey {
            // A waiting order always has its creation time; none would sort first.
            created_at: self.since.unwrap_or(DateTime::<Utc>::MIN_UTC),
            arrival: self.queue,
        }
    }
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
    fn rank(&self) -> CourierRank {
        CourierRank {
            completed_deliveries: self.completed_deliveries,
            available_since: self.available_since,
            id: self.record.id,
        }
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

/// How far the rows locked up front answer a kind of pick without asking the database. `K` is
/// the pick's order: [`CourierRank`] for free couriers, [`QueueKey`] for waiting orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coverage<K> {
    /// Nothing was locked up front: ask the database.
    Unknown,
    /// As many rows came as were asked for, the last of them at this key: any row not held here
    /// (and not held by another transaction) comes after it. So a pick whose best held row is
    /// at or before it is answered here, however many picks came before or rows left the pick
    /// (an order ended while waiting) meanwhile.
    Upto(K),
    /// Fewer rows came than were asked for: every row there is to pick is held.
    All,
}

impl<K: Ord> Coverage<K> {
    /// The coverage after asking for `asked` rows and getting `got`, the last at `last`.
    pub fn after_asking(asked: usize, got: usize, last: Option<K>) -> Self {
        match last {
            _ if got < asked => Self::All,
            Some(last) if asked > 0 => Self::Upto(last),
            _ => Self::Unknown,
        }
    }

    /// Whether a pick whose best held row is at `best` may be answered from the held rows.
    fn answers(&self, best: Option<&K>) -> bool {
        match self {
            Self::All => true,
            Self::Upto(last) => best.is_some_and(|b| b <= last),
            Self::Unknown => false,
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

/// A courier row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CourierWrite {
    /// Which courier.
    pub id: CourierId,
    /// Their status.
    pub status: CourierStatus,
    /// Their completed deliveries: the rank's first key.
    pub completed_deliveries: i64,
    /// Since when they are available: the rank's second key.
    pub available_since: DateTime<Utc>,
}

/// An order row to update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OrderWrite {
    /// Which order.
    pub id: OrderId,
    /// Its state.
    pub state: OrderState,
    /// Its stored queue place (`waiting_seq`), while waiting; `None` when it is fresh (numbered
    /// from the sequence on write, see [`Changes::fresh_waiting`]) or not waiting.
    pub queue_seq: Option<i64>,
    /// When it was created, while waiting: the queue's first key.
    pub waiting_since: WaitingSince,
}

/// A `courier_orders` row to insert, with its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Insertion {
    /// Which order.
    pub order: OrderId,
    /// The row.
    pub delivery: NewDelivery,
}

/// Net changes, ready to be written as arrays.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// `courier_orders` rows to delete.
    pub deleted: Vec<OrderId>,
    /// Active deliveries to stamp completed.
    pub completed: Vec<Completion>,
    /// Deliveries to insert.
    pub inserted: Vec<Insertion>,
    /// Couriers to write.
    pub couriers: Vec<CourierWrite>,
    /// Orders to update.
    pub orders: Vec<OrderWrite>,
    /// Orders to insert, in id order (the order every transaction inserts new orders in).
    pub new_orders: Vec<OrderWrite>,
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
    pub free_couriers: Coverage<CourierRank>,
    /// Waiting orders locked up front.
    pub waiting_orders: Coverage<QueueKey<QueuePlace>>,
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

    /// Holds an order the database has no row for: [`OrderState::Unseen`] until a step gives it
    /// a state, inserted when written. Nobody else holds it either: if another transaction
    /// inserts it first, this one's write inserts nothing, fails as transient, and the batch is
    /// applied again.
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
    pub fn pick_free_courier(&self) -> Pick<CourierRecord> {
        let best = self
            .couriers
            .values()
            .filter(|c| c.record.status == CourierStatus::Available)
            .min_by_key(|c| c.rank());
        if !self
            .free_couriers
            .answers(best.map(HeldCourier::rank).as_ref())
        {
            return Pick::AskDatabase;
        }
        Pick::Held(best.map(|c| c.record.clone()))
    }

    /// The first waiting order in the queue held (created earliest, then arrived first), when
    /// the held rows can tell.
    pub fn pick_waiting_order(&self) -> Pick<OrderId> {
        let first = self
            .orders
            .iter()
            .filter(|(_, o)| o.state == OrderState::Waiting)
            .map(|(id, o)| (o.queue_key(), id))
            .min();
        if !self
            .waiting_orders
            .answers(first.as_ref().map(|(key, _)| key))
        {
            return Pick::AskDatabase;
        }
        Pick::Held(first.map(|(_, id)| id.clone()))
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
    ///
    /// Orders without a row are all inserted by the first write, in id order, those no step has
    /// given a state yet as `unseen` (which every reader skips): so each transaction inserts
    /// its new orders in one statement, in one order, and two transactions that found the same
    /// orders new (one `created` read by two instances) wait on each other's inserts in id
    /// order and can't deadlock. Inserting them over several writes, as the steps reached
    /// them, did. (The write never waits on an order committed since it was found missing:
    /// see `WRITE_CHANGES`.) The `last` write (at commit) leaves out orders still `unseen`:
    /// nothing follows it.
    pub fn take_changes(&mut self, last: bool) -> Changes {
        let mut changes = Changes::default();
        for (id, change) in std::mem::take(&mut self.deliveries) {
            match change {
                DeliveryChange::Insert(delivery) => changes.inserted.push(Insertion {
                    order: id,
                    delivery,
                }),
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
            changes.couriers.push(CourierWrite {
                id: held.record.id,
                status: held.record.status,
                completed_deliveries: held.completed_deliveries,
                available_since: held.available_since,
            });
        }
        let mut fresh: Vec<(u64, OrderId)> = Vec::new();
        for (id, held) in self.orders.iter_mut() {
            let unseen = held.state == OrderState::Unseen;
            // No row yet: inserted now, unless still unseen at the last write.
            let insert = !(held.stored || (last && unseen));
            if !held.dirty && !insert {
                continue;
            }
            held.dirty = false;
            let stored = match (&held.state, held.queue) {
                (OrderState::Waiting, QueuePlace::Stored(seq)) => Some(seq),
                (OrderState::Waiting, QueuePlace::Fresh(rank)) => {
                    fresh.push((rank, id.clone()));
                    None
                }
                _ => None,
            };
            let write = OrderWrite {
                id: id.clone(),
                state: held.state.clone(),
                queue_seq: stored,
                waiting_since: held.since.filter(|_| held.state == OrderState::Waiting),
            };
            if held.stored {
                changes.orders.push(write);
            } else {
                held.stored = true;
                changes.new_orders.push(write);
            }
        }
        fresh.sort();
        changes.fresh_waiting = fresh.into_iter().map(|(_, id)| id).collect();
        changes.orders.sort_by(|a, b| a.id.cmp(&b.id));
        changes.new_orders.sort_by(|a, b| a.id.cmp(&b.id));
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
            free_couriers: Coverage::All,
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
    fn answers_only_picks_the_locked_rows_prove() {
        let rank = |n: i64, completed: i64, since: i64| CourierRank {
            completed_deliveries: completed,
            available_since: at(since),
            id: CourierId(n),
        };
        // Courier 1 was the last of those locked: any other free courier ranks after it.
        let mut rows = HeldRows {
            free_couriers: Coverage::after_asking(1, 1, Some(rank(1, 0, 0))),
            ..HeldRows::default()
        };
        courier(&mut rows, 1, 0, 0);
        assert!(matches!(rows.pick_free_courier(), Pick::Held(Some(_))));
        rows.set_courier_status(CourierId(1), CourierStatus::Busy, at(1))
            .expect("held");
        assert_eq!(rows.pick_free_courier(), Pick::AskDatabase);
        // A courier freed by this transaction who ranks after the last one locked: the database
        // may hold a better one.
        courier(&mut rows, 2, 1, 0);
        assert_eq!(rows.pick_free_courier(), Pick::AskDatabase);
        let mut all = HeldRows {
            free_couriers: Coverage::after_asking(4, 1, Some(rank(1, 0, 0))),
            ..HeldRows::default()
        };
        courier(&mut all, 1, 0, 0);
        for _ in 0..10 {
            assert!(matches!(all.pick_free_courier(), Pick::Held(Some(_))));
        }
        assert_eq!(HeldRows::default().pick_free_courier(), Pick::AskDatabase);
    }

    #[test]
    fn an_order_that_left_the_queue_does_not_stand_for_the_rows_behind_it() {
        let key = |seq: i64, since: i64| QueueKey {
            created_at: at(since),
            arrival: QueuePlace::Stored(seq),
        };
        // "head" was the one waiting order locked for a pick; "named" waits too, later in line.
        let mut rows = HeldRows {
            waiting_orders: Coverage::after_asking(1, 1, Some(key(1, 0))),
            ..HeldRows::default()
        };
        rows.hold_order(id("head"), OrderState::Waiting, Some(1), Some(at(0)));
        rows.hold_order(id("named"), OrderState::Waiting, Some(9), Some(at(50)));
        rows.set_order_state(&id("head"), &OrderState::Cancelled, at(60))
            .expect("held");
        // Orders nobody locked may come between the head and "named".
        assert_eq!(rows.pick_waiting_order(), Pick::AskDatabase);
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
        let changes = rows.take_changes(true);
        assert_eq!(changes.fresh_waiting, vec![id("new-2"), id("new-1")]);
        assert_eq!(changes.orders.len(), 1);
        assert_eq!(changes.new_orders.len(), 2);
        assert!(rows.take_changes(true).is_empty());
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
        let changes = rows.take_changes(true);
        assert_eq!(changes.inserted.len(), 1);
        assert_eq!(changes.inserted[0].delivery.completed_at, Some(at(20)));
        assert!(changes.deleted.is_empty() && changes.completed.is_empty());
        assert_eq!(
            changes.couriers,
            vec![CourierWrite {
                id: CourierId(1),
                status: CourierStatus::Busy,
                completed_deliveries: 1,
                available_since: at(0),
            }]
        );
    }

    #[test]
    fn the_first_write_inserts_every_new_order_in_id_order_and_the_last_skips_unseen_ones() {
        let mut rows = HeldRows::default();
        for o in ["c", "a", "b"] {
            rows.hold_new_order(id(o));
        }
        rows.set_order_state(&id("c"), &OrderState::Cancelled, at(1))
            .expect("held");
        // A write before the commit: all three, untouched ones as `unseen`, in id order.
        let first = rows.take_changes(false);
        let ids: Vec<&str> = first.new_orders.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(first.new_orders[0].state, OrderState::Unseen);
        assert!(first.orders.is_empty());
        // Later writes update them: they have rows now.
        rows.set_order_state(&id("a"), &OrderState::Cancelled, at(2))
            .expect("held");
        let second = rows.take_changes(true);
        assert!(second.new_orders.is_empty());
        assert_eq!(second.orders.len(), 1);

        // Only the commit's write: an order no step gave a state is not written at all.
        let mut rows = HeldRows::default();
        rows.hold_new_order(id("untouched"));
        rows.hold_new_order(id("created"));
        rows.set_order_state(&id("created"), &OrderState::Cancelled, at(1))
            .expect("held");
        let only = rows.take_changes(true);
        let ids: Vec<&str> = only.new_orders.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["created"]);
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
