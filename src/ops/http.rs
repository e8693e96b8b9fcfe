//! The operator's endpoint (`METRICS_ADDR`): `/metrics`, `/healthz`, `/readyz`.
//!
//! Every answer comes from memory: the database-backed gauges are the sampler's last reading
//! (`ops::sampler`), readiness and liveness are marks on [`Health`]. So a frozen or stopped
//! database never holds a probe. Slow clients cannot hold it either: the listener
//! ([`super::listener`]) reads requests and writes answers on connection threads of its own,
//! with read and write timeouts, so the handler never waits on a client.

use std::net::SocketAddr;
use std::sync::Arc;

use super::http1::{Request, Response};

use super::listener::Listener;
use super::{Health, Metrics};
use crate::shutdown::Shutdown;

/// Handler threads: one. Answers are quick (memory only), and each thread that formats answers
/// costs peak RSS (its malloc arena): a second one measured 2.5 MB more in the drain benchmark.
pub const HANDLER_THREADS: usize = 1;

/// Binds `addr` and serves on [`HANDLER_THREADS`] threads until stopping. Returns the bound
/// address (useful when `addr` asks for port 0).
pub fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<SocketAddr, String> {
    let listener =
        Listener::bind(addr, "http").map_err(|e| bind_error("METRICS_ADDR", addr, &e))?;
    listener
        .start_handlers(
            HANDLER_THREADS,
            &shutdown,
            Arc::new(move |request| answer(request, &metrics, &health)),
        )
        .map_err(|e| format!("cannot start an HTTP thread: {e}"))?;
    Ok(listener.bound)
}

fn answer(request: &Request, metrics: &Metrics, health: &Health) -> Response {
    let (status, body, kind) = match request.url() {
        "/metrics" => (200, metrics.render(), super::metrics::CONTENT_TYPE),
        "/healthz" => check(health.liveness()),
        "/readyz" => check(health.readiness()),
        _ => (
            404,
            "not found: try /metrics, /healthz or /readyz\n".into(),
            "text/plain",
        ),
    };
    Response::new(status, kind, body)
}

/// Why `variable=addr` could not be listened on, in words that say what to do: a port in use
/// names what probably holds it (another service-courier, or the course's service-order on
/// 8080) and the variable that moves it.
pub fn bind_error(variable: &str, addr: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let advice = match e.kind() {
        ErrorKind::AddrInUse => format!(
            "address already in use: another program listens there (another service-courier? \
             service-order listens on 8080); choose another port with {variable}"
        ),
        ErrorKind::PermissionDenied => format!(
            "permission denied: ports below 1024 need privileges; choose another port with \
             {variable}"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "no interface of this machine has that address; set {variable} to one it has \
             (127.0.0.1:PORT, or 0.0.0.0:PORT for every interface)"
        ),
        _ => format!("cannot listen there: {e}"),
    };
    format!("{variable}={addr}: {advice}")
}

fn check(result: Result<(), String>) -> (u16, String, &'static str) {
    match result {
        Ok(()) => (200, "ok\n".into(), "text/plain"),
        Err(why) => (503, format!("{why}\n"), "text/plain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_names_the_variable_and_what_holds_it() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr").to_string();
        let e = std::net::TcpListener::bind(&addr).expect_err("port in use");
        let message = bind_error("HTTP_ADDR", &addr, &e);
        assert_eq!(
            message,
            format!(
                "HTTP_ADDR={addr}: address already in use: another program listens there \
                 (another service-courier? service-order listens on 8080); choose another port \
                 with HTTP_ADDR"
            )
        );
    }
}
