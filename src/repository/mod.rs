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
    /// At most how many free couriers its steps may take (one per `created`).
    pub takes: usize,
    /// At most how many couriers it may release, each of whom may take a waiting order (one per
    /// cancellation or completion).
    pub releases: usize,
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
    /// Locks up front what `outline` says the steps after it will touch. Only an optimisation:
    /// every step works without it. No default: a store (or a wrapper around one) says what it
    /// does with the outline, so that forgetting to pass it on is not silent.
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
