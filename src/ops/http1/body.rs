//! Reading a request body in full, before any handler sees the request, so a client that sends
//! slowly holds its connection's thread and never a handler: Content-Length, or
//! `Transfer-Encoding: chunked` decoded (chunk sizes by `httparse`), at most [`MAX_BODY`], all
//! of it within a deadline.

use std::io::{ErrorKind, Read};
use std::time::Instant;

use super::head::Framing;
use super::incoming::Incoming;
use super::message::BodyError;
use super::{MAX_BODY, MAX_HEAD};

/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Reads the body `framing` announces, by `deadline`. A `Length` over [`MAX_BODY`] is
/// [`BodyError::TooLarge`] before anything is read.
pub fn read<S: Read>(
    incoming: &mut Incoming<S>,
    framing: Framing,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    match framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_BODY)
                .ok_or(BodyError::TooLarge)?;
            let mut body = Vec::with_capacity(n);
            append_exactly(incoming, &mut body, n, deadline)?;
            Ok(body)
        }
        Framing::Chunked => read_chunked(incoming, deadline),
    }
}

/// Decodes chunks until the last (size 0) and skips the trailer section after it.
fn read_chunked<S: Read>(
    incoming: &mut Incoming<S>,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(incoming.buffered()) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if incoming.buffered().len() > MAX_CHUNK_LINE => {
                    return Err(malformed("a chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => more(incoming, deadline)?,
                Err(_) => return Err(malformed("an invalid chunk size")),
            }
        };
        if !strict_chunk_line(&incoming.buffered()[..line]) {
            return Err(malformed(
                "a chunk-size line that is not hex digits, extensions and CRLF",
            ));
        }
        incoming.consume(line);
        if size == 0 {
            skip_trailers(incoming, deadline)?;
            return Ok(body);
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= MAX_BODY - body.len())
            .ok_or(BodyError::TooLarge)?;
        append_exactly(incoming, &mut body, size, deadline)?;
        while incoming.buffered().len() < 2 {
            more(incoming, deadline)?;
        }
        if &incoming.buffered()[..2] != b"\r\n" {
            return Err(malformed("chunk data longer than its size"));
        }
        incoming.consume(2);
    }
}

/// Whether a chunk-size line is as RFC 9112 writes it: hex digits first, CRLF last, no other
/// line end or control byte in between (httparse also takes an empty size or a bare LF inside an
/// extension, which a proxy in front may split differently).
fn strict_chunk_line(line: &[u8]) -> bool {
    let Some(inner) = line.strip_suffix(b"\r\n") else {
        return false;
    };
    inner.first().is_some_and(u8::is_ascii_hexdigit)
        && !inner.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Skips trailer lines up to the empty line that ends the message; every line ends in CRLF.
fn skip_trailers<S: Read>(incoming: &mut Incoming<S>, deadline: Instant) -> Result<(), BodyError> {
    let mut skipped = 0;
    loop {
        match incoming.buffered().iter().position(|&b| b == b'\n') {
            Some(end) => {
                if end == 0 || incoming.buffered()[end - 1] != b'\r' {
                    return Err(malformed("a trailer line not ended by CRLF"));
                }
                let empty = end == 1;
                incoming.consume(end + 1);
                if empty {
                    return Ok(());
                }
                skipped += end + 1;
            }
            None => more(incoming, deadline)?,
        }
        if skipped + incoming.buffered().len() > MAX_HEAD {
            return Err(malformed("trailers too long"));
        }
    }
}

/// Moves `n` bytes from the connection to `body`.
fn append_exactly<S: Read>(
    incoming: &mut Incoming<S>,
    body: &mut Vec<u8>,
    n: usize,
    deadline: Instant,
) -> Result<(), BodyError> {
    let mut left = n;
    loop {
        let take = left.min(incoming.buffered().len());
        body.extend_from_slice(&incoming.buffered()[..take]);
        incoming.consume(take);
        left -= take;
        if left == 0 {
            return Ok(());
        }
        more(incoming, deadline)?;
    }
}

/// Reads more of the body, unless its deadline has passed.
fn more<S: Read>(incoming: &mut Incoming<S>, deadline: Instant) -> Result<(), BodyError> {
    if Instant::now() > deadline {
        return Err(BodyError::TooSlow);
    }
    match incoming.fill() {
        Ok(0) => Err(malformed("the connection ended inside the body")),
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(BodyError::TooSlow)
        }
        Err(e) => Err(BodyError::Malformed(format!("cannot read the body: {e}"))),
    }
}

