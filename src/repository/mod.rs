//! The only door to storage, as two traits, one per kind of caller:
//!
//! - [`CourierRepository`], the event path's: a usecase runs inside
//!   [`CourierRepository::transaction`] and talks to a [`StorageTx`], small domain-named steps
//!   that PostgreSQL runs as SQL in one transaction and the in-memory fake runs on a copy of its
//!   state; beside it, the reads the pairing and deadline passes and the database sampler make,
//!   and the whole-state reads that show what the events did.
//! - [`FleetDirectory`], the people's (the HTTP API and the operator's page): one courier, one
//!   order, a courier's deliveries, the queue, and the edits that change no assignment.
//!
//! PostgreSQL and the fake implement both, and pass the same contract tests (`tests/it/contract.rs`
//! and `tests/it/contract_event_time.rs` for the first, `tests/it/api_contract.rs` for the second). A
//! test double of the event path implements the first only.

mod directory;
mod error;
pub mod memory;
pub mod postgres;
mod snapshot;

use chrono::{DateTime, Utc};

use crate::domain::{
    CompletedBy, CourierId, CourierStatus, NewCourier, OrderId, Phone, TransportType,
};

pub use directory::{
    CourierDelivery, CourierPatch, CourierRemoval, FleetDirectory, OrderView, QueueView,
    WaitingOrder,
};
pub use error::RepoError;
pub use memory::MemoryRepository;
pub use postgres::PgRepository;
pub use snapshot::{DeliveryView, Snapshot};

/// Where an order stands, as far as couriers are concerned. This is what makes every handler
/// idempotent: each event is a transition from one of these states, and most are no-ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderState {
    /// No event of this order has been applied yet.
    Unseen,
    /// Created while no courier was free; first come, first served.
    Waiting,
    /// Carried by this courier right now.
    Assigned(CourierId),
    /// Done; the courier who delivered it, if one had been assigned.
    Completed(Option<CourierId>),
    /// Gone: never counts, never comes back.
    Cancelled,
}

impl OrderState {
    /// The spelling used in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unseen => "unseen",
            Self::Waiting => "waiting",
            Self::Assigned(_) => "assigned",
            Self::Completed(_) => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Completed and cancelled orders never change again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed(_) | Self::Cancelled)
    }
}

/// A courier as a transaction sees it after locking the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourierRecord {
    /// Which courier.
    pub id: CourierId,
    /// Their status at lock time.
    pub status: CourierStatus,
    /// Sets the deadline of the next delivery.
    pub transport: TransportType,
    /// The order they carry, if any.
    pub active_order: Option<OrderId>,
}

/// A courier as people see them (`couriers list`, `stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourierView {
    /// Which courier.
    pub id: CourierId,
    /// Display name.
    pub name: String,
    /// Contact phone.
    pub phone: Phone,
    /// Available, busy or paused.
    pub status: CourierStatus,
    /// How they travel.
    pub transport: TransportType,
    /// Deliveries completed (cancelled ones never count).
    pub completed_deliveries: i64,
    /// The order they carry now, if any.
    pub active_order: Option<OrderId>,
    /// When that order is due (its delivery's deadline), if they carry one.
    pub deadline: Option<DateTime<Utc>>,
}

/// Courier and queue figures, for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetGauges {
    /// Couriers free to take an order.
    pub available: i64,
    /// Couriers carrying an order.
    pub busy: i64,
    /// Couriers off shift.
    pub paused: i64,
    /// Orders waiting for a courier.
    pub waiting_orders: i64,
}

/// Storage, seen from the event path: the usecases' transactions, and the reads of the passes
/// that run beside them. `Send + Sync` so one repository serves every worker.
pub trait CourierRepository: Send + Sync {
    /// Runs `work` in one transaction: all of its steps take effect, or none do. On error nothing
    /// is kept, so the caller may run `work` again.
    fn transaction<T>(
        &self,
        work: &mut dyn FnMut(&mut dyn StorageTx) -> Result<T, RepoError>,
    ) -> Result<T, RepoError>;

    /// The whole state, for comparing stores and checking invariants.
    fn snapshot(&self) -> Result<Snapshot, RepoError>;

    /// Couriers by status and the length of the queue, for the database sampler's gauges.
    fn fleet(&self) -> Result<FleetGauges, RepoError>;

    /// How many active deliveries are past their deadline at `now` (as committed). The deadline
    /// pass completes those of them the courier has also held for a whole window (see
    /// [`StorageTx::lock_overdue_deliveries`]).
    fn count_overdue(&self, now: DateTime<Utc>) -> Result<i64, RepoError>;

    /// Whether some order waits while some courier is available (as committed): one cheap
    /// read that spares the pairing pass a transaction when, as usual, there is nothing to pair.
    fn has_waiting_beside_available(&self) -> Result<bool, RepoError>;
}

