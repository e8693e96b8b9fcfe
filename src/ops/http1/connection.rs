//! One connection's requests in turn: read a head and its body, hand the request over, write
//! the answer, then keep the connection for the next request or close it. Whatever cannot be
//! served (a head that does not parse, is too large, or does not arrive in time; a version
//! other than HTTP/1; a framing or expectation not supported) is refused here with
//! `{"error": ...}`, and the connection closed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::head::{self, Framing, Head, Refusal};
use super::incoming::Incoming;
use super::message::{BodyError, Method, Request, Response};
use super::{BODY_DEADLINE, HEAD_DEADLINE};

/// How long a closing connection's unread input is still read and dropped (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// The most unread input dropped that way.
const LINGER_MAX: usize = 256 * 1024;

/// How long one read blocks while lingering: a client that sends nothing more ends it.
const LINGER_READ: Duration = Duration::from_millis(500);

/// What a connection is beyond reading and writing: a `TcpStream`, a fake in the tests.
pub trait Stream: Read + Write {
    /// Ends our direction (FIN) while the peer's can still be read.
    fn shutdown_write(&self) -> std::io::Result<()>;
    /// How long a read may block from now on.
    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }
}

/// How a connection goes on after an answer.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Read the next request.
    Keep,
    /// Close: nothing of the client's is left unread.
    Close,
    /// Close, reading and dropping what the client still sends first (see [`linger`]).
    Linger,
}

/// Serves `stream` until it closes. `dispatch` answers a request (on a handler thread), or
/// says `None` when the service is stopping; `stopping` ends keep-alive.
pub fn serve<S: Stream>(
    stream: S,
    stopping: &dyn Fn() -> bool,
    dispatch: &mut dyn FnMut(Request) -> Option<Response>,
) {
    let mut incoming = Incoming::new(stream);
    loop {
        let next = match read_head(&mut incoming) {
            Ok(Some(head)) => exchange(&mut incoming, head, stopping, dispatch),
            Ok(None) => Next::Close,
            Err(refusal) => {
                let response = Response::error(refusal.status, &refusal.message);
                let _ = write(incoming.stream(), &response, false, false, 1);
                Next::Linger
            }
        };
        match next {
            Next::Keep => continue,
            Next::Close if incoming.buffered().is_empty() => return,
            Next::Close | Next::Linger => return linger(incoming.stream()),
        }
    }
}

/// Reads the next head. `Ok(None)`: the connection ended, or stayed idle for
/// [`super::CONNECTION_TIMEOUT`], before a request began. A head begun and not finished within
/// [`HEAD_DEADLINE`] (or before the client went quiet) is a 408.
fn read_head<S: Stream>(incoming: &mut Incoming<S>) -> Result<Option<Head>, Refusal> {
    let mut began: Option<Instant> = None;
    loop {
        if !incoming.buffered().is_empty() {
            if let Some((head, end)) = head::parse(incoming.buffered())? {
                incoming.consume(end);
                return Ok(Some(head));
            }
            if began.get_or_insert_with(Instant::now).elapsed() > HEAD_DEADLINE {
                return Err(head_too_slow());
            }
        }
        match incoming.fill() {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return if incoming.buffered().is_empty() {
                    Ok(None)
                } else {
                    Err(head_too_slow())
                };
            }
            Err(e) => {
                log::debug!("http: reading a request head: {e}");
                return Ok(None);
            }
        }
    }
}

fn head_too_slow() -> Refusal {
    Refusal {
        status: 408,
        message: "the request head did not arrive in time".into(),
    }
}

