//! Method and path to a handler. Each handler returns a [`Reply`] or an [`ApiError`]; nothing
//! here panics on input, and a panic anywhere below is caught and answered with 500.

use std::panic::AssertUnwindSafe;

use chrono::Utc;
use serde::de::DeserializeOwned;

use super::delivery;
use super::json::{self, Message};
use super::reply::{ApiError, Reply};
use super::request::{bearer_matches, percent_decode, query_param, read_body};
use super::Api;
use crate::domain::{CourierId, CourierStatus, NewCourier, OrderId, Phone, TransportType};
use crate::ops::http1::{Method, Request, Response};
use crate::repository::{
    CourierPatch, CourierRemoval, CourierRepository, FleetDirectory, RepoError,
};
use crate::usecase::couriers::{self, CourierCommandError};

/// The operator's page: one self-contained file, no external scripts, styles or fonts.
const PAGE: &str = include_str!("page.html");

/// Deliveries listed when `limit` is not given, and the most that may be asked for.
const DELIVERIES_DEFAULT: usize = 20;
const LIST_MAX: usize = 1000;
/// Waiting orders listed by `GET /queue` when `limit` is not given.
const QUEUE_DEFAULT: usize = 100;

type Outcome = Result<Reply, ApiError>;

/// Answers one request, on a handler thread. Its head and body are already in memory (the
/// listener's connection threads read them, within their deadlines, and write the answer), so
/// nothing here waits on the client. What cannot be read as a request at all (a garbage
/// request line, a malformed header, a version other than HTTP/1) never gets here: the
/// connection thread refuses it with `{"error": ...}` itself (`ops::http1::connection`).
pub fn handle<R: CourierRepository + FleetDirectory>(api: &Api<R>, request: &Request) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let url = request.url();
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| route(api, request)))
        .unwrap_or_else(|_| {
            Err(ApiError::internal(format!(
                "a handler panicked on {method} {url}"
            )))
        })
        .unwrap_or_else(Reply::from);
    let status = reply.status;
    // The path only: a query string or a header could carry something private.
    let path = url.split('?').next().unwrap_or_default();
    if method != Method::Get && method != Method::Head {
        log::info!(
            "api: {method} {path} -> {status} in {:?}",
            started.elapsed()
        );
    } else {
        log::debug!(
            "api: {method} {path} -> {status} in {:?}",
            started.elapsed()
        );
    }
    let mut response = Response::new(status, reply.content_type, reply.body);
    response.headers.extend(reply.headers);
    response
}

fn route<R: CourierRepository + FleetDirectory>(api: &Api<R>, request: &Request) -> Outcome {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = request.method().clone();
    use Method::{Delete, Get, Head, Post, Put};
    match (parts.as_slice(), &method) {
        ([] | [""], Get | Head) => Ok(page()),
        (["ping"], Get) => Ok(Reply::json(200, &serde_json::json!({"message": "pong"}))),
        (["healthcheck"], Head | Get) => Ok(Reply::empty(204)),
        (["about"], Get) => Ok(Reply::json(
            200,
            &json::About {
                service: "service-courier",
                version: env!("CARGO_PKG_VERSION"),
                token_required: api.token.is_some(),
            },
        )),
        (["courier"], Post) => {
            authorize(api, request)?;
            create_courier(api, &parse_body(request)?)
        }
        (["courier"], Put) => {
            authorize(api, request)?;
            update_courier(api, &parse_body(request)?)
        }
        (["delivery", "assign"], Post) => {
            authorize(api, request)?;
            delivery::assign(&api.repo, &parse_body(request)?)
        }
        (["delivery", "unassign"], Post) => {
            authorize(api, request)?;
            delivery::unassign(&api.repo, &parse_body(request)?)
        }
        (["courier", id], Get) => get_courier(api, courier_id(id)?),
        (["courier", id], Delete) => {
            authorize(api, request)?;
            delete_courier(api, courier_id(id)?)
        }
        (["couriers"], Get) => list_couriers(api),
        (["couriers", id, "deliveries"], Get) => deliveries(api, courier_id(id)?, query),
        (["orders", id], Get) => order(api, id),
        (["stats"], Get) => stats(api),
        (["queue"], Get) => queue(api, query),
        (["partitions"], Get) => Ok(Reply::json(
            200,
            &serde_json::json!({"partitions": api.pipeline.partitions(&api.metrics)}),
        )),
        (["pipeline"], Get) => Ok(pipeline(api)),
        _ => Err(not_routed(&parts, &method)),
    }
}

/// 405 with `Allow` for a known path and another method; 404 otherwise.
fn not_routed(parts: &[&str], method: &Method) -> ApiError {
    let allowed = match parts {
        [] | [""] => "GET, HEAD",
        ["healthcheck"] => "HEAD, GET",
        ["courier"] => "POST, PUT",
        ["delivery", "assign" | "unassign"] => "POST",
        ["courier", _] => "GET, DELETE",
        ["ping" | "about" | "couriers" | "stats" | "queue" | "partitions" | "pipeline"]
        | ["couriers", _, "deliveries"]
        | ["orders", _] => "GET",
        _ => return ApiError::not_found("no such route"),
    };
    ApiError::method_not_allowed(method, allowed)
}