/// What a batch of events is about to touch, announced before its first step so storage can
/// lock it all in a few round trips instead of one per step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutline {
    /// Every order the batch has events for, each once.
    pub orders: Vec<OrderId>,
    /// The batch's events that may take or free a courier, in the order they are applied.
    pub steps: Vec<BatchStep>,
}

/// One event of a batch that may take or free a courier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStep {
    /// The order the event is for.
    pub order: OrderId,
    /// What the event does to couriers.
    pub kind: StepKind,
}

/// What an event may do to couriers (the handlers' rules, `usecase/{assign,cancel,complete}.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A `created`: the best free courier takes the order, if it is unseen or waiting.
    Assign,
    /// A cancellation or completion (or a deadline): an assigned order's courier is freed and
    /// takes the head of the queue.
    End,
}

/// How many picks a batch's steps make, from the stored states of its orders: what storage
/// locks up front so that it holds no row a step will not take (README, "The rules": the best
/// available courier, first created first served, also across concurrent transactions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchNeeds {
    /// Picks of the best free courier: one per `created` of an order unseen or waiting at its
    /// turn.
    pub couriers: usize,
    /// Picks of the head of the queue: one per courier freed (an end of an assigned order).
    pub queue_heads: usize,
    /// More picks of the head of the queue, made only if every courier pick finds a courier:
    /// one per end of an order that a `created` of this batch assigns (with no courier free,
    /// that order waits instead, and its end frees nobody).
    pub queue_heads_once_assigned: usize,
}

impl BatchOutline {
    /// An outline of `steps`, its orders each once.
    pub fn of_steps(steps: Vec<BatchStep>) -> Self {
        let mut orders: Vec<OrderId> = steps.iter().map(|s| s.order.clone()).collect();
        orders.sort_unstable();
        orders.dedup();
        Self { orders, steps }
    }

    /// The picks the steps will make, given each order's state before the batch (`None`: not
    /// known, taken as unseen). Each step follows its handler: a `created` of an unseen or
    /// waiting order takes a courier (when none is free the order waits, and storage then holds
    /// every free courier there is, see `repository/postgres/held.rs`); an end of an assigned
    /// order frees its courier, who takes the head of the queue; an end of an unseen or waiting
    /// order frees nobody. Exact, except in rare cases: a freed courier who is paused takes
    /// nothing (one queue head counted too many); a freed courier takes a waiting order this
    /// batch names, and a later step ends it (one queue head too few: storage asks the
    /// database, a round trip) or repeats its `created` (one courier counted too many).
    pub fn needs(&self, state: impl Fn(&OrderId) -> Option<OrderState>) -> BatchNeeds {
        /// An order as the count follows it through the batch.
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Seen {
            /// Unseen or waiting: a `created` takes a courier, an end frees nobody.
            Open,
            /// Given a courier by this batch, if one is free.
            Assigning,
            /// Assigned before the batch: an end frees its courier.
            Carried,
            /// Completed or cancelled: nothing changes it.
            Ended,
        }
        let mut seen: std::collections::HashMap<&OrderId, Seen> = std::collections::HashMap::new();
        let mut needs = BatchNeeds::default();
        for step in &self.steps {
            let at = seen
                .entry(&step.order)
                .or_insert_with(|| match state(&step.order) {
                    None | Some(OrderState::Unseen | OrderState::Waiting) => Seen::Open,
                    Some(OrderState::Assigned(_)) => Seen::Carried,
                    Some(OrderState::Completed(_) | OrderState::Cancelled) => Seen::Ended,
                });
            *at = match (step.kind, *at) {
                (StepKind::Assign, Seen::Open) => {
                    needs.couriers += 1;
                    Seen::Assigning
                }
                (StepKind::End, Seen::Carried) => {
                    needs.queue_heads += 1;
                    Seen::Ended
                }
                (StepKind::End, Seen::Assigning) => {
                    needs.queue_heads_once_assigned += 1;
                    Seen::Ended
                }
                (StepKind::End, Seen::Open) => Seen::Ended,
                (_, unchanged) => unchanged,
            };
        }
        needs
    }
}

/// An active delivery whose deadline has passed, found and locked by the deadline pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueDelivery {
    /// The order, locked (its state is read with [`StorageTx::lock_order`] without a round trip).
    pub order: OrderId,
    /// The courier who carries it.
    pub courier: CourierId,
    /// When it was due: what its completion is stamped with.
    pub deadline: DateTime<Utc>,
}

