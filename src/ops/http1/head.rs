//! A request head: parsed by `httparse`, then what it says about the connection: whether it
//! stays open (keep-alive rules of HTTP/1.0 and 1.1), how the body is framed, what is expected.
//! Pure functions over bytes, so every refusal is tested without a socket.

use super::message::Method;
use super::MAX_HEAD;

/// Most header lines in a head; more is answered with 431.
const MAX_HEADERS: usize = 64;

/// A parsed request head, owned (the read buffer moves on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The request target as sent.
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names and values in the order sent.
    pub headers: Vec<(String, String)>,
}

/// A head that cannot be served, with the status and message of its JSON refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 417, 431, 501 or 505.
    pub status: u16,
    /// Said to the client as `{"error": message}`.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: neither Content-Length nor Transfer-Encoding.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete, else the head and
/// how many bytes it took (the body, or the next request, starts there).
pub fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(end)) if end > MAX_HEAD => Err(too_large()),
        Ok(httparse::Status::Complete(end)) => {
            let head = Head {
                method: Method::from_token(request.method.unwrap_or_default()),
                target: request.path.unwrap_or_default().to_owned(),
                minor_version: request.version.unwrap_or(1),
                headers: request
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, end)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(too_large()),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::new(
            431,
            format!("more than {MAX_HEADERS} header lines"),
        )),
        Err(httparse::Error::Version) if names_another_major_version(buf) => Err(Refusal::new(
            505,
            "HTTP version not supported: this server speaks HTTP/1.0 and HTTP/1.1",
        )),
        Err(e) => Err(Refusal::new(400, format!("malformed request head: {e}"))),
    }
}

fn too_large() -> Refusal {
    Refusal::new(431, format!("request head over {} KiB", MAX_HEAD / 1024))
}

