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
    let server =
        Server::http(addr).map_err(|e| format!("METRICS_ADDR: cannot listen on {addr}: {e}"))?;
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

fn check(result: Result<(), String>) -> (u16, String, &'static str) {
    match result {
        Ok(()) => (200, "ok\n".into(), "text/plain"),
        Err(why) => (503, format!("{why}\n"), "text/plain"),
    }
}
