//! The listening socket of both HTTP endpoints (the API's, `HTTP_ADDR`, and the operator's
//! `/metrics`, `/healthz`, `/readyz`, `METRICS_ADDR`), built so that every connection has read
//! and write timeouts:
//! tiny_http sets none, and a connection that sends nothing (a half-sent head, an idle
//! keep-alive, a stalled body) would otherwise hold one of its threads for good, and its thread
//! pool then queues new connections behind such threads.
//!
//! Linux copies a listening socket's `SO_RCVTIMEO` and `SO_SNDTIMEO` to every socket `accept`
//! returns, so they are set on the listener. The same timeout also bounds `accept` itself, and
//! tiny_http ends its accept loop on the first error, so one of the handler threads connects to
//! the listener every second between requests: `accept` never waits long enough to time out.
//! (Not a thread of its own: each thread costs peak RSS, see docs/performance.md.) Should it
//! time out anyway (every handler busy for longer than the timeout), a handler thread starts a
//! new tiny_http server on the same socket (`rebuild`); connections that arrive meanwhile wait
//! in the socket's backlog.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::shutdown::Shutdown;

/// How long a read or write on a connection may block; then tiny_http drops the connection.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a handler thread connects to keep `accept` from timing out, well inside
/// [`CONNECTION_TIMEOUT`].
const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

/// How long a handler thread waits for a request before it looks at the shutdown flag and the
/// keeper's clock again.
const HANDLER_WAKE: Duration = Duration::from_millis(200);

/// The socket and the tiny_http server currently accepting on it.
pub struct Listener {
    /// Which endpoint, for log lines and thread names (`api`, `http`).
    name: &'static str,
    socket: TcpListener,
    server: RwLock<Arc<tiny_http::Server>>,
    /// Where the socket is bound.
    pub bound: SocketAddr,
    /// Where the keeper's connections go (`bound`, or loopback when bound to every interface).
    keeper_target: SocketAddr,
    /// Milliseconds after `started` of the keeper's last connection.
    kept_at: AtomicU64,
    started: Instant,
}

impl Listener {
    /// Binds `addr` and starts serving on it; `name` says which endpoint in log lines and
    /// thread names. Requests are taken by [`Listener::start_handlers`].
    pub fn bind(addr: &str, name: &'static str) -> std::io::Result<Arc<Self>> {
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
        Ok(Arc::new(Self {
            name,
            socket,
            server: RwLock::new(server),
            bound,
            keeper_target: loopback(bound),
            kept_at: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// Starts `threads` handler threads (`{name}-0`, …) that pass each request to `handle`
    /// until `shutdown`.
    pub fn start_handlers(
        self: &Arc<Self>,
        threads: usize,
        shutdown: &Shutdown,
        handle: Arc<dyn Fn(tiny_http::Request) + Send + Sync>,
    ) -> std::io::Result<()> {
        for n in 0..threads {
            let (listener, shutdown, handle) =
                (Arc::clone(self), shutdown.clone(), Arc::clone(&handle));
            std::thread::Builder::new()
                .name(format!("{}-{n}", self.name))
                .spawn(move || {
                    while !shutdown.is_shutdown() {
                        let server = listener.server();
                        match server.recv_timeout(HANDLER_WAKE) {
                            Ok(Some(request)) => handle(request),
                            Ok(None) => {}
                            // tiny_http reports one error when its accept loop ends.
                            Err(e) => {
                                log::warn!("{}: {e}", listener.name);
                                listener.rebuild(&server);
                            }
                        }
                        listener.keep_accepting();
                    }
                })?;
        }
        Ok(())
    }

    /// Connects to the listener once [`KEEPER_INTERVAL`] has passed since the last time
    /// (whichever handler thread gets here first): connected and closed at once, tiny_http reads
    /// the end and drops it.
    fn keep_accepting(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.kept_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < KEEPER_INTERVAL.as_millis() as u64
            || self
                .kept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(e) = TcpStream::connect_timeout(&self.keeper_target, KEEPER_INTERVAL) {
            log::debug!(
                "{}: keeper cannot connect to {}: {e}",
                self.name,
                self.keeper_target
            );
        }
    }

    /// The server accepting now.
    fn server(&self) -> Arc<tiny_http::Server> {
        Arc::clone(&self.server.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// `failed`'s accept loop has ended: serve the socket with a new server (once, whoever
    /// of the handler threads noticed first).
    fn rebuild(&self, failed: &Arc<tiny_http::Server>) {
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
