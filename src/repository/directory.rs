//! What people ask of storage beyond the event path (the HTTP API and the operator's page):
//! one order, one courier's deliveries, the queue, and editing or removing a courier. Apart
//! from [`super::CourierRepository`] because none of it runs per event, and a test double of the
//! event path has no reason to serve it.

use chrono::{DateTime, Utc};

use super::{CourierView, DeliveryView, OrderState, RepoError};
use crate::domain::{CourierId, OrderId, Phone, TransportType};

/// The fleet as people look it up and edit it. Edits here never hand out an order: a status
/// change goes through the usecases (pause, resume), over [`super::CourierRepository`].
pub trait FleetDirectory: Send + Sync {
    /// Every courier with their statistics, by id (`stats`, `couriers list`, `GET /couriers`).
    fn couriers(&self) -> Result<Vec<CourierView>, RepoError>;

    /// One courier with their statistics.
    fn courier(&self, id: CourierId) -> Result<Option<CourierView>, RepoError>;

    /// One order: its state and delivery. `None` for an order never seen.
    fn order(&self, order: &OrderId) -> Result<Option<OrderView>, RepoError>;

    /// A courier's deliveries, the latest assigned first, at most `limit`.
    fn deliveries(
        &self,
        courier: CourierId,
        limit: usize,
    ) -> Result<Vec<CourierDelivery>, RepoError>;

    /// The waiting queue: its length and its first `limit` orders, oldest first.
    fn queue(&self, limit: usize) -> Result<QueueView, RepoError>;

    /// Changes a courier's name, phone or transport; `None` when no courier has this id. A phone
    /// of another courier is a [`RepoError::Conflict`] and changes nothing.
    fn update_courier(
        &self,
        id: CourierId,
        patch: &CourierPatch,
    ) -> Result<Option<CourierView>, RepoError>;

    /// Removes a courier who carries no order, with their delivery history.
    fn remove_courier(&self, id: CourierId) -> Result<CourierRemoval, RepoError>;
}

/// One order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    /// Where it stands (never `Unseen`: an unseen order is not found).
    pub state: OrderState,
    /// Its delivery, while assigned or once completed by a courier.
    pub delivery: Option<DeliveryView>,
}

/// One delivery of a courier, for their history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourierDelivery {
    /// The order delivered (or being delivered).
    pub order: OrderId,
    /// Its times.
    pub delivery: DeliveryView,
}

/// An order in the waiting queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingOrder {
    /// Which order.
    pub order: OrderId,
    /// When it joined the queue.
    pub since: DateTime<Utc>,
}

/// The head of the waiting queue and its length.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueView {
    /// Every waiting order, however many are listed.
    pub count: i64,
    /// The first waiting orders, oldest first.
    pub orders: Vec<WaitingOrder>,
}

/// The fields of a courier a person may change; `None` keeps the stored value. The status is not
/// here: it goes through the usecases (pause, resume), because it can hand out orders.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CourierPatch {
    /// New display name (already checked: 1 to 100 characters).
    pub name: Option<String>,
    /// New phone; a phone of another courier is a conflict.
    pub phone: Option<Phone>,
    /// New transport; it sets the deadline of their next delivery, not the current one.
    pub transport: Option<TransportType>,
}

/// What removing a courier did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CourierRemoval {
    /// Gone, with their delivery history (their completed orders now count for nobody).
    Removed,
    /// No courier has this id.
    NotFound,
    /// They carry this order: refused, nothing changed.
    Carrying(OrderId),
}
