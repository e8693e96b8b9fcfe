//! The listening socket of both HTTP endpoints (the API's, `HTTP_ADDR`, and the operator's
//! `/metrics`, `/healthz`, `/readyz`, `METRICS_ADDR`) and the threads that serve it, so that no
//! client, however slow or silent, holds a handler:
//!
//! - one accept thread (`{name}-accept`) hands each new connection to a connection thread;
//! - connection threads (`{name}-conn`, at most [`MAX_CONNECTION_THREADS`], started when needed
//!   and ended after [`CONNECTION_THREAD_IDLE`] without work) do all the reading and writing
//!   ([`super::http1::connection`]), with read and write timeouts on every connection;
//! - a fixed number of handler threads (`{name}-0`, …) answer requests whose head and body are
//!   already in memory, and never touch a socket.
//!
//! Every connection thread busy means new connections wait in the socket's backlog until one
//! is free; each is freed within the timeouts (a silent client within
//! [`CONNECTION_TIMEOUT`], a trickling one within the head's or the body's deadline).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use socket2::{Domain, Protocol, Socket, Type};

pub use super::http1::CONNECTION_TIMEOUT;
use super::http1::{connection, Request, Response};
use crate::shutdown::Shutdown;

/// The most connections served at once per endpoint (each on a thread of its own while open).
pub const MAX_CONNECTION_THREADS: usize = 64;

/// How long an idle connection thread waits for a new connection before it ends.
pub const CONNECTION_THREAD_IDLE: Duration = Duration::from_secs(10);

/// How long the accept thread, a handler thread, or a connection thread waiting for its
/// answer, blocks before it looks at the shutdown flag again.
const WAKE: Duration = Duration::from_millis(200);

/// A connection thread's stack: it parses heads and copies bytes, nothing deep.
const CONNECTION_STACK: usize = 256 * 1024;

/// A request on its way to a handler, and where its answer goes.
struct Job {
    /// The request, head and body read.
    request: Request,
    /// The connection thread waiting for the answer.
    answer: Sender<Response>,
}

/// What a handler does with a request.
pub type Handle = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// The bound socket of one endpoint.
pub struct Listener {
    /// Which endpoint, for log lines and thread names (`api`, `http`).
    name: &'static str,
    /// The listening socket; its read timeout ([`WAKE`]) bounds `accept`.
    socket: TcpListener,
    /// Where the socket is bound.
    pub bound: SocketAddr,
}

impl Listener {
    /// Binds `addr`; `name` says which endpoint in log lines and thread names. Requests are
    /// served once [`Listener::start_handlers`] runs.
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
        // Bounds `accept`, so the accept thread sees the shutdown flag.
        socket.set_read_timeout(Some(WAKE))?;
        socket.bind(&target.into())?;
        socket.listen(128)?;
        let socket: TcpListener = socket.into();
        let bound = socket.local_addr()?;
        Ok(Arc::new(Self {
            name,
            socket,
            bound,
        }))
    }

    /// Starts `threads` handler threads (`{name}-0`, …) that answer each request with `handle`,
    /// and the accept thread, until `shutdown`. The socket closes when the accept thread ends.
    pub fn start_handlers(
        self: &Arc<Self>,
        threads: usize,
        shutdown: &Shutdown,
        handle: Handle,
    ) -> std::io::Result<()> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(MAX_CONNECTION_THREADS);
        for n in 0..threads {
            let (queue, shutdown, handle) = (queue.clone(), shutdown.clone(), Arc::clone(&handle));
            let name = self.name;
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || answer_jobs(name, &queue, &shutdown, &*handle))?;
        }
        let (idle_tx, idle_rx) = crossbeam_channel::bounded(0);
        let pool = Arc::new(ConnectionPool {
            name: self.name,
            jobs,
            idle_tx,
            idle_rx,
            live: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
        });
        let listener = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("{}-accept", self.name))
            .spawn(move || listener.accept_until_stopped(&pool))?;
        Ok(())
    }

    /// Accepts connections and hands them over until stopping.
    fn accept_until_stopped(&self, pool: &Arc<ConnectionPool>) {
        while !pool.shutdown.is_shutdown() {
            match self.socket.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = configure(&stream) {
                        log::debug!("{}: dropping a connection: {e}", self.name);
                        continue;
                    }
                    pool.hand_over(stream);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                            // A client that gave up before it was accepted.
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of file descriptors, say: wait rather than spin.
                Err(e) => {
                    log::warn!("{}: accept: {e}", self.name);
                    std::thread::sleep(WAKE);
                }
            }
        }
    }
}