/// The steps a usecase may take inside one transaction. Each names a domain fact, not a table.
pub trait StorageTx {
    /// Locks up front what `outline` says the steps after it will touch. Steps work without it,
    /// but PostgreSQL's transactions then wait on each other in no fixed order: a usecase calls
    /// it first, naming every order its steps will lock (see `repository/postgres/held.rs`,
    /// `take_changes`). No default: a store (or a wrapper around one) says what it does with
    /// the outline, so that forgetting to pass it on is not silent.
    fn lock_batch(&mut self, outline: &BatchOutline) -> Result<(), RepoError>;

    /// Locks the order against concurrent events of the same order and returns its state
    /// ([`OrderState::Unseen`] for an order never seen).
    fn lock_order(&mut self, order: &OrderId) -> Result<OrderState, RepoError>;

    /// Records a state that involves no delivery: `Waiting` (joins the queue, which serves the
    /// order created earliest first: `at` is when this order was created, and orders created
    /// at the same instant go by arrival), `Completed(None)` or `Cancelled` for an order
    /// without a courier.
    fn set_order_state(
        &mut self,
        order: &OrderId,
        state: &OrderState,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError>;

    /// Locks and returns the best available courier that no one else holds: fewest completed
    /// deliveries, then the one available longest, then the lowest id.
    fn take_available_courier(&mut self) -> Result<Option<CourierRecord>, RepoError>;

    /// Locks up to `limit` overdue deliveries, earliest deadline first, skipping orders another
    /// transaction holds (an event of that order is being applied: the next pass looks again).
    /// Their orders are locked as by `lock_order`. Overdue at `now`: the deadline is at or
    /// before `now`, and the courier has held the order for its whole window by the store's own
    /// clock since the assignment was made (when a backlog is drained, `assigned_at`, the
    /// event's time, may be long past while the order's `cancelled` is still on its way).
    fn lock_overdue_deliveries(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OverdueDelivery>, RepoError>;

    /// Locks a courier row.
    fn lock_courier(&mut self, id: CourierId) -> Result<Option<CourierRecord>, RepoError>;

    /// Locks and returns the first waiting order in the queue (created earliest, then arrived
    /// first) that no one else holds.
    fn next_waiting_order(&mut self) -> Result<Option<OrderId>, RepoError>;

    /// The courier takes the order: a delivery row with its deadline, the courier busy, the
    /// order assigned.
    fn start_delivery(
        &mut self,
        order: &OrderId,
        courier: &CourierRecord,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError>;

    /// The delivery is done: stamped (when, and what ended it), counted for the courier, the
    /// order completed. The courier's status is left to the caller.
    fn finish_delivery(
        &mut self,
        order: &OrderId,
        courier: CourierId,
        at: DateTime<Utc>,
        by: CompletedBy,
    ) -> Result<(), RepoError>;

    /// The delivery disappears and the order is cancelled. The courier's status is left to the
    /// caller.
    fn drop_delivery(&mut self, order: &OrderId, at: DateTime<Utc>) -> Result<(), RepoError>;

    /// Sets a courier's status; `Available` also restarts their "available since" clock.
    fn set_courier_status(
        &mut self,
        id: CourierId,
        status: CourierStatus,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError>;

    /// Hires a courier, initially paused (the caller makes them available or gives them work).
    /// A taken phone is a [`RepoError::Conflict`].
    fn insert_courier(
        &mut self,
        courier: &NewCourier,
        at: DateTime<Utc>,
    ) -> Result<CourierRecord, RepoError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(order: &str, kind: StepKind) -> BatchStep {
        BatchStep {
            order: OrderId::parse(order).expect("id"),
            kind,
        }
    }

    #[test]
    fn a_batch_needs_a_pick_only_for_a_step_that_makes_one() {
        use StepKind::{Assign, End};
        let outline = BatchOutline::of_steps(vec![
            step("new", Assign),
            step("new", Assign), // a duplicate: assigned by the step before
            step("new", End),    // frees its courier (if it found one), who takes the head
            step("new", End),    // a duplicate: ended already
            step("waiting", Assign),
            step("carried", Assign), // assigned already: a duplicate
            step("carried", End),
            step("ghost", End), // never seen: ends without a courier
            step("ghost", Assign),
            step("done", End), // ended already
            step("done", Assign),
        ]);
        assert_eq!(outline.orders.len(), 5);
        let needs = outline.needs(|id| match id.as_str() {
            "waiting" => Some(OrderState::Waiting),
            "carried" => Some(OrderState::Assigned(CourierId(1))),
            "done" => Some(OrderState::Completed(None)),
            "ghost" => Some(OrderState::Unseen),
            _ => None,
        });
        assert_eq!(
            needs,
            BatchNeeds {
                couriers: 2,
                queue_heads: 1,
                queue_heads_once_assigned: 1,
            }
        );
        assert_eq!(
            BatchOutline::default().needs(|_| None),
            BatchNeeds::default()
        );
    }
}
