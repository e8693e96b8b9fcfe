//! `POST /delivery/assign` and `POST /delivery/unassign`: the course's delivery routes, mapped
//! onto [`crate::usecase::delivery`] (the `created` and `cancelled` usecases) and their typed
//! refusals onto status codes.

use chrono::Utc;
use serde_json::Value;

use super::json::{self, DeliveryRequest};
use super::reply::{ApiError, Reply};
use crate::domain::OrderId;
use crate::repository::{CourierRepository, RepoError};
use crate::usecase::delivery::{self, AssignError, UnassignError};

/// Assigns the best available courier to the order: 200 with the courier and the deadline;
/// 409 when no courier is free (nothing is written), when the order has a courier already, or
/// when it is completed or cancelled.
pub fn assign(repo: &impl CourierRepository, body: &DeliveryRequest) -> Result<Reply, ApiError> {
    let order = order_id(body)?;
    let done = retried(
        || delivery::assign(repo, &order, Utc::now()),
        |e| match e {
            AssignError::Repository(e) => Some(e),
            _ => None,
        },
    )
    .map_err(|e| match e {
        AssignError::Repository(e) => e.into(),
        AssignError::NoAvailableCourier => ApiError::conflict("No available couriers"),
        AssignError::AlreadyAssigned(c) => {
            ApiError::conflict(format!("order {order} is already assigned to courier {c}"))
        }
        AssignError::Ended(state) => ApiError::conflict(format!(
            "order {order} is {}: it can't be assigned",
            state.as_str()
        )),
    })?;
    Ok(Reply::json(
        200,
        &json::Assigned {
            courier_id: done.courier.0,
            order_id: order.to_string(),
            transport_type: done.transport.as_str(),
            delivery_deadline: done.deadline,
        },
    ))
}

/// Takes the order from its courier (it is cancelled, the courier freed): 200; 404 when the
/// order has no delivery (never seen, waiting, cancelled); 409 when it is completed.
pub fn unassign(repo: &impl CourierRepository, body: &DeliveryRequest) -> Result<Reply, ApiError> {
    let order = order_id(body)?;
    let release = retried(
        || delivery::unassign(repo, &order, Utc::now()),
        |e| match e {
            UnassignError::Repository(e) => Some(e),
            _ => None,
        },
    )
    .map_err(|e| match e {
        UnassignError::Repository(e) => e.into(),
        UnassignError::NoDelivery(state) => ApiError::not_found(format!(
            "order {order} has no delivery ({})",
            match state {
                crate::repository::OrderState::Unseen => "never seen",
                other => other.as_str(),
            }
        )),
        UnassignError::Completed => ApiError::conflict(format!(
            "order {order} is completed: its delivery is done and counts"
        )),
    })?;
    Ok(Reply::json(
        200,
        &json::Unassigned {
            order_id: order.to_string(),
            status: "unassigned",
            courier_id: release.courier.0,
        },
    ))
}

/// `order_id` as events read it: a string, or a JSON integer taken as its decimal string.
fn order_id(body: &DeliveryRequest) -> Result<OrderId, ApiError> {
    let raw = match &body.order_id {
        None | Some(Value::Null) => return Err(ApiError::bad_request("order_id is missing")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(i)) => i.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "order_id must be a string or an integer",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::bad_request(
                "order_id must be a string or an integer",
            ))
        }
    };
    // PostgreSQL text can't hold NUL, and OrderId refuses control characters anyway.
    OrderId::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Runs a transaction again after a transient failure (a deadlock with a worker's batch, say):
/// it left no trace, so running it again is safe. A few times, then 503.
fn retried<T, E>(
    mut command: impl FnMut() -> Result<T, E>,
    storage: impl Fn(&E) -> Option<&RepoError>,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match command() {
            Err(e) if attempt < 3 && storage(&e).is_some_and(RepoError::is_transient) => {
                log::debug!("api: retrying after a transient storage failure");
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}