/// Timeouts on every connection: a read or write that blocks longer ends it.
fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
    stream.set_nodelay(true)
}

/// Answers jobs until stopping; a handler that panics is answered with 500.
fn answer_jobs(
    name: &str,
    queue: &Receiver<Job>,
    shutdown: &Shutdown,
    handle: &(dyn Fn(&Request) -> Response + Send + Sync),
) {
    while !shutdown.is_shutdown() {
        match queue.recv_timeout(WAKE) {
            Ok(job) => {
                let response = std::panic::catch_unwind(AssertUnwindSafe(|| handle(&job.request)))
                    .unwrap_or_else(|_| {
                        log::error!("{name}: a handler panicked on {}", job.request.method());
                        Response::error(500, "internal error")
                    });
                // The connection thread may have given up (stopping): nothing to do then.
                let _ = job.answer.send(response);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The connection threads of one endpoint.
struct ConnectionPool {
    /// Which endpoint.
    name: &'static str,
    /// Requests to the handlers.
    jobs: Sender<Job>,
    /// A connection for an idle thread (a rendezvous: taken only by a thread waiting for it).
    idle_tx: Sender<TcpStream>,
    /// Where idle threads wait.
    idle_rx: Receiver<TcpStream>,
    /// Connection threads alive.
    live: AtomicUsize,
    /// The stop flag.
    shutdown: Shutdown,
}

impl ConnectionPool {
    /// Gives `stream` to an idle connection thread, or to a new one, or (every thread busy)
    /// to the first that is free.
    fn hand_over(self: &Arc<Self>, stream: TcpStream) {
        let mut stream = match self.idle_tx.try_send(stream) {
            Ok(()) => return,
            Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => s,
        };
        if self.live.fetch_add(1, Ordering::SeqCst) < MAX_CONNECTION_THREADS {
            let pool = Arc::clone(self);
            let (tx, rx) = crossbeam_channel::bounded(1);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-conn", self.name))
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    if let Ok(first) = rx.recv() {
                        pool.serve_connections(first);
                    }
                    pool.live.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                // The new thread receives it first thing (a channel of one: never blocks).
                Ok(_) => {
                    let _ = tx.send(stream);
                }
                // Dropped: the client sees the connection closed and may try again. Waiting
                // instead for a thread to free up could wait for good when none is alive.
                Err(e) => {
                    log::warn!(
                        "{}: cannot start a connection thread ({e}); closing a connection",
                        self.name
                    );
                    self.live.fetch_sub(1, Ordering::SeqCst);
                }
            }
            return;
        } else {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        while !self.shutdown.is_shutdown() {
            match self.idle_tx.send_timeout(stream, WAKE) {
                Ok(()) => return,
                Err(e) => stream = e.into_inner(),
            }
        }
    }

    /// Serves `first`, then whatever connection comes next, until idle too long or stopping.
    fn serve_connections(&self, first: TcpStream) {
        let mut next = Some(first);
        while let Some(stream) = next.take() {
            connection::serve(stream, &|| self.shutdown.is_shutdown(), &mut |request| {
                self.dispatch(request)
            });
            if self.shutdown.is_shutdown() {
                return;
            }
            next = self.idle_rx.recv_timeout(CONNECTION_THREAD_IDLE).ok();
        }
    }

    /// Hands `request` to a handler and waits for its answer; `None` when stopping.
    fn dispatch(&self, request: Request) -> Option<Response> {
        let (answer, answered) = crossbeam_channel::bounded(1);
        self.jobs.send(Job { request, answer }).ok()?;
        loop {
            match answered.recv_timeout(WAKE) {
                Ok(response) => return Some(response),
                Err(_) if self.shutdown.is_shutdown() => return None,
                Err(RecvTimeoutError::Timeout) => {}
                // The handler thread ended without answering.
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(Response::error(500, "internal error"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    #[test]
    fn silent_clients_hold_no_handler_and_stopping_closes_the_socket() {
        let listener = Listener::bind("127.0.0.1:0", "test").expect("bind");
        let shutdown = Shutdown::new();
        let echo: Handle = Arc::new(|r: &Request| Response::new(200, "text/plain", r.url()));
        listener
            .start_handlers(1, &shutdown, echo)
            .expect("threads start");
        let addr = listener.bound;
        drop(listener);
        // More half-sent heads than handlers: each holds a connection thread, no handler.
        let silent: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET /sil").expect("send");
                s
            })
            .collect();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(b"GET /answered HTTP/1.0\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n/answered"), "{answer}");
        // Stopping: the accept thread ends and the socket closes.
        shutdown.trigger();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "still accepting after stopping");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(silent);
    }
}
