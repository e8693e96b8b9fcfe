//! The listening socket of both HTTP endpoints (the API's, `HTTP_ADDR`, and the operator's
//! `/metrics`, `/healthz`, `/readyz`, `METRICS_ADDR`), built so that every connection has read
//! and write timeouts:
//! tiny_http sets none, and a connection that sends nothing (a half-sent head, an idle
//! keep-alive, a stalled body) would otherwise hold one of its threads for good, and its thread
//! pool then queues new connections behind such threads.
//!
//! Linux copies a listening socket's `SO_RCVTIMEO` and `SO_SNDTIMEO` to every socket `accept`
//! returns, so they are set on the listener. The same timeout also bounds `accept` itself, and
//! tiny_http ends its accept loop on the first error, so a keeper thread connects to the
//! listener every second: `accept` never waits long enough to time out. Should it time out
//! anyway (the keeper starved for longer than the timeout), [`Listener::rebuild`] starts a new
//! tiny_http server on the same socket.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::shutdown::Shutdown;

/// How long a read or write on a connection may block; then tiny_http drops the connection.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the keeper connects, well inside [`CONNECTION_TIMEOUT`].
const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

/// The socket and the tiny_http server currently accepting on it.
pub struct Listener {
    /// Which endpoint, for log lines and thread names (`api`, `http`).
    name: &'static str,
    socket: TcpListener,
    server: RwLock<Arc<tiny_http::Server>>,
    /// Where the socket is bound.
    pub bound: SocketAddr,
}

impl Listener {
    /// Binds `addr` and starts serving on it, with the keeper; `name` says which endpoint in
    /// log lines and thread names.
    pub fn bind(addr: &str, name: &'static str, shutdown: Shutdown) -> std::io::Result<Arc<Self>> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("resolves to no address"))?;
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
        socket.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
        socket.bind(&target.into())?;
        socket.listen(128)?;
        let socket: TcpListener = socket.into();
        let bound = socket.local_addr()?;
        let server = serve_on(&socket)?;
        let listener = Arc::new(Self {
            name,
            socket,
            server: RwLock::new(server),
            bound,
        });
        start_keeper(name, loopback(bound), shutdown)?;
        Ok(listener)
    }

    /// The server accepting now.
    pub fn server(&self) -> Arc<tiny_http::Server> {
        Arc::clone(&self.server.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// `failed`'s accept loop has ended: serve the socket with a new server (once, whoever
    /// of the handler threads noticed first).
    pub fn rebuild(&self, failed: &Arc<tiny_http::Server>) {
        let mut current = self.server.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match serve_on(&self.socket) {
            Ok(server) => {
                log::warn!(
                    "{}: tiny_http's accept loop ended; serving on a new one",
                    self.name
                );
                *current = server;
            }
            Err(e) => log::error!("{}: cannot serve {} again: {e}", self.name, self.bound),
        }
    }
}

fn serve_on(socket: &TcpListener) -> std::io::Result<Arc<tiny_http::Server>> {
    let server = tiny_http::Server::from_listener(socket.try_clone()?, None)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Arc::new(server))
}

/// Where the keeper connects: the bound address, or loopback when bound to every interface.
fn loopback(bound: SocketAddr) -> SocketAddr {
    let mut target = bound;
    if target.ip().is_unspecified() {
        target.set_ip(match bound {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    target
}

fn start_keeper(name: &'static str, target: SocketAddr, shutdown: Shutdown) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("{name}-keeper"))
        .spawn(move || {
            while shutdown.sleep(KEEPER_INTERVAL) {
                // Connected and closed at once: tiny_http reads the end and drops it.
                if let Err(e) = TcpStream::connect_timeout(&target, KEEPER_INTERVAL) {
                    log::debug!("{name}: keeper cannot connect to {target}: {e}");
                }
            }
        })
        .map(|_| ())
}