/// One request after its head: the body, the answer, and how the connection goes on.
fn exchange<S: Stream>(
    incoming: &mut Incoming<S>,
    head: Head,
    stopping: &dyn Fn() -> bool,
    dispatch: &mut dyn FnMut(Request) -> Option<Response>,
) -> Next {
    let (framing, expects_continue) = match (head.framing(), head.expects_continue()) {
        (Ok(framing), Ok(expects)) => (framing, expects),
        (Err(refusal), _) | (_, Err(refusal)) => {
            let response = Response::error(refusal.status, &refusal.message);
            let _ = write(
                incoming.stream(),
                &response,
                false,
                false,
                head.minor_version,
            );
            return Next::Linger;
        }
    };
    let body = match framing {
        Framing::Empty | Framing::Length(0) => Ok(Vec::new()),
        Framing::Length(n) if n > super::MAX_BODY as u64 => Err(BodyError::TooLarge),
        _ => {
            if expects_continue {
                let sent = incoming
                    .stream()
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .and_then(|()| incoming.stream().flush());
                if sent.is_err() {
                    return Next::Close;
                }
            }
            super::body::read(incoming, framing, Instant::now() + BODY_DEADLINE)
        }
    };
    let whole = body.is_ok();
    let head_only = head.method == Method::Head;
    let keep = head.keep_alive();
    let minor_version = head.minor_version;
    let request = Request {
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
    };
    let Some(response) = dispatch(request) else {
        return Next::Close;
    };
    let keep = keep && whole && !stopping();
    if let Err(e) = write(incoming.stream(), &response, head_only, keep, minor_version) {
        log::debug!("http: answer not sent: {e}");
        return Next::Close;
    }
    match (keep, whole) {
        (true, _) => Next::Keep,
        (false, true) => Next::Close,
        (false, false) => Next::Linger,
    }
}

