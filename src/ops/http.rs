//! The small synchronous HTTP endpoint (tiny_http): `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use tiny_http::{Header, Response, Server};

use super::{FleetGauges, Health, Metrics};
use crate::shutdown::Shutdown;

/// Reads the courier and queue gauges at scrape time.
pub type FleetReader = Box<dyn Fn() -> Option<FleetGauges> + Send>;

/// Binds `addr` and serves on a thread of its own until stopping. Returns the bound address
/// (useful when `addr` asks for port 0).
pub fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    fleet: FleetReader,
    shutdown: Shutdown,
) -> Result<std::net::SocketAddr, String> {
    let server = Server::http(addr).map_err(|e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => bind_error("METRICS_ADDR", addr, io),
        None => format!("METRICS_ADDR={addr}: cannot listen there: {e}"),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("METRICS_ADDR: {addr} is not an IP address"))?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            while !shutdown.is_shutdown() {
                let request = match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        log::warn!("http: {e}");
                        continue;
                    }
                };
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, metrics.render(fleet()), "text/plain; version=0.0.4"),
                    "/healthz" => check(health.liveness()),
                    "/readyz" => check(health.readiness()),
                    _ => (
                        404,
                        "not found: try /metrics, /healthz or /readyz\n".into(),
                        "text/plain",
                    ),
                };
                let mut response = Response::from_string(body).with_status_code(status);
                if let Ok(h) = Header::from_bytes("Content-Type", kind) {
                    response = response.with_header(h);
                }
                if let Err(e) = request.respond(response) {
                    log::debug!("http: response not sent: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
    Ok(bound)
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