fn malformed(what: &str) -> BodyError {
    BodyError::Malformed(format!("chunked body: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads `wire` as a body framed by `framing`; also returns the bytes left after it.
    fn decode(wire: &[u8], framing: Framing) -> (Result<Vec<u8>, BodyError>, Vec<u8>) {
        let mut incoming = Incoming::new(wire);
        let body = read(
            &mut incoming,
            framing,
            Instant::now() + Duration::from_secs(5),
        );
        (body, incoming.buffered().to_vec())
    }

    fn chunked(wire: &[u8]) -> Result<Vec<u8>, BodyError> {
        decode(wire, Framing::Chunked).0
    }

    #[test]
    fn a_length_reads_that_many_bytes_and_leaves_the_rest() {
        let (body, rest) = decode(b"{\"a\":1}GET / HTTP/1.1", Framing::Length(7));
        assert_eq!(body.as_deref(), Ok(&b"{\"a\":1}"[..]));
        assert_eq!(rest, b"GET / HTTP/1.1");
        assert_eq!(decode(b"", Framing::Empty).0, Ok(Vec::new()));
    }

    #[test]
    fn a_length_over_the_limit_is_not_read() {
        let (body, rest) = decode(b"abc", Framing::Length(MAX_BODY as u64 + 1));
        assert_eq!(body, Err(BodyError::TooLarge));
        assert_eq!(rest, b"");
        assert_eq!(
            decode(b"", Framing::Length(u64::MAX)).0,
            Err(BodyError::TooLarge)
        );
    }

    /// Each chunked body of `wires` is refused as malformed.
    fn assert_malformed(wires: &[&[u8]]) {
        for wire in wires {
            assert!(
                matches!(chunked(wire), Err(BodyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn chunk_lines_and_trailers_are_taken_only_as_rfc_9112_writes_them() {
        assert_eq!(
            chunked(b"3;name=value\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n").as_deref(),
            Ok(&b"abc"[..])
        );
        // An empty size, an extension alone, a bare LF inside an extension, a bare-LF line
        // end, a bare-LF trailer: each httparse or a loose reader would take.
        assert_malformed(&[
            &b"\r\n\r\n"[..],
            b";ext\r\n\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"0\r\nX-Trailer: 1\n\r\n",
            b"0\r\n\n",
        ]);
    }

    #[test]
    fn a_body_cut_short_is_malformed() {
        assert!(matches!(
            decode(b"abc", Framing::Length(5)).0,
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(chunked(b"5\r\nab"), Err(BodyError::Malformed(_))));
        assert!(matches!(
            chunked(b"2\r\nab\r\n"),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn chunks_decode_with_extensions_and_trailers() {
        assert_eq!(
            chunked(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"),
            Ok(b"Wikipedia".to_vec())
        );
        assert_eq!(
            chunked(b"a;name=value\r\n0123456789\r\n0\r\n\r\n"),
            Ok(b"0123456789".to_vec())
        );
        assert_eq!(
            chunked(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n"),
            Ok(b"abc".to_vec())
        );
        assert_eq!(chunked(b"0\r\n\r\n"), Ok(Vec::new()));
        // What follows the body is the next request's.
        let (body, rest) = decode(b"1\r\nx\r\n0\r\n\r\nGET /", Framing::Chunked);
        assert_eq!(body, Ok(b"x".to_vec()));
        assert_eq!(rest, b"GET /");
    }

    #[test]
    fn bad_chunk_framing_is_malformed() {
        assert_malformed(&[
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"-1\r\n",
            b"fffffffffffffffffffff\r\n",
        ]);
        let endless = format!("1;{}", "x".repeat(MAX_CHUNK_LINE + 1));
        assert!(matches!(
            chunked(endless.as_bytes()),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn chunks_over_the_limit_are_too_large() {
        let half = MAX_BODY / 2 + 1;
        let chunk = format!("{half:x}\r\n{}\r\n", "a".repeat(half));
        let wire = format!("{chunk}{chunk}0\r\n\r\n");
        assert_eq!(chunked(wire.as_bytes()), Err(BodyError::TooLarge));
        assert_eq!(chunked(b"ffffffffffff\r\n"), Err(BodyError::TooLarge));
    }

    #[test]
    fn a_passed_deadline_is_too_slow() {
        let mut incoming = Incoming::new(&b"ab"[..]);
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(
            read(&mut incoming, Framing::Length(2), past),
            Err(BodyError::TooSlow)
        );
    }
}
