//! HTTP/1.1 for both endpoints (the API on `HTTP_ADDR`, the operator's on `METRICS_ADDR`),
//! written here over `httparse` rather than taken from a server crate: tiny_http, before it,
//! answered what it could not parse (a garbage request line, a bad header, a version it did not
//! know) by itself with an empty body, where every refusal of ours is `{"error": "..."}`.
//! Here every byte that comes in is ours to answer.
//!
//! - [`head`]: a request head parsed, and what it says: keep-alive, body framing, `Expect`.
//! - [`body`]: a body read in full before a handler sees it: Content-Length or chunked, at most
//!   [`MAX_BODY`], within [`BODY_DEADLINE`].
//! - [`connection`]: one connection's requests in turn: read, hand over, write, keep or close.
//! - [`message`]: the [`Request`] a handler gets and the [`Response`] it returns.
//!
//! The threads that run connections and handlers are [`super::listener`]'s.

pub mod body;
pub mod connection;
pub mod head;
mod incoming;
pub mod message;

use std::time::Duration;

pub use message::{BodyError, Method, Request, Response};

/// How long a read or write on a connection may block; then the connection is dropped. Also
/// how long an idle keep-alive connection stays open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request head may take from its first byte, however it trickles in; then 408.
pub const HEAD_DEADLINE: Duration = CONNECTION_TIMEOUT;

/// The largest request head (request line and headers); larger ones are refused with 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// The largest body read; a larger one is not read, and the handler finds
/// [`BodyError::TooLarge`] (the API answers 413).
pub const MAX_BODY: usize = 64 * 1024;

/// How long a whole body may take to arrive. Each read also blocks at most
/// [`CONNECTION_TIMEOUT`], so a client trickling bytes holds its connection this long at most
/// (and never a handler: bodies are read before the handler gets the request).
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
