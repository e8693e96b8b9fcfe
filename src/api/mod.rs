//! The HTTP API for people, on its own listener (`HTTP_ADDR`), apart from `/metrics`.
//!
//! Why it exists: the course's service-courier is an HTTP service, and a client written for it
//! (ping, healthcheck, couriers by id, create, update) must work here unchanged, although
//! assignment now starts from Kafka events. Beyond the course it answers what an operator asks
//! (one order, a courier's deliveries, the queue, the pipeline) and serves the operator's page
//! at `/` (`page.html`, embedded in the binary).
//!
//! - [`routes`]: method and path to a handler; each handler returns a [`reply::Reply`].
//! - [`delivery`]: the course's assign and unassign, over `usecase::delivery`.
//! - [`json`]: request and response shapes (the course's shapes where it has them).
//! - [`reply`]: replies and `{"error": "..."}` with its status code.
//! - [`request`]: what is read from a request, with bounds: body size, time, the bearer token.
//! - [`pipeline`]: events/s and stalled partitions, sampled once a second from [`Metrics`].
//!
//! Synchronous: a fixed number of handler threads answer requests that the listener's
//! connection threads have read in full, head and body ([`crate::ops::listener`],
//! [`crate::ops::http1`]). Slow clients: every connection has read and write timeouts, a head
//! and a body each have a deadline ([`crate::ops::http1::BODY_DEADLINE`]), and none of that waiting
//! happens on a handler, so no client holds one (see [`routes::handle`]).

mod delivery;
mod json;
pub mod pipeline;
mod reply;
mod request;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Secret;
use crate::ops::Metrics;
use crate::repository::{CourierRepository, FleetDirectory};
use crate::shutdown::Shutdown;
pub use pipeline::Pipeline;

/// Handler threads: a fixed pool, so no burst of requests can start threads without bound.
pub const HANDLER_THREADS: usize = 4;

/// What the handlers share.
pub struct Api<R> {
    /// Storage: the same rules as the event path (usecases for status changes, over
    /// [`CourierRepository`]), and the people's reads and edits ([`FleetDirectory`]).
    pub repo: R,
    /// The service's counters and gauges, for the pipeline view.
    pub metrics: Arc<Metrics>,
    /// Events/s and stalled partitions, sampled from `metrics`.
    pub pipeline: Arc<Pipeline>,
    /// API_TOKEN: mutating routes need it as a bearer token when set.
    pub token: Option<Secret>,
}

/// Binds `addr` and serves the API on [`HANDLER_THREADS`] threads until `shutdown`. Returns the
/// bound address (useful when `addr` asks for port 0).
pub fn serve<R: CourierRepository + FleetDirectory + 'static>(
    addr: &str,
    api: Api<R>,
    shutdown: Shutdown,
) -> Result<SocketAddr, String> {
    let listener = crate::ops::listener::Listener::bind(addr, "api")
        .map_err(|e| crate::ops::http::bind_error("HTTP_ADDR", addr, &e))?;
    let api = Arc::new(api);
    pipeline::start_sampler(
        Arc::clone(&api.pipeline),
        Arc::clone(&api.metrics),
        shutdown.clone(),
    )
    .map_err(|e| format!("cannot start the pipeline sampler: {e}"))?;
    listener
        .start_handlers(
            HANDLER_THREADS,
            &shutdown,
            Arc::new(move |request| routes::handle(&api, request)),
        )
        .map_err(|e| format!("cannot start an API thread: {e}"))?;
    Ok(listener.bound)
}