fn page() -> Reply {
    Reply {
        status: 200,
        body: PAGE.as_bytes().to_vec(),
        content_type: "text/html; charset=utf-8",
        headers: vec![
            ("Cache-Control", "no-store".into()),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:"
                    .into(),
            ),
        ],
    }
}

/// Mutating routes need the bearer token when API_TOKEN is set.
fn authorize<R>(api: &Api<R>, request: &Request) -> Result<(), ApiError> {
    let Some(token) = &api.token else {
        return Ok(());
    };
    if bearer_matches(request.header("Authorization"), token.expose()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "this route needs Authorization: Bearer <API_TOKEN>",
        ))
    }
}

fn parse_body<T: DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    let body = read_body(request)?;
    // serde would read an array as a struct's fields in order; a body must be an object.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::bad_request(
            "invalid JSON: the body must be one JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

fn courier_id(raw: &str) -> Result<CourierId, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(CourierId(id)),
        _ => Err(ApiError::bad_request("invalid courier id")),
    }
}

fn phone(raw: &str) -> Result<Phone, ApiError> {
    Phone::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn transport(raw: &str) -> Result<TransportType, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::ParseCourierError| ApiError::bad_request(e.to_string()))
}

/// A status a person may set: `available` or `paused`. `busy` is assignment's (409).
fn settable_status(raw: &str) -> Result<CourierStatus, ApiError> {
    match raw
        .parse()
        .map_err(|e: crate::domain::ParseCourierError| ApiError::bad_request(e.to_string()))?
    {
        CourierStatus::Busy => Err(ApiError::conflict(
            "status busy is set by assignment only; use available or paused",
        )),
        s => Ok(s),
    }
}

fn command_error(e: CourierCommandError) -> ApiError {
    match e {
        CourierCommandError::NotFound(_) => ApiError::not_found("courier not found"),
        CourierCommandError::Repository(e) => e.into(),
    }
}