/// Whether the request line's version is well formed but not HTTP/1 (`HTTP/2.0`, `HTTP/9.9`,
/// the HTTP/2 preface's `PRI * HTTP/2.0`): 505 rather than 400.
fn names_another_major_version(buf: &[u8]) -> bool {
    let line = buf
        .split(|&b| b == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")
        .unwrap_or_default();
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version.strip_prefix(b"HTTP/") {
        Some([major, rest @ ..]) => {
            major.is_ascii_digit()
                && *major != b'1'
                && matches!(
                    rest,
                    [] | [b'.'] | [b'.', b'0'..=b'9'] | [b'.', b'0'..=b'9', b'\r']
                )
        }
        _ => false,
    }
}

impl Head {
    /// The values of header `name` (case-insensitive), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of header `name` across all its lines, lowercased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.values(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Whether the client keeps the connection open after this exchange: HTTP/1.1 does unless
    /// it says `Connection: close`; HTTP/1.0 does not unless it says `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let tokens = self.tokens("Connection");
        if tokens.iter().any(|t| t == "close") {
            return false;
        }
        self.minor_version >= 1 || tokens.iter().any(|t| t == "keep-alive")
    }

    /// How the body is framed. Refused: both Content-Length and Transfer-Encoding (a message
    /// two parsers could split differently), a Content-Length that is not one number, a
    /// transfer coding other than `chunked` alone (501).
    pub fn framing(&self) -> Result<Framing, Refusal> {
        let codings = self.tokens("Transfer-Encoding");
        let lengths: Vec<&str> = self
            .values("Content-Length")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if self.values("Transfer-Encoding").next().is_some() {
            if codings.is_empty() {
                return Err(Refusal::new(400, "an empty Transfer-Encoding"));
            }
            // RFC 9112, 6.1: a 1.0 recipient can't know where such a body ends.
            if self.minor_version == 0 {
                return Err(Refusal::new(
                    400,
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if !lengths.is_empty() {
                return Err(Refusal::new(
                    400,
                    "both Content-Length and Transfer-Encoding: send one",
                ));
            }
            return if codings == ["chunked"] {
                Ok(Framing::Chunked)
            } else {
                Err(Refusal::new(
                    501,
                    format!(
                        "transfer coding {} not supported: send chunked or Content-Length",
                        codings.join(", ")
                    ),
                ))
            };
        }
        let Some(first) = lengths.first() else {
            return Ok(Framing::Empty);
        };
        let bad = || Refusal::new(400, "Content-Length is not one whole number");
        if !first.bytes().all(|b| b.is_ascii_digit()) || lengths.iter().any(|l| l != first) {
            return Err(bad());
        }
        first.parse().map(Framing::Length).map_err(|_| bad())
    }

    /// Whether the client waits for `100 Continue` before sending the body; 417 for an
    /// expectation other than `100-continue`. HTTP/1.0 clients cannot ask (RFC 9110, 10.1.1).
    pub fn expects_continue(&self) -> Result<bool, Refusal> {
        let expectations = self.tokens("Expect");
        if expectations.iter().any(|e| e != "100-continue") {
            return Err(Refusal::new(
                417,
                format!(
                    "expectation {} not supported; only 100-continue is",
                    expectations.join(", ")
                ),
            ));
        }
        Ok(!expectations.is_empty() && self.minor_version >= 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        match parse(text.as_bytes()) {
            Ok(Some((head, end))) => {
                assert_eq!(end, text.len());
                head
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn refusal(text: &[u8]) -> u16 {
        match parse(text) {
            Err(r) => r.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn a_head_parses_to_its_parts() {
        let h = head("POST /courier?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.target, "/courier?x=1");
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.headers[1], ("Content-Length".into(), "2".into()));
        assert_eq!(h.framing(), Ok(Framing::Length(2)));
        // The body, or the next request, starts where the head ends.
        let text = b"GET / HTTP/1.1\r\n\r\nGET /ping";
        assert!(matches!(parse(text), Ok(Some((_, 18)))));
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"GET /pi"), Ok(None));
        assert_eq!(parse(b"GET /ping HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn garbage_and_malformed_lines_are_400() {
        assert_eq!(refusal(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(refusal(b"GET\r\n\r\n"), 400);
        assert_eq!(refusal(b"GET /\r\n\r\n"), 400);
        assert_eq!(refusal(b"GET /ping HTTP/1.1\r\nno colon here\r\n\r\n"), 400);
        assert_eq!(refusal(b"GET /ping HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(refusal(b"GET / FTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            refusal(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            400
        );
    }

    #[test]
    fn other_major_versions_are_505() {
        assert_eq!(refusal(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(refusal(b"GET / HTTP/9.9\r\n\r\n"), 505);
        assert_eq!(refusal(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(refusal(b"GET / HTTP/3"), 505);
        assert_eq!(refusal(b"GET / HTTP/0.9\r\n\r\n"), 505);
        // HTTP/1 with an unknown minor, or no version at all, is malformed.
        assert_eq!(refusal(b"GET / HTTP/1.2\r\n\r\n"), 400);
        assert_eq!(refusal(b"GET / HTTP/x\r\n\r\n"), 400);
    }

    #[test]
    fn a_head_too_large_is_431() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(refusal(long.as_bytes()), 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            refusal(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive());
    }

    #[test]
    fn framing_takes_one_length_or_chunked() {
        let framing = |h: &str| head(&format!("POST / HTTP/1.1\r\n{h}\r\n")).framing();
        assert_eq!(framing(""), Ok(Framing::Empty));
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(Framing::Length(0)));
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(framing("Content-Length: 5, 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(
            framing("Transfer-Encoding: Chunked\r\n"),
            Ok(Framing::Chunked)
        );
        let status = |h: &str| framing(h).map_err(|r| r.status);
        assert_eq!(
            status("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(400)
        );
        assert_eq!(status("Content-Length: -1\r\n"), Err(400));
        assert_eq!(status("Content-Length: +5\r\n"), Err(400));
        assert_eq!(status("Content-Length: \r\n"), Err(400));
        assert_eq!(
            status("Content-Length: 99999999999999999999999\r\n"),
            Err(400)
        );
        assert_eq!(
            status("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            Err(400)
        );
        // Present but naming no coding: a proxy may frame by it, so it is not ignored.
        assert_eq!(
            status("Transfer-Encoding: \r\nContent-Length: 5\r\n"),
            Err(400)
        );
        assert_eq!(status("Transfer-Encoding: ,\r\n"), Err(400));
        let one_oh = head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(one_oh.framing().map_err(|r| r.status), Err(400));
        assert_eq!(status("Transfer-Encoding: gzip, chunked\r\n"), Err(501));
        assert_eq!(status("Transfer-Encoding: chunked, chunked\r\n"), Err(501));
    }

    #[test]
    fn only_100_continue_is_expected() {
        let expects = |text: &str| head(text).expects_continue().map_err(|r| r.status);
        assert_eq!(expects("POST / HTTP/1.1\r\n\r\n"), Ok(false));
        assert_eq!(
            expects("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n"),
            Ok(true)
        );
        assert_eq!(
            expects("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"),
            Ok(false)
        );
        assert_eq!(
            expects("POST / HTTP/1.1\r\nExpect: teapot\r\n\r\n"),
            Err(417)
        );
    }
}