/// Writes `response` in one piece: status line, Date, its headers, Content-Length (none with
/// 1xx, 204, 304), Connection when it says more than the version's default, and the body
/// (not for HEAD).
fn write(
    stream: &mut impl Write,
    response: &Response,
    head_only: bool,
    keep: bool,
    minor_version: u8,
) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let status = response.status;
    let bodiless = status < 200 || status == 204 || status == 304;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    let _ = write!(
        head,
        "Date: {}\r\n",
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT")
    );
    for (name, value) in &response.headers {
        let ours = ["Content-Length", "Connection", "Date", "Transfer-Encoding"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name));
        if ours || value.contains(['\r', '\n']) {
            log::debug!("http: header {name} not sent");
            continue;
        }
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !bodiless {
        let _ = write!(head, "Content-Length: {}\r\n", response.body.len());
    }
    if !keep {
        head.push_str("Connection: close\r\n");
    } else if minor_version == 0 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !bodiless && !head_only {
        out.extend_from_slice(&response.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// The reason phrase of the statuses we send; others go without one (it is optional).
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Closes after an answer while the client may still be sending (a body not read, a head
/// refused): our side ends first, then what arrives is read and dropped for a moment. Closed at
/// once, the kernel would answer that unread input with a reset, which can destroy our answer
/// before the client reads it.
fn linger<S: Stream>(stream: &mut S) {
    let _ = stream.shutdown_write();
    let _ = stream.set_read_timeout(LINGER_READ);
    let until = Instant::now() + LINGER;
    let mut dropped = 0;
    let mut scratch = [0u8; 4096];
    while Instant::now() < until && dropped < LINGER_MAX {
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => dropped += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Cursor;

    /// A client that sends `input` at once, then goes quiet (`quiet`: reads time out) or closes.
    struct Fake {
        /// What the client sends.
        input: Cursor<Vec<u8>>,
        /// What the server wrote.
        output: Vec<u8>,
        /// Whether reads time out once `input` is used up (else the client closes).
        quiet: bool,
        /// Whether the server ended its direction (it lingered before closing).
        write_shut: Cell<bool>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.input.read(buf)?;
            if n == 0 && self.quiet {
                return Err(ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Stream for &mut Fake {
        fn shutdown_write(&self) -> std::io::Result<()> {
            self.write_shut.set(true);
            Ok(())
        }
        fn set_read_timeout(&self, _: Duration) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the server wrote back to `input`, with a handler that echoes method, target and
    /// body (or the body's error); also the requests the handler saw.
    fn exchange_with(input: &[u8], quiet: bool) -> (String, Vec<String>, bool) {
        let mut fake = Fake {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
            quiet,
            write_shut: Cell::new(false),
        };
        let mut seen = Vec::new();
        serve(&mut fake, &|| false, &mut |request: Request| {
            let line = format!(
                "{} {} {:?}",
                request.method(),
                request.url(),
                request
                    .body()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            );
            seen.push(line.clone());
            Some(Response::new(200, "text/plain", line))
        });
        let shut = fake.write_shut.get();
        (
            String::from_utf8_lossy(&fake.output).into_owned(),
            seen,
            shut,
        )
    }

    fn answers(output: &str) -> Vec<&str> {
        output.matches("HTTP/1.1 ").map(|_| "").collect()
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (out, seen, _) = exchange_with(
            concat!(
                "GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
                "GET /c HTTP/1.1\r\n\r\n"
            )
            .as_bytes(),
            false,
        );
        assert_eq!(
            seen,
            ["GET /a Ok(\"\")", "POST /b Ok(\"hi\")", "GET /c Ok(\"\")"]
        );
        assert_eq!(answers(&out).len(), 3, "{out}");
        assert!(!out.contains("Connection: close"), "{out}");
        assert!(out.contains("Content-Length: 16\r\n"), "{out}");
    }

    #[test]
    fn http_1_0_closes_unless_it_asks_to_keep_alive() {
        let (out, seen, _) =
            exchange_with(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n", false);
        assert_eq!(seen.len(), 1);
        assert!(out.contains("Connection: close\r\n"), "{out}");
        let (out, seen, _) = exchange_with(
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
            false,
        );
        assert_eq!(seen.len(), 2);
        assert!(out.contains("Connection: keep-alive\r\n"), "{out}");
        let (_, seen, _) = exchange_with(
            b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            false,
        );
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_head_that_does_not_parse_gets_json_and_a_close() {
        for (wire, status) in [
            (&b"GARBAGE\r\n\r\n"[..], "400"),
            (b"GET /ping HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
            (b"GET / HTTP/2.0\r\n\r\n", "505"),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "400"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
            (b"POST / HTTP/1.1\r\nExpect: teapot\r\n\r\n", "417"),
        ] {
            let (out, seen, shut) = exchange_with(wire, false);
            assert!(seen.is_empty(), "{seen:?}");
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert!(out.contains("Content-Type: application/json\r\n"), "{out}");
            assert!(out.contains("Connection: close\r\n"), "{out}");
            let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert!(json["error"].is_string(), "{out}");
            assert!(shut, "the connection lingers before it closes");
        }
        let long = format!(
            "GET / HTTP/1.1\r\nX: {}",
            "a".repeat(super::super::MAX_HEAD)
        );
        let (out, _, _) = exchange_with(long.as_bytes(), true);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[test]
    fn a_head_that_stops_halfway_is_408_and_an_idle_connection_just_closes() {
        let (out, seen, _) = exchange_with(b"GET /pi", true);
        assert!(seen.is_empty());
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(
            out.ends_with(r#"{"error":"the request head did not arrive in time"}"#),
            "{out}"
        );
        let (out, _, _) = exchange_with(b"", true);
        assert_eq!(out, "");
        let (out, _, _) = exchange_with(b"GET /a HTTP/1.1\r\n\r\n", true);
        assert_eq!(answers(&out).len(), 1, "{out}");
    }

    #[test]
    fn head_is_answered_with_the_length_and_no_body() {
        let (out, _, _) = exchange_with(b"HEAD /a HTTP/1.1\r\nConnection: close\r\n\r\n", false);
        assert!(out.contains("Content-Length: 14\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_chunked_body_is_decoded_and_100_continue_comes_first() {
        let (out, seen, _) = exchange_with(
            concat!(
                "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
                "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                "GET /n HTTP/1.1\r\n\r\n"
            )
            .as_bytes(),
            false,
        );
        assert_eq!(seen, ["POST /c Ok(\"abcde\")", "GET /n Ok(\"\")"]);
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
    }

    #[test]
    fn a_body_too_large_reaches_the_handler_unread_and_the_connection_closes() {
        let wire = format!(
            "POST /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{{",
            super::super::MAX_BODY + 1
        );
        let (out, seen, shut) = exchange_with(wire.as_bytes(), false);
        assert_eq!(seen, ["POST /big Err(TooLarge)"]);
        assert!(!out.contains("100 Continue"), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        assert!(shut);
        let (_, seen, _) =
            exchange_with(b"POST /slow HTTP/1.1\r\nContent-Length: 9\r\n\r\n{", true);
        assert_eq!(seen, ["POST /slow Err(TooSlow)"]);
    }

    #[test]
    fn no_content_has_no_length_and_bad_header_values_are_not_sent() {
        let mut out = Vec::new();
        let response = Response::new(204, "text/plain", "")
            .with_header("X-Split", "a\r\nSet-Cookie: x")
            .with_header("Content-Length", "99");
        assert!(write(&mut out, &response, false, true, 1).is_ok());
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 204 No Content\r\nDate: "),
            "{out}"
        );
        assert!(!out.contains("Content-Length"), "{out}");
        assert!(!out.contains("X-Split"), "{out}");
    }
}