fn create_courier<R: CourierRepository>(api: &Api<R>, body: &json::CreateCourier) -> Outcome {
    let status = settable_status(body.status.as_deref().unwrap_or("available"))?;
    let courier = NewCourier::parse(
        &body.name,
        phone(&body.phone)?,
        transport(&body.transport_type)?,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = Utc::now();
    let change = match status {
        CourierStatus::Paused => couriers::add_paused(&api.repo, &courier, now),
        _ => couriers::add(&api.repo, &courier, now),
    }
    .map_err(command_error)?;
    Ok(Reply::json(
        201,
        &Message {
            id: Some(change.id.0),
            message: "Courier created successfully",
        },
    ))
}

fn update_courier<R: CourierRepository + FleetDirectory>(
    api: &Api<R>,
    body: &json::UpdateCourier,
) -> Outcome {
    // Everything is checked before anything changes.
    if body.id <= 0 {
        return Err(ApiError::bad_request("invalid courier id"));
    }
    let id = CourierId(body.id);
    let status = body.status.as_deref().map(settable_status).transpose()?;
    let patch = CourierPatch {
        name: body
            .name
            .as_deref()
            .map(NewCourier::parse_name)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        phone: body.phone.as_deref().map(phone).transpose()?,
        transport: body.transport_type.as_deref().map(transport).transpose()?,
    };
    if patch == CourierPatch::default() {
        if api.repo.courier(id)?.is_none() {
            return Err(ApiError::not_found("courier not found"));
        }
    } else if api
        .repo
        .update_courier(id, &patch)
        .map_err(|e| phone_taken(e, &patch))?
        .is_none()
    {
        return Err(ApiError::not_found("courier not found"));
    }
    let now = Utc::now();
    match status {
        Some(CourierStatus::Paused) => {
            retried(|| couriers::pause(&api.repo, id, now)).map_err(command_error)?;
        }
        Some(_) => {
            retried(|| couriers::resume(&api.repo, id, now)).map_err(command_error)?;
        }
        None => {}
    }
    Ok(Reply::json(
        200,
        &Message {
            id: None,
            message: "Courier updated successfully",
        },
    ))
}

/// A uniqueness conflict on an edit is the phone's (the only unique field a person edits):
/// said as `POST /courier` says it, not in PostgreSQL's words.
fn phone_taken(e: RepoError, patch: &CourierPatch) -> ApiError {
    match (e, &patch.phone) {
        (RepoError::Conflict(_), Some(phone)) => {
            ApiError::conflict(format!("phone {phone} belongs to another courier"))
        }
        (e, _) => e.into(),
    }
}

/// Runs an idempotent courier command, again after a transient failure (a deadlock with a
/// worker's batch, say), a few times before giving up with 503.
fn retried<T>(
    mut command: impl FnMut() -> Result<T, CourierCommandError>,
) -> Result<T, CourierCommandError> {
    let mut attempt = 1;
    loop {
        match command() {
            Err(CourierCommandError::Repository(e)) if e.is_transient() && attempt < 3 => {
                log::debug!("api: retrying after {e}");
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn get_courier<R: FleetDirectory>(api: &Api<R>, id: CourierId) -> Outcome {
    match api.repo.courier(id)? {
        Some(c) => Ok(Reply::json(200, &json::Courier::from(&c))),
        None => Err(ApiError::not_found("courier not found")),
    }
}

fn delete_courier<R: FleetDirectory>(api: &Api<R>, id: CourierId) -> Outcome {
    match api.repo.remove_courier(id)? {
        CourierRemoval::Removed => Ok(Reply::json(
            200,
            &Message {
                id: None,
                message: "Courier deleted successfully",
            },
        )),
        CourierRemoval::NotFound => Err(ApiError::not_found("courier not found")),
        CourierRemoval::Carrying(order) => Err(ApiError::conflict(format!(
            "the courier carries order {order}; they can be removed once it ends"
        ))),
    }
}

fn list_couriers<R: FleetDirectory>(api: &Api<R>) -> Outcome {
    let all: Vec<json::Courier> = api.repo.couriers()?.iter().map(Into::into).collect();
    Ok(Reply::json(200, &all))
}

fn limit(query: &str, default: usize) -> Result<usize, ApiError> {
    match query_param(query, "limit") {
        None => Ok(default),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=LIST_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {LIST_MAX}"
            ))),
        },
    }
}

fn deliveries<R: FleetDirectory>(api: &Api<R>, id: CourierId, query: &str) -> Outcome {
    let limit = limit(query, DELIVERIES_DEFAULT)?;
    if api.repo.courier(id)?.is_none() {
        return Err(ApiError::not_found("courier not found"));
    }
    let list = api.repo.deliveries(id, limit)?;
    Ok(Reply::json(
        200,
        &json::Deliveries {
            courier_id: id.0,
            deliveries: list
                .iter()
                .map(|d| json::Delivery::new(d.order.to_string(), &d.delivery))
                .collect(),
        },
    ))
}

fn order<R: FleetDirectory>(api: &Api<R>, raw: &str) -> Outcome {
    // PostgreSQL text can't hold NUL, so no stored order has one.
    let id = percent_decode(raw)
        .filter(|s| !s.contains('\0'))
        .and_then(|s| OrderId::parse(s).ok())
        .ok_or_else(|| ApiError::bad_request("invalid order id"))?;
    match api.repo.order(&id)? {
        Some(view) => Ok(Reply::json(200, &json::Order::new(id.to_string(), &view))),
        None => Err(ApiError::not_found("order not found")),
    }
}

fn stats<R: CourierRepository + FleetDirectory>(api: &Api<R>) -> Outcome {
    let all = api.repo.couriers()?;
    let count = |s: CourierStatus| all.iter().filter(|c| c.status == s).count();
    let waiting = api.repo.queue(1)?.count;
    let now = Utc::now();
    Ok(Reply::json(
        200,
        &json::Stats {
            couriers_total: all.len(),
            available: count(CourierStatus::Available),
            busy: count(CourierStatus::Busy),
            paused: count(CourierStatus::Paused),
            completed_deliveries: all.iter().map(|c| c.completed_deliveries).sum(),
            waiting_orders: waiting,
            overdue_deliveries: all
                .iter()
                .filter(|c| c.active_order.is_some() && c.deadline.is_some_and(|d| d < now))
                .count(),
            couriers: all.iter().map(Into::into).collect(),
        },
    ))
}

fn queue<R: FleetDirectory>(api: &Api<R>, query: &str) -> Outcome {
    let limit = limit(query, QUEUE_DEFAULT)?;
    let q = api.repo.queue(limit)?;
    let now = Utc::now();
    Ok(Reply::json(
        200,
        &json::Queue {
            count: q.count,
            oldest_wait_seconds: q.orders.first().map(|w| json::seconds_since(w.since, now)),
            orders: q
                .orders
                .iter()
                .map(|w| json::Waiting::new(w, now))
                .collect(),
        },
    ))
}

fn pipeline<R>(api: &Api<R>) -> Reply {
    let partitions = api.pipeline.partitions(&api.metrics);
    let dead: Vec<_> = api
        .metrics
        .dead_letter_counts()
        .into_iter()
        .map(|(reason, count)| serde_json::json!({"reason": reason, "count": count}))
        .collect();
    Reply::json(
        200,
        &serde_json::json!({
            "events_per_second": api.pipeline.events_per_second(),
            "events_consumed_total": api.metrics.consumed_total(),
            "events_applied_total": api.metrics.applied_total(),
            "dead_letters_total": api.metrics.dead_letter_counts().values().sum::<u64>(),
            "dead_letters": dead,
            "lag_total": partitions.iter().filter_map(|p| p.lag).sum::<i64>(),
            "stalled_partitions": partitions.iter().filter(|p| p.stalled).count(),
            "partitions": partitions,
        }),
    )
}
