//! Request and response bodies. The course's routes keep the course's shapes (a courier is
//! `{id, name, phone, status, transport_type}`; creating one answers `{id, message}`), so a
//! client written for the Go service works unchanged. Unknown request fields are ignored, as
//! Go's encoding/json ignores them; a known field of the wrong type is refused (400).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::CourierId;
use crate::repository::{CourierView, DeliveryView, OrderState, OrderView, WaitingOrder};

/// `POST /courier`.
#[derive(Debug, Deserialize)]
pub struct CreateCourier {
    /// 1 to 100 characters.
    pub name: String,
    /// `+` and 11 digits.
    pub phone: String,
    /// `available` (the default) or `paused`; `busy` belongs to assignment.
    pub status: Option<String>,
    /// `on_foot`, `scooter` or `car`.
    pub transport_type: String,
}

/// `PUT /courier`: only the given fields change.
#[derive(Debug, Deserialize)]
pub struct UpdateCourier {
    /// Which courier.
    pub id: i64,
    /// New name.
    pub name: Option<String>,
    /// New phone.
    pub phone: Option<String>,
    /// `available` or `paused`.
    pub status: Option<String>,
    /// New transport.
    pub transport_type: Option<String>,
}

/// `POST /delivery/assign` and `/delivery/unassign`. `order_id` is kept loose so that it is
/// read as events read it: a string, or a JSON integer taken as its decimal string.
#[derive(Debug, Deserialize)]
pub struct DeliveryRequest {
    /// Which order; checked by `OrderId::parse`.
    #[serde(default)]
    pub order_id: Option<serde_json::Value>,
}

/// `POST /delivery/assign`: the course's answer.
#[derive(Debug, Serialize)]
pub struct Assigned {
    pub courier_id: i64,
    pub order_id: String,
    pub transport_type: &'static str,
    pub delivery_deadline: DateTime<Utc>,
}

/// `POST /delivery/unassign`: the course's answer (`status` is always `unassigned`).
#[derive(Debug, Serialize)]
pub struct Unassigned {
    pub order_id: String,
    pub status: &'static str,
    pub courier_id: i64,
}

/// A courier, as the course's service shows one.
#[derive(Debug, Serialize)]
pub struct Courier {
    pub id: i64,
    pub name: String,
    pub phone: String,
    pub status: &'static str,
    pub transport_type: &'static str,
}

impl From<&CourierView> for Courier {
    fn from(c: &CourierView) -> Self {
        Self {
            id: c.id.0,
            name: c.name.clone(),
            phone: c.phone.to_string(),
            status: c.status.as_str(),
            transport_type: c.transport.as_str(),
        }
    }
}

/// `{"message": ...}`, with the created id where there is one (as the course answers).
#[derive(Debug, Serialize)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub message: &'static str,
}

/// One line of `GET /stats`: the `stats` command's table.
#[derive(Debug, Serialize)]
pub struct CourierStats {
    pub id: i64,
    pub name: String,
    pub status: &'static str,
    pub transport_type: &'static str,
    pub completed_deliveries: i64,
    pub active_order: Option<String>,
    /// When the active order is due; null when they carry none.
    pub deadline: Option<DateTime<Utc>>,
}

impl From<&CourierView> for CourierStats {
    fn from(c: &CourierView) -> Self {
        Self {
            id: c.id.0,
            name: c.name.clone(),
            status: c.status.as_str(),
            transport_type: c.transport.as_str(),
            completed_deliveries: c.completed_deliveries,
            active_order: c.active_order.as_ref().map(|o| o.to_string()),
            deadline: c.deadline,
        }
    }
}

/// `GET /stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub couriers: Vec<CourierStats>,
    pub couriers_total: usize,
    pub available: usize,
    pub busy: usize,
    pub paused: usize,
    pub completed_deliveries: i64,
    pub waiting_orders: i64,
    /// Couriers carrying an order whose deadline has passed (by the service's clock now).
    pub overdue_deliveries: usize,
}

/// `GET /orders/{order_id}`.
#[derive(Debug, Serialize)]
pub struct Order {
    pub order_id: String,
    pub state: &'static str,
    pub courier_id: Option<i64>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// What completed the delivery: `event` or `deadline`; null while active or without one.
    pub completed_by: Option<&'static str>,
}

impl Order {
    pub fn new(order_id: String, view: &OrderView) -> Self {
        let courier = match &view.state {
            OrderState::Assigned(c) | OrderState::Completed(Some(c)) => Some(*c),
            _ => view.delivery.as_ref().map(|d| d.courier),
        };
        let d = view.delivery.as_ref();
        Self {
            order_id,
            state: view.state.as_str(),
            courier_id: courier.map(|CourierId(c)| c),
            assigned_at: d.map(|d| d.assigned_at),
            deadline: d.map(|d| d.deadline),
            completed_at: d.and_then(|d| d.completed_at),
            completed_by: d.and_then(|d| d.completed_by).map(|b| b.as_str()),
        }
    }
}

/// One line of `GET /couriers/{id}/deliveries`.
#[derive(Debug, Serialize)]
pub struct Delivery {
    pub order_id: String,
    pub assigned_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Delivery {
    pub fn new(order_id: String, d: &DeliveryView) -> Self {
        Self {
            order_id,
            assigned_at: d.assigned_at,
            deadline: d.deadline,
            completed_at: d.completed_at,
        }
    }
}

/// `GET /couriers/{id}/deliveries`.
#[derive(Debug, Serialize)]
pub struct Deliveries {
    pub courier_id: i64,
    pub deliveries: Vec<Delivery>,
}

/// One waiting order in `GET /queue`.
#[derive(Debug, Serialize)]
pub struct Waiting {
    pub order_id: String,
    pub waiting_since: DateTime<Utc>,
    pub wait_seconds: f64,
}

impl Waiting {
    pub fn new(w: &WaitingOrder, now: DateTime<Utc>) -> Self {
        Self {
            order_id: w.order.to_string(),
            waiting_since: w.since,
            wait_seconds: seconds_since(w.since, now),
        }
    }
}

/// `GET /queue`.
#[derive(Debug, Serialize)]
pub struct Queue {
    pub count: i64,
    pub oldest_wait_seconds: Option<f64>,
    pub orders: Vec<Waiting>,
}

/// Seconds from `then` to `now`, never negative, to the millisecond.
pub fn seconds_since(then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    ((now - then).num_milliseconds().max(0) as f64) / 1000.0
}

/// `GET /about`: what the page needs to know before it draws buttons.
#[derive(Debug, Serialize)]
pub struct About {
    pub service: &'static str,
    pub version: &'static str,
    pub token_required: bool,
}
